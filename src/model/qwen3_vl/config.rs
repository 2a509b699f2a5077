//! `config.json` of a Qwen3-VL checkpoint (`model_type = "qwen3_vl"`), as transformers writes it.
//! Only the fields the model reads; unknown fields are ignored, missing ones take transformers'
//! defaults.

use crate::model::config::ConfigError;
use crate::model::hf::config::{RopeParameters, TextConfig};
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
    pub fn in_channels() -> usize {
        3
    }
    pub fn merge() -> usize {
        2
    }
    pub fn temporal() -> usize {
        2
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
