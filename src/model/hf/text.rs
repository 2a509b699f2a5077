//! The Qwen3 language model of Qwen3-VL: token embeddings, decoder layers (RMS norms, grouped-query
//! attention with a per-head RMS norm on queries and keys before the rotation, SwiGLU MLP), the
//! DeepStack features added at the image positions after the first layers, the final norm.

use super::config::TextConfig;
use super::{HfError, Result};
use super::{RmsNorm, act, rotate_half};
use crate::model::layers::{KvCache, linear3};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

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
        cache: &mut TextCache<B>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![KvCache::default(); self.layers.len()];
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

/// Keys and values [B, kv_heads, n, head_dim] of each layer (the built-in model's
/// [`KvCache`]) for the `len` positions seen so far.
#[derive(Clone, Debug, Default)]
pub struct TextCache<B: Backend> {
    pub layers: Vec<KvCache<B>>,
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

impl<B: Backend> DecoderLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 3>, Tensor<B, 3>),
        mask: &Tensor<B, 4>,
        cfg: &TextConfig,
        cache: &mut KvCache<B>,
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
        cache: &mut KvCache<B>,
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
        let (cos, sin) = (cos.clone().unsqueeze_dim(1), sin.clone().unsqueeze_dim(1));
        let (q, k) = (rotate_half(q, &cos, &sin), rotate_half(k, &cos, &sin));
        let (k, v) = cache.append(k, v);
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

/// Sequences decoded together: one cache over the batch (every row has seen as many positions)
/// and each row's next position.
pub struct DecodeBatch<B: Backend> {
    pub cache: TextCache<B>,
    pub next_pos: Vec<i64>,
}

impl<B: Backend> DecodeBatch<B> {
    /// The batch of rows `rows` of this one (a row may repeat).
    pub fn select(&self, rows: &[usize]) -> Self {
        DecodeBatch {
            cache: TextCache {
                layers: self
                    .cache
                    .layers
                    .iter()
                    .map(|kv| kv.select_rows(rows))
                    .collect(),
                len: self.cache.len,
                padding: if self.cache.padding.is_empty() {
                    Vec::new()
                } else {
                    rows.iter()
                        .map(|&r| self.cache.padding[r].clone())
                        .collect()
                },
            },
            next_pos: rows.iter().map(|&r| self.next_pos[r]).collect(),
        }
    }
}

/// A [len, d] tensor whose rows `slots[i]` are `feat[i]` and the rest zero.
pub(crate) fn scatter_rows<B: Backend>(
    feat: Tensor<B, 2>,
    slots: &[usize],
    len: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let n = slots.len();
    let mut onehot = vec![0.0f32; len * n];
    for (i, &s) in slots.iter().enumerate() {
        onehot[s * n + i] = 1.0;
    }
    Tensor::<B, 2>::from_data(TensorData::new(onehot, [len, n]), device).matmul(feat)
}

/// [1, len, 1]: 0 on the rows in `slots`, 1 elsewhere (broadcast over the width).
pub(crate) fn mask_rows<B: Backend>(
    slots: &[usize],
    len: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut keep = vec![1.0f32; len];
    for &s in slots {
        keep[s] = 0.0;
    }
    Tensor::<B, 1>::from_data(TensorData::new(keep, [len]), device).reshape([1, len, 1])
}

/// The positions of the image tokens that stand for `images` images: the first `images` runs
/// of `image_token`. Runs after those are text (a sampled `<|image_pad|>` is an ordinary token,
/// read through its embedding, as the KV-cached decoder reads it).
pub(crate) fn image_slots(image_token: u32, ids: &[u32], images: usize) -> Vec<usize> {
    let mut slots = Vec::new();
    let mut runs = 0;
    let mut i = 0;
    while i < ids.len() && runs < images {
        if ids[i] == image_token {
            let run = ids[i..].iter().take_while(|&&x| x == image_token).count();
            slots.extend(i..i + run);
            runs += 1;
            i += run;
        } else {
            i += 1;
        }
    }
    slots
}

