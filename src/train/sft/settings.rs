//! The SFT loop's settings, early stopping, and the checks run before a step is taken.

use super::TrainError;
use crate::data::Example;
use crate::train::objective::ObjectiveKind;
use serde::{Deserialize, Serialize};

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
    /// passes run concurrently ([`crate::train::parallel`]); a fixed setting, not the core count, so
    /// that results do not depend on the machine.
    #[serde(default = "one")]
    pub data_shards: usize,
    /// Data-parallel peers ([`crate::train::peers`]): each trains a replica on its part of every
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
    /// Padded lengths are rounded up to a multiple of this ([`crate::train::batch::bucketed`]); 1 on
    /// the CPU, 64 on a GPU, where shapes that repeat spare kernel compilations.
    #[serde(default = "one")]
    pub seq_bucket: usize,
    /// Early stopping on the standard objective's loss over held-out examples (the hooks'
    /// [`super::SftHooks::val_loss`]); `steps` is then the most the run trains.
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

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

pub(super) fn check_settings(
    settings: &SftSettings,
    train_set: &[Example],
) -> Result<(), TrainError> {
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
