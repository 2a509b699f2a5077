//! The Qwen3 language model of Qwen3-VL: token embeddings, decoder layers (RMS norms, grouped-query
//! attention with a per-head RMS norm on queries and keys before the rotation, SwiGLU MLP), the
//! DeepStack features added at the image positions after the first layers, the final norm.

use super::config::TextConfig;
use super::{RmsNorm, act};
use crate::model::layers::linear3;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

#[derive(Module, Debug)]
pub struct TextAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub q_norm: RmsNorm<B>,
    pub k_norm: RmsNorm<B>,
}

#[derive(Module, Debug)]
pub struct TextMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: TextAttention<B>,
    pub mlp: TextMlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

#[derive(Module, Debug)]
pub struct TextModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    #[module(skip)]
    pub cfg: TextConfig,
}

/// Rotary tables [B, T, head_dim] for 3-axis positions: frequency i rotates with the temporal,
/// height or width position as the interleaved MRoPE layout assigns it (`i ≡ 1 (mod 3)` below
/// `3·section[1]`: height; `i ≡ 2 (mod 3)` below `3·section[2]`: width; otherwise temporal),
/// repeated for the second half.
pub fn mrope_tables<B: Backend>(
    cfg: &TextConfig,
    positions: &[[Vec<i64>; 3]],
    device: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let hd = cfg.head_dim();
    let half = hd / 2;
    let theta = cfg.rope_theta() as f32;
    let section = cfg.mrope_section();
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32))
        .collect();
    let axis_of = |i: usize| -> usize {
        if i % 3 == 1 && i < 3 * section[1] {
            1
        } else if i % 3 == 2 && i < 3 * section[2] {
            2
        } else {
            0
        }
    };
    let b = positions.len();
    let t = positions.first().map_or(0, |p| p[0].len());
    let (mut cos, mut sin) = (
        Vec::with_capacity(b * t * hd),
        Vec::with_capacity(b * t * hd),
    );
    for row in positions {
        for ((&pt, &ph), &pw) in row[0].iter().zip(&row[1]).zip(&row[2]) {
            let p = [pt, ph, pw];
            let angles: Vec<f32> = inv
                .iter()
                .enumerate()
                .map(|(i, f)| p[axis_of(i)] as f32 * f)
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [b, t, hd]), device),
        Tensor::from_data(TensorData::new(sin, [b, t, hd]), device),
    )
}

impl<B: Backend> TextModel<B> {
    pub fn new(cfg: &TextConfig, device: &B::Device) -> Self {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (h, kv) = (cfg.num_attention_heads, cfg.kv_heads());
        let lin =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        let norm = |n: usize| RmsNorm::new(n, cfg.rms_norm_eps, device);
        TextModel {
            embed_tokens: EmbeddingConfig::new(cfg.vocab_size, d).init(device),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| DecoderLayer {
                    self_attn: TextAttention {
                        q_proj: lin(d, h * hd, cfg.attention_bias),
                        k_proj: lin(d, kv * hd, cfg.attention_bias),
                        v_proj: lin(d, kv * hd, cfg.attention_bias),
                        o_proj: lin(h * hd, d, cfg.attention_bias),
                        q_norm: norm(hd),
                        k_norm: norm(hd),
                    },
                    mlp: TextMlp {
                        gate_proj: lin(d, cfg.intermediate_size, false),
                        up_proj: lin(d, cfg.intermediate_size, false),
                        down_proj: lin(cfg.intermediate_size, d, false),
                    },
                    input_layernorm: norm(d),
                    post_attention_layernorm: norm(d),
                })
                .collect(),
            norm: norm(d),
            cfg: cfg.clone(),
        }
    }

    /// Hidden states [B, T, d] after the final norm, for input embeddings `x` [B, T, d] that
    /// follow the positions already in `cache` (all of them, none when it is empty), each query
    /// seeing the cached keys and the new ones up to itself, with `deepstack[i]` ([B, T, d], zero
    /// off the image positions) added after layer i.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 3>, Tensor<B, 3>),
        deepstack: &[Tensor<B, 3>],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        let mask = causal_bias::<B>(b, t, cache.len, &cache.padding, &x.device());
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, rope, &mask, &self.cfg, &mut cache.layers[i]);
            if let Some(extra) = deepstack.get(i) {
                x = x + extra.clone();
            }
        }
        cache.len += t;
        if !cache.padding.is_empty() {
            for row in &mut cache.padding {
                row.extend(std::iter::repeat_n(false, t));
            }
        }
        self.norm.forward(x)
    }
}

