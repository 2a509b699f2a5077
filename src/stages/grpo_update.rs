//! grpo-update: one GRPO policy update from a step's rollouts and rewards (see [`crate::rl`]).
//!
//! Advantages are group-normalized over the samples of each item, shared by the sequence's
//! tokens, optionally rescaled per segment (`token_lambda`, appendix B.3). The objective is
//! PPO-clipped per token (`clip_low`, `clip_high`), a token mean per sequence then a mean over
//! sequences, plus `kl_coef`·KL to the frozen `reference` checkpoint (k3); `gspo = true` uses
//! the sequence-level ratio. `ppo_epochs` passes of mini-batches of `mini_batch` sequences
//! (0 = all: one on-policy step). Log-probabilities are recomputed at the temperature the
//! rollouts were sampled at (stored with them). Writes the updated checkpoint, a
//! one-row-per-mini-batch `rl_log`, and `samples` (`rl_samples`): each rollout's reward, group
//! advantage and segment scales, from which the per-token advantages can be recomputed.

use super::artifacts::{read_rewards, read_rollouts, read_sampling};
use super::model_io::{
    HfSource, hf_external, plan_examples, plan_of_artifact, plan_of_input_or_hf,
    plan_split_examples, read_tokenizer, write_model,
};
use super::{
    Outputs, Stage, StageError, Written, bail, ensure, input, input_id, optional, optional_id,
    output, outputs, read_input, read_optional, write_table, write_table_after,
};
use crate::analysis::{RunningPearson, pearson, wilson};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::data::Example;
use crate::eval::rollout::RolloutRow;
use crate::eval::score::{EvalPoint, heldout_eval};
use crate::model::DeviceSpec;
use crate::model::load::{ModelPlan, PlanSource};
use crate::rl::advantage::{StdKind, segment_scales};
use crate::rl::batch::{BatchSpec, StepBatch, match_rewards, step_batch};
use crate::rl::grpo::{LossSettings, Sequence};
use crate::rl::update::{MinibatchRow, Policy, UpdateSettings, update_model};
use crate::table::Table;
use crate::table::cols;
use crate::text::Tokenizer;
use crate::train::trainer::OptimState;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoUpdateConfig {
    /// Update a checkpoint folder in the Hugging Face layout instead of a `checkpoint` input:
    /// `model = { hf = "path" }` (the first step of RL straight from a downloaded model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<HfSource>,
    /// The RL step this update is (labels the log).
    pub step: usize,
    /// ε_low: the ratio is clipped below at 1 − ε_low.
    pub clip_low: f64,
    /// ε_high: the ratio is clipped above at 1 + ε_high.
    pub clip_high: f64,
    /// β of the KL penalty to `reference` (0 = off).
    pub kl_coef: f64,
    /// GSPO's sequence-level importance ratio instead of the per-token one.
    pub gspo: bool,
    pub lr: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub ppo_epochs: usize,
    /// Sequences per optimizer step (0 = all of the step's rollouts).
    pub mini_batch: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Data-parallel peers on the run's device (burn's collective): each computes the gradient
    /// of its part of every mini-batch, all-reduced before clipping. 1 = none.
    #[serde(skip_serializing_if = "is_one")]
    pub data_parallel: usize,
    /// Token reweighting by advantage rescaling (appendix B.3): perception tokens get
    /// λ·|y|/|p|·Â, reasoning tokens (1 − λ)·|y|/|r|·Â. Unset: off.
    pub token_lambda: Option<f64>,
    /// The deviation of the group normalization (`sample`, as verl and TRL, or `population`).
    pub adv_std: StdKind,
    /// Refuse rollouts whose stored log-probabilities differ from this checkpoint's by more
    /// than this per token on average, before any step (0 = no check).
    pub max_logprob_gap: f64,
    /// Held-out greedy evaluation (a, a_p, counterfactual a_r, ã_r) on the first `eval_items`
    /// items of `eval_split` (0 = none): of the updated policy (`eval_after`) and of the
    /// starting one (`eval_start`, logged as step −1). A `grpo` loop sets these from its `eval`.
    pub eval_items: usize,
    pub eval_split: String,
    pub eval_start: bool,
    pub eval_after: bool,
    /// Token budget of the evaluation's outputs; unset: the longest target + a margin.
    pub eval_max_new_tokens: Option<usize>,
    /// Recompute the element-wise operations' outputs in the backward pass instead of keeping
    /// them (burn's `BalancedCheckpointing`; see sft-train's option of the same name).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for GrpoUpdateConfig {
    fn default() -> Self {
        GrpoUpdateConfig {
            model: None,
            step: 0,
            clip_low: 0.2,
            clip_high: 0.2,
            kl_coef: 0.0,
            gspo: false,
            lr: 1e-6,
            weight_decay: 0.01,
            grad_clip: 1.0,
            ppo_epochs: 1,
            mini_batch: 0,
            micro_batch: 8,
            data_parallel: 1,
            token_lambda: None,
            adv_std: StdKind::Sample,
            max_logprob_gap: 0.02,
            eval_items: 0,
            eval_split: "test".into(),
            eval_start: false,
            eval_after: true,
            eval_max_new_tokens: None,
            activation_checkpointing: false,
        }
    }
}

