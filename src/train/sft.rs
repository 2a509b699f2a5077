//! The SFT loop: AdamW with gradient clipping, cosine schedule with warmup, gradient accumulation,
//! the objectives of [`super::objective`], periodic diagnostics (perception's share of tokens,
//! loss and gradient norm under the standard objective), periodic held-out evaluation through a
//! callback, and resumable snapshots (weights + optimizer state + log) in a scratch directory.

use super::batch::{Example, make_batch};
use super::grads::{combine, grad_norm};
use super::objective::{ObjectiveKind, Selector, Term, span_mask, terms, token_weights};
use super::schedule::cosine_with_warmup;
use crate::model::checkpoint::{model_from_bytes, weights_to_bytes};
use crate::model::{ModelError, Vlm, VlmConfig};
use crate::util::rng::keyed;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Everything the loop needs besides data and model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SftSettings {
    pub objective: ObjectiveKind,
    pub lambda: f64,
    pub extra_spans: Vec<(String, f64)>,
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub diagnostics_every: usize,
    pub snapshot_every: usize,
    pub eval_every: usize,
    pub seed: u64,
    /// Longest text (prompt + target) fed to the model.
    pub max_text: usize,
}

/// Held-out accuracies at one point of training.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EvalPoint {
    pub a_p: f64,
    pub a_r: f64,
    pub a: f64,
}

/// One row of the training log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogRow {
    pub step: usize,
    pub loss: f64,
    pub loss_perception: f64,
    pub loss_reasoning: f64,
    pub perception_token_share: f64,
    pub perception_loss_share: f64,
    pub perception_grad_share: Option<f64>,
    /// Mean perception cross-entropy with the image blanked (diagnostic steps): how much the
    /// model's transcription relies on the image.
    pub loss_perception_blank: Option<f64>,
    pub lambda: Option<f64>,
    pub lr: f64,
    pub eval: Option<EvalPoint>,
}

/// Wall-clock measurements (kept apart from the deterministic log).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimingRow {
    pub step: usize,
    pub seconds: f64,
    pub tokens: usize,
}

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("training: {0}")]
    Other(String),
    #[error("snapshot at {path}: {msg}")]
    Snapshot { path: String, msg: String },
}

/// Hooks for a run without held-out evaluation or progress display.
pub struct NoEval;

impl<B: AutodiffBackend> SftHooks<B> for NoEval {
    fn eval(&mut self, _: usize, _: &Vlm<B::InnerBackend>) -> Result<Option<EvalPoint>, String> {
        Ok(None)
    }
}

/// Result of a finished run.
pub struct SftOutput {
    pub weights: Vec<u8>,
    pub log: Vec<LogRow>,
    pub timing: Vec<TimingRow>,
}

/// Callbacks from the loop.
pub trait SftHooks<B: AutodiffBackend> {
    /// Held-out evaluation of the current weights (`None`: no held-out set).
    fn eval(
        &mut self,
        step: usize,
        model: &Vlm<B::InnerBackend>,
    ) -> Result<Option<EvalPoint>, String>;
    /// Called after each optimizer step (progress, fault injection).
    fn after_step(&mut self, _step: usize, _row: &LogRow, _tokens_per_sec: f64) {}
}

#[derive(Serialize, Deserialize)]
struct SnapshotState {
    settings: SftSettings,
    step: usize,
    log: Vec<LogRow>,
    timing: Vec<TimingRow>,
}

type Optim<B> = burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, Vlm<B>, B>;

