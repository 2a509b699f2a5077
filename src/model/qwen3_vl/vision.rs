//! The Qwen3-VL vision tower: patch embedding (a 3-d convolution whose stride is its kernel, so
//! one linear map per patch row), learned positions resampled bilinearly to each image's grid,
//! pre-norm blocks with 2-d rotary attention over each image's patches, the patch merger (2×2
//! patches → one LM token) and the DeepStack mergers of intermediate layers.
//!
//! Patch rows arrive in merge-window order (the processor's layout): the `m²` patches of one
//! merged token are consecutive.

use super::config::VisionConfig;
use super::layer_norm;
use crate::model::hf::{act, rotate_half};
use crate::model::layers::linear2;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// `proj` of the patch embedding: the convolution's weight [hidden, C, T, P, P] and bias.
#[derive(Module, Debug)]
pub struct Conv3dProj<B: Backend> {
    pub weight: Param<Tensor<B, 5>>,
    pub bias: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: Conv3dProj<B>,
}

#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    pub linear_fc1: Linear<B>,
    pub linear_fc2: Linear<B>,
}

#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub norm2: LayerNorm<B>,
    pub attn: VisionAttention<B>,
    pub mlp: VisionMlp<B>,
}

/// `m²` neighbouring patches → one token of the LM's width. The main merger normalizes each
/// patch before concatenating; the DeepStack mergers normalize the concatenation.
#[derive(Module, Debug)]
pub struct PatchMerger<B: Backend> {
    pub norm: LayerNorm<B>,
    pub linear_fc1: Linear<B>,
    pub linear_fc2: Linear<B>,
    #[module(skip)]
    pub postshuffle: bool,
}

#[derive(Module, Debug)]
pub struct VisionModel<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    pub pos_embed: Embedding<B>,
    pub blocks: Vec<VisionBlock<B>>,
    pub merger: PatchMerger<B>,
    pub deepstack_merger_list: Vec<PatchMerger<B>>,
    #[module(skip)]
    pub cfg: VisionConfig,
}

/// What the tower gives the LM: the merged image tokens [N/m², out] and one feature of that
/// shape per DeepStack layer.
pub struct VisionOutput<B: Backend> {
    /// The last block's output before the merger [N, hidden].
    pub hidden: Tensor<B, 2>,
    pub embeds: Tensor<B, 2>,
    pub deepstack: Vec<Tensor<B, 2>>,
}

impl<B: Backend> VisionModel<B> {
    pub fn new(cfg: &VisionConfig, device: &B::Device) -> Self {
        let d = cfg.hidden_size;
        let merged = d * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let merger = |postshuffle: bool| PatchMerger {
            norm: layer_norm(if postshuffle { merged } else { d }, device),
            linear_fc1: LinearConfig::new(merged, merged).init(device),
            linear_fc2: LinearConfig::new(merged, cfg.out_hidden_size).init(device),
            postshuffle,
        };
        VisionModel {
            patch_embed: PatchEmbed {
                proj: Conv3dProj {
                    weight: Param::from_tensor(Tensor::zeros(
                        [
                            d,
                            cfg.in_channels,
                            cfg.temporal_patch_size,
                            cfg.patch_size,
                            cfg.patch_size,
                        ],
                        device,
                    )),
                    bias: Param::from_tensor(Tensor::zeros([d], device)),
                },
            },
            pos_embed: EmbeddingConfig::new(cfg.num_position_embeddings, d).init(device),
            blocks: (0..cfg.depth)
                .map(|_| VisionBlock {
                    norm1: layer_norm(d, device),
                    norm2: layer_norm(d, device),
                    attn: VisionAttention {
                        qkv: LinearConfig::new(d, 3 * d).init(device),
                        proj: LinearConfig::new(d, d).init(device),
                    },
                    mlp: VisionMlp {
                        linear_fc1: LinearConfig::new(d, cfg.intermediate_size).init(device),
                        linear_fc2: LinearConfig::new(cfg.intermediate_size, d).init(device),
                    },
                })
                .collect(),
            merger: merger(false),
            deepstack_merger_list: cfg
                .deepstack_visual_indexes
                .iter()
                .map(|_| merger(true))
                .collect(),
            cfg: cfg.clone(),
        }
    }

