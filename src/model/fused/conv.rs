//! A 2-d convolution (one group, no dilation, symmetric zero padding) as one matrix product per
//! image over its patches, forward and backward:
//!
//! ```text
//! C_b = im2col(x_b) [Cin·KH·KW, OH·OW]     y_b = W C_b + bias   (written as [Cout, OH, OW])
//! dW = Σ_b dy_b C_bᵀ     dbias = Σ_{b,p} dy     dx_b = col2im(Wᵀ dy_b)
//! ```
//!
//! The patch matrices are kept for the backward pass; `dx` is computed only when the input needs
//! a gradient (not for the images themselves).

use super::{
    Ad, Mat, Out, available, cast, contiguous, flex_input, flex_tensor, matmul, same, values,
};
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;
use std::sync::Arc;

/// `x` [B, Cin, H, W] convolved with `weight` [Cout, Cin, KH, KW] plus `bias` [Cout], with
/// `stride` and zero `padding` on each side: [B, Cout, OH, OW]. `None` when the backend has no
/// fused kernel, the shapes do not fit or the tensors are not f32.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Option<Tensor<B, 4>> {
    let geo = Geo::new(x.dims(), weight.dims(), bias.dims()[0], stride, padding)?;
    if !available::<B>() || [x.dtype(), weight.dtype(), bias.dtype()] != [DType::F32; 3] {
        return None;
    }
    if same::<B, Ad>() {
        let x = cast::<_, Tensor<Ad, 4>>(x)?.into_primitive().tensor();
        let w = cast::<_, Tensor<Ad, 4>>(weight)?.into_primitive().tensor();
        let b = cast::<_, Tensor<Ad, 1>>(bias)?.into_primitive().tensor();
        let (xi, wi, bi) = (
            contiguous(x.primitive.clone()),
            contiguous(w.primitive.clone()),
            contiguous(b.primitive.clone()),
        );
        let (out, cols) = forward(
            values(&xi, geo.input_len()),
            values(&wi, geo.o * geo.k()),
            values(&bi, geo.o),
            geo,
        );
        let out = flex_tensor(out, &geo.output_shape());
        let out = match ConvBackward
            .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((Arc::new(cols), wi, geo), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return cast(Tensor::<Ad, 4>::from_primitive(TensorPrimitive::Float(out)));
    }
    let (x, w, b) = (flex_input(x)?, flex_input(weight)?, flex_input(bias)?);
    let (out, _) = forward(
        values(&x, geo.input_len()),
        values(&w, geo.o * geo.k()),
        values(&b, geo.o),
        geo,
    );
    cast(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(
        flex_tensor(out, &geo.output_shape()),
    )))
}

/// Shapes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geo {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Geo {
    fn new(
        [b, c, h, w]: [usize; 4],
        [o, ci, kh, kw]: [usize; 4],
        bias: usize,
        [sh, sw]: [usize; 2],
        [ph, pw]: [usize; 2],
    ) -> Option<Geo> {
        let fits = ci == c && bias == o && [b, c, h, w, o, sh, sw, kh, kw].iter().all(|&n| n > 0);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        (fits && hp >= kh && wp >= kw).then(|| Geo {
            b,
            c,
            h,
            w,
            o,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh: (hp - kh) / sh + 1,
            ow: (wp - kw) / sw + 1,
        })
    }
    /// Rows of a patch matrix.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Columns of a patch matrix (output positions).
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn input_len(&self) -> usize {
        self.b * self.c * self.h * self.w
    }
    fn output_shape(&self) -> [usize; 4] {
        [self.b, self.o, self.oh, self.ow]
    }

    /// For patch row `(ci, ky, kx)` and output row `oy`: the input row's offset in the image and
    /// the input column of each output column (`None` in the padding).
    fn each_tap(
        &self,
        mut f: impl FnMut(usize, usize, Option<usize>, &mut dyn Iterator<Item = Option<usize>>),
    ) {
        for ci in 0..self.c {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let r = (ci * self.kh + ky) * self.kw + kx;
                    for oy in 0..self.oh {
                        let iy = (oy * self.sh + ky)
                            .checked_sub(self.ph)
                            .filter(|&y| y < self.h);
                        let mut cols = (0..self.ow).map(|ox| {
                            (ox * self.sw + kx)
                                .checked_sub(self.pw)
                                .filter(|&x| x < self.w)
                        });
                        f(r, oy, iy.map(|y| (ci * self.h + y) * self.w), &mut cols);
                    }
                }
            }
        }
    }

    /// The patch matrix [K, P] of one image [C, H, W].
    fn im2col(&self, image: &[f32], cols: &mut [f32]) {
        let (p, ow) = (self.p(), self.ow);
        self.each_tap(|r, oy, row, xs| {
            let dst = &mut cols[r * p + oy * ow..r * p + (oy + 1) * ow];
            match row {
                None => dst.fill(0.0),
                Some(row) => {
                    for (d, x) in dst.iter_mut().zip(xs) {
                        *d = x.map_or(0.0, |x| image[row + x]);
                    }
                }
            }
        });
    }

    /// Adds a patch matrix's gradient [K, P] into its image's gradient [C, H, W].
    fn col2im(&self, cols: &[f32], image: &mut [f32]) {
        let (p, ow) = (self.p(), self.ow);
        self.each_tap(|r, oy, row, xs| {
            if let Some(row) = row {
                let src = &cols[r * p + oy * ow..r * p + (oy + 1) * ow];
                for (&s, x) in src.iter().zip(xs) {
                    if let Some(x) = x {
                        image[row + x] += s;
                    }
                }
            }
        });
    }
}

