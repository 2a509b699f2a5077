//! A Qwen3-VL parity fixture's reference run (`tests/fixtures/qwen3_vl/make_fixture.py`): its
//! inputs as the model takes them, and the comparison of the model's positions and logits with
//! the reference's.

use crate::model::hf::reference::{Parity, Reference, watch_finite};

use super::{ImageInput, Qwen3Vl, rope_index};
use crate::model::hf::{HfError, Result, checkpoint_err};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The token ids and the one image of a Qwen3-VL reference run.
pub fn inputs<B: Backend>(
    reference: &Reference,
    device: &B::Device,
) -> Result<(Vec<u32>, ImageInput<B>)> {
    let ids = reference.ids()?;
    let (_, g) = reference.i64("image_grid_thw")?;
    let (shape, pv) = reference.f32("pixel_values")?;
    let [t, h, w] = <[i64; 3]>::try_from(g.as_slice())
        .map_err(|_| checkpoint_err(reference.path(), "image_grid_thw is not one (t, h, w) row"))?;
    let [n, f] = <[usize; 2]>::try_from(shape.as_slice())
        .map_err(|_| checkpoint_err(reference.path(), "pixel_values is not 2-d"))?;
    Ok((
        ids,
        ImageInput {
            pixel_values: Tensor::from_data(TensorData::new(pv, [n, f]), device),
            grid: [t as usize, h as usize, w as usize],
        },
    ))
}

/// Runs `model` on the reference inputs and compares positions and logits.
pub fn parity<B: Backend>(model: &Qwen3Vl<B>, reference: &Reference) -> Result<Parity> {
    let device = model.device();
    let (ids, image) = inputs::<B>(reference, &device)?;
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
