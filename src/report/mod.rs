//! The experiment report: the paper's tables, figures and findings from the artifacts of an
//! experiment grid. [`Results`] holds what was measured (each number with the artifact it came
//! from); [`tables`] lays it out as the paper's tables (tidy rows, one value per cell);
//! [`findings`] decides, for each of the paper's claims, whether this grid reproduces it;
//! [`figures`] draws the figures and [`page`] writes the HTML and Markdown documents.

pub mod deviations;
pub mod figures;
pub mod findings;
pub mod page;
pub mod replicates;
pub mod setup;
pub mod tables;

pub use deviations::deviations;
pub use findings::{Finding, Verdict, findings};
pub use replicates::Replicate;
pub use tables::{Cell, Table, tables};

pub use crate::analysis::paired::ItemScores;
use std::collections::BTreeMap;

/// Errors while building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("drawing figure `{figure}`: {source}")]
    Figure {
        figure: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// The checkpoint every SFT variant starts from, evaluated before any of them trains.
    Start,
    Standard,
    Lambda(f64),
    Ngdiff,
    /// A λ run started from the perception-only initialization.
    PerceptionInitLambda(f64),
}

/// Per-item accuracies of one evaluation (each item's mean over its samples), which paired
/// comparisons between variants evaluated on the same items read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemAccuracies {
    pub a: ItemScores,
    pub a_p: ItemScores,
    /// Items with a counterfactual rollout.
    pub a_r: ItemScores,
}

/// One of the three accuracies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    A,
    AP,
    AR,
}

impl Metric {
    pub fn name(&self) -> &'static str {
        match self {
            Metric::A => "a",
            Metric::AP => "a_p",
            Metric::AR => "a_r",
        }
    }

    pub fn of<'a>(&self, acc: &'a Accuracies) -> &'a Estimate {
        match self {
            Metric::A => &acc.a,
            Metric::AP => &acc.a_p,
            Metric::AR => &acc.a_r,
        }
    }

    pub fn items<'a>(&self, items: &'a ItemAccuracies) -> &'a ItemScores {
        match self {
            Metric::A => &items.a,
            Metric::AP => &items.a_p,
            Metric::AR => &items.a_r,
        }
    }
}

/// An evaluated SFT variant.
#[derive(Debug, Clone, PartialEq)]
pub struct SftResult {
    pub role: SftRole,
    pub source: Source,
    pub acc: Accuracies,
    /// The evaluation's per-item scores, when the grid wires them (`eval_items`).
    pub items: Option<ItemAccuracies>,
    /// The seeds' own evaluations when the run is replicated over seeds (empty for one run):
    /// `acc` and `items` are then their merge ([`replicates::merge`]).
    pub replicates: Vec<Replicate>,
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

/// A held-out evaluation by the `evaluate` stage (the same sampling for every run it compares):
/// its summary and, when the grid wires them, its per-item scores.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOut {
    pub source: Source,
    pub acc: Accuracies,
    pub items: Option<ItemAccuracies>,
    /// The seeds' own evaluations of a replicated run (empty for one run).
    pub replicates: Vec<Replicate>,
}

/// One side of a comparison: a run's held-out accuracies, with its per-item scores where they
/// were kept.
#[derive(Debug, Clone)]
pub struct Arm<'a> {
    pub label: String,
    pub acc: &'a Accuracies,
    pub items: Option<&'a ItemAccuracies>,
    pub source: &'a Source,
    /// The seeds' own evaluations of a replicated run (empty for one run).
    pub replicates: &'a [Replicate],
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
    /// The final policy's evaluation by the `evaluate` stage, when the grid wires one (role
    /// `alpha`, `self`, … in `evals`); comparisons then read it instead of `end`, the loop's
    /// own greedy evaluation.
    pub held_out: Option<HeldOut>,
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
    /// The reward's mean over the pool (for the ground-truth reward: the policy's a_p).
    pub mean: f64,
    /// The reward's own transcription accuracy over the pool's items, where it has one (the
    /// teacher's a_p).
    pub own_a_p: Option<f64>,
    /// For the self rewards: the share of their re-rollouts without a readable answer.
    pub unread: Option<f64>,
}

