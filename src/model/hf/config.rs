//! The language model's part of a checkpoint's `config.json` (`text_config`, or `llm_config`
//! of InternVL3.5), as transformers writes it; only the fields the model reads.

use crate::model::config::ConfigError;
use serde::Deserialize;

/// The language model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TextConfig {
    /// `qwen3` (InternVL3.5's language model); Qwen3-VL's writes `qwen3_vl_text`.
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "defaults::text_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub attention_bias: bool,
    /// transformers ≥ 5 writes `rope_parameters`; 4.x wrote `rope_scaling` plus `rope_theta`.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// The longest sequence the model was trained for (prompt, image tokens and answer).
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// Sliding-window attention (not supported: every layer attends to every earlier token).
    #[serde(default)]
    pub use_sliding_window: bool,
}

/// Rotary settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct RopeParameters {
    /// transformers 4.x wrote `type`.
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
    #[serde(default)]
    pub mrope_interleaved: Option<bool>,
}

impl TextConfig {
    /// Grouped-query attention needs whole groups of query heads per key/value head.
    /// (And that every layer attends to every earlier token.)
    pub fn validate_heads(&self) -> Result<(), ConfigError> {
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if h == 0 || kv == 0 || h % kv != 0 {
            return Err(ConfigError::new(
                "text_config.num_attention_heads",
                format!("num_attention_heads {h} is not a multiple of num_key_value_heads {kv}"),
            ));
        }
        if self.use_sliding_window {
            return Err(ConfigError::new(
                "text_config.use_sliding_window",
                "sliding-window attention (use_sliding_window) is not supported",
            ));
        }
        Ok(())
    }

    /// The per-head width (transformers' Qwen3 default when the config names none: 128).
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(128)
    }
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    fn rope(&self) -> Option<&RopeParameters> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }
    /// θ of the rotary frequencies (transformers' Qwen3-VL text default: 5,000,000).
    pub fn rope_theta(&self) -> f64 {
        self.rope()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(5_000_000.0)
    }
    /// How many frequencies rotate with the temporal, height and width positions.
    pub fn mrope_section(&self) -> Vec<usize> {
        self.rope()
            .and_then(|r| r.mrope_section.clone())
            .unwrap_or_else(|| vec![24, 20, 20])
    }
}

mod defaults {
    pub fn text_act() -> String {
        "silu".into()
    }
    pub fn rms_eps() -> f64 {
        1e-6
    }
}
