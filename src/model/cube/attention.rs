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
//! forward    q, k, v = qkv split into heads, rotated       one kernel
//!            P = softmax(scale·q kᵀ, causal)              one product, the row-softmax kernel
//!            ctx = (P v) with heads merged                one product, one copy
//! backward   dO = dctx split into heads                   one copy
//!            dv = Pᵀ dO,  dP = dO vᵀ                      two products
//!            dS = scale · P ∘ (dP − rowsum(dP ∘ P))       the row-softmax gradient kernel
//!            dq = dS k,  dk = dSᵀ q                       two products
//!            dqkv = [dq, dk, dv] rotated back,            one interleaving kernel
//!                   as [B, T, 3, H, d]
//! ```
//!
//! With rotary positions, the split rotates the query and key (`x ∘ cos + R(x) ∘ sin`, `R` the
//! half-split `rotate_half`) and the interleave applies the rotation's transpose to their
//! gradients (`dy ∘ cos + Rᵀ(dy ∘ sin)`), so the rotation launches nothing of its own; the
//! tables are [`Rope`](crate::model::layers::Rope)'s, read through their broadcast head.
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
use burn_fusion::stream::Operation;
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer};
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::CubeDim;
use std::marker::PhantomData;

/// Backends that run attention as one node: [`CubeBackend`] and the fusion layer over it.
pub trait AttentionOps: RowSoftmaxOps {
    /// `qkv` [B, T, 3, H, d] → the context [B, T, H·d], then what the backward pass needs: the
    /// probabilities [B, H, T, T] and the contiguous, rotated `q`, `k`, `v` [B, H, T, d].
    /// `rope`: the `[cos, sin]` tables [B, T, 3, H' ∈ {1, H}, d] to rotate by.
    fn attention_forward(
        qkv: Self::FloatTensorPrimitive,
        rope: Option<[Self::FloatTensorPrimitive; 2]>,
        causal: bool,
    ) -> [Self::FloatTensorPrimitive; 5];

    /// The projection's gradient [B, T, 3, H, d] from the context's [B, T, H·d], the saved
    /// `[probs, q, k, v]` and the forward pass's tables.
    fn attention_backward(
        grad: Self::FloatTensorPrimitive,
        saved: [Self::FloatTensorPrimitive; 4],
        rope: Option<[Self::FloatTensorPrimitive; 2]>,
        causal: bool,
    ) -> Self::FloatTensorPrimitive;
}

mod kernels {
    use cubecl::prelude::*;

    /// Element `pos` of a projection [B, T, 3, H, d] as (row, step, slot, head, e), the slot
    /// being 0 for the query, 1 the key, 2 the value, and its index `at` in that slot's heads
    /// [B, H, T, d].
    #[cube]
    fn coords(
        pos: usize,
        heads: u32,
        len: u32,
        width: u32,
    ) -> (usize, usize, usize, usize, usize, usize) {
        let (h, t, d) = (heads as usize, len as usize, width as usize);
        let e = pos % d;
        let rest = pos / d;
        let head = rest % h;
        let rest = rest / h;
        let slot = rest % 3;
        let rest = rest / 3;
        let (row, step) = (rest / t, rest % t);
        (
            row,
            step,
            slot,
            head,
            e,
            ((row * h + head) * t + step) * d + e,
        )
    }

    /// Where the vector of (row, step, slot, head) starts in a rotary table [B, T, 3, H', d]
    /// (`H'` is 1, broadcast, or H).
    #[cube]
    fn table_start(
        row: usize,
        step: usize,
        slot: usize,
        head: usize,
        len: u32,
        table_heads: u32,
        width: u32,
    ) -> usize {
        let th = table_heads as usize;
        (((row * len as usize + step) * 3 + slot) * th + head % th) * width as usize
    }

