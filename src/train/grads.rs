//! Gradient utilities over a model's parameters: squared norms and weighted combinations of
//! `GradientsParams`, by visiting every float parameter.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

struct NormVisitor<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for NormVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// ‖g‖₂ over all parameters of `model` (one host sync).
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = NormVisitor::<B> { grads, sum: None };
    model.visit(&mut v);
    v.sum
        .and_then(|s| s.into_data().to_vec::<f32>().ok())
        .and_then(|x| x.first().copied())
        .map(|x| (x as f64).sqrt())
        .unwrap_or(0.0)
}

struct CombineVisitor<'a, B: AutodiffBackend> {
    a: &'a mut GradientsParams,
    b: &'a mut GradientsParams,
    wa: f32,
    wb: f32,
    out: GradientsParams,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CombineVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let ga = self.a.remove::<B::InnerBackend, D>(param.id);
        let gb = self.b.remove::<B::InnerBackend, D>(param.id);
        let g = match (ga, gb) {
            (Some(x), Some(y)) => Some(x * self.wa + y * self.wb),
            (Some(x), None) => Some(x * self.wa),
            (None, Some(y)) => Some(y * self.wb),
            (None, None) => None,
        };
        if let Some(g) = g {
            self.out.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

/// `wa·a + wb·b`, parameter by parameter (consumes both).
pub fn combine<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut a: GradientsParams,
    wa: f32,
    mut b: GradientsParams,
    wb: f32,
) -> GradientsParams {
    let mut v = CombineVisitor::<B> {
        a: &mut a,
        b: &mut b,
        wa,
        wb,
        out: GradientsParams::new(),
        _b: std::marker::PhantomData,
    };
    model.visit(&mut v);
    v.out
}
