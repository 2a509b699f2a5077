//! Batched sampling from the VLM with a KV cache, G samples per item, keeping each sampled token
//! id, its sampling log-probability and the segment it belongs to, so that a policy-gradient
//! update never re-tokenizes text.
//!
//! Modes: `standard` (image + prompt → perception then reasoning), `counterfactual` (the oracle p*
//! forced as the perception segment → reasoning only), `text-only` (a blank image and a given
//! perception — p*, or the perceptions of another rollout — → reasoning). Randomness is keyed by
//! (seed, mode, item id, sample index): rollouts of two modes never share a stream.

use super::{Result, bail};
use crate::data::Codec;
use crate::data::Example;
use crate::model::Model;
use crate::model::VisionLanguageModel;
use crate::model::decode::{Generated, GenerationConfig, SeqKey, generate_shared};
use crate::model::sampling::SamplingConfig;
use crate::text::format;
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

    /// The purpose the sampling streams of this mode are keyed by.
    fn purpose(self) -> &'static str {
        match self {
            Mode::Standard => "rollout/standard",
            Mode::Counterfactual => "rollout/counterfactual",
            Mode::TextOnly => "rollout/text-only",
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
    /// Token budget per output; unset: enough for the longest target of the data (see
    /// [`RolloutSpec::token_budget`]).
    pub max_new_tokens: Option<usize>,
    pub batch_size: usize,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            mode: Mode::Standard,
            samples: 1,
            sampling: SamplingConfig::default(),
            max_new_tokens: None,
            batch_size: 32,
        }
    }
}

/// Extra tokens over the longest target when the budget is derived from the data: a quarter
/// more, and at least 16.
fn margin(longest: usize) -> usize {
    (longest / 4).max(16)
}

impl RolloutSpec {
    /// The number of new tokens each output may have: `max_new_tokens` if set, else the longest
    /// target the mode asks the model to write (the whole answer in standard mode, the reasoning
    /// and its closing tags when the perception is forced) plus a margin.
    pub fn token_budget(&self, examples: &[Example]) -> usize {
        if let Some(n) = self.max_new_tokens {
            return n;
        }
        let longest = examples
            .iter()
            .map(|e| match self.mode {
                Mode::Standard => e.target.len(),
                Mode::Counterfactual | Mode::TextOnly => e
                    .span("reasoning")
                    .map(|(s, _)| e.target.len().saturating_sub(s))
                    .unwrap_or(e.target.len()),
            })
            .max()
            .unwrap_or(0);
        longest + margin(longest)
    }
}

/// One sampled output.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub id: String,
    pub sample: usize,
    pub task: String,
    pub text: String,
    /// The perception segment (the forced one in counterfactual and text-only modes), whenever
    /// `</perception>` closes it, whatever follows.
    pub perception: Option<String>,
    pub reasoning: Option<String>,
    /// Why the perception could not be read (a [`format::FormatError`] code).
    pub perception_error: Option<String>,
    /// Why the reasoning could not be read.
    pub reasoning_error: Option<String>,
    /// Every sampled token, the final `<eos>` included when it was sampled.
    pub token_ids: Vec<u32>,
    /// The sampling log-probability of each of `token_ids`.
    pub logprobs: Vec<f32>,
    /// The first `perception_tokens` of `token_ids` are the perception segment (through
    /// `</perception>`), the rest the reasoning; 0 when the perception was forced.
    pub perception_tokens: usize,
    pub reasoning_tokens: usize,
    /// Generated tokens, without the final `<eos>`.
    pub new_tokens: usize,
    /// Stopped by the token budget before `<eos>`.
    pub truncated: bool,
}

/// The tokens a rollout's generation follows: the prompt, then, when the perception is forced,
/// `<perception>p</perception><reasoning>` ([`Codec::forced_text`]).
pub fn prefix(tok: &Codec, prompt: &[u32], forced_perception: Option<&str>) -> Result<Vec<u32>> {
    let mut prefix = prompt.to_vec();
    if let Some(p) = forced_perception {
        prefix.extend(tok.encode(&tok.forced_text(p))?);
    }
    Ok(prefix)
}

/// What sampling reads besides the data: a model, its codec and its device.
pub struct Sampler<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub codec: &'a Codec,
    pub device: &'a B::Device,
}

/// Samples `spec.samples` outputs for every example, the rows' streams keyed by `seed`.
/// `perceptions` overrides the forced perception per (item, sample) in text-only mode.
pub fn run_rollouts<B: Backend>(
    sampler: &Sampler<'_, B>,
    examples: &[Example],
    perceptions: Option<&HashMap<(String, usize), String>>,
    spec: &RolloutSpec,
    seed: u64,
    mut progress: impl FnMut(usize),
) -> Result<Vec<RolloutRow>> {
    let Sampler {
        model,
        codec: tok,
        device,
    } = *sampler;
    let image_size = model.image_size();
    let budget = spec.token_budget(examples);
    if budget == 0 {
        bail!("the token budget per output is 0");
    }
    let rows: Vec<(usize, usize)> = (0..examples.len())
        .flat_map(|i| (0..spec.samples).map(move |s| (i, s)))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(spec.batch_size.max(1)) {
        let batch = Batch::new(tok, examples, chunk, perceptions, spec, image_size)?;
        let images = Tensor::<B, 3>::from_data(
            TensorData::new(batch.pixels, [batch.prompts.len(), image_size, image_size]),
            device,
        );
        let gens = generate_shared(
            model,
            images,
            &batch.prompts,
            &batch.row_prompt,
            &batch.keys,
            &GenerationConfig {
                sampling: spec.sampling,
                seed,
                eos: tok.eos(),
                max_new_tokens: budget,
            },
        )?;
        for ((&(i, s), g), forced) in chunk.iter().zip(gens).zip(batch.forced) {
            out.push(rollout_row(tok, &examples[i], s, g, forced)?);
        }
        progress(chunk.len());
    }
    Ok(out)
}

