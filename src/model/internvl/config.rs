//! `config.json` of an InternVL checkpoint in transformers' layout (`model_type = "internvl"`,
//! the `-HF` checkpoints such as `OpenGVLab/InternVL3_5-2B-HF`). Only the fields the model reads;
//! unknown fields are ignored, missing ones take transformers' defaults.

use crate::model::config::ConfigError;
use crate::model::hf::config::TextConfig;
use serde::{Deserialize, Deserializer};

/// The whole checkpoint config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct InternVlConfig {
    #[serde(default)]
    pub model_type: String,
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    #[serde(default = "defaults::image_token_id")]
    pub image_token_id: u32,
    /// Image tokens per tile (the tower's patches after the pixel shuffle).
    #[serde(default)]
    pub image_seq_length: Option<usize>,
    #[serde(default = "defaults::downsample_ratio")]
    pub downsample_ratio: f64,
    #[serde(default = "defaults::gelu")]
    pub projector_hidden_act: String,
    #[serde(default = "defaults::last_layer")]
    pub vision_feature_layer: i64,
    #[serde(default = "defaults::strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "defaults::tied")]
    pub tie_word_embeddings: bool,
}

/// The vision tower (InternViT).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_qk_norm: bool,
    #[serde(default = "defaults::gelu")]
    pub hidden_act: String,
    /// `layer_norm` or `rms_norm`.
    #[serde(default = "defaults::layer_norm")]
    pub norm_type: String,
    #[serde(default = "defaults::eps")]
    pub layer_norm_eps: f64,
    #[serde(deserialize_with = "side", default = "defaults::image_size")]
    pub image_size: usize,
    #[serde(deserialize_with = "side", default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::channels")]
    pub num_channels: usize,
    #[serde(default = "defaults::yes")]
    pub use_absolute_position_embeddings: bool,
    /// Without mean pooling the tower ends with a layer norm.
    #[serde(default = "defaults::yes")]
    pub use_mean_pooling: bool,
}

/// A side given as one number or as `[height, width]` (which must be equal).
fn side<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Side {
        One(usize),
        Two([usize; 2]),
    }
    match Side::deserialize(d)? {
        Side::One(s) => Ok(s),
        Side::Two([h, w]) if h == w => Ok(h),
        Side::Two([h, w]) => Err(serde::de::Error::custom(format!(
            "non-square size {h}×{w} is not supported"
        ))),
    }
}

