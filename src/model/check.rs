//! A self-check of a compute device, for machines where the test suite cannot run (a GPU host
//! without a Rust toolchain): the KV-cached greedy decoding equals the uncached one, the device's
//! logits match the CPU's for the same weights, and a few optimizer steps lower the loss.

use super::checkpoint::copy_weights;
use super::decode::{GenerationConfig, SeqKey, generate, greedy_uncached};
use super::sampling::SamplingConfig;
use super::{Cpu, ModelError, Vlm, VlmConfig, host_f32};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

/// What the check measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckReport {
    /// Cached and uncached greedy decoding produced the same tokens.
    pub cached_equals_uncached: bool,
    /// Largest |logit(device) − logit(cpu)| over a batch, same weights.
    /// (Infinite when a logit is not a number.)
    pub max_logit_diff_vs_cpu: f32,
    /// Device or CPU logits that are NaN or infinite.
    pub non_finite_logits: usize,
    /// Loss before and after the training steps.
    pub loss_first: f32,
    pub loss_last: f32,
    pub train_steps: usize,
}

impl CheckReport {
    /// Whether every check passed, with `tolerance` on the CPU parity.
    pub fn passed(&self, tolerance: f32) -> bool {
        self.cached_equals_uncached
            && self.max_logit_diff_vs_cpu <= tolerance
            && self.loss_last < self.loss_first
    }
}

fn inputs<B: Backend>(
    cfg: &VlmConfig,
    b: usize,
    device: &B::Device,
) -> (Tensor<B, 3>, Vec<Vec<u32>>) {
    let s = cfg.image_size;
    let px: Vec<f32> = (0..b * s * s)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0)
        .collect();
    let images = Tensor::from_data(TensorData::new(px, [b, s, s]), device);
    let vocab = cfg.vocab_size as u32;
    let prefixes = (0..b)
        .map(|r| {
            (0..6 + r)
                .map(|j| (3 + r as u32 * 5 + j as u32 * 11) % vocab)
                .collect()
        })
        .collect();
    (images, prefixes)
}

/// Runs the check on `device` with the model `cfg` (seeded, so runs are comparable).
pub fn check_device<B: AutodiffBackend>(
    cfg: &VlmConfig,
    device: &B::Device,
    train_steps: usize,
) -> Result<CheckReport, ModelError> {
    B::seed(device, 7);
    let model = Vlm::<B>::new(cfg, device);
    let plain = model.valid();
    let inner: super::Model<B::InnerBackend> = plain.clone().into();
    // 1. The KV cache changes nothing under greedy decoding (an end token that is never drawn
    // forces the full length).
    let (images, prefixes) = inputs::<B::InnerBackend>(cfg, 3, device);
    let keys: Vec<SeqKey> = (0..prefixes.len())
        .map(|i| SeqKey {
            purpose: "device-check",
            item: i.to_string(),
            sample: 0,
        })
        .collect();
    let cached = generate(
        &inner,
        images.clone(),
        &prefixes,
        &keys,
        &GenerationConfig {
            sampling: SamplingConfig::greedy(),
            seed: 0,
            eos: u32::MAX,
            max_new_tokens: 12,
        },
    )?;
    let uncached = greedy_uncached(&inner, images.clone(), &prefixes, u32::MAX, 12)?;
    let cached_equals_uncached = cached.iter().zip(&uncached).all(|(c, u)| &c.tokens == u);
    // 2. The same weights give the same logits on the CPU.
    let ids: Vec<i64> = prefixes[0].iter().map(|&t| t as i64).collect();
    let n = ids.len();
    let logits = |m: &Vlm<B::InnerBackend>| {
        let t = Tensor::<B::InnerBackend, 2, Int>::from_data(
            TensorData::new(ids.clone(), [1, n]),
            device,
        );
        host_f32(m.forward_text(images.clone().narrow(0, 0, 1), t))
    };
    let here = logits(&plain)?;
    // The device's weights as f32 values (a bf16 device's included) in a CPU model.
    let cpu_model: Vlm<Cpu> = copy_weights(&plain, Vlm::new(cfg, &Default::default()))?;
    let s = cfg.image_size;
    let cpu_images = Tensor::<Cpu, 3>::from_data(
        TensorData::new(host_f32(images.narrow(0, 0, 1))?, [1, s, s]),
        &Default::default(),
    );
    let cpu_ids =
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &Default::default());
    let there = host_f32(cpu_model.forward_text(cpu_images, cpu_ids))?;
    let (max_logit_diff_vs_cpu, non_finite_logits) = super::max_abs_diff(&here, &there);
    // 3. A few AdamW steps on one batch lower the next-token loss.
    let (images, prefixes) = inputs::<B>(cfg, 4, device);
    let len = prefixes.iter().map(Vec::len).min().unwrap_or(1);
    let rows: Vec<i64> = prefixes
        .iter()
        .flat_map(|p| p[..len].iter().map(|&t| t as i64))
        .collect();
    let seq = Tensor::<B, 2, Int>::from_data(TensorData::new(rows, [prefixes.len(), len]), device);
    let inputs = seq.clone().slice([0..prefixes.len(), 0..len - 1]);
    let labels = seq.slice([0..prefixes.len(), 1..len]);
    let mut model = model;
    let mut optim = AdamWConfig::new().init::<B, Vlm<B>>();
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    for step in 0..train_steps.max(2) {
        let lp = log_softmax(model.forward_text(images.clone(), inputs.clone()), 2);
        let [b, l, _] = lp.dims();
        let loss = lp.gather(2, labels.clone().reshape([b, l, 1])).neg().mean();
        let value = host_f32(loss.clone().detach())?
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        if step == 0 {
            first = value;
        }
        last = value;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    Ok(CheckReport {
        cached_equals_uncached,
        max_logit_diff_vs_cpu,
        non_finite_logits,
        loss_first: first,
        loss_last: last,
        train_steps: train_steps.max(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_passes_its_own_check() {
        let cfg = VlmConfig {
            image_size: 32,
            patch_size: 16,
            vit_dim: 16,
            vit_layers: 1,
            vit_heads: 2,
            conv_stem: 0,
            d_model: 32,
            layers: 2,
            heads: 2,
            mlp_ratio: 2,
            vocab_size: 40,
            max_seq_len: 64,
            rope_theta: 10000.0,
        };
        let r = check_device::<burn::backend::Autodiff<Cpu>>(&cfg, &Default::default(), 5).unwrap();
        assert!(r.passed(1e-5), "{r:?}");
        assert_eq!(r.max_logit_diff_vs_cpu, 0.0);
    }
}
