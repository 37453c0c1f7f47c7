//! Weighted rendezvous hashing (HRW) for subscriber affinity.
//!
//! Every (key, destination) pair gets a score; the highest score wins and the
//! full descending order is the failover order. The score depends only on the
//! key, the destination's uri and its weight, so:
//! - every node, restart and build maps a key to the same destination;
//! - when a destination goes down, only the keys it won move, each to its own
//!   runner-up, so they spread over the others by weight (not onto one
//!   neighbour, as a ring would, nor reshuffling everything, as `hash % n`);
//! - when it comes back, exactly the original mapping returns.
//!
//! Score: `h = xxh3(key_hash ++ uri_hash)` with the fixed seed [`KEY_SEED`],
//! mapped to `u` in (0, 1), then `weight / -ln(u)`. `-ln(u) / weight` is an
//! exponential race with rate `weight`, so a destination wins a share of keys
//! equal to its share of the total weight. The uri hash is computed once per
//! destination ([`Selector::prepare`]); per call the key is hashed once and
//! combined with each uri hash through xxh3's 16-byte path (a 128-bit multiply
//! mix), so the result stays a pure function of (key, uri).
//!
//! A key that is a SIP, SIPS or tel URI (bare or as a name-addr) is hashed as
//! its address of record ([`crate::sip::uri::address_of_record`]): phones
//! write `;transport=udp`, display names, upper-case hosts or `:5060` into
//! some requests and not others, and all of these must reach the backend that
//! holds the subscriber's binding. Any other key is hashed as given.
//!
//! Without a key there is nothing to be sticky on: the selector falls back to
//! smooth weighted round-robin.

use std::cmp::Ordering;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::weighted::SmoothWeighted;
use super::Selector;
use crate::gateway::destination::Destination;
use crate::sip::uri::address_of_record;

/// Seed of every hash here ("SIPHONLB" in ASCII). Changing it remaps every
/// subscriber: the pinned-value tests exist to stop that happening by accident.
pub const KEY_SEED: u64 = 0x5349_5048_4f4e_4c42;

/// Hash of a destination's stable id, computed once per destination.
pub fn uri_seed(uri: &str) -> u64 {
    xxh3_64_with_seed(uri.as_bytes(), KEY_SEED)
}

fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED)
}

/// The hash of a selection key: of its address of record when the key is a
/// URI, otherwise of the key's bytes.
fn selection_key_hash(key: &[u8]) -> u64 {
    let aor = std::str::from_utf8(key).ok().and_then(address_of_record);
    match aor {
        Some(aor) => key_hash(aor.as_bytes()),
        None => key_hash(key),
    }
}

fn combine(key_hash: u64, uri_seed: u64) -> u64 {
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&key_hash.to_le_bytes());
    input[8..].copy_from_slice(&uri_seed.to_le_bytes());
    xxh3_64_with_seed(&input, KEY_SEED)
}

/// The 64-bit hash that scores `key` against the destination `uri` (before
/// weighting). Public so that tests and tools can pin and reproduce it.
pub fn destination_score_input(key: &[u8], uri: &str) -> u64 {
    combine(key_hash(key), uri_seed(uri))
}

/// Weighted score of one pair; higher wins. Weight 0 scores 0 (a standby:
/// after every weighted destination, ordered among standbys by the hash).
fn weighted_score(weight: u32, hash: u64) -> f64 {
    if weight == 0 {
        return 0.0;
    }
    // Top 53 bits, centred in their interval: u is never 0 or 1, so ln(u) is
    // finite and negative.
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -unit.ln()
}

