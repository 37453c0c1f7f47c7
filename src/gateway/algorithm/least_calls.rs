//! Least calls: the destination with the fewest calls per unit of weight.
//!
//! The load is what the core counts (calls set up or established, see
//! `proxy::capacity`), so a burst of INVITEs spreads at once instead of
//! piling onto whoever looked idle before their 2xx came back. Ties (an
//! idle group, or equal loads) are broken by smooth weighted rotation, so
//! equal destinations take turns rather than the first always winning.
//! The failover order is by load, then by index. Weight 0 is a standby:
//! after every weighted destination.

use std::cmp::Ordering;

use super::weighted::SmoothWeighted;
use super::Selector;
use crate::gateway::destination::Destination;

#[derive(Debug, Clone, Default)]
pub struct LeastCalls {
    rotation: SmoothWeighted,
    /// Scratch: each eligible destination's load, read once per ranking
    /// (other shards change the counts meanwhile).
    loads: Vec<Load>,
    /// Scratch: the destinations tied for the lowest load.
    tied: Vec<usize>,
}

/// One destination's load as read for a ranking: standbys last, then
/// calls per weight, compared without dividing.
#[derive(Debug, Clone, Copy)]
struct Load {
    standby: bool,
    calls: u64,
    weight: u64,
    index: usize,
}

impl Load {
    fn of(group: &[Destination], index: usize) -> Option<Load> {
        let destination = group.get(index)?;
        Some(Load {
            standby: destination.weight == 0,
            calls: u64::from(destination.capacity().calls_in_use()),
            weight: u64::from(destination.weight.max(1)),
            index,
        })
    }

    fn cmp_load(&self, other: &Load) -> Ordering {
        self.standby
            .cmp(&other.standby)
            .then((self.calls * other.weight).cmp(&(other.calls * self.weight)))
    }
}

impl LeastCalls {
    /// Reads the loads of `eligible` once.
    fn snapshot(&mut self, group: &[Destination], eligible: &[usize]) {
        self.loads.clear();
        self.loads
            .extend(eligible.iter().filter_map(|&index| Load::of(group, index)));
    }

    /// The least loaded of the snapshot, ties broken by rotation.
    fn pick_from_snapshot(&mut self, group: &[Destination]) -> Option<usize> {
        let least = *self.loads.iter().min_by(|a, b| a.cmp_load(b))?;
        self.tied.clear();
        self.tied.extend(
            self.loads
                .iter()
                .filter(|load| load.cmp_load(&least) == Ordering::Equal)
                .map(|load| load.index),
        );
        let tied = std::mem::take(&mut self.tied);
        let chosen = self.rotation.pick(group, &tied, None);
        self.tied = tied;
        chosen
    }
}

impl Selector for LeastCalls {
    fn prepare(&mut self, group: &[Destination]) {
        self.rotation.prepare(group);
    }

    fn pick(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        _key: Option<&[u8]>,
    ) -> Option<usize> {
        self.snapshot(group, eligible);
        self.pick_from_snapshot(group)
    }

    fn rank(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        _key: Option<&[u8]>,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        self.snapshot(group, eligible);
        let Some(chosen) = self.pick_from_snapshot(group) else {
            return;
        };
        out.push(chosen);
        self.loads
            .sort_by(|a, b| a.cmp_load(b).then(a.index.cmp(&b.index)));
        out.extend(
            self.loads
                .iter()
                .map(|load| load.index)
                .filter(|&index| index != chosen),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::algorithm::test_group;
    use std::time::Instant;

    /// Holds `calls` reservations on destination `index`.
    fn load(group: &[Destination], index: usize, calls: usize) -> Vec<impl Sized> {
        (0..calls)
            .map(|_| group[index].capacity().reserve(Instant::now()).unwrap())
            .collect()
    }

    #[test]
    fn the_fewest_calls_per_weight_wins_and_the_rest_follow_by_load() {
        let group = test_group(&[1, 2, 1]);
        let mut selector = LeastCalls::default();
        selector.prepare(&group);
        let _a = load(&group, 0, 3);
        let _b = load(&group, 1, 4); // 2 per weight
        let _c = load(&group, 2, 1);
        let mut out = Vec::new();
        selector.rank(&group, &[0, 1, 2], None, &mut out);
        assert_eq!(out, [2, 1, 0]);
        let _c2 = load(&group, 2, 2); // 3 per weight: ties with 0
        selector.rank(&group, &[0, 1, 2], None, &mut out);
        assert_eq!(out, [1, 0, 2]);
    }

    #[test]
    fn ties_rotate_by_weight() {
        let group = test_group(&[2, 1]);
        let mut selector = LeastCalls::default();
        selector.prepare(&group);
        let picks: Vec<usize> = (0..6)
            .map(|_| selector.pick(&group, &[0, 1], None).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn calls_spread_evenly_as_they_are_taken() {
        let group = test_group(&[1, 1, 1, 1]);
        let mut selector = LeastCalls::default();
        selector.prepare(&group);
        let mut held = Vec::new();
        for _ in 0..40 {
            let chosen = selector.pick(&group, &[0, 1, 2, 3], None).unwrap();
            held.push(group[chosen].capacity().reserve(Instant::now()).unwrap());
        }
        let counts: Vec<u32> = group.iter().map(|d| d.capacity().calls_in_use()).collect();
        assert_eq!(counts, [10, 10, 10, 10]);
    }

    #[test]
    fn a_standby_is_last_whatever_its_load() {
        let group = test_group(&[0, 1]);
        let mut selector = LeastCalls::default();
        selector.prepare(&group);
        let _busy = load(&group, 1, 5);
        let mut out = Vec::new();
        selector.rank(&group, &[0, 1], None, &mut out);
        assert_eq!(out, [1, 0]);
        selector.rank(&group, &[0], None, &mut out);
        assert_eq!(out, [0], "alone, a standby is chosen");
    }
}
