//! The multi-tensor AdamW against burn's per-tensor one: the same weights, norms and saved state
//! (on the CPU to the bit where no norm is involved), parameters without a gradient left alone,
//! and on the software GPU the same step in fewer launches.

use super::{FlatError, FlatLayout};
use crate::model::VisionLanguageModel;
use crate::model::config::small_config;
use crate::model::load::native_model;
use crate::model::{Model, host_f32, max_abs_diff};
use crate::train::gradient::{Form, Gradient};
use crate::train::trainer::{OptimSettings, Trainer, param_ids};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

type Ad = burn::backend::Autodiff<crate::model::Cpu>;

fn settings(grad_clip: f64) -> OptimSettings {
    OptimSettings {
        steps: 10,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_ratio: 0.0,
        weight_decay: 0.1,
        grad_clip,
    }
}

/// Made-up gradients for every parameter of `model` (a pattern that moves with `step`), less
/// the parameter at index `skip`.
fn grads<B: AutodiffBackend>(
    model: &Model<B>,
    step: usize,
    skip: Option<usize>,
) -> GradientsParams {
    struct Make<'a, B: AutodiffBackend> {
        out: GradientsParams,
        step: usize,
        skip: Option<usize>,
        at: usize,
        device: &'a B::Device,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Make<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let at = self.at;
            self.at += 1;
            if Some(at) == self.skip {
                return;
            }
            let shape = param.shape();
            let v: Vec<f32> = (0..shape.num_elements())
                .map(|i| ((i * 7 + at * 13 + self.step * 29) % 23) as f32 / 23.0 - 0.4)
                .collect();
            let g = Tensor::<B::InnerBackend, D>::from_data(TensorData::new(v, shape), self.device);
            self.out.register::<B::InnerBackend, D>(param.id, g);
        }
    }
    let device = model_device(model);
    let mut make = Make::<B> {
        out: GradientsParams::new(),
        step,
        skip,
        at: 0,
        device: &device,
    };
    model.visit(&mut make);
    make.out
}

fn model_device<B: Backend>(model: &Model<B>) -> B::Device {
    model.devices().into_iter().next().unwrap_or_default()
}

/// Every parameter's values, in the module tree's order.
fn values<B: Backend>(model: &Model<B>) -> Vec<Vec<f32>> {
    struct Read(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Read {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(host_f32(param.val().reshape([-1])).unwrap());
        }
    }
    let mut r = Read(Vec::new());
    model.visit(&mut r);
    r.0
}

fn pair<B: AutodiffBackend>(clip: f64, device: &B::Device) -> (Trainer<B>, Trainer<B>) {
    let model = native_model::<B>(&small_config(), None, 5, device).unwrap();
    let bytes = model.weights_bytes().unwrap();
    let again = model.clone().with_weights(&bytes).unwrap();
    (
        Trainer::with_optimizer(model, &settings(clip), device, true),
        Trainer::with_optimizer(again, &settings(clip), device, false),
    )
}

fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y).0)
        .fold(0.0, f32::max)
}

#[test]
fn the_layout_aligns_every_parameter() {
    let model = native_model::<Ad>(&small_config(), None, 5, &Default::default()).unwrap();
    let layout = FlatLayout::of::<Ad, _>(&model);
    let total: usize = values(&model).iter().map(Vec::len).sum();
    assert_eq!(layout.slots.len(), param_ids(&model).len());
    assert!(
        layout
            .slots
            .iter()
            .all(|&(start, _)| start % super::ALIGN == 0)
    );
    assert!(layout.len() >= total && layout.len() < total + super::ALIGN * layout.slots.len());
    // Gathered and handed back, the parameters are unchanged.
    let flat = layout.params::<Ad, _>(&model, &Default::default());
    let back = layout.scatter::<Ad, _>(model.clone(), &flat);
    assert_eq!(values(&back), values(&model));
}

/// Without clipping both optimizers do the same arithmetic: the same weights and the same saved
/// state, bit for bit, and a state saved by one continues in the other.
#[test]
fn flat_and_per_tensor_adamw_agree_to_the_bit() {
    let dev = Default::default();
    let (mut flat, mut per) = pair::<Ad>(0.0, &dev);
    for step in 0..3 {
        let f = flat.step(step, grads(flat.model(), step, None)).unwrap();
        let p = per.step(step, grads(per.model(), step, None)).unwrap();
        let (f, p) = (
            host_f32(f.grad_norm).unwrap(),
            host_f32(p.grad_norm).unwrap(),
        );
        assert!((f[0] - p[0]).abs() <= 1e-5 * p[0], "norms {f:?} {p:?}");
    }
    assert_eq!(flat.weights().unwrap(), per.weights().unwrap());
    let (fs, ps) = (flat.state().unwrap(), per.state().unwrap());
    assert_eq!(fs, ps, "the saved states differ");
    // Crossed over: the flat optimizer continues from the per-tensor state and vice versa.
    flat.load_state(&ps).unwrap();
    per.load_state(&fs).unwrap();
    flat.step(3, grads(flat.model(), 3, None)).unwrap();
    per.step(3, grads(per.model(), 3, None)).unwrap();
    assert_eq!(flat.weights().unwrap(), per.weights().unwrap());
}

