//! evaluate: score rollouts against the ground truth (see [`crate::eval::score`]): per sample
//! a_p, a, ã_r and counterfactual a_r with the format problems that may explain a zero; per task
//! a summary with 95 % intervals (`asymm run` prints it).

use super::artifacts::read_rollouts;
use super::{
    Outputs, Stage, StageError, Written, input, optional, output, outputs, read_input,
    read_optional, write_table,
};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::eval::score::{ScoredItem, SummaryRow, score_rollouts, summarize};
use crate::table::cols;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {}

pub struct Evaluate;

const DATA: InputSpec = input("data", "sft_targets");
const STANDARD: InputSpec = input("standard", "rollouts");
const COUNTERFACTUAL: InputSpec = optional("counterfactual", "rollouts");
const MAIN: OutputSpec = output("main", "eval_summary");
const ITEMS: OutputSpec = output("items", "eval_items");

fn write_items(ctx: &RunCtx, items: &[ScoredItem]) -> Result<Written, StageError> {
    let flag = |f: &dyn Fn(&ScoredItem) -> bool| cols::bool(items.iter().map(f).collect());
    write_table(
        ctx,
        &ITEMS,
        vec![
            (
                "id",
                cols::utf8(&items.iter().map(|i| &i.id).collect::<Vec<_>>()),
            ),
            (
                "sample",
                cols::i32(items.iter().map(|i| i.sample as i32).collect()),
            ),
            (
                "task",
                cols::utf8(&items.iter().map(|i| &i.task).collect::<Vec<_>>()),
            ),
            ("a_p", flag(&|i| i.scores.a_p)),
            ("a_p_lenient", flag(&|i| i.scores.a_p_lenient)),
            ("a", flag(&|i| i.scores.a)),
            ("a_tilde_r", flag(&|i| i.scores.a_tilde_r)),
            (
                "a_r",
                cols::bool_opt(items.iter().map(|i| i.scores.a_r).collect()),
            ),
            (
                "perception_error",
                cols::utf8_opt(
                    &items
                        .iter()
                        .map(|i| i.perception_error.clone())
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "reasoning_error",
                cols::utf8_opt(
                    &items
                        .iter()
                        .map(|i| i.reasoning_error.clone())
                        .collect::<Vec<_>>(),
                ),
            ),
            ("truncated", flag(&|i| i.truncated)),
            (
                "counterfactual_reasoning_error",
                cols::utf8_opt(
                    &items
                        .iter()
                        .map(|i| i.counterfactual.as_ref().and_then(|c| c.0.clone()))
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "counterfactual_truncated",
                cols::bool_opt(
                    items
                        .iter()
                        .map(|i| i.counterfactual.as_ref().map(|c| c.1))
                        .collect(),
                ),
            ),
        ],
    )
}

fn write_summary(ctx: &RunCtx, rows: &[SummaryRow]) -> Result<Written, StageError> {
    write_table(ctx, &MAIN, SummaryRow::columns(rows))
}

impl Stage for Evaluate {
    const NAME: &'static str = "evaluate";
    const VERSION: u32 = 2;
    type Config = EvaluateConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![DATA, STANDARD, COUNTERFACTUAL]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN, ITEMS]
    }

    fn run(_cfg: &EvaluateConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let data = read_input(ctx, &DATA)?;
        let truth: HashMap<String, String> = data
            .required_strings("id")?
            .into_iter()
            .zip(data.required_strings("perception")?)
            .collect();
        let standard = read_rollouts(&read_input(ctx, &STANDARD)?)?;
        let counterfactual = match read_optional(ctx, &COUNTERFACTUAL)? {
            Some(t) => Some(read_rollouts(&t)?),
            None => None,
        };
        let items = score_rollouts(&truth, &standard, counterfactual.as_deref())?;
        let items_out = write_items(ctx, &items)?;
        Ok(outputs([
            write_summary(ctx, &summarize(&items))?,
            items_out,
        ]))
    }
}
