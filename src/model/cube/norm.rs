//! RMS normalization over the last dimension as one autodiff node on the cubecl backends, with
//! `r = 1 / √(mean(x²) + ε)` per row of width `d`:
//!
//! ```text
//! y = x r γ                                  one kernel (a row per cube), keeping r
//! dx = r (γ ∘ dy) − x r³ Σ(γ ∘ dy ∘ x) / d   one kernel (a row per cube), which also writes
//!                                            the rows of dy ∘ x r
//! dγ = Σ_rows dy ∘ x r                       one reduction (burn's)
//! ```
//!
//! Composed (burn's `RmsNorm`), the forward is a square, a mean, an addition, a square root, a
//! division and a scale, and the backward a few more element-wise blocks and reductions. Sums
//! accumulate in f32 whatever the tensors' float type; `r` is kept in that type, as the composed
//! path's `rms` is.

use super::kernels::block_reduce;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::Operation;
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};
use cubecl::prelude::{CubeCount, CubeDim};
use std::marker::PhantomData;

/// Units per cube: one row per cube, the units striding over its width.
const BLOCK: usize = 128;

/// Backends that run the normalization's kernels: [`CubeBackend`] and the fusion layer over it.
pub trait NormOps: Backend {
    /// `x` [.., d] and `gamma` [d] → `y` (the shape of `x`) and `r` [rows].
    fn rms_norm_forward(
        x: Self::FloatTensorPrimitive,
        gamma: Self::FloatTensorPrimitive,
        epsilon: f32,
    ) -> [Self::FloatTensorPrimitive; 2];

    /// `dx` (the shape of `x`) and `dγ` [d] from `dy`, `x`, `gamma` and the forward's `r`.
    fn rms_norm_backward(
        dy: Self::FloatTensorPrimitive,
        x: Self::FloatTensorPrimitive,
        gamma: Self::FloatTensorPrimitive,
        r: Self::FloatTensorPrimitive,
    ) -> [Self::FloatTensorPrimitive; 2];
}

mod kernels {
    use super::block_reduce;
    use cubecl::prelude::*;

    #[cube(launch)]
    pub(super) fn rms_norm_kernel<F: Float>(
        x: &Tensor<F>,
        gamma: &Tensor<F>,
        y: &mut Tensor<F>,
        r: &mut Tensor<F>,
        rows: u32,
        width: u32,
        epsilon: f32,
        #[comptime] block: usize,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        if row >= rows as usize {
            terminate!();
        }
        let d = width as usize;
        let base = row * d;
        let stride = CUBE_DIM_X as usize;
        let mut shared = SharedMemory::<f32>::new(block);
        let mut squares = f32::new(0.0);
        let mut j = UNIT_POS as usize;
        while j < d {
            let v = f32::cast_from(x[base + j]);
            squares += v * v;
            j += stride;
        }
        let total = block_reduce(&mut shared, squares, false);
        let inv = f32::new(1.0) / (total / f32::cast_from(width) + epsilon).sqrt();
        if UNIT_POS == 0 {
            r[row] = F::cast_from(inv);
        }
        let mut j = UNIT_POS as usize;
        while j < d {
            let v = f32::cast_from(x[base + j]) * inv * f32::cast_from(gamma[j]);
            y[base + j] = F::cast_from(v);
            j += stride;
        }
    }

    #[cube(launch)]
    pub(super) fn rms_norm_dx_kernel<F: Float>(
        dy: &Tensor<F>,
        x: &Tensor<F>,
        gamma: &Tensor<F>,
        r: &Tensor<F>,
        dx: &mut Tensor<F>,
        scaled: &mut Tensor<F>,
        rows: u32,
        width: u32,
        #[comptime] block: usize,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        if row >= rows as usize {
            terminate!();
        }
        let d = width as usize;
        let base = row * d;
        let stride = CUBE_DIM_X as usize;
        let mut shared = SharedMemory::<f32>::new(block);
        let mut dot = f32::new(0.0);
        let mut j = UNIT_POS as usize;
        while j < d {
            let g = f32::cast_from(dy[base + j]) * f32::cast_from(gamma[j]);
            dot += g * f32::cast_from(x[base + j]);
            j += stride;
        }
        let total = block_reduce(&mut shared, dot, false);
        let inv = f32::cast_from(r[row]);
        let c = inv * inv * inv * total / f32::cast_from(width);
        let mut j = UNIT_POS as usize;
        while j < d {
            let e = f32::cast_from(dy[base + j]);
            let v = f32::cast_from(x[base + j]);
            dx[base + j] = F::cast_from(inv * e * f32::cast_from(gamma[j]) - v * c);
            scaled[base + j] = F::cast_from(e * v * inv);
            j += stride;
        }
    }
}

/// `(rows, d)` of a `[.., d]` shape.
fn rows_of(shape: &Shape) -> (usize, usize) {
    let d = shape[shape.len() - 1];
    (shape.iter().product::<usize>() / d.max(1), d)
}

