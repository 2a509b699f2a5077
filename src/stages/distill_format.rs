//! distill-format: build SFT targets `<perception>p*</perception><reasoning>…</reasoning>` with
//! the reasoning written by a programmatic teacher (the exact solver's own trace, at a chosen
//! verbosity) or taken from an imported `reasoning` artifact. Writes token ids and named token
//! spans (perception, reasoning, answer) so training can weight losses per span, and stores the
//! tokenizer with the artifact. The rendered image is carried along, so the artifact is a
//! self-contained training set (image + target), like an HF dataset.

use super::model_io::TOKENIZER_FILE;
use super::{
    Outputs, Stage, StageError, input, optional, output, outputs, read_input, read_optional,
    write_table_with_files,
};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::table::cols;
use crate::tasks::TaskKind;

use crate::text::format::{self, Encoded};
use crate::text::tokenizer::Tokenizer;
use arrow::array::ArrayRef;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Teacher trace verbosity (0 terse … 3 paper-like, 4 for Sudoku: the grid after every
    /// placement; see the tasks' `trace` docs).
    pub verbosity: u8,
    /// Splits to format (empty = all).
    pub splits: Vec<String>,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            verbosity: 3,
            splits: vec![],
        }
    }
}

pub struct DistillFormat;

const PUZZLES: InputSpec = input("puzzles", "puzzles");
const IMAGES: InputSpec = input("images", "images");
const REASONING: InputSpec = optional("reasoning", "reasoning");
const MAIN: OutputSpec = output("main", "sft_targets");

impl Stage for DistillFormat {
    const NAME: &'static str = "distill-format";
    const VERSION: u32 = 1;
    type Config = DistillConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![PUZZLES, IMAGES, REASONING]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }

    fn run(cfg: &DistillConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        if cfg.verbosity > 4 {
            return Err(StageError::Invalid("verbosity must be 0..=4".into()));
        }
        let puzzles = read_input(ctx, &PUZZLES)?;
        let external: Option<HashMap<String, String>> = match read_optional(ctx, &REASONING)? {
            Some(t) => Some(
                t.required_strings("id")?
                    .into_iter()
                    .zip(t.required_strings("reasoning")?)
                    .collect(),
            ),
            None => None,
        };
        let images = read_input(ctx, &IMAGES)?;
        let image_ids = images.required_strings("id")?;
        let image_bytes = images.image_bytes("image")?;
        let image_of: HashMap<&str, usize> = image_ids
            .iter()
            .enumerate()
            .map(|(k, id)| (id.as_str(), k))
            .collect();
        let tok = Tokenizer::task_vocabulary();
        let items = Items {
            ids: puzzles.required_strings("id")?,
            splits: puzzles.required_strings("split")?,
            tasks: puzzles.required_strings("task")?,
            percs: puzzles.required_strings("perception")?,
        };
        let rows = items.format(cfg, external.as_ref(), &image_of, &tok)?;
        let images: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| image_bytes.value(r.image).to_vec())
            .collect();
        Ok(outputs([write_table_with_files(
            ctx,
            &MAIN,
            items.columns(&rows, &images),
            &[(TOKENIZER_FILE, tok.to_json().as_bytes())],
        )?]))
    }
}

/// The puzzle table's columns this stage reads, a row per item.
struct Items {
    ids: Vec<String>,
    splits: Vec<String>,
    tasks: Vec<String>,
    percs: Vec<String>,
}

/// One formatted item.
struct Row {
    /// Its row in [`Items`].
    item: usize,
    prompt: String,
    reasoning: String,
    target: String,
    enc: Encoded,
    /// Its row in the images table.
    image: usize,
}