/// Token rows packed into one batch for the language model: shorter rows padded on the left
/// (keys no query sees), each row's positions, and the flat slots (`row · len + t`) of the image
/// tokens that stand for the rows' images, in order.
pub struct PackedRows {
    /// [B · len] ids, left-padded.
    pub ids: Vec<i64>,
    pub rows: usize,
    pub len: usize,
    pub positions: Vec<[Vec<i64>; 3]>,
    /// Each row's position after its last token.
    pub next_pos: Vec<i64>,
    /// Per row, which of its `len` positions are padding; empty when no row is padded.
    pub padding: Vec<Vec<bool>>,
    pub slots: Vec<usize>,
}

impl PackedRows {
    /// Packs `rows`; row r has `images[r] = (n, features)`: n images (the first n runs of
    /// `image_token` stand for them) giving `features` feature rows in all, and its positions
    /// from `positions(r, ids)` (three axes; equal axes for 1-D RoPE).
    pub fn new(
        rows: &[&[u32]],
        vocab: usize,
        image_token: u32,
        images: &[(usize, usize)],
        mut positions: impl FnMut(usize, &[u32]) -> Result<[Vec<i64>; 3]>,
    ) -> Result<PackedRows> {
        let b = rows.len();
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if b == 0 || len == 0 || images.len() != b || rows.iter().any(|r| r.is_empty()) {
            return Err(HfError::Input(format!(
                "{b} sequences (the longest {len} tokens) with {} image lists",
                images.len()
            )));
        }
        if let Some(&bad) = rows
            .iter()
            .flat_map(|r| r.iter())
            .find(|&&x| x as usize >= vocab)
        {
            return Err(HfError::Input(format!(
                "token id {bad} ≥ vocab_size {vocab}"
            )));
        }
        // Left padding: any id but the image token's; its keys are masked.
        let pad_id = if image_token == 0 { 1 } else { 0 };
        let mut packed = PackedRows {
            ids: Vec::with_capacity(b * len),
            rows: b,
            len,
            positions: Vec::with_capacity(b),
            next_pos: Vec::with_capacity(b),
            padding: Vec::with_capacity(b),
            slots: Vec::new(),
        };
        for (r, (ids, &(n_images, features))) in rows.iter().zip(images).enumerate() {
            let pad = len - ids.len();
            let mut pos = positions(r, ids)?;
            packed
                .next_pos
                .push(pos.iter().flatten().copied().max().unwrap_or(-1) + 1);
            for axis in &mut pos {
                axis.splice(0..0, std::iter::repeat_n(0, pad));
            }
            packed.positions.push(pos);
            let row_slots = image_slots(image_token, ids, n_images);
            if row_slots.len() != features {
                return Err(HfError::Input(format!(
                    "{} image tokens in the ids but the images give {features} features",
                    row_slots.len()
                )));
            }
            if n_images == 0 && ids.contains(&image_token) {
                return Err(HfError::Input(
                    "image tokens in the ids but no image".into(),
                ));
            }
            packed
                .slots
                .extend(row_slots.into_iter().map(|s| r * len + pad + s));
            packed.padding.push((0..len).map(|j| j < pad).collect());
            packed.ids.extend(std::iter::repeat_n(pad_id, pad));
            packed.ids.extend(ids.iter().map(|&x| i64::from(x)));
        }
        if packed.padding.iter().all(|p| p.first() != Some(&true)) {
            packed.padding.clear();
        }
        Ok(packed)
    }

    /// Positions counting up on every axis (1-D RoPE).
    pub fn sequential(ids: &[u32]) -> [Vec<i64>; 3] {
        let p: Vec<i64> = (0..ids.len() as i64).collect();
        [p.clone(), p.clone(), p]
    }
}