/// The inputs of one generation call: rows of one item with the same prefix (the G samples of a
/// prompt) share a prompt, and so a prefill.
struct Batch {
    /// One image per prompt, row-major.
    pixels: Vec<f32>,
    prompts: Vec<Vec<u32>>,
    /// The prompt of each row.
    row_prompt: Vec<usize>,
    /// The perception forced on each row, if any.
    forced: Vec<Option<String>>,
    keys: Vec<SeqKey>,
}

impl Batch {
    fn new(
        tok: &Codec,
        examples: &[Example],
        chunk: &[(usize, usize)],
        perceptions: Option<&HashMap<(String, usize), String>>,
        spec: &RolloutSpec,
        image_size: usize,
    ) -> Result<Batch> {
        let mut batch = Batch {
            pixels: Vec::with_capacity(chunk.len() * image_size * image_size),
            prompts: Vec::with_capacity(chunk.len()),
            row_prompt: Vec::with_capacity(chunk.len()),
            forced: Vec::with_capacity(chunk.len()),
            keys: Vec::with_capacity(chunk.len()),
        };
        let mut prompt_of: HashMap<(usize, Vec<u32>), usize> = HashMap::new();
        for &(i, s) in chunk {
            let e = &examples[i];
            let forced = forced_perception(spec.mode, e, s, perceptions);
            if e.image.len() != image_size * image_size {
                bail!(
                    "item `{}`: image has {} pixels, the model reads {image_size}²",
                    e.id,
                    e.image.len()
                );
            }
            let prefix = prefix(tok, &e.prompt, forced.as_deref())?;
            let next = batch.prompts.len();
            let k = *prompt_of.entry((i, prefix.clone())).or_insert(next);
            if k == next {
                if spec.mode == Mode::TextOnly {
                    let blank = std::iter::repeat_n(0.0f32, image_size * image_size);
                    batch.pixels.extend(blank);
                } else {
                    batch.pixels.extend_from_slice(&e.image);
                }
                batch.prompts.push(prefix);
            }
            batch.row_prompt.push(k);
            batch.forced.push(forced);
            batch.keys.push(SeqKey {
                purpose: spec.mode.purpose(),
                item: e.id.clone(),
                sample: s as u64,
            });
        }
        Ok(batch)
    }
}

/// The perception a mode forces on sample `s` of `e`: none in standard mode, p* in
/// counterfactual mode, in text-only mode the given perception of (item, sample), else of
/// (item, 0), else p*.
fn forced_perception(
    mode: Mode,
    e: &Example,
    s: usize,
    perceptions: Option<&HashMap<(String, usize), String>>,
) -> Option<String> {
    match mode {
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
    }
}

/// Sample `s` of `e` from its generation: the text, its segments (or why they cannot be read)
/// and the tokens of each.
fn rollout_row(
    tok: &Codec,
    e: &Example,
    s: usize,
    g: Generated,
    forced: Option<String>,
) -> Result<RolloutRow> {
    let text = tok.decode(&g.tokens)?;
    let code = |e: &format::FormatError| e.code().to_string();
    let (perception, reasoning, perception_error, reasoning_error, pt) = match forced {
        None => {
            let pt = tok.perception_end(&g.tokens)?;
            let parsed = format::parse(&text);
            (
                parsed.perception.as_ref().ok().cloned(),
                parsed.reasoning.as_ref().ok().cloned(),
                parsed.perception.as_ref().err().map(code),
                parsed.reasoning.as_ref().err().map(code),
                pt,
            )
        }
        Some(p) => {
            let r = format::parse_reasoning(tok.continuation(&text));
            (
                Some(p),
                r.as_ref().ok().cloned(),
                None,
                r.as_ref().err().map(code),
                0,
            )
        }
    };
    let mut token_ids = g.tokens.clone();
    if !g.truncated {
        token_ids.push(tok.eos());
    }
    Ok(RolloutRow {
        id: e.id.clone(),
        sample: s,
        task: e.task.clone(),
        text,
        perception,
        reasoning,
        perception_error,
        reasoning_error,
        perception_tokens: pt,
        reasoning_tokens: token_ids.len() - pt,
        new_tokens: g.tokens.len(),
        token_ids,
        logprobs: g.logprobs,
        truncated: g.truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(target: usize, reasoning_start: usize) -> Example {
        Example {
            id: "x".into(),
            task: "t".into(),
            perception: String::new(),
            image: vec![],
            prompt: vec![1],
            target: vec![2; target],
            spans: vec![
                ("perception".into(), 0, reasoning_start),
                ("reasoning".into(), reasoning_start, target),
            ],
        }
    }

    /// The default budget is the longest target the mode asks for plus max(25 %, 16) tokens; an
    /// explicit `max_new_tokens` wins.
    #[test]
    fn token_budget_follows_the_data() {
        let data = [example(100, 10), example(200, 40)];
        let spec = |mode, max_new_tokens| RolloutSpec {
            mode,
            max_new_tokens,
            ..RolloutSpec::default()
        };
        assert_eq!(spec(Mode::Standard, None).token_budget(&data), 200 + 50);
        assert_eq!(
            spec(Mode::Counterfactual, None).token_budget(&data),
            160 + 40
        );
        assert_eq!(
            spec(Mode::TextOnly, None).token_budget(&[example(40, 10)]),
            30 + 16
        );
        assert_eq!(spec(Mode::Standard, Some(7)).token_budget(&data), 7);
    }
}
