//! evaluate: score rollouts against the ground truth. Per sample: a_p = 1(p = p*), end-to-end
//! a = Acc(r | p*), conditional ã_r = Acc(r | p), counterfactual a_r = Acc(r' | p*) from the
//! counterfactual rollout. Summaries per task with 95 % Wilson intervals (`asymm run` prints them).

use super::rollout::RolloutRow;
use super::{Outputs, Stage, StageError, input, optional, outputs};
use crate::analysis::wilson;
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::table::{self, Table, cols};
use crate::tasks::TaskKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Scores of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scores {
    pub a_p: bool,
    pub a: bool,
    pub a_tilde_r: bool,
    pub a_r: Option<bool>,
}

/// Scores a standard-mode sample (and its counterfactual twin, if any) against p*.
pub fn score(
    task: TaskKind,
    p_star: &str,
    standard: (Option<&str>, Option<&str>),
    counterfactual_reasoning: Option<Option<&str>>,
) -> Scores {
    let (p, r) = standard;
    Scores {
        a_p: p.is_some_and(|p| task.perception_correct(p, p_star)),
        a: r.is_some_and(|r| task.accuracy(r, p_star)),
        a_tilde_r: matches!((p, r), (Some(p), Some(r)) if task.accuracy(r, p)),
        a_r: counterfactual_reasoning.map(|r| r.is_some_and(|r| task.accuracy(r, p_star))),
    }
}