/// A paired comparison of two correlations over the same pool of rollouts (correlate's
/// `differences`): r(second) − r(first) with its bootstrap interval.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDiff {
    pub source: Source,
    /// (reward, against) of each correlation.
    pub first: (String, String),
    pub second: (String, String),
    pub diff: Option<f64>,
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
    pub pool_diffs: Vec<PoolDiff>,
    /// The RL runs' starting checkpoint evaluated by the `evaluate` stage (role `rl-start`), the
    /// same way as their final policies.
    pub rl_start: Option<HeldOut>,
    /// End-to-end a of SFT variants and RL runs on the validation split (`val_evals`), by which
    /// the best λ and α are chosen.
    pub val_sft: Vec<(SftRole, Estimate, Source)>,
    pub val_rl: Vec<(RlRole, Estimate, Source)>,
    /// The grid's settings as its artifacts record them, for the departures from the paper.
    pub setup: setup::Setup,
}

/// How a best run (λ, α) was chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// By its a on the validation split (that evaluation's source).
    Validation(f64, Source),
    /// By its a on the test items it is then reported on, which favours it.
    Test,
}

impl Selection {
    pub fn describe(&self) -> String {
        match self {
            Selection::Validation(a, _) => {
                format!("chosen on the validation split (a = {a:.3} there)")
            }
            Selection::Test => "chosen on the same test items it is reported on".into(),
        }
    }

    pub fn source(&self) -> Option<&Source> {
        match self {
            Selection::Validation(_, s) => Some(s),
            Selection::Test => None,
        }
    }
}

/// The run of `runs` with the highest a on the validation split where every run has a
/// validation evaluation (`val`), else by its test a.
fn pick<T>(
    runs: Vec<&T>,
    val: impl Fn(&T) -> Option<(f64, Source)>,
    test: impl Fn(&T) -> f64,
) -> Option<(&T, Selection)> {
    if !runs.is_empty() && runs.iter().all(|r| val(r).is_some()) {
        let top = best(runs, |r| val(r).map_or(f64::NEG_INFINITY, |v| v.0))?;
        let (a, source) = val(top)?;
        return Some((top, Selection::Validation(a, source)));
    }
    best(runs, test).map(|r| (r, Selection::Test))
}

fn fmt_param(v: f64) -> String {
    format!("{v}")
}

impl SftRole {
    pub fn label(&self) -> String {
        match self {
            SftRole::Start => "start checkpoint".into(),
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

impl SftResult {
    /// This run as one side of a comparison.
    pub fn arm(&self) -> Arm<'_> {
        Arm {
            label: self.role.label(),
            acc: &self.acc,
            items: self.items.as_ref(),
            source: &self.source,
            replicates: &self.replicates,
        }
    }
}

impl RlResult {
    /// The final policy as one side of a comparison: its held-out evaluation where the grid
    /// wires one, else the loop's last evaluation (without per-item scores).
    pub fn arm(&self) -> Arm<'_> {
        match &self.held_out {
            Some(h) => Arm {
                label: self.role.label(),
                acc: &h.acc,
                items: h.items.as_ref(),
                source: &h.source,
                replicates: &h.replicates,
            },
            None => Arm {
                label: self.role.label(),
                acc: &self.end,
                items: None,
                source: &self.source,
                replicates: &[],
            },
        }
    }
}

impl Results {
    /// The RL runs' starting checkpoint: its evaluation by the `evaluate` stage where wired,
    /// else the outcome run's (or the first run's) own evaluation before its first step.
    pub fn rl_start_arm(&self) -> Option<Arm<'_>> {
        if let Some(h) = &self.rl_start {
            return Some(Arm {
                label: "RL start".into(),
                acc: &h.acc,
                items: h.items.as_ref(),
                source: &h.source,
                replicates: &h.replicates,
            });
        }
        let run = self.rl_outcome().or(self.rl.first())?;
        Some(Arm {
            label: "RL start".into(),
            acc: &run.start,
            items: None,
            source: &run.source,
            replicates: &[],
        })
    }

