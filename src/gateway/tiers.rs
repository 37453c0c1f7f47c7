//! Ranking by capacity and priority: which of the destinations that are up
//! a request tries first, given their tiers and what they can take now.
//!
//! - A drained destination takes nothing new: it is left out.
//! - A full or paced one (`max_calls`, `max_cps`) is skipped like one that
//!   is down, but it stays at the end of the ranking: when every
//!   destination is full the core answers 503 with Retry-After (or runs
//!   `@proxy.on_failure`) instead of the script seeing "nothing up".
//! - Tiers go lowest `priority` first. A tier is chosen from while at least
//!   `spill_threshold` of its destinations (all of them, if fewer) are up
//!   and not full; within it the group's algorithm ranks as ever. The tiers
//!   that are not chosen from follow, in order.
//!
//! A group with one tier and nothing full ranks exactly as its algorithm
//! alone would.

use std::collections::BTreeMap;
use std::time::Instant;

use super::algorithm::{AnySelector, Selector};
use super::destination::Destination;
use crate::proxy::capacity::Refusal;

/// A group's tiers and spill rule.
#[derive(Debug, Clone, Default)]
pub struct Tiers {
    /// Each tier's priority and its number of destinations, lowest first;
    /// empty when the group has one tier.
    tiers: Vec<(i32, usize)>,
    spill_threshold: usize,
}

/// What a ranking is for.
#[derive(Debug, Clone, Copy)]
pub struct RankFor<'a> {
    /// The affinity key (`hash`).
    pub key: Option<&'a [u8]>,
    /// The attrs filter the eligible destinations matched.
    pub attrs: Option<&'a BTreeMap<String, String>>,
    /// A new call (an INVITE): the call limit, the pace and `hash_bound`
    /// apply. Anything else minds only drains, so that a REGISTER keeps
    /// its subscriber's first choice however busy that is.
    pub for_call: bool,
    pub now: Instant,
}

/// Reused buffers for one ranking.
#[derive(Debug, Clone, Default)]
pub struct RankScratch {
    available: Vec<usize>,
    full: Vec<usize>,
    part: Vec<usize>,
    ranked: Vec<usize>,
}

impl Tiers {
    pub fn new(destinations: &[Destination], spill_threshold: u32) -> Self {
        let mut tiers: Vec<(i32, usize)> = Vec::new();
        for destination in destinations {
            match tiers.iter_mut().find(|(p, _)| *p == destination.priority) {
                Some((_, size)) => *size += 1,
                None => tiers.push((destination.priority, 1)),
            }
        }
        tiers.sort_unstable();
        if tiers.len() < 2 {
            tiers.clear();
        }
        Tiers {
            tiers,
            spill_threshold: usize::try_from(spill_threshold.max(1)).unwrap_or(usize::MAX),
        }
    }

