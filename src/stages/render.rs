//! render: draw every puzzle as a PNG (graph coloring: force-directed node–link drawing with
//! labelled nodes; Sudoku: grid with handwritten givens). Layout and digit choices are keyed by
//! (seed, item id), so images are byte-identical for the same seed whatever the thread count.

use super::{Outputs, Stage, StageError, input, main_output, optional, outputs};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::render::digits::DigitBank;
use crate::render::graph::{GraphStyle, draw as draw_graph, spring_layout};
use crate::render::{Gray, sudoku};
use crate::table::{self, Table, cols};
use crate::tasks::TaskKind;
use crate::tasks::graph_coloring::Graph;
use crate::tasks::sudoku::Grid;
use crate::util::rng::keyed_str;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderConfig {
    /// Image width and height in pixels.
    pub size: u32,
    pub graph: GraphStyle,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            size: 224,
            graph: GraphStyle::default(),
        }
    }
}

/// Renders one puzzle (pure function of its arguments).
pub fn render_one(
    task: TaskKind,
    id: &str,
    perception: &str,
    cfg: &RenderConfig,
    bank: Option<&DigitBank>,
    seed: u64,
) -> Result<Gray, StageError> {
    match task {
        TaskKind::GraphColoring => {
            let g = Graph::parse(perception)
                .ok_or_else(|| StageError::Invalid(format!("{id}: perception is not a graph")))?;
            let mut rng = keyed_str(seed, "render/layout", id, 0);
            let pos = spring_layout(&g, cfg.graph.iterations, &mut rng);
            Ok(draw_graph(&g, &pos, cfg.size, &cfg.graph))
        }
        TaskKind::Sudoku => {
            let grid = Grid::parse(perception)
                .ok_or_else(|| StageError::Invalid(format!("{id}: perception is not a grid")))?;
            let bank = bank.ok_or_else(|| {
                StageError::Invalid("sudoku needs the `digits` input (add a digits stage)".into())
            })?;
            Ok(sudoku::draw(&grid, bank, cfg.size, seed, id))
        }
    }
}

pub struct Render;

impl Stage for Render {
    const NAME: &'static str = "render";
    const VERSION: u32 = 1;
    type Config = RenderConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![input("puzzles", "puzzles"), optional("digits", "digits")]
    }
    fn outputs() -> Vec<OutputSpec> {
        main_output("images")
    }

    fn run(cfg: &RenderConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        if !(32..=2048).contains(&cfg.size) {
            return Err(StageError::Invalid("size must be within 32..=2048".into()));
        }
        let puzzles = Table::read(
            ctx.store,
            ctx.input("puzzles").unwrap_or_default(),
            "puzzles",
        )?;
        let (bank, source) = match ctx.input("digits") {
            Some(id) => {
                let (b, s) = super::digits::load_bank(&Table::read(ctx.store, id, "digits")?)?;
                (Some(b), Some(s))
            }
            None => (None, None),
        };
        let ids = puzzles.required_strings("id")?;
        let splits = puzzles.required_strings("split")?;
        let tasks = puzzles.required_strings("task")?;
        let percs = puzzles.required_strings("perception")?;
        let kinds: Vec<TaskKind> = tasks
            .iter()
            .map(|t| {
                TaskKind::parse(t).ok_or_else(|| StageError::Invalid(format!("unknown task `{t}`")))
            })
            .collect::<Result<_, _>>()?;
        let n = ids.len();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let per = n.div_ceil(threads).max(1);
        let bar = crate::progress::bar(n as u64, "render");
        let pngs: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(per)
                .map(|start| {
                    let (ids, percs, kinds, bank, bar) =
                        (&ids, &percs, &kinds, bank.as_ref(), &bar);
                    s.spawn(move || -> Result<Vec<Vec<u8>>, StageError> {
                        (start..(start + per).min(n))
                            .map(|i| {
                                bar.inc(1);
                                Ok(
                                    render_one(kinds[i], &ids[i], &percs[i], cfg, bank, ctx.seed)?
                                        .to_png(),
                                )
                            })
                            .collect()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(n);
            for h in handles {
                all.extend(
                    h.join()
                        .map_err(|_| StageError::Invalid("render thread panicked".into()))??,
                );
            }
            Ok::<_, StageError>(all)
        })?;
        bar.finish_and_clear();
        let paths: Vec<String> = ids.iter().map(|id| format!("{id}.png")).collect();
        let digit_source: Vec<Option<String>> = kinds
            .iter()
            .map(|k| (*k == TaskKind::Sudoku).then(|| source.clone().unwrap_or_default()))
            .collect();
        let mut w = ctx
            .store
            .writer("images", table::schema("images")?.version)?;
        let rows = table::write(
            &mut w,
            "images",
            vec![
                cols::utf8(&ids),
                cols::utf8(&splits),
                cols::utf8(&tasks),
                cols::image(&pngs, &paths),
                cols::i32(vec![cfg.size as i32; n]),
                cols::i32(vec![cfg.size as i32; n]),
                cols::utf8_opt(&digit_source),
            ],
        )?;
        Ok(outputs(&[("main", ctx.commit(w, Some(rows))?)]))
    }
}
