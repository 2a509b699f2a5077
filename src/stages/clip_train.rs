//! clip-train: the dual encoder behind the CLIP surrogate perception reward (see
//! [`crate::clip`]), trained contrastively on the (image, p*) pairs of the training split and
//! measured by held-out image→text retrieval. reward-score reads it through input `clip`.
//!
//! The text encoder reads up to 1.5× the longest p* of the data in tokens, so a generated
//! perception somewhat longer than any true one is still scored.

use super::model_io::{CLIP_KIND, read_examples, read_tokenizer, write_clip};
use super::{
    Outputs, Stage, StageError, Written, ensure, input, input_id, output, outputs, write_table,
};
use crate::clip::ClipConfig;
use crate::clip::train::{ClipLogRow, ClipTrainSettings, Pair, retrieval_accuracy, train};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::model::DeviceSpec;
use crate::model::checkpoint::weights_to_bytes;
use crate::table::cols;
use crate::text::Tokenizer;
use burn::backend::Autodiff;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClipTrainConfig {
    /// Images are read at this size (the rendered size, or a resize of it).
    pub image_size: usize,
    pub patch_size: usize,
    /// Channels of the conv stem (0 = linear patches).
    pub conv_stem: usize,
    pub dim: usize,
    pub image_layers: usize,
    pub text_layers: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub embed_dim: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub train_split: String,
    pub eval_split: String,
    /// Held-out pairs for the retrieval accuracy (0 = the whole split).
    pub eval_items: usize,
}

impl Default for ClipTrainConfig {
    fn default() -> Self {
        ClipTrainConfig {
            image_size: 128,
            patch_size: 16,
            conv_stem: 16,
            dim: 96,
            image_layers: 2,
            text_layers: 2,
            heads: 4,
            mlp_ratio: 2,
            embed_dim: 64,
            steps: 300,
            batch_size: 32,
            // At 1e-3 the encoders collapse onto one embedding within ten steps on Sudoku
            // (retrieval at chance); at 1e-4 held-out retrieval reaches 0.98 by step 150.
            lr: 1e-4,
            min_lr: 1e-5,
            warmup_ratio: 0.05,
            weight_decay: 0.01,
            grad_clip: 1.0,
            train_split: "sft".into(),
            eval_split: "test".into(),
            eval_items: 256,
        }
    }
}

pub struct ClipTrain;

const DATA: InputSpec = input("data", "sft_targets");
const MAIN: OutputSpec = output("main", CLIP_KIND);
const LOG: OutputSpec = output("log", "clip_log");

/// Pairs of the examples' images and tokenized p*.
fn tokenized(examples: &[crate::data::Example], tok: &Tokenizer) -> Vec<Vec<u32>> {
    examples
        .iter()
        .map(|e| tok.encode(e.perception.trim()))
        .collect()
}

fn pairs<'a>(examples: &'a [crate::data::Example], texts: &'a [Vec<u32>]) -> Vec<Pair<'a>> {
    examples
        .iter()
        .zip(texts)
        .map(|(e, t)| Pair {
            image: &e.image,
            text: t,
        })
        .collect()
}

impl Stage for ClipTrain {
    const NAME: &'static str = "clip-train";
    const VERSION: u32 = 5;
    const USES_DEVICE: bool = true;
    type Config = ClipTrainConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![DATA]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN, LOG]
    }

    fn run(cfg: &ClipTrainConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let data = input_id(ctx, &DATA)?;
        let tok = read_tokenizer(ctx.store, data.as_str())?;
        let train_set = read_examples(
            ctx.store,
            data.as_str(),
            Some(&cfg.train_split),
            cfg.image_size,
            0,
        )?;
        let eval_set = read_examples(
            ctx.store,
            data.as_str(),
            Some(&cfg.eval_split),
            cfg.image_size,
            cfg.eval_items,
        )?;
        ensure!(
            train_set.len() >= cfg.batch_size,
            "split `{}` has {} items, fewer than one batch of {}",
            cfg.train_split,
            train_set.len(),
            cfg.batch_size
        );
        let (train_texts, eval_texts) = (tokenized(&train_set, &tok), tokenized(&eval_set, &tok));
        let longest = train_texts
            .iter()
            .chain(&eval_texts)
            .map(Vec::len)
            .max()
            .unwrap_or(1);
        let mcfg = ClipConfig {
            image_size: cfg.image_size,
            patch_size: cfg.patch_size,
            conv_stem: cfg.conv_stem,
            dim: cfg.dim,
            image_layers: cfg.image_layers,
            text_layers: cfg.text_layers,
            heads: cfg.heads,
            mlp_ratio: cfg.mlp_ratio,
            embed_dim: cfg.embed_dim,
            vocab_size: tok.vocab_size(),
            max_text_len: longest + longest / 2,
        };
        mcfg.validate()
            .map_err(crate::clip::train::ClipError::from)?;
        let settings = ClipTrainSettings {
            steps: cfg.steps,
            batch_size: cfg.batch_size,
            lr: cfg.lr,
            min_lr: cfg.min_lr,
            warmup_ratio: cfg.warmup_ratio,
            weight_decay: cfg.weight_decay,
            grad_clip: cfg.grad_clip,
            seed: ctx.seed,
        };
        let spec = DeviceSpec::parse(&ctx.device)?;
        let bar = crate::progress::bar(cfg.steps as u64, "clip-train");
        let train_pairs = pairs(&train_set, &train_texts);
        let eval_pairs = pairs(&eval_set, &eval_texts);
        let (weights, log, retrieval) = crate::with_backend!(spec, |B, dev| {
            let (model, log) = train::<Autodiff<B>>(&mcfg, &train_pairs, &settings, &dev, |r| {
                bar.inc(1);
                bar.set_message(format!("loss {:.3} acc {:.2}", r.loss, r.batch_accuracy));
            })?;
            let retrieval = if eval_pairs.len() >= 2 {
                Some(retrieval_accuracy(
                    &model,
                    mcfg.image_size,
                    &eval_pairs,
                    cfg.batch_size,
                    &dev,
                )?)
            } else {
                None
            };
            Ok::<_, StageError>((weights_to_bytes(&model)?, log, retrieval))
        })?;
        bar.finish_and_clear();
        let main = Written::new(&MAIN, write_clip(ctx, &mcfg, &weights, &tok)?);
        let chance = 1.0 / eval_pairs.len().min(cfg.batch_size).max(1) as f64;
        let log = write_log(ctx, &log, retrieval, chance)?;
        Ok(outputs([main, log]))
    }
}

fn write_log(
    ctx: &RunCtx,
    log: &[ClipLogRow],
    retrieval: Option<f64>,
    chance: f64,
) -> Result<Written, StageError> {
    let f = |g: &dyn Fn(&ClipLogRow) -> f64| cols::f64(log.iter().map(g).collect());
    let last = |v: Option<f64>| {
        cols::f64_opt(
            (0..log.len())
                .map(|i| if i + 1 == log.len() { v } else { None })
                .collect(),
        )
    };
    write_table(
        ctx,
        &LOG,
        vec![
            (
                "step",
                cols::i32(log.iter().map(|r| r.step as i32).collect()),
            ),
            ("loss", f(&|r| r.loss)),
            ("lr", f(&|r| r.lr)),
            ("grad_norm", f(&|r| r.grad_norm)),
            ("batch_accuracy", f(&|r| r.batch_accuracy)),
            ("scale", f(&|r| r.scale)),
            ("eval_retrieval", last(retrieval)),
            ("eval_chance", last(retrieval.map(|_| chance))),
        ],
    )
}
