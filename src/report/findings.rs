//! The paper's findings, each decided from the numbers of a grid by one function whose rule is
//! documented beside it: reproduced, not reproduced, inconclusive, measured (a description,
//! where the grid sets the quantity) or not run.
//!
//! Comparisons between SFT variants are paired over the test items both were evaluated on
//! (`analysis::paired`: the 95 % bootstrap interval of the per-item difference) when the grid
//! wires the evaluations' per-item scores; a claim is reproduced when the interval excludes 0
//! in the paper's direction, not reproduced when it excludes 0 the other way, inconclusive
//! otherwise, with the smallest difference those items could detect printed beside it. Without
//! per-item scores the two runs' own intervals are compared (said so in the evidence).

use super::{
    Arm, Estimate, ItemAccuracies, Metric, PoolDiff, PoolR, Results, RlResult, Selection,
    SftResult, Source,
};
use crate::analysis::paired::{Direction, PairedDiff, Side};

mod rl;
use rl::*;

/// The verdict on one of the paper's findings at this scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reproduced,
    NotReproduced,
    Inconclusive,
    /// A quantity the grid's settings determine, described rather than judged.
    Measured,
    /// The grid lacks the runs that would decide it.
    NotRun,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not reproduced",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Measured => "measured",
            Verdict::NotRun => "not run",
        }
    }

    /// All parts of a claim: reproduced when every part is supported, not reproduced when any
    /// is contradicted, inconclusive otherwise.
    fn of_parts(sides: &[Side]) -> Verdict {
        if sides.contains(&Side::Contradicts) {
            Verdict::NotReproduced
        } else if !sides.is_empty() && sides.iter().all(|s| *s == Side::Supports) {
            Verdict::Reproduced
        } else {
            Verdict::Inconclusive
        }
    }
}

/// One finding of the paper and what this grid says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// A short stable name (`sft-reweighting`, `lambda-frontier`, …).
    pub id: &'static str,
    pub claim: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
    pub sources: Vec<Source>,
}

fn pct(e: &Estimate) -> String {
    format!("{:.3} [{:.3}, {:.3}]", e.mean, e.lo, e.hi)
}

/// The seed of every paired bootstrap in the report (the report is deterministic).
const SEED: u64 = 0;

/// What the comparison of `x` against `y` on `metric` says of the claim that `x − y` has sign
/// `dir`, and the numbers: paired over shared items when both carry per-item scores, else by
/// the overlap of the two runs' intervals.
fn compare(x: &Arm, y: &Arm, metric: Metric, dir: Direction) -> (Side, String) {
    let paired = x
        .items
        .zip(y.items)
        .and_then(|(xi, yi)| PairedDiff::between(metric.items(xi), metric.items(yi), SEED));
    let name = metric.name();
    match paired {
        Some(d) => {
            let seeds = super::replicates::per_seed(
                (x.replicates, x.items),
                (y.replicates, y.items),
                |i| metric.items(i),
            );
            // Replicated runs: a decided side needs every seed's difference on it.
            let mut side = d.side(dir);
            let sign = |v: f64| match side {
                Side::Supports if dir == Direction::Positive => v > 0.0,
                Side::Supports => v < 0.0,
                Side::Contradicts if dir == Direction::Positive => v < 0.0,
                Side::Contradicts => v > 0.0,
                Side::Undecided => true,
            };
            let split = !seeds.iter().all(|(_, v)| sign(*v));
            if split {
                side = Side::Undecided;
            }
            let seeds = match (seeds.is_empty(), split) {
                (true, _) => String::new(),
                (false, false) => format!("; seed by seed {}", super::replicates::describe(&seeds)),
                (false, true) => format!(
                    "; seed by seed {}: the seeds disagree, so undecided",
                    super::replicates::describe(&seeds)
                ),
            };
            (
                side,
                format!(
                    "{name}: {} − {} = {} (paired{seeds})",
                    x.label,
                    y.label,
                    d.describe()
                ),
            )
        }
        None => {
            let (ex, ey) = (metric.of(x.acc), metric.of(y.acc));
            (
                interval_side(ex, ey, dir),
                format!(
                    "{name}: {} {} against {} {} (unpaired: no per-item scores; intervals \
                     compared)",
                    x.label,
                    pct(ex),
                    y.label,
                    pct(ey)
                ),
            )
        }
    }
}

/// The overlap rule for two intervals of unpaired numbers, on the claim that `x − y` has sign
/// `dir`: `x`'s interval wholly above `y`'s supports a positive difference, wholly below
/// contradicts it, overlapping intervals leave it undecided.
fn interval_side(x: &Estimate, y: &Estimate, dir: Direction) -> Side {
    let (above, below) = (x.clearly_above(y), y.clearly_above(x));
    match (dir, above, below) {
        (Direction::Positive, true, _) | (Direction::Negative, _, true) => Side::Supports,
        (Direction::Positive, _, true) | (Direction::Negative, true, _) => Side::Contradicts,
        _ => Side::Undecided,
    }
}

