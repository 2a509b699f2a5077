//! The part of a training loop that does not depend on the objective, shared by SFT and the RL
//! update: the model and its AdamW state, the learning-rate schedule, global-norm gradient
//! clipping, per-step statistics, and resumable snapshots in a scratch directory.
//!
//! A loop reads top to bottom: `Trainer::new` → `resume` (a snapshot whose run state matches) →
//! for each step: compute gradients on `trainer.model()`, `trainer.step(step, grads)`, maybe
//! `trainer.snapshot(..)` → `trainer.weights()`.
//!
//! The optimizer is burn's per-tensor AdamW on the CPU and the multi-tensor one of
//! [`super::flat`] on the cubecl backends ([`super::flat::pays`]); both save the same state.

use super::flat::{AdamWConsts, FlatAdamW, FlatError, FlatLayout};
use super::gradient::{Form, Gradient};
use super::grads::{clip_factor, grad_norm_device, scale_device};
use super::schedule::cosine_with_warmup;
use crate::model::VisionLanguageModel;
use crate::model::{Model, ModelError};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamW, AdamWConfig, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    #[error(transparent)]
    Flat(#[from] FlatError),
}

pub type Result<T> = std::result::Result<T, TrainerError>;

/// AdamW's moment decays and ε (burn's defaults).
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

type Records<B> = HashMap<ParamId, burn::optim::record::AdaptorRecord<AdamW, B>>;

/// The two implementations of one AdamW.
enum Optim<B: AutodiffBackend> {
    /// burn's, a parameter tensor at a time.
    PerTensor(burn::optim::adaptor::OptimizerAdaptor<AdamW, Model<B>, B>),
    /// All parameters in one buffer.
    Flat(FlatAdamW<B::InnerBackend>),
}

/// The model being trained with its optimizer.
pub struct Trainer<B: AutodiffBackend> {
    model: Model<B>,
    optim: Optim<B>,
    form: Form,
    settings: OptimSettings,
    device: B::Device,
}

const MODEL_FILE: &str = "model.bin";
const OPTIM_FILE: &str = "optim.bin";
const STATE_FILE: &str = "state.json";

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer for `model` (see [`crate::model::load::native_model`]).
    pub fn new(model: Model<B>, settings: &OptimSettings, device: &B::Device) -> Self {
        Self::with_optimizer(model, settings, device, super::flat::pays::<B>())
    }

    /// A trainer with the multi-tensor AdamW (`flat`) or burn's per-tensor one, whatever the
    /// backend.
    pub fn with_optimizer(
        model: Model<B>,
        settings: &OptimSettings,
        device: &B::Device,
        flat: bool,
    ) -> Self {
        let form = if flat {
            Form::Flat(Arc::new(FlatLayout::of::<B, _>(&model)))
        } else {
            Form::PerTensor
        };
        Trainer {
            model,
            optim: Self::fresh_optim(settings, flat),
            form,
            settings: settings.clone(),
            device: device.clone(),
        }
    }

    fn fresh_optim(settings: &OptimSettings, flat: bool) -> Optim<B> {
        if flat {
            Optim::Flat(Self::flat_adamw(settings))
        } else {
            Optim::PerTensor(Self::adamw_config(settings).init())
        }
    }

    fn adamw_config(settings: &OptimSettings) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(BETA_1)
            .with_beta_2(BETA_2)
            .with_epsilon(EPSILON)
            .with_weight_decay(settings.weight_decay as f32)
    }

    fn flat_adamw(settings: &OptimSettings) -> FlatAdamW<B::InnerBackend> {
        FlatAdamW::new(AdamWConsts {
            beta_1: BETA_1,
            beta_2: BETA_2,
            epsilon: EPSILON,
            weight_decay: settings.weight_decay as f32,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// The form the optimizer takes its gradients in: gradients made with it (micro-batches
    /// summed, NGDiff's halves combined) are then stepped without conversion.
    pub fn form(&self) -> &Form {
        &self.form
    }

    /// The learning rate at `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let s = &self.settings;
        cosine_with_warmup(step, s.steps, s.lr, s.min_lr, s.warmup_ratio)
    }

    /// Clips `grads` to the global norm and applies one AdamW step at the scheduled rate, all on
    /// the device: the clip factor is `clip / max(‖g‖, clip)`, exactly 1 (the gradient unchanged)
    /// when the norm is within the threshold. Nothing is read back; see [`StepStats::read`].
    pub fn step(
        &mut self,
        step: usize,
        grads: impl Into<Gradient<B>>,
    ) -> Result<DeviceStep<B::InnerBackend>> {
        let lr = self.lr(step);
        let clip = self.settings.grad_clip as f32;
        let norm = match (&mut self.optim, grads.into()) {
            (Optim::Flat(optim), Gradient::Flat(grad)) => {
                let model = self.model.clone();
                let (model, norm) = optim.step_flat::<B, _>(lr, clip, model, grad)?;
                self.model = model;
                norm
            }
            (Optim::Flat(optim), Gradient::PerTensor(grads)) => {
                let model = self.model.clone();
                let (model, norm) = optim.step::<B, _>(lr, clip, model, grads, &self.device);
                self.model = model;
                norm
            }
            (Optim::PerTensor(optim), grads) => {
                let grads = grads.into_params(&self.model)?;
                let norm = grad_norm_device::<B, _>(&self.model, &grads, &self.device);
                let grads = if clip > 0.0 {
                    scale_device::<B, _>(&self.model, grads, clip_factor(norm.clone(), clip))
                } else {
                    grads
                };
                self.model = optim.step(lr, self.model.clone(), grads);
                norm
            }
        };
        Ok(DeviceStep {
            lr,
            grad_norm: norm,
        })
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
        let mut records: Records<B> = match &self.optim {
            Optim::PerTensor(optim) => optim.to_record().into_iter().collect(),
            Optim::Flat(optim) => optim.records::<B, _>(&self.model),
        };
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
        let mut records = Records::<B>::new();
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
        self.optim = match &self.optim {
            Optim::PerTensor(_) => {
                let optim = Self::adamw_config(&self.settings).init();
                Optim::PerTensor(optim.load_record(records.into_iter().collect()))
            }
            Optim::Flat(_) => {
                let mut o = Self::flat_adamw(&self.settings);
                o.load_records::<B, _>(&self.model, records, &self.device)
                    .map_err(|e| TrainerError::State(e.to_string()))?;
                Optim::Flat(o)
            }
        };
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
        if let Optim::Flat(o) = &mut self.optim {
            o.forget_weights();
        }
        let st = OptimState::from_bytes(&read(OPTIM_FILE)?).map_err(|e| err(e.to_string()))?;
        self.load_state(&st).map_err(|e| err(e.to_string()))?;
        Ok(Some(state))
    }
}

/// The ids of a model's float parameters in visiting order (the module tree's order).
pub(crate) fn param_ids<B: AutodiffBackend>(model: &Model<B>) -> Vec<ParamId> {
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
