//! report: the paper's tables, figures and findings from an experiment grid's artifacts, as one
//! artifact holding the tables (tidy Parquet: one row per cell, with the artifact each number
//! came from), `report.html` (self-contained), `report.md` and the figures as PNG.
//!
//! Inputs are lists (each entry a stage, a swept stage standing for all its instances):
//! `evals` (evaluations by the `evaluate` stage: SFT variants, and for RL the starting
//! checkpoint, role `rl-start`, and each run's final policy, by the run's role), `eval_items`
//! (their per-item scores, the evaluations' `items` outputs, for paired comparisons),
//! `val_evals` (the same runs evaluated on the validation split, by which the best λ, the best
//! reweighted run and the best α are chosen; without them, on the test items), `sft_logs`
//! (training logs), `rl_evals` and `rl_logs` (RL runs, one of each per run, in the same order),
//! `pools` (reward correlations over a pool of rollouts) and `pool_differences` (their paired
//! comparisons, correlate's `differences` output). `roles` names what each stage is, by its
//! name without the sweep suffix: `start` (the checkpoint the SFT variants start from),
//! `standard`, `lambda`, `ngdiff`, `perception-init-lambda` (SFT), `rl-start`, `alpha`, `self`,
//! `teacher`, `token-lambda` (RL); λ and α come from the instance's sweep value
//! (`eval_lambda[lambda=0.2]`, `rl_tokens[token_lambda=0.1]`) or from the role (`lambda=0.2`).

use super::{
    Outputs, Stage, StageError, bail, ensure, many, output, outputs, read_many,
    write_table_with_files,
};
use crate::dag::SEED;
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::report::page::{base_name, params};
use crate::report::{
    Curve, CurvePoint, Estimate, HeldOut, ItemAccuracies, Replicate, Results, RlRole, SftResult,
    SftRole, Shares, Source, figures, findings, page, replicates, tables,
};
use crate::table::cols;
use crate::train::sft::LogRow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod inputs;
mod setup;

use inputs::{item_accuracies, pool_diff_rows, pool_rows, rl_run, summary_a, summary_accuracies};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    pub title: String,
    /// Stage name (without sweep suffix) → role.
    pub roles: BTreeMap<String, String>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            title: "Perception vs reasoning: experiment report".into(),
            roles: BTreeMap::new(),
        }
    }
}

pub struct Report;

const EVALS: InputSpec = many("evals", "eval_summary");
const EVAL_ITEMS: InputSpec = many("eval_items", "eval_items");
const SFT_LOGS: InputSpec = many("sft_logs", "train_log");
const RL_EVALS: InputSpec = many("rl_evals", "rl_eval");
const RL_LOGS: InputSpec = many("rl_logs", "rl_log");
const POOLS: InputSpec = many("pools", "correlations");
const POOL_DIFFS: InputSpec = many("pool_differences", "correlation_differences");
const VAL_EVALS: InputSpec = many("val_evals", "eval_summary");
const MAIN: OutputSpec = output("main", "report");

/// A role and its parameter (λ or α), from the config and the instance's sweep values.
fn role_of(cfg: &ReportConfig, instance: &str) -> Result<(String, Option<f64>), StageError> {
    let base = base_name(instance);
    let base = base.split('.').next().unwrap_or(base);
    let Some(role) = cfg.roles.get(base) else {
        bail!(
            "report: no role for `{base}` (from `{instance}`); add it to `roles`, e.g. roles = \
             {{ {base} = \"standard\" }}"
        );
    };
    let (name, fixed) = match role.split_once('=') {
        Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
        None => (role.trim().to_string(), None),
    };
    let key = match name.as_str() {
        "lambda" | "perception-init-lambda" => Some("lambda"),
        "token-lambda" => Some("token_lambda"),
        "alpha" => Some("alpha"),
        _ => None,
    };
    let value = match key {
        Some(k) => {
            let swept = params(instance)
                .into_iter()
                .find(|(p, _)| p == k || p.ends_with(&format!(".{k}")))
                .map(|x| x.1);
            let Some(text) = swept.or(fixed) else {
                bail!(
                    "report: `{instance}` has role `{name}` but no {k} value (sweep it, or write \
                     the role as `{name}={k}-value`)"
                );
            };
            Some(text.parse::<f64>().map_err(|_| {
                StageError::Invalid(format!(
                    "report: `{instance}`: {k} `{text}` is not a number"
                ))
            })?)
        }
        None => None,
    };
    Ok((name, value))
}

