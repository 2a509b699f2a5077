//! The SFT loop on the shared [`super::trainer`] (AdamW, schedule, global-norm clipping,
//! snapshots): gradient accumulation over keyed micro-batches, the objectives of
//! [`super::objective`], periodic diagnostics (perception's share of tokens, of loss and of
//! gradient norm under the objective being trained, the image-blanked perception loss), and
//! periodic held-out evaluation through a callback.

use super::batch::make_batch;
use super::gradient::{Form, Gradient};
use super::objective::{ObjectiveKind, Selector, Term, span_mask, terms, token_weights};
use super::parallel::{gradients, map_shards, replica, split};
use super::peers::{self, Peer, PeerError, PerPeer};
use super::trainer::{OptimSettings, StepStats, Trainer, TrainerError};
use crate::data::Example;
pub use crate::eval::score::EvalPoint;
use crate::model::VisionLanguageModel;
use crate::model::{Model, ModelError, host_f32};
use crate::util::rng::keyed;
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
pub use log::{LogRow, TimingRow, last_diagnostic};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

mod log;

/// Everything the loop needs besides data and model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SftSettings {
    pub objective: ObjectiveKind,
    pub lambda: f64,
    pub extra_spans: Vec<(String, f64)>,
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Each micro-batch is split into this many contiguous shards whose forward and backward
    /// passes run concurrently ([`super::parallel`]); a fixed setting, not the core count, so
    /// that results do not depend on the machine.
    #[serde(default = "one")]
    pub data_shards: usize,
    /// Data-parallel peers ([`super::peers`]): each trains a replica on its part of every
    /// micro-batch and the peers' gradients are all-reduced before the optimizer step.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub data_parallel: usize,
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
    /// Padded lengths are rounded up to a multiple of this ([`super::batch::bucketed`]); 1 on
    /// the CPU, 64 on a GPU, where shapes that repeat spare kernel compilations.
    #[serde(default = "one")]
    pub seq_bucket: usize,
    /// Early stopping on the standard objective's loss over held-out examples (the hooks'
    /// [`SftHooks::val_loss`]); `steps` is then the most the run trains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStop>,
}

/// When to stop: the validation loss, checked every `every` steps, has not fallen more than
/// `min_delta` below its best for `patience` checks in a row. The run keeps the weights it has
/// when it stops (within `patience` checks of the best), so a resumed run decides from its log
/// alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EarlyStop {
    pub every: usize,
    pub patience: usize,
    #[serde(default)]
    pub min_delta: f64,
}

impl EarlyStop {
    /// Whether a run whose validation losses so far were `seen` (in order) stops.
    pub fn should_stop(&self, seen: &[f64]) -> bool {
        let (mut best, mut stale) = (f64::INFINITY, 0);
        for &l in seen {
            if l < best - self.min_delta {
                (best, stale) = (l, 0);
            } else {
                stale += 1;
            }
        }
        stale >= self.patience.max(1)
    }
}

