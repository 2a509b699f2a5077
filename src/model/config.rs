//! Model configuration with size presets: `tiny` (trains on 2 CPU cores in minutes), `small`
//! (tens of millions of parameters, for one GPU), or any free-form size.

/// A model config that cannot be built: the key and the constraint it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The config key, dotted for nested sections (`vision_config.num_heads`).
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The first of `checks` (holds, key, constraint) that fails.
    pub fn first_failed(checks: &[(bool, &str, &str)]) -> Result<(), ConfigError> {
        match checks.iter().find(|(ok, _, _)| !ok) {
            Some((_, field, reason)) => Err(ConfigError::new(*field, *reason)),
            None => Ok(()),
        }
    }
}

/// The model's shape. Serialized as `config.json` in every checkpoint.
#[derive(burn::config::Config, Debug, PartialEq)]
pub struct VlmConfig {
    /// Input images are resized to `image_size`×`image_size` grayscale.
    pub image_size: usize,
    pub patch_size: usize,
    pub vit_dim: usize,
    pub vit_layers: usize,
    pub vit_heads: usize,
    /// Channels of an optional convolutional stem (two stride-2 3×3 convolutions, `conv_stem`
    /// then `2·conv_stem` channels) before the patch embedding; 0 = plain linear patches.
    #[config(default = 0)]
    pub conv_stem: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Hidden width of the gated MLP, as a multiple of `d_model`.
    #[config(default = 3)]
    pub mlp_ratio: usize,
    pub vocab_size: usize,
    /// Longest sequence (image tokens + prompt + answer).
    pub max_seq_len: usize,
    #[config(default = 10000.0)]
    pub rope_theta: f32,
}

impl VlmConfig {
    /// A named preset for a vocabulary size.
    pub fn preset(name: &str, vocab_size: usize) -> Option<VlmConfig> {
        match name {
            "tiny" => Some(VlmConfig {
                image_size: 128,
                patch_size: 16,
                vit_dim: 96,
                vit_layers: 2,
                vit_heads: 4,
                conv_stem: 16,
                d_model: 128,
                layers: 4,
                heads: 4,
                mlp_ratio: 3,
                vocab_size,
                max_seq_len: 1024,
                rope_theta: 10000.0,
            }),
            "small" => Some(VlmConfig {
                image_size: 224,
                patch_size: 16,
                vit_dim: 384,
                vit_layers: 6,
                vit_heads: 6,
                conv_stem: 32,
                d_model: 512,
                layers: 8,
                heads: 8,
                mlp_ratio: 3,
                vocab_size,
                max_seq_len: 4608,
                rope_theta: 10000.0,
            }),
            _ => None,
        }
    }

    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Checks divisibility constraints; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::first_failed(&[
            (
                self.patch_size > 0 && self.image_size.is_multiple_of(self.patch_size),
                "image_size",
                "must be a multiple of patch_size",
            ),
            (
                self.vit_heads > 0 && self.vit_dim.is_multiple_of(self.vit_heads),
                "vit_dim",
                "must be a multiple of vit_heads",
            ),
            (
                self.heads > 0 && self.d_model.is_multiple_of(self.heads),
                "d_model",
                "must be a multiple of heads",
            ),
            (
                (self.d_model / self.heads.max(1)).is_multiple_of(2),
                "d_model",
                "d_model / heads must be even (rotary positions)",
            ),
            (
                self.conv_stem == 0 || self.patch_size.is_multiple_of(4),
                "patch_size",
                "must be a multiple of 4 with a conv_stem",
            ),
            (self.vocab_size > 0, "vocab_size", "must be positive"),
            (
                self.max_seq_len > self.patches(),
                "max_seq_len",
                "must exceed the number of image patches",
            ),
        ])
    }

    /// Inputs of the linear patch embedding: raw pixels, or stem features of a patch.
    pub fn patch_features(&self) -> usize {
        match self.conv_stem {
            0 => self.patch_size * self.patch_size,
            c => 2 * c * (self.patch_size / 4).pow(2),
        }
    }

    /// Parameter count (weights and biases).
    pub fn parameters(&self) -> usize {
        let c = self.conv_stem;
        let stem = if c == 0 {
            0
        } else {
            9 * c + c + 9 * c * 2 * c + 2 * c
        };
        let p = self.patch_features();
        let block = |d: usize| 4 * d * d + 4 * d + 3 * d * d * self.mlp_ratio + 2 * d;
        stem + p
            + p * self.vit_dim
            + self.vit_dim
            + self.patches() * self.vit_dim
            + self.vit_layers * block(self.vit_dim)
            + self.vit_dim
            + self.vit_dim * self.d_model
            + self.d_model
            + self.vocab_size * self.d_model
            + self.layers * block(self.d_model)
            + self.d_model
            + self.d_model * self.vocab_size
            + self.vocab_size
    }
}

/// A model small enough for exact checks on the CPU (tests only).
#[cfg(test)]
pub(crate) fn small_config() -> VlmConfig {
    VlmConfig {
        image_size: 32,
        patch_size: 8,
        vit_dim: 32,
        vit_layers: 1,
        vit_heads: 2,
        conv_stem: 4,
        d_model: 32,
        layers: 2,
        heads: 4,
        mlp_ratio: 2,
        vocab_size: 40,
        max_seq_len: 128,
        rope_theta: 10000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_matches_the_module() {
        use burn::module::Module;
        for c in [0, 8] {
            let cfg = VlmConfig {
                conv_stem: c,
                ..VlmConfig::preset("tiny", 50).unwrap()
            };
            let m = crate::model::Vlm::<crate::model::Cpu>::new(&cfg, &Default::default());
            assert_eq!(m.num_params(), cfg.parameters(), "conv_stem {c}");
        }
    }

    #[test]
    fn presets_are_valid_and_sized() {
        let t = VlmConfig::preset("tiny", 160).unwrap();
        t.validate().unwrap();
        assert!(t.parameters() < 2_000_000, "{}", t.parameters());
        let s = VlmConfig::preset("small", 160).unwrap();
        s.validate().unwrap();
        assert!(
            (10_000_000..100_000_000).contains(&s.parameters()),
            "{}",
            s.parameters()
        );
        let mut bad = t.clone();
        bad.heads = 3;
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "d_model");
        assert!(e.to_string().contains("multiple of heads"), "{e}");
        bad.heads = t.heads;
        bad.max_seq_len = bad.patches();
        assert_eq!(bad.validate().unwrap_err().field, "max_seq_len");
    }
}
