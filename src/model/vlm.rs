//! The VLM: (optional conv stem) → patchify → per-patch RMS norm → linear patch embedding +
//! learned positions → bidirectional blocks → norm → projector into the LM width; the causal LM then reads `[image tokens, prompt, answer]` with
//! rotary positions. Training uses [`Vlm::forward_text`]; sampling uses [`Vlm::prefill`] and
//! [`Vlm::step`] with a KV cache.

use super::config::VlmConfig;
use super::layers::{Block, KvCache, MASKED, Mask, Rope, attention_bias, linear3, rms_norm};
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, Linear, LinearConfig, PaddingConfig2d, RmsNorm, RmsNormConfig,
};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};

#[derive(Module, Debug)]
pub struct Vlm<B: Backend> {
    pub stem: Option<ConvStem<B>>,
    /// RMS-normalizes each patch's features before the embedding, so that thin strokes on a
    /// blank page give as strong a signal as solid ink (blank patches stay zero).
    pub patch_norm: RmsNorm<B>,
    pub patch_embed: Linear<B>,
    pub vit_pos: Param<Tensor<B, 2>>,
    pub vit_blocks: Vec<Block<B>>,
    pub vit_norm: RmsNorm<B>,
    pub projector: Linear<B>,
    pub embed: Embedding<B>,
    pub blocks: Vec<Block<B>>,
    pub norm: RmsNorm<B>,
    pub lm_head: Linear<B>,
    pub image_size: usize,
    pub patch_size: usize,
    pub heads: usize,
    pub rope_theta: f32,
}

/// Two stride-2 3×3 convolutions with GELU: [B, 1, S, S] → [B, 2c, S/4, S/4]. Early convolutions
/// make a small ViT far more sample-efficient at reading strokes (digits, lines) than linear patches.
#[derive(Module, Debug)]
pub struct ConvStem<B: Backend> {
    pub conv1: Conv2d<B>,
    pub conv2: Conv2d<B>,
}

impl<B: Backend> ConvStem<B> {
    pub fn new(c: usize, device: &B::Device) -> Self {
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        ConvStem {
            conv1: conv(1, c),
            conv2: conv(c, 2 * c),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        gelu(conv(&self.conv2, gelu(conv(&self.conv1, x))))
    }
}

/// `layer` applied to `x`: on the CPU backend by the fused patch-matrix kernel
/// ([`super::fused::conv2d`]) when the layer's options allow it, else by burn's convolution.
fn conv<B: Backend>(layer: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match layer.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    };
    let plain = layer.dilation == [1, 1] && layer.groups == 1;
    let fused = match (padding, &layer.bias) {
        (Some(padding), Some(bias)) if plain => super::fused::conv2d(
            x.clone(),
            layer.weight.val(),
            bias.val(),
            layer.stride,
            padding,
        ),
        _ => None,
    };
    fused.unwrap_or_else(|| layer.forward(x))
}

/// Patch features [B, N, F] of images [B, S, S]: the raw pixels of each `patch`-sized square, or
/// with a conv stem its feature map [B, C, S/4, S/4] cut into one token per patch.
pub fn patchify<B: Backend>(
    stem: Option<&ConvStem<B>>,
    images: Tensor<B, 3>,
    patch: usize,
) -> Tensor<B, 3> {
    let [b, s, _] = images.dims();
    let g = s / patch;
    match stem {
        None => images
            .reshape([b, g, patch, g, patch])
            .swap_dims(2, 3)
            .reshape([b, g * g, patch * patch]),
        Some(stem) => {
            let f = stem.forward(images.reshape([b, 1, s, s]));
            let [_, c, h, _] = f.dims();
            let q = h / g;
            f.reshape([b, c, g, q, g, q])
                .permute([0, 2, 4, 1, 3, 5])
                .reshape([b, g * g, c * q * q])
        }
    }
}

/// Per-layer caches of a batch being decoded, plus each row's next position.
pub struct DecodeState<B: Backend> {
    pub caches: Vec<Option<KvCache<B>>>,
    /// Additive bias of each row over its cached keys (0, or `MASKED` on left padding).
    pub key_bias: Vec<Vec<f32>>,
    pub next_pos: Vec<i64>,
    pub device: B::Device,
}