pub struct GrpoUpdate;

const CHECKPOINT: InputSpec = optional("checkpoint", "checkpoint");
const ROLLOUTS: InputSpec = input("rollouts", "rollouts");
const REWARDS: InputSpec = input("rewards", "rewards");
const DATA: InputSpec = input("data", "sft_targets");
const REFERENCE: InputSpec = optional("reference", "checkpoint");
/// The previous step's optimizer state (AdamW continues from it).
const OPTIMIZER_IN: InputSpec = optional("optimizer", OPTIMIZER_KIND);
/// The previous step's log and evaluations, continued by this step's.
const HISTORY: InputSpec = optional("history", "rl_log");
const EVAL_HISTORY: InputSpec = optional("eval_history", "rl_eval");
const MAIN: OutputSpec = output("main", "checkpoint");
const LOG: OutputSpec = output("log", "rl_log");
const OPTIMIZER: OutputSpec = output("optimizer", OPTIMIZER_KIND);
const EVAL: OutputSpec = output("eval", "rl_eval");
const SAMPLES: OutputSpec = output("samples", "rl_samples");

/// The kind of an optimizer-state artifact: the AdamW state and the hash of the weights it
/// belongs to.
pub const OPTIMIZER_KIND: &str = "optimizer_state";
const STATE_FILE: &str = "optimizer.bin";

/// Statistics of the whole step, repeated on every log row.
struct StepStats {
    reward: f64,
    a: f64,
    a_p: f64,
    a_tilde_r: f64,
    r_a_p: Option<f64>,
    r_a_tilde_r: Option<f64>,
    zero_groups: f64,
    running: RunningPearson<2>,
}

impl StepStats {
    /// The step's rollout statistics: mean reward and accuracies, the reward's Pearson r with
    /// a_p and ã_r, and the running sums carried on from the earlier steps (`running`).
    fn of(
        rewards: &[&crate::rl::reward::RewardRow],
        zero_groups: f64,
        mut running: RunningPearson<2>,
    ) -> StepStats {
        let reward: Vec<f64> = rewards.iter().map(|r| r.reward).collect();
        let flag = |f: &dyn Fn(&crate::rl::reward::RewardRow) -> bool| -> Vec<f64> {
            rewards.iter().map(|r| f64::from(u8::from(f(r)))).collect()
        };
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (a, a_p, a_tr) = (flag(&|r| r.a), flag(&|r| r.a_p), flag(&|r| r.a_tilde_r));
        for k in 0..reward.len() {
            running.add(reward[k], [a_p[k], a_tr[k]]);
        }
        StepStats {
            reward: mean(&reward),
            a: mean(&a),
            a_p: mean(&a_p),
            a_tilde_r: mean(&a_tr),
            r_a_p: pearson(&reward, &a_p),
            r_a_tilde_r: pearson(&reward, &a_tr),
            zero_groups,
            running,
        }
    }
}

/// The running sums' columns, in the log's order (see [`RunningPearson::sums`]).
const RUNNING: [&str; 7] = [
    "running_rollouts",
    "running_sum_reward",
    "running_sum_reward2",
    "running_sum_a_p",
    "running_sum_reward_a_p",
    "running_sum_a_tilde_r",
    "running_sum_reward_a_tilde_r",
];

