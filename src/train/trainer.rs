//! The part of a training loop that does not depend on the objective, shared by SFT and the RL
//! update: the model and its AdamW state, the learning-rate schedule, global-norm gradient
//! clipping, per-step statistics, and resumable snapshots in a scratch directory.
//!
//! A loop reads top to bottom: `Trainer::new` → `resume` (a snapshot whose run state matches) →
//! for each step: compute gradients on `trainer.model`, `trainer.step(step, grads)`, maybe
//! `trainer.snapshot(..)` → `trainer.weights()`.

use super::grads::{grad_norm_device, scale_device};
use super::schedule::cosine_with_warmup;
use crate::model::checkpoint::model_from_bytes;
use crate::model::{Model, ModelError, Vlm, VlmConfig};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Optimizer, schedule and clipping settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OptimSettings {
    /// Total optimizer steps (the schedule's length).
    pub steps: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Clip the gradient to this global L2 norm over all parameters (0 = no clipping), as HF
    /// Trainer and LlamaFactory do; burn's own clipping is per tensor and is not used.
    pub grad_clip: f64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the gradient was scaled down to `grad_clip`.
    pub clipped: bool,
}

impl StepStats {
    /// The stats of a [`DeviceStep`] whose norm was read back as `grad_norm`.
    pub fn read(lr: f64, grad_norm: f64, grad_clip: f64) -> StepStats {
        StepStats {
            lr,
            grad_norm,
            clipped: grad_clip > 0.0 && grad_norm > grad_clip,
        }
    }
}

/// One optimizer step as it left the host: the learning rate, and the global gradient norm
/// before clipping as a `[1]` tensor still on the device, to be read with the loop's other
/// statistics of the step (one host read per step).
pub struct DeviceStep<B: Backend> {
    pub lr: f64,
    pub grad_norm: Tensor<B, 1>,
}

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("snapshot at {path}: {msg}")]
    Snapshot { path: String, msg: String },
    #[error("training state: {0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, TrainerError>;

type Optim<B> = burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, Model<B>, B>;

/// The model being trained with its optimizer.
pub struct Trainer<B: AutodiffBackend> {
    pub model: Model<B>,
    optim: Optim<B>,
    settings: OptimSettings,
    device: B::Device,
}

/// A built-in model: freshly initialized from `seed`, or the weights `init`.
pub fn native_model<B: Backend>(
    cfg: &VlmConfig,
    init: Option<&[u8]>,
    seed: u64,
    device: &B::Device,
) -> Result<Model<B>> {
    B::seed(device, seed);
    Ok(match init {
        Some(bytes) => model_from_bytes::<B>(cfg, bytes, device)?,
        None => Vlm::<B>::new(cfg, device),
    }
    .into())
}

