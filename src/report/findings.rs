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
    Estimate, ItemAccuracies, Metric, PoolDiff, PoolR, Results, RlResult, SftResult, Source, best,
};
use crate::analysis::paired::{Direction, PairedDiff, Side};

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
fn compare(x: &SftResult, y: &SftResult, metric: Metric, dir: Direction) -> (Side, String) {
    let paired = x
        .items
        .as_ref()
        .zip(y.items.as_ref())
        .and_then(|(xi, yi)| PairedDiff::between(metric.items(xi), metric.items(yi), SEED));
    let name = metric.name();
    match paired {
        Some(d) => (
            d.side(dir),
            format!(
                "{name}: {} − {} = {} (paired)",
                x.role.label(),
                y.role.label(),
                d.describe()
            ),
        ),
        None => {
            let (ex, ey) = (metric.of(&x.acc), metric.of(&y.acc));
            (
                interval_side(ex, ey, dir),
                format!(
                    "{name}: {} {} against {} {} (unpaired: no per-item scores; intervals \
                     compared)",
                    x.role.label(),
                    pct(ex),
                    y.role.label(),
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

/// Runs without per-item scores: reproduced when `better`'s interval lies above `base`'s, not
/// reproduced when below, inconclusive when they overlap.
fn unpaired(better: &Estimate, base: &Estimate) -> Verdict {
    Verdict::of_parts(&[interval_side(better, base, Direction::Positive)])
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
        outcome_coupling(r),
        reward_augmentation(r),
        surrogate_order(r),
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
/// the standard run, the per-item Δa_r − Δa_p has a paired interval above 0. Without per-item
/// scores the gains are shown and the verdict is inconclusive.
fn sft_gains(r: &Results) -> Finding {
    let id = "sft-gains";
    let claim = "SFT improves reasoning more than perception: from the starting checkpoint, \
                 Δa_r > Δa_p";
    let (Some(start), Some(std)) = (r.sft_start(), r.sft_standard()) else {
        return not_run(id, claim);
    };
    let gain = |m: Metric| metric_gain(m, start, std);
    let shown = format!(
        "Δa_r = {:+.3}, Δa_p = {:+.3} ({} → {})",
        gain(Metric::AR),
        gain(Metric::AP),
        start.role.label(),
        std.role.label()
    );
    let paired = start
        .items
        .as_ref()
        .zip(std.items.as_ref())
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
        sources: vec![std.source.clone(), start.source.clone()],
    }
}

fn metric_gain(m: Metric, before: &SftResult, after: &SftResult) -> f64 {
    m.of(&after.acc).mean - m.of(&before.acc).mean
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

/// Reweighting helps end to end. Rule: the best reweighted run (the best λ by a, or NGDiff,
/// whichever has the higher a) minus the standard run on a excludes 0 above.
fn sft_reweighting(r: &Results) -> Finding {
    let id = "sft-reweighting";
    let claim = "Reweighting perception in SFT (fixed λ or NGDiff) raises end-to-end accuracy \
                 over the standard objective";
    let Some(std) = r.sft_standard() else {
        return not_run(id, claim);
    };
    let cands: Vec<&SftResult> = r.best_lambda().into_iter().chain(r.ngdiff()).collect();
    let Some(top) = best(cands, |x| x.acc.a.mean) else {
        return not_run(id, claim);
    };
    let (side, text) = compare(top, std, Metric::A, Direction::Positive);
    Finding {
        id,
        claim,
        verdict: Verdict::of_parts(&[side]),
        evidence: format!(
            "{text}; the best reweighted run is chosen on the same test items it is reported on"
        ),
        sources: vec![top.source.clone(), std.source.clone()],
    }
}

/// The λ frontier. Rule, over the λ runs from the standard initialization (at least three):
/// a_p(λ_max) − a_p(λ_min) > 0, a_r(λ_max) − a_r(λ_min) < 0, and the best interior λ (by a)
/// beats both ends on a; each part decided by its interval.
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
    let Some(peak) = best(interior, |x| x.acc.a.mean) else {
        return not_run(id, claim);
    };
    let parts = [
        compare(hi, lo, Metric::AP, Direction::Positive),
        compare(hi, lo, Metric::AR, Direction::Negative),
        compare(peak, lo, Metric::A, Direction::Positive),
        compare(peak, hi, Metric::A, Direction::Positive),
    ];
    finding_of_parts(id, claim, &parts, runs.iter().map(|x| x.1))
}

/// NGDiff against the best fixed λ. Rule: a(NGDiff) − a(best λ) excludes 0 above (the best λ
/// chosen by a on the same items, which favours it).
fn ngdiff_vs_best_lambda(r: &Results) -> Finding {
    let id = "ngdiff-vs-lambda";
    let claim = "NGDiff, which sets the weights from the gradients, does at least as well end to \
                 end as the best fixed λ";
    let (Some(ng), Some(lam)) = (r.ngdiff(), r.best_lambda()) else {
        return not_run(id, claim);
    };
    let part = compare(ng, lam, Metric::A, Direction::Positive);
    finding_of_parts(id, claim, &[part], [ng, lam].into_iter())
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
        compare(hi, lo, Metric::AP, Direction::Positive),
        compare(hi, lo, Metric::AR, Direction::Negative),
    ];
    finding_of_parts(id, claim, &parts, runs.iter().map(|x| x.1))
}

fn finding_of_parts<'a>(
    id: &'static str,
    claim: &'static str,
    parts: &[(Side, String)],
    runs: impl Iterator<Item = &'a SftResult>,
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
        sources: runs.map(|x| x.source.clone()).collect(),
    }
}

/// The outcome reward couples to reasoning more than to perception. Rule: the paired
/// interval of r(outcome, ã_r) − r(outcome, a_p) over the same rollouts (correlate's
/// `differences`) above 0 reproduces, below 0 does not, containing 0 (or undefined) is
/// inconclusive. Without the paired comparison the two correlations' intervals are compared
/// (said so in the evidence).
fn outcome_coupling(r: &Results) -> Finding {
    let id = "outcome-coupling";
    let claim = "In RL, the outcome reward correlates with reasoning (ã_r) more than with \
                 perception (a_p)";
    let (Some(p), Some(q)) = (r.pool_r("outcome", "a_p"), r.pool_r("outcome", "a_tilde_r")) else {
        return not_run(id, claim);
    };
    let shown = format!(
        "r(outcome, ã_r) = {}, r(outcome, a_p) = {} over {} rollouts",
        show_r(q),
        show_r(p),
        p.n
    );
    let (side, how, sources) = match r.pool_diff(("outcome", "a_p"), ("outcome", "a_tilde_r")) {
        Some(d) => (
            diff_side(&d),
            format!(
                "; difference {} (paired over the same rollouts)",
                show_diff(&d)
            ),
            vec![p.source.clone(), d.source],
        ),
        None => (
            r_side(p, q),
            " (unpaired: the correlations' intervals compared)".into(),
            vec![p.source.clone()],
        ),
    };
    Finding {
        id,
        claim,
        verdict: Verdict::of_parts(&[side]),
        evidence: format!("{shown}{how}"),
        sources,
    }
}

/// The side of 0 a paired difference's interval lies on, for a claim that it is positive; an
/// undefined difference or interval is undecided.
fn diff_side(d: &PoolDiff) -> Side {
    match (d.lo, d.hi) {
        (Some(lo), _) if lo > 0.0 => Side::Supports,
        (_, Some(hi)) if hi < 0.0 => Side::Contradicts,
        _ => Side::Undecided,
    }
}

/// "+0.120 [+0.050, +0.190]", or "undefined".
fn show_diff(d: &PoolDiff) -> String {
    show_value(d.diff, d.lo, d.hi, true)
}

/// A value with its interval where it has one, with its sign when `signed`, or "undefined".
fn show_value(v: Option<f64>, lo: Option<f64>, hi: Option<f64>, signed: bool) -> String {
    let f = |x: f64| {
        if signed {
            format!("{x:+.3}")
        } else {
            format!("{x:.3}")
        }
    };
    match (v, lo, hi) {
        (Some(v), Some(lo), Some(hi)) => format!("{} [{}, {}]", f(v), f(lo), f(hi)),
        (Some(v), _, _) => f(v),
        _ => "undefined".into(),
    }
}

/// Augmenting the reward with perception helps.
fn reward_augmentation(r: &Results) -> Finding {
    let id = "reward-augmentation";
    let claim = "Augmenting the outcome reward with a perception reward (α > 0) raises \
                 end-to-end accuracy after RL";
    match (r.rl_outcome(), r.best_alpha()) {
        (Some(base), Some(top)) => Finding {
            id,
            claim,
            verdict: unpaired(&top.end.a, &base.end.a),
            evidence: format!(
                "a = {} with {} against {} with α = 0 ({} items; unpaired: the RL evaluation \
                 keeps no per-item scores, intervals compared)",
                pct(&top.end.a),
                top.role.label(),
                pct(&base.end.a),
                base.end.items
            ),
            sources: vec![top.source.clone(), base.source.clone()],
        },
        _ => not_run(id, claim),
    }
}

/// Surrogate perception rewards: CLIP < self (1) < self (N) < teacher in r with a_p. Rule: of
/// the rewards present in that order (at least three), each consecutive pair is decided by the
/// paired interval of the later one's r with a_p minus the earlier one's over the same rollouts
/// (above 0 supports, below contradicts, containing 0 or undefined is undecided); without the
/// paired comparison, by the two correlations' intervals (said so). Where the outcome reward's
/// r with a_p stands among them is described beside it, by the same comparisons.
fn surrogate_order(r: &Results) -> Finding {
    let id = "surrogate-order";
    let claim = "Surrogate perception rewards rank by their correlation with a_p: CLIP < self \
                 (N = 1) < self (N > 1) < teacher";
    let order: Vec<&PoolR> = ["clip", "self_1"]
        .iter()
        .filter_map(|k| r.pool_r(k, "a_p"))
        .chain(r.pool.iter().filter(|p| {
            p.against == "a_p" && p.reward.starts_with("self_") && p.reward != "self_1"
        }))
        .chain(r.pool_r("teacher", "a_p"))
        .collect();
    if order.len() < 3 {
        return not_run(id, claim);
    }
    // Whether `upper`'s r with a_p lies above `lower`'s: paired where the pool has the
    // difference, else by the two intervals.
    let above = |lower: &PoolR, upper: &PoolR| -> (Side, Option<PoolDiff>) {
        match r.pool_diff((&lower.reward, "a_p"), (&upper.reward, "a_p")) {
            Some(d) => (diff_side(&d), Some(d)),
            None => (r_side(lower, upper), None),
        }
    };
    let steps: Vec<(Side, Option<PoolDiff>)> =
        order.windows(2).map(|w| above(w[0], w[1])).collect();
    let mut chain = format!("{} {}", order[0].reward, show_r(order[0]));
    for (w, (_, d)) in order.windows(2).zip(&steps) {
        let gap = d
            .as_ref()
            .map_or(String::new(), |d| format!(" (by {})", show_diff(d)));
        chain.push_str(&format!(" <{gap} {} {}", w[1].reward, show_r(w[1])));
    }
    let outcome = r.pool_r("outcome", "a_p").map_or(String::new(), |o| {
        let names = |f: &dyn Fn(&PoolR) -> bool| {
            let v: Vec<&str> = order
                .iter()
                .filter(|p| f(p))
                .map(|p| p.reward.as_str())
                .collect();
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        format!(
            "; the outcome reward's r with a_p, {}, lies above {} and below {}",
            show_r(o),
            names(&|p| above(p, o).0 == Side::Supports),
            names(&|p| above(o, p).0 == Side::Supports)
        )
    });
    let teacher = teacher_perception(r);
    let paired = steps.iter().all(|s| s.1.is_some());
    let how = if paired {
        "paired over the same rollouts"
    } else {
        "unpaired: the correlations' intervals compared"
    };
    let diff_source = steps
        .iter()
        .find_map(|s| s.1.as_ref().map(|d| d.source.clone()));
    Finding {
        id,
        claim,
        verdict: Verdict::of_parts(&steps.iter().map(|s| s.0).collect::<Vec<_>>()),
        evidence: format!("{chain} ({how}){outcome}{teacher}"),
        sources: [order[0].source.clone()]
            .into_iter()
            .chain(diff_source)
            .collect(),
    }
}

/// How well the teacher itself perceives, beside the policy: "; the teacher's own a_p on the
/// pool's items is 0.830, the policy's 0.550", where the pool has both.
fn teacher_perception(r: &Results) -> String {
    let own = r.pool_r("teacher", "a_p").and_then(|t| t.own_a_p);
    match (own, r.pool_r("ground_truth", "a_p")) {
        (Some(t), Some(p)) => format!(
            "; the teacher's own a_p on the pool's items is {t:.3}, the policy's {:.3}",
            p.mean
        ),
        (Some(t), None) => format!("; the teacher's own a_p on the pool's items is {t:.3}"),
        _ => String::new(),
    }
}

/// Whether `upper`'s correlation lies above `lower`'s, by their intervals.
/// An undefined correlation or interval is undecided.
fn r_side(lower: &PoolR, upper: &PoolR) -> Side {
    let interval = |p: &PoolR| {
        let (lo, hi) = (p.lo?, p.hi?);
        Some(Estimate { mean: p.r?, lo, hi })
    };
    match (interval(upper), interval(lower)) {
        (Some(u), Some(l)) => interval_side(&u, &l, Direction::Positive),
        _ => Side::Undecided,
    }
}

/// "0.712 [0.650, 0.770]", or "undefined" for a constant reward.
fn show_r(p: &PoolR) -> String {
    show_value(p.r, p.lo, p.hi, false)
}

/// Runs whose reward couples more to perception gain more perception.
fn coupling_predicts_gain(r: &Results) -> Finding {
    let id = "coupling-predicts-gain";
    let claim = "Across RL runs, the reward's coupling to perception predicts the perception \
                 gain (Δa_p rises with r(R, a_p))";
    let points: Vec<(f64, f64, &RlResult)> =
        r.rl.iter()
            .filter_map(|x| x.r_a_p.map(|c| (c, x.end.a_p.mean - x.start.a_p.mean, x)))
            .collect();
    if points.len() >= 3 {
        let fit: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
        let (slope, corr) = match crate::analysis::fit_line(&fit) {
            Some((slope, _, r)) => (Some(slope), r),
            None => (None, None),
        };
        let verdict = match corr {
            Some(c) if c > 0.5 => Verdict::Reproduced,
            Some(c) if c < -0.5 => Verdict::NotReproduced,
            _ => Verdict::Inconclusive,
        };
        Finding {
            id,
            claim,
            verdict,
            evidence: format!(
                "over {} runs: slope {:.3}, r {:.2} (|r| > 0.5 decides)",
                points.len(),
                slope.unwrap_or(f64::NAN),
                corr.unwrap_or(f64::NAN)
            ),
            sources: points.iter().map(|p| p.2.source.clone()).collect(),
        }
    } else {
        not_run(id, claim)
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