/// The reference model of the KL penalty: the checkpoint `id`, which must have the policy's
/// shape (and, for checkpoint folders, its config and tokenizer: the KL compares the two models'
/// log-probabilities of the policy's own token ids).
fn reference_plan(
    ctx: &RunCtx,
    id: &str,
    policy: &ModelPlan,
    tok: &Tokenizer,
) -> Result<ModelPlan, StageError> {
    let r = plan_of_artifact(ctx.store, id, Some(tok))?;
    let same = match (&r.source, &policy.source) {
        (PlanSource::Native { cfg: a, .. }, PlanSource::Native { cfg: b, .. }) => a == b,
        (PlanSource::Hf { dir: a, .. }, PlanSource::Hf { dir: b, .. }) => {
            let same_file =
                |name: &str| std::fs::read(a.join(name)).ok() == std::fs::read(b.join(name)).ok();
            r.image_size == policy.image_size
                && same_file("config.json")
                && same_file("tokenizer.json")
        }
        _ => false,
    };
    ensure!(
        same,
        "the reference checkpoint has another model shape than the policy"
    );
    Ok(r)
}

/// The running sums (reward against a_p and ã_r) on the last row of an earlier log, or none.
fn running_from_log(t: Option<&Table>) -> Result<RunningPearson<2>, StageError> {
    let Some(t) = t.filter(|t| t.rows() > 0) else {
        return Ok(RunningPearson::default());
    };
    let last = t.rows() - 1;
    let mut v = [0.0; 7];
    v[0] = t.i64(RUNNING[0])?.value(last) as f64;
    for (slot, name) in v.iter_mut().zip(RUNNING).skip(1) {
        *slot = t.f64(name)?.value(last);
    }
    let [n, x, xx, p, xp, r, xr] = v;
    Ok(RunningPearson {
        n,
        x,
        xx,
        y: [p, r],
        xy: [xp, xr],
    })
}

/// The last step in an earlier log or evaluation table, which must be the one before `step`.
fn check_history(t: Option<&Table>, step: usize, what: &str) -> Result<(), StageError> {
    let Some(t) = t.filter(|t| t.rows() > 0) else {
        return Ok(());
    };
    let last = t.i32("step")?.value(t.rows() - 1);
    ensure!(
        i64::from(last) < step as i64,
        "the {what} wired as history ends at step {last}, not before this step ({step})"
    );
    Ok(())
}