fn sft_role(cfg: &ReportConfig, instance: &str) -> Result<SftRole, StageError> {
    let (name, v) = role_of(cfg, instance)?;
    Ok(match (name.as_str(), v) {
        ("start", _) => SftRole::Start,
        ("standard", _) => SftRole::Standard,
        ("ngdiff", _) => SftRole::Ngdiff,
        ("lambda", Some(l)) => SftRole::Lambda(l),
        ("perception-init-lambda", Some(l)) => SftRole::PerceptionInitLambda(l),
        _ => bail!(
            "report: `{instance}` has role `{name}`, not an SFT role (start, standard, lambda, \
             ngdiff, perception-init-lambda)"
        ),
    })
}

fn rl_role(cfg: &ReportConfig, instance: &str) -> Result<RlRole, StageError> {
    let (name, v) = role_of(cfg, instance)?;
    rl_role_of(&name, v, instance)
}

fn rl_role_of(name: &str, v: Option<f64>, instance: &str) -> Result<RlRole, StageError> {
    Ok(match (name, v) {
        ("alpha", Some(a)) => RlRole::Alpha(a),
        ("self" | "teacher", _) => RlRole::Surrogate(name.to_string()),
        ("token-lambda", Some(l)) => RlRole::TokenLambda(l),
        _ => bail!(
            "report: `{instance}` has role `{name}`, not an RL role (alpha, self, teacher, \
             token-lambda)"
        ),
    })
}

/// What an evaluation in `evals` is: an SFT variant, the RL runs' starting checkpoint
/// (`rl-start`), or an RL run's final policy (its RL role).
enum EvalRole {
    Sft(SftRole),
    RlStart,
    Rl(RlRole),
}

fn eval_role(cfg: &ReportConfig, instance: &str) -> Result<EvalRole, StageError> {
    let (name, v) = role_of(cfg, instance)?;
    Ok(match name.as_str() {
        "rl-start" => EvalRole::RlStart,
        "alpha" | "self" | "teacher" | "token-lambda" => {
            EvalRole::Rl(rl_role_of(&name, v, instance)?)
        }
        _ => EvalRole::Sft(sft_role(cfg, instance)?),
    })
}

/// The run an instance label belongs to: its stage name without output suffix and its swept
/// values (`eval_lambda[lambda=0.2].items` and `eval_lambda[lambda=0.2]` are one run).
fn run_key(instance: &str) -> (String, Vec<(String, String)>) {
    let stage = base_name(instance).split('.').next().unwrap_or_default();
    (stage.to_string(), params(instance))
}

/// The mean of `v` in its order; `None` when empty.
fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn source(id: &str, instance: &str) -> Source {
    Source {
        id: id.to_string(),
        instance: instance.to_string(),
    }
}

/// The artifact ids of a list input, in the order `read_many` reads its tables.
fn input_ids(ctx: &RunCtx, spec: &InputSpec) -> Vec<String> {
    ctx.inputs_many(spec.name)
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect()
}

/// An instance label without its seed: `eval[lambda=0.2,seed=3]` → `eval[lambda=0.2]`.
fn without_seed(instance: &str) -> String {
    let (stage, params) = run_key(instance);
    let kept: Vec<String> = params
        .into_iter()
        .filter(|(k, _)| k != SEED)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if kept.is_empty() {
        stage
    } else {
        format!("{stage}[{}]", kept.join(","))
    }
}

/// One evaluation in `evals`: its instance, numbers and the data it read (lineage `data`).
type Seeded = (String, HeldOut, Option<String>);

/// One run's evaluations over seeds (`instance[seed=k]`), merged ([`replicates::merge`]):
/// each needs its seed and its per-item scores, and all must read the same data (item ids
/// are positions in a split, so replicates of a data stage would pair different puzzles).
fn merge_seeds(run: &str, evals: Vec<Seeded>) -> Result<HeldOut, StageError> {
    if let Some((a, b)) = evals
        .iter()
        .zip(evals.iter().skip(1))
        .find(|(a, b)| a.2 != b.2)
    {
        bail!(
            "report: the seeds of `{run}` evaluate different data (`{}` and `{}`): replicate \
             the training and evaluation over seeds, not the puzzles",
            a.0,
            b.0
        );
    }
    let mut reps = Vec::new();
    for (instance, held, _) in evals {
        let Some(seed) = params(&instance)
            .into_iter()
            .find(|(k, _)| k == SEED)
            .and_then(|(_, v)| v.parse::<u64>().ok())
        else {
            bail!(
                "report: `{run}` has several evaluations in `evals` (`{instance}` among them) \
                 that are not replicates over a swept `seed`; give each run one evaluation"
            );
        };
        let Some(items) = held.items else {
            bail!(
                "report: `{instance}` is one seed of `{run}` and has no per-item scores; wire \
                 each replicate's `items` in `eval_items` so the seeds can be merged per item"
            );
        };
        reps.push(Replicate {
            seed,
            acc: held.acc,
            items,
            source: held.source,
        });
    }
    replicates::merge(run, reps).map_err(|e| StageError::Invalid(e.to_string()))
}

