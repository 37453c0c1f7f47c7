//! Even rotation over the eligible destinations, ignoring weight.
//!
//! The cursor is the index of the destination picked last, not a position in
//! the eligible list: the next pick is the first eligible index after it,
//! wrapping around. When a destination drops out or comes back, the rotation
//! carries on from where it was instead of jumping, so every eligible
//! destination still gets its turn once per round.

use super::Selector;
use crate::gateway::destination::Destination;

/// Rotation state: the destination picked last.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    last: Option<usize>,
}

impl RoundRobin {
    /// How many steps after the last pick `index` comes, wrapping at the
    /// group's length; the next pick has the smallest distance.
    fn distance(&self, index: usize, group_len: usize) -> usize {
        match self.last {
            Some(last) if last < group_len => (index + group_len - last - 1) % group_len,
            _ => index,
        }
    }

    fn next(&self, group_len: usize, eligible: &[usize]) -> Option<usize> {
        eligible
            .iter()
            .copied()
            .filter(|&index| index < group_len)
            .min_by_key(|&index| self.distance(index, group_len))
    }
}

impl Selector for RoundRobin {
    fn prepare(&mut self, _group: &[Destination]) {
        self.last = None;
    }

    fn pick(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        _key: Option<&[u8]>,
    ) -> Option<usize> {
        let chosen = self.next(group.len(), eligible)?;
        self.last = Some(chosen);
        Some(chosen)
    }

    /// The pick first, then the rest in rotation order after it.
    fn rank(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        _key: Option<&[u8]>,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let group_len = group.len();
        out.extend(eligible.iter().copied().filter(|&index| index < group_len));
        out.sort_unstable_by_key(|&index| self.distance(index, group_len));
        if let Some(&chosen) = out.first() {
            self.last = Some(chosen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_group;
    use super::*;

    #[test]
    fn rotates_exactly_and_ignores_weight() {
        let group = test_group(&[10, 1, 5]);
        let mut selector = RoundRobin::default();
        let sequence: Vec<usize> = (0..9)
            .map(|_| selector.pick(&group, &[0, 1, 2], None).expect("eligible"))
            .collect();
        assert_eq!(sequence, vec![0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_an_unhealthy_destination_evenly() {
        let group = test_group(&[1, 1, 1]);
        let mut selector = RoundRobin::default();
        let sequence: Vec<usize> = (0..6)
            .map(|_| selector.pick(&group, &[0, 2], None).expect("eligible"))
            .collect();
        assert_eq!(sequence, vec![0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn stays_fair_when_the_eligible_set_changes() {
        let group = test_group(&[1, 1, 1, 1]);
        let mut selector = RoundRobin::default();
        let mut sequence = Vec::new();
        for _ in 0..2 {
            sequence.push(selector.pick(&group, &[0, 1, 2, 3], None));
        }
        // 2 goes down right after 1 was picked: the rotation goes on at 3.
        for _ in 0..3 {
            sequence.push(selector.pick(&group, &[0, 1, 3], None));
        }
        // 2 comes back after 1: it gets its turn next, not a restart at 0.
        for _ in 0..3 {
            sequence.push(selector.pick(&group, &[0, 1, 2, 3], None));
        }
        let expected: Vec<Option<usize>> = [0, 1, 3, 0, 1, 2, 3, 0].into_iter().map(Some).collect();
        assert_eq!(sequence, expected);
    }

    #[test]
    fn rank_is_the_rotation_from_the_pick() {
        let group = test_group(&[1, 1, 1, 1]);
        let mut selector = RoundRobin::default();
        let mut out = Vec::new();
        selector.rank(&group, &[0, 1, 2, 3], None, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3]);
        selector.rank(&group, &[0, 1, 2, 3], None, &mut out);
        assert_eq!(out, vec![1, 2, 3, 0]);
        selector.rank(&group, &[0, 1, 3], None, &mut out);
        assert_eq!(out, vec![3, 0, 1]);
        assert_eq!(selector.pick(&group, &[0, 1, 2, 3], None), Some(0));
    }
}
