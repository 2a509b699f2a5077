//! What a checkpoint model needs in device memory to train, from its `config.json` alone.
//!
//! - Parameters: counted from the config by the module tree's own shapes (a test checks the
//!   counts against the loaded modules).
//! - Static memory: weights, gradients and AdamW's two moments, each a value per parameter in the
//!   backend's float type (burn keeps the moments in the parameters' type); GRPO adds a frozen
//!   reference model when the KL term is on.
//! - Activations: an estimate of what eager backpropagation keeps for one sequence, from the
//!   shapes of the tensors the backward pass reads: each decoder layer's linear-map inputs and
//!   attention probabilities, the vision tower's likewise, and the logits with their
//!   log-softmax over the whole vocabulary. Not a measurement: allocator slack, temporaries of
//!   the forward pass and the backend's own buffers come on top.

use super::hf::config::TextConfig;
use super::internvl::InternVlConfig;
use super::qwen3_vl::Qwen3VlConfig;
use serde::Serialize;

/// Parameters by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCount {
    pub vision: u64,
    /// The merger / projector between the tower and the language model (DeepStack mergers
    /// included).
    pub projector: u64,
    /// The language model's embeddings, layers and final norm.
    pub language: u64,
    /// An untied output head (0 when tied to the embeddings).
    pub head: u64,
}

impl ParamCount {
    pub fn total(&self) -> u64 {
        self.vision + self.projector + self.language + self.head
    }
}

fn u(x: usize) -> u64 {
    x as u64
}

/// A linear map's parameters.
fn linear(i: usize, o: usize, bias: bool) -> u64 {
    u(i * o + if bias { o } else { 0 })
}

/// The Qwen3 decoder's parameters (embeddings, layers, final norm).
fn qwen3_text(t: &TextConfig) -> u64 {
    let (d, hd, m) = (t.hidden_size, t.head_dim(), t.intermediate_size);
    let (h, kv) = (t.num_attention_heads, t.kv_heads());
    let b = t.attention_bias;
    let layer = linear(d, h * hd, b)
        + 2 * linear(d, kv * hd, b)
        + linear(h * hd, d, b)
        + u(2 * hd)
        + 3 * linear(d, m, false)
        + u(2 * d);
    u(t.vocab_size * d) + u(t.num_hidden_layers) * layer + u(d)
}

/// Qwen3-VL's parameters.
pub fn count_qwen3_vl(cfg: &Qwen3VlConfig) -> ParamCount {
    let (v, t) = (&cfg.vision_config, &cfg.text_config);
    let (d, m) = (v.hidden_size, v.intermediate_size);
    let merged = d * v.spatial_merge_size * v.spatial_merge_size;
    let block = u(4 * d)
        + linear(d, 3 * d, true)
        + linear(d, d, true)
        + linear(d, m, true)
        + linear(m, d, true);
    let merger = |norm: usize| {
        u(2 * norm) + linear(merged, merged, true) + linear(merged, v.out_hidden_size, true)
    };
    ParamCount {
        vision: u(d * v.patch_features() + d)
            + u(v.num_position_embeddings * d)
            + u(v.depth) * block,
        projector: merger(d) + u(v.deepstack_visual_indexes.len()) * merger(merged),
        language: qwen3_text(t),
        head: if cfg.tie_word_embeddings {
            0
        } else {
            u(t.vocab_size * t.hidden_size)
        },
    }
}

/// InternVL's parameters.
pub fn count_internvl(cfg: &InternVlConfig) -> ParamCount {
    let (v, t) = (&cfg.vision_config, cfg.lm_config());
    let (d, m, p, c) = (
        v.hidden_size,
        v.intermediate_size,
        v.patch_size,
        v.num_channels,
    );
    let norm = if v.norm_type == "rms_norm" { d } else { 2 * d };
    let layer = 3 * linear(d, d, v.attention_bias)
        + linear(d, d, true)
        + if v.use_qk_norm { u(2 * d) } else { 0 }
        + linear(d, m, true)
        + linear(m, d, true)
        + u(2 * norm + 2 * d);
    let folded = d * cfg.shuffle().pow(2);
    let final_norm = if v.use_mean_pooling { 0 } else { u(2 * d) };
    ParamCount {
        vision: u(d)
            + u(d * c * p * p + d)
            + u((v.grid().pow(2) + 1) * d)
            + u(v.num_hidden_layers) * layer
            + final_norm,
        projector: u(2 * folded)
            + linear(folded, t.hidden_size, true)
            + linear(t.hidden_size, t.hidden_size, true),
        language: qwen3_text(&t),
        head: if cfg.tie_word_embeddings {
            0
        } else {
            u(t.vocab_size * t.hidden_size)
        },
    }
}

