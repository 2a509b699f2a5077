//! Group-normalized advantages (GRPO) and their per-token form, with the token reweighting by
//! advantage rescaling of the paper's appendix B.3.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which standard deviation normalizes a group's rewards.
///
/// `Sample` (the default) is the Bessel-corrected deviation, √(Σ(r − r̄)² / (G − 1)): what
/// `torch.std` computes and therefore what verl's `compute_grpo_outcome_advantage` (the
/// implementation the paper's Qwen runs used) and TRL's `GRPOTrainer` divide by. `Population`
/// divides by G instead; for G = 8 the two differ by a factor √(8/7) ≈ 1.07 on every advantage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StdKind {
    #[default]
    Sample,
    Population,
}

/// The ε added to the deviation: Â = (r − mean) / (std + ε), as verl and TRL add 1e-6 (verl) or
/// 1e-4 (TRL); we take verl's.
pub const ADV_EPS: f64 = 1e-6;

/// Â_i = (r_i − mean) / (std + ε) over one group (the G samples of one item).
///
/// A group whose rewards are all equal carries no preference: every advantage is exactly 0
/// (never NaN, whatever the rewards). A group of one sample has no baseline and gets 0 too
/// (verl would pass its raw reward through).
pub fn group_advantages(rewards: &[f64], std: StdKind, eps: f64) -> Vec<f64> {
    let g = rewards.len();
    let (lo, hi) = rewards
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| {
            (a.min(r), b.max(r))
        });
    if g < 2 || lo == hi || !lo.is_finite() || !hi.is_finite() {
        return vec![0.0; g];
    }
    let mean = rewards.iter().sum::<f64>() / g as f64;
    let ss: f64 = rewards.iter().map(|r| (r - mean) * (r - mean)).sum();
    let denom = match std {
        StdKind::Sample => (g - 1) as f64,
        StdKind::Population => g as f64,
    };
    let sd = (ss / denom).sqrt();
    rewards.iter().map(|r| (r - mean) / (sd + eps)).collect()
}

/// Advantages of rows grouped by a key (the item id): row i gets its group's Â. Returns the
/// advantages in row order and, per group, whether it was a zero-advantage group.
pub fn grouped_advantages<K: Ord + Clone>(
    keys: &[K],
    rewards: &[f64],
    std: StdKind,
    eps: f64,
) -> (Vec<f64>, BTreeMap<K, bool>) {
    let mut groups: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups.entry(k.clone()).or_default().push(i);
    }
    let mut adv = vec![0.0; keys.len()];
    let mut zero = BTreeMap::new();
    for (k, rows) in groups {
        let r: Vec<f64> = rows.iter().map(|&i| rewards[i]).collect();
        let a = group_advantages(&r, std, eps);
        zero.insert(k, a.iter().all(|&x| x == 0.0));
        for (&i, x) in rows.iter().zip(a) {
            adv[i] = x;
        }
    }
    (adv, zero)
}

/// The advantage of each of a sequence's `tokens` generated tokens, of which the first
/// `perception_tokens` are the perception segment p and the rest the reasoning r.
///
/// Without `lambda`, every token carries Â (standard GRPO). With `lambda = Some(λ)` (appendix
/// B.3), perception tokens carry λ·|y|/|p|·Â and reasoning tokens (1 − λ)·|y|/|r|·Â, so that the
/// token-averaged objective becomes λ·J_p + (1 − λ)·J_r; λ = |p|/|y| gives back Â everywhere.
/// A segment with no tokens contributes nothing, and its share is not moved to the other one.
pub fn token_advantages(
    advantage: f64,
    tokens: usize,
    perception_tokens: usize,
    lambda: Option<f64>,
) -> Vec<f64> {
    let p = perception_tokens.min(tokens);
    let (sp, sr) = segment_scales(tokens, perception_tokens, lambda);
    let mut out = vec![sp * advantage; p];
    out.extend(std::iter::repeat_n(sr * advantage, tokens - p));
    out
}