fn save_snapshot<B: AutodiffBackend>(
    dir: &Path,
    settings: &SftSettings,
    step: usize,
    model: &Vlm<B>,
    optim: &Optim<B>,
    log: &[LogRow],
    timing: &[TimingRow],
) -> Result<(), TrainError> {
    let err = |msg: String| TrainError::Snapshot {
        path: dir.display().to_string(),
        msg,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    // Burn's own record keeps parameter ids, which the optimizer state is keyed by.
    let weights = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(model.clone().into_record(), ())
        .map_err(|e| err(format!("model state: {e:?}")))?;
    let optim_bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(optim.to_record(), ())
        .map_err(|e| err(format!("optimizer state: {e:?}")))?;
    let state = SnapshotState {
        settings: settings.clone(),
        step,
        log: log.to_vec(),
        timing: timing.to_vec(),
    };
    let w = |name: &str, bytes: &[u8]| {
        crate::util::fsx::write_atomic(&dir.join(name), bytes).map_err(|e| err(e.to_string()))
    };
    w("model.bin", &weights)?;
    w("optim.bin", &optim_bytes)?;
    // The state file is written last: it is what makes a snapshot valid.
    w(
        "state.json",
        &serde_json::to_vec(&state).map_err(|e| err(e.to_string()))?,
    )
}

#[allow(clippy::type_complexity)]
fn load_snapshot<B: AutodiffBackend>(
    dir: &Path,
    settings: &SftSettings,
    cfg: &VlmConfig,
    device: &B::Device,
    optim: Optim<B>,
) -> Result<Option<(usize, Vlm<B>, Optim<B>, Vec<LogRow>, Vec<TimingRow>)>, TrainError> {
    let Ok(state_bytes) = std::fs::read(dir.join("state.json")) else {
        return Ok(None);
    };
    let Ok(state) = serde_json::from_slice::<SnapshotState>(&state_bytes) else {
        return Ok(None);
    };
    if &state.settings != settings {
        return Ok(None);
    }
    let err = |msg: String| TrainError::Snapshot {
        path: dir.display().to_string(),
        msg,
    };
    let weights = std::fs::read(dir.join("model.bin")).map_err(|e| err(e.to_string()))?;
    let record = BinBytesRecorder::<FullPrecisionSettings>::default()
        .load(weights, device)
        .map_err(|e| err(format!("model state: {e:?}")))?;
    let model = Vlm::<B>::new(cfg, device).load_record(record);
    let optim_bytes = std::fs::read(dir.join("optim.bin")).map_err(|e| err(e.to_string()))?;
    let record = BinBytesRecorder::<FullPrecisionSettings>::default()
        .load(optim_bytes, device)
        .map_err(|e| err(format!("optimizer state: {e:?}")))?;
    Ok(Some((
        state.step,
        model,
        optim.load_record(record),
        state.log,
        state.timing,
    )))
}

/// The examples of micro-batch `micro` of `step`: epochs are keyed permutations of the data.
fn batch_indices(n: usize, settings: &SftSettings, step: usize, micro: usize) -> Vec<usize> {
    let bs = settings.batch_size;
    let start = (step * settings.grad_accum + micro) * bs;
    let mut out = Vec::with_capacity(bs);
    let mut perm_epoch = usize::MAX;
    let mut perm: Vec<usize> = Vec::new();
    for c in start..start + bs {
        let epoch = c / n;
        if epoch != perm_epoch {
            perm = (0..n).collect();
            perm.shuffle(&mut keyed(settings.seed, "sft/shuffle", epoch as u64, 0));
            perm_epoch = epoch;
        }
        out.push(perm[c % n]);
    }
    out
}

fn nll<B: AutodiffBackend>(
    model: &Vlm<B>,
    batch: &super::batch::Batch<B>,
    images: Tensor<B, 3>,
) -> Tensor<B, 2> {
    let logits = model.forward_text(images, batch.inputs.clone());
    let lp = log_softmax(logits, 2);
    let [b, l] = batch.labels.dims();
    lp.gather(2, batch.labels.clone().reshape([b, l, 1]))
        .reshape([b, l])
        .neg()
}

fn weighted_grads<B: AutodiffBackend>(
    model: &Vlm<B>,
    batch: &super::batch::Batch<B>,
    weights: Vec<f32>,
    scale: f32,
) -> (GradientsParams, Vec<f32>) {
    let device = batch.inputs.device();
    let [b, l] = batch.labels.dims();
    let w = Tensor::<B, 2>::from_data(
        TensorData::new(
            weights.iter().map(|x| x * scale).collect::<Vec<_>>(),
            [b, l],
        ),
        &device,
    );
    let per_token = nll(model, batch, batch.images.clone());
    let host = crate::model::host_f32(per_token.clone().detach()).unwrap_or_default();
    let loss = (per_token * w).sum();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    (grads, host)
}

fn add<B: AutodiffBackend>(
    model: &Vlm<B>,
    acc: Option<GradientsParams>,
    g: GradientsParams,
) -> GradientsParams {
    match acc {
        Some(a) => combine::<B, _>(model, a, 1.0, g, 1.0),
        None => g,
    }
}

/// Runs SFT from `init` (or a fresh model) and returns the final weights and logs.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend>(
    settings: &SftSettings,
    cfg: &VlmConfig,
    init: Option<&[u8]>,
    train_set: &[Example],
    device: &B::Device,
    scratch: &Path,
    pad: u32,
    hooks: &mut dyn SftHooks<B>,
) -> Result<SftOutput, TrainError> {
    if train_set.is_empty() {
        return Err(TrainError::Other("no training examples".into()));
    }
    if settings.batch_size == 0 || settings.grad_accum == 0 {
        return Err(TrainError::Other(
            "batch_size and grad_accum must be at least 1".into(),
        ));
    }
    B::seed(device, settings.seed);
    let mut model = match init {
        Some(bytes) => model_from_bytes::<B>(cfg, bytes, device)?,
        None => Vlm::<B>::new(cfg, device),
    };
    let mut optim_cfg = AdamWConfig::new().with_weight_decay(settings.weight_decay as f32);
    if settings.grad_clip > 0.0 {
        optim_cfg = optim_cfg.with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(settings.grad_clip as f32),
        ));
    }
    let mut optim: Optim<B> = optim_cfg.init();
    let (mut start, mut log, mut timing) = (0, Vec::new(), Vec::new());
    if let Some((s, m, o, l, t)) =
        load_snapshot::<B>(scratch, settings, cfg, device, optim_cfg.init())?
    {
        (start, model, optim, log, timing) = (s, m, o, l, t);
    }
    let n = train_set.len();
    let max_text = settings.max_text;
    for step in start..settings.steps {
        let t0 = Instant::now();
        let lr = cosine_with_warmup(
            step,
            settings.steps,
            settings.lr,
            settings.min_lr,
            settings.warmup_ratio,
        );
        let scale = 1.0 / settings.grad_accum as f32;
        let (mut acc, mut acc_p, mut acc_r) = (None, None, None);
        let (mut sum_loss, mut sum_p, mut sum_r, mut n_p, mut n_r, mut tokens) =
            (0f64, 0f64, 0f64, 0usize, 0usize, 0usize);
        let mut objective_value = 0f64;
        let diagnostics = settings.diagnostics_every > 0 && step % settings.diagnostics_every == 0;
        let mut grad_share = None;
        let mut lambda = match settings.objective {
            ObjectiveKind::Reweight => Some(settings.lambda),
            _ => None,
        };
        let (mut dp, mut dr) = (None, None);
        let (mut blank_sum, mut blank_n) = (0f64, 0usize);
        for micro in 0..settings.grad_accum {
            let idx = batch_indices(n, settings, step, micro);
            let exs: Vec<&Example> = idx.iter().map(|&i| &train_set[i]).collect();
            let batch = make_batch::<B>(&exs, cfg.image_size, max_text, pad, device);
            let pmask = span_mask(&exs, &batch.target_index, "perception");
            let rmask = span_mask(&exs, &batch.target_index, "reasoning");
            let host = if settings.objective == ObjectiveKind::Ngdiff {
                let half = |name: &str| -> Vec<Term> { vec![(Selector::Span(name.into()), 1.0)] };
                let (gp, h) = weighted_grads(
                    &model,
                    &batch,
                    token_weights(&exs, &batch.target_index, &half("perception")),
                    scale,
                );
                let (gr, _) = weighted_grads(
                    &model,
                    &batch,
                    token_weights(&exs, &batch.target_index, &half("reasoning")),
                    scale,
                );
                acc_p = Some(add(&model, acc_p, gp));
                acc_r = Some(add(&model, acc_r, gr));
                h
            } else {
                let w = token_weights(
                    &exs,
                    &batch.target_index,
                    &terms(settings.objective, settings.lambda, &settings.extra_spans),
                );
                let (g, h) = weighted_grads(&model, &batch, w.clone(), scale);
                objective_value +=
                    h.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64;
                acc = Some(add(&model, acc, g));
                h
            };
            for (j, v) in host.iter().enumerate() {
                if pmask[j] {
                    sum_p += *v as f64;
                    n_p += 1;
                }
                if rmask[j] {
                    sum_r += *v as f64;
                    n_r += 1;
                }
            }
            sum_loss += host
                .iter()
                .zip(batch.target_index.iter().flatten())
                .filter(|(_, k)| k.is_some())
                .map(|(v, _)| *v as f64)
                .sum::<f64>();
            tokens += batch
                .target_index
                .iter()
                .flatten()
                .filter(|k| k.is_some())
                .count();
            if diagnostics {
                // Perception vs reasoning gradient norms under the standard objective.
                let total = batch
                    .target_index
                    .iter()
                    .flatten()
                    .filter(|k| k.is_some())
                    .count()
                    .max(1) as f32;
                let mk = |mask: &[bool]| {
                    mask.iter()
                        .map(|&m| if m { 1.0 / total } else { 0.0 })
                        .collect::<Vec<f32>>()
                };
                let (gp, _) = weighted_grads(&model, &batch, mk(&pmask), scale);
                let (gr, _) = weighted_grads(&model, &batch, mk(&rmask), scale);
                dp = Some(add(&model, dp, gp));
                dr = Some(add(&model, dr, gr));
                let blank =
                    crate::model::host_f32(nll(&model, &batch, batch.images.zeros_like()).detach())
                        .unwrap_or_default();
                for (v, &m) in blank.iter().zip(&pmask) {
                    if m {
                        blank_sum += *v as f64;
                        blank_n += 1;
                    }
                }
            }
        }
        if let (Some(gp), Some(gr)) = (dp, dr) {
            let (np, nr) = (
                grad_norm::<B, _>(&model, &gp),
                grad_norm::<B, _>(&model, &gr),
            );
            grad_share = Some(np / (np + nr).max(1e-12));
        }
        let grads = if settings.objective == ObjectiveKind::Ngdiff {
            let (gp, gr) = match (acc_p, acc_r) {
                (Some(p), Some(r)) => (p, r),
                _ => return Err(TrainError::Other("no gradients".into())),
            };
            let (np, nr) = (
                grad_norm::<B, _>(&model, &gp),
                grad_norm::<B, _>(&model, &gr),
            );
            let l = super::objective::ngdiff_lambda(np, nr);
            lambda = Some(l);
            objective_value = l * sum_p / n_p.max(1) as f64 + (1.0 - l) * sum_r / n_r.max(1) as f64;
            combine::<B, _>(&model, gp, l as f32, gr, (1.0 - l) as f32)
        } else {
            acc.ok_or_else(|| TrainError::Other("no gradients".into()))?
        };
        model = optim.step(lr, model, grads);
        let mut row = LogRow {
            step: step + 1,
            loss: objective_value,
            loss_perception: sum_p / n_p.max(1) as f64,
            loss_reasoning: sum_r / n_r.max(1) as f64,
            perception_token_share: n_p as f64 / tokens.max(1) as f64,
            perception_loss_share: sum_p / sum_loss.max(1e-12),
            perception_grad_share: grad_share,
            loss_perception_blank: (blank_n > 0).then(|| blank_sum / blank_n as f64),
            lambda,
            lr,
            eval: None,
        };
        let is_last = step + 1 == settings.steps;
        if (settings.eval_every > 0 && (step + 1) % settings.eval_every == 0) || is_last {
            row.eval = hooks
                .eval(step + 1, &model.valid())
                .map_err(TrainError::Other)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        timing.push(TimingRow {
            step: step + 1,
            seconds: secs,
            tokens,
        });
        hooks.after_step(step + 1, &row, tokens as f64 / secs.max(1e-9));
        log.push(row);
        if settings.snapshot_every > 0 && (step + 1) % settings.snapshot_every == 0 && !is_last {
            save_snapshot(scratch, settings, step + 1, &model, &optim, &log, &timing)?;
        }
    }
    Ok(SftOutput {
        weights: weights_to_bytes(&model)?,
        log,
        timing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once() {
        let s = SftSettings {
            objective: ObjectiveKind::Standard,
            lambda: 0.5,
            extra_spans: vec![],
            steps: 10,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            grad_clip: 0.0,
            diagnostics_every: 0,
            snapshot_every: 0,
            eval_every: 0,
            seed: 1,
            max_text: 100,
        };
        let mut seen: Vec<usize> = (0..3).flat_map(|st| batch_indices(12, &s, st, 0)).collect();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        assert_eq!(batch_indices(12, &s, 5, 0), batch_indices(12, &s, 5, 0));
    }

    /// The perception token is a function of the image alone (which quadrant holds ink), so
    /// the loss can only fall below ln 4 by reading the image; the blank-image loss stays high.
    #[test]
    fn learns_to_read_the_image() {
        type B = burn::backend::Autodiff<crate::model::Cpu>;
        let s = 16usize;
        let example = |q: usize| {
            let mut image = vec![0.0f32; s * s];
            let (r0, c0) = ((q / 2) * s / 2, (q % 2) * s / 2);
            for r in r0..r0 + s / 2 {
                for c in c0..c0 + s / 2 {
                    image[r * s + c] = 1.0;
                }
            }
            Example {
                id: format!("q{q}"),
                task: "t".into(),
                perception: String::new(),
                image,
                prompt: vec![1],
                target: vec![4 + q as u32, 2],
                spans: vec![("perception".into(), 0, 1), ("reasoning".into(), 1, 2)],
            }
        };
        let data: Vec<Example> = (0..4).map(example).collect();
        for conv_stem in [0, 4] {
            let cfg = VlmConfig {
                image_size: s,
                patch_size: 8,
                vit_dim: 16,
                vit_layers: 1,
                vit_heads: 2,
                conv_stem,
                d_model: 16,
                layers: 1,
                heads: 2,
                mlp_ratio: 2,
                vocab_size: 10,
                max_seq_len: 16,
                rope_theta: 10000.0,
            };
            let settings = SftSettings {
                objective: ObjectiveKind::Standard,
                lambda: 0.5,
                extra_spans: vec![],
                steps: 60,
                batch_size: 4,
                grad_accum: 1,
                lr: 1e-2,
                min_lr: 1e-3,
                warmup_ratio: 0.0,
                weight_decay: 0.0,
                grad_clip: 1.0,
                diagnostics_every: 59,
                snapshot_every: 0,
                eval_every: 0,
                seed: 3,
                max_text: 8,
            };
            let dir = crate::util::fsx::TempDir::new("asymm-read").unwrap();
            let out = train::<B>(
                &settings,
                &cfg,
                None,
                &data,
                &Default::default(),
                dir.path(),
                0,
                &mut NoEval,
            )
            .unwrap();
            let last = out.log.last().unwrap();
            let blank = out.log[59].loss_perception_blank.unwrap();
            assert!(
                last.loss_perception < 0.2,
                "stem {conv_stem}: {}",
                last.loss_perception
            );
            assert!(blank > 1.0, "stem {conv_stem}: {blank}");
        }
    }
}
