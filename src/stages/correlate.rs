//! correlate: how each reward couples to perception and to reasoning over a pool of rollouts —
//! Pearson r between every reward column of a `rewards` artifact (the outcome, the
//! ground-truth perception reward, the self-rewards with N = 1 and N, the teacher reward, the
//! CLIP reward, the final reward) and a_p and ã_r, with a 95 % bootstrap interval that resamples items (the
//! samples of one item are not independent). The paper's Figure 8 and Table 3.
//!
//! `mixtures = [{ alpha = 0.2, perception = "ground_truth" }, …]` adds RL runs' rewards
//! composed from the pool's columns (α·perception + (1 − α)·outcome, named
//! `alpha=0.2:ground_truth`): over a pool of the starting policy, each run's coupling to
//! perception measured before it trains, which the report sets against the run's Δa_p.
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
use crate::analysis::{BootstrapR, fit_line};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::rl::coupling::{CorrelationRow, DifferenceRow, Mixture, correlate, differences};
use crate::table::Table;
use crate::table::cols;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelateConfig {
    /// Bootstrap replicates.
    pub reps: usize,
    /// RL runs' rewards composed from the pool's columns (`{ alpha = 0.2, perception =
    /// "ground_truth" }` → the column `alpha=0.2:ground_truth`): over a pool of the starting
    /// policy, each run's coupling r(R, a_p) measured before it trains.
    pub mixtures: Vec<Mixture>,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        CorrelateConfig {
            reps: 2000,
            mixtures: Vec::new(),
        }
    }
}

pub struct Correlate;

const REWARDS: InputSpec = optional("rewards", "rewards");
const LOGS: InputSpec = many("logs", "rl_log");
const EVALS: InputSpec = many("evals", "rl_eval");
const MAIN: OutputSpec = output("main", "correlations");
const RUNS: OutputSpec = output("runs", "run_correlations");
const DIFFERENCES: OutputSpec = output("differences", "correlation_differences");

impl Stage for Correlate {
    const NAME: &'static str = "correlate";
    const VERSION: u32 = 6;
    type Config = CorrelateConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![REWARDS, LOGS, EVALS]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN, RUNS, DIFFERENCES]
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
        let (table, diffs) = match rewards {
            Some(t) => {
                let rows = read_rewards(&t)?;
                (
                    correlate(&rows, &cfg.mixtures, cfg.reps, ctx.seed)
                        .map_err(|e| StageError::Invalid(format!("correlate: {e}")))?,
                    differences(&rows, cfg.reps, ctx.seed),
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut runs = Vec::with_capacity(logs.len());
        for ((source, log), (_, eval)) in logs.iter().zip(&evals) {
            runs.push(run_row(source.clone(), log, eval)?);
        }
        Ok(outputs([
            write(ctx, &table)?,
            write_runs(ctx, &runs)?,
            write_differences(ctx, &diffs)?,
        ]))
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
            (
                "own_a_p",
                cols::f64_opt(rows.iter().map(|r| r.own_a_p).collect()),
            ),
            (
                "unread",
                cols::f64_opt(rows.iter().map(|r| r.unread).collect()),
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

fn write_differences(ctx: &RunCtx, rows: &[DifferenceRow]) -> Result<Written, StageError> {
    let text =
        |f: &dyn Fn(&DifferenceRow) -> &str| cols::utf8(&rows.iter().map(f).collect::<Vec<_>>());
    write_table(
        ctx,
        &DIFFERENCES,
        vec![
            ("first_reward", text(&|r| &r.first.reward)),
            ("first_against", text(&|r| r.first.against)),
            ("second_reward", text(&|r| &r.second.reward)),
            ("second_against", text(&|r| r.second.against)),
            ("n", cols::i64(rows.iter().map(|r| r.n as i64).collect())),
            (
                "items",
                cols::i64(rows.iter().map(|r| r.items as i64).collect()),
            ),
            (
                "diff",
                cols::f64_opt(rows.iter().map(|r| r.stats.diff).collect()),
            ),
            (
                "ci_low",
                cols::f64_opt(rows.iter().map(|r| r.stats.ci.map(|c| c.0)).collect()),
            ),
            (
                "ci_high",
                cols::f64_opt(rows.iter().map(|r| r.stats.ci.map(|c| c.1)).collect()),
            ),
            (
                "reps",
                cols::i64(rows.iter().map(|r| r.stats.reps as i64).collect()),
            ),
        ],
    )
}