    /// `pixel_values` [N, C·T·P·P] of images with patch grids `grids` (t, h, w each; N = Σ t·h·w).
    ///
    /// # Shapes
    /// - pixel_values: `[N, C·T·P·P]` → embeds `[N / m², out_hidden_size]`
    pub fn forward(&self, pixel_values: Tensor<B, 2>, grids: &[[usize; 3]]) -> VisionOutput<B> {
        self.forward_observed(pixel_values, grids, &mut |_, _| {})
    }

    /// [`VisionModel::forward`], handing each intermediate state to `observe` with its name
    /// (`patch_embed`, `positions`, `block.i`, `merger`): the way to find where a device's
    /// arithmetic first goes wrong.
    pub fn forward_observed(
        &self,
        pixel_values: Tensor<B, 2>,
        grids: &[[usize; 3]],
        observe: &mut dyn FnMut(&str, &Tensor<B, 2>),
    ) -> VisionOutput<B> {
        let cfg = &self.cfg;
        let device = pixel_values.device();
        let d = cfg.hidden_size;
        let w = self
            .patch_embed
            .proj
            .weight
            .val()
            .reshape([d, cfg.patch_features()]);
        let x =
            pixel_values.matmul(w.transpose()) + self.patch_embed.proj.bias.val().unsqueeze::<2>();
        observe("patch_embed", &x);
        let x = x + self.positions(grids, &device);
        observe("positions", &x);
        let (cos, sin) = self.rotary(grids, &device);
        let lens: Vec<usize> = grids.iter().map(|g| g[0] * g[1] * g[2]).collect();
        let mut x = x;
        let mut deepstack = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(x, &cos, &sin, &lens, cfg.num_heads, &cfg.hidden_act);
            observe(&format!("block.{i}"), &x);
            if let Some(k) = cfg.deepstack_visual_indexes.iter().position(|&l| l == i) {
                deepstack.push(self.deepstack_merger_list[k].forward(x.clone()));
            }
        }
        let embeds = self.merger.forward(x.clone());
        observe("merger", &embeds);
        VisionOutput {
            embeds,
            hidden: x,
            deepstack,
        }
    }

    /// Learned positions resampled to each grid: bilinear with aligned corners over the square
    /// table, border-clamped, in merge-window order.
    fn positions(&self, grids: &[[usize; 3]], device: &B::Device) -> Tensor<B, 2> {
        let side = (self.cfg.num_position_embeddings as f64).sqrt().round() as usize;
        let m = self.cfg.spatial_merge_size;
        let (mut idx, mut wts) = (Vec::new(), Vec::new());
        let axis = |i: usize, size: usize| -> [(usize, f32); 2] {
            // torch: index · (side − 1) / max(size − 1, 1) in f32.
            let src = i as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
            let f = src.floor();
            [0.0f32, 1.0].map(|o| {
                let tap = f + o;
                let weight = (1.0 - (src - tap).abs()).max(0.0);
                ((tap as usize).min(side - 1), weight)
            })
        };
        for &[t, h, w] in grids {
            for _ in 0..t {
                for (row, col) in merge_order(h, w, m) {
                    for (hi, hw) in axis(row, h) {
                        for (wi, ww) in axis(col, w) {
                            idx.push((hi * side + wi) as i64);
                            wts.push(hw * ww);
                        }
                    }
                }
            }
        }
        let n = wts.len() / 4;
        let table = self.pos_embed.weight.val();
        let d = table.dims()[1];
        let rows = table.select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [4 * n]), device),
        );
        let wts = Tensor::<B, 2>::from_data(TensorData::new(wts, [4 * n, 1]), device);
        (rows * wts).reshape([n, 4, d]).sum_dim(1).reshape([n, d])
    }

    /// cos, sin [N, head_dim] of the 2-d rotary embedding: frequencies `θ^(−2i/(d/2))` for
    /// i < d/4, rotating with the patch row for the first quarter and the column for the second,
    /// repeated for the second half (half-split rotation).
    fn rotary(&self, grids: &[[usize; 3]], device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let hd = self.cfg.head_dim();
        let spatial = hd / 2;
        let theta = self.cfg.rope_theta() as f32;
        let inv: Vec<f32> = (0..spatial)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / spatial as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &[t, h, w] in grids {
            for _ in 0..t {
                for (row, col) in merge_order(h, w, self.cfg.spatial_merge_size) {
                    let angles: Vec<f32> = inv
                        .iter()
                        .map(|f| row as f32 * f)
                        .chain(inv.iter().map(|f| col as f32 * f))
                        .collect();
                    for _ in 0..2 {
                        cos.extend(angles.iter().map(|a| a.cos()));
                        sin.extend(angles.iter().map(|a| a.sin()));
                    }
                }
            }
        }
        let n = cos.len() / hd;
        (
            Tensor::from_data(TensorData::new(cos, [n, hd]), device),
            Tensor::from_data(TensorData::new(sin, [n, hd]), device),
        )
    }
}

