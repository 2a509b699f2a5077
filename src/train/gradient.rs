//! A model's gradient in the form its trainer steps with ([`super::trainer::Trainer::form`]):
//! burn's map of per-parameter tensors, or one buffer ([`FlatGrad`]) on the backends where every
//! tensor operation is a kernel launch of its own. There, summing micro-batches' gradients,
//! NGDiff's weighted combination and the norms are a kernel or two each instead of a few per
//! parameter tensor. On the CPU the map is kept, with the same arithmetic as burn's optimizer
//! path (artifacts unchanged).

use super::flat::{FlatError, FlatGrad, FlatLayout};
use super::grads::{combine, combine_device, grad_norm_device};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Device, Tensor};
use std::sync::Arc;

/// How a trainer takes its gradients.
#[derive(Debug, Clone)]
pub enum Form {
    /// burn's map, a tensor per parameter.
    PerTensor,
    /// One buffer with this layout.
    Flat(Arc<FlatLayout>),
}

impl Form {
    /// `grads` of `model` in this form (gathered into one buffer for [`Form::Flat`]).
    pub fn gradient<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: GradientsParams,
        device: &Device<B::InnerBackend>,
    ) -> Gradient<B> {
        match self {
            Form::PerTensor => Gradient::PerTensor(grads),
            Form::Flat(layout) => Gradient::Flat(layout.gather::<B, M>(model, grads, device)),
        }
    }
}

/// A model's gradient (see the module docs).
pub enum Gradient<B: AutodiffBackend> {
    PerTensor(GradientsParams),
    Flat(FlatGrad<B::InnerBackend>),
}

impl<B: AutodiffBackend> From<GradientsParams> for Gradient<B> {
    fn from(grads: GradientsParams) -> Self {
        Gradient::PerTensor(grads)
    }
}

impl<B: AutodiffBackend> Gradient<B> {
    /// As burn's map, for `model` (whose gradient it must be).
    pub fn into_params<M: AutodiffModule<B>>(
        self,
        model: &M,
    ) -> Result<GradientsParams, FlatError> {
        match self {
            Gradient::PerTensor(g) => Ok(g),
            Gradient::Flat(g) => g.into_params::<B, M>(model),
        }
    }

    /// `self + other`, both gradients of `model`.
    pub fn add<M: AutodiffModule<B>>(self, model: &M, other: Self) -> Result<Self, FlatError> {
        Ok(match (self, other) {
            (Gradient::Flat(a), Gradient::Flat(b)) if a.same_layout(&b) => {
                Gradient::Flat(a.plus(b))
            }
            (a, b) => {
                let (a, b) = (a.into_params(model)?, b.into_params(model)?);
                Gradient::PerTensor(combine::<B, M>(model, a, 1.0, b, 1.0))
            }
        })
    }

    /// `self + other`, or `other` when there is nothing yet (an accumulator's first term).
    pub fn accumulate<M: AutodiffModule<B>>(
        acc: Option<Self>,
        model: &M,
        other: Self,
    ) -> Result<Self, FlatError> {
        match acc {
            Some(a) => a.add(model, other),
            None => Ok(other),
        }
    }

    /// ‖g‖₂ over all parameters as a `[1]` tensor on the device (0 when none has a gradient).
    pub fn norm<M: AutodiffModule<B>>(
        &self,
        model: &M,
        device: &Device<B>,
    ) -> Tensor<B::InnerBackend, 1> {
        match self {
            Gradient::PerTensor(g) => grad_norm_device::<B, M>(model, g, device),
            Gradient::Flat(g) => g.norm(),
        }
    }

    /// `wa·a + wb·b` with the weights `[1]` tensors on the device, both gradients of `model`.
    pub fn combine<M: AutodiffModule<B>>(
        model: &M,
        a: Self,
        wa: Tensor<B::InnerBackend, 1>,
        b: Self,
        wb: Tensor<B::InnerBackend, 1>,
    ) -> Result<Self, FlatError> {
        Ok(match (a, b) {
            (Gradient::Flat(a), Gradient::Flat(b)) if a.same_layout(&b) => {
                Gradient::Flat(a.combine(Some(wa), b, Some(wb)))
            }
            (a, b) => {
                let (a, b) = (a.into_params(model)?, b.into_params(model)?);
                Gradient::PerTensor(combine_device::<B, M>(model, a, wa, b, wb))
            }
        })
    }
}
