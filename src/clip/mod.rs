//! A small CLIP-style dual encoder for the paper's CLIP surrogate perception reward (appendix
//! B.4): an image encoder and a text encoder map a puzzle image and a perception transcription
//! into one embedding space, trained contrastively (symmetric InfoNCE, learned temperature) on
//! (image, p*) pairs; the reward of a generated perception is the cosine similarity of its
//! embedding with the image's. Each encoder projects its tokens flattened in order (not their
//! mean), so that *where* a symbol stands reaches the embedding: two Sudoku grids differ in the
//! places of the same digits, which any pooling over positions would erase. Nothing here is pretrained: the encoder sees only the puzzles it
//! is trained on, which is what a coarse image–text similarity can learn from them.
//!
//! `ClipConfig` → `init(&device)` → [`Clip`]; training in [`train`].

pub mod train;

use crate::model::config::ConfigError;
use crate::model::layers::{Block, MASKED, Mask, linear3, rms_norm};
use crate::model::vlm::{ConvStem, patchify};
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The dual encoder's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    pub image_size: usize,
    pub patch_size: usize,
    /// Channels of the conv stem's first layer (0 = linear patches).
    pub conv_stem: usize,
    /// Width of both encoders.
    pub dim: usize,
    pub image_layers: usize,
    pub text_layers: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    /// Width of the shared embedding space.
    pub embed_dim: usize,
    pub vocab_size: usize,
    /// Longest text the text encoder reads (its learned positions).
    pub max_text_len: usize,
}

impl ClipConfig {
    /// Checks the shape; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::first_failed(&[
            (
                self.patch_size > 0 && self.image_size.is_multiple_of(self.patch_size),
                "image_size",
                "must be a multiple of patch_size",
            ),
            (
                self.conv_stem == 0 || self.patch_size.is_multiple_of(4),
                "patch_size",
                "must be a multiple of 4 with a conv stem",
            ),
            (
                self.heads > 0 && self.dim.is_multiple_of(self.heads),
                "dim",
                "must be a multiple of heads",
            ),
            (self.embed_dim > 0, "embed_dim", "must be positive"),
            (self.max_text_len > 0, "max_text_len", "must be positive"),
            (self.vocab_size > 0, "vocab_size", "must be positive"),
        ])
    }

    fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    fn patch_features(&self) -> usize {
        match self.conv_stem {
            0 => self.patch_size * self.patch_size,
            c => 2 * c * (self.patch_size / 4).pow(2),
        }
    }

    /// A freshly initialized encoder (seed the backend first for reproducibility).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Clip<B> {
        let pos = |n: usize| {
            Param::from_tensor(Tensor::random(
                [n, self.dim],
                Distribution::Normal(0.0, 0.02),
                device,
            ))
        };
        let blocks = |n: usize| {
            (0..n)
                .map(|_| Block::new(self.dim, self.heads, self.mlp_ratio, device))
                .collect()
        };
        let proj = |tokens: usize| {
            LinearConfig::new(tokens * self.dim, self.embed_dim)
                .with_bias(false)
                .init(device)
        };
        Clip {
            stem: (self.conv_stem > 0).then(|| ConvStem::new(self.conv_stem, device)),
            patch_norm: RmsNormConfig::new(self.patch_features()).init(device),
            patch_embed: LinearConfig::new(self.patch_features(), self.dim).init(device),
            image_pos: pos(self.patches()),
            image_blocks: blocks(self.image_layers),
            image_norm: RmsNormConfig::new(self.dim).init(device),
            image_proj: proj(self.patches()),
            token_embed: EmbeddingConfig::new(self.vocab_size, self.dim).init(device),
            text_pos: pos(self.max_text_len),
            text_blocks: blocks(self.text_layers),
            text_norm: RmsNormConfig::new(self.dim).init(device),
            text_proj: proj(self.max_text_len),
            // CLIP's initial temperature, 0.07.
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![(1.0f32 / 0.07).ln()], [1]),
                device,
            )),
            patch_size: self.patch_size,
        }
    }
}

/// The dual encoder.
#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    pub stem: Option<ConvStem<B>>,
    pub patch_norm: RmsNorm<B>,
    pub patch_embed: Linear<B>,
    pub image_pos: Param<Tensor<B, 2>>,
    pub image_blocks: Vec<Block<B>>,
    pub image_norm: RmsNorm<B>,
    pub image_proj: Linear<B>,
    pub token_embed: Embedding<B>,
    pub text_pos: Param<Tensor<B, 2>>,
    pub text_blocks: Vec<Block<B>>,
    pub text_norm: RmsNorm<B>,
    pub text_proj: Linear<B>,
    /// log of the inverse temperature of the contrastive logits.
    pub logit_scale: Param<Tensor<B, 1>>,
    pub patch_size: usize,
}

/// Rows scaled to unit L2 norm.
fn unit<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-6);
    x / norm
}