impl Stage for GrpoUpdate {
    const NAME: &'static str = "grpo-update";
    const VERSION: u32 = 10;
    const USES_DEVICE: bool = true;
    type Config = GrpoUpdateConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![
            CHECKPOINT,
            ROLLOUTS,
            REWARDS,
            DATA,
            REFERENCE,
            OPTIMIZER_IN,
            HISTORY,
            EVAL_HISTORY,
        ]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN, LOG, OPTIMIZER, EVAL, SAMPLES]
    }
    fn external_files(cfg: &GrpoUpdateConfig) -> Vec<std::path::PathBuf> {
        hf_external(cfg.model.as_ref())
    }

    fn run(cfg: &GrpoUpdateConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        if let Some(l) = cfg.token_lambda {
            ensure!(
                (0.0..=1.0).contains(&l),
                "token_lambda {l} is outside [0, 1]"
            );
        }
        let reference = optional_id(ctx, &REFERENCE);
        ensure!(
            cfg.kl_coef == 0.0 || reference.is_some(),
            "kl_coef is {} but no `reference` checkpoint is wired",
            cfg.kl_coef
        );
        let data_id = input_id(ctx, &DATA)?;
        let tok = read_tokenizer(ctx.store, data_id.as_str())?;
        let plan = plan_of_input_or_hf(ctx, &CHECKPOINT, cfg.model.as_ref(), &tok)?;
        let ref_plan = match &reference {
            Some(id) => Some(reference_plan(ctx, id.as_str(), &plan, &tok)?),
            None => None,
        };
        let table = read_input(ctx, &ROLLOUTS)?;
        let Some((mode, temperature)) = read_sampling(&table)? else {
            bail!("no rollouts to update on");
        };
        let rows = read_rollouts(&table)?;
        let rewards = read_rewards(&read_input(ctx, &REWARDS)?)?;
        // Rollouts without their reward are refused before the data is read.
        match_rewards(&rows, &rewards)?;
        let items: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let examples = plan_examples(&plan, ctx.store, data_id.as_str(), 0, &|_, id| {
            items.contains(id)
        })?;
        let spec = BatchSpec {
            mode,
            image_size: plan.image_size,
            adv_std: cfg.adv_std,
            token_lambda: cfg.token_lambda,
        };
        let StepBatch {
            sequences: seqs,
            rewards: matched,
            advantages,
            zero_groups,
        } = step_batch(&rows, &rewards, &examples, &plan.codec, &spec)?;
        let samples = write_samples(ctx, cfg, &rows, &seqs, &advantages)?;
        let history = read_optional(ctx, &HISTORY)?;
        let eval_history = read_optional(ctx, &EVAL_HISTORY)?;
        check_history(history.as_ref(), cfg.step, "log")?;
        check_history(eval_history.as_ref(), cfg.step, "evaluation")?;
        let running = running_from_log(history.as_ref())?;
        let step = StepStats::of(&matched, zero_groups, running);
        let state = match optional_id(ctx, &OPTIMIZER_IN) {
            Some(id) => Some(read_state(ctx, id.as_str())?),
            None => None,
        };

        let settings = UpdateSettings {
            loss: LossSettings {
                clip_low: cfg.clip_low,
                clip_high: cfg.clip_high,
                kl_coef: cfg.kl_coef,
                gspo: cfg.gspo,
                temperature,
            },
            ppo_epochs: cfg.ppo_epochs,
            mini_batch: if cfg.mini_batch == 0 {
                seqs.len()
            } else {
                cfg.mini_batch
            },
            micro_batch: cfg.micro_batch,
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            grad_clip: cfg.grad_clip,
            seed: ctx.seed,
            max_logprob_gap: cfg.max_logprob_gap,
            seq_bucket: DeviceSpec::parse(&ctx.device)?.seq_bucket(),
            data_parallel: cfg.data_parallel,
        };
        let spec = DeviceSpec::parse(&ctx.device)?;
        let total = cfg.ppo_epochs * seqs.len().div_ceil(settings.mini_batch.max(1));
        let bar = crate::progress::bar(total as u64, "grpo-update");
        let eval_set = if cfg.eval_items > 0 {
            plan_split_examples(
                &plan,
                ctx.store,
                data_id.as_str(),
                Some(&cfg.eval_split),
                cfg.eval_items,
            )?
        } else {
            Vec::new()
        };
        let job = Update {
            cfg,
            plan: &plan,
            ref_plan: ref_plan.as_ref(),
            settings: &settings,
            state: state.as_ref(),
            seqs: &seqs,
            eval_set: &eval_set,
            bar: &bar,
            ctx,
        };
        let (ckpt, rl_log, rl_state, evals) = crate::with_backend!(spec, |B, dev| {
            if cfg.activation_checkpointing {
                job.run::<B, BalancedCheckpointing>(&dev)
            } else {
                job.run::<B, NoCheckpointing>(&dev)
            }
        })?;
        bar.finish_and_clear();
        let ckpt = Written::new(&MAIN, ckpt);
        let log = write_log(ctx, cfg, history.as_ref(), &rl_log, &step)?;
        let optimizer = write_state(ctx, &rl_state)?;
        let eval = write_evals(ctx, eval_history.as_ref(), &evals, eval_set.len())?;
        Ok(outputs([ckpt, log, optimizer, eval, samples]))
    }
}

/// One update of the stage, on a backend and a checkpointing strategy.
struct Update<'a> {
    cfg: &'a GrpoUpdateConfig,
    plan: &'a ModelPlan,
    ref_plan: Option<&'a ModelPlan>,
    settings: &'a UpdateSettings,
    state: Option<&'a OptimState>,
    seqs: &'a [Sequence],
    eval_set: &'a [Example],
    bar: &'a indicatif::ProgressBar,
    ctx: &'a RunCtx<'a>,
}

/// The updated checkpoint's id, the update's log and optimizer state, and the evaluations
/// (step −1 for the starting policy).
type UpdateResult = (
    String,
    Vec<MinibatchRow>,
    OptimState,
    Vec<(i32, Option<EvalPoint>)>,
);

