//! Fused self-attention, forward and backward.
//!
//! Composed from tensor operations, one attention layer is a score product, a scale, a mask, a
//! softmax (max, subtract, exp, sum, divide) and a value product, each a pass over the
//! `[B, H, T, T]` scores with its own autodiff node, plus the copies that turn the fused
//! `[B, T, 3, H, d]` projection into per-head `[B, H, T, d]` operands and back. Here the whole
//! layer is one autodiff node: the four products read the heads in place from the projection
//! (strided [`gemm`] calls), the softmax is one pass per row with a vectorized `exp` that skips
//! the masked future, and the backward pass writes the projection's gradient directly:
//!
//! ```text
//! S = scale·Q Kᵀ   P = softmax(S) (causal: P_ij = 0 for j > i)   O = P V
//! dV = Pᵀ dO   dP = dO Vᵀ   dS = scale · P ∘ (dP − rowsum(P ∘ dP))   dQ = dS K   dK = dSᵀ Q
//! ```
//!
//!
//! The probabilities are kept for the backward pass (`B·H·T²` floats per layer).

use super::{
    Ad, LANES, Mat, Out, available, cast, contiguous, exp_nonpositive, matmul, max, same, values,
};
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};
use rayon::prelude::*;
use std::sync::Arc;

/// Self-attention of a fused, rotated projection `qkv` [B, T, 3, H, d] (query, key, value per
/// head): the context [B, T, H·d] with the heads side by side, as the output projection reads
/// it; `causal` masks keys after each query. `None` when the backend has no fused kernel or the
/// tensor is not f32; the caller then composes the operations itself.
pub fn attention<B: Backend>(qkv: Tensor<B, 5>, causal: bool) -> Option<Tensor<B, 3>> {
    if !available::<B>() || qkv.dtype() != DType::F32 || qkv.dims().contains(&0) {
        return None;
    }
    if same::<B, Ad>() {
        return cast(attention_autodiff(cast::<_, Tensor<Ad, 5>>(qkv)?, causal));
    }
    let x = cast::<_, Tensor<Flex, 5>>(qkv)?;
    let dims = Dims::of(x.dims(), causal);
    let input = contiguous(x.into_primitive().tensor());
    let (out, _) = forward(values(&input, dims.qkv_len()), dims);
    cast(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(
        dims.context_tensor(out),
    )))
}

/// Shape of one fused attention call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
    causal: bool,
}

impl Dims {
    fn of([b, t, three, h, d]: [usize; 5], causal: bool) -> Dims {
        assert_eq!(three, 3, "fused attention: projection is [B, T, 3, H, d]");
        Dims { b, t, h, d, causal }
    }
    fn qkv_len(&self) -> usize {
        self.b * self.t * 3 * self.h * self.d
    }
    /// Row stride of the projection (one position: query, key and value of every head).
    fn row(&self) -> usize {
        3 * self.h * self.d
    }
    fn width(&self) -> usize {
        self.h * self.d
    }
    /// Keys query `i` sees.
    fn keys(&self, i: usize) -> usize {
        if self.causal { i + 1 } else { self.t }
    }
    fn context_tensor(&self, v: Vec<f32>) -> FlexTensor {
        FlexTensor::new(
            Bytes::from_elems(v),
            Layout::contiguous(Shape::new([self.b, self.t, self.width()])),
            DType::F32,
        )
    }
}

fn attention_autodiff(qkv: Tensor<Ad, 5>, causal: bool) -> Tensor<Ad, 3> {
    let dims = Dims::of(qkv.dims(), causal);
    let x = qkv.into_primitive().tensor();
    let input = contiguous(x.primitive.clone());
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, probs) = forward(values(&input, dims.qkv_len()), dims);
            prep.finish((input, Arc::new(probs), dims), dims.context_tensor(out))
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = forward(values(&input, dims.qkv_len()), dims);
            prep.finish(dims.context_tensor(out))
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    /// The projection, the probabilities, the shape.
    type State = (FlexTensor, Arc<Vec<f32>>, Dims);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (qkv, probs, dims) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous(grad);
            let dq = backward(
                values(&qkv, dims.qkv_len()),
                &probs,
                values(&grad, dims.b * dims.t * dims.width()),
                dims,
            );
            FlexTensor::new(
                Bytes::from_elems(dq),
                Layout::contiguous(Shape::new([dims.b, dims.t, 3, dims.h, dims.d])),
                DType::F32,
            )
        });
    }
}

