//! sft-train: supervised fine-tuning of the VLM on formatted targets, from scratch or from an
//! `init` checkpoint (for example a perception-only stage). Objectives: `standard`, `reweight`
//! (fixed λ, plus optional weights for further named spans), `ngdiff`, `perception-only`.
//! Writes the checkpoint, a deterministic per-step log with periodic held-out a_p / a_r / a, and
//! the wall-clock timing. A killed run resumes from its last snapshot.

use super::model_io::{
    ModelChoice, hf_external, plan_of_artifact, plan_split_examples, read_tokenizer, write_model,
};
use super::{
    Outputs, Stage, StageError, Written, bail, ensure, input, input_id, optional, optional_id,
    output, outputs, write_table,
};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::data::Codec;
use crate::data::Example;
use crate::eval::score::heldout_eval;
use crate::model::load::ModelPlan;
use crate::model::{DeviceSpec, Model, VlmConfig};
use crate::table::cols;
use crate::text::Tokenizer;
use crate::train::objective::ObjectiveKind;
use crate::train::sft::{
    EarlyStop, EvalPoint, LogRow, SftHooks, SftSettings, TimingRow, TrainError, standard_loss,
    train,
};
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Free-form size overrides on top of the preset.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOverrides {
    pub image_size: Option<usize>,
    pub patch_size: Option<usize>,
    pub vit_dim: Option<usize>,
    pub vit_layers: Option<usize>,
    pub vit_heads: Option<usize>,
    pub d_model: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub mlp_ratio: Option<usize>,
    pub max_seq_len: Option<usize>,
}

/// What to do with a training example longer than the model's context.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Overlong {
    /// Refuse to train, naming the longest example and the limit.
    #[default]
    Error,
    /// Leave such examples out, counted in the log (`overlong_dropped`) and on stderr.
    Drop,
}

/// Hyperparameter presets; explicit fields override them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Hparams {
    /// Settings that learn from scratch on the `tiny` model.
    FromScratch,
    /// The paper's fine-tuning settings: lr 1e-6, batch 8, 500 steps, warmup 0.1.
    Paper,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftTrainConfig {
    /// Size preset, `tiny` or `small` (ignored when starting from `init`), or a checkpoint
    /// folder in the Hugging Face layout: `{ hf = "path", image_size = 224 }`.
    pub model: ModelChoice,
    pub size: ModelOverrides,
    pub hparams: Hparams,
    pub objective: ObjectiveKind,
    /// `reweight`: weight of the perception term (1 − λ for reasoning).
    pub lambda: f64,
    /// Further named spans and their weights (each divided by the span's length).
    pub span_weights: BTreeMap<String, f64>,
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub grad_accum: usize,
    /// Shards of each micro-batch trained concurrently (data parallelism over the cores); part
    /// of the result's identity, so fixed rather than the machine's core count.
    pub data_shards: usize,
    /// Data-parallel peers on the run's device (burn's collective): each trains a replica on its
    /// part of every micro-batch, gradients all-reduced before clipping. 1 = none.
    #[serde(skip_serializing_if = "is_one")]
    pub data_parallel: usize,
    pub lr: Option<f64>,
    pub min_lr: Option<f64>,
    pub warmup_ratio: Option<f64>,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub train_split: String,
    pub eval_split: String,
    /// Held-out evaluation every N steps (and at the end); 0 = only at the end.
    pub eval_every: usize,
    pub eval_items: usize,
    /// Token budget of the held-out rollouts; unset: the longest target plus a margin.
    pub eval_max_new_tokens: Option<usize>,
    /// Examples longer than the context: `error` (default) or `drop`.
    pub overlong: Overlong,
    /// Perception/reasoning gradient-norm diagnostic every N steps (0 = never).
    pub diagnostics_every: usize,
    /// Resumable snapshot every N steps (0 = never).
    pub snapshot_every: usize,
    /// Recompute the element-wise operations' outputs in the backward pass instead of keeping
    /// them (burn's `BalancedCheckpointing`): less activation memory for more compute. Off by
    /// default; on the CPU it also turns off the fused kernels.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
    /// Train until the standard objective's loss on held-out items stops falling:
    /// `{ every = 20, patience = 3, min_delta = 0.0, items = 64, split = "val" }` checks it
    /// every `every` steps on the first `items` items of `split` and stops after `patience`
    /// checks without a fall of more than `min_delta` below the best; `steps` is the most the
    /// run trains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStopConfig>,
}

