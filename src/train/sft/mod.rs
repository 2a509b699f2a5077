//! The SFT loop on the shared [`super::trainer`] (AdamW, schedule, global-norm clipping,
//! snapshots): gradient accumulation over keyed micro-batches, the objectives of
//! [`super::objective`], periodic diagnostics (perception's share of tokens, of loss and of
//! gradient norm under the objective being trained, the image-blanked perception loss), and
//! periodic held-out evaluation through a callback.

use super::peers::{self, Peer, PeerError, PerPeer};
use super::trainer::{OptimSettings, StepStats, Trainer, TrainerError};
use crate::data::Example;
pub use crate::eval::score::EvalPoint;
use crate::model::{Model, ModelError, VisionLanguageModel};
use crate::util::rng::keyed;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
pub use log::{LogRow, TimingRow, last_diagnostic};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use settings::check_settings;
pub use settings::{EarlyStop, SftSettings};
use std::path::Path;
use std::time::Instant;
pub(crate) use step::f32_on_device;
pub use step::standard_loss;
use step::{OnDevice, StepCtx, objective_gradient, read_row, step_gradients};

mod log;
mod settings;
mod step;

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