/// With the global-norm clip active the two agree to rounding (the norm's sums run in another
/// order); a parameter without a gradient keeps its weights in both.
#[test]
fn clipped_steps_and_missing_gradients_agree() {
    let dev = Default::default();
    let (mut flat, mut per) = pair::<Ad>(0.05, &dev);
    let before = values(flat.model());
    for step in 0..3 {
        let skip = (step == 2).then_some(4);
        flat.step(step, grads(flat.model(), step, skip)).unwrap();
        per.step(step, grads(per.model(), step, skip)).unwrap();
    }
    let (f, p) = (values(flat.model()), values(per.model()));
    assert!(worst(&f, &p) < 1e-6, "{}", worst(&f, &p));
    assert_ne!(f[3], before[3], "a parameter with gradients moves");
    // Index 4 had no gradient at the last step: its value is the one after step 2 in both.
    let (mut f2, mut p2) = pair::<Ad>(0.05, &dev);
    for step in 0..2 {
        f2.step(step, grads(f2.model(), step, None)).unwrap();
        p2.step(step, grads(p2.model(), step, None)).unwrap();
    }
    assert_eq!(f[4], values(f2.model())[4]);
    assert_eq!(p[4], values(p2.model())[4]);
}

/// One step of NGDiff's shape in a trainer's form: two micro-batches' gradients summed, a second
/// gradient, the two norms, their weighted combination, the step.
fn combined_step<B: AutodiffBackend>(
    t: &mut Trainer<B>,
    step: usize,
) -> [Tensor<B::InnerBackend, 1>; 3] {
    let dev = model_device(t.model());
    let form = t.form().clone();
    let model = t.model();
    let g = |k: usize, skip| form.gradient::<B, _>(model, grads(model, k, skip), &dev);
    let a = Gradient::accumulate(Some(g(step, None)), model, g(step + 7, Some(2))).unwrap();
    let b = g(step + 3, Some(5));
    let (na, nb) = (a.norm(model, &dev), b.norm(model, &dev));
    let wa = na.clone() / (na.clone() + nb.clone());
    let wb = wa.clone().neg() + 1.0;
    let c = Gradient::combine(model, a, wa, b, wb).unwrap();
    let done = t.step(step, c).unwrap();
    [na, nb, done.grad_norm]
}

/// Gradients summed, normed and combined as one buffer give what burn's per-parameter maps give:
/// the same norms and, after the step, the same weights (to rounding: sums in another order).
#[test]
fn flat_gradients_sum_and_combine_like_the_maps() {
    let dev = Default::default();
    let (mut flat, mut per) = pair::<Ad>(0.05, &dev);
    assert!(matches!(flat.form(), Form::Flat(_)));
    assert!(matches!(per.form(), Form::PerTensor));
    for step in 0..3 {
        let f = combined_step(&mut flat, step).map(|t| host_f32(t).unwrap()[0]);
        let p = combined_step(&mut per, step).map(|t| host_f32(t).unwrap()[0]);
        for (x, y) in f.iter().zip(&p) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "norms {f:?} {p:?}"
            );
        }
    }
    let (f, p) = (values(flat.model()), values(per.model()));
    assert!(worst(&f, &p) < 1e-6, "{}", worst(&f, &p));
    // A flat gradient handed to the per-tensor optimizer is split back into the map: every
    // parameter's gradient in its own shape and place, the missing one still missing.
    let form = flat.form().clone();
    let g = form.gradient::<Ad, _>(per.model(), grads(per.model(), 9, Some(1)), &dev);
    let back = g.into_params(per.model()).unwrap();
    let again = grads(per.model(), 9, Some(1));
    let (b, a) = (
        grad_values(per.model(), &back),
        grad_values(per.model(), &again),
    );
    assert_eq!(b, a);
    assert!(b[1].is_none() && b.iter().filter(|g| g.is_some()).count() == b.len() - 1);
    // A parameter without a gradient in the whole step keeps its weights under both forms.
    let before = [&flat, &per].map(|t| values(t.model()));
    for t in [&mut flat, &mut per] {
        let form = t.form().clone();
        let g = form.gradient::<Ad, _>(t.model(), grads(t.model(), 4, Some(3)), &dev);
        t.step(3, g).unwrap();
    }
    let (f, p) = (values(flat.model()), values(per.model()));
    assert_eq!([&f[3], &p[3]], [&before[0][3], &before[1][3]]);
    assert_ne!(f[4], before[0][4], "a parameter with a gradient moves");
    assert!(worst(&f, &p) < 1e-6, "{}", worst(&f, &p));
}

