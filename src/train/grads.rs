//! Gradient utilities over a model's parameters: squared norms and weighted combinations of
//! `GradientsParams`, by visiting every float parameter.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

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

/// ‖g‖₂ over all parameters of `model` as a `[1]` tensor on the device (no host read); 0 when
/// no parameter has a gradient.
pub fn grad_norm_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let mut v = NormVisitor::<B> { grads, sum: None };
    model.visit(&mut v);
    match v.sum {
        Some(s) => s.sqrt(),
        None => Tensor::zeros([1], device),
    }
}

/// The global-norm clip factor `clip / max(‖g‖, clip)` as a `[1]` tensor on the device: exactly 1
/// when the norm is within the threshold.
pub fn clip_factor<B: Backend>(norm: Tensor<B, 1>, clip: f32) -> Tensor<B, 1> {
    Tensor::full([1], clip, &norm.device()) / norm.clamp_min(clip)
}

/// ‖g‖₂ over all parameters of `model` (one host read); 0 when no parameter has a gradient.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> Result<f64, crate::model::ModelError> {
    let mut v = NormVisitor::<B> { grads, sum: None };
    model.visit(&mut v);
    match v.sum {
        Some(s) => Ok(crate::model::host_f32(s)?
            .first()
            .map(|&x| (x as f64).sqrt())
            .unwrap_or(0.0)),
        None => Ok(0.0),
    }
}

/// `factor·g`, parameter by parameter (consumes `g`).
pub fn scale<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    g: GradientsParams,
    factor: f32,
) -> GradientsParams {
    combine::<B, M>(model, g, factor, GradientsParams::new(), 0.0)
}

/// The combination weights of [`combine_device`]: host numbers or `[1]` tensors on the device.
#[derive(Clone)]
enum Weight<B: burn::tensor::backend::Backend> {
    Host(f32),
    Device(Tensor<B, 1>),
}

impl<B: burn::tensor::backend::Backend> Weight<B> {
    fn apply<const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Weight::Host(w) => t * *w,
            Weight::Device(w) => t * w.clone().reshape([1; D]),
        }
    }
}

/// `factor·g` with `factor` a `[1]` tensor on the device (no host read).
pub fn scale_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut g: GradientsParams,
    factor: Tensor<B::InnerBackend, 1>,
) -> GradientsParams {
    let mut none = GradientsParams::new();
    let mut v = CombineVisitor::<B> {
        a: &mut g,
        b: &mut none,
        wa: Weight::Device(factor),
        wb: Weight::Host(0.0),
        out: GradientsParams::new(),
    };
    model.visit(&mut v);
    v.out
}

/// `wa·a + wb·b` with the weights `[1]` tensors on the device (no host read; consumes both).
pub fn combine_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut a: GradientsParams,
    wa: Tensor<B::InnerBackend, 1>,
    mut b: GradientsParams,
    wb: Tensor<B::InnerBackend, 1>,
) -> GradientsParams {
    let mut v = CombineVisitor::<B> {
        a: &mut a,
        b: &mut b,
        wa: Weight::Device(wa),
        wb: Weight::Device(wb),
        out: GradientsParams::new(),
    };
    model.visit(&mut v);
    v.out
}

struct CombineVisitor<'a, B: AutodiffBackend> {
    a: &'a mut GradientsParams,
    b: &'a mut GradientsParams,
    wa: Weight<B::InnerBackend>,
    wb: Weight<B::InnerBackend>,
    out: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CombineVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let ga = self.a.remove::<B::InnerBackend, D>(param.id);
        let gb = self.b.remove::<B::InnerBackend, D>(param.id);
        let g = match (ga, gb) {
            (Some(x), Some(y)) => Some(self.wa.apply(x) + self.wb.apply(y)),
            (Some(x), None) => Some(self.wa.apply(x)),
            (None, Some(y)) => Some(self.wb.apply(y)),
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
        wa: Weight::Host(wa),
        wb: Weight::Host(wb),
        out: GradientsParams::new(),
    };
    model.visit(&mut v);
    v.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::TensorData;

    type B = Autodiff<crate::model::Cpu>;
    type Inner = crate::model::Cpu;

    /// Gradients with every weight entry `w` and every bias entry `b`.
    fn grads(model: &Linear<B>, w: f32, b: f32) -> GradientsParams {
        let dev = Default::default();
        let mut g = GradientsParams::new();
        g.register::<Inner, 2>(
            model.weight.id,
            Tensor::from_data(TensorData::new(vec![w; 6], [2, 3]), &dev),
        );
        if let Some(bias) = &model.bias {
            g.register::<Inner, 1>(
                bias.id,
                Tensor::from_data(TensorData::new(vec![b; 3], [3]), &dev),
            );
        }
        g
    }

    /// Global-norm clipping scales every parameter's gradient by one factor: the direction is
    /// kept (weights stay twice the biases), unlike a per-tensor clip, and the norm lands on the
    /// threshold.
    #[test]
    fn global_clip_keeps_the_direction() {
        let model: Linear<B> = LinearConfig::new(2, 3).init(&Default::default());
        let g = grads(&model, 2.0, 1.0);
        let n = grad_norm::<B, _>(&model, &g).unwrap();
        let clipped = scale::<B, _>(&model, g, (1.0 / n) as f32);
        assert!((grad_norm::<B, _>(&model, &clipped).unwrap() - 1.0).abs() < 1e-5);
        let w = clipped
            .get::<Inner, 2>(model.weight.id)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let b = clipped
            .get::<Inner, 1>(model.bias.as_ref().unwrap().id)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!((w[0] / b[0] - 2.0).abs() < 1e-5, "{w:?} {b:?}");
        assert!((w[0] - 2.0 / 27f32.sqrt()).abs() < 1e-5);
    }

    #[test]
    fn norm_and_combination_over_parameters() {
        let model: Linear<B> = LinearConfig::new(2, 3).init(&Default::default());
        // 6 weights of 2 and 3 biases of 1: ‖g‖ = √(6·4 + 3·1) = √27.
        let n = grad_norm::<B, _>(&model, &grads(&model, 2.0, 1.0)).unwrap();
        assert!((n - 27f64.sqrt()).abs() < 1e-5, "{n}");
        // NGDiff's combination: 0.25·g_a + 0.75·g_b with g_a = (2, 1), g_b = (-2, 3)
        // gives weights -1 and biases 2.5: ‖·‖ = √(6 + 3·6.25).
        let c = combine::<B, _>(
            &model,
            grads(&model, 2.0, 1.0),
            0.25,
            grads(&model, -2.0, 3.0),
            0.75,
        );
        let n = grad_norm::<B, _>(&model, &c).unwrap();
        assert!((n - (6.0f64 + 18.75).sqrt()).abs() < 1e-5, "{n}");
        let l = super::super::objective::ngdiff_lambda(
            grad_norm::<B, _>(&model, &grads(&model, 2.0, 1.0)).unwrap(),
            grad_norm::<B, _>(&model, &grads(&model, 4.0, 2.0)).unwrap(),
        );
        // Norms √27 and 2√27: λ = (1/√27)/(1/√27 + 1/(2√27)) = 2/3.
        assert!((l - 2.0 / 3.0).abs() < 1e-6, "{l}");
    }
}
