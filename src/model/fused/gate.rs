//! The gated MLP's `silu(g) ∘ u` as one node instead of four (sigmoid, two products, and the
//! sigmoid's backward recomputing its exponential):
//!
//! ```text
//! h = g σ(g) u      dg = dh u σ(g) (1 + g (1 − σ(g)))      du = dh g σ(g)
//! ```

use super::{
    Ad, available, cast, contiguous, exp_nonpositive, flex_input, flex_tensor, same, values,
};
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

/// `silu(gate) ∘ up` for two tensors of one shape; `None` when the backend has no fused kernel,
/// the shapes differ or the tensors are not f32.
pub fn silu_gate<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !available::<B>()
        || gate.dims() != up.dims()
        || gate.dims().contains(&0)
        || gate.dtype() != DType::F32
        || up.dtype() != DType::F32
    {
        return None;
    }
    let shape = gate.dims();
    if same::<B, Ad>() {
        let (g, u) = (
            cast::<_, Tensor<Ad, 3>>(gate)?.into_primitive().tensor(),
            cast::<_, Tensor<Ad, 3>>(up)?.into_primitive().tensor(),
        );
        let (gi, ui) = (
            contiguous(g.primitive.clone()),
            contiguous(u.primitive.clone()),
        );
        let n = shape.iter().product();
        let out = flex_tensor(silu_gate_forward(values(&gi, n), values(&ui, n)), &shape);
        let out = match SiluGateBackward
            .prepare::<NoCheckpointing>([g.node.clone(), u.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((gi, ui), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return cast(Tensor::<Ad, 3>::from_primitive(TensorPrimitive::Float(out)));
    }
    let (g, u) = (flex_input(gate)?, flex_input(up)?);
    let n = shape.iter().product();
    let out = flex_tensor(silu_gate_forward(values(&g, n), values(&u, n)), &shape);
    cast(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(
        out,
    )))
}

#[derive(Debug)]
struct SiluGateBackward;

impl Backward<Flex, 2> for SiluGateBackward {
    /// The gate and up inputs.
    type State = (FlexTensor, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (g, u) = ops.state;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let shape: Vec<usize> = grad.layout().shape().iter().copied().collect();
        let n = shape.iter().product();
        let (dg, du) = silu_gate_backward(values(&g, n), values(&u, n), values(&grad, n));
        let [pg, pu] = ops.parents;
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex_tensor(dg, &shape));
        }
        if let Some(node) = pu {
            grads.register::<Flex>(node.id, flex_tensor(du, &shape));
        }
    }
}

/// `σ(x)` from `e^(−|x|)`, which never overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(if x > 0.0 { -x } else { x });
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

avx2_dispatch!(silu_gate_forward, silu_gate_forward_avx2, silu_gate_forward_any,
    (g: &[f32], u: &[f32]) -> Vec<f32>);

#[inline(always)]
fn silu_gate_forward_any(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter().zip(u).map(|(&g, &u)| g * sigmoid(g) * u).collect()
}

avx2_dispatch!(silu_gate_backward, silu_gate_backward_avx2, silu_gate_backward_any,
    (g: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>));

#[inline(always)]
fn silu_gate_backward_any(g: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0.0f32; g.len()];
    let mut du = vec![0.0f32; g.len()];
    for ((((dg, du), &g), &u), &dh) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dh) {
        let s = sigmoid(g);
        *dg = dh * u * s * (1.0 + g * (1.0 - s));
        *du = dh * g * s;
    }
    (dg, du)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// Values and both gradients of `silu(g) ∘ u` agree with the composed operations, on inputs
    /// of both signs and large magnitude (where a naive sigmoid overflows).
    #[test]
    fn fused_silu_gate_matches_the_composed_operations() {
        let dev = Default::default();
        let shape = [2, 5, 7];
        let n = 70;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 - 35.0) * 0.9).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 31 % 17) as f32 - 8.0) / 4.0).collect();
        let w: Vec<f32> = (0..n).map(|i| ((i * 13 % 11) as f32 - 5.0) / 3.0).collect();
        let run = |fused: bool| {
            let t = |v: &Vec<f32>| {
                Tensor::<Ad, 3>::from_data(TensorData::new(v.clone(), shape), &dev).require_grad()
            };
            let (gt, ut) = (t(&g), t(&u));
            let out = if fused {
                silu_gate(gt.clone(), ut.clone()).expect("CPU backend has the fused kernel")
            } else {
                burn::tensor::activation::silu(gt.clone()) * ut.clone()
            };
            let wt = Tensor::<Ad, 3>::from_data(TensorData::new(w.clone(), shape), &dev);
            let grads = (out.clone() * wt).sum().backward();
            let v = |x: Option<Tensor<Flex, 3>>| {
                x.map(|x| x.into_data().to_vec::<f32>().unwrap_or_default())
                    .unwrap_or_default()
            };
            (
                out.into_data().to_vec::<f32>().unwrap_or_default(),
                v(gt.grad(&grads)),
                v(ut.grad(&grads)),
            )
        };
        let (f, r) = (run(true), run(false));
        for (what, a, b) in [
            ("output", &f.0, &r.0),
            ("dg", &f.1, &r.1),
            ("du", &f.2, &r.2),
        ] {
            assert_eq!(a.len(), n, "{what}");
            assert_eq!(b.len(), n, "{what}");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{what}: {x} vs {y}"
                );
            }
        }
    }
}