/// The factors [`token_advantages`] multiplies Â by on the perception and the reasoning tokens:
/// (1, 1) without `lambda`, (λ·|y|/|p|, (1 − λ)·|y|/|r|) with it (0 for an empty segment).
pub fn segment_scales(tokens: usize, perception_tokens: usize, lambda: Option<f64>) -> (f64, f64) {
    let p = perception_tokens.min(tokens);
    let r = tokens - p;
    let Some(l) = lambda else {
        return (1.0, 1.0);
    };
    let y = tokens as f64;
    let scale = |w: f64, n: usize| if n > 0 { w * y / n as f64 } else { 0.0 };
    (scale(l, p), scale(1.0 - l, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn advantages_follow_the_formula_on_a_hand_made_group() {
        // Rewards 1, 0, 0, 1, 1: mean 0.6, Σ(r − mean)² = 3·0.16 + 2·0.36 = 1.2.
        let r = [1.0, 0.0, 0.0, 1.0, 1.0];
        let sample_sd = (1.2f64 / 4.0).sqrt();
        let pop_sd = (1.2f64 / 5.0).sqrt();
        let want = |sd: f64| r.map(|x| (x - 0.6) / (sd + 1e-6));
        assert!(close(
            &group_advantages(&r, StdKind::Sample, 1e-6),
            &want(sample_sd)
        ));
        assert!(close(
            &group_advantages(&r, StdKind::Population, 1e-6),
            &want(pop_sd)
        ));
        // A group of two: ±1/√2 with the sample deviation, ±1 with the population one.
        let a = group_advantages(&[0.5, 0.0], StdKind::Sample, 0.0);
        assert!(close(&a, &[0.5f64.sqrt(), -(0.5f64.sqrt())]), "{a:?}");
        let a = group_advantages(&[0.5, 0.0], StdKind::Population, 0.0);
        assert!(close(&a, &[1.0, -1.0]), "{a:?}");
        // Fractional rewards (α-augmentation) keep the order and sum to zero.
        let a = group_advantages(&[0.2, 0.7, 1.0, 0.0], StdKind::Sample, ADV_EPS);
        assert!(a.iter().sum::<f64>().abs() < 1e-12);
        assert!(a[2] > a[1] && a[1] > a[0] && a[0] > a[3]);
    }

    #[test]
    fn equal_rewards_give_exactly_zero_never_nan() {
        for r in [
            vec![1.0; 4],
            vec![0.0; 8],
            vec![0.1, 0.1, 0.1],
            vec![0.7],
            vec![],
        ] {
            for std in [StdKind::Sample, StdKind::Population] {
                for eps in [0.0, 1e-6] {
                    let a = group_advantages(&r, std, eps);
                    assert_eq!(a.len(), r.len());
                    assert!(a.iter().all(|&x| x == 0.0), "{r:?} → {a:?}");
                }
            }
        }
    }

    #[test]
    fn grouping_by_item() {
        let keys = ["b", "a", "b", "a", "c", "c"];
        let rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let (adv, zero) = grouped_advantages(&keys, &rewards, StdKind::Population, 0.0);
        assert_eq!(adv, [1.0, -1.0, -1.0, 1.0, 0.0, 0.0]);
        assert_eq!(
            zero.into_iter().collect::<Vec<_>>(),
            [("a", false), ("b", false), ("c", true)]
        );
    }

    #[test]
    fn lambda_p_over_y_reproduces_the_unweighted_advantages() {
        for (y, p) in [(10usize, 3usize), (7, 1), (40, 39)] {
            let plain = token_advantages(-0.8, y, p, None);
            let rw = token_advantages(-0.8, y, p, Some(p as f64 / y as f64));
            assert!(close(&plain, &rw), "{y} {p}: {rw:?}");
        }
    }

    #[test]
    fn rescaling_matches_appendix_b3() {
        // |y| = 5, |p| = 1, |r| = 4, λ = 0.2: p gets 0.2·5/1·Â, r gets 0.8·5/4·Â.
        let a = token_advantages(2.0, 5, 1, Some(0.2));
        assert!(close(&a, &[2.0, 2.0, 2.0, 2.0, 2.0]), "{a:?}");
        let a = token_advantages(2.0, 5, 1, Some(0.6));
        assert!(close(&a, &[6.0, 1.0, 1.0, 1.0, 1.0]), "{a:?}");
        // The token mean is λ·(mean over p) + (1 − λ)·(mean over r) of Â: 0.6·2 + 0.4·2.
        let mean: f64 = a.iter().sum::<f64>() / 5.0;
        assert!((mean - 2.0).abs() < 1e-12);
        // No perception tokens: only the reasoning term remains.
        assert!(close(&token_advantages(1.0, 2, 0, Some(0.3)), &[0.7, 0.7]));
    }
}