/// The paper's findings, each decided from the numbers in `r`.
pub fn findings(r: &Results) -> Vec<Finding> {
    vec![
        sft_gains(r),
        token_share(r),
        sft_reweighting(r),
        lambda_frontier(r),
        ngdiff_vs_best_lambda(r),
        perception_init_tradeoff(r),
        rl_gains(r),
        outcome_coupling(r),
        alpha_frontier(r),
        reward_augmentation(r),
        surrogate_order(r),
        surrogate_rl(r),
        rl_token_reweighting(r),
        coupling_predicts_gain(r),
    ]
}

/// Per item, (a_r after − a_r before) − (a_p after − a_p before), over the items with all four.
fn gain_gaps(before: &ItemAccuracies, after: &ItemAccuracies) -> Vec<f64> {
    after
        .a_r
        .iter()
        .filter_map(|(id, r1)| {
            let (r0, p0, p1) = (before.a_r.get(id)?, before.a_p.get(id)?, after.a_p.get(id)?);
            Some((r1 - r0) - (p1 - p0))
        })
        .collect()
}

/// SFT improves reasoning more than perception (Figure 5). Rule: from the start checkpoint to
/// the standard run, the per-item Δa_r − Δa_p has a paired interval above 0 (reproduced), below
/// 0 (not reproduced), or containing 0 (inconclusive). Without per-item scores the gains are
/// shown and the verdict is inconclusive.
fn sft_gains(r: &Results) -> Finding {
    let id = "sft-gains";
    let claim = "SFT improves reasoning more than perception: from the starting checkpoint, \
                 Δa_r > Δa_p";
    match (r.sft_start(), r.sft_standard()) {
        (Some(start), Some(std)) => gains(id, claim, &start.arm(), &std.arm()),
        _ => not_run(id, claim),
    }
}

/// The rule of [`sft_gains`] and [`rl_gains`]: Δa_r − Δa_p from `before` to `after`, paired
/// per item.
fn gains(id: &'static str, claim: &'static str, before: &Arm, after: &Arm) -> Finding {
    let gain = |m: Metric| m.of(after.acc).mean - m.of(before.acc).mean;
    let shown = format!(
        "Δa_r = {:+.3}, Δa_p = {:+.3} ({} → {})",
        gain(Metric::AR),
        gain(Metric::AP),
        before.label,
        after.label
    );
    let paired = before
        .items
        .zip(after.items)
        .and_then(|(b, a)| PairedDiff::of(&gain_gaps(b, a), SEED));
    let (verdict, evidence) = match paired {
        Some(d) => (
            Verdict::of_parts(&[d.side(Direction::Positive)]),
            format!("{shown}; Δa_r − Δa_p = {} (paired)", d.describe()),
        ),
        None => (
            Verdict::Inconclusive,
            format!("{shown}; no per-item scores, so no interval of the difference"),
        ),
    };
    Finding {
        id,
        claim,
        verdict,
        evidence,
        sources: vec![after.source.clone(), before.source.clone()],
    }
}

/// Perception's share of SFT's target tokens, loss and gradient — described, not judged: the
/// trace's verbosity sets the token share, and the loss and gradient shares follow from it.
fn token_share(r: &Results) -> Finding {
    let id = "perception-share";
    let claim = "In SFT, perception is a small share of the target tokens (2.2–2.5 % in the \
                 paper), and gets a small share of the loss (1.3 %) and of the gradient (8.5 %)";
    let Some(s) = r.shares.first() else {
        return not_run(id, claim);
    };
    let grad = s
        .grad
        .map_or("not logged".into(), |g| format!("{:.1} %", 100.0 * g));
    Finding {
        id,
        claim,
        verdict: Verdict::Measured,
        evidence: format!(
            "perception is {:.1} % of target tokens, {:.1} % of the loss, {grad} of the gradient \
             norm ({})",
            100.0 * s.tokens,
            100.0 * s.loss,
            s.source.instance
        ),
        sources: vec![s.source.clone()],
    }
}

/// Reweighting helps end to end. Rule: the best reweighted run (the best λ, or NGDiff,
/// whichever has the higher a on the validation split where both have an evaluation there,
/// else on the test items) minus the standard run on a excludes 0 above (at most inconclusive
/// when the run was chosen on the test items).
fn sft_reweighting(r: &Results) -> Finding {
    let id = "sft-reweighting";
    let claim = "Reweighting perception in SFT (fixed λ or NGDiff) raises end-to-end accuracy \
                 over the standard objective";
    let Some(std) = r.sft_standard() else {
        return not_run(id, claim);
    };
    let cands: Vec<&SftResult> = r.best_lambda().into_iter().chain(r.ngdiff()).collect();
    let Some((top, how)) = r.pick_sft(cands) else {
        return not_run(id, claim);
    };
    let (side, text) = compare(&top.arm(), &std.arm(), Metric::A, Direction::Positive);
    let f = Finding {
        id,
        claim,
        verdict: Verdict::of_parts(&[side]),
        evidence: format!("{text}; the best reweighted run is {}", how.describe()),
        sources: [top.source.clone(), std.source.clone()]
            .into_iter()
            .chain(how.source().cloned())
            .collect(),
    };
    chosen_on(f, &how)
}