/// The stage's early-stopping table: the loop's rule and the validation items.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopConfig {
    pub every: usize,
    pub patience: usize,
    #[serde(default)]
    pub min_delta: f64,
    #[serde(default = "val_items")]
    pub items: usize,
    #[serde(default = "val_split")]
    pub split: String,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn val_items() -> usize {
    64
}

fn val_split() -> String {
    "val".into()
}

impl Default for SftTrainConfig {
    fn default() -> Self {
        SftTrainConfig {
            model: ModelChoice::default(),
            size: ModelOverrides::default(),
            hparams: Hparams::FromScratch,
            objective: ObjectiveKind::Standard,
            lambda: 0.5,
            span_weights: BTreeMap::new(),
            steps: None,
            batch_size: None,
            grad_accum: 1,
            data_shards: 2,
            data_parallel: 1,
            lr: None,
            min_lr: None,
            warmup_ratio: None,
            weight_decay: 0.01,
            grad_clip: 1.0,
            train_split: "sft".into(),
            eval_split: "test".into(),
            eval_every: 0,
            eval_items: 32,
            eval_max_new_tokens: None,
            overlong: Overlong::Error,
            diagnostics_every: 10,
            snapshot_every: 25,
            activation_checkpointing: false,
            early_stop: None,
        }
    }
}

impl SftTrainConfig {
    fn model_config(&self, preset: &str, vocab: usize) -> Result<VlmConfig, StageError> {
        let mut c = VlmConfig::preset(preset, vocab).ok_or_else(|| {
            StageError::Invalid(format!(
                "unknown model preset `{preset}` (tiny, small, or {{ hf = \"path\" }})"
            ))
        })?;
        let o = &self.size;
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut c.image_size, o.image_size);
        set(&mut c.patch_size, o.patch_size);
        set(&mut c.vit_dim, o.vit_dim);
        set(&mut c.vit_layers, o.vit_layers);
        set(&mut c.vit_heads, o.vit_heads);
        set(&mut c.d_model, o.d_model);
        set(&mut c.layers, o.layers);
        set(&mut c.heads, o.heads);
        set(&mut c.mlp_ratio, o.mlp_ratio);
        set(&mut c.max_seq_len, o.max_seq_len);
        c.validate()
            .map_err(|e| StageError::Invalid(format!("model size: {e}")))?;
        Ok(c)
    }

    pub(crate) fn settings(&self, seed: u64, max_text: usize) -> SftSettings {
        let (steps, bs, lr, min_lr, warmup) = match self.hparams {
            Hparams::FromScratch => (300, 8, 1e-3, 1e-4, 0.05),
            Hparams::Paper => (500, 8, 1e-6, 0.0, 0.1),
        };
        SftSettings {
            objective: self.objective,
            lambda: self.lambda,
            extra_spans: self
                .span_weights
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            steps: self.steps.unwrap_or(steps),
            batch_size: self.batch_size.unwrap_or(bs),
            grad_accum: self.grad_accum.max(1),
            data_shards: self.data_shards,
            data_parallel: self.data_parallel,
            lr: self.lr.unwrap_or(lr),
            min_lr: self.min_lr.unwrap_or(min_lr),
            warmup_ratio: self.warmup_ratio.unwrap_or(warmup),
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            diagnostics_every: self.diagnostics_every,
            snapshot_every: self.snapshot_every,
            eval_every: self.eval_every,
            seed,
            max_text,
            seq_bucket: 1,
            early_stop: self.early_stop.as_ref().map(|e| EarlyStop {
                every: e.every,
                patience: e.patience,
                min_delta: e.min_delta,
            }),
        }
    }
}

struct Hooks<'a, B: Backend> {
    tok: &'a Codec,
    eval_set: &'a [Example],
    /// Early stopping's validation items, and the settings its loss is computed under.
    val_set: &'a [Example],
    settings: &'a SftSettings,
    max_new_tokens: Option<usize>,
    device: &'a B::Device,
    bar: indicatif::ProgressBar,
    ctx: &'a RunCtx<'a>,
}

impl<B: Backend, C: CheckpointStrategy> SftHooks<Autodiff<B, C>> for Hooks<'_, B> {
    fn eval(
        &mut self,
        _step: usize,
        model: &Model<<Autodiff<B, C> as AutodiffBackend>::InnerBackend>,
    ) -> Result<Option<EvalPoint>, TrainError> {
        if self.eval_set.is_empty() {
            return Ok(None);
        }
        heldout_eval(
            model,
            self.tok,
            self.eval_set,
            self.max_new_tokens,
            self.device,
        )
        .map(Some)
        .map_err(TrainError::from)
    }
    fn val_loss(
        &mut self,
        _step: usize,
        model: &Model<<Autodiff<B, C> as AutodiffBackend>::InnerBackend>,
    ) -> Result<Option<f64>, TrainError> {
        if self.val_set.is_empty() {
            return Ok(None);
        }
        let pad = self.tok.pad();
        standard_loss(model, self.val_set, self.settings, pad, self.device).map(Some)
    }
    fn after_step(&mut self, step: usize, row: &LogRow, tokens_per_sec: f64) {
        self.bar.inc(1);
        self.bar
            .set_message(format!("loss {:.3} {:.0} tok/s", row.loss, tokens_per_sec));
        self.ctx.fault_point(&format!("after-step-{step}"));
    }
}

