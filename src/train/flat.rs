//! A multi-tensor AdamW: every float parameter of a model laid end to end in one device buffer,
//! so that a step's whole-model vector work — the global gradient norm, the clip, the moments and
//! the weight update — is a handful of kernels instead of a handful per parameter tensor (the idea
//! of PyTorch's `foreach` and fused AdamW). On the cubecl backends each tensor's arithmetic is a
//! kernel launch of its own, so this is what they run ([`pays`]); the CPU keeps burn's
//! per-tensor `AdamW`, which is as fast there and keeps its artifacts byte-for-byte.
//!
//! A step gathers the gradients into the buffer (one in-place copy per parameter tensor), runs the
//! arithmetic on the whole buffer, and hands the model its parameters back as views of the new
//! master buffer: each parameter starts at an offset of [`ALIGN`] elements, where a cubecl slice
//! is a view rather than a copy.
//!
//! The arithmetic is burn's `AdamW` step, operation for operation (the two agree to rounding; the
//! global norm sums in another order): with t the step count,
//! m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ(1 − lr·wd) − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).
//! One difference: burn counts t per parameter tensor, here t counts the trainer's steps. A
//! parameter without a gradient in a step is left as it is (weights and moments), as burn leaves
//! it, but its next bias correction uses the shared t.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamW, AdamWState, AdaptiveMomentumState, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Device, Shape, Tensor, TensorData};
use std::collections::HashMap;
use std::sync::Arc;

/// Parameter offsets in the buffer are multiples of this many elements (256 bytes in f32, 512 in
/// bf16): aligned for every cubecl runtime, so that handing a parameter back is a view.
pub const ALIGN: usize = 64;

/// AdamW's constants (burn's defaults, which the per-tensor path uses too).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConsts {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

/// Whether the flat optimizer pays on `B`: on the cubecl backends (one launch per tensor
/// operation), not on the CPU.
pub fn pays<B: Backend>() -> bool {
    #[cfg(feature = "gpu")]
    if crate::model::cube::available::<B>() {
        return true;
    }
    false
}

/// Where each float parameter of a model lies in the flat buffer, in the module tree's order.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatLayout {
    /// (start, number of elements) of each parameter tensor.
    slots: Vec<(usize, usize)>,
    len: usize,
}

