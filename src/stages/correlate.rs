//! correlate: how each reward couples to perception and to reasoning over a pool of rollouts —
//! Pearson r between every reward column of a `rewards` artifact (the outcome, the
//! ground-truth perception reward, the self-rewards with N = 1 and N, the teacher reward, the
//! CLIP reward, the final reward) and a_p and ã_r, with a 95 % bootstrap interval that resamples items (the
//! samples of one item are not independent). The paper's Figure 8 and Table 3.
//!
//! Across RL runs (`logs = ["rl_a0.log", …]`, `evals = ["rl_a0.eval", …]`, one per run, in the
//! same order): each run's reward–a_p and reward–ã_r correlation over all its rollouts (the
//! log's running r at its last step) against its held-out gains Δa_p, Δa_r, Δa (last evaluation
//! minus the starting policy's), with the least-squares line of Δa_p on r(R, a_p) — the paper's
//! Figure 11. A list entry naming a swept stage (a swept `grpo` loop) stands for all its
//! instances; each run is labelled by the instance that wrote its log.

use super::artifacts::read_rewards;
use super::{
    Outputs, Stage, StageError, Written, bail, ensure, many, optional, output, outputs, read_many,
    read_optional, write_table,
};
use crate::analysis::{BootstrapR, fit_line, pearson_cluster_bootstrap};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::rl::reward::RewardRow;
use crate::table::Table;
use crate::table::cols;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelateConfig {
    /// Bootstrap replicates.
    pub reps: usize,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        CorrelateConfig { reps: 2000 }
    }
}

pub struct Correlate;

const REWARDS: InputSpec = optional("rewards", "rewards");
const LOGS: InputSpec = many("logs", "rl_log");
const EVALS: InputSpec = many("evals", "rl_eval");
const MAIN: OutputSpec = output("main", "correlations");
const RUNS: OutputSpec = output("runs", "run_correlations");

/// One row of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationRow {
    pub reward: String,
    pub against: &'static str,
    pub n: usize,
    pub items: usize,
    pub mean_reward: f64,
    pub stats: BootstrapR,
}

type Getter = Box<dyn Fn(&RewardRow) -> Option<f64>>;

/// A correctness target: its name and its value on a row.
type Target = (&'static str, fn(&RewardRow) -> f64);

fn bit(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// The reward columns present in `rows` (a surrogate only where it was computed).
fn reward_columns(rows: &[RewardRow]) -> Vec<(String, Getter)> {
    let mut out: Vec<(String, Getter)> = vec![
        ("outcome".into(), Box::new(|r: &RewardRow| Some(bit(r.a)))),
        (
            "ground_truth".into(),
            Box::new(|r: &RewardRow| Some(bit(r.a_p))),
        ),
    ];
    if rows.iter().any(|r| r.self_first.is_some()) {
        out.push(("self_1".into(), Box::new(|r: &RewardRow| r.self_first)));
        let n = rows.iter().map(|r| r.self_n).max().unwrap_or(0);
        if n > 1 {
            out.push((format!("self_{n}"), Box::new(|r: &RewardRow| r.self_mean)));
        }
    }
    if rows.iter().any(|r| r.teacher.is_some()) {
        out.push(("teacher".into(), Box::new(|r: &RewardRow| r.teacher)));
    }
    if rows.iter().any(|r| r.clip.is_some()) {
        out.push(("clip".into(), Box::new(|r: &RewardRow| r.clip)));
    }
    out.push(("reward".into(), Box::new(|r: &RewardRow| Some(r.reward))));
    out
}

/// Every reward column against a_p and ã_r.
pub fn correlate(rows: &[RewardRow], reps: usize, seed: u64) -> Vec<CorrelationRow> {
    let mut out = Vec::new();
    let targets: [Target; 2] = [("a_p", |r| bit(r.a_p)), ("a_tilde_r", |r| bit(r.a_tilde_r))];
    for (name, get) in reward_columns(rows) {
        for (against, target) in targets {
            let mut clusters: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
            let mut sum = 0.0;
            let mut n = 0;
            for r in rows {
                if let Some(v) = get(r) {
                    clusters
                        .entry(r.id.as_str())
                        .or_default()
                        .push((v, target(r)));
                    sum += v;
                    n += 1;
                }
            }
            let items = clusters.len();
            let clusters: Vec<Vec<(f64, f64)>> = clusters.into_values().collect();
            let key = blake3::hash(format!("{name}/{against}").as_bytes());
            let sub = u64::from_le_bytes(key.as_bytes()[..8].try_into().unwrap_or([0; 8]));
            out.push(CorrelationRow {
                reward: name.clone(),
                against,
                n,
                items,
                mean_reward: sum / n.max(1) as f64,
                stats: pearson_cluster_bootstrap(&clusters, reps, seed ^ sub),
            });
        }
    }
    out
}

impl Stage for Correlate {
    const NAME: &'static str = "correlate";
    const VERSION: u32 = 4;
    type Config = CorrelateConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![REWARDS, LOGS, EVALS]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN, RUNS]
    }

    fn run(cfg: &CorrelateConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let rewards = read_optional(ctx, &REWARDS)?;
        let (logs, evals) = (read_many(ctx, &LOGS)?, read_many(ctx, &EVALS)?);
        ensure!(
            rewards.is_some() || !logs.is_empty(),
            "nothing to correlate: wire `rewards` (a pool of rollouts) or `logs` and `evals` \
             (RL runs)"
        );
        ensure!(
            logs.len() == evals.len(),
            "{} logs but {} evaluation tables: give one of each per run, in the same order",
            logs.len(),
            evals.len()
        );
        let table = match rewards {
            Some(t) => correlate(&read_rewards(&t)?, cfg.reps, ctx.seed),
            None => Vec::new(),
        };
        let mut runs = Vec::with_capacity(logs.len());
        for ((source, log), (_, eval)) in logs.iter().zip(&evals) {
            runs.push(run_row(source.clone(), log, eval)?);
        }
        Ok(outputs([write(ctx, &table)?, write_runs(ctx, &runs)?]))
    }
}