/// The context [B, T, H·d] and the probabilities [B, H, T, T] of `qkv` [B, T, 3, H, d].
fn forward(qkv: &[f32], dims: Dims) -> (Vec<f32>, Vec<f32>) {
    let Dims { b, t, h, d, .. } = dims;
    let (row, width) = (dims.row() as isize, dims.width());
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; b * t * width];
    let mut probs = vec![0.0f32; b * h * t * t];
    let dst = Out(out.as_mut_ptr());
    probs
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(pair, p)| {
            let (bi, hi) = (pair / h, pair % h);
            let base = bi * t * dims.row() + hi * d;
            let q = Mat(qkv[base..].as_ptr(), row, 1);
            let k = Mat(qkv[base + h * d..].as_ptr(), row, 1);
            let v = Mat(qkv[base + 2 * h * d..].as_ptr(), row, 1);
            let pm = Mat(p.as_mut_ptr(), t as isize, 1);
            // SAFETY: q, k, v rows are `row` apart inside `qkv` (t rows of d values from their
            // head's offset); `p` is this task's t×t block; the context rows are `width` apart
            // inside `out`, this task writing its head's d columns of its batch row only.
            unsafe {
                matmul(t, t, d, pm, q, k.t(), scale, false, 1);
            }
            softmax_rows(p, dims);
            // A fresh pointer: the softmax's borrow of `p` ended the first one's.
            let pm = Mat(p.as_ptr(), t as isize, 1);
            let o = Mat(dst.at(bi * t * width + hi * d), width as isize, 1);
            // SAFETY: as above.
            unsafe {
                matmul(t, d, t, o, pm, v, 1.0, false, 1);
            }
        });
    (out, probs)
}

/// The gradient [B, T, 3, H, d] of the projection from the context's gradient `dout` [B, T, H·d].
fn backward(qkv: &[f32], probs: &[f32], dout: &[f32], dims: Dims) -> Vec<f32> {
    let Dims { b, t, h, d, .. } = dims;
    let (row, width) = (dims.row() as isize, dims.width());
    let scale = 1.0 / (d as f32).sqrt();
    let mut grad = vec![0.0f32; qkv.len()];
    let dst = Out(grad.as_mut_ptr());
    (0..b * h).into_par_iter().for_each_init(
        || vec![0.0f32; t * t],
        |ds, pair| {
            let (bi, hi) = (pair / h, pair % h);
            let base = bi * t * dims.row() + hi * d;
            let q = Mat(qkv[base..].as_ptr(), row, 1);
            let k = Mat(qkv[base + h * d..].as_ptr(), row, 1);
            let v = Mat(qkv[base + 2 * h * d..].as_ptr(), row, 1);
            let p = &probs[pair * t * t..(pair + 1) * t * t];
            let pm = Mat(p.as_ptr(), t as isize, 1);
            let g = Mat(dout[bi * t * width + hi * d..].as_ptr(), width as isize, 1);
            let at = |slot: usize| Mat(dst.at(base + slot * h * d), row, 1);
            let dsm = Mat(ds.as_mut_ptr(), t as isize, 1);
            // SAFETY: operands as in `forward`; `ds` is this task's scratch; the three
            // gradient slots are this task's head columns of its batch row in `grad`.
            unsafe {
                matmul(t, d, t, at(2), pm.t(), g, 1.0, false, 1); // dV = Pᵀ dO
                matmul(t, t, d, dsm, g, v.t(), 1.0, false, 1); // dP = dO Vᵀ
            }
            softmax_backward_rows(p, ds, scale, dims);
            // A fresh pointer: the borrow of `ds` above ended the first one's.
            let dsm = Mat(ds.as_ptr(), t as isize, 1);
            // SAFETY: as above.
            unsafe {
                matmul(t, d, t, at(0), dsm, k, 1.0, false, 1); // dQ = dS K
                matmul(t, d, t, at(1), dsm.t(), q, 1.0, false, 1); // dK = dSᵀ Q
            }
        },
    );
    grad
}

// In place, each row of the t×t scores `p`: its softmax over the keys the query sees, zero
// beyond them.
avx2_dispatch!(softmax_rows, softmax_rows_avx2, softmax_rows_any, (p: &mut [f32], dims: Dims) -> ());

#[inline(always)]
fn softmax_rows_any(p: &mut [f32], dims: Dims) {
    for (i, r) in p.chunks_exact_mut(dims.t).enumerate() {
        let (live, dead) = r.split_at_mut(dims.keys(i));
        let m = max(live);
        live.iter_mut().for_each(|x| *x = exp_nonpositive(*x - m));
        let sum = {
            let mut acc = [0.0f32; LANES];
            let chunks = live.chunks_exact(LANES);
            let rest = chunks.remainder();
            for c in chunks {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a += x;
                }
            }
            acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
        };
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|x| *x *= inv);
        dead.fill(0.0);
    }
}