    /// The pool reward that is `run`'s own reward, composed on the starting policy's rollouts
    /// (correlate's `mixtures`): α·ground truth + (1 − α)·outcome for an α run, 0.5·surrogate +
    /// 0.5·outcome for a surrogate run (`self` reads the pool's `self_1`); its r with a_p is the
    /// run's coupling before training.
    pub fn start_coupling(&self, run: &RlResult) -> Option<&PoolR> {
        use crate::rl::coupling::mixture_name;
        let name = match &run.role {
            RlRole::Alpha(a) => mixture_name(*a, "ground_truth"),
            RlRole::Surrogate(s) if s == "self" => mixture_name(0.5, "self_1"),
            RlRole::Surrogate(s) => mixture_name(0.5, s),
            RlRole::TokenLambda(_) => return None,
        };
        self.pool_r(&name, "a_p").filter(|p| p.r.is_some())
    }

    /// A run's gain in `m` from the RL start to its final policy, from the held-out evaluations
    /// where both are wired, else from the loop's own evaluations.
    pub fn rl_gain(&self, run: &RlResult, m: Metric) -> f64 {
        match (&self.rl_start, &run.held_out) {
            (Some(s), Some(h)) => m.of(&h.acc).mean - m.of(&s.acc).mean,
            _ => m.of(&run.end).mean - m.of(&run.start).mean,
        }
    }

    fn sft_where(&self, f: impl Fn(&SftRole) -> bool) -> Vec<&SftResult> {
        self.sft.iter().filter(|r| f(&r.role)).collect()
    }

    /// The evaluation of the checkpoint the variants start from.
    pub fn sft_start(&self) -> Option<&SftResult> {
        self.sft.iter().find(|r| r.role == SftRole::Start)
    }

    /// The standard SFT run.
    pub fn sft_standard(&self) -> Option<&SftResult> {
        self.sft.iter().find(|r| r.role == SftRole::Standard)
    }

    /// The λ run (from the standard initialization) with the highest end-to-end a.
    pub fn best_lambda(&self) -> Option<&SftResult> {
        self.best_lambda_choice().map(|x| x.0)
    }

    /// The best λ run and how it was chosen: by a on the validation split where every λ run
    /// has one, else by a on the test items.
    pub fn best_lambda_choice(&self) -> Option<(&SftResult, Selection)> {
        self.pick_sft(self.sft_where(|r| matches!(r, SftRole::Lambda(_))))
    }

