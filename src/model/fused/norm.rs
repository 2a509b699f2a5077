//! RMS normalization over the last dimension as one node instead of six (square, mean, add,
//! square root, divide, scale), with `r = 1 / √(mean(x²) + ε)` per row of width `d`:
//!
//! ```text
//! y = x r γ      dγ = Σ_rows dy ∘ x r      dx = r (γ ∘ dy) − x r³ Σ(γ ∘ dy ∘ x) / d
//! ```

use super::{Ad, available, cast, contiguous, flex_input, flex_tensor, same, values};
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use std::sync::Arc;

/// `x / √(mean(x², last) + epsilon) · gamma` with `gamma` as wide as the last dimension; `None`
/// when the backend has no fused kernel, the widths differ or the tensors are not f32.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    let shape = x.dims();
    let d = *shape.last()?;
    if !available::<B>()
        || gamma.dims()[0] != d
        || shape.contains(&0)
        || x.dtype() != DType::F32
        || gamma.dtype() != DType::F32
    {
        return None;
    }
    let n: usize = shape.iter().product();
    let eps = epsilon as f32;
    if same::<B, Ad>() {
        let x = cast::<_, Tensor<Ad, D>>(x)?.into_primitive().tensor();
        let g = cast::<_, Tensor<Ad, 1>>(gamma)?.into_primitive().tensor();
        let (xi, gi) = (
            contiguous(x.primitive.clone()),
            contiguous(g.primitive.clone()),
        );
        let (y, r) = forward(values(&xi, n), values(&gi, d), eps);
        let y = flex_tensor(y, &shape);
        let out = match NormBackward
            .prepare::<NoCheckpointing>([x.node.clone(), g.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xi, gi, Arc::new(r), shape.to_vec()), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return cast(Tensor::<Ad, D>::from_primitive(TensorPrimitive::Float(out)));
    }
    let x = flex_input(x)?;
    let g = flex_input(gamma)?;
    let (y, _) = forward(values(&x, n), values(&g, d), eps);
    cast(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(
        flex_tensor(y, &shape),
    )))
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 2> for NormBackward {
    /// The input, gamma, each row's `r`, the shape.
    type State = (FlexTensor, FlexTensor, Arc<Vec<f32>>, Vec<usize>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (x, g, r, shape) = ops.state;
        let d = shape.last().copied().unwrap_or(1);
        let n = shape.iter().product();
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (dx, dg) = backward(values(&x, n), values(&g, d), &r, values(&dy, n));
        let [px, pg] = ops.parents;
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex_tensor(dx, &shape));
        }
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex_tensor(dg, &[d]));
        }
    }
}

avx2_dispatch!(forward, forward_avx2, forward_any, (x: &[f32], g: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>));

#[inline(always)]
fn forward_any(x: &[f32], g: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = g.len();
    let mut y = vec![0.0f32; x.len()];
    let mut rs = Vec::with_capacity(x.len() / d);
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(g) {
            *o = v * r * w;
        }
        rs.push(r);
    }
    (y, rs)
}

avx2_dispatch!(backward, backward_avx2, backward_any,
    (x: &[f32], g: &[f32], r: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>));

#[inline(always)]
fn backward_any(x: &[f32], g: &[f32], r: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = g.len();
    let mut dx = vec![0.0f32; x.len()];
    let mut dg = vec![0.0f32; d];
    for (((xr, dyr), dxr), &r) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
        .zip(r)
    {
        let dot: f32 = xr
            .iter()
            .zip(dyr)
            .zip(g)
            .map(|((&v, &e), &w)| v * e * w)
            .sum();
        let c = r * r * r * dot / d as f32;
        for ((((o, &v), &e), &w), s) in dxr.iter_mut().zip(xr).zip(dyr).zip(g).zip(dg.iter_mut()) {
            *o = r * w * e - v * c;
            *s += e * v * r;
        }
    }
    (dx, dg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::RmsNormConfig;
    use burn::tensor::TensorData;

    /// Values and the gradients of input and gamma agree with burn's `RmsNorm`.
    #[test]
    fn fused_rms_norm_matches_burns() {
        let dev = Default::default();
        let shape = [3, 5, 12];
        let n = 180;
        let xv: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
            .collect();
        let wv: Vec<f32> = (0..n).map(|i| ((i * 11 % 7) as f32 - 3.0) / 2.0).collect();
        let gv: Vec<f32> = (0..12).map(|i| 0.5 + i as f32 / 10.0).collect();
        let run = |fused: bool| {
            let mut layer = RmsNormConfig::new(12).init::<Ad>(&dev);
            layer.gamma = layer
                .gamma
                .map(|_| Tensor::from_data(TensorData::new(gv.clone(), [12]), &dev).require_grad());
            let x =
                Tensor::<Ad, 3>::from_data(TensorData::new(xv.clone(), shape), &dev).require_grad();
            let y = if fused {
                rms_norm(x.clone(), layer.gamma.val(), layer.epsilon)
                    .expect("CPU backend has the fused kernel")
            } else {
                layer.forward(x.clone())
            };
            let wt = Tensor::<Ad, 3>::from_data(TensorData::new(wv.clone(), shape), &dev);
            let grads = (y.clone() * wt).sum().backward();
            let v = |t: Option<Vec<f32>>| t.unwrap_or_default();
            (
                y.into_data().to_vec::<f32>().unwrap_or_default(),
                v(x.grad(&grads).and_then(|g| g.into_data().to_vec().ok())),
                v(layer
                    .gamma
                    .grad(&grads)
                    .and_then(|g| g.into_data().to_vec().ok())),
            )
        };
        let (f, r) = (run(true), run(false));
        for (what, a, b) in [
            ("output", &f.0, &r.0),
            ("dx", &f.1, &r.1),
            ("dgamma", &f.2, &r.2),
        ] {
            assert!(!a.is_empty() && a.len() == b.len(), "{what}");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{what}: {x} vs {y}"
                );
            }
        }
    }
}
