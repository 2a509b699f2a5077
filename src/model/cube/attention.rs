//! Self-attention of a fused, rotated projection as one autodiff node on the cubecl backends:
//! the projection `qkv` [B, T, 3, H, d] in, the context [B, T, H·d] out, with the backward pass
//! writing the query, key and value gradients straight into one `dqkv`.
//!
//! Composed from tensor operations, attention of a fused projection is three slices of it (each
//! made contiguous for the products), the products and the softmax, and the heads merged back;
//! backward, each slice's gradient is a zero fill plus a slice assignment, summed, besides the
//! products'. Here:
//!
//! ```text
//! forward    q, k, v = qkv split into heads                one kernel
//!            P = softmax(scale·q kᵀ, causal)              one product, the row-softmax kernel
//!            ctx = (P v) with heads merged                one product, one copy
//! backward   dO = dctx split into heads                   one copy
//!            dv = Pᵀ dO,  dP = dO vᵀ                      two products
//!            dS = scale · P ∘ (dP − rowsum(dP ∘ P))       the row-softmax gradient kernel
//!            dq = dS k,  dk = dSᵀ q                       two products
//!            dqkv = [dq, dk, dv] as [B, T, 3, H, d]       one interleaving kernel
//! ```
//!
//! The products are burn's (autotuned) matmuls on contiguous or transposed operands, so none
//! copies its inputs. The node keeps the probabilities (as `P·V`'s node would) and the
//! contiguous `q`, `k`, `v` (together the size of the projection).

use super::{RowSoftmax, RowSoftmaxOps};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::CubeDim;
use std::marker::PhantomData;

/// Backends that run attention as one node: [`CubeBackend`] and the fusion layer over it.
pub trait AttentionOps: RowSoftmaxOps {
    /// `qkv` [B, T, 3, H, d] → the context [B, T, H·d], then what the backward pass needs: the
    /// probabilities [B, H, T, T] and the contiguous `q`, `k`, `v` [B, H, T, d].
    fn attention_forward(
        qkv: Self::FloatTensorPrimitive,
        causal: bool,
    ) -> [Self::FloatTensorPrimitive; 5];

    /// The projection's gradient [B, T, 3, H, d] from the context's [B, T, H·d] and the saved
    /// `[probs, q, k, v]`.
    fn attention_backward(
        grad: Self::FloatTensorPrimitive,
        saved: [Self::FloatTensorPrimitive; 4],
        causal: bool,
    ) -> Self::FloatTensorPrimitive;
}

mod kernels {
    use cubecl::prelude::*;

    /// Where element `pos` of a projection [B, T, 3, H, d] lives among the heads [B, H, T, d]:
    /// its slot (0 query, 1 key, 2 value) and its index in that slot's tensor.
    #[cube]
    fn head_index(pos: usize, heads: u32, len: u32, width: u32) -> (usize, usize) {
        let (h, t, d) = (heads as usize, len as usize, width as usize);
        let e = pos % d;
        let rest = pos / d;
        let head = rest % h;
        let rest = rest / h;
        let slot = rest % 3;
        let rest = rest / 3;
        let step = rest % t;
        let row = rest / t;
        (slot, ((row * h + head) * t + step) * d + e)
    }

    /// `q`, `k`, `v` [B, H, T, d] from a contiguous `qkv` [B, T, 3, H, d]: one unit per element.
    #[cube(launch)]
    pub(super) fn split_kernel<F: Float>(
        qkv: &Tensor<F>,
        q: &mut Tensor<F>,
        k: &mut Tensor<F>,
        v: &mut Tensor<F>,
        heads: u32,
        len: u32,
        width: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= qkv.len() {
            terminate!();
        }
        let (slot, at) = head_index(pos, heads, len, width);
        if slot == 0 {
            q[at] = qkv[pos];
        } else if slot == 1 {
            k[at] = qkv[pos];
        } else {
            v[at] = qkv[pos];
        }
    }

    /// `out` [B, T, 3, H, d] from contiguous `q`, `k`, `v` [B, H, T, d]: one unit per element.
    #[cube(launch)]
    pub(super) fn interleave_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        out: &mut Tensor<F>,
        heads: u32,
        len: u32,
        width: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= out.len() {
            terminate!();
        }
        let (slot, at) = head_index(pos, heads, len, width);
        if slot == 0 {
            out[pos] = q[at];
        } else if slot == 1 {
            out[pos] = k[at];
        } else {
            out[pos] = v[at];
        }
    }
}

