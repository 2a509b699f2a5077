//! Which items an RL step samples: a keyed, deterministic subset of a split per step.

use crate::util::rng::keyed;
use rand::seq::SliceRandom;

/// The indices (ascending) of the `per_step` items of step `step` (0-based) among `n` items.
///
/// Epochs are keyed permutations of the items, consumed `per_step` at a time, so consecutive
/// steps see disjoint items until an epoch is used up, and every item once per epoch. A step
/// that straddles two epochs takes the end of one and the start of the next (an item may then
/// appear twice only if `per_step` exceeds `n`; it is kept once). Depends only on
/// (`n`, `per_step`, `step`, `seed`).
pub fn step_items(n: usize, per_step: usize, step: usize, seed: u64) -> Vec<usize> {
    if n == 0 || per_step == 0 {
        return Vec::new();
    }
    let start = step * per_step;
    let mut out = Vec::with_capacity(per_step);
    let mut perm_epoch = usize::MAX;
    let mut perm: Vec<usize> = Vec::new();
    for c in start..start + per_step {
        let epoch = c / n;
        if epoch != perm_epoch {
            perm = (0..n).collect();
            perm.shuffle(&mut keyed(seed, "rl/step-items", epoch as u64, 0));
            perm_epoch = epoch;
        }
        out.push(perm[c % n]);
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_cover_an_epoch_once_and_are_keyed() {
        let mut seen: Vec<usize> = (0..4).flat_map(|k| step_items(12, 3, k, 5)).collect();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        assert_eq!(step_items(12, 3, 2, 5), step_items(12, 3, 2, 5));
        assert_ne!(step_items(12, 3, 0, 5), step_items(12, 3, 0, 6));
        // The next epoch is another permutation.
        let second: Vec<Vec<usize>> = (4..8).map(|k| step_items(12, 3, k, 5)).collect();
        let first: Vec<Vec<usize>> = (0..4).map(|k| step_items(12, 3, k, 5)).collect();
        assert_ne!(first, second);
        assert_eq!(step_items(5, 8, 0, 1), (0..5).collect::<Vec<_>>());
        assert!(step_items(0, 3, 0, 1).is_empty());
    }
}
