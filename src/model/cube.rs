//! Kernels of the GPU-shaped backends (CUDA, wgpu): the attention softmax as one cubecl kernel
//! forward and backward, self-attention of a fused projection as one autodiff node around it
//! ([`attention`](mod@attention)), and the gradient gather into the optimizer's buffer ([`pack`]).
//!
//! Composed from tensor operations, the softmax of attention scores is a scale, a mask addition
//! (its bias built on the host and uploaded), a max, a subtraction, an exp, a sum and a division
//! forward, and as many element-wise and reduction kernels backward. Here each direction is one
//! kernel that handles one row of scores per cube (units stride over the keys and reduce through
//! shared memory), with the causal mask computed from the row's index:
//!
//! ```text
//! forward    P_ij = exp(scale·S_ij − m_i) / Σ_j' exp(scale·S_ij' − m_i)   (causal: j ≤ i + Tk − T)
//! backward   dS_ij = scale · P_ij (dP_ij − Σ_j' P_ij' dP_ij')
//! ```
//!
//! Statistics accumulate in f32 whatever the tensor's float type. The kernels run on
//! [`CubeBackend`]; under burn's fusion layer each is a custom operation of the fusion stream; the
//! autodiff node keeps the probabilities (which `P·V`'s own node keeps anyway) for the backward
//! kernel. The public functions dispatch on the backend and return `None` on any other.

use super::fused::{cast, same};
use super::layers::Rope;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use cubecl::prelude::{CubeCount, CubeDim};
use kernels::{row_softmax_grad_kernel, row_softmax_kernel};
use std::marker::PhantomData;

/// Units per cube: one row of scores per cube, the units striding over its keys. A power of two
/// (the reductions halve it) that every Vulkan and CUDA device allows in one workgroup.
const BLOCK: usize = 128;

/// How a row of scores is normalized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowSoftmax {
    /// Multiplies the scores before the softmax (`1/√d`).
    pub scale: f32,
    /// Masks key `j` of query `i` when `j > i + Tk − T`.
    pub causal: bool,
}

/// Backends that run the row-softmax kernels: [`CubeBackend`] and the fusion layer over it.
pub trait RowSoftmaxOps: Backend {
    /// Probabilities of the scores `[.., T, Tk]`, row by row.
    fn row_softmax(
        scores: Self::FloatTensorPrimitive,
        op: RowSoftmax,
    ) -> Self::FloatTensorPrimitive;

    /// The scores' gradient from the probabilities and their gradient (same shapes).
    fn row_softmax_grad(
        probs: Self::FloatTensorPrimitive,
        grad: Self::FloatTensorPrimitive,
        op: RowSoftmax,
    ) -> Self::FloatTensorPrimitive;
}

/// The kernels, one cube per row of scores.
mod kernels {
    use cubecl::prelude::*;

    #[cube]
    pub(super) fn block_reduce(shared: &mut SharedMemory<f32>, value: f32, take_max: bool) -> f32 {
        let unit = UNIT_POS as usize;
        shared[unit] = value;
        sync_cube();
        let mut stride = CUBE_DIM_X as usize / 2;
        while stride > 0 {
            if unit < stride {
                let a = shared[unit];
                let b = shared[unit + stride];
                if take_max {
                    if b > a {
                        shared[unit] = b;
                    }
                } else {
                    shared[unit] = a + b;
                }
            }
            sync_cube();
            stride /= 2;
        }
        let total = shared[0];
        sync_cube();
        total
    }

    #[cube(launch)]
    pub(super) fn row_softmax_kernel<F: Float>(
        scores: &Tensor<F>,
        probs: &mut Tensor<F>,
        rows: u32,
        queries: u32,
        keys: u32,
        scale: f32,
        #[comptime] causal: bool,
        #[comptime] block: usize,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        if row >= rows as usize {
            terminate!();
        }
        let tk = keys as usize;
        let base = row * tk;
        let mut end = tk;
        if causal {
            end = row % (queries as usize) + tk - queries as usize + 1;
        }
        let stride = CUBE_DIM_X as usize;
        let mut shared = SharedMemory::<f32>::new(block);

        let mut local = f32::new(-3.0e38);
        let mut j = UNIT_POS as usize;
        while j < end {
            let s = f32::cast_from(scores[base + j]) * scale;
            if s > local {
                local = s;
            }
            j += stride;
        }
        let top = block_reduce(&mut shared, local, true);

        let mut sum = f32::new(0.0);
        let mut j = UNIT_POS as usize;
        while j < end {
            sum += (f32::cast_from(scores[base + j]) * scale - top).exp();
            j += stride;
        }
        let total = block_reduce(&mut shared, sum, false);