impl<B: Backend> TextModel<B> {
    /// Runs `packed` into a fresh cache, the rows of `image_embeds` [slots, d] (and of each
    /// DeepStack feature, added after layer i) placed at its image slots: the logits
    /// [B, len, vocab] and the state to decode on from.
    pub fn prefill(
        &self,
        packed: &PackedRows,
        image_embeds: Option<Tensor<B, 2>>,
        deepstack: Vec<Tensor<B, 2>>,
        lm_head: Option<&Linear<B>>,
        device: &B::Device,
    ) -> (Tensor<B, 3>, DecodeBatch<B>) {
        let (b, len, d) = (packed.rows, packed.len, self.cfg.hidden_size);
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(packed.ids.clone(), [b, len]), device);
        let mut x = self.embed_tokens.forward(ids);
        let place = |feat: Tensor<B, 2>| {
            scatter_rows(feat, &packed.slots, b * len, device).reshape([b, len, d])
        };
        let mut extra = Vec::new();
        if let Some(embeds) = image_embeds {
            let keep = mask_rows::<B>(&packed.slots, b * len, device).reshape([b, len, 1]);
            x = x * keep + place(embeds);
            extra = deepstack.into_iter().map(place).collect();
        }
        let rope = mrope_tables::<B>(&self.cfg, &packed.positions, device);
        let mut cache = TextCache {
            padding: packed.padding.clone(),
            ..TextCache::default()
        };
        let h = self.forward(x, &rope, &extra, &mut cache);
        (
            self.logits(h, lm_head),
            DecodeBatch {
                cache,
                next_pos: packed.next_pos.clone(),
            },
        )
    }

    /// Feeds one token per row of a batch after its cached positions (text positions: the same
    /// on every axis): the next logits [B, vocab].
    pub fn step_batch(
        &self,
        tokens: &[u32],
        state: &mut DecodeBatch<B>,
        lm_head: Option<&Linear<B>>,
    ) -> Tensor<B, 2> {
        let device = self.embed_tokens.weight.val().device();
        let b = tokens.len();
        let positions: Vec<[Vec<i64>; 3]> = state
            .next_pos
            .iter()
            .map(|&p| [vec![p], vec![p], vec![p]])
            .collect();
        for p in &mut state.next_pos {
            *p += 1;
        }
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
                [b, 1],
            ),
            &device,
        );
        let x = self.embed_tokens.forward(ids);
        let rope = mrope_tables::<B>(&self.cfg, &positions, &device);
        let h = self.forward(x, &rope, &[], &mut state.cache);
        let v = self.cfg.vocab_size;
        self.logits(h, lm_head).reshape([b, v])
    }

    /// Logits [B, T, vocab] of hidden states [B, T, d]: by `lm_head`, or by the token
    /// embeddings when the head is tied.
    pub fn logits(&self, h: Tensor<B, 3>, lm_head: Option<&Linear<B>>) -> Tensor<B, 3> {
        let [b, l, d] = h.dims();
        let rows = h.reshape([b * l, d]);
        let logits = match lm_head {
            Some(head) => crate::model::layers::linear2(head, rows),
            None => rows.matmul(self.embed_tokens.weight.val().transpose()),
        };
        let v = logits.dims()[1];
        logits.reshape([b, l, v])
    }
}

/// Greedy decoding from the first logits [1, vocab]: at most `max_new` tokens, ending after the
/// first one in `stop`; `step` feeds a token and gives the next logits.
pub fn greedy<B: Backend>(
    first: Tensor<B, 2>,
    max_new: usize,
    stop: &[u32],
    mut step: impl FnMut(u32) -> Tensor<B, 2>,
) -> Result<Vec<u32>> {
    let argmax = |l: Tensor<B, 2>| -> Result<u32> {
        let v = crate::model::host_f32(l)
            .map_err(|e| HfError::Input(format!("reading logits: {e}")))?;
        Ok(crate::model::sampling::argmax(&v))
    };
    let mut out = Vec::new();
    if max_new == 0 {
        return Ok(out);
    }
    let mut tok = argmax(first)?;
    loop {
        out.push(tok);
        if stop.contains(&tok) || out.len() >= max_new {
            return Ok(out);
        }
        tok = argmax(step(tok))?;
    }
}

/// A head of the vocabulary's width over the hidden states (to be loaded).
pub fn untied_head<B: Backend>(cfg: &TextConfig, device: &B::Device) -> Linear<B> {
    LinearConfig::new(cfg.hidden_size, cfg.vocab_size)
        .with_bias(false)
        .init(device)
}

/// Whether `head`'s weights equal the token embeddings, value for value (a head stored beside
/// tied embeddings).
pub fn head_is_embeddings<B: Backend>(head: &Linear<B>, text: &TextModel<B>) -> Result<bool> {
    let read = |t: Tensor<B, 2>| {
        crate::model::host_f32(t).map_err(|e| HfError::Input(format!("reading weights: {e}")))
    };
    // burn's linear weight is [in, out]; the embedding table [vocab, hidden].
    let w = read(head.weight.val().transpose())?;
    let e = read(text.embed_tokens.weight.val())?;
    Ok(w == e)
}