/// One training run of the stage, on a backend and a checkpointing strategy.
struct Fit<'a> {
    plan: &'a ModelPlan,
    settings: &'a SftSettings,
    train_set: &'a [Example],
    scratch: &'a std::path::Path,
    ctx: &'a RunCtx<'a>,
}

impl Fit<'_> {
    /// Trains and writes the checkpoint; the log and timing rows for the stage to write.
    fn run<B: Backend, C: CheckpointStrategy>(
        &self,
        dev: &B::Device,
        hooks: &mut Hooks<'_, B>,
    ) -> Result<(String, Vec<LogRow>, Vec<crate::train::sft::TimingRow>), StageError> {
        let model = self.plan.load::<Autodiff<B, C>>(self.ctx.seed, dev)?;
        let out = train::<Autodiff<B, C>>(
            self.settings,
            model,
            self.train_set,
            dev,
            self.scratch,
            self.plan.codec.pad(),
            hooks,
        )
        .map_err(StageError::from)?;
        let ckpt = write_model(self.ctx, self.plan, &out.model)?;
        Ok((ckpt, out.log, out.timing))
    }
}

pub struct SftTrain;

const DATA: InputSpec = input("data", "sft_targets");
const INIT: InputSpec = optional("init", "checkpoint");
const MAIN: OutputSpec = output("main", "checkpoint");
const LOG: OutputSpec = output("log", "train_log");
const TIMING: OutputSpec = output("timing", "train_timing");

impl Stage for SftTrain {
    const NAME: &'static str = "sft-train";
    const VERSION: u32 = 12;
    const USES_DEVICE: bool = true;
    type Config = SftTrainConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![DATA, INIT]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN, LOG, TIMING]
    }
    fn external_files(cfg: &SftTrainConfig) -> Vec<std::path::PathBuf> {
        match &cfg.model {
            ModelChoice::Hf(s) => hf_external(Some(s)),
            ModelChoice::Preset(_) => Vec::new(),
        }
    }

    fn run(cfg: &SftTrainConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let data_id = input_id(ctx, &DATA)?;
        let data_id = data_id.as_str();
        let tok = read_tokenizer(ctx.store, data_id)?;
        let plan = model_plan(cfg, ctx, &tok)?;
        let mut train_set =
            plan_split_examples(&plan, ctx.store, data_id, Some(&cfg.train_split), 0)?;
        if train_set.is_empty() {
            return Err(StageError::Invalid(format!(
                "no training items in split `{}`",
                cfg.train_split
            )));
        }
        let eval_set = plan_split_examples(
            &plan,
            ctx.store,
            data_id,
            Some(&cfg.eval_split),
            cfg.eval_items,
        )?;
        let spec = DeviceSpec::parse(&ctx.device)?;
        let mut settings = cfg.settings(ctx.seed, plan.max_text());
        settings.seq_bucket = spec.seq_bucket();
        let dropped = fit_context(&mut train_set, cfg.overlong, settings.max_text, &plan)?;
        let mut val_set = Vec::new();
        if let Some(e) = &cfg.early_stop {
            ensure!(
                e.every > 0 && e.patience > 0 && e.items > 0,
                "early_stop: every, patience and items must be positive"
            );
            val_set = plan_split_examples(&plan, ctx.store, data_id, Some(&e.split), e.items)?;
            ensure!(
                !val_set.is_empty(),
                "early_stop: no items in split `{}` to compute the validation loss on (give \
                 synthesize a `val` split, or name another with early_stop.split)",
                e.split
            );
            fit_context(&mut val_set, cfg.overlong, settings.max_text, &plan)?;
        }
        let bar = crate::progress::bar(settings.steps as u64, "sft-train");
        let scratch = ctx.scratch();
        let out = crate::with_backend!(spec, |B, dev| {
            let mut hooks = Hooks::<B> {
                tok: &plan.codec,
                eval_set: &eval_set,
                val_set: &val_set,
                settings: &settings,
                max_new_tokens: cfg.eval_max_new_tokens,
                device: &dev,
                bar: bar.clone(),
                ctx,
            };
            let job = Fit {
                plan: &plan,
                settings: &settings,
                train_set: &train_set,
                scratch: &scratch,
                ctx,
            };
            if cfg.activation_checkpointing {
                job.run::<B, BalancedCheckpointing>(&dev, &mut hooks)
            } else {
                job.run::<B, NoCheckpointing>(&dev, &mut hooks)
            }
        })?;
        bar.finish_and_clear();
        let (ckpt, log, timing) = out;
        let ckpt = Written::new(&MAIN, ckpt);
        let log = write_log(ctx, &log, dropped)?;
        let timing = write_timing(ctx, &timing)?;
        Ok(outputs([ckpt, log, timing]))
    }
}

