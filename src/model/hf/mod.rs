//! What the Hugging Face checkpoint families share: their errors, checkpoint I/O (the
//! `config.json`, safetensors read through burn-store's PyTorch adapter and written in
//! PyTorch's layout), the Qwen3 language model ([`text`], with its config in [`config`]), RGB
//! images and PIL's bicubic resize ([`image`]), and the reference runs of a parity fixture
//! ([`reference`]). `qwen3_vl` and `internvl` build on this module; neither imports the other.

pub mod config;
pub mod family;
pub mod image;
pub mod reference;
pub mod text;

use crate::model::layers::rms_norm_kernel;
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, silu};
use burn::tensor::backend::Backend;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use std::path::{Path, PathBuf};

/// Errors reading or running a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("model input: {0}")]
    Input(String),
    #[error("model config: {0}")]
    Config(#[from] crate::model::config::ConfigError),
    #[error(transparent)]
    Chat(#[from] crate::text::chat::ChatError),
}

pub type Result<T> = std::result::Result<T, HfError>;

pub(crate) fn checkpoint_err(path: &Path, msg: impl std::fmt::Display) -> HfError {
    HfError::Checkpoint {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// RMS normalization over the last dimension with a learned scale named as in the checkpoint
/// (`weight`).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(d: usize, eps: f64, device: &B::Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let Some(y) = rms_norm_kernel(x.clone(), self.weight.val(), self.eps) {
            return y;
        }
        let r = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt();
        (x / r) * self.weight.val().unsqueeze()
    }
}

/// `x·cos + rotate_half(x)·sin` over the last dimension (the half-split rotary convention:
/// pairs (i, i + d/2) rotate together), `cos` and `sin` broadcast to `x`'s shape: the text
/// decoder's queries and keys [B, H, T, d] with tables [B, 1, T, d], the vision tower's
/// [N, H, d] with [N, 1, d].
pub(crate) fn rotate_half<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    cos: &Tensor<B, D>,
    sin: &Tensor<B, D>,
) -> Tensor<B, D> {
    let d = x.dims()[D - 1];
    let half = d / 2;
    let x1 = x.clone().narrow(D - 1, 0, half);
    let x2 = x.clone().narrow(D - 1, half, d - half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], D - 1);
    x * cos.clone() + rotated * sin.clone()
}

/// The activation a config names (checked by the family's config validation).
pub(crate) fn act<B: Backend, const D: usize>(x: Tensor<B, D>, name: &str) -> Tensor<B, D> {
    match name {
        "silu" => silu(x),
        "gelu" => gelu(x),
        // gelu_pytorch_tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        _ => {
            let c = (2.0f64 / std::f64::consts::PI).sqrt();
            let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
            x * (inner.tanh() + 1.0) * 0.5
        }
    }
}

/// The safetensors files of a checkpoint folder: the shards of `model.safetensors.index.json`,
/// else `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(&index).map_err(|e| checkpoint_err(&index, e))?;
        let idx: Index = serde_json::from_str(&text).map_err(|e| checkpoint_err(&index, e))?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        Ok(vec![single])
    } else {
        Err(checkpoint_err(
            dir,
            "neither model.safetensors nor model.safetensors.index.json",
        ))
    }
}

/// `config_json` with `tie_word_embeddings` false, at the top and in `text_config` (keys
/// sorted, two-space indents, as transformers writes configs).
pub(crate) fn untied_config(config_json: &str, path: &Path) -> Result<String> {
    let mut v: serde_json::Value =
        serde_json::from_str(config_json).map_err(|e| checkpoint_err(path, e))?;
    let untie = |o: &mut serde_json::Value| {
        if let Some(m) = o.as_object_mut() {
            m.insert("tie_word_embeddings".into(), false.into());
        }
    };
    untie(&mut v);
    if let Some(t) = v.get_mut("text_config") {
        untie(t);
    }
    let mut text = serde_json::to_string_pretty(&v).map_err(|e| checkpoint_err(path, e))?;
    text.push('\n');
    Ok(text)
}

