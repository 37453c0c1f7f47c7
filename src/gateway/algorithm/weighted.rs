//! Smooth weighted round-robin, the nginx algorithm.
//!
//! Each pick adds every eligible destination's weight to its running
//! `current`, chooses the largest `current`, and subtracts the total weight
//! from the chosen one. Weights 2:1 give A B A, A B A, ...: the heavier
//! destination never gets a long burst, which plain weighted round-robin
//! (A A B) would give.

use std::cmp::Ordering;

use super::Selector;
use crate::gateway::destination::Destination;

/// State of the smooth weighted round-robin: one running weight per
/// destination of the group, kept while a destination is ineligible (as nginx
/// does) so its share resumes where it left off.
#[derive(Debug, Clone, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

/// Weight used by the algorithm. Weight 0 marks a standby; when every eligible
/// destination is a standby they share evenly, as if each had weight 1.
fn effective_weight(destination: &Destination, all_standby: bool) -> i64 {
    if all_standby {
        1
    } else {
        i64::from(destination.weight)
    }
}

impl SmoothWeighted {
    fn fit(&mut self, group_len: usize) {
        if self.current.len() != group_len {
            self.current.clear();
            self.current.resize(group_len, 0);
        }
    }

    /// One nginx step over `eligible`: returns the chosen index.
    fn step(&mut self, group: &[Destination], eligible: &[usize]) -> Option<usize> {
        self.fit(group.len());
        let all_standby = eligible
            .iter()
            .filter_map(|&index| group.get(index))
            .all(|destination| destination.weight == 0);
        let mut total: i64 = 0;
        // Best so far: (has positive weight, current, index). A standby never
        // beats a weighted destination, whatever the running values.
        let mut best: Option<(bool, i64, usize)> = None;
        for &index in eligible {
            let (Some(destination), Some(current)) =
                (group.get(index), self.current.get_mut(index))
            else {
                continue;
            };
            let weight = effective_weight(destination, all_standby);
            *current = current.saturating_add(weight);
            total = total.saturating_add(weight);
            let candidate = (weight > 0, *current, index);
            let better = match best {
                None => true,
                Some((best_weighted, best_current, _)) => {
                    (candidate.0, candidate.1) > (best_weighted, best_current)
                }
            };
            if better {
                best = Some(candidate);
            }
        }
        let (_, _, chosen) = best?;
        if let Some(current) = self.current.get_mut(chosen) {
            *current = current.saturating_sub(total);
        }
        Some(chosen)
    }
}

impl Selector for SmoothWeighted {
    fn prepare(&mut self, group: &[Destination]) {
        self.current.clear();
        self.current.resize(group.len(), 0);
    }

    fn pick(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        _key: Option<&[u8]>,
    ) -> Option<usize> {
        self.step(group, eligible)
    }

    /// The pick first, then the others by who would be picked next (largest
    /// running weight after adding their weight), ties by index.
    fn rank(
        &mut self,
        group: &[Destination],
        eligible: &[usize],
        _key: Option<&[u8]>,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let Some(chosen) = self.step(group, eligible) else {
            return;
        };
        out.push(chosen);
        let all_standby = eligible
            .iter()
            .filter_map(|&index| group.get(index))
            .all(|destination| destination.weight == 0);
        out.extend(
            eligible
                .iter()
                .copied()
                .filter(|&index| index != chosen && index < group.len()),
        );
        let next_value = |index: usize| -> (bool, i64) {
            let weight = group
                .get(index)
                .map_or(0, |destination| effective_weight(destination, all_standby));
            let current = self.current.get(index).copied().unwrap_or(0);
            (weight > 0, current.saturating_add(weight))
        };
        if let Some(rest) = out.get_mut(1..) {
            rest.sort_unstable_by(|&a, &b| match next_value(b).cmp(&next_value(a)) {
                Ordering::Equal => a.cmp(&b),
                unequal => unequal,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_group;
    use super::*;

    fn picks(selector: &mut SmoothWeighted, group: &[Destination], n: usize) -> Vec<usize> {
        let eligible: Vec<usize> = (0..group.len()).collect();
        (0..n)
            .map(|_| selector.pick(group, &eligible, None).expect("non-empty"))
            .collect()
    }

    #[test]
    fn weights_two_to_one_give_the_nginx_sequence() {
        let group = test_group(&[2, 1]);
        let mut selector = SmoothWeighted::default();
        // nginx: A(2,1)->A  B(1,2)->B  A(3,0)->A, then it repeats.
        assert_eq!(picks(&mut selector, &group, 6), vec![0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn weights_five_one_one_interleave_like_nginx() {
        // The example from nginx's commit introducing smooth weighting.
        let group = test_group(&[5, 1, 1]);
        let mut selector = SmoothWeighted::default();
        assert_eq!(picks(&mut selector, &group, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn two_to_one_share_within_one_percent_and_no_long_runs() {
        let group = test_group(&[2, 1]);
        let mut selector = SmoothWeighted::default();
        let sequence = picks(&mut selector, &group, 30_000);
        let first_count = sequence.iter().filter(|&&index| index == 0).count();
        let share = first_count as f64 / sequence.len() as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.01, "share {share}");
        let mut run = 1;
        for pair in sequence.windows(2) {
            run = if pair[0] == pair[1] { run + 1 } else { 1 };
            assert!(run <= 2, "more than 2 picks of one destination in a row");
        }
    }

    #[test]
    fn skips_ineligible_and_keeps_proportions_among_the_rest() {
        let group = test_group(&[3, 1, 1]);
        let mut selector = SmoothWeighted::default();
        let mut counts = [0usize; 3];
        for _ in 0..4_000 {
            let chosen = selector.pick(&group, &[0, 2], None).expect("eligible");
            counts[chosen] += 1;
        }
        assert_eq!(counts[1], 0);
        assert_eq!(counts, [3_000, 0, 1_000]);
    }

    #[test]
    fn standby_only_when_no_weighted_destination_is_eligible() {
        let group = test_group(&[0, 1, 0]);
        let mut selector = SmoothWeighted::default();
        for _ in 0..10 {
            assert_eq!(selector.pick(&group, &[0, 1, 2], None), Some(1));
        }
        // Only standbys left: they share evenly.
        let mut counts = [0usize; 3];
        for _ in 0..10 {
            let chosen = selector.pick(&group, &[0, 2], None).expect("eligible");
            counts[chosen] += 1;
        }
        assert_eq!(counts, [5, 0, 5]);
    }

    #[test]
    fn rank_lists_the_pick_then_every_other_eligible_once() {
        let group = test_group(&[2, 1, 1]);
        let mut selector = SmoothWeighted::default();
        let mut out = Vec::new();
        selector.rank(&group, &[0, 1, 2], None, &mut out);
        // Step 1: currents 2,1,1 -> 0 chosen, 0 becomes -2.
        // Next values: 0 -> 0, 1 -> 2, 2 -> 2: so 1 then 2 (tie by index), then 0.
        assert_eq!(out, vec![0, 1, 2]);
        selector.rank(&group, &[0, 1, 2], None, &mut out);
        // Step 2: currents 0,2,2 -> 1 chosen (first max), 1 becomes -2.
        // Next values: 0 -> 2, 1 -> -1, 2 -> 3.
        assert_eq!(out, vec![1, 2, 0]);
    }
}
