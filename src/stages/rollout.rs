//! rollout: sample G outputs per item from a checkpoint (see [`crate::eval::rollout`] for the
//! modes and keyed sampling) and store them with their token ids and log-probabilities.

use super::artifacts::read_rollouts;
use super::model_io::{read_checkpoint, read_examples, read_tokenizer};
use super::{
    Outputs, Stage, StageError, Written, ensure, input, input_id, optional, output, outputs,
    read_optional, write_table,
};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::eval::rollout::{Mode, RolloutRow, RolloutSpec, run_rollouts};
use crate::model::DeviceSpec;
use crate::model::checkpoint::model_from_bytes;
use crate::table::cols;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Writes rollouts as a `rollouts` artifact.
pub fn write_rollouts(
    ctx: &RunCtx,
    mode: Mode,
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
    /// Which split of the data to sample on.
    pub split: String,
    /// At most this many items (0 = all).
    pub limit: usize,
    #[serde(flatten)]
    pub spec: RolloutSpec,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            split: "test".into(),
            limit: 0,
            spec: RolloutSpec::default(),
        }
    }
}

pub struct Rollout;

const CHECKPOINT: InputSpec = input("checkpoint", "checkpoint");
const DATA: InputSpec = input("data", "sft_targets");
const PERCEPTIONS: InputSpec = optional("perceptions", "rollouts");
const MAIN: OutputSpec = output("main", "rollouts");

impl Stage for Rollout {
    const NAME: &'static str = "rollout";
    const VERSION: u32 = 4;
    const USES_DEVICE: bool = true;
    type Config = RolloutConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![CHECKPOINT, DATA, PERCEPTIONS]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }

    fn run(cfg: &RolloutConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let data_id = input_id(ctx, &DATA)?;
        let data_id = data_id.as_str();
        let data_tok = read_tokenizer(ctx.store, data_id)?;
        let (mcfg, weights, tok) = read_checkpoint(
            ctx.store,
            input_id(ctx, &CHECKPOINT)?.as_str(),
            Some(&data_tok),
        )?;
        let examples = read_examples(
            ctx.store,
            data_id,
            Some(&cfg.split),
            mcfg.image_size,
            cfg.limit,
        )?;
        ensure!(!examples.is_empty(), "no items in split `{}`", cfg.split);
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
            let model = model_from_bytes::<B>(&mcfg, &weights, &dev)?;
            run_rollouts::<B>(
                &model,
                &tok,
                &examples,
                perceptions.as_ref(),
                &cfg.spec,
                ctx.seed,
                &dev,
                |n| bar.inc(n as u64),
            )
            .map_err(StageError::from)
        })?;
        bar.finish_and_clear();
        Ok(outputs([write_rollouts(ctx, cfg.spec.mode, &rows)?]))
    }
}
