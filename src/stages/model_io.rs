//! Shared plumbing of the model stages: reading examples (images decoded and resized, token ids,
//! spans) from an `sft_targets` artifact, and reading or writing checkpoint artifacts.

use super::StageError;
use crate::clip::{Clip, ClipConfig};
use crate::dag::RunCtx;
use crate::model::VlmConfig;
use crate::model::checkpoint::{
    CONFIG_FILE, WEIGHTS_FILE, check_tokenizer, config_from_json, config_to_json, load_weights,
};
use crate::store::Store;
use crate::table::Table;
use crate::text::Tokenizer;
use crate::train::batch::{Example, image_ink};
use burn::tensor::backend::Backend;

/// The tokenizer file stored in `sft_targets` and checkpoint artifacts.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Artifact kind of checkpoints.
pub const CHECKPOINT_KIND: &str = "checkpoint";

fn model_err(e: crate::model::ModelError) -> StageError {
    StageError::Invalid(e.to_string())
}

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
    let cfg = config_from_json(&cfg_text).map_err(model_err)?;
    cfg.validate()
        .map_err(|e| StageError::Invalid(format!("checkpoint config: {e}")))?;
    let tok = read_tokenizer(store, id)?;
    if let Some(d) = data_tok {
        check_tokenizer(&tok, d).map_err(model_err)?;
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
    cfg.validate().map_err(StageError::Invalid)?;
    let model = load_weights(cfg.init::<B>(device), &store.read_file(id, WEIGHTS_FILE)?)?;
    Ok((cfg, model))
}
