//! The experiment report: the paper's tables, figures and findings from the artifacts of an
//! experiment grid. [`Results`] holds what was measured (each number with the artifact it came
//! from); [`tables`] lays it out as the paper's tables (tidy rows, one value per cell);
//! [`findings`] decides, for each of the paper's claims, whether this grid reproduces it;
//! [`figures`] draws the figures and [`page`] writes the HTML and Markdown documents.

pub mod figures;
pub mod page;

use std::collections::BTreeMap;

/// Errors while building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("drawing figure `{figure}`: {message}")]
    Figure { figure: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, ReportError>;

/// A proportion with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Estimate {
    /// Intervals that do not overlap, this one above `other`.
    pub fn clearly_above(&self, other: &Estimate) -> bool {
        self.lo > other.hi
    }
}

/// Where a number came from: the artifact id and the pipeline instance that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub id: String,
    pub instance: String,
}

/// The held-out accuracies of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Accuracies {
    pub a: Estimate,
    pub a_p: Estimate,
    pub a_r: Estimate,
    pub items: u64,
}

/// The role of an SFT variant in the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SftRole {
    Standard,
    Lambda(f64),
    Ngdiff,
    /// A λ run started from the perception-only initialization.
    PerceptionInitLambda(f64),
}

/// An evaluated SFT variant.
#[derive(Debug, Clone, PartialEq)]
pub struct SftResult {
    pub role: SftRole,
    pub source: Source,
    pub acc: Accuracies,
}

/// One held-out evaluation point of a training run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub step: i64,
    pub a: f64,
    pub a_p: f64,
    pub a_r: f64,
}

/// A training run's held-out curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// The run's role label ([`SftRole::label`]).
    pub label: String,
    pub source: Source,
    pub points: Vec<CurvePoint>,
}

/// Perception's share of an SFT run's target tokens, loss and gradient norm (means over the
/// logged steps).
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    pub source: Source,
    pub tokens: f64,
    pub loss: f64,
    pub grad: Option<f64>,
}

/// The reward an RL run was trained with.
#[derive(Debug, Clone, PartialEq)]
pub enum RlRole {
    /// `R = α·a_p + (1 − α)·a` with the ground-truth perception reward.
    Alpha(f64),
    /// α = 0.5 with a surrogate perception reward (`self`, `teacher`).
    Surrogate(String),
    /// The outcome reward with the advantage rescaled per segment: λ on perception tokens,
    /// 1 − λ on reasoning tokens (appendix B.3).
    TokenLambda(f64),
}

/// An RL run: its held-out evaluations and the reward's coupling over its rollouts.
#[derive(Debug, Clone, PartialEq)]
pub struct RlResult {
    pub role: RlRole,
    pub source: Source,
    pub log: Source,
    pub start: Accuracies,
    pub end: Accuracies,
    pub curve: Vec<CurvePoint>,
    /// Pearson r of the training reward with a_p and with ã_r over all the run's rollouts.
    pub r_a_p: Option<f64>,
    pub r_a_tilde_r: Option<f64>,
    pub rollouts: i64,
}

/// Pearson r of one reward with a_p or ã_r over a pool of rollouts.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolR {
    pub source: Source,
    pub reward: String,
    pub against: String,
    pub r: Option<f64>,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub n: i64,
}

/// Everything the report reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Results {
    pub title: String,
    pub sft: Vec<SftResult>,
    pub sft_curves: Vec<Curve>,
    pub shares: Vec<Shares>,
    pub rl: Vec<RlResult>,
    pub pool: Vec<PoolR>,
}

/// One cell of a report table.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub table: String,
    pub row: String,
    pub column: String,
    pub value: Option<f64>,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub source: Source,
}

/// A report table: its title, caption and cells in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub key: String,
    pub title: String,
    pub caption: String,
    pub cells: Vec<Cell>,
}

impl Table {
    /// Row labels and column names in first-seen order.
    pub fn layout(&self) -> (Vec<String>, Vec<String>) {
        let (mut rows, mut cols) = (Vec::<String>::new(), Vec::<String>::new());
        for c in &self.cells {
            if !rows.contains(&c.row) {
                rows.push(c.row.clone());
            }
            if !cols.contains(&c.column) {
                cols.push(c.column.clone());
            }
        }
        (rows, cols)
    }

    pub fn cell(&self, row: &str, column: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.row == row && c.column == column)
    }
}

