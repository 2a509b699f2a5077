//! Shared plumbing of the model stages: reading examples (images decoded and resized, token ids,
//! spans) from an `sft_targets` artifact, a model plan ([`ModelPlan`]) from a checkpoint
//! artifact or a stage's `model` option, and writing checkpoint artifacts.

use super::{StageError, bail, ensure, optional_id};
use crate::clip::{Clip, ClipConfig};
use crate::dag::{InputSpec, RunCtx};
use crate::data::Codec;
use crate::data::{Example, image_ink};
use crate::model::checkpoint::{
    CONFIG_FILE, WEIGHTS_FILE, check_tokenizer, config_from_json, config_to_json, load_weights,
};
use crate::model::load::{HF_MARKER_FILE, HfMarker, ModelPlan, PlanSource, side_files};
use crate::model::{Checkpoint, VisionLanguageModel};
use crate::model::{Model, VlmConfig};
use crate::store::Store;
use crate::table::Table;
use crate::text::Tokenizer;
use crate::text::chat::Family;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The tokenizer file stored in `sft_targets` and checkpoint artifacts.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Artifact kind of checkpoints.
pub const CHECKPOINT_KIND: &str = "checkpoint";

/// The tokenizer stored with a token-bearing artifact.
pub fn read_tokenizer(store: &Store, id: &str) -> Result<Tokenizer, StageError> {
    let bytes = store.read_file(id, TOKENIZER_FILE)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| StageError::Invalid("tokenizer.json is not UTF-8".into()))?;
    Tokenizer::from_json(&text).map_err(|e| StageError::Invalid(e.to_string()))
}

/// Examples of `split` (all splits when `None`), at most `limit` (0 = all), images at `image_size`.
pub fn read_examples(
    store: &Store,
    id: &str,
    split: Option<&str>,
    image_size: usize,
    limit: usize,
) -> Result<Vec<Example>, StageError> {
    read_examples_where(store, id, image_size, limit, &|s: &str, _: &str| {
        split.is_none_or(|x| x == s)
    })
}

/// The item ids of `split`, in data order.
pub fn split_ids(store: &Store, id: &str, split: &str) -> Result<Vec<String>, StageError> {
    let t = Table::read(store, id, "sft_targets")?;
    let ids = t.required_strings("id")?;
    let splits = t.required_strings("split")?;
    Ok(ids
        .into_iter()
        .zip(splits)
        .filter(|(_, s)| s == split)
        .map(|(i, _)| i)
        .collect())
}

