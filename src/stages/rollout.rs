//! rollout: batched sampling from a checkpoint with a KV cache, G samples per item.
//!
//! Modes: `standard` (image + prompt → perception then reasoning), `counterfactual` (the oracle p*
//! forced as the perception segment → reasoning only), `text-only` (a blank image and a given
//! perception — p*, or the perceptions of another rollout — → reasoning). Randomness is keyed by
//! (seed, item id, sample index).

use super::model_io::{read_checkpoint, read_examples, read_tokenizer};
use super::{Outputs, Stage, StageError, input, main_output, optional, outputs};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::model::checkpoint::model_from_bytes;
use crate::model::decode::{SeqKey, generate};
use crate::model::sampling::SamplingConfig;
use crate::model::{DeviceSpec, Vlm};
use crate::table::{self, Table, cols};
use crate::text::format;
use crate::text::tokenizer::{P_CLOSE, P_OPEN, R_OPEN, Tokenizer};
use crate::train::batch::Example;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Standard,
    Counterfactual,
    TextOnly,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Standard => "standard",
            Mode::Counterfactual => "counterfactual",
            Mode::TextOnly => "text-only",
        }
    }
}

/// How to sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSpec {
    pub mode: Mode,
    /// G: samples per item.
    pub samples: usize,
    pub sampling: SamplingConfig,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            mode: Mode::Standard,
            samples: 1,
            sampling: SamplingConfig::default(),
            max_new_tokens: 256,
            batch_size: 32,
        }
    }
}

/// One sampled output.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub id: String,
    pub sample: usize,
    pub task: String,
    pub text: String,
    pub perception: Option<String>,
    pub reasoning: Option<String>,
    pub format_error: Option<String>,
    pub perception_tokens: usize,
    pub reasoning_tokens: usize,
    pub new_tokens: usize,
    pub truncated: bool,
}