/// A claim about a best run chosen on the same test items it is then compared on: that choice
/// favours the claim, so such a finding is at most inconclusive (a contradiction stands).
fn chosen_on(mut f: Finding, how: &Selection) -> Finding {
    if *how == Selection::Test && f.verdict == Verdict::Reproduced {
        f.verdict = Verdict::Inconclusive;
        f.evidence.push_str(
            "; at most inconclusive: the best run was chosen on the items it is compared on \
             (wire `val_evals`)",
        );
    }
    f
}

/// The λ frontier. Rule, over the λ runs from the standard initialization (at least three):
/// a_p(λ_max) − a_p(λ_min) > 0, a_r(λ_max) − a_r(λ_min) < 0, and the best interior λ (by a,
/// on the validation split where every interior λ has an evaluation there) beats both ends on
/// a; each part decided by its interval (at most inconclusive when the peak was chosen on the
/// test items).
fn lambda_frontier(r: &Results) -> Finding {
    let id = "lambda-frontier";
    let claim = "Along the λ frontier perception accuracy rises and reasoning accuracy falls \
                 with λ, and end-to-end accuracy peaks at an intermediate λ";
    let runs = r.lambda_runs(false);
    if runs.len() < 3 {
        return not_run(id, claim);
    }
    let (lo, hi) = (runs[0].1, runs[runs.len() - 1].1);
    let interior: Vec<&SftResult> = runs[1..runs.len() - 1].iter().map(|x| x.1).collect();
    let Some((peak, how)) = r.pick_sft(interior) else {
        return not_run(id, claim);
    };
    let parts = [
        compare(&hi.arm(), &lo.arm(), Metric::AP, Direction::Positive),
        compare(&hi.arm(), &lo.arm(), Metric::AR, Direction::Negative),
        compare(&peak.arm(), &lo.arm(), Metric::A, Direction::Positive),
        compare(&peak.arm(), &hi.arm(), Metric::A, Direction::Positive),
    ];
    let mut f = finding_of_parts(
        id,
        claim,
        &parts,
        runs.iter()
            .map(|x| x.1.source.clone())
            .chain(how.source().cloned()),
    );
    f.evidence = format!(
        "{}; the peak {} is {}",
        f.evidence,
        peak.role.label(),
        how.describe()
    );
    chosen_on(f, &how)
}

/// NGDiff against the best fixed λ. Rule: a(NGDiff) − a(best λ) excludes 0 above (the best λ
/// chosen by a on the validation split where every λ has an evaluation there, else on the same
/// test items, which favours it).
fn ngdiff_vs_best_lambda(r: &Results) -> Finding {
    let id = "ngdiff-vs-lambda";
    let claim = "NGDiff, which sets the weights from the gradients, does at least as well end to \
                 end as the best fixed λ";
    let (Some(ng), Some((lam, how))) = (r.ngdiff(), r.best_lambda_choice()) else {
        return not_run(id, claim);
    };
    let (side, text) = compare(&ng.arm(), &lam.arm(), Metric::A, Direction::Positive);
    let part = (side, format!("{text}; the best λ is {}", how.describe()));
    finding_of_parts(
        id,
        claim,
        &[part],
        [ng, lam].into_iter().map(|x| x.source.clone()),
    )
}

/// The trade-off after a perception-only initialization. Rule, over its λ runs (at least
/// two): a_p(λ_max) − a_p(λ_min) > 0 and a_r(λ_max) − a_r(λ_min) < 0.
fn perception_init_tradeoff(r: &Results) -> Finding {
    let id = "perception-init-tradeoff";
    let claim = "The perception–reasoning trade-off persists after a perception-only \
                 initialization (a_p rises and a_r falls with λ)";
    let runs = r.lambda_runs(true);
    if runs.len() < 2 {
        return not_run(id, claim);
    }
    let (lo, hi) = (runs[0].1, runs[runs.len() - 1].1);
    let parts = [
        compare(&hi.arm(), &lo.arm(), Metric::AP, Direction::Positive),
        compare(&hi.arm(), &lo.arm(), Metric::AR, Direction::Negative),
    ];
    finding_of_parts(id, claim, &parts, runs.iter().map(|x| x.1.source.clone()))
}

fn finding_of_parts(
    id: &'static str,
    claim: &'static str,
    parts: &[(Side, String)],
    sources: impl Iterator<Item = Source>,
) -> Finding {
    let sides: Vec<Side> = parts.iter().map(|p| p.0).collect();
    Finding {
        id,
        claim,
        verdict: Verdict::of_parts(&sides),
        evidence: parts
            .iter()
            .map(|p| p.1.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        sources: sources.collect(),
    }
}

fn not_run(id: &'static str, claim: &'static str) -> Finding {
    Finding {
        id,
        claim,
        verdict: Verdict::NotRun,
        evidence: "the grid has no runs that decide this".into(),
        sources: Vec::new(),
    }
}
