//! Many tensors copied into one flat buffer by a few kernels on the GPU-shaped backends (CUDA,
//! wgpu): the gather of a backward pass's gradients into the multi-tensor optimizer's buffer.
//!
//! Composed from tensor operations, the gather is one slice-assignment kernel per parameter
//! tensor (and a fill for the buffer). Here one kernel copies up to [`PER_LAUNCH`] tensors: the
//! cube row `y` copies tensor `y` (its units striding over the elements) to its offset. The
//! buffer is filled with zeros first only where the parts leave gaps.

use super::super::fused::{cast, same};
use super::{CubeOps, OnCube, on_cube};
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::Operation;
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer};
use cubecl::prelude::{CubeCount, CubeDim, SequenceArg};
use std::marker::PhantomData;

/// Tensors per kernel launch: few enough storage bindings for any Vulkan device.
pub const PER_LAUNCH: usize = 7;

/// Units per cube, and the most cubes along x (a grid-stride loop covers larger tensors).
const BLOCK: u32 = 256;
const MAX_CUBES_X: usize = 65_535;

mod kernels {
    use cubecl::prelude::*;

    #[cube(launch)]
    pub(super) fn pack_kernel<F: Float>(
        parts: &Sequence<Tensor<F>>,
        offsets: Sequence<usize>,
        out: &mut Tensor<F>,
        #[define(F)] _dtype: StorageType,
    ) {
        let n = comptime!(parts.len());
        let which = CUBE_POS_Y as usize;
        let stride = (CUBE_COUNT_X * CUBE_DIM_X) as usize;
        #[unroll]
        for i in 0..n {
            if which == i {
                let part = parts.index(i);
                let offset = offsets[i];
                let mut pos = ABSOLUTE_POS_X as usize;
                while pos < part.len() {
                    out[offset + pos] = part[pos];
                    pos += stride;
                }
            }
        }
    }
}

/// Backends that run the pack kernel: [`CubeBackend`] and the fusion layer over it.
pub trait PackOps: Backend {
    /// A `[len]` buffer holding each part (flattened, at least one) at its offset, zeros
    /// elsewhere.
    fn pack(
        parts: Vec<Self::FloatTensorPrimitive>,
        offsets: &[usize],
        len: usize,
        device: &Self::Device,
    ) -> Self::FloatTensorPrimitive;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> PackOps
    for CubeBackend<R, F, I, BT>
{
    fn pack(
        parts: Vec<CubeTensor<R>>,
        offsets: &[usize],
        len: usize,
        device: &R::Device,
    ) -> CubeTensor<R> {
        let client = R::client(device);
        let dtype = parts.first().map_or(F::dtype(), |p| p.dtype);
        let covered: usize = parts.iter().map(|p| p.meta.num_elements()).sum();
        let out = if covered == len {
            empty_device_dtype::<R>(client.clone(), device.clone(), [len].into(), dtype)
        } else {
            zeros_client::<R>(client.clone(), device.clone(), [len].into(), dtype)
        };
        let parts: Vec<CubeTensor<R>> = parts.into_iter().map(into_contiguous).collect();
        for (chunk, offs) in parts.chunks(PER_LAUNCH).zip(offsets.chunks(PER_LAUNCH)) {
            let longest = chunk
                .iter()
                .map(|p| p.meta.num_elements())
                .max()
                .unwrap_or(0);
            if longest == 0 {
                continue;
            }
            let mut args = SequenceArg::new();
            let mut at = SequenceArg::<R, usize>::new();
            for (p, &o) in chunk.iter().zip(offs) {
                assert_eq!(p.dtype, dtype, "pack: parts of different types");
                args.push(p.clone().into_tensor_arg());
                at.push(o);
            }
            let x = longest.div_ceil(BLOCK as usize).clamp(1, MAX_CUBES_X) as u32;
            kernels::pack_kernel::launch::<R>(
                &client,
                CubeCount::Static(x, chunk.len() as u32, 1),
                CubeDim::new_1d(BLOCK),
                args,
                at,
                out.clone().into_tensor_arg(),
                dtype.into(),
            );
        }
        out
    }
}

/// The pack recorded in the fusion stream: the parts in, the buffer out.
#[derive(Debug)]
struct FusedPack<B> {
    desc: CustomOpIr,
    offsets: Vec<usize>,
    len: usize,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + PackOps> Operation<B::FusionRuntime> for FusedPack<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let parts = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect::<Vec<_>>();
        let device = B::float_device(&parts[0]);
        let out = B::pack(parts, &self.offsets, self.len, &device);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, out);
    }
}

impl<B: FusionBackend + PackOps> PackOps for Fusion<B> {
    fn pack(
        parts: Vec<Self::FloatTensorPrimitive>,
        offsets: &[usize],
        len: usize,
        device: &Self::Device,
    ) -> Self::FloatTensorPrimitive {
        let _ = device;
        let shapes = vec![Shape::new([len])];
        let mut outs = super::record::<B, _>("asymm_pack", parts, shapes, |desc| FusedPack::<B> {
            desc,
            offsets: offsets.to_vec(),
            len,
            _backend: PhantomData,
        });
        outs.pop().expect("pack: one output")
    }
}

fn pack_on<B: Backend, X: PackOps>(
    parts: Vec<(usize, Tensor<B, 1>)>,
    len: usize,
    device: &B::Device,
) -> Option<Tensor<B, 1>> {
    let device: X::Device = cast(device.clone())?;
    let mut offsets = Vec::with_capacity(parts.len());
    let mut prims = Vec::with_capacity(parts.len());
    for (o, p) in parts {
        offsets.push(o);
        prims.push(cast::<_, Tensor<X, 1>>(p)?.into_primitive().tensor());
    }
    let out = X::pack(prims, &offsets, len, &device);
    cast(Tensor::<X, 1>::from_primitive(TensorPrimitive::Float(out)))
}

/// Whether `B` runs the pack kernel (a cubecl backend of this build, without autodiff).
pub fn available<B: Backend>() -> bool {
    struct Probe<B>(PhantomData<B>);
    impl<B: Backend> OnCube for Probe<B> {
        type Out = ();
        fn run<X: CubeOps>(self) -> Option<()> {
            same::<B, X>().then_some(())
        }
    }
    on_cube::<B, _>(Probe::<B>(PhantomData)).is_some()
}

/// A `[len]` buffer holding each `(offset, part)` at its offset, zeros elsewhere, in a few
/// kernels on the cubecl backends of this build; `None` on other backends (see [`available`])
/// or without parts. The parts must not overlap and must fit.
pub fn pack<B: Backend>(
    parts: Vec<(usize, Tensor<B, 1>)>,
    len: usize,
    device: &B::Device,
) -> Option<Tensor<B, 1>> {
    struct Call<'a, B: Backend>(Vec<(usize, Tensor<B, 1>)>, usize, &'a B::Device);
    impl<B: Backend> OnCube for Call<'_, B> {
        type Out = Tensor<B, 1>;
        fn run<X: CubeOps>(self) -> Option<Tensor<B, 1>> {
            let Call(parts, len, device) = self;
            if !same::<B, X>() {
                return None;
            }
            pack_on::<B, X>(parts, len, device)
        }
    }
    if parts.is_empty() {
        return None;
    }
    assert!(
        parts.iter().all(|(o, p)| o + p.dims()[0] <= len),
        "pack: a part beyond the buffer's {len} elements"
    );
    on_cube::<B, _>(Call(parts, len, device))
}
