//! A puzzle's image from its perception text — the one way every caller draws a puzzle (the
//! `render` stage, the data benchmarks, tests). Graph coloring: a force-directed node–link
//! drawing whose placement is retried (attempt `a` keyed by `(seed, "render/layout", id, a)`)
//! until it passes the clearance check of [`super::clearance`], so the image determines the edge
//! list; Sudoku: the grid with handwritten givens from a digit bank. A pure function of its
//! arguments: the same image for the same seed whatever the thread count.

use super::Gray;
use super::digits::DigitBank;
use super::graph::{
    GraphStyle, LayoutError, MAX_LAYOUT_ATTEMPTS, NodeGeometry, clear_layout, draw_px,
};
use crate::tasks::TaskKind;
use crate::tasks::graph_coloring::Graph;
use crate::tasks::sudoku::Grid;
use crate::util::rng::keyed_str;
use serde::{Deserialize, Serialize};

/// How puzzles are drawn (the `render` stage's config).
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

/// Why a puzzle cannot be drawn.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{id}: perception is not a graph")]
    NotAGraph { id: String },
    #[error("{id}: perception is not a grid")]
    NotAGrid { id: String },
    #[error(
        "{id}: no graph layout with clearance after {} attempts (last one: {})",
        .layout.attempts, .layout.last
    )]
    NoLayout { id: String, layout: LayoutError },
    #[error("sudoku needs the `digits` input (add a digits stage)")]
    NoDigits,
    #[error("a render thread panicked")]
    Thread,
}

/// Renders one puzzle.
pub fn render_one(
    task: TaskKind,
    id: &str,
    perception: &str,
    cfg: &RenderConfig,
    bank: Option<&DigitBank>,
    seed: u64,
) -> Result<Gray, RenderError> {
    render_with_nodes(task, id, perception, cfg, bank, seed).map(|r| r.image)
}

/// Renders one puzzle and reports the node geometry of a graph. A graph whose placements all
/// fail the clearance check is an error naming the item.
pub fn render_with_nodes(
    task: TaskKind,
    id: &str,
    perception: &str,
    cfg: &RenderConfig,
    bank: Option<&DigitBank>,
    seed: u64,
) -> Result<Rendered, RenderError> {
    match task {
        TaskKind::GraphColoring => {
            let g =
                Graph::parse(perception).ok_or_else(|| RenderError::NotAGraph { id: id.into() })?;
            let layout = clear_layout(&g, cfg.size, &cfg.graph, MAX_LAYOUT_ATTEMPTS, |attempt| {
                keyed_str(seed, "render/layout", id, attempt)
            })
            .map_err(|layout| RenderError::NoLayout {
                id: id.into(),
                layout,
            })?;
            Ok(Rendered {
                image: draw_px(&g, &layout.nodes.centres, cfg.size, &cfg.graph),
                nodes: Some(layout.nodes),
            })
        }
        TaskKind::Sudoku => {
            let grid =
                Grid::parse(perception).ok_or_else(|| RenderError::NotAGrid { id: id.into() })?;
            let bank = bank.ok_or(RenderError::NoDigits)?;
            Ok(Rendered {
                image: super::sudoku::draw(&grid, bank, cfg.size, seed, id),
                nodes: None,
            })
        }
    }
}

/// One puzzle to draw: its task, id and perception text.
pub type Item<'a> = (TaskKind, &'a str, &'a str);

/// Renders `items` in order on every core (each item is a pure function of its own arguments,
/// so the result does not depend on the thread count); `done` is called after each item.
pub fn render_all(
    items: &[Item<'_>],
    cfg: &RenderConfig,
    bank: Option<&DigitBank>,
    seed: u64,
    done: &(dyn Fn() + Sync),
) -> Result<Vec<Rendered>, RenderError> {
    let n = items.len();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || -> Result<Vec<Rendered>, RenderError> {
                    chunk
                        .iter()
                        .map(|&(task, id, perception)| {
                            let r = render_with_nodes(task, id, perception, cfg, bank, seed);
                            done();
                            r
                        })
                        .collect()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(h.join().map_err(|_| RenderError::Thread)??);
        }
        Ok(all)
    })
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
        // In parallel, in order, the same images.
        let items = [
            (TaskKind::GraphColoring, "gc-1", p),
            (TaskKind::Sudoku, "sd-1", grid.as_str()),
            (TaskKind::GraphColoring, "gc-2", p),
        ];
        let count = std::sync::atomic::AtomicUsize::new(0);
        let tick = || {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let all = render_all(&items, &cfg, Some(&bank), 5, &tick).unwrap();
        assert_eq!(count.into_inner(), 3);
        for (r, &(task, id, perception)) in all.iter().zip(&items) {
            let one = render_with_nodes(task, id, perception, &cfg, Some(&bank), 5).unwrap();
            assert_eq!(*r, one);
        }
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
        assert!(matches!(e, RenderError::NoLayout { .. }), "{msg}");
        assert!(
            msg.contains("gc-77") && msg.contains("200 attempts"),
            "{msg}"
        );
    }
}