/// One RL run: its coupling and its held-out gains.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run: String,
    pub rollouts: i64,
    pub r_a_p: Option<f64>,
    pub r_a_tilde_r: Option<f64>,
    /// (start, end) of held-out a_p, a_r, a.
    pub a_p: (f64, f64),
    pub a_r: (f64, f64),
    pub a: (f64, f64),
}

fn run_row(run: String, log: &Table, eval: &Table) -> Result<RunRow, StageError> {
    use arrow::array::Array;
    ensure!(log.rows() > 0, "run `{run}`: its log is empty");
    let last = log.rows() - 1;
    let opt = |c: &str| -> Result<Option<f64>, StageError> {
        let a = log.f64(c)?;
        Ok((!a.is_null(last)).then(|| a.value(last)))
    };
    let steps = eval.i32("step")?;
    let Some(start) = (0..eval.rows()).find(|&i| steps.value(i) == -1) else {
        bail!(
            "run `{run}`: its evaluations do not include the starting policy (give the loop an \
             `eval` table)"
        );
    };
    let end = eval.rows() - 1;
    ensure!(end != start, "run `{run}`: no evaluation after a step");
    let pair = |c: &str| -> Result<(f64, f64), StageError> {
        let a = eval.f64(c)?;
        Ok((a.value(start), a.value(end)))
    };
    Ok(RunRow {
        rollouts: log.i64("running_rollouts")?.value(last),
        r_a_p: opt("running_r_reward_a_p")?,
        r_a_tilde_r: opt("running_r_reward_a_tilde_r")?,
        a_p: pair("a_p")?,
        a_r: pair("a_r")?,
        a: pair("a")?,
        run,
    })
}

fn write_runs(ctx: &RunCtx, runs: &[RunRow]) -> Result<Written, StageError> {
    let delta = |f: &dyn Fn(&RunRow) -> (f64, f64)| {
        cols::f64(
            runs.iter()
                .map(|r| {
                    let (s, e) = f(r);
                    e - s
                })
                .collect(),
        )
    };
    let points: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| r.r_a_p.map(|x| (x, r.a_p.1 - r.a_p.0)))
        .collect();
    let fit = fit_line(&points);
    let n = runs.len();
    let rep = |v: Option<f64>| cols::f64_opt(vec![v; n]);
    write_table(
        ctx,
        &RUNS,
        vec![
            (
                "run",
                cols::utf8(&runs.iter().map(|r| &r.run).collect::<Vec<_>>()),
            ),
            (
                "rollouts",
                cols::i64(runs.iter().map(|r| r.rollouts).collect()),
            ),
            (
                "r_reward_a_p",
                cols::f64_opt(runs.iter().map(|r| r.r_a_p).collect()),
            ),
            (
                "r_reward_a_tilde_r",
                cols::f64_opt(runs.iter().map(|r| r.r_a_tilde_r).collect()),
            ),
            (
                "a_p_start",
                cols::f64(runs.iter().map(|r| r.a_p.0).collect()),
            ),
            ("a_p_end", cols::f64(runs.iter().map(|r| r.a_p.1).collect())),
            ("delta_a_p", delta(&|r| r.a_p)),
            ("delta_a_r", delta(&|r| r.a_r)),
            ("delta_a", delta(&|r| r.a)),
            ("fit_slope", rep(fit.map(|f| f.0))),
            ("fit_intercept", rep(fit.map(|f| f.1))),
            ("fit_r", rep(fit.and_then(|f| f.2))),
        ],
    )
}

