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

/// Whether position tables and attention masks are built at their full `[B, …, H, …]` shape:
/// on the CPU backend, whose element-wise kernels vectorize only over contiguous operands of one
/// shape. Elsewhere (CUDA, wgpu) they are uploaded with one head (and one row where every row is
/// the same) and broadcast on the device: a fraction of the bytes, and shapes that repeat.
pub fn full_shape_tables<B: Backend>() -> bool {
    super::fused::available::<B>()
}

/// Rotary position tables for a batch, laid out to rotate a fused `[B, T, 3, H, d_head]` query /
/// key / value projection in one pass: `cos`, `sin` of shape `[B, T, 3, H', d_head]` (the value
/// slot holds cos = 1, sin = 0), where `H'` is `H` on the CPU backend (so that both products run
/// on contiguous operands, which its element-wise kernels need to vectorize) and 1 elsewhere
/// (broadcast over heads; see [`full_shape_tables`]), and the fixed `rotate_half` map as a
/// [d_head, d_head] matrix. Half-split convention: pairs (i, i + d_head/2) rotate by
/// `position · θ^(−2i/d_head)`.
#[derive(Clone, Debug)]
pub struct Rope<B: Backend> {
    pub cos: Tensor<B, 5>,
    pub sin: Tensor<B, 5>,
    pub rot: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// Tables for explicit integer positions, `positions[b·T + t]` for row b and step t.
    pub fn new(
        positions: &[i64],
        [b, t]: [usize; 2],
        heads: usize,
        d_head: usize,
        theta: f32,
        device: &B::Device,
    ) -> Self {
        let heads = if full_shape_tables::<B>() { heads } else { 1 };
        Self::with_table_heads(positions, [b, t], heads, d_head, theta, device)
    }

    /// [`Rope::new`] with the tables' head dimension given: `heads`, or 1 to broadcast.
    pub fn with_table_heads(
        positions: &[i64],
        [b, t]: [usize; 2],
        heads: usize,
        d_head: usize,
        theta: f32,
        device: &B::Device,
    ) -> Self {
        let half = d_head / 2;
        let inv: Vec<f64> = (0..half)
            .map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / d_head as f64))
            .collect();
        let n = b * t * 3 * heads * d_head;
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &p in positions.iter().take(b * t) {
            let (c, s): (Vec<f32>, Vec<f32>) = inv
                .iter()
                .map(|f| {
                    // The angle in f32, as a float tensor product would compute it.
                    let a = p as f32 * *f as f32;
                    (a.cos(), a.sin())
                })
                .unzip();
            for _ in 0..2 * heads {
                // query, key
                cos.extend_from_slice(&c);
                cos.extend_from_slice(&c);
                sin.extend_from_slice(&s);
                sin.extend_from_slice(&s);
            }
            // value: identity
            cos.extend(std::iter::repeat_n(1.0f32, heads * d_head));
            sin.extend(std::iter::repeat_n(0.0f32, heads * d_head));
        }
        let mut rot = vec![0.0f32; d_head * d_head];
        for j in 0..half {
            // rotate_half(x) = [−x₂, x₁]: column j < half takes −x[j + half], column j + half
            // takes x[j].
            rot[(j + half) * d_head + j] = -1.0;
            rot[j * d_head + j + half] = 1.0;
        }
        let table =
            |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [b, t, 3, heads, d_head]), device);
        Rope {
            cos: table(cos),
            sin: table(sin),
            rot: Tensor::from_data(TensorData::new(rot, [d_head, d_head]), device),
        }
    }

    /// Rotates the query and key parts of a fused projection `qkv` [B, T, 3, H, d_head]; the
    /// value part passes unchanged.
    pub fn apply_qkv(&self, qkv: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, t, three, h, d] = qkv.dims();
        let rotated = qkv
            .clone()
            .reshape([b * t * three * h, d])
            .matmul(self.rot.clone())
            .reshape([b, t, three, h, d]);
        qkv * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// A linear layer applied to `[B, T, d_in]` as one `[B·T, d_in] × [d_in, d_out]` product (burn's