fn dims5(shape: &Shape) -> [usize; 5] {
    assert_eq!(shape.len(), 5, "attention: a [B, T, 3, H, d] projection");
    [shape[0], shape[1], shape[2], shape[3], shape[4]]
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("attention: dimension {n} exceeds u32"))
}

/// One unit per element, 256 per cube.
fn elementwise<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    n: usize,
) -> (cubecl::prelude::CubeCount, CubeDim) {
    let cube_dim = CubeDim::new_1d(256);
    (calculate_cube_count_elemwise(client, n, cube_dim), cube_dim)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionOps
    for CubeBackend<R, F, I, BT>
{
    fn attention_forward(qkv: CubeTensor<R>, causal: bool) -> [CubeTensor<R>; 5] {
        let [b, t, three, h, d] = dims5(&qkv.shape());
        assert_eq!(three, 3, "attention: a [B, T, 3, H, d] projection");
        let qkv = into_contiguous(qkv);
        let (client, dtype) = (qkv.client.clone(), qkv.dtype);
        let [q, k, v] = std::array::from_fn(|_| {
            empty_device_dtype::<R>(
                client.clone(),
                qkv.device.clone(),
                Shape::new([b, h, t, d]),
                dtype,
            )
        });
        let (count, cube_dim) = elementwise(&client, qkv.meta.num_elements());
        kernels::split_kernel::launch::<R>(
            &client,
            count,
            cube_dim,
            qkv.into_tensor_arg(),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            u32_of(h),
            u32_of(t),
            u32_of(d),
            dtype.into(),
        );
        let scores = Self::float_matmul(q.clone(), Self::float_swap_dims(k.clone(), 2, 3));
        let probs = Self::row_softmax(scores, softmax_op(d, causal));
        let out = Self::float_matmul(probs.clone(), v.clone());
        let ctx = into_contiguous(Self::float_swap_dims(out, 1, 2));
        let ctx = Self::float_reshape(ctx, Shape::new([b, t, h * d]));
        [ctx, probs, q, k, v]
    }

    fn attention_backward(
        grad: CubeTensor<R>,
        [probs, q, k, v]: [CubeTensor<R>; 4],
        causal: bool,
    ) -> CubeTensor<R> {
        let [b, h, t, d] = [q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]];
        let grad = Self::float_reshape(grad, Shape::new([b, t, h, d]));
        let dout = into_contiguous(Self::float_swap_dims(grad, 1, 2));
        let dv = Self::float_matmul(Self::float_swap_dims(probs.clone(), 2, 3), dout.clone());
        let dp = Self::float_matmul(dout, Self::float_swap_dims(v, 2, 3));
        let ds = Self::row_softmax_grad(probs, dp, softmax_op(d, causal));
        let dq = Self::float_matmul(ds.clone(), k);
        let dk = Self::float_matmul(Self::float_swap_dims(ds, 2, 3), q);
        let [dq, dk, dv] = [dq, dk, dv].map(into_contiguous);

        let (client, dtype) = (dq.client.clone(), dq.dtype);
        let out = empty_device_dtype::<R>(
            client.clone(),
            dq.device.clone(),
            Shape::new([b, t, 3, h, d]),
            dtype,
        );
        let (count, cube_dim) = elementwise(&client, b * t * 3 * h * d);
        kernels::interleave_kernel::launch::<R>(
            &client,
            count,
            cube_dim,
            dq.into_tensor_arg(),
            dk.into_tensor_arg(),
            dv.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            u32_of(h),
            u32_of(t),
            u32_of(d),
            dtype.into(),
        );
        out
    }
}

fn softmax_op(d: usize, causal: bool) -> RowSoftmax {
    RowSoftmax {
        scale: 1.0 / (d as f32).sqrt(),
        causal,
    }
}

/// Which half of the node a fusion-stream call runs.
#[derive(Clone, Copy, Debug)]
enum Half {
    Forward,
    Backward,
}