/// The examples whose (split, id) `keep` accepts, at most `limit` (0 = all), in data order;
/// only their images are decoded.
pub fn read_examples_where(
    store: &Store,
    id: &str,
    image_size: usize,
    limit: usize,
    keep: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<Example>, StageError> {
    let t = Table::read(store, id, "sft_targets")?;
    let ids = t.required_strings("id")?;
    let splits = t.required_strings("split")?;
    let tasks = t.required_strings("task")?;
    let percs = t.required_strings("perception")?;
    let images = t.image_bytes("image")?;
    let prompts = t.int_lists("prompt_ids")?;
    let targets = t.int_lists("target_ids")?;
    let names = t.str_lists("span_names")?;
    let starts = t.int_lists("span_starts")?;
    let ends = t.int_lists("span_ends")?;
    let mut out = Vec::new();
    for i in 0..t.rows() {
        if !keep(&splits[i], &ids[i]) {
            continue;
        }
        if limit > 0 && out.len() >= limit {
            break;
        }
        let to_u32 = |v: &[i32]| -> Result<Vec<u32>, StageError> {
            v.iter()
                .map(|&x| {
                    u32::try_from(x)
                        .map_err(|_| StageError::Invalid(format!("{}: negative token id", ids[i])))
                })
                .collect()
        };
        let target = to_u32(&targets[i])?;
        let mut spans = Vec::new();
        for ((n, &s), &e) in names[i].iter().zip(&starts[i]).zip(&ends[i]) {
            if s < 0 || e < s || e as usize > target.len() {
                return Err(StageError::Invalid(format!(
                    "{}: span `{n}` out of range",
                    ids[i]
                )));
            }
            spans.push((n.clone(), s as usize, e as usize));
        }
        let image = image_ink(images.value(i), image_size).ok_or_else(|| {
            StageError::Invalid(format!("{}: image is not a grayscale PNG", ids[i]))
        })?;
        out.push(Example {
            id: ids[i].clone(),
            task: tasks[i].clone(),
            perception: percs[i].clone(),
            image,
            prompt: to_u32(&prompts[i])?,
            target,
            spans,
        });
    }
    Ok(out)
}

/// A checkpoint's config, weights and tokenizer; the tokenizer must match `data_tok` if given.
pub fn read_checkpoint(
    store: &Store,
    id: &str,
    data_tok: Option<&Tokenizer>,
) -> Result<(VlmConfig, Vec<u8>, Tokenizer), StageError> {
    let m = store.manifest(id)?;
    if m.kind != CHECKPOINT_KIND {
        return Err(StageError::Invalid(format!(
            "artifact {id} is a `{}`, not a checkpoint",
            m.kind
        )));
    }
    let cfg_text = String::from_utf8(store.read_file(id, CONFIG_FILE)?)
        .map_err(|_| StageError::Invalid("config.json is not UTF-8".into()))?;
    let cfg = config_from_json(&cfg_text)?;
    cfg.validate()
        .map_err(|e| StageError::Invalid(format!("checkpoint config: {e}")))?;
    let tok = read_tokenizer(store, id)?;
    if let Some(d) = data_tok {
        check_tokenizer(&tok, d)?;
    }
    if tok.vocab_size() != cfg.vocab_size {
        return Err(StageError::Invalid(format!(
            "checkpoint vocab_size {} does not match its tokenizer ({})",
            cfg.vocab_size,
            tok.vocab_size()
        )));
    }
    Ok((cfg, store.read_file(id, WEIGHTS_FILE)?, tok))
}

/// Writes a checkpoint artifact.
pub fn write_checkpoint(
    ctx: &RunCtx,
    cfg: &VlmConfig,
    weights: &[u8],
    tok: &Tokenizer,
) -> Result<String, StageError> {
    let mut w = ctx.store.writer(CHECKPOINT_KIND, 1)?;
    w.add_bytes(WEIGHTS_FILE, weights)?;
    w.add_bytes(CONFIG_FILE, config_to_json(cfg).as_bytes())?;
    w.add_bytes(TOKENIZER_FILE, tok.to_json().as_bytes())?;
    Ok(ctx.commit(w, None)?)
}

/// The kind of a dual-encoder artifact (clip-train): weights, config and tokenizer.
pub const CLIP_KIND: &str = "clip_checkpoint";

/// Writes a dual encoder with its config and the data's tokenizer.
pub fn write_clip(
    ctx: &RunCtx,
    cfg: &ClipConfig,
    weights: &[u8],
    tok: &Tokenizer,
) -> Result<String, StageError> {
    let mut w = ctx.store.writer(CLIP_KIND, 1)?;
    w.add_bytes(WEIGHTS_FILE, weights)?;
    let json = serde_json::to_string_pretty(cfg).map_err(|e| StageError::Invalid(e.to_string()))?;
    w.add_bytes(CONFIG_FILE, json.as_bytes())?;
    w.add_bytes(TOKENIZER_FILE, tok.to_json().as_bytes())?;
    Ok(ctx.commit(w, None)?)
}

/// A dual encoder written by clip-train, with its config; its tokenizer must be the data's.
pub fn read_clip<B: Backend>(
    store: &Store,
    id: &str,
    data_tok: &Tokenizer,
    device: &B::Device,
) -> Result<(ClipConfig, Clip<B>), StageError> {
    let m = store.manifest(id)?;
    if m.kind != CLIP_KIND {
        return Err(StageError::Invalid(format!(
            "artifact {id} is a `{}`, not a `{CLIP_KIND}`",
            m.kind
        )));
    }
    if read_tokenizer(store, id)? != *data_tok {
        return Err(StageError::Invalid(format!(
            "the dual encoder {id} was trained with another tokenizer than the data's"
        )));
    }
    let cfg: ClipConfig = serde_json::from_slice(&store.read_file(id, CONFIG_FILE)?)
        .map_err(|e| StageError::Invalid(format!("{id}: config.json: {e}")))?;
    cfg.validate()
        .map_err(crate::clip::train::ClipError::from)?;
    let model = load_weights(cfg.init::<B>(device), &store.read_file(id, WEIGHTS_FILE)?)?;
    Ok((cfg, model))
}

/// A checkpoint folder in the Hugging Face layout, as a model stage's `model` option takes it:
/// `model = { hf = "path/to/Qwen3-VL-2B-Instruct" }` (or an InternVL3.5 `-HF` folder). The
/// folder's files enter the cache key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HfSource {
    pub hf: PathBuf,
    /// Side of the square grid the puzzle images are resampled to before the checkpoint's
    /// processor (which then resizes them within its pixel bounds, as it does any image).
    #[serde(default = "default_hf_image_size")]
    pub image_size: usize,
}