/// `Linear` on a 3-d input runs one small product per batch row, several times slower on CPU);
/// on the CPU backend by the fused kernel ([`super::fused::linear`]).
pub fn linear3<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = linear2(layer, x.reshape([b * t, d]));
    let out = y.dims()[1];
    y.reshape([b, t, out])
}

/// `layer` on rows `[N, d_in]`: by the fused kernel on the CPU backend
/// ([`super::fused::linear`]), by burn's `Linear` elsewhere.
pub fn linear2<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let bias = layer.bias.as_ref().map(|b| b.val());
    super::fused::linear(x.clone(), layer.weight.val(), bias).unwrap_or_else(|| layer.forward(x))
}

/// `layer` applied to `x`: one node by [`rms_norm_kernel`] where the backend has one, by
/// burn's `RmsNorm` elsewhere.
pub fn rms_norm<B: Backend, const D: usize>(layer: &RmsNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    rms_norm_kernel(x.clone(), layer.gamma.val(), layer.epsilon).unwrap_or_else(|| layer.forward(x))
}

/// `x / √(mean(x², last) + epsilon) · gamma` as one node: by the fused kernel on the CPU backend
/// ([`super::fused::rms_norm`]), by the cubecl kernels on the GPU-shaped backends
/// (`model::cube::norm`); `None` elsewhere.
pub fn rms_norm_kernel<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    if let Some(y) = super::fused::rms_norm(x.clone(), gamma.clone(), epsilon) {
        return Some(y);
    }
    #[cfg(feature = "gpu")]
    if let Some(y) = super::cube::rms_norm(x.clone(), gamma.clone(), epsilon) {
        return Some(y);
    }
    let _ = (x, gamma, epsilon);
    None
}

/// Positions gathered before a block of the cache is sealed.
pub const KV_BLOCK: usize = 32;

/// Whether attention under [`Mask::Causal`] runs as a kernel that masks by position (the CPU's
/// fused attention, the cubecl backends' row softmax), so that no bias tensor is needed.
pub fn causal_kernel<B: Backend>() -> bool {
    #[cfg(feature = "gpu")]
    if super::cube::available::<B>() {
        return true;
    }
    super::fused::available::<B>()
}

/// Cached keys and values of one attention layer, each [B, H, n, d_head], kept as a list of
/// sealed blocks plus a growing tail: a decoding step appends to the tail only (copying at most
/// `KV_BLOCK` positions) instead of re-concatenating the whole cache, and attention runs over
/// the blocks in turn with one softmax across all of them.
#[derive(Clone, Debug, Default)]
pub struct KvCache<B: Backend> {
    pub blocks: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    pub tail: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> KvCache<B> {
    /// Appends new keys and values; a prefill (several positions at once) or a full tail is
    /// sealed into a block.
    pub fn push(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let (k, v) = match self.tail.take() {
            Some((tk, tv)) => (Tensor::cat(vec![tk, k], 2), Tensor::cat(vec![tv, v], 2)),
            None => (k, v),
        };
        if k.dims()[2] >= KV_BLOCK || self.blocks.is_empty() {
            self.blocks.push((k, v));
        } else {
            self.tail = Some((k, v));
        }
    }

    /// The parts in position order.
    pub fn parts(&self) -> impl Iterator<Item = &(Tensor<B, 4>, Tensor<B, 4>)> {
        self.blocks.iter().chain(self.tail.as_ref())
    }

    /// Appends new keys and values ([`KvCache::push`]) and returns all of them, each
    /// [B, H, n, d_head], in position order: for an attention that reads the whole cache at once.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.push(k, v);
        let (mut ks, mut vs): (Vec<_>, Vec<_>) = self.parts().cloned().unzip();
        if ks.len() == 1
            && let (Some(k), Some(v)) = (ks.pop(), vs.pop())
        {
            return (k, v);
        }
        (Tensor::cat(ks, 2), Tensor::cat(vs, 2))
    }

