//! Scoring sampled outputs against the ground truth, and summaries with honest intervals.
//!
//! Per sample (the paper's definitions): a_p = 1(p = p*), end-to-end a = Acc(r | p*),
//! conditional ã_r = Acc(r | p), counterfactual a_r = Acc(r' | p*) with r' sampled with p*
//! forced. Beside them: a lenient perception diagnostic (same puzzle, any spelling), P(a | a_p)
//! and the share of outputs with each format error or cut by the token budget, so that a parse
//! failure or a truncation is reported rather than silently counted as a wrong answer.

use super::rollout::{Mode, RolloutRow, RolloutSpec, Sampler, run_rollouts};
use super::{EvalError, Result};
use crate::analysis::{cluster_bootstrap, wilson};
use crate::data::Codec;
use crate::data::Example;
use crate::model::Model;
use crate::model::sampling::SamplingConfig;
use crate::table::{Table, cols};
use crate::tasks::TaskKind;
use arrow::array::ArrayRef;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Scores of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scores {
    pub a_p: bool,
    /// Lenient diagnostic: the perception describes the same puzzle as p*.
    pub a_p_lenient: bool,
    pub a: bool,
    pub a_tilde_r: bool,
    pub a_r: Option<bool>,
}

/// Scores a standard-mode sample (perception, reasoning — each `None` when it could not be
/// read) and its counterfactual twin's reasoning, if one was sampled, against p*.
pub fn score(
    task: TaskKind,
    p_star: &str,
    standard: (Option<&str>, Option<&str>),
    counterfactual_reasoning: Option<Option<&str>>,
) -> Scores {
    let (p, r) = standard;
    Scores {
        a_p: p.is_some_and(|p| task.perception_correct(p, p_star)),
        a_p_lenient: p.is_some_and(|p| task.perception_equivalent(p, p_star)),
        a: r.is_some_and(|r| task.accuracy(r, p_star)),
        a_tilde_r: matches!((p, r), (Some(p), Some(r)) if task.accuracy(r, p)),
        a_r: counterfactual_reasoning.map(|r| r.is_some_and(|r| task.accuracy(r, p_star))),
    }
}

/// One scored standard sample, with what the summary needs to report format problems.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredItem {
    pub id: String,
    pub sample: usize,
    pub task: String,
    pub scores: Scores,
    pub perception_error: Option<String>,
    pub reasoning_error: Option<String>,
    pub truncated: bool,
    /// The counterfactual twin's reasoning format error and truncation, if there is a twin.
    pub counterfactual: Option<(Option<String>, bool)>,
}

/// Scores standard rollouts (and their counterfactual twins) against the ground truth
/// `p_star[id]`. Every standard sample must have a twin when `counterfactual` is given.
pub fn score_rollouts(
    p_star: &HashMap<String, String>,
    standard: &[RolloutRow],
    counterfactual: Option<&[RolloutRow]>,
) -> Result<Vec<ScoredItem>> {
    let cf: Option<HashMap<(&str, usize), &RolloutRow>> = counterfactual.map(|rows| {
        rows.iter()
            .map(|r| ((r.id.as_str(), r.sample), r))
            .collect()
    });
    standard
        .iter()
        .map(|r| {
            let task =
                TaskKind::parse(&r.task).ok_or_else(|| EvalError::UnknownTask(r.task.clone()))?;
            let truth = p_star.get(&r.id).ok_or_else(|| {
                EvalError::Invalid(format!("rollout item `{}` is not in the data", r.id))
            })?;
            let twin = match &cf {
                Some(m) => Some(*m.get(&(r.id.as_str(), r.sample)).ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "no counterfactual rollout for `{}` sample {}",
                        r.id, r.sample
                    ))
                })?),
                None => None,
            };
            Ok(ScoredItem {
                id: r.id.clone(),
                sample: r.sample,
                task: r.task.clone(),
                scores: score(
                    task,
                    truth,
                    (r.perception.as_deref(), r.reasoning.as_deref()),
                    twin.map(|t| t.reasoning.as_deref()),
                ),
                perception_error: r.perception_error.clone(),
                reasoning_error: r.reasoning_error.clone(),
                truncated: r.truncated,
                counterfactual: twin.map(|t| (t.reasoning_error.clone(), t.truncated)),
            })
        })
        .collect()
}

