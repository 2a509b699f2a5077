//! A linear layer on rows as one node: one matrix product, then the bias added to each row (in
//! that order, as burn's layer does: accumulating the product onto the bias would make a row's
//! result depend on how many rows there are, the matrix library treating one row apart); the
//! backward products read the transposed operands in place (strides, no copies) and the bias
//! gradient is a column sum:
//!
//! ```text
//! y = x W + b      dx = dy Wᵀ      dW = xᵀ dy      db = Σ_rows dy
//! ```

use super::{Ad, Mat, available, cast, contiguous, flex_input, flex_tensor, same, values};
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

/// `x` [N, in] times `weight` [in, out] plus `bias` [out]: [N, out]. `None` when the backend has
/// no fused kernel, the shapes do not fit or the tensors are not f32.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Option<Tensor<B, 2>> {
    let ([n, i], [wi, o]) = (x.dims(), weight.dims());
    let dims = Dims { n, i, o };
    let f32s = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    let empty = n == 0 || i == 0 || o == 0;
    if !available::<B>()
        || wi != i
        || !f32s
        || empty
        || bias.as_ref().is_some_and(|b| b.dims()[0] != o)
    {
        return None;
    }
    if same::<B, Ad>() {
        let x = cast::<_, Tensor<Ad, 2>>(x)?.into_primitive().tensor();
        let w = cast::<_, Tensor<Ad, 2>>(weight)?.into_primitive().tensor();
        let (xi, wi) = (
            contiguous(x.primitive.clone()),
            contiguous(w.primitive.clone()),
        );
        let out = match bias {
            Some(bias) => {
                let b = cast::<_, Tensor<Ad, 1>>(bias)?.into_primitive().tensor();
                let bi = contiguous(b.primitive.clone());
                let y = dims.forward(&xi, &wi, Some(&bi));
                match LinearBackward
                    .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((xi, wi, dims), y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                }
            }
            None => {
                let y = dims.forward(&xi, &wi, None);
                match LinearBackward
                    .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((xi, wi, dims), y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                }
            }
        };
        return cast(Tensor::<Ad, 2>::from_primitive(TensorPrimitive::Float(out)));
    }
    let (x, w) = (flex_input(x)?, flex_input(weight)?);
    let b = match bias {
        Some(b) => Some(flex_input(b)?),
        None => None,
    };
    let y = dims.forward(&x, &w, b.as_ref());
    cast(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(y)))
}

/// Rows, input width, output width.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    i: usize,
    o: usize,
}