fn default_hf_image_size() -> usize {
    224
}

/// The model plan of a checkpoint artifact of either family; a built-in one must share the
/// data's tokenizer.
pub fn plan_of_artifact(
    store: &Store,
    id: &str,
    data_tok: Option<&Tokenizer>,
) -> Result<ModelPlan, StageError> {
    let m = store.manifest(id)?;
    if m.files.iter().any(|f| f.name == HF_MARKER_FILE) {
        let marker: HfMarker = serde_json::from_slice(&store.read_file(id, HF_MARKER_FILE)?)
            .map_err(|e| StageError::Invalid(format!("{id}: {HF_MARKER_FILE}: {e}")))?;
        ensure!(
            Family::from_name(&marker.family).is_some(),
            "checkpoint {id}: unknown model family `{}`",
            marker.family
        );
        for f in &m.files {
            store.verified_path(id, &f.name)?;
        }
        let dir = store
            .verified_path(id, CONFIG_FILE)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| StageError::Invalid(format!("checkpoint {id}: no folder")))?;
        return Ok(ModelPlan::hf(&dir, marker.image_size)?);
    }
    let (cfg, weights, tok) = read_checkpoint(store, id, data_tok)?;
    Ok(ModelPlan::native(cfg, Some(weights), tok))
}

/// The model plan of a stage that takes either a checkpoint input or `model = { hf = ... }`.
pub fn plan_of_input_or_hf(
    ctx: &RunCtx,
    checkpoint: &InputSpec,
    model: Option<&HfSource>,
    data_tok: &Tokenizer,
) -> Result<ModelPlan, StageError> {
    match (optional_id(ctx, checkpoint), model) {
        (Some(id), None) => plan_of_artifact(ctx.store, id.as_str(), Some(data_tok)),
        (None, Some(src)) => Ok(ModelPlan::hf(&src.hf, src.image_size)?),
        (Some(_), Some(_)) => bail!(
            "set either a `{}` input or `model = {{ hf = ... }}`, not both",
            checkpoint.name
        ),
        (None, None) => bail!(
            "no model: give a `{}` input or `model = {{ hf = \"path\" }}`",
            checkpoint.name
        ),
    }
}