/// Reads a rollouts artifact back.
pub fn read_rollouts(t: &Table) -> Result<Vec<RolloutRow>, StageError> {
    let ids = t.required_strings("id")?;
    let samples = t.i32("sample")?;
    let tasks = t.required_strings("task")?;
    let texts = t.required_strings("text")?;
    let ps = t.strings("perception")?;
    let rs = t.strings("reasoning")?;
    let errs = t.strings("format_error")?;
    let pt = t.i32("perception_tokens")?;
    let rt = t.i32("reasoning_tokens")?;
    let nt = t.i32("new_tokens")?;
    let tr = t.bool("truncated")?;
    Ok((0..t.rows())
        .map(|i| RolloutRow {
            id: ids[i].clone(),
            sample: samples.value(i).max(0) as usize,
            task: tasks[i].clone(),
            text: texts[i].clone(),
            perception: ps[i].clone(),
            reasoning: rs[i].clone(),
            format_error: errs[i].clone(),
            perception_tokens: pt.value(i).max(0) as usize,
            reasoning_tokens: rt.value(i).max(0) as usize,
            new_tokens: nt.value(i).max(0) as usize,
            truncated: tr.value(i),
        })
        .collect())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {}

pub struct Evaluate;

impl Stage for Evaluate {
    const NAME: &'static str = "evaluate";
    const VERSION: u32 = 1;
    type Config = EvaluateConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![
            input("data", "sft_targets"),
            input("standard", "rollouts"),
            optional("counterfactual", "rollouts"),
        ]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![
            OutputSpec {
                name: "main",
                kind: "eval_summary",
            },
            OutputSpec {
                name: "items",
                kind: "eval_items",
            },
        ]
    }

    fn run(_cfg: &EvaluateConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let data = Table::read(
            ctx.store,
            ctx.input("data").unwrap_or_default(),
            "sft_targets",
        )?;
        let truth: HashMap<String, String> = data
            .required_strings("id")?
            .into_iter()
            .zip(data.required_strings("perception")?)
            .collect();
        let std_rows = read_rollouts(&Table::read(
            ctx.store,
            ctx.input("standard").unwrap_or_default(),
            "rollouts",
        )?)?;
        let cf: Option<HashMap<(String, usize), Option<String>>> = match ctx.input("counterfactual")
        {
            Some(id) => Some(
                read_rollouts(&Table::read(ctx.store, id, "rollouts")?)?
                    .into_iter()
                    .map(|r| ((r.id, r.sample), r.reasoning))
                    .collect(),
            ),
            None => None,
        };
        let mut items = Vec::with_capacity(std_rows.len());
        for r in &std_rows {
            let task = TaskKind::parse(&r.task)
                .ok_or_else(|| StageError::Invalid(format!("unknown task `{}`", r.task)))?;
            let p_star = truth.get(&r.id).ok_or_else(|| {
                StageError::Invalid(format!("rollout item `{}` is not in the data", r.id))
            })?;
            let cf_r = match &cf {
                Some(m) => Some(
                    m.get(&(r.id.clone(), r.sample))
                        .ok_or_else(|| {
                            StageError::Invalid(format!(
                                "no counterfactual rollout for `{}` sample {}",
                                r.id, r.sample
                            ))
                        })?
                        .as_deref(),
                ),
                None => None,
            };
            let s = score(
                task,
                p_star,
                (r.perception.as_deref(), r.reasoning.as_deref()),
                cf_r,
            );
            items.push((r.id.clone(), r.sample, r.task.clone(), s));
        }
        // Summary per task and metric.
        let mut groups: BTreeMap<(String, &'static str), (u64, u64)> = BTreeMap::new();
        for (_, _, task, s) in &items {
            let mut add = |m: &'static str, v: bool| {
                let e = groups.entry((task.clone(), m)).or_default();
                e.0 += v as u64;
                e.1 += 1;
            };
            add("a_p", s.a_p);
            add("a", s.a);
            add("a_tilde_r", s.a_tilde_r);
            if let Some(v) = s.a_r {
                add("a_r", v);
            }
        }
        let order = ["a_p", "a", "a_tilde_r", "a_r"];
        let mut summary: Vec<(String, &str, u64, f64, f64, f64)> = Vec::new();
        for ((task, metric), (k, n)) in &groups {
            let (lo, hi) = wilson(*k, *n);
            summary.push((
                task.clone(),
                metric,
                *n,
                *k as f64 / (*n).max(1) as f64,
                lo,
                hi,
            ));
        }
        summary.sort_by_key(|s| (s.0.clone(), order.iter().position(|m| *m == s.1)));
        let mut w = ctx
            .store
            .writer("eval_items", table::schema("eval_items")?.version)?;
        let n = table::write(
            &mut w,
            "eval_items",
            vec![
                cols::utf8(&items.iter().map(|i| i.0.as_str()).collect::<Vec<_>>()),
                cols::i32(items.iter().map(|i| i.1 as i32).collect()),
                cols::utf8(&items.iter().map(|i| i.2.as_str()).collect::<Vec<_>>()),
                cols::bool(items.iter().map(|i| i.3.a_p).collect()),
                cols::bool(items.iter().map(|i| i.3.a).collect()),
                cols::bool(items.iter().map(|i| i.3.a_tilde_r).collect()),
                cols::bool_opt(items.iter().map(|i| i.3.a_r).collect()),
            ],
        )?;
        let items_id = ctx.commit(w, Some(n))?;
        let mut w = ctx
            .store
            .writer("eval_summary", table::schema("eval_summary")?.version)?;
        let n = table::write(
            &mut w,
            "eval_summary",
            vec![
                cols::utf8(&summary.iter().map(|s| s.0.as_str()).collect::<Vec<_>>()),
                cols::utf8(&summary.iter().map(|s| s.1).collect::<Vec<_>>()),
                cols::i64(summary.iter().map(|s| s.2 as i64).collect()),
                cols::f64(summary.iter().map(|s| s.3).collect()),
                cols::f64(summary.iter().map(|s| s.4).collect()),
                cols::f64(summary.iter().map(|s| s.5).collect()),
            ],
        )?;
        let summary_id = ctx.commit(w, Some(n))?;
        Ok(outputs(&[("main", summary_id), ("items", items_id)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_separate_perception_and_reasoning() {
        let t = TaskKind::GraphColoring;
        let truth = "nodes 3\nedges 0-1 1-2";
        // Right perception, right answer.
        let s = score(
            t,
            truth,
            (Some(truth), Some("answer 0:1 1:2 2:1")),
            Some(Some("answer 0:1 1:2 2:1")),
        );
        assert_eq!(
            s,
            Scores {
                a_p: true,
                a: true,
                a_tilde_r: true,
                a_r: Some(true)
            }
        );
        // Wrong perception (missed an edge) but reasoning consistent with it: ã_r yes, a no.
        let s = score(
            t,
            truth,
            (Some("nodes 3\nedges 0-1"), Some("answer 0:1 1:2 2:2")),
            Some(None),
        );
        assert_eq!(
            s,
            Scores {
                a_p: false,
                a: false,
                a_tilde_r: true,
                a_r: Some(false)
            }
        );
        // Broken format.
        let s = score(t, truth, (None, None), None);
        assert_eq!(
            s,
            Scores {
                a_p: false,
                a: false,
                a_tilde_r: false,
                a_r: None
            }
        );
    }
}
