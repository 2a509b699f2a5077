//! Fused training kernels for the CPU backend, forward and backward, each one autodiff node.
//!
//! Composed from tensor operations, a layer of the model is many passes over memory, each with
//! its own autodiff node, plus the copies that change layouts between them. The kernels here run
//! where the backend is Flex (with or without autodiff); for other backends (CUDA) each function
//! returns `None` and the caller composes the operations itself. Each is checked against the
//! composed operations, values and gradients, in its tests.
//!
//! - [`attention`]: self-attention of the fused `[B, T, 3, H, d]` projection, causal or not.
//! - [`silu_gate`]: the gated MLP's `silu(g) ∘ u`.
//! - [`conv2d`]: a convolution as one matrix product per image over its patches (im2col).
//! - [`rms_norm`]: RMS normalization over the last dimension.
//! - [`linear`]: a linear layer on rows.

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor};
use std::any::{Any, TypeId};

/// The CPU backend with autodiff, as training uses it.
type Ad = Autodiff<Flex>;

/// Whether `B` has the fused kernels (the CPU backend, with or without autodiff).
pub fn available<B: Backend>() -> bool {
    same::<B, Ad>() || same::<B, Flex>()
}

macro_rules! avx2_dispatch {
    ($name:ident, $avx2:ident, $any:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { $avx2($($arg),*) };
            }
            $any($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2($($arg: $ty),*) -> $ret {
            $any($($arg),*)
        }
    };
}

mod attention;
mod conv;
mod gate;
mod linear;
mod norm;

pub use attention::attention;
pub use conv::conv2d;
pub use gate::silu_gate;
pub use linear::linear;
pub use norm::rms_norm;

pub(super) fn same<S: 'static, T: 'static>() -> bool {
    TypeId::of::<S>() == TypeId::of::<T>()
}

/// `x` as a `T`, when `S` is `T`.
pub(super) fn cast<S: 'static, T: 'static>(x: S) -> Option<T> {
    (Box::new(x) as Box<dyn Any>)
        .downcast::<T>()
        .ok()
        .map(|t| *t)
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The contiguous CPU tensor of `t` when `B` is Flex.
fn flex_input<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    Some(contiguous(
        cast::<_, Tensor<Flex, D>>(t)?.into_primitive().tensor(),
    ))
}

/// The `len` values of a contiguous f32 tensor.
fn values(t: &FlexTensor, len: usize) -> &[f32] {
    let (start, end) = t
        .layout()
        .contiguous_offsets()
        .expect("fused kernel: operand made contiguous");
    assert_eq!(end - start, len, "fused kernel: operand size");
    &t.storage::<f32>()[start..end]
}

fn flex_tensor(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(v),
        Layout::contiguous(Shape::new_raw(shape.iter().copied().collect())),
        DType::F32,
    )
}

/// A pointer shared by parallel tasks, each of which writes its own disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every user has its tasks write disjoint elements (their own head's columns, their own
// image) and keeps the buffer alive across the parallel loop that uses the pointer.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A matrix operand: base pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat(*const f32, isize, isize);

impl Mat {
    fn t(self) -> Mat {
        Mat(self.0, self.2, self.1)
    }
}

/// `dst = beta · lhs · rhs` (`accumulate`: `dst += …`) for an m×k `lhs` and a k×n `rhs`, spread
/// over up to `threads` threads of the calling rayon pool (1: the calling thread only).
///
/// # Safety
/// Every element the strides reach must lie inside its buffer, and `dst` must not overlap the
/// operands or be written by another thread.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: guaranteed by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0 as *mut f32,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Accumulator lanes of the row reductions (one AVX register of f32).
const LANES: usize = 8;

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in m.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    for (a, &x) in m.iter_mut().zip(chunks.remainder()) {
        *a = if x > *a { x } else { *a };
    }
    m.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x))
}

/// `eˣ` for `x ≤ 0` (scores minus their row's maximum) within 2 ulp, in plain arithmetic that
/// vectorizes: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `eʳ` (Cephes'
/// `expf` coefficients) and `2ⁿ` built in the exponent bits. Below −87 the result is that of −87
/// (≈ 1.6·10⁻³⁸, negligible against the row's maximum, whose term is 1).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.0 { -87.0 } else { x };
    // round(x·log₂e) for x ≤ 0, by truncation toward zero of a value shifted by one half.
    let n = (x * LOG2E - 0.5) as i32;
    let nf = n as f32;
    let r = x - nf * LN2_HI - nf * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0.0f32;
        for i in 0..=100_000 {
            let x = -87.0 * i as f32 / 100_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3.0e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    /// Empty shapes are left to the composed operations instead of reaching the kernels.
    #[test]
    fn empty_shapes_fall_back() {
        let dev = Default::default();
        let z = |s: [usize; 3]| Tensor::<Ad, 3>::zeros(s, &dev);
        assert!(attention(Tensor::<Ad, 5>::zeros([2, 0, 3, 2, 4], &dev), true).is_none());
        assert!(silu_gate(z([2, 0, 4]), z([2, 0, 4])).is_none());
        assert!(rms_norm(z([2, 0, 4]), Tensor::<Ad, 1>::ones([4], &dev), 1e-6).is_none());
        let x = Tensor::<Ad, 2>::zeros([3, 4], &dev);
        assert!(linear(x, Tensor::<Ad, 2>::zeros([4, 0], &dev), None).is_none());
        let img = Tensor::<Ad, 4>::zeros([1, 0, 8, 8], &dev);
        let w = Tensor::<Ad, 4>::zeros([2, 0, 3, 3], &dev);
        assert!(conv2d(img, w, Tensor::<Ad, 1>::zeros([2], &dev), [1, 1], [1, 1]).is_none());
    }
}
