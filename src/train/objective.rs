//! SFT objectives as per-token weights: the loss is `Σ nll · w` over target tokens.
//!
//! - `standard`: each sequence's token-averaged cross-entropy, averaged over the batch.
//! - `reweight`: per sequence `λ·L_p/|p| + (1−λ)·L_r/|r|` (+ any further named spans with their own
//!   weights, each divided by its length), averaged over the batch. With λ = |p|/|y| it equals
//!   `standard` exactly.
//! - `ngdiff`: the same two terms, λ chosen per batch from gradient norms (see `sft`).
//! - `perception-only`: `L_p/|p|` alone.

use crate::data::Example;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectiveKind {
    Standard,
    Reweight,
    Ngdiff,
    PerceptionOnly,
}

/// Which target tokens a weight applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// Every target token.
    All,
    /// A named span carried by the data.
    Span(String),
}

/// A weighted term: `weight · L_selected / |selected|` per sequence.
pub type Term = (Selector, f64);

/// Token weights [B × L] (row-major) for `terms`, averaged over the batch.
pub fn token_weights(
    examples: &[&Example],
    target_index: &[Vec<Option<usize>>],
    terms: &[Term],
) -> Vec<f32> {
    let b = examples.len();
    let len = target_index.first().map(Vec::len).unwrap_or(0);
    let mut w = vec![0.0f32; b * len];
    for (i, e) in examples.iter().enumerate() {
        for (sel, weight) in terms {
            let (start, end) = match sel {
                Selector::All => (0, e.target.len()),
                Selector::Span(name) => match e.span(name) {
                    Some(s) => s,
                    None => continue,
                },
            };
            // Only tokens present in the (possibly truncated) batch count.
            let positions: Vec<usize> = (0..len)
                .filter(|&j| matches!(target_index[i][j], Some(k) if k >= start && k < end))
                .collect();
            if positions.is_empty() {
                continue;
            }
            let per = (*weight / positions.len() as f64 / b as f64) as f32;
            for j in positions {
                w[i * len + j] += per;
            }
        }
    }
    w
}

/// The terms of a fixed objective (NGDiff's two halves are built by the trainer).
pub fn terms(kind: ObjectiveKind, lambda: f64, extra: &[(String, f64)]) -> Vec<Term> {
    let mut t = match kind {
        ObjectiveKind::Standard => vec![(Selector::All, 1.0)],
        ObjectiveKind::Reweight | ObjectiveKind::Ngdiff => vec![
            (Selector::Span("perception".into()), lambda),
            (Selector::Span("reasoning".into()), 1.0 - lambda),
        ],
        ObjectiveKind::PerceptionOnly => vec![(Selector::Span("perception".into()), 1.0)],
    };
    if kind != ObjectiveKind::PerceptionOnly {
        t.extend(extra.iter().map(|(n, w)| (Selector::Span(n.clone()), *w)));
    }
    t
}

/// Per-span masks (1 where the label is in the span) for diagnostics.
pub fn span_mask(
    examples: &[&Example],
    target_index: &[Vec<Option<usize>>],
    name: &str,
) -> Vec<bool> {
    let len = target_index.first().map(Vec::len).unwrap_or(0);
    let mut m = vec![false; examples.len() * len];
    for (i, e) in examples.iter().enumerate() {
        if let Some((s, en)) = e.span(name) {
            for j in 0..len {
                if let Some(k) = target_index[i][j] {
                    m[i * len + j] = k >= s && k < en;
                }
            }
        }
    }
    m
}

/// NGDiff's λ from the two objectives' gradient norms.
pub fn ngdiff_lambda(norm_p: f64, norm_r: f64) -> f64 {
    let (ip, ir) = (1.0 / norm_p.max(1e-12), 1.0 / norm_r.max(1e-12));
    ip / (ip + ir)
}