    /// The SFT run of `runs` with the highest a, on the validation split where all have one.
    pub fn pick_sft<'a>(&self, runs: Vec<&'a SftResult>) -> Option<(&'a SftResult, Selection)> {
        pick(
            runs,
            |x| {
                self.val_sft
                    .iter()
                    .find(|v| v.0 == x.role)
                    .map(|v| (v.1.mean, v.2.clone()))
            },
            |x| x.acc.a.mean,
        )
    }

    /// The λ runs from the standard initialization (`perception_init` false) or from the
    /// perception-only one, in increasing λ.
    pub fn lambda_runs(&self, perception_init: bool) -> Vec<(f64, &SftResult)> {
        let mut v: Vec<(f64, &SftResult)> = self
            .sft
            .iter()
            .filter_map(|r| match (r.role, perception_init) {
                (SftRole::Lambda(l), false) | (SftRole::PerceptionInitLambda(l), true) => {
                    Some((l, r))
                }
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    pub fn ngdiff(&self) -> Option<&SftResult> {
        self.sft.iter().find(|r| r.role == SftRole::Ngdiff)
    }

    /// The runs whose role `param` gives a value for, in increasing value.
    fn rl_runs_by(&self, param: impl Fn(&RlRole) -> Option<f64>) -> Vec<(f64, &RlResult)> {
        let mut v: Vec<(f64, &RlResult)> = self
            .rl
            .iter()
            .filter_map(|r| Some((param(&r.role)?, r)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    /// The runs with R = α·a_p + (1 − α)·a, in increasing α.
    pub fn alpha_runs(&self) -> Vec<(f64, &RlResult)> {
        self.rl_runs_by(|r| match r {
            RlRole::Alpha(a) => Some(*a),
            _ => None,
        })
    }

    /// The α = 0 run (the outcome reward alone).
    pub fn rl_outcome(&self) -> Option<&RlResult> {
        self.alpha_runs()
            .into_iter()
            .find(|(a, _)| *a == 0.0)
            .map(|x| x.1)
    }

    /// The α > 0 run with the highest final a, and how it was chosen: by a on the validation
    /// split where every α > 0 run has one, else by a on the test items.
    pub fn best_alpha(&self) -> Option<(&RlResult, Selection)> {
        pick(
            self.alpha_runs()
                .into_iter()
                .filter(|(a, _)| *a > 0.0)
                .map(|x| x.1)
                .collect(),
            |x| {
                self.val_rl
                    .iter()
                    .find(|v| v.0 == x.role)
                    .map(|v| (v.1.mean, v.2.clone()))
            },
            |r| r.arm().acc.a.mean,
        )
    }

    /// The run with the surrogate perception reward `name` (`self`, `teacher`).
    pub fn rl_surrogate(&self, name: &str) -> Option<&RlResult> {
        self.rl
            .iter()
            .find(|r| matches!(&r.role, RlRole::Surrogate(s) if s == name))
    }

    /// The outcome-reward runs with per-segment advantage scales, in increasing token λ.
    pub fn token_lambda_runs(&self) -> Vec<(f64, &RlResult)> {
        self.rl_runs_by(|r| match r {
            RlRole::TokenLambda(l) => Some(*l),
            _ => None,
        })
    }

    pub fn pool_r(&self, reward: &str, against: &str) -> Option<&PoolR> {
        self.pool
            .iter()
            .find(|p| p.reward == reward && p.against == against)
    }

    /// The paired difference r(`second`) − r(`first`) over the pool, each a (reward, against);
    /// found as written or reversed (then negated).
    fn pool_diff(&self, first: (&str, &str), second: (&str, &str)) -> Option<PoolDiff> {
        let is = |x: &(String, String), y: (&str, &str)| x.0 == y.0 && x.1 == y.1;
        self.pool_diffs.iter().find_map(|d| {
            if is(&d.first, first) && is(&d.second, second) {
                Some(d.clone())
            } else if is(&d.first, second) && is(&d.second, first) {
                Some(PoolDiff {
                    first: d.second.clone(),
                    second: d.first.clone(),
                    diff: d.diff.map(|v| -v),
                    lo: d.hi.map(|v| -v),
                    hi: d.lo.map(|v| -v),
                    ..d.clone()
                })
            } else {
                None
            }
        })
    }
}

fn best<T>(v: Vec<&T>, key: impl Fn(&T) -> f64) -> Option<&T> {
    // The first of equal maxima, so the choice does not depend on float noise in ties; a
    // non-finite key is never chosen.
    let mut out: Option<&T> = None;
    for x in v.into_iter().filter(|x| key(x).is_finite()) {
        if out.is_none_or(|b| key(x) > key(b)) {
            out = Some(x);
        }
    }
    out
}

/// Every artifact the report cites, with the instance that wrote it.
pub fn sources(r: &Results) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |s: &Source| {
        out.entry(s.id.clone())
            .or_insert_with(|| s.instance.clone());
    };
    for x in &r.sft {
        add(&x.source);
        x.replicates.iter().for_each(|rep| add(&rep.source));
    }
    r.sft_curves.iter().for_each(|x| add(&x.source));
    r.shares.iter().for_each(|x| add(&x.source));
    for x in &r.rl {
        add(&x.source);
        add(&x.log);
        if let Some(h) = &x.held_out {
            add(&h.source);
            h.replicates.iter().for_each(|rep| add(&rep.source));
        }
    }
    if let Some(h) = &r.rl_start {
        add(&h.source);
        h.replicates.iter().for_each(|rep| add(&rep.source));
    }
    r.pool.iter().for_each(|x| add(&x.source));
    r.pool_diffs.iter().for_each(|x| add(&x.source));
    out
}

#[cfg(test)]
mod tests;