        let mut j = UNIT_POS as usize;
        while j < tk {
            let mut p = f32::new(0.0);
            if j < end {
                p = (f32::cast_from(scores[base + j]) * scale - top).exp() / total;
            }
            probs[base + j] = F::cast_from(p);
            j += stride;
        }
    }

    #[cube(launch)]
    pub(super) fn row_softmax_grad_kernel<F: Float>(
        probs: &Tensor<F>,
        grad: &Tensor<F>,
        out: &mut Tensor<F>,
        rows: u32,
        keys: u32,
        scale: f32,
        #[comptime] block: usize,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS;
        if row >= rows as usize {
            terminate!();
        }
        let tk = keys as usize;
        let base = row * tk;
        let stride = CUBE_DIM_X as usize;
        let mut shared = SharedMemory::<f32>::new(block);

        let mut dot = f32::new(0.0);
        let mut j = UNIT_POS as usize;
        while j < tk {
            dot += f32::cast_from(probs[base + j]) * f32::cast_from(grad[base + j]);
            j += stride;
        }
        let total = block_reduce(&mut shared, dot, false);

        let mut j = UNIT_POS as usize;
        while j < tk {
            let p = f32::cast_from(probs[base + j]);
            let g = f32::cast_from(grad[base + j]);
            out[base + j] = F::cast_from(scale * p * (g - total));
            j += stride;
        }
    }
}

/// One cube per row: a 2-D grid when the rows exceed one dimension's limit.
fn row_cubes(rows: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let x = rows.clamp(1, MAX);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

/// `(rows, queries, keys)` of scores `[.., T, Tk]`.
fn row_shape(dims: &[usize]) -> (usize, usize, usize) {
    let n = dims.len();
    let (t, tk) = (dims[n - 2], dims[n - 1]);
    (dims[..n - 1].iter().product(), t, tk)
}

fn u32_of(n: usize, what: &str) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("row softmax: {what} {n} exceeds u32"))
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> RowSoftmaxOps
    for CubeBackend<R, F, I, BT>
{
    fn row_softmax(scores: CubeTensor<R>, op: RowSoftmax) -> CubeTensor<R> {
        let scores = into_contiguous(scores);
        let shape = scores.shape();
        let (rows, t, tk) = row_shape(&shape);
        assert!(
            !op.causal || t <= tk,
            "row softmax: causal rows need T ≤ Tk"
        );
        let dtype = scores.dtype;
        let probs =
            empty_device_dtype::<R>(scores.client.clone(), scores.device.clone(), shape, dtype);
        let client = scores.client.clone();
        row_softmax_kernel::launch::<R>(
            &client,
            row_cubes(rows),
            CubeDim::new_1d(BLOCK as u32),
            scores.into_tensor_arg(),
            probs.clone().into_tensor_arg(),
            u32_of(rows, "rows"),
            u32_of(t, "queries"),
            u32_of(tk, "keys"),
            op.scale,
            op.causal,
            BLOCK,
            dtype.into(),
        );
        probs
    }

    fn row_softmax_grad(
        probs: CubeTensor<R>,
        grad: CubeTensor<R>,
        op: RowSoftmax,
    ) -> CubeTensor<R> {
        let (probs, grad) = (into_contiguous(probs), into_contiguous(grad));
        let shape = probs.shape();
        assert_eq!(shape, grad.shape(), "row softmax: gradient shape");
        let (rows, _, tk) = row_shape(&shape);
        let dtype = probs.dtype;
        let out = empty_device_dtype::<R>(probs.client.clone(), probs.device.clone(), shape, dtype);
        let client = probs.client.clone();
        row_softmax_grad_kernel::launch::<R>(
            &client,
            row_cubes(rows),
            CubeDim::new_1d(BLOCK as u32),
            probs.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            u32_of(rows, "rows"),
            u32_of(tk, "keys"),
            op.scale,
            BLOCK,
            dtype.into(),
        );
        out
    }
}

/// A kernel call recorded in the fusion stream: `N` inputs, one output of the first input's
/// shape and type.
#[derive(Debug)]
struct FusedCall<B, const N: usize> {
    desc: CustomOpIr,
    op: RowSoftmax,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + RowSoftmaxOps, const N: usize> Operation<B::FusionRuntime>
    for FusedCall<B, N>
{
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let (inputs, [out]) = self.desc.as_fixed::<N, 1>();
        let mut tensors = inputs.iter().map(|t| handles.get_float_tensor::<B>(t));
        let result = match (tensors.next(), tensors.next()) {
            (Some(scores), None) => B::row_softmax(scores, self.op),
            (Some(probs), Some(grad)) => B::row_softmax_grad(probs, grad, self.op),
            _ => unreachable!("row softmax: one or two inputs"),
        };
        handles.register_float_tensor::<B>(&out.id, result);
    }
}