/// [`ngdiff_lambda`] on the device: `[1]` norms in, `[1]` λ out, no host read.
pub fn ngdiff_lambda_device<B: burn::tensor::backend::Backend>(
    norm_p: burn::tensor::Tensor<B, 1>,
    norm_r: burn::tensor::Tensor<B, 1>,
) -> burn::tensor::Tensor<B, 1> {
    let ip = norm_p.clamp_min(1e-12).recip();
    let ir = norm_r.clamp_min(1e-12).recip();
    ip.clone() / (ip + ir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(prompt: usize, p: usize, r: usize) -> Example {
        Example {
            id: "x".into(),
            task: "graph_coloring".into(),
            perception: String::new(),
            image: vec![],
            prompt: vec![1; prompt],
            target: vec![2; p + r],
            spans: vec![("perception".into(), 0, p), ("reasoning".into(), p, p + r)],
        }
    }

    fn index(e: &Example, len: usize) -> Vec<Option<usize>> {
        (0..len)
            .map(|j| {
                (j + 1 >= e.prompt.len() && j + 1 - e.prompt.len() < e.target.len())
                    .then(|| j + 1 - e.prompt.len())
            })
            .collect()
    }

    #[test]
    fn weighted_loss_matches_hand_computation() {
        // Two sequences; fixed per-token losses.
        let a = ex(2, 1, 3); // target: p p? no: 1 perception token, 3 reasoning tokens
        let b = ex(2, 2, 2);
        let len = 5;
        let idx = vec![index(&a, len), index(&b, len)];
        let nll: Vec<f32> = vec![9.0, 1.0, 2.0, 3.0, 4.0, 9.0, 5.0, 6.0, 7.0, 8.0];
        let w = token_weights(&[&a, &b], &idx, &terms(ObjectiveKind::Reweight, 0.25, &[]));
        let loss: f32 = nll.iter().zip(&w).map(|(x, y)| x * y).sum();
        // a: labels at positions 1..5 → target 0 (p), 1..3 (r): nll p=1, r=2,3,4
        // b: p=5,6, r=7,8
        let la = 0.25 * 1.0 + 0.75 * (2.0 + 3.0 + 4.0) / 3.0;
        let lb = 0.25 * (5.0 + 6.0) / 2.0 + 0.75 * (7.0 + 8.0) / 2.0;
        assert!((loss - (la + lb) / 2.0).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn lambda_p_over_y_reproduces_standard_per_sequence() {
        let a = ex(3, 2, 6);
        let len = 10;
        let idx = vec![index(&a, len)];
        let std = token_weights(&[&a], &idx, &terms(ObjectiveKind::Standard, 0.0, &[]));
        let rw = token_weights(&[&a], &idx, &terms(ObjectiveKind::Reweight, 2.0 / 8.0, &[]));
        for (x, y) in std.iter().zip(&rw) {
            assert!((x - y).abs() < 1e-7);
        }
    }

    #[test]
    fn ngdiff_lambda_formula() {
        let l = ngdiff_lambda(2.0, 6.0);
        assert!((l - (0.5 / (0.5 + 1.0 / 6.0))).abs() < 1e-12);
        assert!((l - 0.75).abs() < 1e-12);
        assert!((ngdiff_lambda(1.0, 1.0) - 0.5).abs() < 1e-12);
        let dev = Default::default();
        let t = |x: f32| {
            burn::tensor::Tensor::<crate::model::Cpu, 1>::from_data(
                burn::tensor::TensorData::new(vec![x], [1]),
                &dev,
            )
        };
        for (p, r) in [(2.0, 6.0), (1.0, 1.0), (0.0, 3.0), (5.0, 0.0)] {
            let d = crate::model::host_f32(ngdiff_lambda_device(t(p), t(r))).unwrap()[0];
            assert!(
                (d as f64 - ngdiff_lambda(p as f64, r as f64)).abs() < 1e-6,
                "{p} {r} {d}"
            );
        }
    }

    #[test]
    fn extra_span_needs_only_config() {
        let mut a = ex(1, 1, 3);
        a.spans.push(("answer".into(), 3, 4));
        let idx = vec![index(&a, 4)];
        let w = token_weights(
            &[&a],
            &idx,
            &terms(ObjectiveKind::Reweight, 0.5, &[("answer".into(), 1.0)]),
        );
        // answer token (target 3, label at position 3) gets 0.5/3 + 1.0.
        assert!((w[3] - (0.5 / 3.0 + 1.0) as f32).abs() < 1e-6);
    }
}