/// (row, column) of each patch of an h×w grid in merge-window order: windows row-major, the
/// m×m patches of a window row-major inside it.
pub fn merge_order(h: usize, w: usize, m: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..h / m).flat_map(move |br| {
        (0..w / m).flat_map(move |bc| {
            (0..m).flat_map(move |ir| (0..m).map(move |ic| (br * m + ir, bc * m + ic)))
        })
    })
}

impl<B: Backend> VisionBlock<B> {
    fn forward(
        &self,
        x: Tensor<B, 2>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        lens: &[usize],
        heads: usize,
        act_name: &str,
    ) -> Tensor<B, 2> {
        let x = x.clone()
            + self
                .attn
                .forward(self.norm1.forward(x), cos, sin, lens, heads);
        let h = act(
            linear2(&self.mlp.linear_fc1, self.norm2.forward(x.clone())),
            act_name,
        );
        x + linear2(&self.mlp.linear_fc2, h)
    }
}

impl<B: Backend> VisionAttention<B> {
    /// Full attention within each image's patches (`lens` consecutive rows each).
    fn forward(
        &self,
        x: Tensor<B, 2>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        lens: &[usize],
        heads: usize,
    ) -> Tensor<B, 2> {
        let [n, d] = x.dims();
        let hd = d / heads;
        let qkv = linear2(&self.qkv, x).reshape([n, 3, heads, hd]);
        let part = |i: usize| {
            qkv.clone()
                .slice([0..n, i..i + 1, 0..heads, 0..hd])
                .reshape([n, heads, hd])
        };
        let (cos, sin) = (cos.clone().unsqueeze_dim(1), sin.clone().unsqueeze_dim(1));
        let (q, k, v) = (
            rotate_half(part(0), &cos, &sin),
            rotate_half(part(1), &cos, &sin),
            part(2),
        );
        let scale = (hd as f64).powf(-0.5);
        let mut outs = Vec::with_capacity(lens.len());
        let mut start = 0;
        for &len in lens {
            let r = start..start + len;
            let pick = |t: &Tensor<B, 3>| {
                t.clone()
                    .slice([r.clone(), 0..heads, 0..hd])
                    .swap_dims(0, 1)
            };
            let (qi, ki, vi) = (pick(&q), pick(&k), pick(&v));
            let p = softmax(qi.matmul(ki.swap_dims(1, 2)) * scale, 2);
            outs.push(p.matmul(vi).swap_dims(0, 1).reshape([len, d]));
            start += len;
        }
        linear2(&self.proj, Tensor::cat(outs, 0))
    }
}

impl<B: Backend> PatchMerger<B> {
    /// [N, hidden] → [N/m², out].
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let merged = self.linear_fc1.weight.dims()[0];
        let [n, d] = x.dims();
        let rows = n * d / merged;
        let x = if self.postshuffle {
            self.norm.forward(x.reshape([rows, merged]))
        } else {
            self.norm.forward(x).reshape([rows, merged])
        };
        let h = burn::tensor::activation::gelu(linear2(&self.linear_fc1, x));
        linear2(&self.linear_fc2, h)
    }
}