fn fused_call<B: FusionBackend + RowSoftmaxOps, const N: usize>(
    name: &'static str,
    inputs: [FusionTensor<B::FusionRuntime>; N],
    op: RowSoftmax,
) -> FusionTensor<B::FusionRuntime> {
    let shape = inputs[0].shape.clone();
    let mut outs = record::<B, _>(name, inputs.into(), vec![shape], |desc| FusedCall::<B, N> {
        desc,
        op,
        _backend: PhantomData,
    });
    outs.pop().expect("row softmax: one output")
}

/// Records a custom operation in the fusion stream: `inputs` in, outputs of `shapes` (in the
/// first input's float type) out, run by the operation `call` makes of its description.
fn record<B: FusionBackend, O: Operation<B::FusionRuntime> + 'static>(
    name: &'static str,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    shapes: Vec<Shape>,
    call: impl FnOnce(CustomOpIr) -> O,
) -> Vec<FusionTensor<B::FusionRuntime>> {
    let (client, dtype) = (inputs[0].client.clone(), inputs[0].dtype);
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outs: Vec<TensorIr> = shapes
        .into_iter()
        .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &irs, &outs);
    client.register(streams, OperationIr::Custom(desc.clone()), call(desc))
}

impl<B: FusionBackend + RowSoftmaxOps> RowSoftmaxOps for Fusion<B> {
    fn row_softmax(
        scores: Self::FloatTensorPrimitive,
        op: RowSoftmax,
    ) -> Self::FloatTensorPrimitive {
        fused_call::<B, 1>("asymm_row_softmax", [scores], op)
    }

    fn row_softmax_grad(
        probs: Self::FloatTensorPrimitive,
        grad: Self::FloatTensorPrimitive,
        op: RowSoftmax,
    ) -> Self::FloatTensorPrimitive {
        fused_call::<B, 2>("asymm_row_softmax_grad", [probs, grad], op)
    }
}

#[derive(Debug)]
struct RowSoftmaxBackward;

impl<B: RowSoftmaxOps> Backward<B, 1> for RowSoftmaxBackward {
    /// The probabilities and the normalization.
    type State = (B::FloatTensorPrimitive, RowSoftmax);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (probs, op) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::row_softmax_grad(probs, grad, op)
        });
    }
}

/// [`RowSoftmaxOps::row_softmax`] as one autodiff node.
fn row_softmax_autodiff<B: RowSoftmaxOps>(
    scores: Tensor<Autodiff<B>, 4>,
    op: RowSoftmax,
) -> Tensor<Autodiff<B>, 4> {
    let x = scores.into_primitive().tensor();
    let out = match RowSoftmaxBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let probs = B::row_softmax(x.primitive, op);
            prep.finish((probs.clone(), op), probs)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::row_softmax(x.primitive, op)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn row_softmax_plain<B: RowSoftmaxOps>(scores: Tensor<B, 4>, op: RowSoftmax) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(B::row_softmax(
        scores.into_primitive().tensor(),
        op,
    )))
}

/// Whether `B` is `X`, with or without autodiff.
fn is_on<B: Backend, X: Backend>() -> bool {
    same::<B, X>() || same::<B, Autodiff<X>>()
}

/// The operations of this module's kernels: what a cubecl backend of this build offers.
pub trait CubeOps: AttentionOps + pack::PackOps + norm::NormOps {}

impl<X: AttentionOps + pack::PackOps + norm::NormOps> CubeOps for X {}

/// A computation on whichever cubecl backend `B` is: `run::<X>` is called with the backend `X`
/// such that `B` is `X` or `Autodiff<X>`.
trait OnCube {
    type Out;
    fn run<X: CubeOps>(self) -> Option<Self::Out>;
}

#[cfg(feature = "cuda")]
type CudaBf16 = burn::backend::Cuda<burn::tensor::bf16>;

/// `f` on the cubecl backend `B` is (see [`OnCube`]); `None` when `B` is none of this build's.
fn on_cube<B: Backend, F: OnCube>(f: F) -> Option<F::Out> {
    #[cfg(feature = "wgpu")]
    if is_on::<B, burn::backend::Wgpu>() {
        return f.run::<burn::backend::Wgpu>();
    }
    #[cfg(feature = "cuda")]
    if is_on::<B, burn::backend::Cuda>() {
        return f.run::<burn::backend::Cuda>();
    }
    #[cfg(feature = "cuda")]
    if is_on::<B, CudaBf16>() {
        return f.run::<CudaBf16>();
    }
    let _ = f;
    None
}

/// Whether `B` runs the kernels of this module (a cubecl backend of this build, with or without
/// autodiff).
pub fn available<B: Backend>() -> bool {
    struct Probe;
    impl OnCube for Probe {
        type Out = ();
        fn run<X: CubeOps>(self) -> Option<()> {
            Some(())
        }
    }
    on_cube::<B, _>(Probe).is_some()
}