/// An RL run's final evaluation from `evals`, waiting for its run: (instance, role, numbers).
type PendingRl = (String, RlRole, HeldOut);

/// `evals` with their per-item scores: SFT variants and the RL start into `r`; the RL runs'
/// final evaluations returned, to attach once the runs are read.
fn read_evals(
    cfg: &ReportConfig,
    ctx: &RunCtx,
    r: &mut Results,
) -> Result<Vec<PendingRl>, StageError> {
    let mut items: Vec<(String, ItemAccuracies)> = Vec::new();
    for (instance, t) in read_many(ctx, &EVAL_ITEMS)? {
        items.push((instance.clone(), item_accuracies(&t)?));
    }
    let evals = read_many(ctx, &EVALS)?;
    for (instance, _) in &items {
        ensure!(
            evals.iter().any(|(e, _)| run_key(e) == run_key(instance)),
            "report: per-item scores `{instance}` belong to no evaluation in `evals` (wire each \
             evaluation's `items` beside its summary)"
        );
    }
    // Evaluations of one run that differ only by seed are its replicates, merged into one.
    let mut runs: Vec<(String, Vec<Seeded>)> = Vec::new();
    for ((instance, t), id) in evals.iter().zip(input_ids(ctx, &EVALS)) {
        let held = HeldOut {
            acc: summary_accuracies(t, instance)?,
            source: source(&id, instance),
            items: items
                .iter()
                .find(|(i, _)| run_key(i) == run_key(instance))
                .map(|(_, x)| x.clone()),
            replicates: Vec::new(),
        };
        let data = ctx.store.manifest(&id)?.lineage.get("data").cloned();
        let run = without_seed(instance);
        let entry = (instance.clone(), held, data);
        match runs.iter_mut().find(|(k, _)| *k == run) {
            Some((_, v)) => v.push(entry),
            None => runs.push((run, vec![entry])),
        }
    }
    let mut rl_held = Vec::new();
    for (run, mut evals) in runs {
        let (instance, held) = if evals.len() == 1 {
            let (instance, held, _) = evals.remove(0);
            (instance, held)
        } else {
            let first = evals[0].0.clone();
            (first, merge_seeds(&run, evals)?)
        };
        let instance = &instance;
        match eval_role(cfg, instance)? {
            EvalRole::Sft(role) => r.sft.push(SftResult {
                role,
                acc: held.acc,
                source: held.source,
                items: held.items,
                replicates: held.replicates,
            }),
            EvalRole::RlStart => {
                ensure!(
                    r.rl_start.is_none(),
                    "report: two evaluations have role `rl-start` (`{instance}` is the second)"
                );
                r.rl_start = Some(held);
            }
            EvalRole::Rl(role) => rl_held.push((instance.clone(), role, held)),
        }
    }
    Ok(rl_held)
}

/// `sft_logs`: each run's held-out curve, and the standard run's perception shares.
fn read_sft_logs(cfg: &ReportConfig, ctx: &RunCtx, r: &mut Results) -> Result<(), StageError> {
    for ((instance, t), id) in read_many(ctx, &SFT_LOGS)?
        .iter()
        .zip(input_ids(ctx, &SFT_LOGS))
    {
        let role = sft_role(cfg, instance)?;
        let source = source(&id, instance);
        let log = LogRow::read_all(t)?;
        let points = log
            .iter()
            .filter_map(|row| {
                row.eval.map(|e| CurvePoint {
                    step: row.step as i64,
                    a: e.a,
                    a_p: e.a_p,
                    a_r: e.a_r,
                })
            })
            .collect();
        let seed = params(instance).into_iter().find(|(k, _)| k == SEED);
        r.sft_curves.push(Curve {
            label: match seed {
                Some((_, s)) => format!("{} (seed {s})", role.label()),
                None => role.label(),
            },
            source: source.clone(),
            points,
        });
        if role == SftRole::Standard {
            r.shares.push(Shares {
                tokens: mean(log.iter().map(|x| x.perception_token_share)).unwrap_or(f64::NAN),
                loss: mean(log.iter().map(|x| x.perception_loss_share)).unwrap_or(f64::NAN),
                grad: mean(log.iter().filter_map(|x| x.perception_grad_share)),
                source,
            });
        }
    }
    Ok(())
}