impl Update<'_> {
    fn run<B: Backend, C: CheckpointStrategy>(
        &self,
        dev: &B::Device,
    ) -> Result<UpdateResult, StageError> {
        let (cfg, plan, ctx) = (self.cfg, self.plan, self.ctx);
        let policy = plan.load::<Autodiff<B, C>>(ctx.seed, dev)?;
        let reference = match self.ref_plan {
            Some(r) => Some(r.load::<B>(ctx.seed, dev)?),
            None => None,
        };
        let evaluate = |m: &crate::model::Model<B>| -> Result<Option<EvalPoint>, StageError> {
            if self.eval_set.is_empty() {
                return Ok(None);
            }
            Ok(Some(heldout_eval(
                m,
                &plan.codec,
                self.eval_set,
                cfg.eval_max_new_tokens,
                dev,
            )?))
        };
        let mut evals = Vec::new();
        if cfg.eval_start {
            evals.push((-1, evaluate(&policy.valid())?));
        }
        let policy = Policy {
            model: policy,
            state: self.state,
            reference,
        };
        let out = update_model::<Autodiff<B, C>>(
            self.settings,
            policy,
            self.seqs,
            plan.codec.pad(),
            dev,
            |row| {
                self.bar.inc(1);
                self.bar
                    .set_message(format!("loss {:.4} clip {:.3}", row.loss, row.clip_frac));
            },
        )
        .map_err(StageError::from)?;
        if cfg.eval_after {
            evals.push((cfg.step as i32, evaluate(&out.model)?));
        }
        let ckpt = write_model(ctx, plan, &out.model)?;
        Ok((ckpt, out.log, out.state, evals))
    }
}

fn read_state(ctx: &RunCtx, id: &str) -> Result<OptimState, StageError> {
    let m = ctx.store.manifest(id)?;
    ensure!(
        m.kind == OPTIMIZER_KIND,
        "artifact {id} is a `{}`, not an `{OPTIMIZER_KIND}`",
        m.kind
    );
    OptimState::from_bytes(&ctx.store.read_file(id, STATE_FILE)?)
        .map_err(|e| StageError::Invalid(format!("{id}: {e}")))
}

fn write_state(ctx: &RunCtx, st: &OptimState) -> Result<Written, StageError> {
    let mut w = ctx.store.writer(OPTIMIZER_KIND, 1)?;
    w.add_bytes(STATE_FILE, &st.to_bytes())?;
    Ok(Written::new(&OPTIMIZER, ctx.commit(w, None)?))
}

/// The evaluations measured (the step after which each was taken, −1 for the starting policy),
/// after those of earlier steps.
/// The `samples` output: per rollout (in the rollouts' order) its reward, group advantage Â,
/// token counts and the factors the perception and reasoning tokens' advantages are Â times.
fn write_samples(
    ctx: &RunCtx,
    cfg: &GrpoUpdateConfig,
    rows: &[RolloutRow],
    seqs: &[Sequence],
    advantages: &[f64],
) -> Result<Written, StageError> {
    let scales: Vec<(f64, f64)> = seqs
        .iter()
        .map(|s| segment_scales(s.tokens.len(), s.perception_tokens, cfg.token_lambda))
        .collect();
    write_table(
        ctx,
        &SAMPLES,
        vec![
            (
                "id",
                cols::utf8(&rows.iter().map(|r| &r.id).collect::<Vec<_>>()),
            ),
            (
                "sample",
                cols::i32(rows.iter().map(|r| r.sample as i32).collect()),
            ),
            ("reward", cols::f64(seqs.iter().map(|s| s.reward).collect())),
            ("advantage", cols::f64(advantages.to_vec())),
            (
                "tokens",
                cols::i32(seqs.iter().map(|s| s.tokens.len() as i32).collect()),
            ),
            (
                "perception_tokens",
                cols::i32(seqs.iter().map(|s| s.perception_tokens as i32).collect()),
            ),
            (
                "perception_scale",
                cols::f64(scales.iter().map(|x| x.0).collect()),
            ),
            (
                "reasoning_scale",
                cols::f64(scales.iter().map(|x| x.1).collect()),
            ),
        ],
    )
}