impl FlatLayout {
    /// The layout of `model`'s float parameters.
    pub fn of<B: Backend, M: Module<B>>(model: &M) -> Self {
        struct Sizes(Vec<usize>);
        impl<B: Backend> ModuleVisitor<B> for Sizes {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.push(param.shape().num_elements());
            }
        }
        let mut sizes = Sizes(Vec::new());
        model.visit(&mut sizes);
        let mut len = 0;
        let slots = sizes
            .0
            .into_iter()
            .map(|n| {
                let start = len;
                len = (start + n).next_multiple_of(ALIGN);
                (start, n)
            })
            .collect();
        FlatLayout { slots, len }
    }

    /// Elements in the buffer (gaps between parameters included; they stay zero).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The model's parameters in one buffer.
    pub fn params<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        device: &Device<B::InnerBackend>,
    ) -> Tensor<B::InnerBackend, 1> {
        struct Gather<'a, I: Backend> {
            slots: std::slice::Iter<'a, (usize, usize)>,
            flat: Option<Tensor<I, 1>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B::InnerBackend> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let (Some(&(start, n)), Some(flat)) = (self.slots.next(), self.flat.take()) {
                    let value = param.val().inner().reshape([n]);
                    self.flat = Some(flat.slice_assign(start..start + n, value));
                }
            }
        }
        let mut g = Gather::<B::InnerBackend> {
            slots: self.slots.iter(),
            flat: Some(Tensor::zeros([self.len], device)),
        };
        model.visit(&mut g);
        g.flat.unwrap_or_else(|| Tensor::zeros([self.len], device))
    }

    /// `grads` in one buffer (zeros where a parameter has none), and which parameters had one:
    /// a few kernels on the cubecl backends ([`crate::model::cube::pack`]), one assignment per
    /// gradient elsewhere.
    pub fn grads<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        mut grads: GradientsParams,
        device: &Device<B::InnerBackend>,
    ) -> (Tensor<B::InnerBackend, 1>, Vec<bool>) {
        struct Collect<'a, I: Backend> {
            slots: std::slice::Iter<'a, (usize, usize)>,
            grads: &'a mut GradientsParams,
            parts: Vec<(usize, Tensor<I, 1>)>,
            present: Vec<bool>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B::InnerBackend> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Some(&(start, n)) = self.slots.next() else {
                    return;
                };
                let g = self.grads.remove::<B::InnerBackend, D>(param.id);
                self.present.push(g.is_some());
                if let Some(g) = g {
                    self.parts.push((start, g.reshape([n])));
                }
            }
        }
        let mut c = Collect::<B::InnerBackend> {
            slots: self.slots.iter(),
            grads: &mut grads,
            parts: Vec::with_capacity(self.slots.len()),
            present: Vec::with_capacity(self.slots.len()),
        };
        model.visit(&mut c);
        let (parts, present) = (c.parts, c.present);
        (self.assemble(parts, device), present)
    }

    /// A `[len]` buffer of `parts` at their offsets, zeros elsewhere.
    fn assemble<I: Backend>(
        &self,
        parts: Vec<(usize, Tensor<I, 1>)>,
        device: &Device<I>,
    ) -> Tensor<I, 1> {
        #[cfg(feature = "gpu")]
        if crate::model::cube::pack::available::<I>()
            && let Some(flat) = crate::model::cube::pack::pack(parts.clone(), self.len, device)
        {
            return flat;
        }
        parts
            .into_iter()
            .fold(Tensor::zeros([self.len], device), |flat, (start, g)| {
                let n = g.dims()[0];
                flat.slice_assign(start..start + n, g)
            })
    }

    /// `grads` in one buffer, with the layout it follows (see [`FlatGrad`]).
    pub fn gather<B: AutodiffBackend, M: AutodiffModule<B>>(
        self: &Arc<Self>,
        model: &M,
        grads: GradientsParams,
        device: &Device<B::InnerBackend>,
    ) -> FlatGrad<B::InnerBackend> {
        let (flat, present) = self.grads::<B, M>(model, grads, device);
        FlatGrad {
            layout: Arc::clone(self),
            flat,
            present,
        }
    }

    /// `model` with its parameters replaced by views of `flat` (gradients still required where
    /// they were).
    pub fn scatter<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: M,
        flat: &Tensor<B::InnerBackend, 1>,
    ) -> M {
        struct Scatter<'a, I: Backend> {
            slots: std::slice::Iter<'a, (usize, usize)>,
            flat: &'a Tensor<I, 1>,
        }
        impl<B: AutodiffBackend> ModuleMapper<B> for Scatter<'_, B::InnerBackend> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let (id, tensor, mapper) = param.consume();
                let Some(&(start, n)) = self.slots.next() else {
                    return Param::from_mapped_value(id, tensor, mapper);
                };
                let view = self
                    .flat
                    .clone()
                    .slice(start..start + n)
                    .reshape(tensor.shape());
                let mut value = Tensor::from_inner(view);
                if tensor.is_require_grad() {
                    value = value.require_grad();
                }
                Param::from_mapped_value(id, value, mapper)
            }
        }
        model.map(&mut Scatter::<B::InnerBackend> {
            slots: self.slots.iter(),
            flat,
        })
    }

    /// A `[len]` mask, true over the parameters whose flag is false.
    fn absent_mask<I: Backend>(&self, present: &[bool], device: &Device<I>) -> Tensor<I, 1, Bool> {
        let mut mask = vec![false; self.len];
        for (&(start, n), &p) in self.slots.iter().zip(present) {
            if !p {
                mask[start..start + n].fill(true);
            }
        }
        Tensor::from_data(TensorData::new(mask, [self.len]), device)
    }
}

/// A model's gradient in one buffer laid out by a [`FlatLayout`] (zeros where a parameter has
/// none): summing two, a weighted combination or the global norm is then a kernel or two, not a
/// few per parameter tensor.
pub struct FlatGrad<I: Backend> {
    layout: Arc<FlatLayout>,
    flat: Tensor<I, 1>,
    /// Which parameters have a gradient, in the layout's order.
    present: Vec<bool>,
}