/// The row softmax of `scores` [B, H, T, Tk] as one kernel forward and one backward; `None` when
/// `B` is not one of the cubecl backends of this build.
pub fn row_softmax<B: Backend>(scores: Tensor<B, 4>, op: RowSoftmax) -> Option<Tensor<B, 4>> {
    struct Call<B: Backend>(Tensor<B, 4>, RowSoftmax);
    impl<B: Backend> OnCube for Call<B> {
        type Out = Tensor<B, 4>;
        fn run<X: CubeOps>(self) -> Option<Tensor<B, 4>> {
            let Call(scores, op) = self;
            if same::<B, Autodiff<X>>() {
                let scores = cast::<_, Tensor<Autodiff<X>, 4>>(scores)?;
                cast(row_softmax_autodiff(scores, op))
            } else {
                cast(row_softmax_plain(cast::<_, Tensor<X, 4>>(scores)?, op))
            }
        }
    }
    if scores.dims().contains(&0) {
        return None;
    }
    on_cube::<B, _>(Call(scores, op))
}

/// Self-attention of a fused projection `qkv` [B, T, 3, H, d] as one autodiff node
/// ([`attention`](mod@attention)), rotated by `rope` first when given: the context [B, T, H·d].
/// `None` when the backend has no kernel; the caller then composes the operations itself.
pub fn attention<B: Backend>(
    qkv: Tensor<B, 5>,
    causal: bool,
    rope: Option<&Rope<B>>,
) -> Option<Tensor<B, 3>> {
    struct Call<B: Backend>(Tensor<B, 5>, bool, Option<[Tensor<B, 5>; 2]>);
    impl<B: Backend> OnCube for Call<B> {
        type Out = Tensor<B, 3>;
        fn run<X: CubeOps>(self) -> Option<Tensor<B, 3>> {
            let Call(qkv, causal, rope) = self;
            let tables = |inner: fn(Tensor<B, 5>) -> Option<Tensor<X, 5>>| match rope {
                Some([cos, sin]) => Some(Some([inner(cos)?, inner(sin)?])),
                None => Some(None),
            };
            if same::<B, Autodiff<X>>() {
                let rope = tables(|t| Some(cast::<_, Tensor<Autodiff<X>, 5>>(t)?.inner()))?;
                let qkv = cast::<_, Tensor<Autodiff<X>, 5>>(qkv)?;
                cast(attention::autodiff(qkv, rope, causal))
            } else {
                let rope = tables(cast::<_, Tensor<X, 5>>)?;
                cast(attention::plain(
                    cast::<_, Tensor<X, 5>>(qkv)?,
                    rope,
                    causal,
                ))
            }
        }
    }
    let [_, _, three, _, d] = qkv.dims();
    if qkv.dims().contains(&0) || qkv.dtype() == DType::F64 || three != 3 {
        return None;
    }
    if rope.is_some() && d % 2 == 1 {
        return None;
    }
    let rope = rope.map(|r| [r.cos.clone(), r.sin.clone()]);
    on_cube::<B, _>(Call(qkv, causal, rope))
}

/// `x / √(mean(x², last) + epsilon) · gamma` as one autodiff node ([`norm`]); `None` when `B`
/// is not one of the cubecl backends of this build or `gamma` is not as wide as `x`'s last
/// dimension.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    struct Call<B: Backend, const D: usize>(Tensor<B, D>, Tensor<B, 1>, f32);
    impl<B: Backend, const D: usize> OnCube for Call<B, D> {
        type Out = Tensor<B, D>;
        fn run<X: CubeOps>(self) -> Option<Tensor<B, D>> {
            let Call(x, gamma, eps) = self;
            if same::<B, Autodiff<X>>() {
                let x = cast::<_, Tensor<Autodiff<X>, D>>(x)?;
                let gamma = cast::<_, Tensor<Autodiff<X>, 1>>(gamma)?;
                cast(norm::autodiff(x, gamma, eps))
            } else {
                let gamma = cast::<_, Tensor<X, 1>>(gamma)?;
                cast(norm::plain(cast::<_, Tensor<X, D>>(x)?, gamma, eps))
            }
        }
    }
    let dims = x.dims();
    if dims.contains(&0) || dims.last() != Some(&gamma.dims()[0]) || x.dtype() == DType::F64 {
        return None;
    }
    on_cube::<B, _>(Call(x, gamma, epsilon as f32))
}

pub mod attention;
pub mod norm;
pub mod pack;

use attention::AttentionOps;

#[cfg(all(test, feature = "wgpu"))]
mod tests;