/// The vision tower's shape as the activation estimate needs it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TowerShape {
    pub layers: usize,
    pub width: usize,
    pub mlp: usize,
    pub heads: usize,
    /// Tokens one attention sees (an image's patches, or a tile's with the class token).
    pub tokens_per_attention: usize,
    /// Attention groups per puzzle image (tiles; 1 for Qwen3-VL).
    pub groups: usize,
}

/// Memory of one training setting, in bytes.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub params: ParamCount,
    pub bytes_per_value: u64,
    pub weights: u64,
    pub gradients: u64,
    pub adamw_moments: u64,
    /// GRPO's frozen reference model (KL term).
    pub reference: u64,
    /// Activations kept for backward per sequence of `tokens` tokens (image tokens included).
    pub tokens: usize,
    pub activations_per_sequence: u64,
    /// Of which the logits and their log-softmax over the vocabulary.
    pub logits_per_sequence: u64,
    /// The KV cache of one sampled sequence of `tokens` tokens.
    pub kv_cache_per_sequence: u64,
}

impl MemoryEstimate {
    /// Weights, gradients and moments: what SFT holds whatever the batch.
    pub fn sft_static(&self) -> u64 {
        self.weights + self.gradients + self.adamw_moments
    }

    /// SFT's static memory plus the reference model.
    pub fn grpo_static(&self) -> u64 {
        self.sft_static() + self.reference
    }

    /// Sequences of `tokens` tokens per micro-batch that fit in `budget` bytes after `fixed`.
    pub fn sequences_within(&self, budget: u64, fixed: u64) -> u64 {
        budget.saturating_sub(fixed) / self.activations_per_sequence.max(1)
    }
}

/// The estimate for a model of `params` with language model `t` and vision tower `tower`, a
/// sequence of `tokens` tokens of which `image_tokens` come from one puzzle image, values of
/// `bytes_per_value` bytes.
pub fn estimate(
    params: ParamCount,
    t: &TextConfig,
    tower: TowerShape,
    tokens: usize,
    bytes_per_value: u64,
) -> MemoryEstimate {
    let (d, m, hd) = (u(t.hidden_size), u(t.intermediate_size), u(t.head_dim()));
    let (h, kv, n) = (u(t.num_attention_heads), u(t.kv_heads()), u(tokens));
    // Per decoder layer: the inputs of q/k/v (normed x), of o (context), of the MLP (normed
    // x), of down (gate·up), gate and up themselves, the rotated q and k, v, and the
    // attention probabilities.
    let layer = n * (3 * d + h * hd + 3 * m + (h + 2 * kv) * hd) + h * n * n;
    let text = u(t.num_hidden_layers) * layer;
    let (vd, vm, vh, vt) = (
        u(tower.width),
        u(tower.mlp),
        u(tower.heads),
        u(tower.tokens_per_attention),
    );
    let vision = u(tower.groups) * u(tower.layers) * (vt * (6 * vd + 2 * vm) + vh * vt * vt);
    let logits = 2 * n * u(t.vocab_size);
    let b = bytes_per_value;
    let total = params.total();
    MemoryEstimate {
        params,
        bytes_per_value: b,
        weights: total * b,
        gradients: total * b,
        adamw_moments: 2 * total * b,
        reference: total * b,
        tokens,
        activations_per_sequence: (text + vision + logits) * b,
        logits_per_sequence: logits * b,
        kv_cache_per_sequence: 2 * u(t.num_hidden_layers) * kv * hd * n * b,
    }
}