/// The model to train: an `init` checkpoint, a preset sized to the tokenizer, or a Hugging Face
/// checkpoint.
fn model_plan(
    cfg: &SftTrainConfig,
    ctx: &RunCtx,
    tok: &Tokenizer,
) -> Result<ModelPlan, StageError> {
    let plan = match (optional_id(ctx, &INIT), &cfg.model) {
        (Some(_), ModelChoice::Hf(_)) => {
            bail!("set either an `init` checkpoint or `model = {{ hf = ... }}`, not both")
        }
        (Some(id), ModelChoice::Preset(_)) => plan_of_artifact(ctx.store, id.as_str(), Some(tok))?,
        (None, ModelChoice::Preset(p)) => {
            ModelPlan::native(cfg.model_config(p, tok.vocab_size())?, None, tok.clone())
        }
        (None, ModelChoice::Hf(src)) => ModelPlan::hf(&src.hf, src.image_size)?,
    };
    Ok(plan)
}

/// Applies the `overlong` policy to the training examples longer than the context
/// (`max_text + 1` tokens after the image): an error naming the longest, or dropped (a warning
/// says how many). Returns how many were dropped; an error when none is left.
fn fit_context(
    train_set: &mut Vec<Example>,
    overlong: Overlong,
    max_text: usize,
    plan: &ModelPlan,
) -> Result<usize, StageError> {
    let fits = |e: &Example| e.prompt.len() + e.target.len() <= max_text + 1;
    let before = train_set.len();
    match overlong {
        Overlong::Error => {
            if let Some(e) = train_set
                .iter()
                .filter(|e| !fits(e))
                .max_by_key(|e| e.prompt.len() + e.target.len())
            {
                bail!(
                    "{} of {before} training examples are longer than the model's context; \
                     the longest, `{}`, has {} prompt + target tokens and the model reads {}{}. \
                     Shorten the targets (distill-format verbosity), raise size.max_seq_len, \
                     or set overlong = \"drop\"",
                    train_set.iter().filter(|e| !fits(e)).count(),
                    e.id,
                    e.prompt.len() + e.target.len(),
                    max_text + 1,
                    plan.native_config()
                        .map(|c| format!(
                            " after the image (max_seq_len {} − {} image patches)",
                            c.max_seq_len,
                            c.patches()
                        ))
                        .unwrap_or_else(|| {
                            " (its max_position_embeddings, image tokens included)".into()
                        })
                );
            }
        }
        Overlong::Drop => train_set.retain(|e| fits(e)),
    }
    let dropped = before - train_set.len();
    if dropped > 0 {
        eprintln!(
            "warning: sft-train dropped {dropped} of {before} training examples longer than \
             the context ({} tokens after the image)",
            max_text + 1
        );
    }
    if train_set.is_empty() {
        bail!("no training example fits the model's context");
    }
    Ok(dropped)
}

/// The `timing` table: seconds and target tokens per step.
fn write_timing(ctx: &RunCtx, t: &[TimingRow]) -> Result<Written, StageError> {
    write_table(
        ctx,
        &TIMING,
        vec![
            ("step", cols::i32(t.iter().map(|r| r.step as i32).collect())),
            ("seconds", cols::f64(t.iter().map(|r| r.seconds).collect())),
            (
                "tokens",
                cols::i64(t.iter().map(|r| r.tokens as i64).collect()),
            ),
            (
                "tokens_per_sec",
                cols::f64(
                    t.iter()
                        .map(|r| r.tokens as f64 / r.seconds.max(1e-9))
                        .collect(),
                ),
            ),
        ],
    )
}

fn write_log(ctx: &RunCtx, log: &[LogRow], dropped: usize) -> Result<Written, StageError> {
    let mut columns = LogRow::columns(log);
    columns.push((
        "overlong_dropped",
        cols::i32(vec![dropped as i32; log.len()]),
    ));
    write_table(ctx, &LOG, columns)
}