/// Samples `spec.samples` outputs for every example. `perceptions` overrides the forced
/// perception per (item, sample) in text-only mode.
#[allow(clippy::too_many_arguments)]
pub fn run_rollouts<B: Backend>(
    model: &Vlm<B>,
    tok: &Tokenizer,
    examples: &[Example],
    perceptions: Option<&HashMap<(String, usize), String>>,
    spec: &RolloutSpec,
    seed: u64,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<Vec<RolloutRow>, StageError> {
    let image_size = model.image_size;
    let p_close = tok.id(P_CLOSE);
    let mut rows: Vec<(usize, usize)> = Vec::new();
    for (i, _) in examples.iter().enumerate() {
        for s in 0..spec.samples {
            rows.push((i, s));
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(spec.batch_size.max(1)) {
        let mut pixels = Vec::with_capacity(chunk.len() * image_size * image_size);
        let mut prefixes = Vec::with_capacity(chunk.len());
        let mut forced = Vec::with_capacity(chunk.len());
        let mut keys = Vec::with_capacity(chunk.len());
        for &(i, s) in chunk {
            let e = &examples[i];
            let forced_p = match spec.mode {
                Mode::Standard => None,
                Mode::Counterfactual => Some(e.perception.clone()),
                Mode::TextOnly => Some(
                    perceptions
                        .and_then(|m| {
                            m.get(&(e.id.clone(), s))
                                .or_else(|| m.get(&(e.id.clone(), 0)))
                        })
                        .cloned()
                        .unwrap_or_else(|| e.perception.clone()),
                ),
            };
            if spec.mode == Mode::TextOnly {
                pixels.extend(std::iter::repeat_n(0.0f32, image_size * image_size));
            } else {
                pixels.extend_from_slice(&e.image);
            }
            let mut prefix = e.prompt.clone();
            if let Some(p) = &forced_p {
                prefix.extend(tok.encode(&format!("{P_OPEN}{p}{P_CLOSE}{R_OPEN}")));
            }
            prefixes.push(prefix);
            forced.push(forced_p);
            keys.push(SeqKey {
                item: e.id.clone(),
                sample: s as u64,
            });
        }
        let images = Tensor::<B, 3>::from_data(
            TensorData::new(pixels, [chunk.len(), image_size, image_size]),
            device,
        );
        let gens = generate(
            model,
            images,
            &prefixes,
            &keys,
            &spec.sampling,
            seed,
            tok.eos(),
            spec.max_new_tokens,
        )
        .map_err(StageError::Invalid)?;
        for ((&(i, s), g), forced_p) in chunk.iter().zip(gens).zip(forced) {
            let text = tok.decode(&g.tokens);
            let (perception, reasoning, err, pt) = match forced_p {
                None => {
                    let pt = p_close
                        .and_then(|c| g.tokens.iter().position(|&t| t == c))
                        .map(|k| k + 1)
                        .unwrap_or(g.tokens.len());
                    match format::parse(&text) {
                        Ok(seg) => (Some(seg.perception), Some(seg.reasoning), None, pt),
                        Err(e) => (None, None, Some(e.code().to_string()), pt),
                    }
                }
                Some(p) => match format::parse_reasoning(&text) {
                    Ok(r) => (Some(p), Some(r), None, 0),
                    Err(e) => (Some(p), None, Some(e.code().to_string()), 0),
                },
            };
            out.push(RolloutRow {
                id: examples[i].id.clone(),
                sample: s,
                task: examples[i].task.clone(),
                text,
                perception,
                reasoning,
                format_error: err,
                perception_tokens: pt,
                reasoning_tokens: g.tokens.len() - pt,
                new_tokens: g.tokens.len(),
                truncated: g.truncated,
            });
        }
        progress(chunk.len());
    }
    Ok(out)
}

/// Writes rollouts as a `rollouts` artifact.
pub fn write_rollouts(ctx: &RunCtx, mode: Mode, rows: &[RolloutRow]) -> Result<String, StageError> {
    let mut w = ctx
        .store
        .writer("rollouts", table::schema("rollouts")?.version)?;
    let n = table::write(
        &mut w,
        "rollouts",
        vec![
            cols::utf8(&rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>()),
            cols::i32(rows.iter().map(|r| r.sample as i32).collect()),
            cols::utf8(&vec![mode.name(); rows.len()]),
            cols::utf8(&rows.iter().map(|r| r.task.as_str()).collect::<Vec<_>>()),
            cols::utf8(&rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>()),
            cols::utf8_opt(
                &rows
                    .iter()
                    .map(|r| r.perception.clone())
                    .collect::<Vec<_>>(),
            ),
            cols::utf8_opt(&rows.iter().map(|r| r.reasoning.clone()).collect::<Vec<_>>()),
            cols::utf8_opt(
                &rows
                    .iter()
                    .map(|r| r.format_error.clone())
                    .collect::<Vec<_>>(),
            ),
            cols::i32(rows.iter().map(|r| r.perception_tokens as i32).collect()),
            cols::i32(rows.iter().map(|r| r.reasoning_tokens as i32).collect()),
            cols::i32(rows.iter().map(|r| r.new_tokens as i32).collect()),
            cols::bool(rows.iter().map(|r| r.truncated).collect()),
        ],
    )?;
    Ok(ctx.commit(w, Some(n))?)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Which split of the data to sample on.
    pub split: String,
    /// At most this many items (0 = all).
    pub limit: usize,
    #[serde(flatten)]
    pub spec: RolloutSpec,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            split: "test".into(),
            limit: 0,
            spec: RolloutSpec::default(),
        }
    }
}

pub struct Rollout;

impl Stage for Rollout {
    const NAME: &'static str = "rollout";
    const VERSION: u32 = 1;
    const USES_DEVICE: bool = true;
    type Config = RolloutConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![
            input("checkpoint", "checkpoint"),
            input("data", "sft_targets"),
            optional("perceptions", "rollouts"),
        ]
    }
    fn outputs() -> Vec<OutputSpec> {
        main_output("rollouts")
    }

    fn run(cfg: &RolloutConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let data_id = ctx.input("data").unwrap_or_default();
        let data_tok = read_tokenizer(ctx.store, data_id)?;
        let (mcfg, weights, tok) = read_checkpoint(
            ctx.store,
            ctx.input("checkpoint").unwrap_or_default(),
            Some(&data_tok),
        )?;
        let examples = read_examples(
            ctx.store,
            data_id,
            Some(&cfg.split),
            mcfg.image_size,
            cfg.limit,
        )?;
        if examples.is_empty() {
            return Err(StageError::Invalid(format!(
                "no items in split `{}`",
                cfg.split
            )));
        }
        let perceptions = match ctx.input("perceptions") {
            Some(id) => {
                let t = Table::read(ctx.store, id, "rollouts")?;
                let ids = t.required_strings("id")?;
                let samples = t.i32("sample")?;
                let ps = t.strings("perception")?;
                let mut m = HashMap::new();
                for (k, p) in ps.into_iter().enumerate() {
                    m.insert(
                        (ids[k].clone(), samples.value(k) as usize),
                        p.unwrap_or_default(),
                    );
                }
                Some(m)
            }
            None => None,
        };
        let spec =
            DeviceSpec::parse(&ctx.device).map_err(|e| StageError::Invalid(e.to_string()))?;
        let bar = crate::progress::bar((examples.len() * cfg.spec.samples) as u64, "rollout");
        let rows = crate::with_backend!(spec, |B, dev| {
            let model = model_from_bytes::<B>(&mcfg, &weights, &dev)
                .map_err(|e| StageError::Invalid(e.to_string()))?;
            run_rollouts::<B>(
                &model,
                &tok,
                &examples,
                perceptions.as_ref(),
                &cfg.spec,
                ctx.seed,
                &dev,
                |n| bar.inc(n as u64),
            )
        })?;
        bar.finish_and_clear();
        Ok(outputs(&[(
            "main",
            write_rollouts(ctx, cfg.spec.mode, &rows)?,
        )]))
    }
}