impl Items {
    /// The items of the configured splits, each with its teacher (or imported) reasoning, its
    /// target text and its encoding.
    fn format(
        &self,
        cfg: &DistillConfig,
        external: Option<&HashMap<String, String>>,
        image_of: &HashMap<&str, usize>,
        tok: &Tokenizer,
    ) -> Result<Vec<Row>, StageError> {
        let (ids, percs) = (&self.ids, &self.percs);
        let mut rows = Vec::new();
        for i in 0..ids.len() {
            if !cfg.splits.is_empty() && !cfg.splits.contains(&self.splits[i]) {
                continue;
            }
            let task = TaskKind::parse(&self.tasks[i]).ok_or_else(|| {
                StageError::Invalid(format!("{}: unknown task `{}`", ids[i], self.tasks[i]))
            })?;
            if cfg.verbosity == 4 && task != TaskKind::Sudoku {
                return Err(StageError::Invalid(format!(
                    "{}: verbosity 4 (the grid restated after every placement) is Sudoku's; \
                     {} traces go up to 3",
                    ids[i],
                    task.name()
                )));
            }
            let reasoning = match external {
                Some(map) => map.get(&ids[i]).cloned().ok_or_else(|| {
                    StageError::Invalid(format!(
                        "imported reasoning has no row for item `{}` (restrict `splits` or complete the file)",
                        ids[i]
                    ))
                })?,
                None => task.task().trace(&percs[i], cfg.verbosity).ok_or_else(|| {
                    StageError::Invalid(format!("{}: unparseable perception", ids[i]))
                })?,
            };
            let image = *image_of.get(ids[i].as_str()).ok_or_else(|| {
                StageError::Invalid(format!("no rendered image for item `{}`", ids[i]))
            })?;
            let prompt = task.prompt().to_string();
            let enc = format::encode(tok, &prompt, &percs[i], &reasoning);
            let target = format::build(&percs[i], &reasoning);
            rows.push(Row {
                item: i,
                prompt,
                reasoning,
                target,
                enc,
                image,
            });
        }
        Ok(rows)
    }

    /// The `sft_targets` columns of `rows` (`images`: each row's PNG bytes).
    fn columns(&self, rows: &[Row], images: &[Vec<u8>]) -> Vec<(&'static str, ArrayRef)> {
        let pick =
            |col: &[String]| cols::utf8(&rows.iter().map(|r| &col[r.item]).collect::<Vec<_>>());
        let span_col = |k: usize| -> Vec<Vec<i32>> {
            rows.iter()
                .map(|r| {
                    r.enc
                        .spans
                        .iter()
                        .map(|s| if k == 0 { s.1 } else { s.2 })
                        .collect()
                })
                .collect()
        };
        let len_of = |name: &str| -> Vec<i32> {
            rows.iter()
                .map(|r| {
                    r.enc
                        .spans
                        .iter()
                        .find(|s| s.0 == name)
                        .map(|s| s.2 - s.1)
                        .unwrap_or(0)
                })
                .collect()
        };
        let text = |f: &dyn Fn(&Row) -> &str| cols::utf8(&rows.iter().map(f).collect::<Vec<_>>());
        let ints = |f: &dyn Fn(&Encoded) -> Vec<i32>| {
            cols::list_i32(&rows.iter().map(|r| f(&r.enc)).collect::<Vec<_>>())
        };
        let file_names: Vec<String> = rows
            .iter()
            .map(|r| format!("{}.png", self.ids[r.item]))
            .collect();
        vec![
            ("id", pick(&self.ids)),
            ("split", pick(&self.splits)),
            ("task", pick(&self.tasks)),
            ("image", cols::image(images, &file_names)),
            ("prompt", text(&|r| &r.prompt)),
            ("perception", pick(&self.percs)),
            ("reasoning", text(&|r| &r.reasoning)),
            ("target", text(&|r| &r.target)),
            ("prompt_ids", ints(&|e| e.prompt_ids.clone())),
            ("target_ids", ints(&|e| e.target_ids.clone())),
            (
                "span_names",
                cols::list_utf8(
                    &rows
                        .iter()
                        .map(|r| r.enc.spans.iter().map(|s| s.0.clone()).collect())
                        .collect::<Vec<_>>(),
                ),
            ),
            ("span_starts", cols::list_i32(&span_col(0))),
            ("span_ends", cols::list_i32(&span_col(1))),
            ("perception_tokens", cols::i32(len_of("perception"))),
            ("reasoning_tokens", cols::i32(len_of("reasoning"))),
        ]
    }
}
