//! Reading the report's input tables: evaluation summaries and per-item scores, the RL loops'
//! evaluations and logs, the pools' correlations and their paired differences.

use crate::analysis::paired::item_means;
use crate::report::{
    Accuracies, CurvePoint, Estimate, ItemAccuracies, PoolDiff, PoolR, RlResult, RlRole, Source,
};
use crate::stages::{StageError, bail, ensure};
use crate::table::Table;
use arrow::array::Array;

/// End-to-end a of an evaluation summary (one task): all a validation evaluation needs, so it
/// may skip the counterfactual rollout.
pub(super) fn summary_a(t: &Table, instance: &str) -> Result<Estimate, StageError> {
    let metrics = t.required_strings("metric")?;
    let Some(i) = metrics.iter().position(|x| x == "a") else {
        bail!("report: `{instance}` has no `a` row");
    };
    let tasks = t.required_strings("task")?;
    ensure!(
        tasks.iter().all(|x| *x == tasks[i]),
        "report: `{instance}` evaluates several tasks; the report covers one task per grid"
    );
    Ok(Estimate {
        mean: t.f64("mean")?.value(i),
        lo: t.f64("ci_low")?.value(i),
        hi: t.f64("ci_high")?.value(i),
    })
}

/// a, a_p and a_r of an evaluation summary (one task).
pub(super) fn summary_accuracies(t: &Table, instance: &str) -> Result<Accuracies, StageError> {
    let (tasks, metrics) = (t.required_strings("task")?, t.required_strings("metric")?);
    let (n, mean, lo, hi) = (
        t.i64("n")?,
        t.f64("mean")?,
        t.f64("ci_low")?,
        t.f64("ci_high")?,
    );
    let first = tasks.first().cloned().unwrap_or_default();
    ensure!(
        tasks.iter().all(|x| *x == first),
        "report: `{instance}` evaluates several tasks; the report covers one task per grid"
    );
    let get = |m: &str| -> Result<(Estimate, i64), StageError> {
        let Some(i) = metrics.iter().position(|x| x == m) else {
            bail!(
                "report: `{instance}` has no `{m}` row (was it evaluated with a counterfactual rollout?)"
            );
        };
        Ok((
            Estimate {
                mean: mean.value(i),
                lo: lo.value(i),
                hi: hi.value(i),
            },
            n.value(i),
        ))
    };
    let (a, items) = get("a")?;
    Ok(Accuracies {
        a,
        a_p: get("a_p")?.0,
        a_r: get("a_r")?.0,
        items: items as u64,
    })
}

/// Per-item a, a_p and a_r of an `eval_items` table (an item's samples averaged; a_r over
/// the samples with a counterfactual rollout).
pub(super) fn item_accuracies(t: &Table) -> Result<ItemAccuracies, StageError> {
    let ids = t.required_strings("id")?;
    let (a, a_p, a_r) = (t.bool("a")?, t.bool("a_p")?, t.bool("a_r")?);
    let rows = |col: &arrow::array::BooleanArray| {
        item_means(
            ids.iter()
                .enumerate()
                .filter(|(i, _)| !col.is_null(*i))
                .map(|(i, id)| (id.as_str(), f64::from(u8::from(col.value(i))))),
        )
    };
    Ok(ItemAccuracies {
        a: rows(a),
        a_p: rows(a_p),
        a_r: rows(a_r),
    })
}

fn eval_row(t: &Table, i: usize) -> Result<(Accuracies, CurvePoint), StageError> {
    let f = |c: &str| -> Result<f64, StageError> { Ok(t.f64(c)?.value(i)) };
    let e = |c: &str| -> Result<Estimate, StageError> {
        Ok(Estimate {
            mean: f(c)?,
            lo: f(&format!("{c}_lo"))?,
            hi: f(&format!("{c}_hi"))?,
        })
    };
    let acc = Accuracies {
        a: e("a")?,
        a_p: e("a_p")?,
        a_r: e("a_r")?,
        items: t.i32("items")?.value(i) as u64,
    };
    let point = CurvePoint {
        step: t.i32("step")?.value(i) as i64,
        a: acc.a.mean,
        a_p: acc.a_p.mean,
        a_r: acc.a_r.mean,
    };
    Ok((acc, point))
}

