//! Token sampling on the host: temperature, top-k, top-p (nucleus), or greedy at temperature 0.
//! Each sequence draws from its own generator keyed by (seed, item, sample), so what a sequence
//! samples does not depend on the batch it is in.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Sampling knobs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1.0 = no nucleus cut.
    pub top_p: f32,
    /// 0 = no top-k cut.
    pub top_k: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

/// Index of the largest logit (lowest index on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Log-probability of `token` under `softmax(logits / T)` (T = 1 when greedy): the sampling
/// policy's log-probability before any top-k / top-p cut, as an RL importance ratio needs it.
pub fn log_prob(logits: &[f32], token: u32, temperature: f32) -> f32 {
    let t = if temperature > 0.0 { temperature } else { 1.0 } as f64;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| ((l as f64 - max) / t).exp())
        .sum::<f64>()
        .ln();
    logits
        .get(token as usize)
        .map(|&l| ((l as f64 - max) / t - lse) as f32)
        .unwrap_or(f32::NEG_INFINITY)
}

/// Samples one token from `logits`.
pub fn sample<R: Rng>(logits: &[f32], cfg: &SamplingConfig, rng: &mut R) -> u32 {
    // Always draw, so a sequence's stream position does not depend on the settings path taken.
    let u: f64 = rng.random();
    if cfg.temperature <= 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, (((l - max) / cfg.temperature) as f64).exp()))
        .filter(|(_, p)| p.is_finite())
        .collect();
    // Sort by probability (descending), index ascending on ties: a deterministic order.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if cfg.top_k > 0 {
        probs.truncate(cfg.top_k);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = 0;
        for p in &probs {
            acc += p.1 / total;
            keep += 1;
            if acc >= cfg.top_p as f64 {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut target = u * total;
    for &(i, p) in &probs {
        if target < p {
            return i as u32;
        }
        target -= p;
    }
    probs.last().map(|p| p.0 as u32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::keyed;

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut rng = keyed(0, "s", 0, 0);
        assert_eq!(sample(&logits, &SamplingConfig::greedy(), &mut rng), 1);
        let k1 = SamplingConfig {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 1,
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &k1, &mut rng), 1);
        }
        let p_small = SamplingConfig {
            temperature: 1.0,
            top_p: 0.3,
            top_k: 0,
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &p_small, &mut rng), 1);
        }
        // Temperature sampling visits both high-probability tokens and follows the key.
        let t = SamplingConfig::default();
        let draws: Vec<u32> = (0..200).map(|_| sample(&logits, &t, &mut rng)).collect();
        assert!(draws.contains(&1) && draws.contains(&3));
        let again: Vec<u32> = {
            let mut r2 = keyed(0, "s", 0, 0);
            for _ in 0..41 {
                sample(&logits, &k1, &mut r2);
            }
            (0..200).map(|_| sample(&logits, &t, &mut r2)).collect()
        };
        assert_eq!(draws, again);
    }

    #[test]
    fn log_prob_is_a_normalized_log_softmax() {
        let logits = [0.5f32, -1.0, 2.0];
        for t in [0.0f32, 0.7, 1.0, 2.0] {
            let total: f64 = (0..3).map(|k| (log_prob(&logits, k, t) as f64).exp()).sum();
            assert!((total - 1.0).abs() < 1e-5, "T={t}: {total}");
        }
        // By hand at T = 1: log(e^2 / (e^0.5 + e^-1 + e^2)).
        let z = 0.5f64.exp() + (-1.0f64).exp() + 2.0f64.exp();
        assert!((log_prob(&logits, 2, 1.0) as f64 - (2.0f64.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(log_prob(&logits, 9, 1.0), f32::NEG_INFINITY);
    }

    #[test]
    fn argmax_handles_nan() {
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
