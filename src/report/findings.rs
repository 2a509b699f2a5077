//! The paper's findings, each decided from the numbers of a grid: reproduced, not reproduced,
//! inconclusive (intervals overlap) or not run.

use super::{Estimate, PoolR, Results, RlResult, SftResult, Source, best};

/// The verdict on one of the paper's findings at this scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reproduced,
    NotReproduced,
    Inconclusive,
    /// The grid lacks the runs that would decide it.
    NotRun,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not reproduced",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotRun => "not run",
        }
    }
}

/// One finding of the paper and what this grid says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub claim: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
    pub sources: Vec<Source>,
}

fn pct(e: &Estimate) -> String {
    format!("{:.3} [{:.3}, {:.3}]", e.mean, e.lo, e.hi)
}

/// Compares `better` against `base` with their intervals: reproduced when `better`'s interval
/// lies above `base`'s, not reproduced when it lies below, inconclusive when they overlap.
fn compare(better: &Estimate, base: &Estimate) -> Verdict {
    if better.clearly_above(base) {
        Verdict::Reproduced
    } else if base.clearly_above(better) {
        Verdict::NotReproduced
    } else {
        Verdict::Inconclusive
    }
}

/// The paper's findings, each decided from the numbers in `r`.
pub fn findings(r: &Results) -> Vec<Finding> {
    vec![
        token_share(r),
        sft_reweighting(r),
        outcome_coupling(r),
        reward_augmentation(r),
        surrogate_order(r),
        coupling_predicts_gain(r),
    ]
}

/// Perception is a small share of SFT's target tokens, loss and gradient.
fn token_share(r: &Results) -> Finding {
    let claim = "In SFT, perception is a small share of the target tokens, and gets a small \
                 share of the loss and of the gradient";
    match r.shares.first() {
        Some(s) => {
            let grad = s.grad.unwrap_or(f64::NAN);
            let small = s.tokens < 0.2 && s.loss < 0.5 && s.grad.is_none_or(|g| g < 0.5);
            Finding {
                claim,
                verdict: if small {
                    Verdict::Reproduced
                } else {
                    Verdict::NotReproduced
                },
                evidence: format!(
                    "perception is {:.1} % of target tokens, {:.1} % of the loss, {:.1} % of the \
                     gradient norm ({})",
                    100.0 * s.tokens,
                    100.0 * s.loss,
                    100.0 * grad,
                    s.source.instance
                ),
                sources: vec![s.source.clone()],
            }
        }
        None => not_run(claim),
    }
}

/// Reweighting the perception span helps end to end.
fn sft_reweighting(r: &Results) -> Finding {
    let claim = "Reweighting perception in SFT (fixed λ or NGDiff) raises end-to-end accuracy \
                 over the standard objective";
    match (r.sft_standard(), r.best_lambda().or(r.ngdiff())) {
        (Some(std), Some(_)) => {
            let mut cands: Vec<&SftResult> = r.best_lambda().into_iter().collect();
            cands.extend(r.ngdiff());
            let top = best(cands, |x| x.acc.a.mean).unwrap_or(std);
            Finding {
                claim,
                verdict: compare(&top.acc.a, &std.acc.a),
                evidence: format!(
                    "a = {} with {} against {} with the standard objective ({} items; the best \
                     of the reweighted runs, chosen on the same held-out set)",
                    pct(&top.acc.a),
                    top.role.label(),
                    pct(&std.acc.a),
                    std.acc.items
                ),
                sources: vec![top.source.clone(), std.source.clone()],
            }
        }
        _ => not_run(claim),
    }
}

/// The outcome reward couples to reasoning more than to perception.
fn outcome_coupling(r: &Results) -> Finding {
    let claim = "In RL, the outcome reward correlates with reasoning (ã_r) more than with \
                 perception (a_p)";
    match (r.pool_r("outcome", "a_p"), r.pool_r("outcome", "a_tilde_r")) {
        (Some(p), Some(q)) => {
            let show =
                |v: Option<f64>| v.map_or("undefined (constant)".into(), |v| format!("{v:.3}"));
            let (rp, rq) = (show(p.r), show(q.r));
            let verdict = match (p.hi, q.lo, p.lo, q.hi) {
                (Some(p_hi), Some(q_lo), _, _) if q_lo > p_hi => Verdict::Reproduced,
                (_, _, Some(p_lo), Some(q_hi)) if p_lo > q_hi => Verdict::NotReproduced,
                _ if p.r.is_none() || q.r.is_none() => Verdict::Inconclusive,
                _ => Verdict::Inconclusive,
            };
            Finding {
                claim,
                verdict,
                evidence: format!(
                    "r(outcome, ã_r) = {rq}, r(outcome, a_p) = {rp} over {} rollouts",
                    p.n
                ),
                sources: vec![p.source.clone()],
            }
        }
        _ => not_run(claim),
    }
}

/// Augmenting the reward with perception helps.
fn reward_augmentation(r: &Results) -> Finding {
    let claim = "Augmenting the outcome reward with a perception reward (α > 0) raises \
                 end-to-end accuracy after RL";
    match (r.rl_outcome(), r.best_alpha()) {
        (Some(base), Some(top)) => Finding {
            claim,
            verdict: compare(&top.end.a, &base.end.a),
            evidence: format!(
                "a = {} with {} against {} with α = 0 ({} items)",
                pct(&top.end.a),
                top.role.label(),
                pct(&base.end.a),
                base.end.items
            ),
            sources: vec![top.source.clone(), base.source.clone()],
        },
        _ => not_run(claim),
    }
}

/// Surrogate perception rewards: CLIP < self (1) < self (N) < teacher in r with a_p.
fn surrogate_order(r: &Results) -> Finding {
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
    if order.len() >= 3 {
        let rs: Vec<f64> = order.iter().map(|p| p.r.unwrap_or(f64::NAN)).collect();
        let increasing = rs.windows(2).all(|w| w[1] > w[0]);
        Finding {
            claim,
            verdict: if increasing {
                Verdict::Reproduced
            } else {
                Verdict::NotReproduced
            },
            evidence: order
                .iter()
                .map(|p| format!("{} {:.3}", p.reward, p.r.unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(" < "),
            sources: vec![order[0].source.clone()],
        }
    } else {
        not_run(claim)
    }
}

/// Runs whose reward couples more to perception gain more perception.
fn coupling_predicts_gain(r: &Results) -> Finding {
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
        not_run(claim)
    }
}

fn not_run(claim: &'static str) -> Finding {
    Finding {
        claim,
        verdict: Verdict::NotRun,
        evidence: "the grid has no runs that decide this".into(),
        sources: Vec::new(),
    }
}