fn write(ctx: &RunCtx, rows: &[CorrelationRow]) -> Result<Written, StageError> {
    let opt = |f: &dyn Fn(&BootstrapR) -> Option<f64>| {
        cols::f64_opt(rows.iter().map(|r| f(&r.stats)).collect())
    };
    write_table(
        ctx,
        &MAIN,
        vec![
            (
                "reward",
                cols::utf8(&rows.iter().map(|r| &r.reward).collect::<Vec<_>>()),
            ),
            (
                "against",
                cols::utf8(&rows.iter().map(|r| r.against).collect::<Vec<_>>()),
            ),
            ("n", cols::i64(rows.iter().map(|r| r.n as i64).collect())),
            (
                "items",
                cols::i64(rows.iter().map(|r| r.items as i64).collect()),
            ),
            (
                "mean_reward",
                cols::f64(rows.iter().map(|r| r.mean_reward).collect()),
            ),
            ("r", opt(&|b| b.r)),
            ("ci_low", opt(&|b| b.ci.map(|c| c.0))),
            ("ci_high", opt(&|b| b.ci.map(|c| c.1))),
            (
                "reps",
                cols::i64(rows.iter().map(|r| r.stats.reps as i64).collect()),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, a: bool, a_p: bool, a_tr: bool, teacher: Option<f64>) -> RewardRow {
        RewardRow {
            id: id.into(),
            sample: 0,
            task: "graph_coloring".into(),
            a,
            a_p,
            a_tilde_r: a_tr,
            self_first: None,
            self_mean: None,
            self_n: 0,
            teacher,
            clip: None,
            reward: f64::from(u8::from(a)),
        }
    }

    #[test]
    fn every_reward_against_perception_and_reasoning() {
        // a = a_p ∧ ã_r on every row; the teacher agrees with a_p.
        let mut rows = Vec::new();
        for i in 0..40 {
            let (p, r) = (i % 2 == 0, i % 3 != 0);
            rows.push(row(&format!("g{}", i / 2), p && r, p, r, Some(bit(p))));
        }
        let t = correlate(&rows, 200, 1);
        let names: Vec<(&str, &str)> = t.iter().map(|r| (r.reward.as_str(), r.against)).collect();
        assert_eq!(
            names,
            [
                ("outcome", "a_p"),
                ("outcome", "a_tilde_r"),
                ("ground_truth", "a_p"),
                ("ground_truth", "a_tilde_r"),
                ("teacher", "a_p"),
                ("teacher", "a_tilde_r"),
                ("reward", "a_p"),
                ("reward", "a_tilde_r"),
            ]
        );
        let get = |n: &str, a: &str| {
            t.iter()
                .find(|r| r.reward == n && r.against == a)
                .and_then(|r| r.stats.r)
                .unwrap()
        };
        assert!((get("ground_truth", "a_p") - 1.0).abs() < 1e-12);
        assert!((get("teacher", "a_p") - 1.0).abs() < 1e-12);
        let (x, y): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (bit(r.a), bit(r.a_p))).unzip();
        assert_eq!(
            get("outcome", "a_p"),
            crate::analysis::pearson(&x, &y).unwrap()
        );
        assert!(t.iter().all(|r| r.n == 40 && r.items == 20));
        for r in &t {
            let (lo, hi) = r.stats.ci.unwrap();
            assert!(
                lo <= r.stats.r.unwrap() + 1e-9 && r.stats.r.unwrap() <= hi + 1e-9,
                "{r:?}"
            );
        }
    }
}