    /// The cache of a batch made of rows of this one: row i is row `rows[i]` (a row may
    /// repeat).
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let Some((first, _)) = self.parts().next() else {
            return KvCache::default();
        };
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &first.device(),
        );
        let pick = |t: &Tensor<B, 4>| t.clone().select(0, idx.clone());
        KvCache {
            blocks: self
                .blocks
                .iter()
                .map(|(k, v)| (pick(k), pick(v)))
                .collect(),
            tail: self.tail.as_ref().map(|(k, v)| (pick(k), pick(v))),
        }
    }
}

/// Scaled dot-product attention of `q` [B, H, T, d] over keys and values given in parts
/// (concatenated along positions), with an additive `bias` broadcastable to [B, H, T, keys].
fn attend<B: Backend>(
    q: Tensor<B, 4>,
    parts: &[(Tensor<B, 4>, Tensor<B, 4>)],
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let dh = q.dims()[3];
    let scale = 1.0 / (dh as f64).sqrt();
    let mut scores = if parts.len() == 1 {
        q.matmul(parts[0].0.clone().swap_dims(2, 3))
    } else {
        Tensor::cat(
            parts
                .iter()
                .map(|(k, _)| q.clone().matmul(k.clone().swap_dims(2, 3)))
                .collect(),
            3,
        )
    } * scale;
    if let Some(bias) = bias {
        scores = scores + bias;
    }
    let probs = softmax(scores, 3);
    if parts.len() == 1 {
        return probs.matmul(parts[0].1.clone());
    }
    let [b, h, t, _] = probs.dims();
    let mut start = 0;
    let mut out: Option<Tensor<B, 4>> = None;
    for (_, v) in parts {
        let n = v.dims()[2];
        let y = probs
            .clone()
            .slice([0..b, 0..h, 0..t, start..start + n])
            .matmul(v.clone());
        out = Some(match out {
            Some(acc) => acc + y,
            None => y,
        });
        start += n;
    }
    out.unwrap_or(probs)
}

/// Which keys each query attends to.
#[derive(Clone, Debug)]
pub enum Mask<B: Backend> {
    /// Every key (the image encoder).
    Bidirectional,
    /// Keys up to the query's own position, queries and keys being the same `T` positions (the
    /// language model in training).
    Causal,
    /// An additive bias broadcastable to [B, H, T, T_keys] (0 or [`MASKED`]): padding, a cache.
    Bias(Tensor<B, 4>),
}

impl<B: Backend> Mask<B> {
    /// The mask as an additive bias for `t` queries over as many keys, `None` for no mask.
    pub fn bias(
        &self,
        b: usize,
        heads: usize,
        t: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 4>> {
        match self {
            Mask::Bidirectional => None,
            Mask::Causal => Some(attention_bias(&vec![Vec::new(); b], heads, t, device)),
            Mask::Bias(bias) => Some(bias.clone()),
        }
    }
}

/// Attention of a fused projection `qkv` [B, T, 3, H, d] composed from tensor operations: the
/// context [B, T, H·d]. The reference for the fused CPU kernel and the path of other backends.
pub fn attention_reference<B: Backend>(
    qkv: Tensor<B, 5>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    let [b, t, _, h, dh] = qkv.dims();
    let (q, k, v) = split_heads(qkv);
    attend(q, &[(k, v)], bias)
        .swap_dims(1, 2)
        .reshape([b, t, h * dh])
}

/// Query, key and value [B, H, T, d] of a fused projection [B, T, 3, H, d].
fn split_heads<B: Backend>(qkv: Tensor<B, 5>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, t, _, h, dh] = qkv.dims();
    let split = |i: usize| -> Tensor<B, 4> {
        qkv.clone()
            .slice([0..b, 0..t, i..i + 1, 0..h, 0..dh])
            .reshape([b, t, h, dh])
            .swap_dims(1, 2)
    };
    (split(0), split(1), split(2))
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

