//! render: draw every puzzle as a PNG (graph coloring: force-directed node–link drawing with
//! labelled nodes; Sudoku: grid with handwritten givens). Layout and digit choices are keyed by
//! (seed, item id), so images are byte-identical for the same seed whatever the thread count.
//!
//! A graph's placement is retried (attempt `a` keyed by `(seed, "render/layout", id, a)`, attempt 0
//! first) until its drawing passes the clearance check of [`crate::render::clearance`] in pixels of
//! the stored image, so the image determines the edge list; the node centres and radius are stored
//! beside the image (`node_x`, `node_y`, `node_radius`).

use super::{
    Outputs, Stage, StageError, input, optional, output, outputs, read_input, read_optional,
    write_table,
};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::render::digits::DigitBank;
use crate::render::graph::{
    GraphStyle, MAX_LAYOUT_ATTEMPTS, NodeGeometry, clear_layout, draw_px as draw_graph,
};
use crate::render::{Gray, sudoku};
use crate::table::cols;
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

/// One rendered puzzle: the image and, for a graph, where its nodes are in the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub image: Gray,
    pub nodes: Option<NodeGeometry>,
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
    render_with_nodes(task, id, perception, cfg, bank, seed).map(|r| r.image)
}

/// Renders one puzzle and reports the node geometry of a graph (pure function of its arguments).
/// A graph whose placements all fail the clearance check is an error naming the item.
pub fn render_with_nodes(
    task: TaskKind,
    id: &str,
    perception: &str,
    cfg: &RenderConfig,
    bank: Option<&DigitBank>,
    seed: u64,
) -> Result<Rendered, StageError> {
    match task {
        TaskKind::GraphColoring => {
            let g = Graph::parse(perception)
                .ok_or_else(|| StageError::Invalid(format!("{id}: perception is not a graph")))?;
            let layout = clear_layout(&g, cfg.size, &cfg.graph, MAX_LAYOUT_ATTEMPTS, |attempt| {
                keyed_str(seed, "render/layout", id, attempt)
            })
            .map_err(|e| {
                StageError::Invalid(format!(
                    "{id}: no graph layout with clearance after {} attempts (last one: {})",
                    e.attempts, e.last
                ))
            })?;
            Ok(Rendered {
                image: draw_graph(&g, &layout.nodes.centres, cfg.size, &cfg.graph),
                nodes: Some(layout.nodes),
            })
        }
        TaskKind::Sudoku => {
            let grid = Grid::parse(perception)
                .ok_or_else(|| StageError::Invalid(format!("{id}: perception is not a grid")))?;
            let bank = bank.ok_or_else(|| {
                StageError::Invalid("sudoku needs the `digits` input (add a digits stage)".into())
            })?;
            Ok(Rendered {
                image: sudoku::draw(&grid, bank, cfg.size, seed, id),
                nodes: None,
            })
        }
    }
}

pub struct Render;

/// One rendered row: PNG bytes and the node geometry of a graph.
type Encoded = (Vec<u8>, Option<NodeGeometry>);

const PUZZLES: InputSpec = input("puzzles", "puzzles");
const DIGITS: InputSpec = optional("digits", "digits");
const MAIN: OutputSpec = output("main", "images");

impl Stage for Render {
    const NAME: &'static str = "render";
    const VERSION: u32 = 2;
    type Config = RenderConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![PUZZLES, DIGITS]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }

    fn run(cfg: &RenderConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        if !(32..=2048).contains(&cfg.size) {
            return Err(StageError::Invalid("size must be within 32..=2048".into()));
        }
        let puzzles = read_input(ctx, &PUZZLES)?;
        let (bank, source) = match read_optional(ctx, &DIGITS)? {
            Some(t) => {
                let (b, s) = super::artifacts::load_bank(&t)?;
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
        let rendered: Vec<Encoded> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(per)
                .map(|start| {
                    let (ids, percs, kinds, bank, bar) =
                        (&ids, &percs, &kinds, bank.as_ref(), &bar);
                    s.spawn(move || -> Result<Vec<Encoded>, StageError> {
                        (start..(start + per).min(n))
                            .map(|i| {
                                bar.inc(1);
                                let r = render_with_nodes(
                                    kinds[i], &ids[i], &percs[i], cfg, bank, ctx.seed,
                                )?;
                                Ok((r.image.to_png(), r.nodes))
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
        let (pngs, nodes): (Vec<Vec<u8>>, Vec<Option<NodeGeometry>>) = rendered.into_iter().unzip();
        let coord = |axis: fn(&(f32, f32)) -> f32| -> Vec<Option<Vec<f32>>> {
            nodes
                .iter()
                .map(|g| g.as_ref().map(|g| g.centres.iter().map(axis).collect()))
                .collect()
        };
        let paths: Vec<String> = ids.iter().map(|id| format!("{id}.png")).collect();
        let digit_source: Vec<Option<String>> = kinds
            .iter()
            .map(|k| (*k == TaskKind::Sudoku).then(|| source.clone().unwrap_or_default()))
            .collect();
        Ok(outputs([write_table(
            ctx,
            &MAIN,
            vec![
                ("id", cols::utf8(&ids)),
                ("split", cols::utf8(&splits)),
                ("task", cols::utf8(&tasks)),
                ("image", cols::image(&pngs, &paths)),
                ("width", cols::i32(vec![cfg.size as i32; n])),
                ("height", cols::i32(vec![cfg.size as i32; n])),
                ("digit_source", cols::utf8_opt(&digit_source)),
                ("node_x", cols::list_f32_opt(&coord(|c| c.0))),
                ("node_y", cols::list_f32_opt(&coord(|c| c.1))),
                (
                    "node_radius",
                    cols::f32_opt(nodes.iter().map(|g| g.as_ref().map(|g| g.radius)).collect()),
                ),
            ],
        )?]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_renders_report_their_nodes_and_sudoku_renders_none() {
        let cfg = RenderConfig::default();
        let p = "nodes 6\nedges 0-1 0-2 1-2 2-3 3-4 4-5";
        let r = render_with_nodes(TaskKind::GraphColoring, "gc-1", p, &cfg, None, 5).unwrap();
        let nodes = r.nodes.unwrap();
        assert_eq!(nodes.centres.len(), 6);
        assert_eq!(nodes.radius, 0.055 * 224.0);
        let img = render_one(TaskKind::GraphColoring, "gc-1", p, &cfg, None, 5).unwrap();
        assert_eq!(img, r.image);
        let bank = DigitBank::strokes(2, 0);
        let grid = vec![".".repeat(9); 9].join("\n");
        let r = render_with_nodes(TaskKind::Sudoku, "sd-1", &grid, &cfg, Some(&bank), 5);
        assert_eq!(r.map(|r| r.nodes.is_none()).ok(), Some(true));
    }

    #[test]
    fn a_graph_without_a_clear_layout_is_an_error_naming_the_item() {
        let cfg = RenderConfig {
            graph: GraphStyle {
                node_radius: 0.3,
                ..GraphStyle::default()
            },
            ..RenderConfig::default()
        };
        let p = Graph::new(9, (0..9).flat_map(|u| (u + 1..9).map(move |v| (u, v))))
            .map(|g| g.canonical())
            .unwrap_or_default();
        let e = render_one(TaskKind::GraphColoring, "gc-77", &p, &cfg, None, 5).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StageError::Invalid(_)), "{msg}");
        assert!(
            msg.contains("gc-77") && msg.contains("200 attempts"),
            "{msg}"
        );
    }
}
