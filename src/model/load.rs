//! Loading a model: what a model stage needs to know of its model before it chooses a backend
//! (the codec, the image size, where the weights come from), then the model itself on a device.
//!
//! A [`ModelPlan`] is either the built-in model (a config and, unless freshly initialized, its
//! weights) or a Qwen3-VL / InternVL3.5 checkpoint folder in the Hugging Face layout. Reading a
//! plan from a stored artifact and writing a trained model back are the stages' part
//! (`stages::model_io`): this module knows files and folders, not the store.

use super::any::HfShape;
use super::checkpoint::{CONFIG_FILE, model_from_bytes};
use super::{HfVlm, Model, ModelError, Vlm, VlmConfig};
use crate::data::Example;
use crate::data::codec::{Codec, HfCodec};
use crate::text::Tokenizer;
use crate::text::chat::{ChatTokenizer, Family};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, ModelError>;

/// The built-in model of shape `cfg` on `device`: the weights `init` when given, else a fresh
/// initialization drawn from `seed`.
pub fn native_model<B: Backend>(
    cfg: &VlmConfig,
    init: Option<&[u8]>,
    seed: u64,
    device: &B::Device,
) -> Result<Model<B>> {
    B::seed(device, seed);
    Ok(match init {
        Some(bytes) => model_from_bytes::<B>(cfg, bytes, device)?,
        None => Vlm::<B>::new(cfg, device),
    }
    .into())
}

/// Everything a model stage needs to know about its model before choosing a backend: the
/// codec, the image size and how to build the model on a device.
pub struct ModelPlan {
    pub codec: Codec,
    pub image_size: usize,
    pub source: PlanSource,
}

pub enum PlanSource {
    /// The built-in model: its config and weights (`None`: fresh, seeded initialization).
    Native {
        cfg: VlmConfig,
        weights: Option<Vec<u8>>,
    },
    /// A Qwen3-VL or InternVL3.5 checkpoint folder (a user's download, or a checkpoint
    /// artifact's folder).
    Hf {
        dir: PathBuf,
        family: Family,
        image_tokens: usize,
        /// `max_position_embeddings` of its config, if it names one.
        max_positions: Option<usize>,
    },
}

impl ModelPlan {
    pub fn native(cfg: VlmConfig, weights: Option<Vec<u8>>, tok: Tokenizer) -> Self {
        ModelPlan {
            codec: Codec::Task(tok),
            image_size: cfg.image_size,
            source: PlanSource::Native { cfg, weights },
        }
    }

    /// A checkpoint folder: its tokenizer and processor are read now, the weights by
    /// [`ModelPlan::load`].
    pub fn hf(dir: &Path, image_size: usize) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| ModelError::Folder {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        };
        if !dir.join(CONFIG_FILE).is_file() {
            return Err(err(
                &"no config.json (expected a Hugging Face checkpoint folder)",
            ));
        }
        if image_size == 0 {
            return Err(ModelError::Config(
                "model.image_size must be positive".into(),
            ));
        }
        let codec = HfCodec::new(ChatTokenizer::from_dir(dir).map_err(|e| err(&e))?)
            .map_err(|e| err(&e))?;
        let shape = HfShape::of_dir(dir, image_size).map_err(|e| err(&e))?;
        Ok(ModelPlan {
            codec: Codec::Hf(codec),
            image_size,
            source: PlanSource::Hf {
                dir: dir.to_path_buf(),
                family: shape.family,
                image_tokens: shape.image_tokens,
                max_positions: shape.max_positions,
            },
        })
    }

    /// The built-in model's config, if this is one.
    pub fn native_config(&self) -> Option<&VlmConfig> {
        match &self.source {
            PlanSource::Native { cfg, .. } => Some(cfg),
            PlanSource::Hf { .. } => None,
        }
    }

    /// The longest text (prompt + target) the model reads after the image.
    pub fn max_text(&self) -> usize {
        match &self.source {
            PlanSource::Native { cfg, .. } => cfg.max_seq_len - cfg.patches(),
            // The prompt holds the image tokens; without a stated limit, as far as memory goes.
            PlanSource::Hf { max_positions, .. } => {
                max_positions.map_or(usize::MAX / 2, |m| m.saturating_sub(1))
            }
        }
    }

    /// The model on `device` (a fresh built-in model is initialized from `seed`).
    pub fn load<B: Backend>(&self, seed: u64, device: &B::Device) -> Result<Model<B>> {
        match &self.source {
            PlanSource::Native { cfg, weights } => {
                native_model::<B>(cfg, weights.as_deref(), seed, device)
            }
            PlanSource::Hf { dir, .. } => Ok(Model::Hf(
                HfVlm::from_pretrained(dir, self.image_size, device).map_err(|e| {
                    ModelError::Folder {
                        dir: dir.clone(),
                        reason: e.to_string(),
                    }
                })?,
            )),
        }
    }

    /// Re-tokenizes `examples` for a checkpoint model: the prompt and target are read again
    /// from the data's text (`text` gives an example's prompt and target by id) with the
    /// checkpoint's tokenizer and chat prompt, and the spans found again in its tokens. The
    /// built-in model reads the data's own ids, and its examples are left as they are.
    pub fn retokenize<'t>(
        &self,
        examples: &mut [Example],
        text: &dyn Fn(&str) -> Option<(&'t str, &'t str)>,
    ) -> Result<()> {
        let (Codec::Hf(codec), PlanSource::Hf { image_tokens, .. }) = (&self.codec, &self.source)
        else {
            return Ok(());
        };
        for e in examples {
            let (prompt, target) =
                text(&e.id).ok_or_else(|| ModelError::Input(format!("{}: no text", e.id)))?;
            let t = codec
                .example(prompt, target, *image_tokens)
                .map_err(|err| ModelError::Input(format!("{}: {err}", e.id)))?;
            e.prompt = t.prompt;
            e.target = t.target;
            e.spans = t.spans;
        }
        Ok(())
    }
}

/// The file that marks a stored checkpoint as a Hugging Face checkpoint; it names the family
/// and the image size its stages used.
pub const HF_MARKER_FILE: &str = "asymm_model.json";

/// The content of [`HF_MARKER_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HfMarker {
    pub family: String,
    pub image_size: usize,
}

impl HfMarker {
    /// The marker of a checkpoint plan; `None` for the built-in model.
    pub fn of(plan: &ModelPlan) -> Option<HfMarker> {
        match &plan.source {
            PlanSource::Hf { family, .. } => Some(HfMarker {
                family: family.name().into(),
                image_size: plan.image_size,
            }),
            PlanSource::Native { .. } => None,
        }
    }
}

/// The files of a checkpoint folder that a fine-tuned copy keeps beside its new `config.json`
/// and weights: the tokenizer's, the processors', the chat template, the generation settings
/// (small text files; weights in any format, indexes and this toolkit's own files are left),
/// sorted by name.
pub fn side_files(dir: &Path) -> Result<Vec<String>> {
    let err = |e: std::io::Error| ModelError::Folder {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| is_side_file(n))
        .collect();
    names.sort();
    Ok(names)
}

fn is_side_file(name: &str) -> bool {
    let text = [".json", ".jinja", ".txt", ".model"]
        .iter()
        .any(|ext| name.ends_with(ext));
    text && name != CONFIG_FILE
        && name != HF_MARKER_FILE
        && name != "manifest.json"
        && !name.starts_with('.')
        && !name.contains(".safetensors")
        && !name.contains(".bin")
}
