//! render: draw every puzzle as a PNG with [`crate::render::puzzle`] (graph coloring: a
//! force-directed node–link drawing with labelled nodes whose image determines the edge list;
//! Sudoku: the grid with handwritten givens). Layout and digit choices are keyed by (seed, item
//! id), so images are byte-identical for the same seed whatever the thread count; a graph's node
//! centres and radius are stored beside its image (`node_x`, `node_y`, `node_radius`).

use super::{
    Outputs, Stage, StageError, input, optional, output, outputs, read_input, read_optional,
    write_table,
};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::render::graph::NodeGeometry;
use crate::render::puzzle::{RenderConfig, render_all};
use crate::table::cols;
use crate::tasks::TaskKind;

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
        let items: Vec<_> = (0..n)
            .map(|i| (kinds[i], ids[i].as_str(), percs[i].as_str()))
            .collect();
        let bar = crate::progress::bar(n as u64, "render");
        let rendered = render_all(&items, cfg, bank.as_ref(), ctx.seed, &|| bar.inc(1))?;
        bar.finish_and_clear();
        let rendered: Vec<Encoded> = rendered
            .into_iter()
            .map(|r| (r.image.to_png(), r.nodes))
            .collect();
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