struct Builder {
    key: String,
    cells: Vec<Cell>,
}

impl Builder {
    fn new(key: &str) -> Self {
        Builder {
            key: key.into(),
            cells: Vec::new(),
        }
    }
    fn est(&mut self, row: &str, column: &str, e: &Estimate, source: &Source) {
        self.cells.push(Cell {
            table: self.key.clone(),
            row: row.into(),
            column: column.into(),
            value: Some(e.mean),
            lo: Some(e.lo),
            hi: Some(e.hi),
            source: source.clone(),
        });
    }
    fn val(&mut self, row: &str, column: &str, v: Option<f64>, source: &Source) {
        self.cells.push(Cell {
            table: self.key.clone(),
            row: row.into(),
            column: column.into(),
            value: v,
            lo: None,
            hi: None,
            source: source.clone(),
        });
    }
    fn accuracies(&mut self, row: &str, acc: &Accuracies, source: &Source) {
        self.est(row, "a", &acc.a, source);
        self.est(row, "a_p", &acc.a_p, source);
        self.est(row, "a_r", &acc.a_r, source);
        self.val(row, "items", Some(acc.items as f64), source);
    }
    fn done(self, title: &str, caption: &str) -> Table {
        Table {
            key: self.key,
            title: title.into(),
            caption: caption.into(),
            cells: self.cells,
        }
    }
}

fn fmt_param(v: f64) -> String {
    format!("{v}")
}

impl SftRole {
    pub fn label(&self) -> String {
        match self {
            SftRole::Standard => "standard".into(),
            SftRole::Lambda(l) => format!("λ = {}", fmt_param(*l)),
            SftRole::Ngdiff => "NGDiff".into(),
            SftRole::PerceptionInitLambda(l) => {
                format!("perception init, λ = {}", fmt_param(*l))
            }
        }
    }
}

impl RlRole {
    pub fn label(&self) -> String {
        match self {
            RlRole::Alpha(a) => format!("α = {}", fmt_param(*a)),
            RlRole::Surrogate(s) => format!("α = 0.5, {s} perception reward"),
            RlRole::TokenLambda(l) => format!("token λ = {}", fmt_param(*l)),
        }
    }
}

impl Results {
    fn sft_where(&self, f: impl Fn(&SftRole) -> bool) -> Vec<&SftResult> {
        self.sft.iter().filter(|r| f(&r.role)).collect()
    }

    /// The standard SFT run.
    pub fn sft_standard(&self) -> Option<&SftResult> {
        self.sft.iter().find(|r| r.role == SftRole::Standard)
    }

    /// The λ run (from the standard initialization) with the highest end-to-end a.
    pub fn best_lambda(&self) -> Option<&SftResult> {
        best(self.sft_where(|r| matches!(r, SftRole::Lambda(_))), |r| {
            r.acc.a.mean
        })
    }

    pub fn ngdiff(&self) -> Option<&SftResult> {
        self.sft.iter().find(|r| r.role == SftRole::Ngdiff)
    }