/// `dir/config.json` parsed as `C`, and its text.
pub(crate) fn read_config<C: serde::de::DeserializeOwned>(dir: &Path) -> Result<(C, String)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| checkpoint_err(&path, e))?;
    let cfg = serde_json::from_str(&text).map_err(|e| checkpoint_err(&path, e))?;
    Ok((cfg, text))
}

/// Writes `dir/config.json` (`config_json`) and `dir/model.safetensors` with `module`'s
/// parameters under their key paths, in PyTorch's layout (`[out, in]` linear weights,
/// `format = pt` metadata), so transformers loads the result.
pub(crate) fn save_safetensors<B: Backend, M: Module<B>>(
    module: &M,
    dir: &Path,
    config_json: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| checkpoint_err(dir, e))?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, config_json).map_err(|e| checkpoint_err(&cfg_path, e))?;
    let path = dir.join("model.safetensors");
    let mut store = SafetensorsStore::from_file(path.clone())
        .with_to_adapter(BurnToPyTorchAdapter)
        .clear_metadata()
        .metadata("format", "pt")
        .overwrite(true);
    module
        .save_into(&mut store)
        .map_err(|e| checkpoint_err(&path, e))
}

/// Loads every parameter of `module` from the checkpoint folder's safetensors (one file or the
/// shards of its index) and casts them to the backend's float type; a parameter the files
/// lack, a tensor of the wrong shape, or a tensor the module has no place for (a weight that
/// would be dropped) is an error naming it, except the `optional` keys: those of them the files
/// hold are returned. `remap` renames file keys (regex, replacement) before they are matched
/// to the module's paths.
pub(crate) fn load_safetensors<B: Backend, M: Module<B> + Clone>(
    module: &mut M,
    dir: &Path,
    remap: &[(&str, &str)],
    optional: &[&str],
) -> Result<Vec<String>> {
    let files = weight_files(dir)?;
    let mut missing: Option<Vec<String>> = None;
    let mut unused: Vec<String> = Vec::new();
    for file in &files {
        let mut store = SafetensorsStore::from_file(file.clone())
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(true);
        for (from, to) in remap {
            store = store.with_key_remapping(*from, *to);
        }
        let res = module
            .load_from(&mut store)
            .map_err(|e| checkpoint_err(file, e))?;
        if !res.errors.is_empty() {
            return Err(checkpoint_err(file, format!("{:?}", res.errors)));
        }
        // A layer norm's `weight`/`bias` are applied as burn's `gamma`/`beta` yet still listed
        // under the file's names.
        let applied: std::collections::HashSet<&str> =
            res.applied.iter().map(String::as_str).collect();
        let renamed = |k: &str| {
            k.strip_suffix(".weight")
                .map(|p| format!("{p}.gamma"))
                .or_else(|| k.strip_suffix(".bias").map(|p| format!("{p}.beta")))
        };
        unused.extend(
            res.unused
                .iter()
                .filter(|k| renamed(k).is_none_or(|r| !applied.contains(r.as_str())))
                .cloned(),
        );
        let now: Vec<String> = res.missing.iter().map(|m| m.0.clone()).collect();
        missing = Some(match missing {
            None => now,
            Some(before) => before.into_iter().filter(|k| now.contains(k)).collect(),
        });
    }
    if let Some(m) = missing.filter(|m| !m.is_empty()) {
        return Err(checkpoint_err(
            dir,
            format!("no tensor for {} parameter(s), e.g. {}", m.len(), m[0]),
        ));
    }
    let (present, extra): (Vec<String>, Vec<String>) = unused
        .into_iter()
        .partition(|k| optional.contains(&k.as_str()));
    if let Some(k) = extra.first() {
        return Err(checkpoint_err(
            dir,
            format!(
                "{} tensor(s) the model has no parameter for, e.g. {k} (a config that does not \
                 match the weights?)",
                extra.len()
            ),
        ));
    }
    // Parameters in the backend's float type whatever the files store (bf16 checkpoints).
    *module = crate::model::checkpoint::to_backend_dtype(module.clone());
    Ok(present)
}
