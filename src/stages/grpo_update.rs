//! grpo-update: one GRPO policy update from a step's rollouts and rewards (see [`crate::rl`]).
//!
//! Advantages are group-normalized over the samples of each item, shared by the sequence's
//! tokens, optionally rescaled per segment (`token_lambda`, appendix B.3). The objective is
//! PPO-clipped per token (`clip_low`, `clip_high`), a token mean per sequence then a mean over
//! sequences, plus `kl_coef`·KL to the frozen `reference` checkpoint (k3); `gspo = true` uses
//! the sequence-level ratio. `ppo_epochs` passes of mini-batches of `mini_batch` sequences
//! (0 = all: one on-policy step). Log-probabilities are recomputed at the temperature the
//! rollouts were sampled at (stored with them). Writes the updated checkpoint and a
//! one-row-per-mini-batch `rl_log`.

use super::artifacts::{read_rewards, read_rollouts, read_sampling};
use super::model_io::{read_checkpoint, read_examples_where, read_tokenizer, write_checkpoint};
use super::{
    Outputs, Stage, StageError, Written, bail, ensure, input, input_id, optional, optional_id,
    output, outputs, read_input, write_table,
};
use crate::analysis::pearson;
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::eval::rollout::{Mode, prefix};
use crate::model::DeviceSpec;
use crate::rl::advantage::{ADV_EPS, StdKind, grouped_advantages, token_advantages};
use crate::rl::grpo::{LossSettings, Sequence};
use crate::rl::update::{MinibatchRow, UpdateSettings, update};
use crate::table::cols;
use burn::backend::Autodiff;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoUpdateConfig {
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
    /// Token reweighting by advantage rescaling (appendix B.3): perception tokens get
    /// λ·|y|/|p|·Â, reasoning tokens (1 − λ)·|y|/|r|·Â. Unset: off.
    pub token_lambda: Option<f64>,
    /// The deviation of the group normalization (`sample`, as verl and TRL, or `population`).
    pub adv_std: StdKind,
    /// Refuse rollouts whose stored log-probabilities differ from this checkpoint's by more
    /// than this per token on average, before any step (0 = no check).
    pub max_logprob_gap: f64,
}

impl Default for GrpoUpdateConfig {
    fn default() -> Self {
        GrpoUpdateConfig {
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
            token_lambda: None,
            adv_std: StdKind::Sample,
            max_logprob_gap: 0.02,
        }
    }
}

pub struct GrpoUpdate;

const CHECKPOINT: InputSpec = input("checkpoint", "checkpoint");
const ROLLOUTS: InputSpec = input("rollouts", "rollouts");
const REWARDS: InputSpec = input("rewards", "rewards");
const DATA: InputSpec = input("data", "sft_targets");
const REFERENCE: InputSpec = optional("reference", "checkpoint");
const MAIN: OutputSpec = output("main", "checkpoint");
const LOG: OutputSpec = output("log", "rl_log");

/// Statistics of the whole step, repeated on every log row.
struct StepStats {
    reward: f64,
    a: f64,
    a_p: f64,
    a_tilde_r: f64,
    r_a_p: Option<f64>,
    r_a_tilde_r: Option<f64>,
    zero_groups: f64,
}

