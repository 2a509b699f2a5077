//! Transformer building blocks: multi-head attention with rotary positions and an optional KV
//! cache, a gated (SwiGLU) MLP, and the pre-norm block used by both the image encoder and the
//! language model. Attention masks are additive biases (0 or a large negative number).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Large negative bias for masked attention scores.
pub const MASKED: f32 = -1.0e9;

/// Rotary position tables for a batch: `cos`, `sin` of shape [B, 1, T, d_head/2].
#[derive(Clone, Debug)]
pub struct Rope<B: Backend> {
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// Tables for explicit integer positions [B, T].
    pub fn new(positions: Tensor<B, 2, Int>, d_head: usize, theta: f32) -> Self {
        let device = positions.device();
        let half = d_head / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / d_head as f32))
            .collect();
        let inv = Tensor::<B, 1>::from_data(TensorData::new(inv, [half]), &device);
        let [b, t] = positions.dims();
        let angles = positions.float().reshape([b, t, 1]) * inv.reshape([1, 1, half]);
        let angles = angles.reshape([b, 1, t, half]);
        Rope {
            cos: angles.clone().cos(),
            sin: angles.sin(),
        }
    }

    /// Rotates `x` [B, H, T, d_head] (half-split convention).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, t, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.slice([0..b, 0..h, 0..t, half..d]);
        let r1 = x1.clone() * self.cos.clone() - x2.clone() * self.sin.clone();
        let r2 = x1 * self.sin.clone() + x2 * self.cos.clone();
        Tensor::cat(vec![r1, r2], 3)
    }
}

/// Cached keys and values of one attention layer: [B, H, T, d_head].
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

/// Multi-head self-attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    pub out: Linear<B>,
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    pub fn new(d: usize, heads: usize, device: &B::Device) -> Self {
        Attention {
            qkv: LinearConfig::new(d, 3 * d).init(device),
            out: LinearConfig::new(d, d).init(device),
            heads,
        }
    }

    /// `x` [B, T, d]; `bias` broadcastable to [B, H, T, T_keys]; with `cache`, the new keys and
    /// values are appended to it and attention covers cached plus new positions.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&Rope<B>>,
        bias: Option<Tensor<B, 4>>,
        cache: Option<&mut Option<KvCache<B>>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let qkv = self.qkv.forward(x).reshape([b, t, 3, h, dh]);
        let split = |i: usize| -> Tensor<B, 4> {
            qkv.clone()
                .slice([0..b, 0..t, i..i + 1, 0..h, 0..dh])
                .reshape([b, t, h, dh])
                .swap_dims(1, 2)
        };
        let (mut q, mut k, v) = (split(0), split(1), split(2));
        if let Some(r) = rope {
            q = r.apply(q);
            k = r.apply(k);
        }
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(c) => (Tensor::cat(vec![c.k, k], 2), Tensor::cat(vec![c.v, v], 2)),
                    None => (k, v),
                };
                *slot = Some(KvCache {
                    k: k.clone(),
                    v: v.clone(),
                });
                (k, v)
            }
            None => (k, v),
        };
        let mut scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt();
        if let Some(bias) = bias {
            scores = scores + bias;
        }
        let probs = softmax(scores, 3);
        let ctx = probs.matmul(v).swap_dims(1, 2).reshape([b, t, d]);
        self.out.forward(ctx)
    }
}

/// Gated MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct GatedMlp<B: Backend> {
    pub gate: Linear<B>,
    pub up: Linear<B>,
    pub down: Linear<B>,
}

impl<B: Backend> GatedMlp<B> {
    pub fn new(d: usize, hidden: usize, device: &B::Device) -> Self {
        GatedMlp {
            gate: LinearConfig::new(d, hidden).with_bias(false).init(device),
            up: LinearConfig::new(d, hidden).with_bias(false).init(device),
            down: LinearConfig::new(hidden, d).with_bias(false).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down
            .forward(silu(self.gate.forward(x.clone())) * self.up.forward(x))
    }
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norm1: RmsNorm<B>,
    pub attn: Attention<B>,
    pub norm2: RmsNorm<B>,
    pub mlp: GatedMlp<B>,
}

impl<B: Backend> Block<B> {
    pub fn new(d: usize, heads: usize, mlp_ratio: usize, device: &B::Device) -> Self {
        Block {
            norm1: RmsNormConfig::new(d).init(device),
            attn: Attention::new(d, heads, device),
            norm2: RmsNormConfig::new(d).init(device),
            mlp: GatedMlp::new(d, d * mlp_ratio, device),
        }
    }

    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&Rope<B>>,
        bias: Option<Tensor<B, 4>>,
        cache: Option<&mut Option<KvCache<B>>>,
    ) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), rope, bias, cache);
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// Causal additive bias [1, 1, T, T].
pub fn causal_bias<B: Backend>(t: usize, device: &B::Device) -> Tensor<B, 4> {
    let mut v = vec![0.0f32; t * t];
    for i in 0..t {
        for j in i + 1..t {
            v[i * t + j] = MASKED;
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 1, t, t]), device)
}