impl Default for SftSettings {
    /// One standard step at batch 8, lr 1e-3 (cosine to 1e-4, no warmup), no weight decay,
    /// global-norm clipping at 1.0, no diagnostics, snapshots or evaluation.
    fn default() -> Self {
        SftSettings {
            objective: ObjectiveKind::Standard,
            lambda: 0.5,
            extra_spans: vec![],
            steps: 1,
            batch_size: 8,
            grad_accum: 1,
            data_shards: 1,
            data_parallel: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            grad_clip: 1.0,
            diagnostics_every: 0,
            snapshot_every: 0,
            eval_every: 0,
            seed: 0,
            max_text: 256,
            seq_bucket: 1,
            early_stop: None,
        }
    }
}

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("held-out evaluation: {0}")]
    Eval(#[from] crate::eval::EvalError),
    #[error("training: {0}")]
    Other(String),
    #[error(transparent)]
    Trainer(#[from] TrainerError),
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// Hooks for a run without held-out evaluation or progress display.
pub struct NoEval;

impl<B: AutodiffBackend> SftHooks<B> for NoEval {}

/// Result of a finished run.
pub struct SftOutput<B: Backend> {
    pub model: Model<B>,
    pub log: Vec<LogRow>,
    pub timing: Vec<TimingRow>,
}

impl<B: Backend> SftOutput<B> {
    /// The trained weights in the checkpoint format ([`Model::weights_bytes`]).
    pub fn weights(&self) -> Result<Vec<u8>, ModelError> {
        self.model.weights_bytes()
    }
}

/// Callbacks from the loop.
pub trait SftHooks<B: AutodiffBackend> {
    /// Held-out evaluation of the current weights (`None`: no held-out set).
    fn eval(
        &mut self,
        _step: usize,
        _model: &Model<B::InnerBackend>,
    ) -> Result<Option<EvalPoint>, TrainError> {
        Ok(None)
    }
    /// The standard objective's loss on the validation examples ([`standard_loss`]), read by
    /// early stopping (`None`: no validation set).
    fn val_loss(
        &mut self,
        _step: usize,
        _model: &Model<B::InnerBackend>,
    ) -> Result<Option<f64>, TrainError> {
        Ok(None)
    }
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

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
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

fn nll<B: Backend>(
    model: &Model<B>,
    batch: &super::batch::Batch<B>,
    images: Tensor<B, 3>,
) -> Result<Tensor<B, 2>, TrainError> {
    let logits = model.forward_text(images, batch.inputs.clone())?;
    let lp = log_softmax(logits, 2);
    let [b, l] = batch.labels.dims();
    Ok(lp
        .gather(2, batch.labels.clone().reshape([b, l, 1]))
        .reshape([b, l])
        .neg())
}

/// The gradients of `Σ nll · w · scale` and the per-token cross-entropy [B, L] (detached, on the
/// device).
fn weighted_grads<B: AutodiffBackend>(
    model: &Model<B>,
    batch: &super::batch::Batch<B>,
    weights: &[f32],
    scale: f32,
) -> Result<(GradientsParams, Tensor<B::InnerBackend, 2>), TrainError> {
    let device = batch.inputs.device();
    let [b, l] = batch.labels.dims();
    let w = Tensor::<B, 2>::from_data(
        TensorData::new(
            weights.iter().map(|x| x * scale).collect::<Vec<_>>(),
            [b, l],
        ),
        &device,
    );
    gradients(model, |m| {
        let per_token = nll(m, batch, batch.images.clone())?;
        let detached = per_token.clone().detach().inner();
        Ok(((per_token * w).sum(), detached))
    })
}

/// Where each sum sits in a micro-batch's [`MicroStats::sums`].
const SUM_P: usize = 0;
const SUM_R: usize = 1;
const SUM_ALL: usize = 2;
const OBJECTIVE: usize = 3;
const SUM_BLANK: usize = 4;
const SUMS: usize = 5;

/// What one micro-batch contributed to a step: sums on the device (read once per step), token
/// counts on the host.
struct MicroStats<B: Backend> {
    /// `[SUMS]`: summed cross-entropy over perception / reasoning / all target tokens, the value
    /// of a fixed-weight objective, and the summed perception cross-entropy with the image
    /// blanked (diagnostic steps).
    sums: Option<Tensor<B, 1>>,
    n_p: usize,
    n_r: usize,
    tokens: usize,
    blank_n: usize,
}

impl<B: Backend> Default for MicroStats<B> {
    fn default() -> Self {
        MicroStats {
            sums: None,
            n_p: 0,
            n_r: 0,
            tokens: 0,
            blank_n: 0,
        }
    }
}

impl<B: Backend> MicroStats<B> {
    fn add(&mut self, o: MicroStats<B>) {
        self.sums = match (self.sums.take(), o.sums) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.n_p += o.n_p;
        self.n_r += o.n_r;
        self.tokens += o.tokens;
        self.blank_n += o.blank_n;
    }

    /// The sums and counts of every data-parallel peer.
    fn sum_over(self, peer: &Peer<B>) -> Result<Self, TrainError> {
        let counts = peer.sum_counts(&[self.n_p, self.n_r, self.tokens, self.blank_n])?;
        Ok(MicroStats {
            sums: self.sums.map(|s| peer.sum(s)).transpose()?,
            n_p: counts[0],
            n_r: counts[1],
            tokens: counts[2],
            blank_n: counts[3],
        })
    }
}

/// Gradients accumulated over a step's micro-batches, in the trainer's [`Form`].
struct StepGrads<B: AutodiffBackend> {
    /// The objective's gradient (fixed-weight objectives).
    total: Option<Gradient<B>>,
    /// NGDiff's two halves: the perception and reasoning mean losses' gradients.
    perception: Option<Gradient<B>>,
    reasoning: Option<Gradient<B>>,
    /// Diagnostic: the objective restricted to perception / reasoning tokens.
    diag_p: Option<Gradient<B>>,
    diag_r: Option<Gradient<B>>,
}

impl<B: AutodiffBackend> Default for StepGrads<B> {
    fn default() -> Self {
        StepGrads {
            total: None,
            perception: None,
            reasoning: None,
            diag_p: None,
            diag_r: None,
        }
    }
}

/// `*acc += g`.
fn accumulate<B: AutodiffBackend>(
    acc: &mut Option<Gradient<B>>,
    model: &Model<B>,
    g: Option<Gradient<B>>,
) -> Result<(), TrainError> {
    if let Some(g) = g {
        *acc = Some(Gradient::accumulate(acc.take(), model, g).map_err(TrainerError::from)?);
    }
    Ok(())
}

impl<B: AutodiffBackend> StepGrads<B> {
    /// Adds another shard's or micro-batch's gradients, field by field.
    fn add(&mut self, model: &Model<B>, o: StepGrads<B>) -> Result<(), TrainError> {
        accumulate(&mut self.total, model, o.total)?;
        accumulate(&mut self.perception, model, o.perception)?;
        accumulate(&mut self.reasoning, model, o.reasoning)?;
        accumulate(&mut self.diag_p, model, o.diag_p)?;
        accumulate(&mut self.diag_r, model, o.diag_r)
    }

    /// Every data-parallel peer's gradients summed, field by field (the fields set are the same
    /// on every peer: they follow from the settings and the step).
    fn sum_over(self, peer: &Peer<B::InnerBackend>, model: &Model<B>) -> Result<Self, TrainError> {
        let sum = |g: Option<Gradient<B>>| g.map(|g| peer.sum_gradient(model, g)).transpose();
        Ok(StepGrads {
            total: sum(self.total)?,
            perception: sum(self.perception)?,
            reasoning: sum(self.reasoning)?,
            diag_p: sum(self.diag_p)?,
            diag_r: sum(self.diag_r)?,
        })
    }
}

/// What every micro-batch of a step shares.
struct StepCtx<'a, B: AutodiffBackend> {
    settings: &'a SftSettings,
    /// The trainer's gradient form.
    form: &'a Form,
    pad: u32,
    device: &'a B::Device,
    diagnostics: bool,
}

fn check_settings(settings: &SftSettings, train_set: &[Example]) -> Result<(), TrainError> {
    if train_set.is_empty() {
        return Err(TrainError::Other("no training examples".into()));
    }
    if settings.batch_size == 0
        || settings.grad_accum == 0
        || settings.data_shards == 0
        || settings.data_parallel == 0
    {
        return Err(TrainError::Other(
            "batch_size, grad_accum, data_shards and data_parallel must be at least 1".into(),
        ));
    }
    if settings.data_parallel > 1 && settings.data_shards > 1 {
        return Err(TrainError::Other(format!(
            "data_parallel = {} and data_shards = {} both split each micro-batch across threads; \
             set one of them to 1",
            settings.data_parallel, settings.data_shards
        )));
    }
    if settings.batch_size < settings.data_parallel {
        return Err(TrainError::Other(format!(
            "batch_size {} is smaller than data_parallel = {}: some peers would have no examples",
            settings.batch_size, settings.data_parallel
        )));
    }
    if settings.objective == ObjectiveKind::Ngdiff && !settings.extra_spans.is_empty() {
        return Err(TrainError::Other(format!(
            "the ngdiff objective balances the perception and reasoning spans only; it cannot \
             also weight {:?} (remove span_weights or use objective = \"reweight\")",
            settings
                .extra_spans
                .iter()
                .map(|s| s.0.as_str())
                .collect::<Vec<_>>()
        )));
    }
    if let Some(e) = train_set
        .iter()
        .find(|e| e.prompt.len() + e.target.len() > settings.max_text + 1)
    {
        return Err(TrainError::Other(format!(
            "example `{}` has {} prompt + target tokens, more than the {} the model reads after \
             the image: it would be cut without its answer",
            e.id,
            e.prompt.len() + e.target.len(),
            settings.max_text + 1
        )));
    }
    Ok(())
}

/// `Σ_j x[j]·cols[c][j]` for each column `c` of host values, `x` [B, L] flattened: `[k]` sums
/// in f32 on the device (a bf16 backend's values are cast first, and no matrix product is used,
/// whose f32 inputs a GPU may round to TF32), so the logged statistics keep f32 precision.
fn column_sums<B: Backend>(x: Tensor<B, 2>, cols: &[Vec<f32>], device: &B::Device) -> Tensor<B, 1> {
    let n = x.dims()[0] * x.dims()[1];
    let x = f32_on_device(x.reshape([n]));
    let sums = cols
        .iter()
        .map(|c| {
            let c = f32_on_device(Tensor::<B, 1>::from_data(
                TensorData::new(c.clone(), [n]),
                device,
            ));
            (x.clone() * c).sum()
        })
        .collect();
    Tensor::cat(sums, 0)
}

/// `t` as f32 on its device (a no-op on f32 backends).
pub(crate) fn f32_on_device<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.cast(burn::tensor::FloatDType::F32)
}

/// Forward and backward passes of one micro-batch, accumulated into `g`; no host read.
fn micro_batch<B: AutodiffBackend>(
    ctx: &StepCtx<B>,
    model: &Model<B>,
    exs: &[&Example],
    scale: f32,
    g: &mut StepGrads<B>,
) -> Result<MicroStats<B::InnerBackend>, TrainError> {
    let StepCtx {
        settings,
        form,
        pad,
        device,
        diagnostics,
    } = *ctx;
    let batch = make_batch::<B>(
        exs,
        model.image_size(),
        settings.max_text,
        settings.seq_bucket,
        pad,
        device,
    );
    // The gradient of `Σ nll · w · scale` in the trainer's form, and the per-token loss.
    let grads = |w: &[f32]| -> Result<_, TrainError> {
        let (g, h) = weighted_grads(model, &batch, w, scale)?;
        Ok((Some(form.gradient::<B, _>(model, g, device)), h))
    };
    let pmask = span_mask(exs, &batch.target_index, "perception");
    let rmask = span_mask(exs, &batch.target_index, "reasoning");
    let (per_token, objective_w) = if settings.objective == ObjectiveKind::Ngdiff {
        let half = |name: &str| -> Vec<Term> { vec![(Selector::Span(name.into()), 1.0)] };
        let w = |name| token_weights(exs, &batch.target_index, &half(name));
        let (gp, h) = grads(&w("perception"))?;
        accumulate(&mut g.perception, model, gp)?;
        let (gr, _) = grads(&w("reasoning"))?;
        accumulate(&mut g.reasoning, model, gr)?;
        (h, vec![0.0; pmask.len()])
    } else {
        let w = token_weights(
            exs,
            &batch.target_index,
            &terms(settings.objective, settings.lambda, &settings.extra_spans),
        );
        let (total, h) = grads(&w)?;
        accumulate(&mut g.total, model, total)?;
        if diagnostics {
            // Perception vs reasoning gradient under the objective being trained.
            let masked = |mask: &[bool]| {
                w.iter()
                    .zip(mask)
                    .map(|(&x, &m)| if m { x } else { 0.0 })
                    .collect::<Vec<f32>>()
            };
            let (gp, _) = grads(&masked(&pmask))?;
            accumulate(&mut g.diag_p, model, gp)?;
            let (gr, _) = grads(&masked(&rmask))?;
            accumulate(&mut g.diag_r, model, gr)?;
        }
        (h, w.iter().map(|x| x * scale).collect())
    };
    let f = |m: &[bool]| {
        m.iter()
            .map(|&b| f32::from(u8::from(b)))
            .collect::<Vec<f32>>()
    };
    let is_target: Vec<bool> = batch
        .target_index
        .iter()
        .flatten()
        .map(Option::is_some)
        .collect();
    let (pcol, rcol, tcol) = (f(&pmask), f(&rmask), f(&is_target));
    let sums = column_sums(per_token, &[pcol.clone(), rcol, tcol, objective_w], device);
    let blank = if diagnostics {
        let blank = nll(model, &batch, batch.images.zeros_like())?
            .detach()
            .inner();
        column_sums(blank, &[pcol], device)
    } else {
        f32_on_device(Tensor::zeros([1], device))
    };
    let n_p = pmask.iter().filter(|&&m| m).count();
    Ok(MicroStats {
        sums: Some(Tensor::cat(vec![sums, blank], 0)),
        n_p,
        n_r: rmask.iter().filter(|&&m| m).count(),
        tokens: is_target.iter().filter(|&&t| t).count(),
        blank_n: if diagnostics { n_p } else { 0 },
    })
}

/// The standard objective's loss of `model` on `examples`: each example's mean cross-entropy
/// over its target tokens, averaged over the examples, as the standard objective weighs a batch
/// (the validation loss of early stopping). Batches of `settings.batch_size`.
pub fn standard_loss<B: Backend>(
    model: &Model<B>,
    examples: &[Example],
    settings: &SftSettings,
    pad: u32,
    device: &B::Device,
) -> Result<f64, TrainError> {
    let mut per_example = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(settings.batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = make_batch::<B>(
            &refs,
            model.image_size(),
            settings.max_text,
            settings.seq_bucket,
            pad,
            device,
        );
        let nll = host_f32(nll(model, &batch, batch.images.clone())?)?;
        for (i, row) in batch.target_index.iter().enumerate() {
            let losses: Vec<f64> = row
                .iter()
                .enumerate()
                .filter(|(_, t)| t.is_some())
                .map(|(j, _)| f64::from(nll[i * batch.len + j]))
                .collect();
            if !losses.is_empty() {
                per_example.push(losses.iter().sum::<f64>() / losses.len() as f64);
            }
        }
    }
    if per_example.is_empty() {
        return Err(TrainError::Other(
            "the validation examples have no target tokens".into(),
        ));
    }
    Ok(per_example.iter().sum::<f64>() / per_example.len() as f64)
}

/// The gradients and statistics of step `step`: its micro-batches (each split into data
/// shards run concurrently on replicas of the model, summed in order), forward and backward;
/// with data-parallel peers, this peer's part of each micro-batch, then summed over the peers.
fn step_gradients<B: AutodiffBackend>(
    ctx: &StepCtx<B>,
    peer: &Peer<B::InnerBackend>,
    model: &Model<B>,
    train_set: &[Example],
    step: usize,
) -> Result<(StepGrads<B>, MicroStats<B::InnerBackend>), TrainError> {
    let settings = ctx.settings;
    let mut grads = StepGrads::default();
    let mut st = MicroStats::default();
    for micro in 0..settings.grad_accum {
        let idx = batch_indices(train_set.len(), settings, step, micro);
        let batch: Vec<&Example> = idx.iter().map(|&i| &train_set[i]).collect();
        let exs = peer.part(&batch);
        let shards = split(exs, settings.data_shards);
        // Token weights are per-example means over the batch: a shard's share of the batch
        // rescales them so that the shards' (and peers') gradients sum to the batch's.
        let scale = |shard: &[&Example]| {
            shard.len() as f32 / batch.len() as f32 / settings.grad_accum as f32
        };
        if shards.len() == 1 {
            st.add(micro_batch(ctx, model, exs, scale(exs), &mut grads)?);
            continue;
        }
        let parts = map_shards(shards.len(), |i| {
            let mut g = StepGrads::default();
            micro_batch(ctx, &replica(model), shards[i], scale(shards[i]), &mut g).map(|m| (m, g))
        });
        for part in parts {
            let (m, g) = part?;
            st.add(m);
            grads.add(model, g)?;
        }
    }
    if peer.count() > 1 {
        grads = grads.sum_over(peer, model)?;
        st = st.sum_over(peer)?;
    }
    Ok((grads, st))
}

/// A step's statistics besides the loss sums, still on the device until the step's one host
/// read: the global gradient norm, NGDiff's λ and half norms, the diagnostics' norms of the
/// objective restricted to perception and to reasoning.
struct OnDevice<I: Backend> {
    grad_norm: Tensor<I, 1>,
    ngdiff: Option<[Tensor<I, 1>; 3]>,
    diag: Option<[Tensor<I, 1>; 2]>,
}

type Norms<I> = (Option<[Tensor<I, 1>; 3]>, Option<[Tensor<I, 1>; 2]>);

/// The trained objective's gradient from the step's accumulated gradients (NGDiff: λ·g_p +
/// (1 − λ)·g_r with λ from the two norms), with NGDiff's `[λ, ‖g_p‖, ‖g_r‖]` and the
/// diagnostics' two norms on the device.
fn objective_gradient<B: AutodiffBackend>(
    settings: &SftSettings,
    model: &Model<B>,
    grads: StepGrads<B>,
    device: &B::Device,
) -> Result<(Gradient<B>, Norms<B::InnerBackend>), TrainError> {
    let diag = match (&grads.diag_p, &grads.diag_r) {
        (Some(gp), Some(gr)) => Some([gp.norm(model, device), gr.norm(model, device)]),
        _ => None,
    };
    if settings.objective == ObjectiveKind::Ngdiff {
        let (Some(gp), Some(gr)) = (grads.perception, grads.reasoning) else {
            return Err(TrainError::Other("no gradients".into()));
        };
        let (np, nr) = (gp.norm(model, device), gr.norm(model, device));
        let l = super::objective::ngdiff_lambda_device(np.clone(), nr.clone());
        let rest = l.clone().neg() + 1.0;
        let g = Gradient::combine(model, gp, l.clone(), gr, rest).map_err(TrainerError::from)?;
        return Ok((g, (Some([l, np, nr]), diag)));
    }
    let g = grads
        .total
        .ok_or_else(|| TrainError::Other("no gradients".into()))?;
    Ok((g, (None, diag)))
}

/// The log row of step `step` (0-based), with the step's one host read; `stats` turns the read
/// gradient norm into the optimizer step's statistics.
fn read_row<I: Backend>(
    settings: &SftSettings,
    step: usize,
    diagnostics: bool,
    st: MicroStats<I>,
    on_device: OnDevice<I>,
    device: &I::Device,
    stats: impl Fn(f64) -> StepStats,
) -> Result<LogRow, TrainError> {
    let mut parts = vec![
        st.sums
            .unwrap_or_else(|| f32_on_device(Tensor::zeros([SUMS], device))),
        on_device.grad_norm,
    ];
    let has_diag_norms = on_device.diag.is_some();
    parts.extend(on_device.ngdiff.into_iter().flatten());
    parts.extend(on_device.diag.into_iter().flatten());
    let parts = parts.into_iter().map(f32_on_device).collect();
    let host = host_f32(Tensor::cat(parts, 0))?;
    let v = |k: usize| host.get(k).copied().unwrap_or(f32::NAN) as f64;
    let stats = stats(v(SUMS));
    let (mean_p, mean_r) = (
        v(SUM_P) / st.n_p.max(1) as f64,
        v(SUM_R) / st.n_r.max(1) as f64,
    );
    let mut at = SUMS + 1;
    let mut next = || {
        at += 1;
        v(at - 1)
    };
    let (lambda, objective, mut grad_share) = if settings.objective == ObjectiveKind::Ngdiff {
        let (l, np, nr) = (next(), next(), next());
        // The trained objective's halves: λ·g_p and (1 − λ)·g_r.
        let (wp, wr) = (l * np, (1.0 - l) * nr);
        (
            Some(l),
            l * mean_p + (1.0 - l) * mean_r,
            diagnostics.then(|| wp / (wp + wr).max(1e-12)),
        )
    } else {
        let lambda = (settings.objective == ObjectiveKind::Reweight).then_some(settings.lambda);
        (lambda, v(OBJECTIVE), None)
    };
    if has_diag_norms {
        let (np, nr) = (next(), next());
        grad_share = Some(np / (np + nr).max(1e-12));
    }
    Ok(LogRow {
        step: step + 1,
        loss: objective,
        loss_perception: mean_p,
        loss_reasoning: mean_r,
        perception_token_share: st.n_p as f64 / st.tokens.max(1) as f64,
        perception_loss_share: v(SUM_P) / v(SUM_ALL).max(1e-12),
        perception_grad_share: grad_share,
        loss_perception_blank: (st.blank_n > 0).then(|| v(SUM_BLANK) / st.blank_n as f64),
        lambda,
        lr: stats.lr,
        grad_norm: stats.grad_norm,
        val_loss: None,
        eval: None,
    })
}

/// Runs SFT of `model` (see [`crate::model::load::native_model`]) and returns the trained
/// model and the logs: with `data_parallel` peers ([`super::peers`]), the leader's, which runs
/// the hooks.
pub fn train<B: AutodiffBackend>(
    settings: &SftSettings,
    model: Model<B>,
    train_set: &[Example],
    device: &B::Device,
    scratch: &Path,
    pad: u32,
    hooks: &mut (dyn SftHooks<B> + Send),
) -> Result<SftOutput<B::InnerBackend>, TrainError> {
    check_settings(settings, train_set)?;
    let hooks = std::sync::Mutex::new(Some(hooks));
    let models = PerPeer::new(model, settings.data_parallel);
    peers::run(settings.data_parallel, device, |peer| {
        let model = models
            .take(&peer)
            .ok_or_else(|| TrainError::Other("a peer without a model".into()))?;
        let mut leader = match peer.is_leader() {
            true => hooks.lock().unwrap_or_else(|e| e.into_inner()).take(),
            false => None,
        };
        let hooks: &mut dyn SftHooks<B> = match &mut leader {
            Some(h) => *h,
            None => &mut NoEval,
        };
        let run = Run {
            settings,
            train_set,
            device,
            scratch,
            pad,
        };
        run.train(&peer, model, hooks)
    })
}

/// What one peer's loop reads besides the model and the hooks.
struct Run<'a, B: AutodiffBackend> {
    settings: &'a SftSettings,
    train_set: &'a [Example],
    device: &'a B::Device,
    scratch: &'a Path,
    pad: u32,
}