impl<B: Backend> DecodeState<B> {
    /// The state of a batch made of rows of this one (`rows[i]` = the source row of row i): the
    /// way G samples of one prompt share a single prefill.
    pub fn fork(self, rows: &[usize]) -> Self {
        let device = self.device.clone();
        let caches = self
            .caches
            .iter()
            .map(|c| c.as_ref().map(|c| c.select_rows(rows)))
            .collect();
        DecodeState {
            caches,
            key_bias: rows.iter().map(|&r| self.key_bias[r].clone()).collect(),
            next_pos: rows.iter().map(|&r| self.next_pos[r]).collect(),
            device,
        }
    }
}

impl<B: Backend> Vlm<B> {
    /// A freshly initialized model (seed the backend first for reproducibility). Every
    /// parameter is drawn here, in module order: burn initializes parameters lazily, at first
    /// use, and the weights would otherwise depend on which code touches them first.
    pub fn new(cfg: &VlmConfig, device: &B::Device) -> Self {
        struct InitNow;
        impl<B: Backend> ModuleVisitor<B> for InitNow {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let _ = param.val();
            }
        }
        let model = Self::uninitialized(cfg, device);
        model.visit(&mut InitNow);
        model
    }

    fn uninitialized(cfg: &VlmConfig, device: &B::Device) -> Self {
        let n = cfg.patches();
        Vlm {
            stem: (cfg.conv_stem > 0).then(|| ConvStem::new(cfg.conv_stem, device)),
            patch_norm: RmsNormConfig::new(cfg.patch_features()).init(device),
            patch_embed: LinearConfig::new(cfg.patch_features(), cfg.vit_dim).init(device),
            vit_pos: Param::from_tensor(Tensor::random(
                [n, cfg.vit_dim],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            vit_blocks: (0..cfg.vit_layers)
                .map(|_| Block::new(cfg.vit_dim, cfg.vit_heads, cfg.mlp_ratio, device))
                .collect(),
            vit_norm: RmsNormConfig::new(cfg.vit_dim).init(device),
            projector: LinearConfig::new(cfg.vit_dim, cfg.d_model).init(device),
            embed: EmbeddingConfig::new(cfg.vocab_size, cfg.d_model).init(device),
            blocks: (0..cfg.layers)
                .map(|_| Block::new(cfg.d_model, cfg.heads, cfg.mlp_ratio, device))
                .collect(),
            norm: RmsNormConfig::new(cfg.d_model).init(device),
            lm_head: LinearConfig::new(cfg.d_model, cfg.vocab_size).init(device),
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
            heads: cfg.heads,
            rope_theta: cfg.rope_theta,
        }
    }

    fn d_head(&self) -> usize {
        self.embed.weight.dims()[1] / self.heads
    }

    /// Image tokens [B, N, d_model] from images [B, S, S] with ink in 0..1.
    pub fn encode_image(&self, images: Tensor<B, 3>) -> Tensor<B, 3> {
        let patches = patchify(self.stem.as_ref(), images, self.patch_size);
        let mut x = linear3(&self.patch_embed, rms_norm(&self.patch_norm, patches))
            + self.vit_pos.val().unsqueeze::<3>();
        for blk in &self.vit_blocks {
            x = blk.forward(x, None, &Mask::Bidirectional, None);
        }
        linear3(&self.projector, rms_norm(&self.vit_norm, x))
    }

    fn run_lm(
        &self,
        x: Tensor<B, 3>,
        positions: &[i64],
        mask: Mask<B>,
        mut caches: Option<&mut Vec<Option<KvCache<B>>>>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        // Without a causal kernel the mask is an additive bias: built once, not per layer.
        let mask = match mask {
            Mask::Causal if !super::layers::causal_kernel::<B>() => Mask::Bias(attention_bias(
                &vec![Vec::new(); b],
                self.heads,
                t,
                &x.device(),
            )),
            m => m,
        };
        let rope = Rope::new(
            positions,
            [b, t],
            self.heads,
            self.d_head(),
            self.rope_theta,
            &x.device(),
        );
        let mut x = x;
        for (i, blk) in self.blocks.iter().enumerate() {
            let cache = caches.as_deref_mut().map(|c| &mut c[i]);
            x = blk.forward(x, Some(&rope), &mask, cache);
        }
        linear3(&self.lm_head, rms_norm(&self.norm, x))
    }

    /// Teacher-forced logits for text `ids` [B, L] after the image: [B, L, vocab]; the logits at
    /// text position t predict token t+1.
    pub fn forward_text(&self, images: Tensor<B, 3>, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let img = self.encode_image(images);
        let [b, n, _] = img.dims();
        let [_, l] = ids.dims();
        let x = Tensor::cat(vec![img, self.embed.forward(ids)], 1);
        let t = n + l;
        let pos: Vec<i64> = (0..b).flat_map(|_| 0..t as i64).collect();
        let logits = self.run_lm(x, &pos, Mask::Causal, None);
        let vocab = logits.dims()[2];
        logits.slice([0..b, n..t, 0..vocab])
    }

    /// Encodes a batch of prefixes `[image tokens, ids_i]` (left-padded to a common length) into
    /// the caches; returns the logits of each row's last prefix token [B, vocab].
    pub fn prefill(
        &self,
        images: Tensor<B, 3>,
        prefixes: &[Vec<u32>],
    ) -> (Tensor<B, 2>, DecodeState<B>) {
        let device = images.device();
        let img = self.encode_image(images);
        let [b, n, d] = img.dims();
        let lmax = prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let t = n + lmax;
        // Text ids left-padded with 0 (their embeddings are masked out of every attention).
        let mut ids = Vec::with_capacity(b * lmax);
        let mut pos = Vec::with_capacity(b * t);
        let mut key_bias = Vec::with_capacity(b);
        let mut next_pos = Vec::with_capacity(b);
        for p in prefixes {
            let padn = lmax - p.len();
            ids.extend(std::iter::repeat_n(0i64, padn));
            ids.extend(p.iter().map(|&x| x as i64));
            // Pads sit before the image: [pads, image, prefix ids].
            pos.extend((0..t).map(|j| j.saturating_sub(padn) as i64));
            key_bias.push(
                (0..t)
                    .map(|j| if j >= padn { 0.0f32 } else { MASKED })
                    .collect::<Vec<_>>(),
            );
            next_pos.push((n + p.len()) as i64);
        }
        let text = self
            .embed
            .forward(Tensor::from_data(TensorData::new(ids, [b, lmax]), &device));
        // Assemble [pads, image, text] per row: split text into its pad part and real part.
        let mut rows = Vec::with_capacity(b);
        for (i, p) in prefixes.iter().enumerate() {
            let padn = lmax - p.len();
            let ti = text.clone().slice([i..i + 1, 0..lmax, 0..d]);
            let imgi = img.clone().slice([i..i + 1, 0..n, 0..d]);
            let mut parts = Vec::new();
            if padn > 0 {
                parts.push(ti.clone().slice([0..1, 0..padn, 0..d]));
            }
            parts.push(imgi);
            if padn < lmax {
                parts.push(ti.slice([0..1, padn..lmax, 0..d]));
            }
            rows.push(Tensor::cat(parts, 1));
        }
        let x = Tensor::cat(rows, 0);
        let bias = attention_bias(&key_bias, self.heads, t, &device);
        let mut caches = vec![None; self.blocks.len()];
        let logits = self.run_lm(x, &pos, Mask::Bias(bias), Some(&mut caches));
        let vocab = logits.dims()[2];
        let last = logits.slice([0..b, t - 1..t, 0..vocab]).reshape([b, vocab]);
        (
            last,
            DecodeState {
                caches,
                key_bias,
                next_pos,
                device,
            },
        )
    }

    /// Feeds one token per row and returns the next logits [B, vocab].
    pub fn step(&self, tokens: &[u32], state: &mut DecodeState<B>) -> Tensor<B, 2> {
        let device = state.device.clone();
        let b = tokens.len();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(), [b, 1]),
            &device,
        );
        let positions = state.next_pos.clone();
        for p in &mut state.next_pos {
            *p += 1;
        }
        for row in &mut state.key_bias {
            row.push(0.0);
        }
        let bias = attention_bias(&state.key_bias, self.heads, 1, &device);
        let logits = self.run_lm(
            self.embed.forward(ids),
            &positions,
            Mask::Bias(bias),
            Some(&mut state.caches),
        );
        let vocab = logits.dims()[2];
        logits.reshape([b, vocab])
    }
}