    /// `x` [B, T, d]; with `cache`, the new keys and values are appended to it and attention
    /// covers cached plus new positions. Without a cache and with a bidirectional or causal
    /// mask, the CPU backend runs the fused kernel ([`super::fused`]) and the cubecl backends
    /// attention as one node, the rotation included (`model::cube::attention`).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&Rope<B>>,
        mask: &Mask<B>,
        cache: Option<&mut Option<KvCache<B>>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let device = x.device();
        let qkv = linear3(&self.qkv, x).reshape([b, t, 3, h, dh]);
        let causal = match (&cache, mask) {
            (None, Mask::Bidirectional) => Some(false),
            (None, Mask::Causal) => Some(true),
            _ => None,
        };
        #[cfg(feature = "gpu")]
        if let Some(c) = causal
            && let Some(ctx) = super::cube::attention(qkv.clone(), c, rope)
        {
            return linear3(&self.out, ctx);
        }
        let qkv = match rope {
            Some(r) => r.apply_qkv(qkv),
            None => qkv,
        };
        let ctx = match cache {
            Some(slot) => {
                let (q, k, v) = split_heads(qkv);
                let c = slot.get_or_insert_with(KvCache::default);
                c.push(k, v);
                let parts: Vec<_> = c.parts().cloned().collect();
                attend(q, &parts, mask.bias(b, h, t, &device))
                    .swap_dims(1, 2)
                    .reshape([b, t, d])
            }
            None => match causal.and_then(|c| super::fused::attention(qkv.clone(), c)) {
                Some(ctx) => ctx,
                None => attention_reference(qkv, mask.bias(b, h, t, &device)),
            },
        };
        linear3(&self.out, ctx)
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
        let (g, u) = (linear3(&self.gate, x.clone()), linear3(&self.up, x));
        let h = match super::fused::silu_gate(g.clone(), u.clone()) {
            Some(h) => h,
            None => silu(g) * u,
        };
        linear3(&self.down, h)
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
        mask: &Mask<B>,
        cache: Option<&mut Option<KvCache<B>>>,
    ) -> Tensor<B, 3> {
        let x = x.clone()
            + self
                .attn
                .forward(rms_norm(&self.norm1, x), rope, mask, cache);
        x.clone() + self.mlp.forward(rms_norm(&self.norm2, x))
    }
}

/// Additive attention bias [B, H, T, T_keys] for `t` queries that are the last `t` of each row's
/// `T_keys` keys: query i sees key j iff j ≤ T_keys − t + i, and then with the row's own bias on
/// that key (`key_bias[r][j]`: 0, or [`MASKED`] on padding; an empty row means no padding and
/// `T_keys` = `t`). On the CPU backend built in full on the host: with a broadcast operand its
/// addition falls back to a scalar strided loop, once per layer and again in the backward pass.
/// Elsewhere ([`full_shape_tables`]) with one head, and one row when no row has padding: the
/// attention scores broadcast it.
pub fn attention_bias<B: Backend>(
    key_bias: &[Vec<f32>],
    heads: usize,
    t: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    if full_shape_tables::<B>() {
        attention_bias_of(key_bias, heads, t, device)
    } else if key_bias.iter().all(Vec::is_empty) {
        attention_bias_of(&key_bias[..key_bias.len().min(1)], 1, t, device)
    } else {
        attention_bias_of(key_bias, 1, t, device)
    }
}

