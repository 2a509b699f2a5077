//! synthesize: generate puzzles for one task into test / sft / rl splits, with exact solutions
//! and canonical perception text ([`crate::tasks::generate`]: no puzzle appears twice, so no
//! puzzle is in two splits; the splits share one size distribution). An optional `val` split
//! takes the puzzles generated after those, so adding it changes none of the others.

use super::{Outputs, Stage, StageError, output, outputs, write_table};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::table::cols;
use crate::tasks::generate::{SynthesizeConfig, deal};
use crate::tasks::graph_coloring as gc;
use crate::tasks::{Puzzle, TaskKind};

pub struct Synthesize;

const MAIN: OutputSpec = output("main", "puzzles");

impl Stage for Synthesize {
    const NAME: &'static str = "synthesize";
    const VERSION: u32 = 2;
    type Config = SynthesizeConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }

    fn run(cfg: &SynthesizeConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let g = &cfg.graph;
        if g.min_nodes < 2 || g.min_nodes > g.max_nodes || g.max_nodes > gc::MAX_NODES {
            return Err(StageError::Invalid(format!(
                "graph.min_nodes..graph.max_nodes must be within 2..={}",
                gc::MAX_NODES
            )));
        }
        let sd = &cfg.sudoku;
        if cfg.task == TaskKind::Sudoku && sd.givens >= sd.size.cells() {
            let n = sd.size.n();
            return Err(StageError::Invalid(format!(
                "sudoku.givens = {} leaves no cell to fill on a {n}×{n} grid: use at most {}",
                sd.givens,
                sd.size.cells() - 1
            )));
        }
        let total = cfg.splits.total();
        let dealt = deal(cfg, ctx.seed)?;
        let prefix = cfg.task.task().id_prefix();
        let (split, puzzles): (Vec<&str>, Vec<Puzzle>) = dealt.into_iter().unzip();
        let ids: Vec<String> = (0..total).map(|i| format!("{prefix}-{i:06}")).collect();
        let tasks = vec![cfg.task.name(); total];
        let text = |f: fn(&Puzzle) -> &str| cols::utf8(&puzzles.iter().map(f).collect::<Vec<_>>());
        let count = |f: fn(&Puzzle) -> Option<i32>| cols::i32_opt(puzzles.iter().map(f).collect());
        Ok(outputs([write_table(
            ctx,
            &MAIN,
            vec![
                ("id", cols::utf8(&ids)),
                ("split", cols::utf8(&split)),
                ("task", cols::utf8(&tasks)),
                ("perception", text(|p| &p.perception)),
                ("solution", text(|p| &p.solution)),
                ("nodes", count(|p| p.nodes)),
                ("edges", count(|p| p.edges)),
                ("chromatic", count(|p| p.chromatic)),
                ("givens", count(|p| p.givens)),
            ],
        )?]))
    }
}