    /// `q`, `k`, `v` [B, H, T, d] from a contiguous `qkv` [B, T, 3, H, d], the query and key
    /// rotated by the tables when `rotary`: one unit per element.
    // `rotary` is resolved when the kernel is compiled, `slot < 2` when it runs: two `if`s.
    #[allow(clippy::collapsible_if)]
    #[cube(launch)]
    pub(super) fn split_kernel<F: Float>(
        qkv: &Tensor<F>,
        cos: &Tensor<F>,
        sin: &Tensor<F>,
        q: &mut Tensor<F>,
        k: &mut Tensor<F>,
        v: &mut Tensor<F>,
        heads: u32,
        len: u32,
        width: u32,
        table_heads: u32,
        #[comptime] rotary: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= qkv.len() {
            terminate!();
        }
        let (row, step, slot, head, e, at) = coords(pos, heads, len, width);
        let d = width as usize;
        let mut y = qkv[pos];
        if rotary {
            if slot < 2 {
                let half = d / 2;
                let c = table_start(row, step, slot, head, len, table_heads, width) + e;
                let mut partner = F::new(0.0);
                if e < half {
                    partner -= qkv[pos + half];
                } else {
                    partner += qkv[pos - half];
                }
                y = y * cos[c] + partner * sin[c];
            }
        }
        if slot == 0 {
            q[at] = y;
        } else if slot == 1 {
            k[at] = y;
        } else {
            v[at] = y;
        }
    }

    /// Element `at` of the slot's tensor.
    #[cube]
    fn pick<F: Float>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, slot: usize, at: usize) -> F {
        let mut x = v[at];
        if slot == 0 {
            x = q[at];
        } else if slot == 1 {
            x = k[at];
        }
        x
    }

    /// `out` [B, T, 3, H, d] from contiguous `q`, `k`, `v` [B, H, T, d], the query's and key's
    /// rotated back (by the rotation's transpose) when `rotary`: one unit per element.
    // `rotary` is resolved when the kernel is compiled, `slot < 2` when it runs: two `if`s.
    #[allow(clippy::collapsible_if)]
    #[cube(launch)]
    pub(super) fn interleave_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        cos: &Tensor<F>,
        sin: &Tensor<F>,
        out: &mut Tensor<F>,
        heads: u32,
        len: u32,
        width: u32,
        table_heads: u32,
        #[comptime] rotary: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= out.len() {
            terminate!();
        }
        let (row, step, slot, head, e, at) = coords(pos, heads, len, width);
        let d = width as usize;
        let mut g = pick(q, k, v, slot, at);
        if rotary {
            if slot < 2 {
                let half = d / 2;
                let start = table_start(row, step, slot, head, len, table_heads, width);
                g *= cos[start + e];
                if e < half {
                    g += pick(q, k, v, slot, at + half) * sin[start + e + half];
                } else {
                    g -= pick(q, k, v, slot, at - half) * sin[start + e - half];
                }
            }
        }
        out[pos] = g;
    }
}

