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

use crate::text::format;
use crate::text::tokenizer::{P_CLOSE, P_OPEN, R_CLOSE, R_OPEN, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// File name of the tokenizer inside token-bearing artifacts.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Teacher trace verbosity (0 terse … 3 paper-like; see the tasks' `trace` docs).
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

/// The teacher's reasoning for one puzzle.
pub fn teacher_reasoning(task: TaskKind, perception: &str, verbosity: u8) -> Option<String> {
    task.task().trace(perception, verbosity)
}

/// A formatted, tokenized target with its spans.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub prompt_ids: Vec<i32>,
    pub target_ids: Vec<i32>,
    /// (name, start, end) over `target_ids`.
    pub spans: Vec<(String, i32, i32)>,
}

/// Tokenizes prompt and target so that span boundaries fall exactly between tokens.
pub fn encode(tok: &Tokenizer, prompt: &str, perception: &str, reasoning: &str) -> Encoded {
    let ids = |s: &str| {
        tok.encode(s)
            .into_iter()
            .map(|x| x as i32)
            .collect::<Vec<i32>>()
    };
    let mut prompt_ids = vec![tok.bos() as i32];
    prompt_ids.extend(ids(prompt));
    let mut t = Vec::new();
    t.extend(ids(P_OPEN));
    t.extend(ids(perception));
    t.extend(ids(P_CLOSE));
    let p_end = t.len() as i32;
    t.extend(ids(R_OPEN));
    // Split the reasoning before its final answer so the answer is a span of its own.
    let cut = reasoning.rfind("answer").unwrap_or(reasoning.len());
    t.extend(ids(&reasoning[..cut]));
    let a_start = t.len() as i32;
    t.extend(ids(&reasoning[cut..]));
    let a_end = t.len() as i32;
    t.extend(ids(R_CLOSE));
    t.push(tok.eos() as i32);
    let end = t.len() as i32;
    Encoded {
        prompt_ids,
        target_ids: t,
        spans: vec![
            ("perception".into(), 0, p_end),
            ("reasoning".into(), p_end, end),
            ("answer".into(), a_start, a_end),
        ],
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
        if cfg.verbosity > 3 {
            return Err(StageError::Invalid("verbosity must be 0..=3".into()));
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
        let ids = puzzles.required_strings("id")?;
        let splits = puzzles.required_strings("split")?;
        let tasks = puzzles.required_strings("task")?;
        let percs = puzzles.required_strings("perception")?;
        /// (puzzle row, prompt, reasoning, target, encoding, image row)
        type Row = (usize, String, String, String, Encoded, usize);
        let mut rows: Vec<Row> = Vec::new();
        for i in 0..ids.len() {
            if !cfg.splits.is_empty() && !cfg.splits.contains(&splits[i]) {
                continue;
            }
            let task = TaskKind::parse(&tasks[i]).ok_or_else(|| {
                StageError::Invalid(format!("{}: unknown task `{}`", ids[i], tasks[i]))
            })?;
            let reasoning = match &external {
                Some(map) => map.get(&ids[i]).cloned().ok_or_else(|| {
                    StageError::Invalid(format!(
                        "imported reasoning has no row for item `{}` (restrict `splits` or complete the file)",
                        ids[i]
                    ))
                })?,
                None => teacher_reasoning(task, &percs[i], cfg.verbosity)
                    .ok_or_else(|| StageError::Invalid(format!("{}: unparseable perception", ids[i])))?,
            };
            let img = *image_of.get(ids[i].as_str()).ok_or_else(|| {
                StageError::Invalid(format!("no rendered image for item `{}`", ids[i]))
            })?;
            let prompt = task.prompt().to_string();
            let enc = encode(&tok, &prompt, &percs[i], &reasoning);
            let target = format::build(&percs[i], &reasoning);
            rows.push((i, prompt, reasoning, target, enc, img));
        }
        let pick =
            |f: &dyn Fn(usize) -> String| -> Vec<String> { rows.iter().map(|r| f(r.0)).collect() };
        let span_col = |k: usize| -> Vec<Vec<i32>> {
            rows.iter()
                .map(|r| {
                    r.4.spans
                        .iter()
                        .map(|s| if k == 0 { s.1 } else { s.2 })
                        .collect()
                })
                .collect()
        };
        let len_of = |name: &str| -> Vec<i32> {
            rows.iter()
                .map(|r| {
                    r.4.spans
                        .iter()
                        .find(|s| s.0 == name)
                        .map(|s| s.2 - s.1)
                        .unwrap_or(0)
                })
                .collect()
        };
        let text = |f: &dyn Fn(&Row) -> &str| cols::utf8(&rows.iter().map(f).collect::<Vec<_>>());
        let ints = |f: &dyn Fn(&Encoded) -> Vec<i32>| {
            cols::list_i32(&rows.iter().map(|r| f(&r.4)).collect::<Vec<_>>())
        };
        Ok(outputs([write_table_with_files(
            ctx,
            &MAIN,
            vec![
                ("id", cols::utf8(&pick(&|i| ids[i].clone()))),
                ("split", cols::utf8(&pick(&|i| splits[i].clone()))),
                ("task", cols::utf8(&pick(&|i| tasks[i].clone()))),
                (
                    "image",
                    cols::image(
                        &rows
                            .iter()
                            .map(|r| image_bytes.value(r.5).to_vec())
                            .collect::<Vec<_>>(),
                        &pick(&|i| format!("{}.png", ids[i])),
                    ),
                ),
                ("prompt", text(&|r| &r.1)),
                ("perception", cols::utf8(&pick(&|i| percs[i].clone()))),
                ("reasoning", text(&|r| &r.2)),
                ("target", text(&|r| &r.3)),
                ("prompt_ids", ints(&|e| e.prompt_ids.clone())),
                ("target_ids", ints(&|e| e.target_ids.clone())),
                (
                    "span_names",
                    cols::list_utf8(
                        &rows
                            .iter()
                            .map(|r| r.4.spans.iter().map(|s| s.0.clone()).collect())
                            .collect::<Vec<_>>(),
                    ),
                ),
                ("span_starts", cols::list_i32(&span_col(0))),
                ("span_ends", cols::list_i32(&span_col(1))),
                ("perception_tokens", cols::i32(len_of("perception"))),
                ("reasoning_tokens", cols::i32(len_of("reasoning"))),
            ],
            &[(TOKENIZER_FILE, tok.to_json().as_bytes())],
        )?]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_segments_exactly() {
        let tok = Tokenizer::task_vocabulary();
        let p = "nodes 3\nedges 0-1 1-2";
        let r = "order 1 0 2\nanswer 0:1 1:2 2:1";
        let e = encode(&tok, "color", p, r);
        let dec = |a: i32, b: i32| {
            tok.decode(
                &e.target_ids[a as usize..b as usize]
                    .iter()
                    .map(|&x| x as u32)
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            dec(e.spans[0].1, e.spans[0].2),
            format!("{P_OPEN}{p}{P_CLOSE}")
        );
        assert_eq!(
            dec(e.spans[1].1, e.spans[1].2),
            format!("{R_OPEN}{r}{R_CLOSE}")
        );
        assert_eq!(dec(e.spans[2].1, e.spans[2].2), "answer 0:1 1:2 2:1");
        assert_eq!(e.spans[1].2 as usize, e.target_ids.len());
        assert_eq!(*e.target_ids.last().unwrap(), tok.eos() as i32);
        assert_eq!(e.prompt_ids[0], tok.bos() as i32);
    }

    #[test]
    fn paper_verbosity_puts_perception_at_two_to_three_percent() {
        use crate::stages::synthesize::{SynthesizeConfig, generate};
        let tok = Tokenizer::task_vocabulary();
        for task in [TaskKind::GraphColoring, TaskKind::Sudoku] {
            let cfg = SynthesizeConfig {
                task,
                ..SynthesizeConfig::default()
            };
            let (mut p, mut total) = (0, 0);
            for i in 0..60 {
                let perception = generate(&cfg, 7, i).perception;
                let r = teacher_reasoning(task, &perception, 3).unwrap();
                let e = encode(&tok, task.prompt(), &perception, &r);
                p += e.spans[0].2 - e.spans[0].1;
                total += e.target_ids.len() as i32;
            }
            let share = p as f64 / total as f64;
            assert!((0.02..=0.035).contains(&share), "{task:?}: {share}");
        }
    }
}