impl<B: Backend> Clip<B> {
    /// Unit embeddings [B, E] of images [B, S, S] with ink in 0..1 (mean over patch tokens).
    pub fn encode_images(&self, images: Tensor<B, 3>) -> Tensor<B, 2> {
        let patches = patchify(self.stem.as_ref(), images, self.patch_size);
        let mut x = linear3(&self.patch_embed, rms_norm(&self.patch_norm, patches))
            + self.image_pos.val().unsqueeze::<3>();
        for blk in &self.image_blocks {
            x = blk.forward(x, None, &Mask::Bidirectional, None);
        }
        let [b, n, d] = x.dims();
        unit(
            self.image_proj
                .forward(rms_norm(&self.image_norm, x).reshape([b, n * d])),
        )
    }

    /// Longest text the encoder reads.
    pub fn max_text_len(&self) -> usize {
        self.text_pos.dims()[0]
    }

    /// Unit embeddings [B, E] of token sequences (each non-empty and at most
    /// [`Clip::max_text_len`] long; padded here to that length, padding masked out of attention
    /// and zeroed before the projection).
    pub fn encode_texts(&self, texts: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2> {
        let b = texts.len();
        let t = self.max_text_len();
        let mut ids = vec![0i64; b * t];
        let mut keep = vec![0.0f32; b * t];
        for (i, s) in texts.iter().enumerate() {
            for (j, &id) in s.iter().enumerate().take(t) {
                ids[i * t + j] = i64::from(id);
                keep[i * t + j] = 1.0;
            }
        }
        let bias: Vec<f32> = keep
            .iter()
            .map(|&k| if k > 0.0 { 0.0 } else { MASKED })
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), device);
        let keep = Tensor::<B, 2>::from_data(TensorData::new(keep, [b, t]), device);
        let mask = Mask::Bias(Tensor::<B, 4>::from_data(
            TensorData::new(bias, [b, 1, 1, t]),
            device,
        ));
        let pos = self.text_pos.val().unsqueeze::<3>();
        let mut x = self.token_embed.forward(ids) + pos;
        for blk in &self.text_blocks {
            x = blk.forward(x, None, &mask, None);
        }
        let x = rms_norm(&self.text_norm, x) * keep.unsqueeze_dim::<3>(2);
        let d = x.dims()[2];
        unit(self.text_proj.forward(x.reshape([b, t * d])))
    }

    /// Symmetric InfoNCE over a batch of matched pairs (row i of `images` with row i of
    /// `texts`, both unit embeddings [B, E]): the mean of the image→text and text→image
    /// cross-entropies of the scaled cosine logits. Returns the loss and the logits [B, B].
    pub fn info_nce(
        &self,
        images: Tensor<B, 2>,
        texts: Tensor<B, 2>,
    ) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let b = images.dims()[0];
        let device = images.device();
        // The scale is capped at 100, as CLIP's.
        let scale = self.logit_scale.val().clamp_max(100f32.ln()).exp();
        let logits = images.matmul(texts.transpose()) * scale.unsqueeze::<2>();
        let eye = Tensor::<B, 2>::from_data(
            TensorData::new(
                (0..b * b)
                    .map(|k| f32::from(u8::from(k / b == k % b)))
                    .collect::<Vec<_>>(),
                [b, b],
            ),
            &device,
        );
        let rows = -(log_softmax(logits.clone(), 1) * eye.clone()).sum() / b as f64;
        let cols = -(log_softmax(logits.clone(), 0) * eye).sum() / b as f64;
        ((rows + cols) / 2.0, logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cpu;

    pub fn tiny() -> ClipConfig {
        ClipConfig {
            image_size: 16,
            patch_size: 8,
            conv_stem: 0,
            dim: 16,
            image_layers: 1,
            text_layers: 1,
            heads: 2,
            mlp_ratio: 2,
            embed_dim: 8,
            vocab_size: 12,
            max_text_len: 6,
        }
    }

    /// InfoNCE equals a hand computation from the logits; embeddings have unit norm; padding
    /// does not change a text's embedding.
    #[test]
    fn info_nce_matches_its_formula_and_padding_is_ignored() {
        let dev = Default::default();
        Cpu::seed(&dev, 3);
        let m = tiny().init::<Cpu>(&dev);
        let images = Tensor::<Cpu, 3>::random([3, 16, 16], Distribution::Uniform(0.0, 1.0), &dev);
        let texts = vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9]];
        let (ei, et) = (m.encode_images(images), m.encode_texts(&texts, &dev));
        let norms = ei
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
        let (loss, logits) = m.info_nce(ei, et.clone());
        let l = logits.into_data().to_vec::<f32>().unwrap();
        let b = 3;
        let ce = |get: &dyn Fn(usize, usize) -> f32| -> f64 {
            (0..b)
                .map(|i| {
                    let z: f64 = (0..b).map(|j| (get(i, j) as f64).exp()).sum();
                    z.ln() - get(i, i) as f64
                })
                .sum::<f64>()
                / b as f64
        };
        let want = (ce(&|i, j| l[i * b + j]) + ce(&|i, j| l[j * b + i])) / 2.0;
        let got = loss.into_data().to_vec::<f32>().unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        // The same text alone (no padding) embeds the same.
        let alone = m
            .encode_texts(&texts[1..2], &dev)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let batched = et.narrow(0, 1, 1).into_data().to_vec::<f32>().unwrap();
        for (a, b) in alone.iter().zip(&batched) {
            assert!((a - b).abs() < 1e-5, "{alone:?} vs {batched:?}");
        }
    }
}
