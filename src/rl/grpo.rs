//! The GRPO policy objective on sampled sequences: per-token log-probabilities of given
//! sequences by teacher forcing, the PPO-clipped per-token objective with the paper's
//! aggregation (a token mean per sequence, then a mean over sequences), an optional KL penalty
//! to a frozen reference (the k3 estimator) and GSPO's sequence-level ratio as an option.
//!
//! Log-probabilities are taken under `softmax(logits / T)` with the temperature the rollout
//! sampled at (T = 1 for greedy rollouts), since the rollout's stored log-probabilities, the
//! importance ratio's denominator, are under that distribution.

use super::{Result, RlError};
use crate::model::Model;
use crate::model::VisionLanguageModel;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One sampled sequence to be scored under the policy.
#[derive(Debug, Clone)]
pub struct Sequence {
    /// The image the rollout saw (blank for text-only rollouts): `image_size`² ink values,
    /// shared by the samples of one item.
    pub image: Arc<[f32]>,
    /// What preceded the generated tokens: the prompt, plus any forced perception prefix
    /// (counterfactual, text-only). Read, never trained.
    pub prefix: Vec<u32>,
    /// The generated tokens (the final `<eos>` included when it was sampled): trained.
    pub tokens: Vec<u32>,
    /// The sampling policy's log-probability of each token (log π_old).
    pub old_logprobs: Vec<f32>,
    /// The first `perception_tokens` of `tokens` are the perception segment.
    pub perception_tokens: usize,
    /// The advantage of each token (see [`super::advantage::token_advantages`]).
    pub advantages: Vec<f32>,
    /// The sequence's reward (for logging).
    pub reward: f64,
}

/// The temperature log-probabilities are taken at: the sampling temperature, or 1 for greedy.
pub fn effective_temperature(t: f32) -> f32 {
    if t > 0.0 { t } else { 1.0 }
}

/// Settings of the per-token objective.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LossSettings {
    /// ε_low: the ratio is clipped below at 1 − ε_low.
    pub clip_low: f64,
    /// ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher when > ε_low).
    pub clip_high: f64,
    /// β of the KL penalty to the reference (0 = off).
    pub kl_coef: f64,
    /// GSPO: one ratio per sequence, exp of the token mean of log π_θ − log π_old.
    pub gspo: bool,
    /// The sampling temperature of the rollouts (0 = greedy, scored at T = 1).
    pub temperature: f32,
}

impl LossSettings {
    pub fn check(&self) -> Result<()> {
        let low_ok = (0.0..1.0).contains(&self.clip_low);
        let high_ok = self.clip_high >= 0.0 && self.clip_high.is_finite();
        if !low_ok || !high_ok {
            return Err(RlError::Invalid(format!(
                "clip range [1 − {}, 1 + {}] is not a range around 1",
                self.clip_low, self.clip_high
            )));
        }
        let kl_ok = self.kl_coef >= 0.0 && self.kl_coef.is_finite();
        let t_ok = self.temperature >= 0.0 && self.temperature.is_finite();
        if !kl_ok || !t_ok {
            return Err(RlError::Invalid(format!(
                "kl_coef {} and temperature {} must be non-negative",
                self.kl_coef, self.temperature
            )));
        }
        Ok(())
    }
}

/// Limits on the log-ratio before exponentiation (as verl clamps them), so one wild token
/// cannot overflow the ratio.
const TOKEN_LOG_RATIO_MAX: f64 = 20.0;
const SEQ_LOG_RATIO_MAX: f64 = 10.0;
/// The k3 estimate is clamped to ±10 per token, as verl's `low_var_kl`.
const KL_MAX: f64 = 10.0;

/// A right-padded teacher-forcing batch of sequences: inputs are `prefix ++ tokens[..n-1]`, and
/// the j-th generated token is the label at position `prefix.len() − 1 + j`.
pub struct ForcedBatch<B: Backend> {
    pub images: Tensor<B, 3>,
    pub inputs: Tensor<B, 2, Int>,
    pub labels: Tensor<B, 2, Int>,
    /// Padded length L.
    pub len: usize,
    /// Per row: (position of the first generated token's label, number of generated tokens).
    pub spans: Vec<(usize, usize)>,
}