/// Compare two (score, hash) pairs, best first. The hash breaks exact ties
/// so the order never depends on the order of `eligible`.
fn best_first(a: &(f64, u64, usize), b: &(f64, u64, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
}

/// Rendezvous-hash selector: per-destination uri hashes, a reusable scoring
/// buffer for ranking, and the keyless fallback.
#[derive(Debug, Clone, Default)]
pub struct HashSelector {
    uri_seeds: Vec<u64>,
    scored: Vec<(f64, u64, usize)>,
    fallback: SmoothWeighted,
    /// `hash_bound`: a key passes over a destination loaded past this many
    /// times the mean calls per weight (consistent hashing with bounded
    /// loads); None keeps pure HRW.
    bound: Option<f64>,
    /// Scratch: the ranking when `pick` needs one.
    ranked: Vec<usize>,
    /// Scratch: each ranked destination's load, read once.
    loads: Vec<(usize, u32, u32)>,
    /// The request being ranked is a new call (see [`HashSelector::bound_calls_only`]).
    for_call: bool,
}

impl HashSelector {
    /// A selector whose keys move past a destination loaded over `bound`
    /// times the mean calls per weight, and only then.
    pub fn bounded(bound: Option<f64>) -> Self {
        HashSelector {
            bound,
            for_call: true,
            ..HashSelector::default()
        }
    }

    /// Moves the destinations over the bound after those under it, each
    /// part in HRW order. The capacity of destination `i` is
    /// `bound × (calls + 1) × weight_i / total weight`, so that an idle
    /// group keeps every key on its first choice. Each load is read once:
    /// other shards change them meanwhile.
    fn apply_bound(&mut self, bound: f64, group: &[Destination], ranking: &mut [usize]) {
        let loads = &mut self.loads;
        loads.clear();
        loads.extend(ranking.iter().map(|&index| {
            let destination = group.get(index);
            let calls = destination.map_or(0, |d| d.capacity().calls_in_use());
            (index, calls, destination.map_or(0, |d| d.weight))
        }));
        let (calls, weight) = loads
            .iter()
            .fold((0u64, 0u64), |(c, w), &(_, calls, weight)| {
                (c + u64::from(calls), w + u64::from(weight))
            });
        if weight == 0 {
            return;
        }
        let per_weight = bound * (calls + 1) as f64 / weight as f64;
        let under = |&(_, calls, weight): &(usize, u32, u32)| {
            f64::from(calls) < per_weight * f64::from(weight)
        };
        // A stable partition: under the bound first.
        let partitioned = loads
            .iter()
            .filter(|e| under(e))
            .chain(loads.iter().filter(|e| !under(e)));
        for (slot, entry) in ranking.iter_mut().zip(partitioned) {
            *slot = entry.0;
        }
    }

    /// Whether the bound applies to the next ranking: to new calls only. A
    /// REGISTER or any other request keeps its first choice, so that a
    /// subscriber's binding stays where its calls look first.
    pub fn bound_calls_only(&mut self, for_call: bool) {
        self.for_call = for_call;
    }

    fn fit(&mut self, group: &[Destination]) {
        if self.uri_seeds.len() != group.len() {
            self.uri_seeds.clear();
            self.uri_seeds
                .extend(group.iter().map(|destination| uri_seed(&destination.uri)));
        }
    }

    /// Score of `index` for the hashed key; `None` for an index out of range.
    fn score(
        &self,
        group: &[Destination],
        index: usize,
        key_hash: u64,
    ) -> Option<(f64, u64, usize)> {
        let destination = group.get(index)?;
        let seed = *self.uri_seeds.get(index)?;
        let hash = combine(key_hash, seed);
        Some((weighted_score(destination.weight, hash), hash, index))
    }
}

impl Selector for HashSelector {
    fn prepare(&mut self, group: &[Destination]) {
        self.uri_seeds.clear();
        self.fit(group);
        self.fallback.prepare(group);
    }

    fn pick(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
    ) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(group, eligible, None);
        };
        if self.bound.is_some() && self.for_call {
            let mut ranked = std::mem::take(&mut self.ranked);
            self.rank(group, eligible, Some(key), &mut ranked);
            let first = ranked.first().copied();
            self.ranked = ranked;
            return first;
        }
        self.fit(group);
        let hashed = selection_key_hash(key);
        eligible
            .iter()
            .filter_map(|&index| self.score(group, index, hashed))
            .min_by(best_first)
            .map(|(_, _, index)| index)
    }

    fn rank(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
        out: &mut Vec<usize>,
    ) {
        let Some(key) = key else {
            self.fallback.rank(group, eligible, None, out);
            return;
        };
        self.fit(group);
        let hashed = selection_key_hash(key);
        let mut scored = std::mem::take(&mut self.scored);
        scored.clear();
        scored.extend(
            eligible
                .iter()
                .filter_map(|&index| self.score(group, index, hashed)),
        );
        scored.sort_unstable_by(best_first);
        out.clear();
        out.extend(scored.iter().map(|&(_, _, index)| index));
        self.scored = scored;
        if let (Some(bound), true) = (self.bound, self.for_call) {
            self.apply_bound(bound, group, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_group;
    use super::*;

    const KEYS: usize = 100_000;

    fn key(n: usize) -> String {
        format!("sip:user{n}@example.com")
    }

    /// The winner of every test key, with `eligible` up.
    fn mapping(
        selector: &mut HashSelector,
        group: &[Destination],
        eligible: &[usize],
    ) -> Vec<usize> {
        (0..KEYS)
            .map(|n| {
                selector
                    .pick(group, eligible, Some(key(n).as_bytes()))
                    .expect("eligible is not empty")
            })
            .collect()
    }

    fn counts(mapping: &[usize], group_len: usize) -> Vec<usize> {
        let mut counts = vec![0; group_len];
        for &index in mapping {
            counts[index] += 1;
        }
        counts
    }

    fn assert_share(count: usize, total: usize, expected_share: f64, tolerance: f64, what: &str) {
        let expected = total as f64 * expected_share;
        let deviation = (count as f64 - expected).abs() / expected;
        assert!(
            deviation <= tolerance,
            "{what}: {count} of {total}, expected {expected} within {tolerance}"
        );
    }

    #[test]
    fn equal_destinations_each_get_a_fifth_within_three_percent() {
        let group = test_group(&[1; 5]);
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let all: Vec<usize> = (0..5).collect();
        let counts = counts(&mapping(&mut selector, &group, &all), 5);
        for (index, &count) in counts.iter().enumerate() {
            assert_share(count, KEYS, 0.2, 0.03, &format!("destination {index}"));
        }
    }

    #[test]
    fn removing_one_moves_only_its_keys_evenly_and_restores_exactly() {
        let group = test_group(&[1; 5]);
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let all: Vec<usize> = (0..5).collect();
        let original = mapping(&mut selector, &group, &all);
        for removed in 0..5 {
            let rest: Vec<usize> = all.iter().copied().filter(|&i| i != removed).collect();
            let without = mapping(&mut selector, &group, &rest);
            let mut moved_to = [0usize; 5];
            for (before, after) in original.iter().zip(&without) {
                if *before == removed {
                    moved_to[*after] += 1;
                } else {
                    assert_eq!(before, after, "a key not on {removed} moved");
                }
            }
            let moved: usize = moved_to.iter().sum();
            assert_eq!(moved, original.iter().filter(|&&i| i == removed).count());
            for &other in &rest {
                assert_share(
                    moved_to[other],
                    moved,
                    0.25,
                    0.05,
                    &format!("keys of {removed} moved to {other}"),
                );
            }
            let back = mapping(&mut selector, &group, &all);
            assert_eq!(back, original, "mapping returns when {removed} is back");
        }
    }

    #[test]
    fn weights_two_one_one_give_half_quarter_quarter() {
        let group = test_group(&[2, 1, 1]);
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let counts = counts(&mapping(&mut selector, &group, &[0, 1, 2]), 3);
        assert_share(counts[0], KEYS, 0.5, 0.03, "weight 2");
        assert_share(counts[1], KEYS, 0.25, 0.03, "weight 1 (b)");
        assert_share(counts[2], KEYS, 0.25, 0.03, "weight 1 (c)");
    }

    #[test]
    fn rank_is_the_failover_order() {
        let group = test_group(&[2, 1, 1, 3]);
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let all = [0, 1, 2, 3];
        let mut ranked = Vec::new();
        let mut without_first = Vec::new();
        for n in 0..1_000 {
            let key = key(n);
            selector.rank(&group, &all, Some(key.as_bytes()), &mut ranked);
            let mut sorted = ranked.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, all, "a permutation of eligible");
            assert_eq!(
                Some(ranked[0]),
                selector.pick(&group, &all, Some(key.as_bytes()))
            );
            // Taking the winner away promotes exactly the runner-up and keeps
            // the rest of the order: the ranking is the failover order.
            let rest: Vec<usize> = all.iter().copied().filter(|&i| i != ranked[0]).collect();
            selector.rank(&group, &rest, Some(key.as_bytes()), &mut without_first);
            assert_eq!(without_first, ranked[1..]);
        }
    }

    #[test]
    fn order_of_eligible_does_not_matter() {
        let group = test_group(&[1, 1, 1]);
        let mut selector = HashSelector::default();
        for n in 0..100 {
            let key = key(n);
            assert_eq!(
                selector.pick(&group, &[0, 1, 2], Some(key.as_bytes())),
                selector.pick(&group, &[2, 0, 1], Some(key.as_bytes()))
            );
        }
    }

    #[test]
    fn standby_is_ranked_after_weighted_destinations() {
        let group = test_group(&[0, 1, 1]);
        let mut selector = HashSelector::default();
        let mut ranked = Vec::new();
        for n in 0..200 {
            selector.rank(&group, &[0, 1, 2], Some(key(n).as_bytes()), &mut ranked);
            assert_eq!(ranked.last(), Some(&0));
        }
        // Alone, the standby still serves.
        assert_eq!(selector.pick(&group, &[0], Some(b"k")), Some(0));
    }

    #[test]
    fn without_a_key_falls_back_to_smooth_weighted() {
        let group = test_group(&[2, 1]);
        let mut selector = HashSelector::default();
        let sequence: Vec<Option<usize>> = (0..6)
            .map(|_| selector.pick(&group, &[0, 1], None))
            .collect();
        let expected: Vec<Option<usize>> = [0, 1, 0, 0, 1, 0].into_iter().map(Some).collect();
        assert_eq!(sequence, expected);
    }

    #[test]
    fn prepare_notices_a_changed_uri() {
        let mut group = test_group(&[1, 1]);
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let key = b"sip:alice@example.com";
        let mut ranked = Vec::new();
        selector.rank(&group, &[0, 1], Some(key), &mut ranked);
        // Swap the uris: after prepare the winner follows its uri.
        let (first, second) = (group[0].uri.clone(), group[1].uri.clone());
        group[0].uri = second;
        group[1].uri = first;
        selector.prepare(&group);
        assert_eq!(
            selector.pick(&group, &[0, 1], Some(key)),
            Some(1 - ranked[0])
        );
    }

    /// Pinned values: if one of these fails, subscribers would be remapped
    /// across a build. Do not update them without a migration plan.
    #[test]
    fn score_input_is_pinned() {
        assert_eq!(
            destination_score_input(b"sip:alice@example.com", "sip:backend1.example.com:5060"),
            PINNED_ALICE_BACKEND1
        );
        assert_eq!(
            uri_seed("sip:backend1.example.com:5060"),
            PINNED_BACKEND1_SEED
        );
    }

    #[test]
    fn fixed_keys_map_to_pinned_destinations() {
        let address = std::net::SocketAddr::from(([10, 0, 0, 1], 5060));
        let group: Vec<Destination> = [
            "sip:backend1.example.com:5060",
            "sip:backend2.example.com:5060",
            "sip:backend3.example.com:5060",
        ]
        .into_iter()
        .map(|uri| Destination::new(uri, address))
        .collect();
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let keys = [
            "sip:alice@example.com",
            "sip:bob@example.com",
            "sip:carol@example.com",
            "sip:dave@example.com",
            "sip:erin@example.com",
        ];
        let winners: Vec<&str> = keys
            .iter()
            .map(|key| {
                let index = selector
                    .pick(&group, &[0, 1, 2], Some(key.as_bytes()))
                    .expect("eligible");
                group[index].uri.as_str()
            })
            .collect();
        assert_eq!(winners, PINNED_WINNERS);
    }

    #[test]
    fn a_subscriber_keeps_its_destination_whatever_its_phone_adds() {
        let group = test_group(&[1; 5]);
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let all = [0, 1, 2, 3, 4];
        for n in 0..1_000 {
            let register = format!("sip:user{n}@example.com");
            let expected = selector.pick(&group, &all, Some(register.as_bytes()));
            for variant in [
                format!("sip:user{n}@example.com;transport=udp"),
                format!("<sip:user{n}@EXAMPLE.com;transport=udp>"),
                format!("sip:user{n}@example.com:5060;user=phone"),
                format!("\"User {n}\" <sip:user{n}@Example.COM>;tag=abc"),
            ] {
                assert_eq!(
                    selector.pick(&group, &all, Some(variant.as_bytes())),
                    expected,
                    "{variant}"
                );
            }
        }
    }

    #[test]
    fn a_key_that_is_not_a_uri_is_hashed_as_given() {
        // A Call-ID is not a URI: its bytes are the key, so two Call-IDs that
        // differ only in case are two keys.
        let group = test_group(&[1; 8]);
        let mut selector = HashSelector::default();
        selector.prepare(&group);
        let all: Vec<usize> = (0..8).collect();
        let mut ranked_lower = Vec::new();
        let mut ranked_upper = Vec::new();
        let differing = (0..50)
            .filter(|n| {
                let call_id = format!("a84b4c76e6{n}@pc33.atlanta.com");
                selector.rank(&group, &all, Some(call_id.as_bytes()), &mut ranked_lower);
                let upper = call_id.to_ascii_uppercase();
                selector.rank(&group, &all, Some(upper.as_bytes()), &mut ranked_upper);
                ranked_lower != ranked_upper
            })
            .count();
        assert!(differing > 40, "only {differing} of 50 rankings differ");
    }

    // Cross-checked against the reference xxHash C library (python-xxhash,
    // `xxh3_64_intdigest(..., seed=KEY_SEED)`) with the same combination.
    const PINNED_ALICE_BACKEND1: u64 = 7_026_712_769_442_815_210;
    const PINNED_BACKEND1_SEED: u64 = 17_280_622_511_055_479_562;
    const PINNED_WINNERS: [&str; 5] = [
        "sip:backend3.example.com:5060", // alice
        "sip:backend2.example.com:5060", // bob
        "sip:backend1.example.com:5060", // carol
        "sip:backend1.example.com:5060", // dave
        "sip:backend2.example.com:5060", // erin
    ];

    #[test]
    fn a_bound_moves_a_key_only_while_its_first_choice_is_over_it() {
        let group = test_group(&[1, 1, 1, 1]);
        let mut plain = HashSelector::default();
        let mut bounded = HashSelector::bounded(Some(1.25));
        plain.prepare(&group);
        bounded.prepare(&group);
        let key = b"sip:hot@example.com";
        let mut hrw = Vec::new();
        plain.rank(&group, &[0, 1, 2, 3], Some(key), &mut hrw);
        // Idle: the bound changes nothing.
        assert_eq!(bounded.pick(&group, &[0, 1, 2, 3], Some(key)), Some(hrw[0]));
        // Ten calls on the first choice, none elsewhere: 10 is past
        // 1.25 × (10 + 1) / 4, so the key goes to its second choice.
        let held: Vec<_> = (0..10)
            .map(|_| {
                group[hrw[0]]
                    .capacity()
                    .reserve(std::time::Instant::now())
                    .unwrap()
            })
            .collect();
        let mut out = Vec::new();
        bounded.rank(&group, &[0, 1, 2, 3], Some(key), &mut out);
        assert_eq!(out, [hrw[1], hrw[2], hrw[3], hrw[0]]);
        // Unbounded: as ever.
        assert_eq!(plain.pick(&group, &[0, 1, 2, 3], Some(key)), Some(hrw[0]));
        drop(held);
        assert_eq!(
            bounded.pick(&group, &[0, 1, 2, 3], Some(key)),
            Some(hrw[0]),
            "back"
        );
    }

    #[test]
    fn without_a_bound_every_key_maps_as_before() {
        let group = test_group(&[3, 1, 2]);
        let mut plain = HashSelector::default();
        let mut unbounded = HashSelector::bounded(None);
        for n in 0..2000 {
            let key = key(n);
            assert_eq!(
                plain.pick(&group, &[0, 1, 2], Some(key.as_bytes())),
                unbounded.pick(&group, &[0, 1, 2], Some(key.as_bytes()))
            );
        }
    }
}