/// How an interval was computed.
pub const WILSON: &str = "wilson";
pub const CLUSTER_BOOTSTRAP: &str = "cluster-bootstrap";

/// Bootstrap replicates for clustered intervals.
const BOOTSTRAP_REPS: usize = 2000;

/// One row of a summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub task: String,
    pub metric: String,
    /// Samples the metric is measured on.
    pub n: u64,
    /// Distinct items among them.
    pub items: u64,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// `wilson` when each item has one sample, `cluster-bootstrap` (over items) otherwise.
    pub interval: String,
}

/// The metric names in report order (format breakdown rows follow).
pub const METRICS: [&str; 7] = [
    "a_p",
    "a",
    "a_tilde_r",
    "a_r",
    "a_given_p",
    "a_p_lenient",
    "truncated",
];

impl SummaryRow {
    /// The `eval_summary` table's columns for `rows` (`schemas/eval_summary.json`).
    pub fn columns(rows: &[SummaryRow]) -> Vec<(&'static str, ArrayRef)> {
        let text =
            |g: &dyn Fn(&SummaryRow) -> &str| cols::utf8(&rows.iter().map(g).collect::<Vec<_>>());
        let float = |g: &dyn Fn(&SummaryRow) -> f64| cols::f64(rows.iter().map(g).collect());
        let count =
            |g: &dyn Fn(&SummaryRow) -> u64| cols::i64(rows.iter().map(|r| g(r) as i64).collect());
        vec![
            ("task", text(&|r| &r.task)),
            ("metric", text(&|r| &r.metric)),
            ("n", count(&|r| r.n)),
            ("items", count(&|r| r.items)),
            ("mean", float(&|r| r.mean)),
            ("ci_low", float(&|r| r.ci_low)),
            ("ci_high", float(&|r| r.ci_high)),
            ("interval", text(&|r| &r.interval)),
        ]
    }

    /// Reads an `eval_summary` table back.
    pub fn read_all(t: &Table) -> crate::table::Result<Vec<SummaryRow>> {
        let (tasks, metrics) = (t.required_strings("task")?, t.required_strings("metric")?);
        let (n, items) = (t.i64("n")?, t.i64("items")?);
        let (mean, lo, hi) = (t.f64("mean")?, t.f64("ci_low")?, t.f64("ci_high")?);
        let interval = t.required_strings("interval")?;
        Ok((0..t.rows())
            .map(|i| SummaryRow {
                task: tasks[i].clone(),
                metric: metrics[i].clone(),
                n: n.value(i).max(0) as u64,
                items: items.value(i).max(0) as u64,
                mean: mean.value(i),
                ci_low: lo.value(i),
                ci_high: hi.value(i),
                interval: interval[i].clone(),
            })
            .collect())
    }
}