impl<B: Backend> ForcedBatch<B> {
    /// The batch of `seqs`, its length the longest row's rounded up to a multiple of `bucket`
    /// ([`crate::train::batch::bucketed`]).
    pub fn new(
        seqs: &[&Sequence],
        image_size: usize,
        bucket: usize,
        pad: u32,
        device: &B::Device,
    ) -> Result<Self> {
        let b = seqs.len();
        if b == 0 {
            return Err(RlError::Invalid("an empty batch of sequences".into()));
        }
        let mut spans = Vec::with_capacity(b);
        for (i, s) in seqs.iter().enumerate() {
            if s.prefix.is_empty() || s.tokens.is_empty() {
                return Err(RlError::Invalid(format!(
                    "sequence {i} has {} prefix and {} generated tokens; both must be non-empty",
                    s.prefix.len(),
                    s.tokens.len()
                )));
            }
            if s.old_logprobs.len() != s.tokens.len() || s.advantages.len() != s.tokens.len() {
                return Err(RlError::Invalid(format!(
                    "sequence {i}: {} tokens, {} log-probabilities, {} advantages",
                    s.tokens.len(),
                    s.old_logprobs.len(),
                    s.advantages.len()
                )));
            }
            if s.image.len() != image_size * image_size {
                return Err(RlError::Invalid(format!(
                    "sequence {i}: image has {} pixels, the model reads {image_size}²",
                    s.image.len()
                )));
            }
            spans.push((s.prefix.len() - 1, s.tokens.len()));
        }
        let len = seqs
            .iter()
            .map(|s| s.prefix.len() + s.tokens.len() - 1)
            .max()
            .unwrap_or(1);
        let len = crate::train::batch::bucketed(len, bucket, usize::MAX);
        let mut inputs = vec![pad as i64; b * len];
        let mut labels = vec![0i64; b * len];
        let mut pixels = Vec::with_capacity(b * image_size * image_size);
        for (i, s) in seqs.iter().enumerate() {
            let text: Vec<u32> = s.prefix.iter().chain(&s.tokens).copied().collect();
            for j in 0..text.len() - 1 {
                inputs[i * len + j] = text[j] as i64;
                labels[i * len + j] = text[j + 1] as i64;
            }
            pixels.extend_from_slice(&s.image);
        }
        Ok(ForcedBatch {
            images: Tensor::from_data(TensorData::new(pixels, [b, image_size, image_size]), device),
            inputs: Tensor::from_data(TensorData::new(inputs, [b, len]), device),
            labels: Tensor::from_data(TensorData::new(labels, [b, len]), device),
            len,
            spans,
        })
    }

    /// A host [B, L] row-major array with `f(row, j)` at the j-th generated token and 0
    /// elsewhere.
    pub fn scatter(&self, f: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let mut out = vec![0.0f32; self.spans.len() * self.len];
        for (i, &(start, n)) in self.spans.iter().enumerate() {
            for j in 0..n {
                out[i * self.len + start + j] = f(i, j);
            }
        }
        out
    }

    /// `f` scattered into a [B, L] tensor.
    pub fn tensor(&self, f: impl Fn(usize, usize) -> f32, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(self.scatter(f), [self.spans.len(), self.len]),
            device,
        )
    }

    /// The values at the generated tokens of a host [B, L] array, per sequence.
    pub fn gather_host(&self, host: &[f32]) -> Vec<Vec<f32>> {
        self.spans
            .iter()
            .enumerate()
            .map(|(i, &(start, n))| host[i * self.len + start..i * self.len + start + n].to_vec())
            .collect()
    }
}

/// Per-position log-probabilities of the labels under `softmax(logits / T)` [B, L], and the
/// per-position entropy of that distribution (detached) [B, L].
pub fn token_logprobs<B: Backend>(
    model: &Model<B>,
    batch: &ForcedBatch<B>,
    temperature: f32,
) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
    let t = effective_temperature(temperature) as f64;
    let logits = model.forward_text(batch.images.clone(), batch.inputs.clone())?;
    let lp = log_softmax(logits / t, 2);
    let [b, l, _] = lp.dims();
    let detached = lp.clone().detach();
    let entropy = (detached.clone().exp() * detached)
        .sum_dim(2)
        .reshape([b, l])
        .neg();
    let picked = lp
        .gather(2, batch.labels.clone().reshape([b, l, 1]))
        .reshape([b, l]);
    Ok((picked, entropy))
}

/// The objective's terms on one batch, per position [B, L] (zero outside generated tokens
/// only after weighting).
pub struct Objective<B: Backend> {
    /// Σ weight · (pg + β·kl): the loss to minimize.
    pub loss: Tensor<B, 1>,
    /// The clipped policy-gradient term per position.
    pub pg: Tensor<B, 2>,
    /// The k3 KL estimate per position (when a reference is given).
    pub kl: Option<Tensor<B, 2>>,
    /// The importance ratio per position (the sequence ratio broadcast, with GSPO).
    pub ratio: Tensor<B, 2>,
    /// 1 where the clipped branch is the one taken (it changes the loss), else 0.
    pub clipped: Tensor<B, 2>,
}