    fn alpha_runs(&self) -> Vec<(f64, &RlResult)> {
        let mut v: Vec<(f64, &RlResult)> = self
            .rl
            .iter()
            .filter_map(|r| match r.role {
                RlRole::Alpha(a) => Some((a, r)),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    /// The α = 0 run (the outcome reward alone).
    pub fn rl_outcome(&self) -> Option<&RlResult> {
        self.alpha_runs()
            .into_iter()
            .find(|(a, _)| *a == 0.0)
            .map(|x| x.1)
    }

    /// The α > 0 run with the highest final a.
    pub fn best_alpha(&self) -> Option<&RlResult> {
        best(
            self.alpha_runs()
                .into_iter()
                .filter(|(a, _)| *a > 0.0)
                .map(|x| x.1)
                .collect(),
            |r| r.end.a.mean,
        )
    }

    fn pool_r(&self, reward: &str, against: &str) -> Option<&PoolR> {
        self.pool
            .iter()
            .find(|p| p.reward == reward && p.against == against)
    }
}

fn best<T>(v: Vec<&T>, key: impl Fn(&T) -> f64) -> Option<&T> {
    // The first of equal maxima, so the choice does not depend on float noise in ties.
    let mut out: Option<&T> = None;
    for x in v {
        if out.is_none_or(|b| key(x) > key(b)) {
            out = Some(x);
        }
    }
    out
}

/// The paper's tables from `r`; tables without data are left out.
pub fn tables(r: &Results) -> Vec<Table> {
    let mut out = Vec::new();

    let mut t = Builder::new("table1_sft");
    for s in &r.sft {
        t.accuracies(&s.role.label(), &s.acc, &s.source);
    }
    if !t.cells.is_empty() {
        out.push(t.done(
            "Table 1 — end-to-end accuracy after SFT",
            "Held-out a, a_p and a_r (95 % intervals) of every SFT variant: the standard \
             objective, fixed λ reweighting of the perception and reasoning spans, NGDiff, and λ \
             runs from a perception-only initialization.",
        ));
    }

    let mut t = Builder::new("table2_rl");
    if let Some(first) = r.rl.first() {
        t.accuracies("initialization", &first.start, &first.source);
    }
    for (_, run) in r.alpha_runs() {
        t.accuracies(&run.role.label(), &run.end, &run.source);
    }
    for run in
        r.rl.iter()
            .filter(|x| matches!(x.role, RlRole::TokenLambda(_)))
    {
        t.accuracies(&run.role.label(), &run.end, &run.source);
    }
    if !t.cells.is_empty() {
        out.push(t.done(
            "Table 2 — after RL",
            "Held-out a, a_p, a_r of the starting checkpoint and after the last step of each \
             run with R = α·a_p + (1 − α)·a (α = 0: the outcome reward alone), and of the \
             outcome-reward runs whose advantage is rescaled per segment (token λ on \
             perception tokens, 1 − λ on reasoning tokens).",
        ));
    }

    let mut t = Builder::new("table3_perception_rewards");
    let half: Vec<&RlResult> =
        r.rl.iter()
            .filter(|x| match &x.role {
                RlRole::Alpha(a) => *a == 0.0 || *a == 0.5,
                RlRole::Surrogate(_) => true,
                RlRole::TokenLambda(_) => false,
            })
            .collect();
    for run in half {
        let row = match &run.role {
            RlRole::Alpha(a) if *a == 0.0 => "outcome only (α = 0)".to_string(),
            RlRole::Alpha(_) => "ground truth (α = 0.5)".to_string(),
            RlRole::Surrogate(s) => format!("{s} (α = 0.5)"),
            RlRole::TokenLambda(_) => continue,
        };
        t.val(&row, "r(R, a_p)", run.r_a_p, &run.log);
        t.val(&row, "r(R, ã_r)", run.r_a_tilde_r, &run.log);
        t.accuracies(&row, &run.end, &run.source);
    }
    if !t.cells.is_empty() {
        out.push(t.done(
            "Table 3 — RL with α = 0.5 under each perception reward",
            "Pearson r of the training reward with a_p and with ã_r over all of the run's \
             rollouts, and the held-out a, a_p, a_r after the last step.",
        ));
    }

    let mut t = Builder::new("table4_reward_correlations");
    let mut rewards: Vec<&str> = Vec::new();
    for p in &r.pool {
        if !rewards.contains(&p.reward.as_str()) {
            rewards.push(&p.reward);
        }
    }
    for reward in rewards {
        for against in ["a_p", "a_tilde_r"] {
            if let Some(p) = r.pool_r(reward, against) {
                let col = format!("r with {}", against.replace("a_tilde_r", "ã_r"));
                t.cells.push(Cell {
                    table: t.key.clone(),
                    row: reward.into(),
                    column: col,
                    value: p.r,
                    lo: p.lo,
                    hi: p.hi,
                    source: p.source.clone(),
                });
            }
        }
    }
    if !t.cells.is_empty() {
        out.push(t.done(
            "Table 4 — how each reward couples to perception",
            "Pearson r of each reward with a_p and with ã_r over a pool of rollouts of one \
             checkpoint (95 % bootstrap intervals over items).",
        ));
    }

    let mut t = Builder::new("table5_shares");
    for s in &r.shares {
        let row = s.source.instance.clone();
        t.val(&row, "token share", Some(s.tokens), &s.source);
        t.val(&row, "loss share", Some(s.loss), &s.source);
        t.val(&row, "gradient-norm share", s.grad, &s.source);
    }
    if !t.cells.is_empty() {
        out.push(t.done(
            "Perception's share of SFT targets, loss and gradient",
            "Means over each run's logged steps; the gradient share is the perception part's \
             gradient norm over the sum of both parts' norms, under the objective trained.",
        ));
    }
    out
}

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
    let mut out = Vec::new();

    // 1. Perception is a small share of SFT's target tokens, loss and gradient.
    let claim = "In SFT, perception is a small share of the target tokens, and gets a small \
                 share of the loss and of the gradient";
    match r.shares.first() {
        Some(s) => {
            let grad = s.grad.unwrap_or(f64::NAN);
            let small = s.tokens < 0.2 && s.loss < 0.5 && s.grad.is_none_or(|g| g < 0.5);
            out.push(Finding {
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
            });
        }
        None => out.push(not_run(claim)),
    }

    // 2. Reweighting the perception span helps end to end.
    let claim = "Reweighting perception in SFT (fixed λ or NGDiff) raises end-to-end accuracy \
                 over the standard objective";
    match (r.sft_standard(), r.best_lambda().or(r.ngdiff())) {
        (Some(std), Some(_)) => {
            let mut cands: Vec<&SftResult> = r.best_lambda().into_iter().collect();
            cands.extend(r.ngdiff());
            let top = best(cands, |x| x.acc.a.mean).unwrap_or(std);
            out.push(Finding {
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
            });
        }
        _ => out.push(not_run(claim)),
    }

    // 3. The outcome reward couples to reasoning more than to perception.
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
            out.push(Finding {
                claim,
                verdict,
                evidence: format!(
                    "r(outcome, ã_r) = {rq}, r(outcome, a_p) = {rp} over {} rollouts",
                    p.n
                ),
                sources: vec![p.source.clone()],
            });
        }
        _ => out.push(not_run(claim)),
    }