/// The examples `keep` accepts (see [`read_examples_where`]), tokenized for `plan`'s model
/// ([`ModelPlan::retokenize`]).
pub fn plan_examples(
    plan: &ModelPlan,
    store: &Store,
    data_id: &str,
    limit: usize,
    keep: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<Example>, StageError> {
    let mut out = read_examples_where(store, data_id, plan.image_size, limit, keep)?;
    if let PlanSource::Hf { .. } = plan.source {
        let t = Table::read(store, data_id, "sft_targets")?;
        let ids = t.required_strings("id")?;
        let prompts = t.required_strings("prompt")?;
        let targets = t.required_strings("target")?;
        let row: std::collections::HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        plan.retokenize(&mut out, &|id| {
            row.get(id)
                .map(|&i| (prompts[i].as_str(), targets[i].as_str()))
        })?;
    }
    Ok(out)
}

/// [`plan_examples`] of one split (all when `None`).
pub fn plan_split_examples(
    plan: &ModelPlan,
    store: &Store,
    data_id: &str,
    split: Option<&str>,
    limit: usize,
) -> Result<Vec<Example>, StageError> {
    plan_examples(plan, store, data_id, limit, &|s: &str, _: &str| {
        split.is_none_or(|x| x == s)
    })
}

/// Writes `model` as a checkpoint artifact of its plan's family: the built-in format, or the
/// Hugging Face layout (`config.json`, `model.safetensors`, and the source folder's
/// tokenizer and processor files) that transformers loads from the artifact's folder.
pub fn write_model<B: Backend>(
    ctx: &RunCtx,
    plan: &ModelPlan,
    model: &Model<B>,
) -> Result<String, StageError> {
    match (&plan.source, model, &plan.codec) {
        (PlanSource::Native { cfg, .. }, Model::Native(_), Codec::Task(tok)) => {
            write_checkpoint(ctx, cfg, &model.weights_bytes()?, tok)
        }
        (PlanSource::Hf { dir, family, .. }, Model::Hf(m), Codec::Hf(_)) => {
            ensure!(
                m.net.family() == *family,
                "the model is not of the family its plan names"
            );
            let mut w = ctx.store.writer(CHECKPOINT_KIND, 1)?;
            m.net
                .save_pretrained(w.staging_dir())
                .map_err(|e| StageError::Invalid(format!("saving the checkpoint: {e}")))?;
            w.adopt(CONFIG_FILE)?;
            w.adopt(WEIGHTS_FILE)?;
            for n in side_files(dir)? {
                let bytes = std::fs::read(dir.join(&n)).map_err(|source| StageError::Io {
                    path: dir.join(&n),
                    source,
                })?;
                w.add_bytes(&n, &bytes)?;
            }
            let marker = HfMarker::of(plan).ok_or_else(|| {
                StageError::Invalid("the model is not of the family its plan names".into())
            })?;
            let json = serde_json::to_vec_pretty(&marker)
                .map_err(|e| StageError::Invalid(e.to_string()))?;
            w.add_bytes(HF_MARKER_FILE, &json)?;
            Ok(ctx.commit(w, None)?)
        }
        _ => bail!("the model is not of the family its plan names"),
    }
}

/// A training stage's `model`: a size preset of the built-in model (`"tiny"`, `"small"`) or a
/// checkpoint folder (`{ hf = "path" }`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ModelChoice {
    Preset(String),
    Hf(HfSource),
}

/// A string is a preset; a table is read as [`HfSource`], so that its errors name the field
/// (an unknown key, a value of the wrong type).
impl<'de> Deserialize<'de> for ModelChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Choice;
        impl<'de> serde::de::Visitor<'de> for Choice {
            type Value = ModelChoice;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    r#"a model preset ("tiny", "small") or { hf = "path", image_size = N }"#,
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelChoice, E> {
                Ok(ModelChoice::Preset(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ModelChoice, A::Error> {
                HfSource::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ModelChoice::Hf)
            }
        }
        d.deserialize_any(Choice)
    }
}

impl Default for ModelChoice {
    fn default() -> Self {
        ModelChoice::Preset("tiny".into())
    }
}

/// The files of a `{ hf = "path" }` model, for the cache key.
pub fn hf_external(source: Option<&HfSource>) -> Vec<PathBuf> {
    source.map(|s| vec![s.hf.clone()]).unwrap_or_default()
}