fn write_evals(
    ctx: &RunCtx,
    earlier: Option<&Table>,
    evals: &[(i32, Option<EvalPoint>)],
    items: usize,
) -> Result<Written, StageError> {
    let got: Vec<(i32, &EvalPoint)> = evals
        .iter()
        .filter_map(|(s, e)| e.as_ref().map(|e| (*s, e)))
        .collect();
    let f = |g: &dyn Fn(&EvalPoint) -> f64| cols::f64(got.iter().map(|(_, e)| g(e)).collect());
    let ci = |g: &dyn Fn(&EvalPoint) -> f64, hi: bool| {
        cols::f64(
            got.iter()
                .map(|(_, e)| {
                    let k = (g(e) * items as f64).round() as u64;
                    let (lo, up) = wilson(k, items as u64);
                    if hi { up } else { lo }
                })
                .collect(),
        )
    };
    write_table_after(
        ctx,
        &EVAL,
        earlier,
        vec![
            ("step", cols::i32(got.iter().map(|(s, _)| *s).collect())),
            ("items", cols::i32(vec![items as i32; got.len()])),
            ("a", f(&|e| e.a)),
            ("a_lo", ci(&|e| e.a, false)),
            ("a_hi", ci(&|e| e.a, true)),
            ("a_p", f(&|e| e.a_p)),
            ("a_p_lo", ci(&|e| e.a_p, false)),
            ("a_p_hi", ci(&|e| e.a_p, true)),
            ("a_r", f(&|e| e.a_r)),
            ("a_r_lo", ci(&|e| e.a_r, false)),
            ("a_r_hi", ci(&|e| e.a_r, true)),
            ("a_tilde_r", f(&|e| e.a_tilde_r)),
            (
                "a_given_p",
                cols::f64_opt(got.iter().map(|(_, e)| e.a_given_p).collect()),
            ),
            ("truncated", f(&|e| e.truncated)),
        ],
    )
}

fn write_log(
    ctx: &RunCtx,
    cfg: &GrpoUpdateConfig,
    earlier: Option<&Table>,
    log: &[MinibatchRow],
    s: &StepStats,
) -> Result<Written, StageError> {
    let n = log.len();
    let f = |g: &dyn Fn(&MinibatchRow) -> f64| cols::f64(log.iter().map(g).collect());
    let i =
        |g: &dyn Fn(&MinibatchRow) -> usize| cols::i32(log.iter().map(|r| g(r) as i32).collect());
    let rep = |v: f64| cols::f64(vec![v; n]);
    let rep_opt = |v: Option<f64>| cols::f64_opt(vec![v; n]);
    let sums = s.running.sums();
    let mut columns = vec![
        ("step", cols::i32(vec![cfg.step as i32; n])),
        ("epoch", i(&|r| r.epoch)),
        ("minibatch", i(&|r| r.minibatch)),
        ("sequences", i(&|r| r.sequences)),
        (
            "tokens",
            cols::i64(log.iter().map(|r| r.tokens as i64).collect()),
        ),
        ("loss", f(&|r| r.loss)),
        ("pg_loss", f(&|r| r.pg_loss)),
        ("kl", cols::f64_opt(log.iter().map(|r| r.kl).collect())),
        ("clip_frac", f(&|r| r.clip_frac)),
        ("ratio_mean", f(&|r| r.ratio_mean)),
        ("entropy", f(&|r| r.entropy)),
        ("logprob_gap", f(&|r| r.logprob_gap)),
        ("grad_norm", f(&|r| r.grad_norm)),
        ("lr", f(&|r| r.lr)),
        ("mean_reward", f(&|r| r.mean_reward)),
        ("response_len", f(&|r| r.response_len)),
        ("perception_share", f(&|r| r.perception_share)),
        ("token_lambda", rep_opt(cfg.token_lambda)),
        ("step_reward", rep(s.reward)),
        ("step_a", rep(s.a)),
        ("step_a_p", rep(s.a_p)),
        ("step_a_tilde_r", rep(s.a_tilde_r)),
        ("step_r_reward_a_p", rep_opt(s.r_a_p)),
        ("step_r_reward_a_tilde_r", rep_opt(s.r_a_tilde_r)),
        ("zero_adv_groups", rep(s.zero_groups)),
        ("running_r_reward_a_p", rep_opt(s.running.r(0))),
        ("running_r_reward_a_tilde_r", rep_opt(s.running.r(1))),
        (RUNNING[0], cols::i64(vec![sums[0] as i64; n])),
    ];
    for (name, v) in RUNNING.iter().zip(sums).skip(1) {
        columns.push((name, rep(v)));
    }
    write_table_after(ctx, &LOG, earlier, columns)
}