/// Each parameter's gradient in `g` (flattened; `None` where it has none), in the module tree's
/// order.
fn grad_values<B: AutodiffBackend>(model: &Model<B>, g: &GradientsParams) -> Vec<Option<Vec<f32>>> {
    struct Read<'a>(&'a GradientsParams, Vec<Option<Vec<f32>>>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Read<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = self.0.get::<B::InnerBackend, D>(param.id);
            if let Some(t) = &t {
                assert_eq!(t.shape(), param.shape());
            }
            self.1.push(t.map(|t| host_f32(t.reshape([-1])).unwrap()));
        }
    }
    let mut r = Read(g, Vec::new());
    model.visit(&mut r);
    r.1
}

/// A flat gradient of a model of another shape is refused, not stepped.
#[test]
fn a_gradient_of_another_model_is_refused() {
    let dev = Default::default();
    let (mut flat, _) = pair::<Ad>(0.0, &dev);
    let mut cfg = small_config();
    cfg.layers += 1;
    let other = native_model::<Ad>(&cfg, None, 5, &dev).unwrap();
    let form = Form::Flat(std::sync::Arc::new(FlatLayout::of::<Ad, _>(&other)));
    let g = form.gradient::<Ad, _>(&other, grads(&other, 0, None), &dev);
    let before = flat.weights().unwrap();
    let err = flat.step(0, g).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("another") || e.contains("parameter tensors")));
    assert_eq!(flat.weights().unwrap(), before);
    let g = form.gradient::<Ad, _>(&other, grads(&other, 0, None), &dev);
    assert!(matches!(
        g.into_params(flat.model()),
        Err(FlatError::Layout { .. })
    ));
}

/// Kernel launches of `f` on the software GPU (the queue drained before and after), and its value.
#[cfg(feature = "wgpu")]
fn counted<T>(dev: &burn::backend::wgpu::WgpuDevice, f: impl FnOnce() -> T) -> (u64, T) {
    use crate::model::gpu::KernelCounts;
    let _ = <burn::backend::Wgpu as Backend>::sync(dev);
    let before = KernelCounts::now();
    let out = f();
    let _ = <burn::backend::Wgpu as Backend>::sync(dev);
    (KernelCounts::now().since(before).launches, out)
}

/// On the software GPU the flat step equals burn's per-tensor step and launches fewer kernels.
#[cfg(feature = "wgpu")]
#[test]
fn on_the_software_gpu_the_flat_step_launches_fewer_kernels() {
    use crate::model::gpu::software_gpu;
    type W = burn::backend::Autodiff<burn::backend::Wgpu>;
    let (_gpu, dev) = software_gpu();
    let (mut flat, mut per) = pair::<W>(0.05, &dev);
    let launches = |t: &mut Trainer<W>, step: usize| {
        let g = grads(t.model(), step, None);
        counted(&dev, || t.step(step, g).unwrap()).0
    };
    // Two warm-up steps (first moments, compilation), then one counted.
    let mut counts = [0, 0];
    for step in 0..3 {
        counts = [launches(&mut flat, step), launches(&mut per, step)];
    }
    let (f, p) = (values(flat.model()), values(per.model()));
    assert!(worst(&f, &p) < 1e-5, "{}", worst(&f, &p));
    let n = param_ids(flat.model()).len() as u64;
    eprintln!(
        "launches per step: flat {}, per-tensor {} ({n} tensors)",
        counts[0], counts[1]
    );
    assert!(
        counts[0] + 2 * n <= counts[1],
        "flat {} launches, per-tensor {} ({n} parameter tensors)",
        counts[0],
        counts[1]
    );
}

/// On the software GPU, summing, norming and combining gradients as one buffer launches fewer
/// kernels than doing it a parameter tensor at a time, for the same result.
#[cfg(feature = "wgpu")]
#[test]
fn on_the_software_gpu_flat_gradients_launch_fewer_kernels() {
    use crate::model::gpu::software_gpu;
    type W = burn::backend::Autodiff<burn::backend::Wgpu>;
    let (_gpu, dev) = software_gpu();
    let (mut flat, mut per) = pair::<W>(0.05, &dev);
    let launches = |t: &mut Trainer<W>, step: usize| counted(&dev, || combined_step(t, step));
    let mut counts = [0, 0];
    for step in 0..3 {
        let (f, nf) = launches(&mut flat, step);
        let (p, np) = launches(&mut per, step);
        counts = [f, p];
        let nf = nf.map(|t| host_f32(t).unwrap()[0]);
        let np = np.map(|t| host_f32(t).unwrap()[0]);
        for (x, y) in nf.iter().zip(&np) {
            assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{nf:?} {np:?}");
        }
    }
    let (f, p) = (values(flat.model()), values(per.model()));
    assert!(worst(&f, &p) < 1e-5, "{}", worst(&f, &p));
    let n = param_ids(flat.model()).len() as u64;
    eprintln!(
        "launches for sum + norms + combination + step: flat {}, per-tensor {} ({n} tensors)",
        counts[0], counts[1]
    );
    assert!(
        counts[0] + 3 * n <= counts[1],
        "flat {} launches, per-tensor {} ({n} parameter tensors)",
        counts[0],
        counts[1]
    );
}