pub(super) fn rl_run(
    role: RlRole,
    source: Source,
    log_source: Source,
    eval: &Table,
    log: &Table,
) -> Result<RlResult, StageError> {
    let steps = eval.i32("step")?;
    let Some(start) = (0..eval.rows()).find(|&i| steps.value(i) == -1) else {
        bail!(
            "report: `{}` has no evaluation of the starting policy (give the loop `eval`)",
            source.instance
        );
    };
    ensure!(
        eval.rows() > 1,
        "report: `{}` has no evaluation after a step",
        source.instance
    );
    let mut curve = Vec::new();
    for i in 0..eval.rows() {
        curve.push(eval_row(eval, i)?.1);
    }
    ensure!(
        log.rows() > 0,
        "report: `{}` is an empty log",
        log_source.instance
    );
    let last = log.rows() - 1;
    let opt = |c: &str| -> Result<Option<f64>, StageError> {
        let a = log.f64(c)?;
        Ok((!a.is_null(last)).then(|| a.value(last)))
    };
    Ok(RlResult {
        role,
        start: eval_row(eval, start)?.0,
        end: eval_row(eval, eval.rows() - 1)?.0,
        curve,
        r_a_p: opt("running_r_reward_a_p")?,
        r_a_tilde_r: opt("running_r_reward_a_tilde_r")?,
        rollouts: log.i64("running_rollouts")?.value(last),
        source,
        log: log_source,
        held_out: None,
    })
}

/// Row `i` of a nullable column.
fn value_at(a: &arrow::array::Float64Array, i: usize) -> Option<f64> {
    (!a.is_null(i)).then(|| a.value(i))
}

/// The rows of a `correlations` artifact.
pub(super) fn pool_rows(t: &Table, source: &Source) -> Result<Vec<PoolR>, StageError> {
    let (reward, against) = (
        t.required_strings("reward")?,
        t.required_strings("against")?,
    );
    let (rr, lo, hi, n) = (
        t.f64("r")?,
        t.f64("ci_low")?,
        t.f64("ci_high")?,
        t.i64("n")?,
    );
    let (mean, own, unread) = (t.f64("mean_reward")?, t.f64("own_a_p")?, t.f64("unread")?);
    Ok((0..t.rows())
        .map(|i| PoolR {
            mean: mean.value(i),
            own_a_p: value_at(own, i),
            unread: value_at(unread, i),
            source: source.clone(),
            reward: reward[i].clone(),
            against: against[i].clone(),
            r: value_at(rr, i),
            lo: value_at(lo, i),
            hi: value_at(hi, i),
            n: n.value(i),
        })
        .collect())
}

/// The rows of a `correlation_differences` artifact.
pub(super) fn pool_diff_rows(t: &Table, source: &Source) -> Result<Vec<PoolDiff>, StageError> {
    let text = |c: &str| t.required_strings(c);
    let (fr, fa, sr, sa) = (
        text("first_reward")?,
        text("first_against")?,
        text("second_reward")?,
        text("second_against")?,
    );
    let (d, lo, hi, n) = (
        t.f64("diff")?,
        t.f64("ci_low")?,
        t.f64("ci_high")?,
        t.i64("n")?,
    );
    Ok((0..t.rows())
        .map(|i| PoolDiff {
            source: source.clone(),
            first: (fr[i].clone(), fa[i].clone()),
            second: (sr[i].clone(), sa[i].clone()),
            diff: value_at(d, i),
            lo: value_at(lo, i),
            hi: value_at(hi, i),
            n: n.value(i),
        })
        .collect())
}
