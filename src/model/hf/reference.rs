//! Reference outputs saved by transformers (`reference.safetensors` in a parity fixture, see
//! `tests/fixtures/qwen3_vl/make_fixture.py`): inputs, expected logits and positions, and the
//! comparison ([`Parity`]) each family's `parity` runs for the tests and `asymm dev hf-parity`.

use super::{HfError, Result, checkpoint_err};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// The tensors of one `reference.safetensors`.
pub struct Reference {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Reference {
    pub fn read(path: &Path) -> Result<Reference> {
        let bytes = std::fs::read(path).map_err(|e| checkpoint_err(path, e))?;
        SafeTensors::deserialize(&bytes).map_err(|e| checkpoint_err(path, e))?;
        Ok(Reference {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// The file the reference was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self, key: &str, dtype: Dtype) -> Result<(Vec<usize>, Vec<u8>)> {
        let t = SafeTensors::deserialize(&self.bytes).map_err(|e| checkpoint_err(&self.path, e))?;
        let v = t
            .tensor(key)
            .map_err(|e| checkpoint_err(&self.path, format!("`{key}`: {e}")))?;
        if v.dtype() != dtype {
            return Err(checkpoint_err(
                &self.path,
                format!("`{key}` is {:?}, not {dtype:?}", v.dtype()),
            ));
        }
        Ok((v.shape().to_vec(), v.data().to_vec()))
    }

    /// Shape and values of an f32 tensor.
    pub fn f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, data) = self.raw(key, Dtype::F32)?;
        let vals = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape, vals))
    }

    /// Shape and values of an i64 tensor.
    pub fn i64(&self, key: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (shape, data) = self.raw(key, Dtype::I64)?;
        let vals = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok((shape, vals))
    }

    /// The token ids of the reference run (`input_ids`).
    pub fn ids(&self) -> Result<Vec<u32>> {
        let (_, ids) = self.i64("input_ids")?;
        ids.iter()
            .map(|&x| u32::try_from(x).map_err(|_| HfError::Input(format!("token id {x}"))))
            .collect()
    }
}

/// How a model's outputs compare with a reference run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Parity {
    pub positions_equal: bool,
    /// Infinite when a logit is not a number.
    pub max_abs_logit_diff: f32,
    pub logits: usize,
    /// Logits that are NaN or infinite.
    pub non_finite_logits: usize,
    /// Image features (the vision tower's merged output) that are NaN or infinite: where a
    /// non-finite logit comes from.
    pub non_finite_image_features: usize,
    /// The first step of the vision tower whose output holds a NaN or an infinity, if any.
    pub first_non_finite_vision_step: Option<String>,
}

impl Parity {
    /// Compares `logits` [1, L, vocab] with the reference's; `features` are the image features
    /// and `first_bad` the first vision step with a value that is not a number
    /// ([`watch_finite`]).
    pub fn measure<B: Backend>(
        reference: &Reference,
        logits: Tensor<B, 3>,
        positions_equal: bool,
        features: &[f32],
        first_bad: Option<String>,
    ) -> Result<Parity> {
        let (shape, want) = reference.f32("logits")?;
        if logits.dims().to_vec() != shape {
            return Err(HfError::Input(format!(
                "logits {:?}, reference {shape:?}",
                logits.dims()
            )));
        }
        let got = crate::model::host_f32(logits)
            .map_err(|e| HfError::Input(format!("reading logits: {e}")))?;
        let (max_abs_logit_diff, non_finite_logits) = crate::model::max_abs_diff(&got, &want);
        Ok(Parity {
            positions_equal,
            max_abs_logit_diff,
            logits: got.len(),
            non_finite_logits,
            non_finite_image_features: features.iter().filter(|x| !x.is_finite()).count(),
            first_non_finite_vision_step: first_bad,
        })
    }
}

/// An observer for a vision tower's `forward_observed`: records in `first` the name of the first
/// step whose output holds a NaN or an infinity (or cannot be read).
pub fn watch_finite<B: Backend, const D: usize>(
    first: &mut Option<String>,
) -> impl FnMut(&str, &Tensor<B, D>) + '_ {
    move |name, t| {
        if first.is_none()
            && crate::model::host_f32(t.clone())
                .map(|v| v.iter().any(|x| !x.is_finite()))
                .unwrap_or(true)
        {
            *first = Some(name.to_string());
        }
    }
}