impl<I: Backend> FlatGrad<I> {
    /// Whether `self` and `other` follow the same layout (and can be summed as buffers).
    pub fn same_layout(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.layout, &other.layout) || self.layout == other.layout
    }

    /// `self + other` (same layout: see [`FlatGrad::same_layout`]); a parameter has a gradient
    /// when either has one.
    pub fn plus(self, other: Self) -> Self {
        self.combine(None, other, None)
    }

    /// `wa·self + wb·other` with the weights `[1]` tensors on the device (`None`: 1), same layout.
    pub fn combine(self, wa: Option<Tensor<I, 1>>, other: Self, wb: Option<Tensor<I, 1>>) -> Self {
        let weigh = |t: Tensor<I, 1>, w: Option<Tensor<I, 1>>| match w {
            Some(w) => t * w,
            None => t,
        };
        let present = self
            .present
            .iter()
            .zip(&other.present)
            .map(|(&a, &b)| a || b)
            .collect();
        FlatGrad {
            layout: self.layout,
            flat: weigh(self.flat, wa) + weigh(other.flat, wb),
            present,
        }
    }

    /// The buffer and its presence flags (1 where a parameter has a gradient) in one tensor
    /// passed through `reduce` (a sum over data-parallel peers: one collective call), read
    /// back; a parameter has a gradient when any peer's has one.
    pub fn reduce_with<E>(
        self,
        reduce: impl FnOnce(Tensor<I, 1>) -> Result<Tensor<I, 1>, E>,
    ) -> Result<Self, E>
    where
        E: From<FlatError>,
    {
        let (len, n) = (self.flat.dims()[0], self.present.len());
        let device = self.flat.device();
        let flags: Vec<f32> = self
            .present
            .iter()
            .map(|&p| f32::from(u8::from(p)))
            .collect();
        let flags = Tensor::<I, 1>::from_data(TensorData::new(flags, [n]), &device);
        let both = reduce(Tensor::cat(vec![self.flat, flags], 0))?;
        let present = both
            .clone()
            .slice(len..len + n)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| FlatError::Read(format!("{e:?}")))?
            .into_iter()
            .map(|x| x > 0.0)
            .collect();
        Ok(FlatGrad {
            layout: self.layout,
            flat: both.slice(0..len),
            present,
        })
    }

    /// ‖g‖₂ as a `[1]` tensor on the device.
    pub fn norm(&self) -> Tensor<I, 1> {
        self.flat.clone().powi_scalar(2).sum().sqrt()
    }

    /// Back to burn's per-parameter map (the parameters' gradients as views of the buffer), for
    /// the model whose layout it follows.
    pub fn into_params<B, M>(self, model: &M) -> Result<GradientsParams, FlatError>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        struct Split<'a, I: Backend> {
            slots: std::iter::Zip<std::slice::Iter<'a, (usize, usize)>, std::slice::Iter<'a, bool>>,
            flat: &'a Tensor<I, 1>,
            out: GradientsParams,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_, B::InnerBackend> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some((&(start, n), true)) = self.slots.next().map(|(s, &p)| (s, p)) {
                    let g = self
                        .flat
                        .clone()
                        .slice(start..start + n)
                        .reshape(param.shape());
                    self.out.register::<B::InnerBackend, D>(param.id, g);
                }
            }
        }
        let layout = FlatLayout::of::<B, M>(model);
        if *self.layout != layout {
            return Err(FlatError::Layout {
                expected: layout.slots.len(),
                found: self.layout.slots.len(),
            });
        }
        let mut split = Split::<I> {
            slots: self.layout.slots.iter().zip(self.present.iter()),
            flat: &self.flat,
            out: GradientsParams::new(),
        };
        model.visit(&mut split);
        Ok(split.out)
    }
}

/// The optimizer's buffers.
struct Buffers<I: Backend> {
    layout: FlatLayout,
    /// The master weights; the model's parameters are views of it. `None` until the first step
    /// and after the model is replaced from outside ([`FlatAdamW::forget_weights`]).
    params: Option<Tensor<I, 1>>,
    /// The first and second moments, `None` before the first step.
    moments: Option<(Tensor<I, 1>, Tensor<I, 1>)>,
}

/// The multi-tensor AdamW (see the module docs).
pub struct FlatAdamW<I: Backend> {
    consts: AdamWConsts,
    time: usize,
    buffers: Option<Buffers<I>>,
}

impl<I: Backend> FlatAdamW<I> {
    pub fn new(consts: AdamWConsts) -> Self {
        FlatAdamW {
            consts,
            time: 0,
            buffers: None,
        }
    }

    /// The model was replaced from outside (new weights): the next step gathers them afresh.
    pub fn forget_weights(&mut self) {
        if let Some(b) = &mut self.buffers {
            b.params = None;
        }
    }