/// Summarizes scored samples per task: every accuracy, P(a | a_p) (`a_given_p`, over the
/// samples whose perception is right), the lenient perception diagnostic, the share of outputs
/// cut by the token budget (`truncated`, and `counterfactual_truncated`), and the share of
/// outputs with each format error (`perception_error:<code>`, `reasoning_error:<code>`,
/// `counterfactual_reasoning_error:<code>`). Intervals: Wilson when every item has one sample,
/// otherwise a bootstrap over items.
pub fn summarize(items: &[ScoredItem]) -> Vec<SummaryRow> {
    // (task, metric) → item → (successes, samples)
    type Acc = BTreeMap<(String, String), BTreeMap<String, (u64, u64)>>;
    let mut acc: Acc = BTreeMap::new();
    let mut add = |task: &str, metric: &str, id: &str, v: bool| {
        let e = acc
            .entry((task.to_string(), metric.to_string()))
            .or_default()
            .entry(id.to_string())
            .or_default();
        e.0 += v as u64;
        e.1 += 1;
    };
    let mut error_codes: BTreeMap<(String, String), ()> = BTreeMap::new();
    for it in items {
        for (prefix, code) in [
            ("perception_error", &it.perception_error),
            ("reasoning_error", &it.reasoning_error),
        ] {
            if let Some(c) = code {
                error_codes.insert((it.task.clone(), format!("{prefix}:{c}")), ());
            }
        }
        if let Some((Some(c), _)) = &it.counterfactual {
            error_codes.insert(
                (
                    it.task.clone(),
                    format!("counterfactual_reasoning_error:{c}"),
                ),
                (),
            );
        }
    }
    for it in items {
        let (t, id, s) = (it.task.as_str(), it.id.as_str(), it.scores);
        add(t, "a_p", id, s.a_p);
        add(t, "a", id, s.a);
        add(t, "a_tilde_r", id, s.a_tilde_r);
        if let Some(v) = s.a_r {
            add(t, "a_r", id, v);
        }
        if s.a_p {
            add(t, "a_given_p", id, s.a);
        }
        add(t, "a_p_lenient", id, s.a_p_lenient);
        add(t, "truncated", id, it.truncated);
        for ((task, metric), ()) in &error_codes {
            if task != t {
                continue;
            }
            let v = match metric.split_once(':') {
                Some(("perception_error", c)) => it.perception_error.as_deref() == Some(c),
                Some(("reasoning_error", c)) => it.reasoning_error.as_deref() == Some(c),
                Some(("counterfactual_reasoning_error", c)) => {
                    matches!(&it.counterfactual, Some((Some(e), _)) if e == c)
                }
                _ => false,
            };
            add(t, metric, id, v);
        }
        if let Some((_, tr)) = &it.counterfactual {
            add(t, "counterfactual_truncated", id, *tr);
        }
    }
    let rank = |m: &str| {
        METRICS
            .iter()
            .position(|x| *x == m)
            .unwrap_or(METRICS.len())
    };
    let mut rows: Vec<SummaryRow> = acc
        .into_iter()
        .map(|((task, metric), per_item)| {
            let clusters: Vec<(u64, u64)> = per_item.values().copied().collect();
            let (k, n) = clusters.iter().fold((0, 0), |(a, b), c| (a + c.0, b + c.1));
            let clustered = clusters.iter().any(|c| c.1 > 1);
            let (lo, hi) = if clustered {
                let seed = u64::from_le_bytes(
                    blake3::hash(format!("{task}/{metric}").as_bytes()).as_bytes()[..8]
                        .try_into()
                        .unwrap_or([0; 8]),
                );
                cluster_bootstrap(&clusters, BOOTSTRAP_REPS, seed)
            } else {
                wilson(k, n)
            };
            SummaryRow {
                task,
                metric,
                n,
                items: clusters.len() as u64,
                mean: k as f64 / n.max(1) as f64,
                ci_low: lo,
                ci_high: hi,
                interval: if clustered { CLUSTER_BOOTSTRAP } else { WILSON }.to_string(),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.task.as_str(), rank(&a.metric), a.metric.as_str()).cmp(&(
            b.task.as_str(),
            rank(&b.metric),
            b.metric.as_str(),
        ))
    });
    rows
}

/// Held-out accuracies at one point of training.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EvalPoint {
    pub a_p: f64,
    pub a_r: f64,
    pub a: f64,
    pub a_tilde_r: f64,
    /// P(a | a_p); `None` when no perception was right.
    pub a_given_p: Option<f64>,
    /// Share of standard outputs cut by the token budget.
    pub truncated: f64,
}

