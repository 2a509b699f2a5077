//! synthesize: generate puzzles for one task into test / sft / rl splits, with exact solutions and
//! canonical perception text. No puzzle appears twice (deduplicated by canonical text), so no
//! puzzle is in two splits.

use super::{Outputs, Stage, StageError, main_output, outputs};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::table::{self, cols};
use crate::tasks::TaskKind;
use crate::tasks::graph_coloring::{self as gc, GcGen, Graph};
use crate::tasks::sudoku::{Grid, SudokuGen};
use crate::util::rng::keyed;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Split sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Splits {
    pub test: usize,
    pub sft: usize,
    pub rl: usize,
}

impl Default for Splits {
    fn default() -> Self {
        Splits {
            test: 500,
            sft: 2000,
            rl: 16000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesizeConfig {
    pub task: TaskKind,
    pub splits: Splits,
    pub graph: GcGen,
    pub sudoku: SudokuGen,
}

impl Default for SynthesizeConfig {
    fn default() -> Self {
        SynthesizeConfig {
            task: TaskKind::GraphColoring,
            splits: Splits::default(),
            graph: GcGen::default(),
            sudoku: SudokuGen::default(),
        }
    }
}

/// One generated puzzle.
#[derive(Debug, Clone)]
pub struct Puzzle {
    pub perception: String,
    pub solution: String,
    pub nodes: Option<i32>,
    pub edges: Option<i32>,
    pub chromatic: Option<i32>,
    pub givens: Option<i32>,
}

/// Generates the puzzle for attempt number `attempt` (pure function of its arguments).
pub fn generate(cfg: &SynthesizeConfig, seed: u64, attempt: u64) -> Puzzle {
    let mut rng = keyed(seed, cfg.task.name(), attempt, 0);
    match cfg.task {
        TaskKind::GraphColoring => {
            let g = Graph::random(&mut rng, &cfg.graph);
            let (k, colors) = gc::chromatic(&g);
            Puzzle {
                perception: g.canonical(),
                solution: gc::answer_line(&colors),
                nodes: Some(g.n as i32),
                edges: Some(g.edges.len() as i32),
                chromatic: Some(k as i32),
                givens: None,
            }
        }
        TaskKind::Sudoku => {
            let (p, s) = Grid::random_puzzle(&mut rng, &cfg.sudoku);
            Puzzle {
                perception: p.canonical(),
                solution: s.canonical(),
                nodes: None,
                edges: None,
                chromatic: None,
                givens: Some(p.givens() as i32),
            }
        }
    }
}

/// Generates `total` unique puzzles; attempts are computed in parallel chunks and deduplicated in
/// attempt order, so the result does not depend on the thread count.
pub fn generate_unique(
    cfg: &SynthesizeConfig,
    seed: u64,
    total: usize,
) -> Result<Vec<Puzzle>, StageError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = 64 * threads as u64;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(total);
    let mut next = 0u64;
    let max_attempts = (total as u64).saturating_mul(50).max(10_000);
    while out.len() < total {
        if next > max_attempts {
            return Err(StageError::Invalid(format!(
                "only {} unique puzzles after {next} attempts: the generator's space is too small for {total}",
                out.len()
            )));
        }
        let base = next;
        let batch: Vec<Puzzle> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    s.spawn(move || {
                        (base + t..base + chunk)
                            .step_by(threads)
                            .map(|a| (a, generate(cfg, seed, a)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all: Vec<(u64, Puzzle)> = handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect();
            all.sort_by_key(|(a, _)| *a);
            all.into_iter().map(|(_, p)| p).collect()
        });
        next += chunk;
        for p in batch {
            if out.len() < total && seen.insert(p.perception.clone()) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

pub struct Synthesize;

impl Stage for Synthesize {
    const NAME: &'static str = "synthesize";
    const VERSION: u32 = 1;
    type Config = SynthesizeConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![]
    }
    fn outputs() -> Vec<OutputSpec> {
        main_output("puzzles")
    }

    fn run(cfg: &SynthesizeConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let g = &cfg.graph;
        if g.min_nodes < 2 || g.min_nodes > g.max_nodes || g.max_nodes > gc::MAX_NODES {
            return Err(StageError::Invalid(format!(
                "graph.min_nodes..graph.max_nodes must be within 2..={}",
                gc::MAX_NODES
            )));
        }
        let total = cfg.splits.test + cfg.splits.sft + cfg.splits.rl;
        let puzzles = generate_unique(cfg, ctx.seed, total)?;
        let prefix = match cfg.task {
            TaskKind::GraphColoring => "gc",
            TaskKind::Sudoku => "sd",
        };
        let mut split = Vec::with_capacity(total);
        for (name, n) in [
            ("test", cfg.splits.test),
            ("sft", cfg.splits.sft),
            ("rl", cfg.splits.rl),
        ] {
            split.extend(std::iter::repeat_n(name, n));
        }
        let ids: Vec<String> = (0..total).map(|i| format!("{prefix}-{i:06}")).collect();
        let tasks = vec![cfg.task.name(); total];
        let mut w = ctx
            .store
            .writer("puzzles", table::schema("puzzles")?.version)?;
        let rows = table::write(
            &mut w,
            "puzzles",
            vec![
                cols::utf8(&ids),
                cols::utf8(&split),
                cols::utf8(&tasks),
                cols::utf8(
                    &puzzles
                        .iter()
                        .map(|p| p.perception.as_str())
                        .collect::<Vec<_>>(),
                ),
                cols::utf8(
                    &puzzles
                        .iter()
                        .map(|p| p.solution.as_str())
                        .collect::<Vec<_>>(),
                ),
                cols::i32_opt(puzzles.iter().map(|p| p.nodes).collect()),
                cols::i32_opt(puzzles.iter().map(|p| p.edges).collect()),
                cols::i32_opt(puzzles.iter().map(|p| p.chromatic).collect()),
                cols::i32_opt(puzzles.iter().map(|p| p.givens).collect()),
            ],
        )?;
        let id = ctx.commit(w, Some(rows))?;
        Ok(outputs(&[("main", id)]))
    }
}