/// One cube per row: a 2-D grid when the rows exceed one dimension's limit.
fn row_cubes(rows: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let x = rows.clamp(1, MAX);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("rms norm: dimension {n} exceeds u32"))
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> NormOps
    for CubeBackend<R, F, I, BT>
{
    fn rms_norm_forward(
        x: CubeTensor<R>,
        gamma: CubeTensor<R>,
        epsilon: f32,
    ) -> [CubeTensor<R>; 2] {
        let (x, gamma) = (into_contiguous(x), into_contiguous(gamma));
        let shape = x.shape();
        let (rows, d) = rows_of(&shape);
        let (client, device, dtype) = (x.client.clone(), x.device.clone(), x.dtype);
        let y = empty_device_dtype::<R>(client.clone(), device.clone(), shape, dtype);
        let r = empty_device_dtype::<R>(client.clone(), device, Shape::new([rows]), dtype);
        rms_norm_kernel::launch::<R>(
            &client,
            row_cubes(rows),
            CubeDim::new_1d(BLOCK as u32),
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            r.clone().into_tensor_arg(),
            u32_of(rows),
            u32_of(d),
            epsilon,
            BLOCK,
            dtype.into(),
        );
        [y, r]
    }

    fn rms_norm_backward(
        dy: CubeTensor<R>,
        x: CubeTensor<R>,
        gamma: CubeTensor<R>,
        r: CubeTensor<R>,
    ) -> [CubeTensor<R>; 2] {
        let [dy, x, gamma, r] = [dy, x, gamma, r].map(into_contiguous);
        let shape = x.shape();
        let (rows, d) = rows_of(&shape);
        let (client, dtype) = (x.client.clone(), x.dtype);
        let [dx, scaled] = std::array::from_fn(|_| {
            empty_device_dtype::<R>(client.clone(), x.device.clone(), shape.clone(), dtype)
        });
        rms_norm_dx_kernel::launch::<R>(
            &client,
            row_cubes(rows),
            CubeDim::new_1d(BLOCK as u32),
            dy.into_tensor_arg(),
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            r.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            scaled.clone().into_tensor_arg(),
            u32_of(rows),
            u32_of(d),
            BLOCK,
            dtype.into(),
        );
        let scaled = Self::float_reshape(scaled, Shape::new([rows, d]));
        let dgamma = Self::float_reshape(Self::float_sum_dim(scaled, 0), Shape::new([d]));
        [dx, dgamma]
    }
}

use kernels::{rms_norm_dx_kernel, rms_norm_kernel};

/// A kernel call recorded in the fusion stream.
#[derive(Debug)]
struct FusedNorm<B> {
    desc: CustomOpIr,
    epsilon: Option<f32>,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + NormOps> Operation<B::FusionRuntime> for FusedNorm<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let inputs: Vec<_> = (self.desc.inputs.iter())
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect();
        let mut inputs = inputs.into_iter();
        let mut next = || inputs.next().expect("rms norm: the recorded inputs");
        let outputs: Vec<B::FloatTensorPrimitive> = match self.epsilon {
            Some(eps) => B::rms_norm_forward(next(), next(), eps).into(),
            None => B::rms_norm_backward(next(), next(), next(), next()).into(),
        };
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, t);
        }
    }
}

/// Records a norm kernel with `inputs` and outputs of `shapes`.
fn record<B: FusionBackend + NormOps>(
    name: &'static str,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    shapes: Vec<Shape>,
    epsilon: Option<f32>,
) -> Vec<FusionTensor<B::FusionRuntime>> {
    super::record::<B, _>(name, inputs, shapes, |desc| FusedNorm::<B> {
        desc,
        epsilon,
        _backend: PhantomData,
    })
}

impl<B: FusionBackend + NormOps> NormOps for Fusion<B> {
    fn rms_norm_forward(
        x: Self::FloatTensorPrimitive,
        gamma: Self::FloatTensorPrimitive,
        epsilon: f32,
    ) -> [Self::FloatTensorPrimitive; 2] {
        let shape = x.shape.clone();
        let (rows, _) = rows_of(&shape);
        let shapes = vec![shape, Shape::new([rows])];
        let outs = record::<B>("asymm_rms_norm", vec![x, gamma], shapes, Some(epsilon));
        outs.try_into().expect("rms norm: two outputs")
    }

    fn rms_norm_backward(
        dy: Self::FloatTensorPrimitive,
        x: Self::FloatTensorPrimitive,
        gamma: Self::FloatTensorPrimitive,
        r: Self::FloatTensorPrimitive,
    ) -> [Self::FloatTensorPrimitive; 2] {
        let shape = x.shape.clone();
        let d = gamma.shape[0];
        let shapes = vec![shape, Shape::new([d])];
        let outs = record::<B>(
            "asymm_rms_norm_backward",
            vec![dy, x, gamma, r],
            shapes,
            None,
        );
        outs.try_into().expect("rms norm: two outputs")
    }
}

#[derive(Debug)]
struct NormBackward;

impl<B: NormOps> Backward<B, 2> for NormBackward {
    /// The input, gamma and each row's `r`.
    type State = [B::FloatTensorPrimitive; 3];

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x, gamma, r] = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let [dx, dgamma] = B::rms_norm_backward(dy, x, gamma, r);
        let [px, pg] = ops.parents;
        if let Some(node) = px {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = pg {
            grads.register::<B>(node.id, dgamma);
        }
    }
}

/// The normalization as one autodiff node.
pub(super) fn autodiff<B: NormOps, const D: usize>(
    x: Tensor<Autodiff<B>, D>,
    gamma: Tensor<Autodiff<B>, 1>,
    epsilon: f32,
) -> Tensor<Autodiff<B>, D> {
    let x = x.into_primitive().tensor();
    let g = gamma.into_primitive().tensor();
    let out = match NormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), g.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let [y, r] = B::rms_norm_forward(x.primitive.clone(), g.primitive.clone(), epsilon);
            prep.finish([x.primitive, g.primitive, r], y)
        }
        OpsKind::UnTracked(prep) => {
            let [y, _] = B::rms_norm_forward(x.primitive, g.primitive, epsilon);
            prep.finish(y)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The normalization without autodiff.
pub(super) fn plain<B: NormOps, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f32,
) -> Tensor<B, D> {
    let x = x.into_primitive().tensor();
    let [y, _] = B::rms_norm_forward(x, gamma.into_primitive().tensor(), epsilon);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}