impl<B: AutodiffBackend> Run<'_, B> {
    /// The loop of one peer (of the only one without data parallelism).
    fn train(
        &self,
        peer: &Peer<B::InnerBackend>,
        model: Model<B>,
        hooks: &mut dyn SftHooks<B>,
    ) -> Result<SftOutput<B::InnerBackend>, TrainError> {
        let Run {
            settings,
            train_set,
            device,
            scratch,
            pad,
        } = *self;
        let optim = OptimSettings {
            steps: settings.steps,
            lr: settings.lr,
            min_lr: settings.min_lr,
            warmup_ratio: settings.warmup_ratio,
            weight_decay: settings.weight_decay,
            grad_clip: settings.grad_clip,
        };
        let mut trainer = Trainer::<B>::new(model, &optim, device);
        let (mut start, mut log, mut timing) = (0, Vec::new(), Vec::new());
        if let Some(s) = trainer.resume::<SnapshotState>(scratch, |s| &s.settings == settings)? {
            (start, log, timing) = (s.step, s.log, s.timing);
        }
        // Peers that resumed from different steps would sum gradients of different weights.
        peer_agree(peer, "resumed at step", start)?;
        for step in start..settings.steps {
            let t0 = Instant::now();
            let ctx = StepCtx {
                settings,
                form: trainer.form(),
                pad,
                device,
                diagnostics: settings.diagnostics_every > 0
                    && step % settings.diagnostics_every == 0,
            };
            let (grads, st) = step_gradients(&ctx, peer, trainer.model(), train_set, step)?;
            let (objective, (ngdiff, diag)) =
                objective_gradient(settings, trainer.model(), grads, device)?;
            let diagnostics = ctx.diagnostics;
            let done = trainer.step(step, objective)?;
            let on_device = OnDevice {
                grad_norm: done.grad_norm,
                ngdiff,
                diag,
            };
            let stats = |sum: f64| StepStats::read(done.lr, sum, trainer.grad_clip());
            let tokens = st.tokens;
            let mut row = read_row(settings, step, diagnostics, st, on_device, device, stats)?;
            let mut is_last = step + 1 == settings.steps;
            if let Some(stop) = &settings.early_stop
                && (step + 1) % stop.every.max(1) == 0
            {
                row.val_loss = hooks.val_loss(step + 1, &trainer.model().valid())?;
                let seen: Vec<f64> = log
                    .iter()
                    .chain([&row])
                    .filter_map(|r: &LogRow| r.val_loss)
                    .collect();
                // The leader's validation loss decides for every peer.
                is_last = peer.any(is_last || stop.should_stop(&seen))?;
            }
            if (settings.eval_every > 0 && (step + 1) % settings.eval_every == 0) || is_last {
                row.eval = hooks.eval(step + 1, &trainer.model().valid())?;
            }
            let secs = t0.elapsed().as_secs_f64();
            timing.push(TimingRow {
                step: step + 1,
                seconds: secs,
                tokens,
            });
            hooks.after_step(step + 1, &row, tokens as f64 / secs.max(1e-9));
            log.push(row);
            if peer.is_leader()
                && settings.snapshot_every > 0
                && (step + 1) % settings.snapshot_every == 0
                && !is_last
            {
                let state = SnapshotState {
                    settings: settings.clone(),
                    step: step + 1,
                    log: log.clone(),
                    timing: timing.clone(),
                };
                trainer.snapshot(scratch, &state)?;
            }
            if is_last {
                break;
            }
        }
        // Every peer ends at the same step: a peer that stopped early would leave another
        // waiting in an all-reduce, or training alone.
        peer_agree(peer, "ended at step", log.last().map_or(0, |r| r.step))?;
        Ok(SftOutput {
            model: trainer.model().valid(),
            log,
            timing,
        })
    }
}

/// Fails unless every data-parallel peer's `value` is this peer's.
fn peer_agree<I: Backend>(peer: &Peer<I>, what: &str, value: usize) -> Result<(), TrainError> {
    if peer.count() == 1 {
        return Ok(());
    }
    let sum = peer.sum_counts(&[value])?[0];
    if sum != value * peer.count() {
        return Err(TrainError::Other(format!(
            "data-parallel peer {} {what} {value}, the {} peers {sum} in all: their snapshots \
             or settings differ",
            peer.index(),
            peer.count()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