impl Stage for GrpoUpdate {
    const NAME: &'static str = "grpo-update";
    const VERSION: u32 = 1;
    const USES_DEVICE: bool = true;
    type Config = GrpoUpdateConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![CHECKPOINT, ROLLOUTS, REWARDS, DATA, REFERENCE]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN, LOG]
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
        let (mcfg, init, _) =
            read_checkpoint(ctx.store, input_id(ctx, &CHECKPOINT)?.as_str(), Some(&tok))?;
        let ref_weights = match &reference {
            Some(id) => {
                let (rcfg, w, _) = read_checkpoint(ctx.store, id.as_str(), Some(&tok))?;
                ensure!(
                    rcfg == mcfg,
                    "the reference checkpoint has another model shape than the policy"
                );
                Some(w)
            }
            None => None,
        };
        let table = read_input(ctx, &ROLLOUTS)?;
        let Some((mode, temperature)) = read_sampling(&table)? else {
            bail!("no rollouts to update on");
        };
        let rows = read_rollouts(&table)?;
        let rewards = read_rewards(&read_input(ctx, &REWARDS)?)?;
        let by_key: HashMap<(&str, usize), usize> = rewards
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.id.as_str(), r.sample), i))
            .collect();
        ensure!(
            by_key.len() == rows.len() && rewards.len() == rows.len(),
            "{} rewards for {} rollouts",
            rewards.len(),
            rows.len()
        );
        let mut matched = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(&i) = by_key.get(&(r.id.as_str(), r.sample)) else {
                bail!("no reward for rollout `{}` sample {}", r.id, r.sample);
            };
            matched.push(&rewards[i]);
        }
        let reward: Vec<f64> = matched.iter().map(|r| r.reward).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let (adv, zero) = grouped_advantages(&ids, &reward, cfg.adv_std, ADV_EPS);

        let items: HashSet<&str> = ids.iter().copied().collect();
        let examples =
            read_examples_where(ctx.store, data_id.as_str(), mcfg.image_size, 0, &|_, id| {
                items.contains(id)
            })?;
        let s = mcfg.image_size;
        let blank: Arc<[f32]> = vec![0.0f32; s * s].into();
        let by_item: HashMap<&str, (&crate::train::batch::Example, Arc<[f32]>)> = examples
            .iter()
            .map(|e| (e.id.as_str(), (e, Arc::from(e.image.as_slice()))))
            .collect();
        let mut seqs = Vec::with_capacity(rows.len());
        for (k, r) in rows.iter().enumerate() {
            let Some((e, image)) = by_item.get(r.id.as_str()) else {
                bail!("rollout item `{}` is not in the data", r.id);
            };
            let forced = match mode {
                Mode::Standard => None,
                Mode::Counterfactual | Mode::TextOnly => r.perception.as_deref(),
            };
            let n = r.token_ids.len();
            ensure!(
                n > 0,
                "rollout `{}` sample {} has no tokens",
                r.id,
                r.sample
            );
            seqs.push(Sequence {
                image: if mode == Mode::TextOnly {
                    blank.clone()
                } else {
                    image.clone()
                },
                prefix: prefix(&tok, &e.prompt, forced),
                tokens: r.token_ids.clone(),
                old_logprobs: r.logprobs.clone(),
                perception_tokens: r.perception_tokens,
                advantages: token_advantages(adv[k], n, r.perception_tokens, cfg.token_lambda)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect(),
                reward: reward[k],
            });
        }
        let flag = |f: &dyn Fn(&crate::rl::reward::RewardRow) -> bool| -> Vec<f64> {
            matched.iter().map(|r| f64::from(u8::from(f(r)))).collect()
        };
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (a, a_p, a_tr) = (flag(&|r| r.a), flag(&|r| r.a_p), flag(&|r| r.a_tilde_r));
        let step = StepStats {
            reward: mean(&reward),
            a: mean(&a),
            a_p: mean(&a_p),
            a_tilde_r: mean(&a_tr),
            r_a_p: pearson(&reward, &a_p),
            r_a_tilde_r: pearson(&reward, &a_tr),
            zero_groups: zero.values().filter(|&&z| z).count() as f64 / zero.len().max(1) as f64,
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
        };
        let spec = DeviceSpec::parse(&ctx.device)?;
        let total = cfg.ppo_epochs * seqs.len().div_ceil(settings.mini_batch.max(1));
        let bar = crate::progress::bar(total as u64, "grpo-update");
        let out = crate::with_backend!(spec, |B, dev| {
            update::<Autodiff<B>>(
                &settings,
                &mcfg,
                &init,
                ref_weights.as_deref(),
                &seqs,
                tok.pad(),
                &dev,
                |row| {
                    bar.inc(1);
                    bar.set_message(format!("loss {:.4} clip {:.3}", row.loss, row.clip_frac));
                },
            )
            .map_err(StageError::from)
        })?;
        bar.finish_and_clear();
        let ckpt = Written::new(&MAIN, write_checkpoint(ctx, &mcfg, &out.weights, &tok)?);
        let log = write_log(ctx, cfg, &out.log, &step)?;
        Ok(outputs([ckpt, log]))
    }
}

fn write_log(
    ctx: &RunCtx,
    cfg: &GrpoUpdateConfig,
    log: &[MinibatchRow],
    s: &StepStats,
) -> Result<Written, StageError> {
    let n = log.len();
    let f = |g: &dyn Fn(&MinibatchRow) -> f64| cols::f64(log.iter().map(g).collect());
    let i =
        |g: &dyn Fn(&MinibatchRow) -> usize| cols::i32(log.iter().map(|r| g(r) as i32).collect());
    let rep = |v: f64| cols::f64(vec![v; n]);
    let rep_opt = |v: Option<f64>| cols::f64_opt(vec![v; n]);
    write_table(
        ctx,
        &LOG,
        vec![
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
        ],
    )
}