    /// Fills `out` with `eligible` (the destinations up and matching),
    /// best first: see the module's rules.
    pub fn rank(
        &self,
        selector: &mut AnySelector,
        (destinations, eligible): (&[Destination], &[usize]),
        request: RankFor<'_>,
        scratch: &mut RankScratch,
        out: &mut Vec<usize>,
    ) {
        let RankFor {
            key,
            attrs,
            for_call,
            now,
        } = request;
        selector.set_for_call(for_call);
        let RankScratch {
            available,
            full,
            part,
            ranked,
        } = scratch;
        available.clear();
        full.clear();
        for &index in eligible {
            let Some(destination) = destinations.get(index) else {
                continue;
            };
            match destination.capacity().refusal(now, for_call) {
                None => available.push(index),
                Some(Refusal::Draining) => {}
                Some(Refusal::Full | Refusal::Paced(_)) => full.push(index),
            }
        }
        if self.tiers.is_empty() {
            selector.rank(destinations, available, key, out);
            out.append(full);
            return;
        }
        out.clear();
        let priority_of = |index: &usize| destinations.get(*index).map_or(0, |d| d.priority);
        // Tiers with enough available first, then the others' available.
        // A tier smaller than the threshold (counting the destinations the
        // attrs filter leaves) needs all of itself.
        let tier_size = |priority: i32, size: usize| match attrs.filter(|f| !f.is_empty()) {
            None => size,
            Some(filter) => destinations
                .iter()
                .filter(|d| d.priority == priority && d.matches_attrs(filter))
                .count(),
        };
        for spilling in [false, true] {
            for &(priority, size) in &self.tiers {
                part.clear();
                part.extend(available.iter().filter(|i| priority_of(i) == priority));
                let needed = self.spill_threshold.min(tier_size(priority, size));
                let enough = part.len() >= needed;
                if part.is_empty() || enough == spilling {
                    continue;
                }
                selector.rank(destinations, part, key, ranked);
                out.append(ranked);
            }
        }
        full.sort_by_key(|index| (priority_of(index), *index));
        out.append(full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::algorithm::{test_group, Algorithm};

    fn tiered(weights_and_priorities: &[(u32, i32)]) -> Vec<Destination> {
        let weights: Vec<u32> = weights_and_priorities.iter().map(|(w, _)| *w).collect();
        test_group(&weights)
            .into_iter()
            .zip(weights_and_priorities)
            .map(|(d, (_, p))| d.with_priority(*p))
            .collect()
    }

    fn ranking(
        tiers: &Tiers,
        selector: &mut AnySelector,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        let request = RankFor {
            key,
            attrs: None,
            for_call: true,
            now: Instant::now(),
        };
        tiers.rank(
            selector,
            (group, eligible),
            request,
            &mut RankScratch::default(),
            &mut out,
        );
        out
    }

    #[test]
    fn the_lowest_tier_takes_everything_while_it_can() {
        let group = tiered(&[(1, 1), (1, 0), (1, 0), (1, 5)]);
        let tiers = Tiers::new(&group, 1);
        for algorithm in Algorithm::ALL {
            let mut selector = AnySelector::new(algorithm);
            selector.prepare(&group);
            for n in 0..20 {
                let key = format!("sip:user{n}@example.com");
                let out = ranking(
                    &tiers,
                    &mut selector,
                    &group,
                    &[0, 1, 2, 3],
                    Some(key.as_bytes()),
                );
                assert!(
                    matches!(out[..2], [1, 2] | [2, 1]),
                    "{algorithm}: tier 0 first, got {out:?}"
                );
                assert_eq!(out[2..], [0, 3], "{algorithm}: then tiers 1 and 5");
            }
            // Tier 0 down: tier 1 first.
            let out = ranking(&tiers, &mut selector, &group, &[0, 3], Some(b"k"));
            assert_eq!(out, [0, 3]);
        }
    }

    #[test]
    fn a_tier_with_fewer_than_spill_threshold_available_spills() {
        let group = tiered(&[(1, 0), (1, 0), (1, 0), (1, 1), (1, 1)]);
        let tiers = Tiers::new(&group, 2);
        let mut selector = AnySelector::new(Algorithm::RoundRobin);
        selector.prepare(&group);
        // Two of tier 0 up: still tier 0.
        let out = ranking(&tiers, &mut selector, &group, &[0, 1, 3, 4], None);
        assert!(matches!(out[..2], [0, 1] | [1, 0]), "{out:?}");
        // One: tier 1 first, the survivor of tier 0 after it.
        let out = ranking(&tiers, &mut selector, &group, &[2, 3, 4], None);
        assert!(matches!(out[..2], [3, 4] | [4, 3]), "{out:?}");
        assert_eq!(out[2], 2);
        // A tier smaller than the threshold needs all of itself.
        let small = tiered(&[(1, 0), (1, 1), (1, 1)]);
        let tiers = Tiers::new(&small, 2);
        let out = ranking(&tiers, &mut selector, &small, &[0, 1, 2], None);
        assert_eq!(out[0], 0);
    }

    #[test]
    fn full_destinations_go_last_and_drained_ones_not_at_all() {
        let group = tiered(&[(1, 0), (1, 0), (1, 1)]);
        group[0].capacity().set_limits(Some(1), None);
        let _call = group[0].capacity().reserve(Instant::now()).unwrap();
        for spill in [1, 2] {
            let tiers = Tiers::new(&group, spill);
            let mut selector = AnySelector::new(Algorithm::Hash);
            selector.prepare(&group);
            let out = ranking(&tiers, &mut selector, &group, &[0, 1, 2], Some(b"k"));
            let expected: &[usize] = if spill == 1 { &[1, 2, 0] } else { &[2, 1, 0] };
            assert_eq!(out, expected, "spill_threshold {spill}");
        }
        group[1].capacity().set_draining(true);
        let tiers = Tiers::new(&group, 1);
        let mut selector = AnySelector::new(Algorithm::Weighted);
        let out = ranking(&tiers, &mut selector, &group, &[0, 1, 2], None);
        assert_eq!(out, [2, 0]);
        // One tier: the same rules.
        let flat = test_group(&[1, 1]);
        flat[1].capacity().set_draining(true);
        let out = ranking(&Tiers::new(&flat, 1), &mut selector, &flat, &[0, 1], None);
        assert_eq!(out, [0]);
    }

    #[test]
    fn a_request_that_is_no_call_minds_only_drains() {
        let group = tiered(&[(1, 0), (1, 0), (1, 1)]);
        group[0].capacity().set_limits(Some(1), None);
        let _call = group[0].capacity().reserve(Instant::now()).unwrap();
        let tiers = Tiers::new(&group, 1);
        let mut selector = AnySelector::for_group(Algorithm::Hash, Some(1.25));
        selector.prepare(&group);
        let mut out = Vec::new();
        let register = RankFor {
            key: Some(b"sip:alice@example.com"),
            attrs: None,
            for_call: false,
            now: Instant::now(),
        };
        let mut scratch = RankScratch::default();
        tiers.rank(
            &mut selector,
            (&group, &[0, 1, 2]),
            register,
            &mut scratch,
            &mut out,
        );
        let mut plain = AnySelector::new(Algorithm::Hash);
        let mut hrw = Vec::new();
        plain.rank(&group, &[0, 1], register.key, &mut hrw);
        assert_eq!(out[..2], hrw[..], "tier 0 in HRW order, full or not");
        assert_eq!(out[2], 2);
        group[1].capacity().set_draining(true);
        tiers.rank(
            &mut selector,
            (&group, &[0, 1, 2]),
            register,
            &mut scratch,
            &mut out,
        );
        assert_eq!(out, [0, 2]);
    }

    #[test]
    fn the_spill_threshold_counts_the_tier_the_attrs_leave() {
        let group: Vec<Destination> = tiered(&[(1, 0), (1, 0), (1, 0), (1, 1)])
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.with_attr("zone", if i == 0 || i == 3 { "a" } else { "b" }))
            .collect();
        let tiers = Tiers::new(&group, 2);
        let mut selector = AnySelector::new(Algorithm::Weighted);
        let zone_a: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let request = RankFor {
            key: None,
            attrs: Some(&zone_a),
            for_call: true,
            now: Instant::now(),
        };
        let mut out = Vec::new();
        let eligible = [0, 3];
        let mut scratch = RankScratch::default();
        tiers.rank(
            &mut selector,
            (&group, &eligible),
            request,
            &mut scratch,
            &mut out,
        );
        assert_eq!(out, [0, 3], "zone a's tier 0 is one destination, all up");
    }
}