/// Greedy held-out a_p, a_r, a, ã_r and P(a | a_p) on `examples`: one standard and one
/// counterfactual rollout per item.
pub fn heldout_eval<B: Backend>(
    model: &Model<B>,
    tok: &Codec,
    examples: &[Example],
    max_new_tokens: Option<usize>,
    device: &B::Device,
) -> Result<EvalPoint> {
    let spec = |mode| RolloutSpec {
        mode,
        samples: 1,
        sampling: SamplingConfig::greedy(),
        max_new_tokens,
        batch_size: 32,
    };
    let run = |mode| {
        run_rollouts(
            &Sampler {
                model,
                codec: tok,
                device,
            },
            examples,
            None,
            &spec(mode),
            0,
            |_| {},
        )
    };
    let std = run(Mode::Standard)?;
    let cf = run(Mode::Counterfactual)?;
    let truth: HashMap<String, String> = examples
        .iter()
        .map(|e| (e.id.clone(), e.perception.clone()))
        .collect();
    let scored = score_rollouts(&truth, &std, Some(&cf))?;
    let n = scored.len().max(1) as f64;
    let count = |f: &dyn Fn(&ScoredItem) -> bool| scored.iter().filter(|s| f(s)).count() as f64;
    let right_p = count(&|s| s.scores.a_p);
    Ok(EvalPoint {
        a_p: right_p / n,
        a_r: count(&|s| s.scores.a_r == Some(true)) / n,
        a: count(&|s| s.scores.a) / n,
        a_tilde_r: count(&|s| s.scores.a_tilde_r) / n,
        a_given_p: (right_p > 0.0).then(|| count(&|s| s.scores.a_p && s.scores.a) / right_p),
        truncated: count(&|s| s.truncated) / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, sample: usize, p: Option<&str>, r: Option<&str>) -> RolloutRow {
        RolloutRow {
            id: id.into(),
            sample,
            task: "graph_coloring".into(),
            text: String::new(),
            perception: p.map(String::from),
            reasoning: r.map(String::from),
            perception_error: p.is_none().then(|| "missing_tag".to_string()),
            reasoning_error: r.is_none().then(|| "truncated".to_string()),
            token_ids: vec![],
            logprobs: vec![],
            perception_tokens: 0,
            reasoning_tokens: 0,
            new_tokens: 0,
            truncated: r.is_none(),
        }
    }

    #[test]
    fn scores_separate_perception_and_reasoning() {
        let t = TaskKind::GraphColoring;
        let truth = "nodes 3\nedges 0-1 1-2";
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
                a_p_lenient: true,
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
            (s.a_p, s.a, s.a_tilde_r, s.a_r),
            (false, false, true, Some(false))
        );
        // A right perception whose reasoning was cut: a_p still counts.
        let s = score(t, truth, (Some(truth), None), None);
        assert_eq!((s.a_p, s.a, s.a_tilde_r, s.a_r), (true, false, false, None));
        // The same graph spelt differently: only the lenient diagnostic accepts it.
        let s = score(t, truth, (Some("nodes 3\nedges 2-1 0-1"), None), None);
        assert!(!s.a_p && s.a_p_lenient);
    }

    #[test]
    fn summary_reports_format_errors_truncation_and_conditional_accuracy() {
        let truth: HashMap<String, String> =
            [("g1".to_string(), "nodes 3\nedges 0-1 1-2".to_string())].into();
        let p = "nodes 3\nedges 0-1 1-2";
        let rows = vec![
            row("g1", 0, Some(p), Some("answer 0:1 1:2 2:1")),
            row("g1", 1, Some(p), None),
            row("g1", 2, None, None),
            row(
                "g1",
                3,
                Some("nodes 3\nedges 0-1"),
                Some("answer 0:1 1:2 2:1"),
            ),
        ];
        let scored = score_rollouts(&truth, &rows, None).unwrap();
        let sum = summarize(&scored);
        let get = |m: &str| sum.iter().find(|r| r.metric == m).unwrap();
        assert_eq!(get("a_p").mean, 0.5);
        assert_eq!(get("a").mean, 0.5);
        assert_eq!(get("a_given_p").n, 2);
        assert_eq!(get("a_given_p").mean, 0.5);
        assert_eq!(get("truncated").mean, 0.5);
        assert_eq!(get("perception_error:missing_tag").mean, 0.25);
        assert_eq!(get("reasoning_error:truncated").mean, 0.5);
        // Four samples of one item: the interval is clustered, not Wilson over four.
        assert_eq!(get("a_p").interval, CLUSTER_BOOTSTRAP);
        assert_eq!(get("a_p").items, 1);
        assert!(sum.iter().all(|r| r.metric != "a_r"));
        // A missing counterfactual twin is an error naming the sample.
        let err = score_rollouts(&truth, &rows, Some(&rows[..1])).unwrap_err();
        assert!(err.to_string().contains("sample 1"), "{err}");
    }

    #[test]
    fn one_sample_per_item_uses_wilson() {
        let truth: HashMap<String, String> = (0..10)
            .map(|i| (format!("g{i}"), "nodes 2\nedges 0-1".to_string()))
            .collect();
        let rows: Vec<RolloutRow> = (0..10)
            .map(|i| {
                let p = if i < 8 {
                    "nodes 2\nedges 0-1"
                } else {
                    "nodes 2\nedges"
                };
                row(&format!("g{i}"), 0, Some(p), Some("answer 0:1 1:2"))
            })
            .collect();
        let sum = summarize(&score_rollouts(&truth, &rows, None).unwrap());
        let a_p = sum.iter().find(|r| r.metric == "a_p").unwrap();
        assert_eq!(a_p.interval, WILSON);
        assert_eq!((a_p.ci_low, a_p.ci_high), wilson(8, 10));
    }
}