impl Dims {
    fn forward(&self, x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor {
        let Dims { n, i, o } = *self;
        let (x, w) = (values(x, n * i), values(w, i * o));
        let mut y = vec![0.0f32; n * o];
        // SAFETY: x is n×i, W is i×o, y is n×o, each a whole buffer of that size.
        unsafe {
            gemm(
                n,
                o,
                i,
                Mat(y.as_mut_ptr(), o as isize, 1),
                Mat(x.as_ptr(), i as isize, 1),
                Mat(w.as_ptr(), o as isize, 1),
            );
        }
        if let Some(b) = b {
            let b = values(b, o);
            for row in y.chunks_exact_mut(o) {
                row.iter_mut().zip(b).for_each(|(v, &c)| *v += c);
            }
        }
        flex_tensor(y, &[n, o])
    }

    /// The gradients of x, W and b that are asked for.
    fn backward(
        &self,
        x: &FlexTensor,
        w: &FlexTensor,
        dy: FlexTensor,
        [want_x, want_w, want_b]: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let Dims { n, i, o } = *self;
        let dy = contiguous(dy);
        let (x, w, g) = (values(x, n * i), values(w, i * o), values(&dy, n * o));
        let dx = want_x.then(|| {
            let mut dx = vec![0.0f32; n * i];
            // SAFETY: dy is n×o, Wᵀ is o×i (W read transposed), dx is n×i.
            unsafe {
                gemm(
                    n,
                    i,
                    o,
                    Mat(dx.as_mut_ptr(), i as isize, 1),
                    Mat(g.as_ptr(), o as isize, 1),
                    Mat(w.as_ptr(), o as isize, 1).t(),
                );
            }
            flex_tensor(dx, &[n, i])
        });
        let dw = want_w.then(|| {
            let mut dw = vec![0.0f32; i * o];
            // SAFETY: xᵀ is i×n (x read transposed), dy is n×o, dW is i×o.
            unsafe {
                gemm(
                    i,
                    o,
                    n,
                    Mat(dw.as_mut_ptr(), o as isize, 1),
                    Mat(x.as_ptr(), i as isize, 1).t(),
                    Mat(g.as_ptr(), o as isize, 1),
                );
            }
            flex_tensor(dw, &[i, o])
        });
        let db = want_b.then(|| {
            let mut db = vec![0.0f32; o];
            for row in g.chunks_exact(o) {
                db.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
            flex_tensor(db, &[o])
        });
        [dx, dw, db]
    }
}

/// `dst = lhs · rhs`, spread over the calling pool's threads when it is large (the threshold
/// burn-flex's matrix product uses).
///
/// # Safety
/// As [`super::matmul`].
unsafe fn gemm(m: usize, n: usize, k: usize, dst: Mat, lhs: Mat, rhs: Mat) {
    const PARALLEL: usize = 192 * 192 * 192;
    let threads = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL {
        rayon::current_num_threads()
    } else {
        1
    };
    // SAFETY: guaranteed by the caller.
    unsafe { super::matmul(m, n, k, dst, lhs, rhs, 1.0, false, threads) }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    /// The input, the weight, the shape.
    type State = (FlexTensor, FlexTensor, Dims);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, dims) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let want = ops.parents.each_ref().map(Option::is_some);
        let out = dims.backward(&x, &w, dy, want);
        for (parent, grad) in ops.parents.into_iter().zip(out) {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

impl Backward<Flex, 2> for LinearBackward {
    /// The input, the weight, the shape.
    type State = (FlexTensor, FlexTensor, Dims);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, dims) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let [px, pw] = ops.parents;
        let want = [px.is_some(), pw.is_some(), false];
        let [dx, dw, _] = dims.backward(&x, &w, dy, want);
        for (parent, grad) in [(px, dx), (pw, dw)] {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::TensorData;

    /// Values and the gradients of input, weight and bias agree with burn's `Linear`, with and
    /// without a bias.
    #[test]
    fn fused_linear_matches_burns() {
        let dev = Default::default();
        let (n, i, o) = (13, 9, 11);
        let val = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|k| ((k * 7919 + seed * 104_729) % 1009) as f32 / 504.5 - 1.0)
                .collect()
        };
        for with_bias in [true, false] {
            let run = |fused: bool| {
                B::seed(&dev, 3);
                let layer = LinearConfig::new(i, o)
                    .with_bias(with_bias)
                    .init::<Ad>(&dev);
                let x = Tensor::<Ad, 2>::from_data(TensorData::new(val(n * i, 1), [n, i]), &dev)
                    .require_grad();
                let y = if fused {
                    linear(
                        x.clone(),
                        layer.weight.val(),
                        layer.bias.as_ref().map(|b| b.val()),
                    )
                    .expect("CPU backend has the fused kernel")
                } else {
                    layer.forward(x.clone())
                };
                let wt = Tensor::<Ad, 2>::from_data(TensorData::new(val(n * o, 2), [n, o]), &dev);
                let grads = (y.clone() * wt).sum().backward();
                let v = |t: Option<Tensor<Flex, 2>>| {
                    t.and_then(|t| t.into_data().to_vec::<f32>().ok())
                        .unwrap_or_default()
                };
                let db = layer
                    .bias
                    .as_ref()
                    .and_then(|b| b.grad(&grads))
                    .and_then(|g| g.into_data().to_vec::<f32>().ok())
                    .unwrap_or_default();
                (
                    y.into_data().to_vec::<f32>().unwrap_or_default(),
                    v(x.grad(&grads)),
                    v(layer.weight.grad(&grads)),
                    db,
                )
            };
            let (f, r) = (run(true), run(false));
            for (what, a, b) in [
                ("output", &f.0, &r.0),
                ("dx", &f.1, &r.1),
                ("dw", &f.2, &r.2),
                ("db", &f.3, &r.3),
            ] {
                assert_eq!(a.len(), b.len(), "{what}");
                assert!(what == "db" && !with_bias || !a.is_empty(), "{what}");
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{what}: {x} vs {y}"
                    );
                }
            }
        }
    }

    type B = Ad;
}