    /// The buffers for `model`, taken out of `self`; fresh ones for a model of another shape.
    fn take_buffers<B, M>(&mut self, model: &M) -> Buffers<I>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        let layout = FlatLayout::of::<B, M>(model);
        match self.buffers.take() {
            Some(b) if b.layout == layout => b,
            _ => {
                // A model of another shape: its moments start afresh.
                self.time = 0;
                Buffers {
                    layout,
                    params: None,
                    moments: None,
                }
            }
        }
    }

    /// One step: clips `grads` to the global norm `clip` (0: none) and applies AdamW at `lr`.
    /// Returns the updated model and the global gradient norm before clipping as a `[1]` tensor
    /// on the device (nothing is read back).
    pub fn step<B, M>(
        &mut self,
        lr: f64,
        clip: f32,
        model: M,
        grads: GradientsParams,
        device: &Device<B::InnerBackend>,
    ) -> (M, Tensor<I, 1>)
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        let buffers = self.take_buffers::<B, M>(&model);
        let (g, present) = buffers.layout.grads::<B, M>(&model, grads, device);
        self.step_buffer::<B, M>(buffers, lr, clip, model, g, present)
    }

    /// [`FlatAdamW::step`] with the gradient already in a buffer; it must follow `model`'s
    /// layout.
    pub fn step_flat<B, M>(
        &mut self,
        lr: f64,
        clip: f32,
        model: M,
        grad: FlatGrad<I>,
    ) -> Result<(M, Tensor<I, 1>), FlatError>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        let buffers = self.take_buffers::<B, M>(&model);
        if *grad.layout != buffers.layout {
            let (expected, found) = (buffers.layout.slots.len(), grad.layout.slots.len());
            self.buffers = Some(buffers);
            return Err(FlatError::Layout { expected, found });
        }
        Ok(self.step_buffer::<B, M>(buffers, lr, clip, model, grad.flat, grad.present))
    }

    fn step_buffer<B, M>(
        &mut self,
        buffers: Buffers<I>,
        lr: f64,
        clip: f32,
        model: M,
        g: Tensor<I, 1>,
        present: Vec<bool>,
    ) -> (M, Tensor<I, 1>)
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        let device = &g.device();
        let c = self.consts;
        let Buffers {
            layout,
            params,
            moments: old,
        } = buffers;
        self.time += 1;
        let time = self.time as i32;
        let norm = g.clone().powi_scalar(2).sum().sqrt();
        let g = if clip > 0.0 {
            g * super::grads::clip_factor(norm.clone(), clip)
        } else {
            g
        };
        let params = params.unwrap_or_else(|| layout.params::<B, M>(&model, device));
        let (f1, f2) = (1.0 - c.beta_1, 1.0 - c.beta_2);
        let (m, v) = match &old {
            Some((m, v)) => (
                m.clone().mul_scalar(c.beta_1).add(g.clone().mul_scalar(f1)),
                v.clone()
                    .mul_scalar(c.beta_2)
                    .add(g.square().mul_scalar(f2)),
            ),
            None => (g.clone().mul_scalar(f1), g.square().mul_scalar(f2)),
        };
        let m_hat = m.clone().div_scalar(1f32 - c.beta_1.powi(time));
        let v_hat = v.clone().div_scalar(1f32 - c.beta_2.powi(time));
        let delta = m_hat.div(v_hat.sqrt().add_scalar(c.epsilon));
        let decay = lr * c.weight_decay as f64;
        let decayed = if decay == 0.0 {
            params.clone()
        } else {
            params.clone().mul_scalar(1.0 - decay)
        };
        let mut new = (decayed - delta.mul_scalar(lr), m, v);
        if present.iter().any(|&p| !p) {
            // Parameters without a gradient keep their weights and moments.
            let absent = layout.absent_mask::<I>(&present, device);
            let (m0, v0) = old.unwrap_or_else(|| {
                let z = Tensor::zeros([layout.len()], device);
                (z.clone(), z)
            });
            new = (
                new.0.mask_where(absent.clone(), params),
                new.1.mask_where(absent.clone(), m0),
                new.2.mask_where(absent, v0),
            );
        }
        let (params, m, v) = new;
        let model = layout.scatter::<B, M>(model, &params);
        self.buffers = Some(Buffers {
            layout,
            params: Some(params),
            moments: Some((m, v)),
        });
        (model, norm)
    }

    /// The state as burn's per-tensor AdamW records, keyed by the parameters' ids (the format
    /// the per-tensor path saves and loads); empty before the first step.
    pub fn records<B, M>(
        &self,
        model: &M,
    ) -> HashMap<burn::module::ParamId, AdaptorRecord<AdamW, B>>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        struct Split<'a, B: AutodiffBackend> {
            slots: std::slice::Iter<'a, (usize, usize)>,
            m: &'a Tensor<B::InnerBackend, 1>,
            v: &'a Tensor<B::InnerBackend, 1>,
            time: usize,
            out: HashMap<burn::module::ParamId, AdaptorRecord<AdamW, B>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Some(&(start, n)) = self.slots.next() else {
                    return;
                };
                let part = |t: &Tensor<B::InnerBackend, 1>| {
                    t.clone()
                        .slice(start..start + n)
                        .reshape::<D, Shape>(param.shape())
                };
                let state = AdamWState::new(AdaptiveMomentumState::new(
                    self.time,
                    part(self.m),
                    part(self.v),
                ));
                self.out.insert(param.id, AdaptorRecord::from_state(state));
            }
        }
        let Some(Buffers {
            layout,
            moments: Some((m, v)),
            ..
        }) = &self.buffers
        else {
            return HashMap::new();
        };
        if *layout != FlatLayout::of::<B, M>(model) {
            return HashMap::new();
        }
        let mut split = Split::<B> {
            slots: layout.slots.iter(),
            m,
            v,
            time: self.time,
            out: HashMap::new(),
        };
        model.visit(&mut split);
        split.out
    }

    /// Restores the state from per-tensor records (see [`FlatAdamW::records`]); the model's
    /// weights are gathered afresh at the next step. A parameter without a record starts from
    /// zero moments. The records must share one step count.
    pub fn load_records<B, M>(
        &mut self,
        model: &M,
        mut records: HashMap<burn::module::ParamId, AdaptorRecord<AdamW, B>>,
        device: &Device<B::InnerBackend>,
    ) -> Result<(), FlatError>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        struct Join<'a, B: AutodiffBackend> {
            slots: std::slice::Iter<'a, (usize, usize)>,
            records: &'a mut HashMap<burn::module::ParamId, AdaptorRecord<AdamW, B>>,
            m: Option<Tensor<B::InnerBackend, 1>>,
            v: Option<Tensor<B::InnerBackend, 1>>,
            times: Vec<usize>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Join<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let Some(&(start, n)) = self.slots.next() else {
                    return;
                };
                let Some(record) = self.records.remove(&param.id) else {
                    return;
                };
                let state: AdamWState<B::InnerBackend, D> = record.into_state();
                let s = state.momentum;
                self.times.push(s.time);
                if let (Some(m), Some(v)) = (self.m.take(), self.v.take()) {
                    self.m = Some(m.slice_assign(start..start + n, s.moment_1.reshape([n])));
                    self.v = Some(v.slice_assign(start..start + n, s.moment_2.reshape([n])));
                }
            }
        }
        let layout = FlatLayout::of::<B, M>(model);
        let zeros = || Tensor::<I, 1>::zeros([layout.len()], device);
        let mut join = Join::<B> {
            slots: layout.slots.iter(),
            records: &mut records,
            m: Some(zeros()),
            v: Some(zeros()),
            times: Vec::new(),
        };
        model.visit(&mut join);
        let (m, v, times) = (join.m, join.v, join.times);
        let time = times.first().copied().unwrap_or(0);
        if times.iter().any(|&t| t != time) {
            return Err(FlatError::Times(times));
        }
        self.time = time;
        self.buffers = Some(Buffers {
            moments: m.zip(v).filter(|_| time > 0),
            layout,
            params: None,
        });
        Ok(())
    }
}

/// Why a state cannot be loaded into the flat optimizer.
#[derive(Debug, thiserror::Error)]
pub enum FlatError {
    #[error(
        "the optimizer state's parameters were stepped different numbers of times ({0:?}); \
         the multi-tensor AdamW keeps one step count"
    )]
    Times(Vec<usize>),
    #[error(
        "a gradient laid out for a model of {found} parameter tensors was given to the optimizer \
         of a model of {expected}"
    )]
    Layout { expected: usize, found: usize },
    #[error("reading the gradient's presence flags back from the device: {0}")]
    Read(String),
}

#[cfg(test)]
mod tests;