const MODEL_FILE: &str = "model.bin";
const OPTIM_FILE: &str = "optim.bin";
const STATE_FILE: &str = "state.json";

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer for `model` (see [`native_model`]).
    pub fn new(model: Model<B>, settings: &OptimSettings, device: &B::Device) -> Self {
        Trainer {
            model,
            optim: Self::optim_config(settings).init(),
            settings: settings.clone(),
            device: device.clone(),
        }
    }

    fn optim_config(settings: &OptimSettings) -> AdamWConfig {
        AdamWConfig::new().with_weight_decay(settings.weight_decay as f32)
    }

    /// The learning rate at `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let s = &self.settings;
        cosine_with_warmup(step, s.steps, s.lr, s.min_lr, s.warmup_ratio)
    }

    /// Clips `grads` to the global norm and applies one AdamW step at the scheduled rate, all on
    /// the device: the clip factor is `clip / max(‖g‖, clip)`, exactly 1 (the gradient unchanged)
    /// when the norm is within the threshold. Nothing is read back; see [`StepStats::read`].
    pub fn step(&mut self, step: usize, grads: GradientsParams) -> DeviceStep<B::InnerBackend> {
        let lr = self.lr(step);
        let norm = grad_norm_device::<B, _>(&self.model, &grads, &self.device);
        let clip = self.settings.grad_clip as f32;
        let grads = if clip > 0.0 {
            let factor = Tensor::<B::InnerBackend, 1>::full([1], clip, &self.device)
                / norm.clone().clamp_min(clip);
            scale_device::<B, _>(&self.model, grads, factor)
        } else {
            grads
        };
        self.model = self.optim.step(lr, self.model.clone(), grads);
        DeviceStep {
            lr,
            grad_norm: norm,
        }
    }

    /// The clipping threshold (0: none).
    pub fn grad_clip(&self) -> f64 {
        self.settings.grad_clip
    }

    /// The current weights in the checkpoint format.
    pub fn weights(&self) -> Result<Vec<u8>> {
        Ok(self.model.weights_bytes()?)
    }

    /// The AdamW state (moments and step count of every parameter, in the model's parameter
    /// order, so the bytes do not depend on burn's random parameter ids) with a hash of the
    /// weights it belongs to, to carry training on elsewhere.
    pub fn state(&self) -> Result<OptimState> {
        let mut records = self.optim.to_record();
        let mut adam = Vec::new();
        for id in param_ids(&self.model) {
            match records.remove(&id) {
                Some(r) => {
                    let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
                        .record(r, ())
                        .map_err(|e| TrainerError::State(format!("optimizer: {e:?}")))?;
                    adam.push(1u8);
                    adam.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    adam.extend_from_slice(&bytes);
                }
                None => adam.push(0u8),
            }
        }
        Ok(OptimState {
            weights: *blake3::hash(&self.weights()?).as_bytes(),
            adam,
        })
    }

    /// Restores a [`Trainer::state`] taken with this trainer's current weights: the optimizer
    /// continues from its moments and step count.
    pub fn load_state(&mut self, state: &OptimState) -> Result<()> {
        if *blake3::hash(&self.weights()?).as_bytes() != state.weights {
            return Err(TrainerError::State(
                "the optimizer state was saved with other weights than the model's".into(),
            ));
        }
        let bad = |what: &str| TrainerError::State(format!("optimizer state: {what}"));
        // burn's own map type, emptied.
        let mut records = self.optim.to_record();
        records.clear();
        let mut rest: &[u8] = &state.adam;
        for id in param_ids(&self.model) {
            let (&flag, tail) = rest.split_first().ok_or_else(|| bad("truncated"))?;
            rest = tail;
            if flag == 0 {
                continue;
            }
            let (len, tail) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
            let len = u64::from_le_bytes(len.try_into().map_err(|_| bad("length"))?) as usize;
            let (bytes, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
            rest = tail;
            let record = BinBytesRecorder::<FullPrecisionSettings>::default()
                .load(bytes.to_vec(), &self.device)
                .map_err(|e| bad(&format!("{e:?}")))?;
            records.insert(id, record);
        }
        if !rest.is_empty() {
            return Err(bad("more parameters than the model has"));
        }
        self.optim = Self::optim_config(&self.settings)
            .init()
            .load_record(records);
        Ok(())
    }

    /// Writes weights, optimizer state and the loop's `state` to `dir`; the state file is
    /// written last, so a snapshot cut short is never taken for a valid one.
    pub fn snapshot<S: Serialize>(&self, dir: &Path, state: &S) -> Result<()> {
        let err = snapshot_error(dir);
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let st = self.state().map_err(|e| err(e.to_string()))?;
        let w = |name: &str, bytes: &[u8]| {
            crate::util::fsx::write_atomic(&dir.join(name), bytes).map_err(|e| err(e.to_string()))
        };
        w(MODEL_FILE, &self.weights()?)?;
        w(OPTIM_FILE, &st.to_bytes())?;
        w(
            STATE_FILE,
            &serde_json::to_vec(state).map_err(|e| err(e.to_string()))?,
        )
    }

    /// Restores the snapshot in `dir` if there is one whose state `accept`s (for example: the
    /// same run settings), returning that state; otherwise leaves the trainer as it is.
    pub fn resume<S: DeserializeOwned>(
        &mut self,
        dir: &Path,
        accept: impl FnOnce(&S) -> bool,
    ) -> Result<Option<S>> {
        let Ok(bytes) = std::fs::read(dir.join(STATE_FILE)) else {
            return Ok(None);
        };
        // A state from another code version or run is not ours to resume: start afresh.
        let Ok(state) = serde_json::from_slice::<S>(&bytes) else {
            return Ok(None);
        };
        if !accept(&state) {
            return Ok(None);
        }
        let err = snapshot_error(dir);
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| err(e.to_string()));
        self.model = self.model.clone().with_weights(&read(MODEL_FILE)?)?;
        let st = OptimState::from_bytes(&read(OPTIM_FILE)?).map_err(|e| err(e.to_string()))?;
        self.load_state(&st).map_err(|e| err(e.to_string()))?;
        Ok(Some(state))
    }
}

/// The ids of a model's float parameters in visiting order (the module tree's order).
fn param_ids<B: AutodiffBackend>(model: &Model<B>) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// A trainer's optimizer state ([`Trainer::state`]): the blake3 hash of the weights it was
/// taken with, and the AdamW records in parameter order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptimState {
    pub weights: [u8; 32],
    pub adam: Vec<u8>,
}

impl OptimState {
    /// One byte string: the weights' hash, then the records.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.weights.to_vec();
        v.extend_from_slice(&self.adam);
        v
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (hash, adam) = bytes
            .split_at_checked(32)
            .ok_or_else(|| TrainerError::State("optimizer state: truncated".into()))?;
        Ok(OptimState {
            weights: hash
                .try_into()
                .map_err(|_| TrainerError::State("optimizer state: hash".into()))?,
            adam: adam.to_vec(),
        })
    }
}

fn snapshot_error(dir: &Path) -> impl Fn(String) -> TrainerError {
    let path: PathBuf = dir.to_path_buf();
    move |msg| TrainerError::Snapshot {
        path: path.display().to_string(),
        msg,
    }
}
