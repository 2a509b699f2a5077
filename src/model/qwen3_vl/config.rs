//! `config.json` of a Qwen3-VL checkpoint (`model_type = "qwen3_vl"`), as transformers writes it.
//! Only the fields the model reads; unknown fields are ignored, missing ones take transformers'
//! defaults.

use crate::model::config::ConfigError;
use serde::Deserialize;

/// The whole checkpoint config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Qwen3VlConfig {
    #[serde(default)]
    pub model_type: String,
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    #[serde(default = "defaults::image_token_id")]
    pub image_token_id: u32,
    #[serde(default = "defaults::video_token_id")]
    pub video_token_id: u32,
    #[serde(default = "defaults::vision_start_token_id")]
    pub vision_start_token_id: u32,
    #[serde(default = "defaults::vision_end_token_id")]
    pub vision_end_token_id: u32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// The vision tower.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    #[serde(default = "defaults::vision_act")]
    pub hidden_act: String,
    pub intermediate_size: usize,
    pub num_heads: usize,
    #[serde(default = "defaults::in_channels")]
    pub in_channels: usize,
    pub patch_size: usize,
    #[serde(default = "defaults::merge")]
    pub spatial_merge_size: usize,
    #[serde(default = "defaults::temporal")]
    pub temporal_patch_size: usize,
    pub out_hidden_size: usize,
    pub num_position_embeddings: usize,
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
}

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

mod defaults {
    pub fn image_token_id() -> u32 {
        151_655
    }
    pub fn video_token_id() -> u32 {
        151_656
    }
    pub fn vision_start_token_id() -> u32 {
        151_652
    }
    pub fn vision_end_token_id() -> u32 {
        151_653
    }
    pub fn vision_act() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn text_act() -> String {
        "silu".into()
    }
    pub fn in_channels() -> usize {
        3
    }
    pub fn merge() -> usize {
        2
    }
    pub fn temporal() -> usize {
        2
    }
    pub fn rms_eps() -> f64 {
        1e-6
    }
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

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }
    /// θ of the vision tower's 2-D rotary frequencies (default 10,000).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .unwrap_or(10_000.0)
    }
    /// Values per patch row of `pixel_values`: channels × temporal × patch × patch.
    pub fn patch_features(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

impl Qwen3VlConfig {
    /// Checks what the model relies on, naming the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (v, t) = (&self.vision_config, &self.text_config);
        if self.model_type != "qwen3_vl" && !self.model_type.is_empty() {
            return Err(ConfigError::new(
                "model_type",
                format!("model_type `{}` is not qwen3_vl", self.model_type),
            ));
        }
        if v.num_heads == 0 || v.hidden_size % v.num_heads != 0 {
            return Err(ConfigError::new(
                "vision_config.num_heads",
                format!(
                    "vision hidden_size {} is not a multiple of num_heads {}",
                    v.hidden_size, v.num_heads
                ),
            ));
        }
        if v.head_dim() % 4 != 0 {
            return Err(ConfigError::new(
                "vision_config.hidden_size",
                format!("vision head dim {} is not a multiple of 4", v.head_dim()),
            ));
        }
        let side = (v.num_position_embeddings as f64).sqrt().round() as usize;
        if side * side != v.num_position_embeddings || side == 0 {
            return Err(ConfigError::new(
                "vision_config.num_position_embeddings",
                format!(
                    "num_position_embeddings {} is not a square",
                    v.num_position_embeddings
                ),
            ));
        }
        if let Some(&i) = v.deepstack_visual_indexes.iter().find(|&&i| i >= v.depth) {
            return Err(ConfigError::new(
                "vision_config.deepstack_visual_indexes",
                format!("deepstack layer {i} is beyond the vision depth {}", v.depth),
            ));
        }
        if v.deepstack_visual_indexes.len() > t.num_hidden_layers {
            return Err(ConfigError::new(
                "vision_config.deepstack_visual_indexes",
                format!(
                    "{} deepstack features but {} text layers",
                    v.deepstack_visual_indexes.len(),
                    t.num_hidden_layers
                ),
            ));
        }
        t.validate_heads()?;
        let half = t.head_dim() / 2;
        let section = t.mrope_section();
        if section.len() != 3 || section.iter().sum::<usize>() != half || t.head_dim() % 2 != 0 {
            return Err(ConfigError::new(
                "text_config.rope_parameters.mrope_section",
                format!(
                    "mrope_section {section:?} does not split the {half} rotary frequencies of head_dim {}",
                    t.head_dim()
                ),
            ));
        }
        for (what, act) in [("vision", &v.hidden_act), ("text", &t.hidden_act)] {
            if !matches!(act.as_str(), "gelu_pytorch_tanh" | "gelu" | "silu") {
                return Err(ConfigError::new(
                    format!("{what}_config.hidden_act"),
                    format!("{what} hidden_act `{act}` is not supported"),
                ));
            }
        }
        Ok(())
    }
}