// In place, each row of `ds` (holding dP): `scale · P ∘ (dP − Σ_j P_j dP_j)` over the keys the
// query sees, zero beyond them.
avx2_dispatch!(softmax_backward_rows, softmax_backward_rows_avx2, softmax_backward_rows_any,
    (p: &[f32], ds: &mut [f32], scale: f32, dims: Dims) -> ());

#[inline(always)]
fn softmax_backward_rows_any(p: &[f32], ds: &mut [f32], scale: f32, dims: Dims) {
    for (i, (pr, r)) in p
        .chunks_exact(dims.t)
        .zip(ds.chunks_exact_mut(dims.t))
        .enumerate()
    {
        let n = dims.keys(i);
        let (live, dead) = r.split_at_mut(n);
        let pl = &pr[..n];
        let mut dot = [0.0f32; LANES];
        let (pc, gc) = (pl.chunks_exact(LANES), live.chunks_exact(LANES));
        let (prest, grest) = (pc.remainder(), gc.remainder());
        for (a, g) in pc.zip(gc) {
            for ((s, &x), &y) in dot.iter_mut().zip(a).zip(g) {
                *s += x * y;
            }
        }
        for ((s, &x), &y) in dot.iter_mut().zip(prest).zip(grest) {
            *s += x * y;
        }
        let dot: f32 = dot.iter().sum();
        for (g, &x) in live.iter_mut().zip(pl) {
            *g = scale * x * (*g - dot);
        }
        dead.fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{MASKED, attention_reference};
    use burn::tensor::TensorData;

    fn input(dims: [usize; 5], seed: usize) -> Vec<f32> {
        (0..dims.iter().product::<usize>())
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 1.5)
            .collect()
    }

    /// The composed reference with the mask as an additive bias.
    fn reference<B: Backend>(qkv: Tensor<B, 5>, causal: bool) -> Tensor<B, 3> {
        let [b, t, _, h, _] = qkv.dims();
        let bias = causal.then(|| {
            let v: Vec<f32> = (0..b * h * t * t)
                .map(|i| if i % t > (i / t) % t { MASKED } else { 0.0 })
                .collect();
            Tensor::from_data(TensorData::new(v, [b, h, t, t]), &qkv.device())
        });
        attention_reference(qkv, bias)
    }

    /// Forward values and the gradient of a weighted sum of the outputs agree with the composed
    /// operations, with and without the causal mask, for shapes that exercise the row
    /// remainders (T and d not multiples of 8).
    #[test]
    fn fused_attention_matches_the_composed_operations() {
        let dev = Default::default();
        for (dims, causal) in [
            ([2, 11, 3, 3, 6], true),
            ([1, 19, 3, 2, 8], false),
            ([3, 8, 3, 1, 4], true),
        ] {
            let [b, t, _, h, d] = dims;
            let x = input(dims, 1);
            let w = input([b, t, 1, h, d], 2);
            let run = |fused: bool| {
                let qkv = Tensor::<Ad, 5>::from_data(TensorData::new(x.clone(), dims), &dev)
                    .require_grad();
                let out = if fused {
                    attention(qkv.clone(), causal).expect("CPU backend has the fused kernel")
                } else {
                    reference(qkv.clone(), causal)
                };
                let wt =
                    Tensor::<Ad, 3>::from_data(TensorData::new(w.clone(), [b, t, h * d]), &dev);
                let grads = (out.clone() * wt).sum().backward();
                let g = qkv.grad(&grads).expect("gradient of the projection");
                (
                    out.into_data().to_vec::<f32>().unwrap_or_default(),
                    g.into_data().to_vec::<f32>().unwrap_or_default(),
                )
            };
            let ((fo, fg), (ro, rg)) = (run(true), run(false));
            assert_eq!((fo.len(), fg.len()), (ro.len(), rg.len()));
            assert!(!fo.is_empty() && !fg.is_empty());
            for (what, a, r) in [("output", &fo, &ro), ("gradient", &fg, &rg)] {
                let worst = a
                    .iter()
                    .zip(r.iter())
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 2e-5,
                    "{dims:?} causal {causal}: {what} differs by {worst}"
                );
            }
            // Without autodiff the same forward kernel runs.
            let plain = attention(
                Tensor::<Flex, 5>::from_data(TensorData::new(x.clone(), dims), &dev),
                causal,
            )
            .expect("CPU backend has the fused kernel")
            .into_data()
            .to_vec::<f32>()
            .unwrap_or_default();
            assert_eq!(plain, fo);
        }
    }
}