/// [`attention_bias`] at the given row and head counts.
pub fn attention_bias_of<B: Backend>(
    key_bias: &[Vec<f32>],
    heads: usize,
    t: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let b = key_bias.len();
    let tk = key_bias.iter().map(Vec::len).max().unwrap_or(0).max(t);
    let mut v = Vec::with_capacity(b * heads * t * tk);
    let mut row = vec![0.0f32; t * tk];
    for keys in key_bias {
        for i in 0..t {
            let last = tk - t + i;
            for j in 0..tk {
                row[i * tk + j] = if j > last {
                    MASKED
                } else {
                    keys.get(j).copied().unwrap_or(0.0)
                };
            }
        }
        for _ in 0..heads {
            v.extend_from_slice(&row);
        }
    }
    Tensor::from_data(TensorData::new(v, [b, heads, t, tk]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::model::Cpu;

    /// The broadcast tables of the GPU backends (one head; one row without padding) give the
    /// same rotation and the same attention as the full-shape tables of the CPU backend.
    #[test]
    fn broadcast_tables_equal_full_ones() {
        let (b, t, h, d) = (2usize, 5usize, 3usize, 8usize);
        let dev = Default::default();
        let x: Vec<f32> = (0..b * t * 3 * h * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let qkv = Tensor::<B, 5>::from_data(TensorData::new(x, [b, t, 3, h, d]), &dev);
        let positions: Vec<i64> = vec![0, 1, 2, 3, 4, 7, 8, 9, 10, 11];
        let full = Rope::<B>::with_table_heads(&positions, [b, t], h, d, 1e4, &dev);
        let one = Rope::<B>::with_table_heads(&positions, [b, t], 1, d, 1e4, &dev);
        assert_eq!(one.cos.dims(), [b, t, 3, 1, d]);
        let (a, c) = (full.apply_qkv(qkv.clone()), one.apply_qkv(qkv.clone()));
        let diff = (a.clone() - c).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
        for keys in [
            vec![Vec::new(); b],
            vec![vec![MASKED, 0.0, 0.0, 0.0, 0.0], vec![0.0; 5]],
        ] {
            let wide = attention_bias_of::<B>(&keys, h, t, &dev);
            let rows = if keys.iter().all(Vec::is_empty) { 1 } else { b };
            let narrow = attention_bias_of::<B>(&keys[..rows], 1, t, &dev);
            assert_eq!(narrow.dims(), [rows, 1, t, t]);
            let (p, q) = (
                attention_reference(a.clone(), Some(wide)),
                attention_reference(a.clone(), Some(narrow)),
            );
            let diff = (p - q).abs().max().into_scalar();
            assert!(diff < 1e-6, "{diff}");
        }
    }

    /// The fused rotation equals the half-split rotary formula applied to the query and key
    /// parts separately, and leaves the value part unchanged.
    #[test]
    fn rope_rotates_query_and_key_and_keeps_value() {
        let (b, t, h, d) = (2usize, 3usize, 2usize, 8usize);
        let n = b * t * 3 * h * d;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let positions: Vec<i64> = vec![0, 1, 5, 7, 2, 40];
        let dev = Default::default();
        let rope = Rope::<B>::new(&positions, [b, t], h, d, 10000.0, &dev);
        let qkv = Tensor::<B, 5>::from_data(TensorData::new(x.clone(), [b, t, 3, h, d]), &dev);
        let got = rope.apply_qkv(qkv).into_data().to_vec::<f32>().unwrap();
        let half = d / 2;
        for bi in 0..b {
            for ti in 0..t {
                let p = positions[bi * t + ti] as f32;
                for part in 0..3 {
                    for hi in 0..h {
                        let base = (((bi * t + ti) * 3 + part) * h + hi) * d;
                        for i in 0..d {
                            let want = if part == 2 {
                                x[base + i]
                            } else {
                                let j = i % half;
                                let a = p * (1.0 / 10000f32.powf(2.0 * j as f32 / d as f32));
                                let (x1, x2) = (x[base + j], x[base + j + half]);
                                if i < half {
                                    x1 * a.cos() - x2 * a.sin()
                                } else {
                                    x1 * a.sin() + x2 * a.cos()
                                }
                            };
                            assert!(
                                (got[base + i] - want).abs() < 1e-4,
                                "b{bi} t{ti} part{part} h{hi} i{i}: {} vs {want}",
                                got[base + i]
                            );
                        }
                    }
                }
            }
        }
    }
}
