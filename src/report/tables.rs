//! The paper's tables: every cell one value (with its interval, where it has one) and the
//! artifact it came from.

use super::{Accuracies, Arm, Estimate, Results, RlResult, RlRole, Source};

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
    /// A run's rows: one, or one per seed of a replicated run (each cell citing that seed's
    /// evaluation; the findings read the seeds merged).
    fn arm(&mut self, label: &str, arm: &Arm) {
        if arm.replicates.is_empty() {
            self.accuracies(label, arm.acc, arm.source);
        }
        for rep in arm.replicates {
            self.accuracies(
                &format!("{label} (seed {})", rep.seed),
                &rep.acc,
                &rep.source,
            );
        }
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

/// The paper's tables from `r`; tables without data are left out.
pub fn tables(r: &Results) -> Vec<Table> {
    let mut out = Vec::new();

    let mut t = Builder::new("table1_sft");
    for s in &r.sft {
        t.arm(&s.role.label(), &s.arm());
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
    if let Some(start) = r.rl_start_arm() {
        t.arm("initialization", &start);
    }
    for (_, run) in r.alpha_runs().into_iter().chain(r.token_lambda_runs()) {
        let end = run.arm();
        t.arm(&end.label, &end);
    }
    if !t.cells.is_empty() {
        out.push(t.done(
            "Table 2 — after RL",
            "Held-out a, a_p, a_r (the `evaluate` stage's evaluation where the grid wires one, \
             else the loop's own greedy one) of the starting checkpoint and after the last step \
             of each run with R = α·a_p + (1 − α)·a (α = 0: the outcome reward alone), and of the \
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
        if let Some(p) = r.start_coupling(run) {
            t.val(&row, "r(R, a_p) before training", p.r, &p.source);
        }
        t.val(&row, "r(R, a_p)", run.r_a_p, &run.log);
        t.val(&row, "r(R, ã_r)", run.r_a_tilde_r, &run.log);
        let end = run.arm();
        t.arm(&row, &end);
    }
    if !t.cells.is_empty() {
        out.push(t.done(
            "Table 3 — RL with α = 0.5 under each perception reward",
            "Pearson r of the training reward with a_p: before training, over the pool of the \
             starting policy's rollouts (where the grid composes the run's reward there), and \
             with a_p and ã_r over all of the run's own rollouts; the held-out a, a_p, a_r \
             after the last step.",
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