/// The output [B, Cout, OH, OW] and the patch matrices [B, K, P].
fn forward(x: &[f32], weight: &[f32], bias: &[f32], geo: Geo) -> (Vec<f32>, Vec<f32>) {
    let (k, p, o) = (geo.k(), geo.p(), geo.o);
    let mut out = vec![0.0f32; geo.b * o * p];
    let mut cols = vec![0.0f32; geo.b * k * p];
    out.par_chunks_mut(o * p)
        .zip(cols.par_chunks_mut(k * p))
        .enumerate()
        .for_each(|(bi, (y, c))| {
            geo.im2col(&x[bi * geo.c * geo.h * geo.w..][..geo.c * geo.h * geo.w], c);
            // SAFETY: W is o×k, C is k×p, y is o×p: each a whole buffer of that size, y this
            // task's own image.
            unsafe {
                matmul(
                    o,
                    p,
                    k,
                    Mat(y.as_mut_ptr(), p as isize, 1),
                    Mat(weight.as_ptr(), k as isize, 1),
                    Mat(c.as_ptr(), p as isize, 1),
                    1.0,
                    false,
                    1,
                );
            }
            for (row, &b) in y.chunks_exact_mut(p).zip(bias) {
                row.iter_mut().for_each(|v| *v += b);
            }
        });
    (out, cols)
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    /// The patch matrices, the weight, the shapes.
    type State = (Arc<Vec<f32>>, FlexTensor, Geo);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (cols, weight, geo) = ops.state;
        let (k, p, o) = (geo.k(), geo.p(), geo.o);
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let dy = values(&dy, geo.b * o * p);
        let [px, pw, pb] = ops.parents;
        if let Some(node) = pw {
            let mut dw = vec![0.0f32; o * k];
            for bi in 0..geo.b {
                // SAFETY: dy_b is o×p, C_bᵀ is p×k (C_b read transposed), dW is o×k.
                unsafe {
                    matmul(
                        o,
                        k,
                        p,
                        Mat(dw.as_mut_ptr(), k as isize, 1),
                        Mat(dy[bi * o * p..].as_ptr(), p as isize, 1),
                        Mat(cols[bi * k * p..].as_ptr(), p as isize, 1).t(),
                        1.0,
                        bi > 0,
                        1,
                    );
                }
            }
            grads.register::<Flex>(node.id, flex_tensor(dw, &[geo.o, geo.c, geo.kh, geo.kw]));
        }
        if let Some(node) = pb {
            let mut db = vec![0.0f32; o];
            for image in dy.chunks_exact(o * p) {
                for (d, row) in db.iter_mut().zip(image.chunks_exact(p)) {
                    *d += row.iter().sum::<f32>();
                }
            }
            grads.register::<Flex>(node.id, flex_tensor(db, &[o]));
        }
        if let Some(node) = px {
            let w = values(&weight, o * k);
            let size = geo.c * geo.h * geo.w;
            let mut dx = vec![0.0f32; geo.input_len()];
            let dst = Out(dx.as_mut_ptr());
            (0..geo.b).into_par_iter().for_each_init(
                || vec![0.0f32; k * p],
                |dc, bi| {
                    // SAFETY: Wᵀ is k×o (W read transposed), dy_b is o×p, dc is k×p.
                    unsafe {
                        matmul(
                            k,
                            p,
                            o,
                            Mat(dc.as_mut_ptr(), p as isize, 1),
                            Mat(w.as_ptr(), k as isize, 1).t(),
                            Mat(dy[bi * o * p..].as_ptr(), p as isize, 1),
                            1.0,
                            false,
                            1,
                        );
                    }
                    // SAFETY: image bi's gradient is this task's own `size` elements of `dx`.
                    let image = unsafe { std::slice::from_raw_parts_mut(dst.at(bi * size), size) };
                    geo.col2im(dc, image);
                },
            );
            grads.register::<Flex>(node.id, flex_tensor(dx, &[geo.b, geo.c, geo.h, geo.w]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::ops::ConvOptions;

    /// Values and the gradients of input, weight and bias agree with burn's convolution, for
    /// strides 1 and 2, padding 0 and 1, odd sizes and several channels.
    #[test]
    fn fused_conv_matches_burns_convolution() {
        let dev = Default::default();
        for (x_shape, w_shape, stride, pad) in [
            ([2, 3, 9, 7], [4, 3, 3, 3], [2, 2], [1, 1]),
            ([1, 2, 6, 6], [3, 2, 3, 3], [1, 1], [0, 0]),
            ([3, 1, 8, 8], [2, 1, 3, 3], [2, 1], [1, 0]),
        ] {
            let val = |n: usize, seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5 - 1.0)
                    .collect()
            };
            let (xv, wv, bv) = (
                val(x_shape.iter().product(), 1),
                val(w_shape.iter().product(), 2),
                val(w_shape[0], 3),
            );
            let run = |fused: bool| {
                let x = Tensor::<Ad, 4>::from_data(TensorData::new(xv.clone(), x_shape), &dev)
                    .require_grad();
                let w = Tensor::<Ad, 4>::from_data(TensorData::new(wv.clone(), w_shape), &dev)
                    .require_grad();
                let b = Tensor::<Ad, 1>::from_data(TensorData::new(bv.clone(), [w_shape[0]]), &dev)
                    .require_grad();
                let y = if fused {
                    conv2d(x.clone(), w.clone(), b.clone(), stride, pad)
                        .expect("CPU backend has the fused kernel")
                } else {
                    burn_conv2d(
                        x.clone(),
                        w.clone(),
                        Some(b.clone()),
                        ConvOptions::new(stride, pad, [1, 1], 1),
                    )
                };
                let n = y.dims().iter().product::<usize>();
                let wt = Tensor::<Ad, 4>::from_data(TensorData::new(val(n, 4), y.dims()), &dev);
                let grads = (y.clone() * wt).sum().backward();
                let v = |t: Option<Vec<f32>>| t.unwrap_or_default();
                (
                    y.into_data().to_vec::<f32>().unwrap_or_default(),
                    v(x.grad(&grads).and_then(|g| g.into_data().to_vec().ok())),
                    v(w.grad(&grads).and_then(|g| g.into_data().to_vec().ok())),
                    v(b.grad(&grads).and_then(|g| g.into_data().to_vec().ok())),
                )
            };
            let (f, r) = (run(true), run(false));
            for (what, a, b) in [
                ("output", &f.0, &r.0),
                ("dx", &f.1, &r.1),
                ("dw", &f.2, &r.2),
                ("db", &f.3, &r.3),
            ] {
                assert!(
                    !a.is_empty() && a.len() == b.len(),
                    "{what}: {} vs {}",
                    a.len(),
                    b.len()
                );
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{x_shape:?} stride {stride:?} pad {pad:?}: {what} {x} vs {y}"
                    );
                }
            }
        }
    }
}
