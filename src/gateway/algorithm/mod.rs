//! Selection algorithms: given the destinations that may be used right now,
//! produce the first choice and the order to fail over in.
//!
//! One file per algorithm; each is a small state machine behind [`Selector`].
//! [`AnySelector`] dispatches over them with a `match` (no vtable, no box), and
//! is what a group stores.

mod hash;
mod least_calls;
mod round_robin;
mod weighted;

pub use hash::{destination_score_input, uri_seed, HashSelector, KEY_SEED};
pub use least_calls::LeastCalls;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

use std::fmt;
use std::str::FromStr;

use super::destination::Destination;

/// Picks destinations for one group.
///
/// `group` is the group's full destination list; `eligible` holds the indexes
/// (into `group`, ascending) of those that are up and match the request's
/// attrs. Indexes out of range are ignored. `key` is the affinity key, used
/// only by algorithms that hash.
///
/// Both methods count as one selection: rotating algorithms advance.
pub trait Selector: Send {
    /// Rebuild per-destination state after the destination list changed.
    /// Selectors also notice a change of length by themselves, but a change of
    /// content at the same length (another uri) needs this call.
    fn prepare(&mut self, group: &[Destination]);

    /// The first choice only; `None` when `eligible` is empty.
    fn pick(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
    ) -> Option<usize>;

    /// Clear `out`, then fill it with every eligible index, best first, the
    /// rest in failover order. Reuses `out`'s allocation.
    fn rank(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
        out: &mut Vec<usize>,
    );
}

/// The balancing algorithm of a group, as named in the config and scripts.
/// The config deserializes it directly (`algorithm: round_robin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round-robin (nginx). The default.
    #[default]
    Weighted,
    /// Even rotation over eligible destinations; weight ignored.
    RoundRobin,
    /// Weighted rendezvous hashing of the key; smooth weighted without a key.
    Hash,
    /// The fewest calls per weight; ties by smooth weighted rotation.
    LeastCalls,
}

impl Algorithm {
    /// The name used in YAML and in `gateway.add_group(algorithm=...)`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Weighted => "weighted",
            Algorithm::RoundRobin => "round_robin",
            Algorithm::Hash => "hash",
            Algorithm::LeastCalls => "least_calls",
        }
    }

    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Weighted,
        Algorithm::RoundRobin,
        Algorithm::Hash,
        Algorithm::LeastCalls,
    ];
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An algorithm name that is not one of `weighted`, `round_robin`, `hash`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown algorithm {0:?}: expected weighted, round_robin, hash or least_calls")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "weighted" => Ok(Algorithm::Weighted),
            "round_robin" => Ok(Algorithm::RoundRobin),
            "hash" => Ok(Algorithm::Hash),
            "least_calls" => Ok(Algorithm::LeastCalls),
            other => Err(UnknownAlgorithm(other.to_string())),
        }
    }
}

/// A selector for any [`Algorithm`], dispatched with a `match`.
#[derive(Debug, Clone)]
pub enum AnySelector {
    Weighted(SmoothWeighted),
    RoundRobin(RoundRobin),
    Hash(HashSelector),
    LeastCalls(LeastCalls),
}

impl AnySelector {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Weighted => AnySelector::Weighted(SmoothWeighted::default()),
            Algorithm::RoundRobin => AnySelector::RoundRobin(RoundRobin::default()),
            Algorithm::Hash => AnySelector::Hash(HashSelector::default()),
            Algorithm::LeastCalls => AnySelector::LeastCalls(LeastCalls::default()),
        }
    }

    /// Tells the selector whether the next ranking is for a new call
    /// (`hash_bound` moves only calls).
    pub fn set_for_call(&mut self, for_call: bool) {
        if let AnySelector::Hash(selector) = self {
            selector.bound_calls_only(for_call);
        }
    }

    /// The selector of a group with `algorithm` and `hash_bound`.
    pub fn for_group(algorithm: Algorithm, hash_bound: Option<f64>) -> Self {
        match (algorithm, hash_bound) {
            (Algorithm::Hash, Some(_)) => AnySelector::Hash(HashSelector::bounded(hash_bound)),
            _ => AnySelector::new(algorithm),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            AnySelector::Weighted(_) => Algorithm::Weighted,
            AnySelector::RoundRobin(_) => Algorithm::RoundRobin,
            AnySelector::Hash(_) => Algorithm::Hash,
            AnySelector::LeastCalls(_) => Algorithm::LeastCalls,
        }
    }
}

/// The selector for `algorithm`, in its initial state.
pub fn new_selector(algorithm: Algorithm) -> AnySelector {
    AnySelector::new(algorithm)
}

impl Selector for AnySelector {
    fn prepare(&mut self, group: &[Destination]) {
        match self {
            AnySelector::Weighted(selector) => selector.prepare(group),
            AnySelector::RoundRobin(selector) => selector.prepare(group),
            AnySelector::Hash(selector) => selector.prepare(group),
            AnySelector::LeastCalls(selector) => selector.prepare(group),
        }
    }

    fn pick(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
    ) -> Option<usize> {
        match self {
            AnySelector::Weighted(selector) => selector.pick(group, eligible, key),
            AnySelector::RoundRobin(selector) => selector.pick(group, eligible, key),
            AnySelector::Hash(selector) => selector.pick(group, eligible, key),
            AnySelector::LeastCalls(selector) => selector.pick(group, eligible, key),
        }
    }

    fn rank(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
        out: &mut Vec<usize>,
    ) {
        match self {
            AnySelector::Weighted(selector) => selector.rank(group, eligible, key, out),
            AnySelector::RoundRobin(selector) => selector.rank(group, eligible, key, out),
            AnySelector::Hash(selector) => selector.rank(group, eligible, key, out),
            AnySelector::LeastCalls(selector) => selector.rank(group, eligible, key, out),
        }
    }
}

/// Destinations named `sip:d0` .. for algorithm tests, with the given weights.
#[cfg(test)]
pub(crate) fn test_group(weights: &[u32]) -> Vec<Destination> {
    weights
        .iter()
        .enumerate()
        .map(|(index, &weight)| {
            let port = u16::try_from(5060 + index).unwrap_or(5060);
            let address = std::net::SocketAddr::from(([10, 0, 0, 1], port));
            Destination::new(format!("sip:d{index}.example.com:5060"), address).with_weight(weight)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for algorithm in Algorithm::ALL {
            assert_eq!(algorithm.as_str().parse::<Algorithm>(), Ok(algorithm));
            assert_eq!(AnySelector::new(algorithm).algorithm(), algorithm);
        }
        assert_eq!(Algorithm::default(), Algorithm::Weighted);
        assert_eq!(
            "random".parse::<Algorithm>(),
            Err(UnknownAlgorithm("random".to_string()))
        );
    }

    #[test]
    fn every_selector_handles_empty_and_out_of_range_eligible() {
        let group = test_group(&[1, 1]);
        for algorithm in Algorithm::ALL {
            let mut selector = new_selector(algorithm);
            selector.prepare(&group);
            let mut out = vec![42];
            assert_eq!(selector.pick(&group, &[], Some(b"k")), None);
            selector.rank(&group, &[], Some(b"k"), &mut out);
            assert!(out.is_empty(), "{algorithm}: out is cleared");
            assert_eq!(selector.pick(&group, &[7], Some(b"k")), None);
            selector.rank(&group, &[1, 9], None, &mut out);
            assert_eq!(out, vec![1], "{algorithm}: index 9 ignored");
        }
    }
}