/// `rl_evals` and `rl_logs`, one of each per run in the same order. Returns the roles of the
/// runs replicated over seeds.
fn read_rl_runs(
    cfg: &ReportConfig,
    ctx: &RunCtx,
    r: &mut Results,
) -> Result<Vec<RlRole>, StageError> {
    let mut replicated = Vec::new();
    let (rl_evals, rl_logs) = (read_many(ctx, &RL_EVALS)?, read_many(ctx, &RL_LOGS)?);
    ensure!(
        rl_evals.len() == rl_logs.len(),
        "report: {} RL evaluation tables but {} logs: give one of each per run, in the same order",
        rl_evals.len(),
        rl_logs.len()
    );
    let (eval_ids, log_ids) = (input_ids(ctx, &RL_EVALS), input_ids(ctx, &RL_LOGS));
    // A run replicated over seeds is one run: its evaluations in `evals` are merged over the
    // seeds; its loop's curve and on-policy coupling are its first seed's.
    let mut seen: Vec<String> = Vec::new();
    for (k, ((ei, et), (li, lt))) in rl_evals.iter().zip(&rl_logs).enumerate() {
        let run = without_seed(ei);
        if seen.contains(&run) {
            replicated.push(rl_role(cfg, ei)?);
            continue;
        }
        seen.push(run);
        ensure!(
            base_name(ei).split('.').next() == base_name(li).split('.').next()
                && params(ei) == params(li),
            "report: RL evaluation `{ei}` is paired with log `{li}` of another run (list them in \
             the same order)"
        );
        r.rl.push(rl_run(
            rl_role(cfg, ei)?,
            source(&eval_ids[k], ei),
            source(&log_ids[k], li),
            et,
            lt,
        )?);
    }
    Ok(replicated)
}

/// Attaches each RL run's final evaluation from `evals` to its run. Comparisons between RL
/// runs must read one kind of evaluation: the evaluate stage's for every run and the start, or
/// the loops' own for all.
fn attach_rl_evals(r: &mut Results, rl_held: Vec<PendingRl>) -> Result<(), StageError> {
    for (instance, role, held) in rl_held {
        let Some(run) = r.rl.iter_mut().find(|x| x.role == role) else {
            bail!(
                "report: evaluation `{instance}` has the RL role `{}`, but no run in `rl_evals` \
                 has it",
                role.label()
            );
        };
        ensure!(
            run.held_out.is_none(),
            "report: two evaluations of the RL run `{}` (`{instance}` is the second)",
            run.source.instance
        );
        run.held_out = Some(held);
    }
    if r.rl.iter().any(|x| x.held_out.is_some()) {
        let missing: Vec<&str> =
            r.rl.iter()
                .filter(|x| x.held_out.is_none())
                .map(|x| x.source.instance.as_str())
                .collect();
        ensure!(
            missing.is_empty() && r.rl_start.is_some(),
            "report: some RL runs have an evaluation in `evals` but not {}; wire one for every \
             RL run and one with role `rl-start`, or none",
            if missing.is_empty() {
                "the RL start (role `rl-start`)".to_string()
            } else {
                missing.join(", ")
            }
        );
    }
    Ok(())
}

/// `val_evals`: end-to-end a on the validation split, by role.
fn read_validation(cfg: &ReportConfig, ctx: &RunCtx, r: &mut Results) -> Result<(), StageError> {
    // A run replicated over seeds is chosen by its mean a over the seeds (the interval spans
    // the seeds' intervals; only the mean chooses).
    let mut runs: Vec<(String, String, Vec<Estimate>, String)> = Vec::new();
    for ((instance, t), id) in read_many(ctx, &VAL_EVALS)?
        .iter()
        .zip(input_ids(ctx, &VAL_EVALS))
    {
        let a = summary_a(t, instance)?;
        let run = without_seed(instance);
        match runs.iter_mut().find(|x| x.0 == run) {
            Some(x) => x.2.push(a),
            None => runs.push((run, instance.clone(), vec![a], id.clone())),
        }
    }
    for (_, instance, estimates, id) in runs {
        let n = estimates.len() as f64;
        let a = Estimate {
            mean: estimates.iter().map(|e| e.mean).sum::<f64>() / n,
            lo: estimates.iter().map(|e| e.lo).fold(f64::INFINITY, f64::min),
            hi: estimates
                .iter()
                .map(|e| e.hi)
                .fold(f64::NEG_INFINITY, f64::max),
        };
        let instance = &instance;
        match eval_role(cfg, instance)? {
            EvalRole::Sft(role) => r.val_sft.push((role, a, source(&id, instance))),
            EvalRole::Rl(role) => r.val_rl.push((role, a, source(&id, instance))),
            EvalRole::RlStart => bail!(
                "report: validation evaluation `{instance}` has role `rl-start`; `val_evals` \
                 choose among the λ, NGDiff and α runs"
            ),
        }
    }
    Ok(())
}

