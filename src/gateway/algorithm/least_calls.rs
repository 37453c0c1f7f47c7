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
    /// Scratch: the destinations tied for the lowest load.
    tied: Vec<usize>,
}

/// Compares `a`'s and `b`'s calls per weight without dividing:
/// `a.calls / a.weight` against `b.calls / b.weight`. Standbys come last.
fn by_load(group: &[Destination], a: usize, b: usize) -> Ordering {
    let load = |index: usize| {
        group.get(index).map_or((true, 0, 1), |d| {
            (
                d.weight == 0,
                u64::from(d.capacity().calls_in_use()),
                u64::from(d.weight.max(1)),
            )
        })
    };
    let ((a_standby, a_calls, a_weight), (b_standby, b_calls, b_weight)) = (load(a), load(b));
    a_standby
        .cmp(&b_standby)
        .then((a_calls * b_weight).cmp(&(b_calls * a_weight)))
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
        let least = eligible
            .iter()
            .copied()
            .filter(|&index| index < group.len())
            .min_by(|&a, &b| by_load(group, a, b))?;
        self.tied.clear();
        self.tied.extend(
            eligible
                .iter()
                .copied()
                .filter(|&index| index < group.len())
                .filter(|&index| by_load(group, index, least) == Ordering::Equal),
        );
        let tied = std::mem::take(&mut self.tied);
        let chosen = self.rotation.pick(group, &tied, None);
        self.tied = tied;
        chosen
    }

    fn rank(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        key: Option<&[u8]>,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let Some(chosen) = self.pick(group, eligible, key) else {
            return;
        };
        out.push(chosen);
        out.extend(
            eligible
                .iter()
                .copied()
                .filter(|&index| index != chosen && index < group.len()),
        );
        out[1..].sort_by(|&a, &b| by_load(group, a, b).then(a.cmp(&b)));
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