fn dims5(shape: &Shape) -> [usize; 5] {
    assert_eq!(shape.len(), 5, "attention: a [B, T, 3, H, d] tensor");
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

/// The tables' kernel arguments: `[cos, sin]` made contiguous and their head count, checked
/// against the projection's `[B, T, 3, H, d]`; without tables, `stand_in` twice (unread).
fn tables<R: CubeRuntime>(
    rope: Option<[CubeTensor<R>; 2]>,
    [b, t, _, h, d]: [usize; 5],
    stand_in: &CubeTensor<R>,
) -> ([CubeTensor<R>; 2], u32) {
    match rope {
        Some(pair) => {
            let [cb, ct, three, th, cd] = dims5(&pair[0].shape());
            assert!(
                [cb, ct, three, cd] == [b, t, 3, d] && (th == 1 || th == h) && d % 2 == 0,
                "attention: rotary tables {:?} for a projection [{b}, {t}, 3, {h}, {d}]",
                pair[0].shape()
            );
            assert_eq!(pair[0].shape(), pair[1].shape(), "attention: cos and sin");
            (pair.map(into_contiguous), u32_of(th))
        }
        None => ([stand_in.clone(), stand_in.clone()], 1),
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionOps
    for CubeBackend<R, F, I, BT>
{
    fn attention_forward(
        qkv: CubeTensor<R>,
        rope: Option<[CubeTensor<R>; 2]>,
        causal: bool,
    ) -> [CubeTensor<R>; 5] {
        let dims = dims5(&qkv.shape());
        let [b, t, three, h, d] = dims;
        assert_eq!(three, 3, "attention: a [B, T, 3, H, d] projection");
        let qkv = into_contiguous(qkv);
        let rotary = rope.is_some();
        let ([cos, sin], table_heads) = tables(rope, dims, &qkv);
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
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            u32_of(h),
            u32_of(t),
            u32_of(d),
            table_heads,
            rotary,
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
        rope: Option<[CubeTensor<R>; 2]>,
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

        let rotary = rope.is_some();
        let ([cos, sin], table_heads) = tables(rope, [b, t, 3, h, d], &dq);
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
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            u32_of(h),
            u32_of(t),
            u32_of(d),
            table_heads,
            rotary,
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

/// A call recorded in the fusion stream: the forward's inputs are `qkv` (then `cos`, `sin`
/// with rotary positions), the backward's the context's gradient, `probs`, `q`, `k`, `v` (then
/// `cos`, `sin`).
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
        let mut inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect::<Vec<_>>();
        let rope = match inputs.len() {
            1 | 5 => None,
            _ => {
                let sin = inputs.pop();
                let cos = inputs.pop();
                cos.zip(sin).map(|(c, s)| [c, s])
            }
        };
        let mut inputs = inputs.into_iter();
        let mut next = || inputs.next().expect("attention: the recorded inputs");
        let outputs: Vec<B::FloatTensorPrimitive> = match self.half {
            Half::Forward => B::attention_forward(next(), rope, self.causal).into(),
            Half::Backward => {
                let grad = next();
                let saved = [next(), next(), next(), next()];
                vec![B::attention_backward(grad, saved, rope, self.causal)]
            }
        };
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, t);
        }
    }
}

/// Records `half` with `inputs` (the tables last) and outputs of `shapes`.
fn record<B: FusionBackend + AttentionOps>(
    half: Half,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    shapes: Vec<Shape>,
    causal: bool,
) -> Vec<FusionTensor<B::FusionRuntime>> {
    let name = match half {
        Half::Forward => "asymm_attention",
        Half::Backward => "asymm_attention_backward",
    };
    super::record::<B, _>(name, inputs, shapes, |desc| FusedAttention::<B> {
        desc,
        half,
        causal,
        _backend: PhantomData,
    })
}

impl<B: FusionBackend + AttentionOps> AttentionOps for Fusion<B> {
    fn attention_forward(
        qkv: Self::FloatTensorPrimitive,
        rope: Option<[Self::FloatTensorPrimitive; 2]>,
        causal: bool,
    ) -> [Self::FloatTensorPrimitive; 5] {
        let [b, t, _, h, d] = dims5(&qkv.shape);
        let heads = Shape::new([b, h, t, d]);
        let shapes = vec![
            Shape::new([b, t, h * d]),
            Shape::new([b, h, t, t]),
            heads.clone(),
            heads.clone(),
            heads,
        ];
        let inputs = std::iter::once(qkv)
            .chain(rope.into_iter().flatten())
            .collect();
        let outs = record::<B>(Half::Forward, inputs, shapes, causal);
        outs.try_into().expect("attention: five outputs")
    }

    fn attention_backward(
        grad: Self::FloatTensorPrimitive,
        saved: [Self::FloatTensorPrimitive; 4],
        rope: Option<[Self::FloatTensorPrimitive; 2]>,
        causal: bool,
    ) -> Self::FloatTensorPrimitive {
        let q = &saved[1].shape;
        let shape = Shape::new([q[0], q[2], 3, q[1], q[3]]);
        let inputs = std::iter::once(grad)
            .chain(saved)
            .chain(rope.into_iter().flatten())
            .collect();
        let mut outs = record::<B>(Half::Backward, inputs, vec![shape], causal);
        outs.pop().expect("attention: one output")
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: AttentionOps> Backward<B, 1> for AttentionBackward {
    /// The probabilities and the contiguous `q`, `k`, `v`, the rotary tables and the mask.
    type State = (
        [B::FloatTensorPrimitive; 4],
        Option<[B::FloatTensorPrimitive; 2]>,
        bool,
    );

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (saved, rope, causal) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::attention_backward(grad, saved, rope, causal)
        });
    }
}

/// The tables' primitives.
fn primitives<B: burn::tensor::backend::Backend>(
    rope: Option<[Tensor<B, 5>; 2]>,
) -> Option<[B::FloatTensorPrimitive; 2]> {
    rope.map(|pair| pair.map(|t| t.into_primitive().tensor()))
}

/// Attention as one autodiff node; the tables (`[cos, sin]`) are constants.
pub(super) fn autodiff<B: AttentionOps>(
    qkv: Tensor<Autodiff<B>, 5>,
    rope: Option<[Tensor<B, 5>; 2]>,
    causal: bool,
) -> Tensor<Autodiff<B>, 3> {
    let x = qkv.into_primitive().tensor();
    let rope = primitives(rope);
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let [ctx, saved @ ..] = B::attention_forward(x.primitive, rope.clone(), causal);
            prep.finish((saved, rope, causal), ctx)
        }
        OpsKind::UnTracked(prep) => {
            let [ctx, ..] = B::attention_forward(x.primitive, rope, causal);
            prep.finish(ctx)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Attention without autodiff.
pub(super) fn plain<B: AttentionOps>(
    qkv: Tensor<B, 5>,
    rope: Option<[Tensor<B, 5>; 2]>,
    causal: bool,
) -> Tensor<B, 3> {
    let [ctx, ..] = B::attention_forward(qkv.into_primitive().tensor(), primitives(rope), causal);
    Tensor::from_primitive(TensorPrimitive::Float(ctx))
}