/// Everything the report reads, from the stage's inputs.
fn gather(cfg: &ReportConfig, ctx: &RunCtx) -> Result<Results, StageError> {
    let mut r = Results {
        title: cfg.title.clone(),
        ..Results::default()
    };
    let rl_held = read_evals(cfg, ctx, &mut r)?;
    read_sft_logs(cfg, ctx, &mut r)?;
    let replicated = read_rl_runs(cfg, ctx, &mut r)?;
    read_validation(cfg, ctx, &mut r)?;
    attach_rl_evals(&mut r, rl_held)?;
    // A replicated RL run is compared through its seeds' evaluations, merged: without them only
    // its first seed's loop would be read.
    for role in replicated {
        if let Some(run) = r.rl.iter().find(|x| x.role == role && x.held_out.is_none()) {
            bail!(
                "report: the RL run `{}` is replicated over seeds but has no evaluation in \
                 `evals`; evaluate each seed's final policy with the `evaluate` stage (with its \
                 `items`) so the seeds are merged",
                run.source.instance
            );
        }
    }
    r.setup = setup::read_setup(ctx)?;
    for ((instance, t), id) in read_many(ctx, &POOLS)?.iter().zip(input_ids(ctx, &POOLS)) {
        r.pool.extend(pool_rows(t, &source(&id, instance))?);
    }
    for ((instance, t), id) in read_many(ctx, &POOL_DIFFS)?
        .iter()
        .zip(input_ids(ctx, &POOL_DIFFS))
    {
        r.pool_diffs
            .extend(pool_diff_rows(t, &source(&id, instance))?);
    }
    Ok(r)
}

impl Stage for Report {
    const NAME: &'static str = "report";
    const VERSION: u32 = 16;
    type Config = ReportConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![
            EVALS, EVAL_ITEMS, SFT_LOGS, RL_EVALS, RL_LOGS, POOLS, POOL_DIFFS, VAL_EVALS,
        ]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }

    fn run(cfg: &ReportConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let r = gather(cfg, ctx)?;
        let tables = tables(&r);
        ensure!(
            !tables.is_empty(),
            "report: nothing to report; wire `evals`, `rl_evals` or `pools`"
        );
        let figs = figures::figures(&r).map_err(|e| StageError::Invalid(e.to_string()))?;
        let found = findings(&r);
        let html = page::html(&r, &tables, &figs, &found);
        let md = page::markdown(&r, &tables, &figs, &found);
        let cells: Vec<&crate::report::Cell> = tables.iter().flat_map(|t| &t.cells).collect();
        let s = |f: &dyn Fn(&crate::report::Cell) -> String| {
            cols::utf8(&cells.iter().map(|c| f(c)).collect::<Vec<_>>())
        };
        let o = |f: &dyn Fn(&crate::report::Cell) -> Option<f64>| {
            cols::f64_opt(cells.iter().map(|c| f(c)).collect())
        };
        let mut files: Vec<(&str, &[u8])> = vec![
            ("report.html", html.as_bytes()),
            ("report.md", md.as_bytes()),
        ];
        for f in &figs {
            files.push((&f.file, &f.png));
        }
        let written = write_table_with_files(
            ctx,
            &MAIN,
            vec![
                ("table", s(&|c| c.table.clone())),
                ("row", s(&|c| c.row.clone())),
                ("column", s(&|c| c.column.clone())),
                ("value", o(&|c| c.value)),
                ("ci_low", o(&|c| c.lo)),
                ("ci_high", o(&|c| c.hi)),
                ("source", s(&|c| c.source.id.clone())),
                ("source_instance", s(&|c| c.source.instance.clone())),
            ],
            &files,
        )?;
        Ok(outputs([written]))
    }
}