/// The PPO-clipped objective.
///
/// Per token: ρ = exp(log π_θ − log π_old), `pg = max(−Â·ρ, −Â·clip(ρ, 1 − ε_low, 1 + ε_high))`;
/// with a reference, `kl = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1` (k3). With GSPO,
/// ρ is the sequence's `exp(mean_t(log π_θ − log π_old))` in value, with the gradient of each
/// token's own log π_θ (GSPO-token, equal to GSPO for a constant advantage).
///
/// `weight` holds 1 / (|y_i| · N) at the generated tokens of sequence i of N and 0 elsewhere, so
/// `Σ weight · x` is the mean over sequences of each sequence's token mean of x;
/// `inv_len` [B, 1] holds 1 / |y_i| (for GSPO's sequence mean).
#[allow(clippy::too_many_arguments)]
pub fn clipped_objective<B: Backend>(
    logp: Tensor<B, 2>,
    old_logp: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    inv_len: Tensor<B, 2>,
    reference: Option<Tensor<B, 2>>,
    s: &LossSettings,
) -> Objective<B> {
    let [b, l] = logp.dims();
    let delta = (logp.clone() - old_logp) * mask;
    let log_ratio = if s.gspo {
        let seq = (delta.sum_dim(1) * inv_len).clamp_max(SEQ_LOG_RATIO_MAX);
        seq.detach().expand([b, l]) + logp.clone() - logp.clone().detach()
    } else {
        delta.clamp(-TOKEN_LOG_RATIO_MAX, TOKEN_LOG_RATIO_MAX)
    };
    let ratio = log_ratio.exp();
    let pg1 = advantages.clone().neg() * ratio.clone();
    let pg2 = advantages.neg() * ratio.clone().clamp(1.0 - s.clip_low, 1.0 + s.clip_high);
    let clipped = pg2.clone().greater(pg1.clone()).float().detach();
    let pg = pg1.max_pair(pg2);
    let kl = reference.map(|r| {
        let d = r - logp;
        (d.clone().exp() - d - 1.0).clamp(-KL_MAX, KL_MAX)
    });
    let total = match &kl {
        Some(k) if s.kl_coef > 0.0 => pg.clone() + k.clone() * s.kl_coef,
        _ => pg.clone(),
    };
    Objective {
        loss: (total * weight).sum(),
        pg,
        kl,
        ratio: ratio.detach(),
        clipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::small_config;
    use crate::model::decode::{GenerationConfig, SeqKey, generate};
    use crate::model::sampling::SamplingConfig;
    use crate::model::{Cpu, host_f32};

    fn image(k: usize, s: usize) -> Arc<[f32]> {
        (0..s * s)
            .map(|i| (((i + k * 31) * 7919) % 101) as f32 / 100.0)
            .collect::<Vec<_>>()
            .into()
    }

    /// Three sequences of different lengths with log π_old chosen so that some ratios fall
    /// outside the clip range, and mixed-sign advantages.
    fn sequences(s: usize) -> Vec<Sequence> {
        let mk = |k: usize, prefix: Vec<u32>, tokens: Vec<u32>, adv: f32| {
            let n = tokens.len();
            Sequence {
                image: image(k, s),
                prefix,
                old_logprobs: (0..n)
                    .map(|j| -3.0 - 0.4 * ((j * 3 + k) % 5) as f32)
                    .collect(),
                perception_tokens: 1,
                advantages: (0..n).map(|j| adv * (1.0 + 0.1 * j as f32)).collect(),
                tokens,
                reward: 0.0,
            }
        };
        vec![
            mk(0, vec![1, 5, 9], vec![3, 7, 7, 2], 1.2),
            mk(1, vec![1, 4], vec![11, 12, 13, 14, 15, 2], -0.7),
            mk(2, vec![1, 6, 6, 6, 6], vec![20], 0.4),
        ]
    }

    /// The host reference: log-softmax at temperature T of each sequence alone (unpadded).
    fn host_logprobs(model: &Model<Cpu>, seq: &Sequence, s: usize, t: f64) -> Vec<f64> {
        let text: Vec<u32> = seq.prefix.iter().chain(&seq.tokens).copied().collect();
        let ids: Vec<i64> = text[..text.len() - 1].iter().map(|&x| x as i64).collect();
        let n = ids.len();
        let logits = model
            .forward_text(
                Tensor::from_data(
                    TensorData::new(seq.image.to_vec(), [1, s, s]),
                    &Default::default(),
                ),
                Tensor::from_data(TensorData::new(ids, [1, n]), &Default::default()),
            )
            .unwrap();
        let host = host_f32(logits).unwrap();
        let v = host.len() / n;
        (0..seq.tokens.len())
            .map(|j| {
                let pos = seq.prefix.len() - 1 + j;
                let row: Vec<f64> = host[pos * v..(pos + 1) * v]
                    .iter()
                    .map(|&x| x as f64 / t)
                    .collect();
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                row[seq.tokens[j] as usize] - lse
            })
            .collect()
    }

    struct Parts {
        loss: f64,
        clip_frac: f64,
        kl: Option<f64>,
    }

    fn run(
        model: &Model<Cpu>,
        reference: Option<&Model<Cpu>>,
        seqs: &[Sequence],
        st: &LossSettings,
    ) -> Parts {
        let dev = Default::default();
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let batch = ForcedBatch::<Cpu>::new(&refs, 32, 1, 0, &dev).unwrap();
        let n = seqs.len() as f32;
        let (logp, _) = token_logprobs(model, &batch, st.temperature).unwrap();
        let ref_logp = reference.map(|r| token_logprobs(r, &batch, st.temperature).unwrap().0);
        let mask = batch.tensor(|_, _| 1.0, &dev);
        let weight = batch.tensor(|i, _| 1.0 / (seqs[i].tokens.len() as f32 * n), &dev);
        let inv_len = Tensor::from_data(
            TensorData::new(
                seqs.iter()
                    .map(|s| 1.0 / s.tokens.len() as f32)
                    .collect::<Vec<_>>(),
                [seqs.len(), 1],
            ),
            &dev,
        );
        let o = clipped_objective(
            logp,
            batch.tensor(|i, j| seqs[i].old_logprobs[j], &dev),
            batch.tensor(|i, j| seqs[i].advantages[j], &dev),
            mask.clone(),
            weight.clone(),
            inv_len,
            ref_logp,
            st,
        );
        let tokens: f32 = seqs.iter().map(|s| s.tokens.len() as f32).sum();
        let mean = |t: Tensor<Cpu, 2>| host_f32((t * mask.clone()).sum()).unwrap()[0] / tokens;
        Parts {
            loss: host_f32(o.loss).unwrap()[0] as f64,
            clip_frac: mean(o.clipped) as f64,
            kl: o
                .kl
                .map(|k| host_f32((k * weight).sum()).unwrap()[0] as f64),
        }
    }

    fn settings(gspo: bool, kl: f64) -> LossSettings {
        LossSettings {
            clip_low: 0.2,
            clip_high: 0.28,
            kl_coef: kl,
            gspo,
            temperature: 0.7,
        }
    }

    fn model(seed: u64) -> Model<Cpu> {
        let dev = Default::default();
        Cpu::seed(&dev, seed);
        crate::model::Vlm::new(&small_config(), &dev).into()
    }

    #[test]
    fn clipped_objective_equals_a_hand_computation() {
        let m = model(3);
        let seqs = sequences(32);
        for gspo in [false, true] {
            let st = settings(gspo, 0.0);
            let got = run(&m, None, &seqs, &st);
            let (mut want, mut clipped, mut tokens) = (0.0, 0.0, 0.0);
            for s in &seqs {
                let lp = host_logprobs(&m, s, 32, 0.7);
                let n = s.tokens.len() as f64;
                let seq_ratio = (lp
                    .iter()
                    .zip(&s.old_logprobs)
                    .map(|(a, &b)| a - b as f64)
                    .sum::<f64>()
                    / n)
                    .exp();
                let mut acc = 0.0;
                for ((l, &old), &a) in lp.iter().zip(&s.old_logprobs).zip(&s.advantages) {
                    let rho = if gspo {
                        seq_ratio
                    } else {
                        (l - old as f64).exp()
                    };
                    let a = a as f64;
                    let unclipped = rho * a;
                    let clip = rho.clamp(0.8, 1.28) * a;
                    acc += unclipped.min(clip);
                    clipped += f64::from(u8::from(clip < unclipped - 1e-12));
                    tokens += 1.0;
                }
                want -= acc / n / seqs.len() as f64;
            }
            assert!(
                (got.loss - want).abs() < 1e-4 * want.abs().max(1.0),
                "gspo {gspo}: {} vs {want}",
                got.loss
            );
            assert!(
                (got.clip_frac - clipped / tokens).abs() < 1e-6,
                "gspo {gspo}"
            );
        }
        // The chosen log π_old put some tokens outside the range: clipping was exercised.
        assert!(run(&m, None, &seqs, &settings(false, 0.0)).clip_frac > 0.0);
    }

    #[test]
    fn kl_is_zero_against_itself_and_positive_against_another_model() {
        let (m, other) = (model(3), model(4));
        let seqs = sequences(32);
        let same = run(&m, Some(&m), &seqs, &settings(false, 0.1));
        assert!(same.kl.unwrap().abs() < 1e-7, "{:?}", same.kl);
        let without = run(&m, None, &seqs, &settings(false, 0.0));
        assert!((same.loss - without.loss).abs() < 1e-6);
        let diff = run(&m, Some(&other), &seqs, &settings(false, 0.1));
        let kl = diff.kl.unwrap();
        assert!(kl > 1e-4, "{kl}");
        // k3 by hand: exp(log π_ref − log π) − (log π_ref − log π) − 1, aggregated as the loss.
        let mut want = 0.0;
        for s in &seqs {
            let (lp, lr) = (
                host_logprobs(&m, s, 32, 0.7),
                host_logprobs(&other, s, 32, 0.7),
            );
            let k3: f64 = lp
                .iter()
                .zip(&lr)
                .map(|(p, r)| (r - p).exp() - (r - p) - 1.0)
                .sum();
            want += k3 / s.tokens.len() as f64 / seqs.len() as f64;
        }
        assert!((kl - want).abs() < 1e-4 * want.max(1.0), "{kl} vs {want}");
        assert!((diff.loss - (without.loss + 0.1 * kl)).abs() < 1e-5);
    }

    /// Sequences sampled by the cached decoder at temperature T, scored by teacher forcing
    /// (padded, batched) at the same T: every ratio is 1 and the loss is −mean Â.
    #[test]
    fn on_policy_ratio_is_one_and_loss_is_minus_mean_advantage() {
        let m = model(5);
        let dev = Default::default();
        let prefixes = vec![vec![1, 5, 9, 3], vec![2, 7], vec![4, 4, 4, 4, 4, 6]];
        let keys: Vec<SeqKey> = (0..3)
            .map(|i| SeqKey {
                purpose: "test",
                item: format!("x{i}"),
                sample: 0,
            })
            .collect();
        let imgs: Vec<Arc<[f32]>> = (0..3).map(|k| image(k, 32)).collect();
        let px: Vec<f32> = imgs.iter().flat_map(|i| i.iter().copied()).collect();
        for t in [0.7f32, 1.3, 0.0] {
            let sampling = SamplingConfig {
                temperature: t,
                top_p: 1.0,
                top_k: 0,
            };
            let gens = generate(
                &m,
                Tensor::from_data(TensorData::new(px.clone(), [3, 32, 32]), &dev),
                &prefixes,
                &keys,
                &GenerationConfig {
                    sampling,
                    seed: 9,
                    eos: 39,
                    max_new_tokens: 12,
                },
            )
            .unwrap();
            let advs = [0.9f32, -1.1, 0.3];
            let seqs: Vec<Sequence> = gens
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let mut tokens = g.tokens.clone();
                    if !g.truncated {
                        tokens.push(39);
                    }
                    Sequence {
                        image: imgs[i].clone(),
                        prefix: prefixes[i].clone(),
                        advantages: vec![advs[i]; tokens.len()],
                        old_logprobs: g.logprobs.clone(),
                        perception_tokens: 0,
                        tokens,
                        reward: 0.0,
                    }
                })
                .collect();
            let refs: Vec<&Sequence> = seqs.iter().collect();
            let batch = ForcedBatch::<Cpu>::new(&refs, 32, 1, 0, &dev).unwrap();
            let (logp, _) = token_logprobs(&m, &batch, t).unwrap();
            let got = batch.gather_host(&host_f32(logp).unwrap());
            for (s, g) in seqs.iter().zip(&got) {
                for (a, b) in s.old_logprobs.iter().zip(g) {
                    assert!((a - b).abs() < 1e-4, "T={t}: {a} vs {b}");
                }
            }
            for gspo in [false, true] {
                let st = LossSettings {
                    temperature: t,
                    ..settings(gspo, 0.0)
                };
                let p = run(&m, None, &seqs, &st);
                let want = -(advs.iter().map(|&a| a as f64).sum::<f64>()) / 3.0;
                assert!((p.loss - want).abs() < 1e-4, "T={t}: {} vs {want}", p.loss);
                assert_eq!(p.clip_frac, 0.0);
            }
        }
    }
}
