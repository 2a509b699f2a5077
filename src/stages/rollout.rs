//! rollout: sample G outputs per item from a checkpoint (see [`crate::eval::rollout`] for the
//! modes and keyed sampling) and store them with their token ids and log-probabilities.

use super::artifacts::read_rollouts;
use super::model_io::{
    HfSource, hf_external, plan_examples, plan_of_input_or_hf, plan_split_examples, read_tokenizer,
    split_ids,
};
use super::{
    Outputs, Stage, StageError, Written, ensure, input, input_id, optional, output, outputs,
    read_optional, write_table,
};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::eval::rollout::{Mode, RolloutRow, RolloutSpec, Sampler, run_rollouts};
use crate::model::DeviceSpec;
use crate::rl::select::step_items;
use crate::table::cols;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Writes rollouts as a `rollouts` artifact.
pub fn write_rollouts(
    ctx: &RunCtx,
    mode: Mode,
    temperature: f32,
    rows: &[RolloutRow],
) -> Result<Written, StageError> {
    let strs = |f: &dyn Fn(&RolloutRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let ints = |f: &dyn Fn(&RolloutRow) -> usize| rows.iter().map(|r| f(r) as i32).collect();
    write_table(
        ctx,
        &MAIN,
        vec![
            (
                "id",
                cols::utf8(&rows.iter().map(|r| &r.id).collect::<Vec<_>>()),
            ),
            ("sample", cols::i32(ints(&|r| r.sample))),
            ("mode", cols::utf8(&vec![mode.name(); rows.len()])),
            ("temperature", cols::f32(vec![temperature; rows.len()])),
            (
                "task",
                cols::utf8(&rows.iter().map(|r| &r.task).collect::<Vec<_>>()),
            ),
            (
                "text",
                cols::utf8(&rows.iter().map(|r| &r.text).collect::<Vec<_>>()),
            ),
            (
                "perception",
                cols::utf8_opt(&strs(&|r| r.perception.clone())),
            ),
            ("reasoning", cols::utf8_opt(&strs(&|r| r.reasoning.clone()))),
            (
                "perception_error",
                cols::utf8_opt(&strs(&|r| r.perception_error.clone())),
            ),
            (
                "reasoning_error",
                cols::utf8_opt(&strs(&|r| r.reasoning_error.clone())),
            ),
            (
                "token_ids",
                cols::list_i32(
                    &rows
                        .iter()
                        .map(|r| r.token_ids.iter().map(|&t| t as i32).collect())
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "logprobs",
                cols::list_f32(&rows.iter().map(|r| r.logprobs.clone()).collect::<Vec<_>>()),
            ),
            (
                "perception_tokens",
                cols::i32(ints(&|r| r.perception_tokens)),
            ),
            ("reasoning_tokens", cols::i32(ints(&|r| r.reasoning_tokens))),
            ("new_tokens", cols::i32(ints(&|r| r.new_tokens))),
            (
                "truncated",
                cols::bool(rows.iter().map(|r| r.truncated).collect()),
            ),
        ],
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Sample from a checkpoint folder in the Hugging Face layout instead of a `checkpoint`
    /// input: `model = { hf = "path" }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<HfSource>,
    /// Which split of the data to sample on.
    pub split: String,
    /// At most this many items (0 = all).
    pub limit: usize,
    /// RL: sample this many items of the split, a keyed subset per `step` that covers the
    /// split once per epoch (0 = every item, or `limit`).
    pub prompts_per_step: usize,
    /// RL: the step this rollout belongs to; picks the step's items and keys its sampling, so
    /// that an item drawn at two steps is not sampled with the same random stream.
    pub step: Option<usize>,
    #[serde(flatten)]
    pub spec: RolloutSpec,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            model: None,
            split: "test".into(),
            limit: 0,
            prompts_per_step: 0,
            step: None,
            spec: RolloutSpec::default(),
        }
    }
}

/// The sampling seed of RL step `step`.
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"asymm-rollout-step");
    h.update(&seed.to_le_bytes());
    h.update(&(step as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

pub struct Rollout;

const CHECKPOINT: InputSpec = optional("checkpoint", "checkpoint");
const DATA: InputSpec = input("data", "sft_targets");
const PERCEPTIONS: InputSpec = optional("perceptions", "rollouts");
const MAIN: OutputSpec = output("main", "rollouts");

impl Stage for Rollout {
    const NAME: &'static str = "rollout";
    const VERSION: u32 = 9;
    const USES_DEVICE: bool = true;
    type Config = RolloutConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![CHECKPOINT, DATA, PERCEPTIONS]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }
    fn external_files(cfg: &RolloutConfig) -> Vec<std::path::PathBuf> {
        hf_external(cfg.model.as_ref())
    }

    fn run(cfg: &RolloutConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let data_id = input_id(ctx, &DATA)?;
        let data_id = data_id.as_str();
        let data_tok = read_tokenizer(ctx.store, data_id)?;
        let plan = plan_of_input_or_hf(ctx, &CHECKPOINT, cfg.model.as_ref(), &data_tok)?;
        ensure!(
            cfg.limit == 0 || cfg.prompts_per_step == 0,
            "set either `limit` or `prompts_per_step`, not both"
        );
        let examples = if cfg.prompts_per_step > 0 {
            let ids = split_ids(ctx.store, data_id, &cfg.split)?;
            let chosen: HashSet<&str> = step_items(
                ids.len(),
                cfg.prompts_per_step,
                cfg.step.unwrap_or(0),
                ctx.seed,
            )
            .into_iter()
            .map(|i| ids[i].as_str())
            .collect();
            plan_examples(&plan, ctx.store, data_id, 0, &|s: &str, id: &str| {
                s == cfg.split && chosen.contains(id)
            })?
        } else {
            plan_split_examples(&plan, ctx.store, data_id, Some(&cfg.split), cfg.limit)?
        };
        ensure!(!examples.is_empty(), "no items in split `{}`", cfg.split);
        let seed = match cfg.step {
            Some(k) => step_seed(ctx.seed, k),
            None => ctx.seed,
        };
        let perceptions = match read_optional(ctx, &PERCEPTIONS)? {
            Some(t) => {
                let rows = read_rollouts(&t)?;
                Some(
                    rows.into_iter()
                        .map(|r| ((r.id, r.sample), r.perception.unwrap_or_default()))
                        .collect::<HashMap<_, _>>(),
                )
            }
            None => None,
        };
        let spec = DeviceSpec::parse(&ctx.device)?;
        let bar = crate::progress::bar((examples.len() * cfg.spec.samples) as u64, "rollout");
        let rows = crate::with_backend!(spec, |B, dev| {
            let model = plan.load::<B>(ctx.seed, &dev)?;
            run_rollouts::<B>(
                &Sampler {
                    model: &model,
                    codec: &plan.codec,
                    device: &dev,
                },
                &examples,
                perceptions.as_ref(),
                &cfg.spec,
                seed,
                |n| bar.inc(n as u64),
            )
            .map_err(StageError::from)
        })?;
        bar.finish_and_clear();
        Ok(outputs([write_rollouts(
            ctx,
            cfg.spec.mode,
            cfg.spec.sampling.temperature,
            &rows,
        )?]))
    }
}
