//! Reference outputs saved by transformers (`reference.safetensors` in a parity fixture, see
//! `tests/fixtures/qwen3_vl/make_fixture.py`): inputs, expected logits and positions, and the
//! comparison [`parity`] the tests and `asymm dev hf-parity` run.

use super::{HfError, ImageInput, Qwen3Vl, Result, checkpoint_err, rope_index};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
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

    /// The token ids and the one image of the reference run.
    pub fn inputs<B: Backend>(&self, device: &B::Device) -> Result<(Vec<u32>, ImageInput<B>)> {
        let ids = self.ids()?;
        let (_, g) = self.i64("image_grid_thw")?;
        let (shape, pv) = self.f32("pixel_values")?;
        let [t, h, w] = <[i64; 3]>::try_from(g.as_slice())
            .map_err(|_| checkpoint_err(&self.path, "image_grid_thw is not one (t, h, w) row"))?;
        let [n, f] = <[usize; 2]>::try_from(shape.as_slice())
            .map_err(|_| checkpoint_err(&self.path, "pixel_values is not 2-d"))?;
        Ok((
            ids,
            ImageInput {
                pixel_values: Tensor::from_data(TensorData::new(pv, [n, f]), device),
                grid: [t as usize, h as usize, w as usize],
            },
        ))
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

/// Runs `model` on the reference inputs and compares positions and logits.
pub fn parity<B: Backend>(model: &Qwen3Vl<B>, reference: &Reference) -> Result<Parity> {
    let device = model.device();
    let (ids, image) = reference.inputs::<B>(&device)?;
    let (_, want_pos) = reference.i64("position_ids")?;
    let pos = rope_index(&model.cfg, &ids, &[image.grid])?;
    let mut first_bad: Option<String> = None;
    let features = model
        .model
        .visual
        .forward_observed(
            image.pixel_values.clone(),
            &[image.grid],
            &mut watch_finite(&mut first_bad),
        )
        .embeds;
    let features = crate::model::host_f32(features)
        .map_err(|e| HfError::Input(format!("reading image features: {e}")))?;
    let logits = model.forward(&ids, &[image])?;
    let positions_equal = pos.concat() == want_pos;
    Parity::measure(reference, logits, positions_equal, &features, first_bad)
}