mod defaults {
    pub fn image_token_id() -> u32 {
        151_667
    }
    pub fn downsample_ratio() -> f64 {
        0.5
    }
    pub fn gelu() -> String {
        "gelu".into()
    }
    pub fn last_layer() -> i64 {
        -1
    }
    pub fn strategy() -> String {
        "default".into()
    }
    pub fn tied() -> bool {
        true
    }
    pub fn layer_norm() -> String {
        "layer_norm".into()
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn image_size() -> usize {
        448
    }
    pub fn patch_size() -> usize {
        14
    }
    pub fn channels() -> usize {
        3
    }
    pub fn yes() -> bool {
        true
    }
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }
    /// Patches along a side of a tile.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// The tower's heads, patches, norm and positions.
    fn validate(&self) -> Result<(), ConfigError> {
        let v = self;
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(ConfigError::new(
                "vision_config.num_attention_heads",
                format!(
                    "vision hidden_size {} is not a multiple of num_attention_heads {}",
                    v.hidden_size, v.num_attention_heads
                ),
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(ConfigError::new(
                "vision_config.image_size",
                format!(
                    "vision image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            ));
        }
        if !matches!(v.norm_type.as_str(), "layer_norm" | "rms_norm") {
            return Err(ConfigError::new(
                "vision_config.norm_type",
                format!("vision norm_type `{}` is not supported", v.norm_type),
            ));
        }
        if !v.use_absolute_position_embeddings {
            return Err(ConfigError::new(
                "vision_config.use_absolute_position_embeddings",
                "a vision tower without position embeddings is not supported",
            ));
        }
        Ok(())
    }
}

impl InternVlConfig {
    /// How many patches along a side the pixel shuffle folds into one token.
    pub fn shuffle(&self) -> usize {
        (1.0 / self.downsample_ratio).round() as usize
    }

    /// Image tokens per tile: the tower's patches, `shuffle()`² of them per token.
    pub fn tokens_per_tile(&self) -> usize {
        (self.vision_config.grid() / self.shuffle().max(1)).pow(2)
    }

    /// The language model's config as the shared Qwen3 decoder reads it: every position on one
    /// axis (plain RoPE) and transformers' default θ when the file names none.
    pub fn lm_config(&self) -> TextConfig {
        let mut t = self.text_config.clone();
        t.tie_word_embeddings = Some(self.tie_word_embeddings);
        if t.rope_theta.is_none()
            && t.rope_parameters
                .as_ref()
                .and_then(|r| r.rope_theta)
                .is_none()
            && t.rope_scaling.as_ref().and_then(|r| r.rope_theta).is_none()
        {
            t.rope_theta = Some(10_000.0);
        }
        t
    }

    /// Checks what the model relies on, naming the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.model_type != "internvl" && !self.model_type.is_empty() {
            return Err(ConfigError::new(
                "model_type",
                format!("model_type `{}` is not internvl", self.model_type),
            ));
        }
        self.vision_config.validate()?;
        self.validate_projector()?;
        self.validate_text()?;
        self.validate_activations()
    }

    /// The pixel shuffle and the image tokens it gives.
    fn validate_projector(&self) -> Result<(), ConfigError> {
        let v = &self.vision_config;
        let s = self.shuffle();
        if s == 0 || (1.0 / s as f64 - self.downsample_ratio).abs() > 1e-9 {
            return Err(ConfigError::new(
                "downsample_ratio",
                format!(
                    "downsample_ratio {} is not 1/n for a whole n",
                    self.downsample_ratio
                ),
            ));
        }
        if !v.grid().is_multiple_of(s) {
            return Err(ConfigError::new(
                "downsample_ratio",
                format!(
                    "{} patches a side do not fold by {s} (downsample_ratio {})",
                    v.grid(),
                    self.downsample_ratio
                ),
            ));
        }
        if let Some(n) = self
            .image_seq_length
            .filter(|&n| n != self.tokens_per_tile())
        {
            return Err(ConfigError::new(
                "image_seq_length",
                format!(
                    "image_seq_length {n}, but a tile gives {} tokens",
                    self.tokens_per_tile()
                ),
            ));
        }
        if self.vision_feature_layer != -1 {
            return Err(ConfigError::new(
                "vision_feature_layer",
                format!(
                    "vision_feature_layer {} is not supported (only -1, the last layer)",
                    self.vision_feature_layer
                ),
            ));
        }
        if self.vision_feature_select_strategy != "default" {
            return Err(ConfigError::new(
                "vision_feature_select_strategy",
                format!(
                    "vision_feature_select_strategy `{}` is not supported (only `default`)",
                    self.vision_feature_select_strategy
                ),
            ));
        }
        Ok(())
    }

    /// The language model: a Qwen3 decoder with default rotary positions.
    fn validate_text(&self) -> Result<(), ConfigError> {
        let t = &self.text_config;
        if let Some(m) = t.model_type.as_deref().filter(|m| *m != "qwen3") {
            return Err(ConfigError::new(
                "text_config.model_type",
                format!("text model_type `{m}` is not supported (only qwen3, InternVL3.5's)"),
            ));
        }
        t.validate_heads()?;
        if !t.head_dim().is_multiple_of(2) {
            return Err(ConfigError::new(
                "text_config.head_dim",
                format!("head_dim {} is odd", t.head_dim()),
            ));
        }
        let rope = t.rope_parameters.as_ref().or(t.rope_scaling.as_ref());
        if let Some(kind) = rope
            .and_then(|r| r.rope_type.as_deref())
            .filter(|k| *k != "default")
        {
            return Err(ConfigError::new(
                "text_config.rope_parameters.rope_type",
                format!("rope_type `{kind}` is not supported (only default)"),
            ));
        }
        Ok(())
    }

    /// The activations of the vision tower, the projector and the language model.
    fn validate_activations(&self) -> Result<(), ConfigError> {
        let (v, t) = (&self.vision_config, &self.text_config);
        for (what, act) in [
            ("vision", &v.hidden_act),
            ("projector", &self.projector_hidden_act),
            ("text", &t.hidden_act),
        ] {
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