/// A call recorded in the fusion stream.
#[derive(Debug)]
struct FusedAttention<B> {
    desc: CustomOpIr,
    half: Half,
    causal: bool,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + AttentionOps> Operation<B::FusionRuntime> for FusedAttention<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        match self.half {
            Half::Forward => {
                let ([qkv], outs) = self.desc.as_fixed::<1, 5>();
                let qkv = handles.get_float_tensor::<B>(qkv);
                for (ir, t) in outs.iter().zip(B::attention_forward(qkv, self.causal)) {
                    handles.register_float_tensor::<B>(&ir.id, t);
                }
            }
            Half::Backward => {
                let ([grad, saved @ ..], [out]) = self.desc.as_fixed::<5, 1>();
                let grad = handles.get_float_tensor::<B>(grad);
                let saved = saved.each_ref().map(|t| handles.get_float_tensor::<B>(t));
                let dqkv = B::attention_backward(grad, saved, self.causal);
                handles.register_float_tensor::<B>(&out.id, dqkv);
            }
        }
    }
}

impl<B: FusionBackend + AttentionOps> AttentionOps for Fusion<B> {
    fn attention_forward(
        qkv: Self::FloatTensorPrimitive,
        causal: bool,
    ) -> [Self::FloatTensorPrimitive; 5] {
        let [b, t, _, h, d] = dims5(&qkv.shape);
        let (client, dtype) = (qkv.client.clone(), qkv.dtype);
        let streams = OperationStreams::with_inputs([&qkv]);
        let outs = [
            Shape::new([b, t, h * d]),
            Shape::new([b, h, t, t]),
            Shape::new([b, h, t, d]),
            Shape::new([b, h, t, d]),
            Shape::new([b, h, t, d]),
        ]
        .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype));
        let desc = CustomOpIr::new("asymm_attention", &[qkv.into_ir()], &outs);
        let call = FusedAttention::<B> {
            desc: desc.clone(),
            half: Half::Forward,
            causal,
            _backend: PhantomData,
        };
        client
            .register(streams, OperationIr::Custom(desc), call)
            .outputs::<5>()
    }

    fn attention_backward(
        grad: Self::FloatTensorPrimitive,
        saved: [Self::FloatTensorPrimitive; 4],
        causal: bool,
    ) -> Self::FloatTensorPrimitive {
        let q = &saved[1].shape;
        let [b, h, t, d] = [q[0], q[1], q[2], q[3]];
        let (client, dtype) = (grad.client.clone(), grad.dtype);
        let streams = OperationStreams::with_inputs(std::iter::once(&grad).chain(&saved));
        let out = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::new([b, t, 3, h, d]),
            dtype,
        );
        let inputs: Vec<TensorIr> = std::iter::once(grad)
            .chain(saved)
            .map(|t| t.into_ir())
            .collect();
        let desc = CustomOpIr::new("asymm_attention_backward", &inputs, &[out]);
        let call = FusedAttention::<B> {
            desc: desc.clone(),
            half: Half::Backward,
            causal,
            _backend: PhantomData,
        };
        client
            .register(streams, OperationIr::Custom(desc), call)
            .output()
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: AttentionOps> Backward<B, 1> for AttentionBackward {
    /// The probabilities, the contiguous `q`, `k`, `v` and the mask.
    type State = ([B::FloatTensorPrimitive; 4], bool);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (saved, causal) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::attention_backward(grad, saved, causal)
        });
    }
}

/// Attention as one autodiff node.
pub(super) fn autodiff<B: AttentionOps>(
    qkv: Tensor<Autodiff<B>, 5>,
    causal: bool,
) -> Tensor<Autodiff<B>, 3> {
    let x = qkv.into_primitive().tensor();
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let [ctx, saved @ ..] = B::attention_forward(x.primitive, causal);
            prep.finish((saved, causal), ctx)
        }
        OpsKind::UnTracked(prep) => {
            let [ctx, ..] = B::attention_forward(x.primitive, causal);
            prep.finish(ctx)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Attention without autodiff.
pub(super) fn plain<B: AttentionOps>(qkv: Tensor<B, 5>, causal: bool) -> Tensor<B, 3> {
    let [ctx, ..] = B::attention_forward(qkv.into_primitive().tensor(), causal);
    Tensor::from_primitive(TensorPrimitive::Float(ctx))
}