/// Keys and values [B, kv_heads, n, head_dim] of each layer for the `len` positions seen so far.
#[derive(Clone, Debug, Default)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    pub len: usize,
    /// Per row, the positions no query may see (left padding of a batch of prompts of several
    /// lengths); empty: none.
    pub padding: Vec<Vec<bool>>,
}

/// Additive bias [B, 1, T, past + T]: query i sees the `past` cached keys and the new ones up to
/// itself, except the padding keys of its row; a large negative number elsewhere.
fn causal_bias<B: Backend>(
    b: usize,
    t: usize,
    past: usize,
    padding: &[Vec<bool>],
    device: &B::Device,
) -> Tensor<B, 4> {
    let keys = past + t;
    let v: Vec<f32> = (0..b * t * keys)
        .map(|i| {
            let (r, q, k) = (i / (t * keys), (i / keys) % t, i % keys);
            let pad = padding
                .get(r)
                .and_then(|p| p.get(k))
                .copied()
                .unwrap_or(false);
            if k > past + q || pad { -1.0e9 } else { 0.0 }
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [b, 1, t, keys]), device)
}

/// `x·cos + rotate_half(x)·sin` for `x` [B, H, T, d] and tables [B, T, d].
fn rotate<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 3>, sin: &Tensor<B, 3>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone().unsqueeze_dim::<4>(1) + rotated * sin.clone().unsqueeze_dim::<4>(1)
}

impl<B: Backend> DecoderLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 3>, Tensor<B, 3>),
        mask: &Tensor<B, 4>,
        cfg: &TextConfig,
        cache: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> Tensor<B, 3> {
        let normed = self.input_layernorm.forward(x.clone());
        let h = self.self_attn.forward(normed, rope, mask, cfg, cache);
        let x = x + h;
        let y = self.post_attention_layernorm.forward(x.clone());
        let gate = act(linear3(&self.mlp.gate_proj, y.clone()), &cfg.hidden_act);
        x + linear3(&self.mlp.down_proj, gate * linear3(&self.mlp.up_proj, y))
    }
}

impl<B: Backend> TextAttention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        (cos, sin): &(Tensor<B, 3>, Tensor<B, 3>),
        mask: &Tensor<B, 4>,
        cfg: &TextConfig,
        cache: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]);
        let q = self
            .q_norm
            .forward(heads(linear3(&self.q_proj, x.clone()), h))
            .swap_dims(1, 2);
        let k = self
            .k_norm
            .forward(heads(linear3(&self.k_proj, x.clone()), kv))
            .swap_dims(1, 2);
        let v = heads(linear3(&self.v_proj, x), kv).swap_dims(1, 2);
        let (q, k) = (rotate(q, cos, sin), rotate(k, cos, sin));
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let keys = k.dims()[2];
        // Grouped queries: each key/value head serves h / kv query heads.
        let group = h / kv;
        let repeat = |y: Tensor<B, 4>| {
            y.unsqueeze_dim::<5>(2)
                .repeat_dim(2, group)
                .reshape([b, h, keys, hd])
        };
        let (k, v) = (repeat(k), repeat(v));
        let scores = q.matmul(k.swap_dims(2, 3)) * (hd as f64).powf(-0.5) + mask.clone();
        let ctx = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, t, h * hd]);
        linear3(&self.o_proj, ctx)
    }
}