    // 4. Augmenting the reward with perception helps.
    let claim = "Augmenting the outcome reward with a perception reward (α > 0) raises \
                 end-to-end accuracy after RL";
    match (r.rl_outcome(), r.best_alpha()) {
        (Some(base), Some(top)) => out.push(Finding {
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
        }),
        _ => out.push(not_run(claim)),
    }

    // 5. Surrogate perception rewards: CLIP < self (1) < self (N) < teacher in r with a_p.
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
        out.push(Finding {
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
        });
    } else {
        out.push(not_run(claim));
    }

    // 6. Runs whose reward couples more to perception gain more perception.
    let claim = "Across RL runs, the reward's coupling to perception predicts the perception \
                 gain (Δa_p rises with r(R, a_p))";
    let points: Vec<(f64, f64, &RlResult)> =
        r.rl.iter()
            .filter_map(|x| x.r_a_p.map(|c| (c, x.end.a_p.mean - x.start.a_p.mean, x)))
            .collect();
    if points.len() >= 3 {
        let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().map(|p| (p.0, p.1)).unzip();
        let corr = crate::analysis::pearson(&xs, &ys);
        let slope = slope(&xs, &ys);
        let verdict = match corr {
            Some(c) if c > 0.5 => Verdict::Reproduced,
            Some(c) if c < -0.5 => Verdict::NotReproduced,
            _ => Verdict::Inconclusive,
        };
        out.push(Finding {
            claim,
            verdict,
            evidence: format!(
                "over {} runs: slope {:.3}, r {:.2} (|r| > 0.5 decides)",
                points.len(),
                slope.unwrap_or(f64::NAN),
                corr.unwrap_or(f64::NAN)
            ),
            sources: points.iter().map(|p| p.2.source.clone()).collect(),
        });
    } else {
        out.push(not_run(claim));
    }
    out
}

fn not_run(claim: &'static str) -> Finding {
    Finding {
        claim,
        verdict: Verdict::NotRun,
        evidence: "the grid has no runs that decide this".into(),
        sources: Vec::new(),
    }
}

/// Least-squares slope of y on x.
pub fn slope(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    (xs.len() >= 2 && sxx > 1e-12).then(|| sxy / sxx)
}

/// Every artifact the report cites, with the instance that wrote it.
pub fn sources(r: &Results) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |s: &Source| {
        out.entry(s.id.clone())
            .or_insert_with(|| s.instance.clone());
    };
    r.sft.iter().for_each(|x| add(&x.source));
    r.sft_curves.iter().for_each(|x| add(&x.source));
    r.shares.iter().for_each(|x| add(&x.source));
    for x in &r.rl {
        add(&x.source);
        add(&x.log);
    }
    r.pool.iter().for_each(|x| add(&x.source));
    out
}

#[cfg(test)]
mod tests;
