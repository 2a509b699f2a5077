//! reward-score: one row per standard rollout with every reward component kept (outcome a,
//! ground-truth a_p, ã_r, the surrogate perception rewards computed) and the final scalar reward
//! (see [`crate::rl::reward`]).
//!
//! The reward is `reward = { outcome = 1.0 }` (the default: standard RL), any weighted sum of
//! `outcome`, `ground_truth`, `self`, `teacher`, `clip`, or α-augmentation
//! `alpha = α, perception = "ground_truth" | "self" | "teacher" | "clip"`:
//! R = α·(perception reward) + (1 − α)·a. `surrogates` computes further perception rewards
//! beside those the reward uses, for `correlate`. `self` needs the policy's `checkpoint`
//! (the one that sampled the rollouts), `teacher` a `teacher` checkpoint, `clip` a dual encoder
//! from a clip-train stage. The self-reward's re-rollouts are keyed by the rollouts they score,
//! so two RL steps never share a stream.

use super::artifacts::{read_rollouts, read_sampling};
use super::model_io::{
    CLIP_KIND, plan_examples, plan_of_artifact, read_clip, read_examples_where, read_tokenizer,
};
use super::{
    Outputs, Stage, StageError, Written, bail, ensure, input, input_id, optional, optional_id,
    output, outputs, read_input, write_table,
};
use crate::clip::train::{Pair, similarities};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::data::Example;
use crate::eval::rollout::{Mode, RolloutRow, RolloutSpec};
use crate::model::DeviceSpec;
use crate::model::load::PlanSource;
use crate::model::sampling::SamplingConfig;
use crate::rl::reward::{
    Component, RewardRow, RewardWeights, SelfScore, Surrogates, VlmReasoner, VlmTranscriber,
    clip_rewards, reward_rows, self_rewards, teacher_rewards,
};
use crate::table::cols;
use crate::text::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardScoreConfig {
    /// The reward as component weights, e.g. `{ outcome = 1.0 }` (unset: the outcome alone, or
    /// α-augmentation when `alpha` is set).
    pub reward: Option<BTreeMap<Component, f64>>,
    /// α of R = α·(perception reward) + (1 − α)·a (instead of `reward`).
    pub alpha: Option<f64>,
    /// The perception reward of α-augmentation.
    pub perception: Component,
    /// Further perception rewards to compute and keep (not in the reward): `self`, `teacher`,
    /// `clip`.
    pub surrogates: Vec<Component>,
    /// N: text-only re-rollouts per perception for the self-reward.
    pub self_n: usize,
    /// Sampling of the self-reward's re-rollouts (default: the evaluation sampling, T = 0.7).
    pub self_sampling: SamplingConfig,
    /// Token budget of a re-rollout; unset: the longest reasoning target of the data + a margin.
    pub self_max_new_tokens: Option<usize>,
    pub batch_size: usize,
}

impl Default for RewardScoreConfig {
    fn default() -> Self {
        RewardScoreConfig {
            reward: None,
            alpha: None,
            perception: Component::GroundTruth,
            surrogates: Vec::new(),
            self_n: 4,
            self_sampling: SamplingConfig::default(),
            self_max_new_tokens: None,
            batch_size: 32,
        }
    }
}

impl RewardScoreConfig {
    fn weights(&self) -> Result<RewardWeights, StageError> {
        match (&self.reward, self.alpha) {
            (Some(_), Some(_)) => bail!("set either `reward` or `alpha`, not both"),
            (Some(w), None) => {
                ensure!(!w.is_empty(), "`reward` names no component");
                ensure!(
                    w.values().all(|v| v.is_finite()),
                    "`reward` weights must be finite"
                );
                Ok(RewardWeights(w.clone()))
            }
            (None, Some(a)) => Ok(RewardWeights::augmented(a, self.perception)?),
            (None, None) => Ok(RewardWeights::outcome()),
        }
    }

    /// The surrogate perception rewards to compute: those the reward uses and the extra ones.
    fn needed(&self, w: &RewardWeights) -> Result<BTreeSet<Component>, StageError> {
        let mut need: BTreeSet<Component> = self.surrogates.iter().copied().collect();
        for c in &need {
            ensure!(
                matches!(
                    c,
                    Component::SelfReward | Component::Teacher | Component::Clip
                ),
                "`surrogates` lists `{}`, which is always computed; list `self`, `teacher` or \
                 `clip`",
                c.name()
            );
        }
        need.extend(
            [Component::SelfReward, Component::Teacher, Component::Clip]
                .into_iter()
                .filter(|&c| w.uses(c)),
        );
        Ok(need)
    }
}

pub struct RewardScore;

const ROLLOUTS: InputSpec = input("rollouts", "rollouts");
const DATA: InputSpec = input("data", "sft_targets");
const CHECKPOINT: InputSpec = optional("checkpoint", "checkpoint");
const TEACHER: InputSpec = optional("teacher", "checkpoint");
const CLIP: InputSpec = optional("clip", CLIP_KIND);
const MAIN: OutputSpec = output("main", "rewards");

/// Per item of the data: prompt ids, p*, and the target's longest reasoning and perception.
struct ItemInfo {
    prompts: HashMap<String, Vec<u32>>,
    p_star: HashMap<String, String>,
    /// Light examples (no image) of the items, for token budgets.
    budget_examples: Vec<Example>,
}

fn item_info(ctx: &RunCtx, items: &HashSet<String>) -> Result<ItemInfo, StageError> {
    let t = read_input(ctx, &DATA)?;
    let ids = t.required_strings("id")?;
    let percs = t.required_strings("perception")?;
    let prompts = t.int_lists("prompt_ids")?;
    let targets = t.int_lists("target_ids")?;
    let names = t.str_lists("span_names")?;
    let starts = t.int_lists("span_starts")?;
    let ends = t.int_lists("span_ends")?;
    let mut info = ItemInfo {
        prompts: HashMap::new(),
        p_star: HashMap::new(),
        budget_examples: Vec::new(),
    };
    for i in 0..t.rows() {
        if !items.contains(&ids[i]) {
            continue;
        }
        let prompt = prompts[i]
            .iter()
            .map(|&x| u32::try_from(x))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| StageError::Invalid(format!("{}: negative token id", ids[i])))?;
        let spans = names[i]
            .iter()
            .zip(&starts[i])
            .zip(&ends[i])
            .map(|((n, &s), &e)| (n.clone(), s.max(0) as usize, e.max(0) as usize))
            .collect();
        info.budget_examples.push(Example {
            id: ids[i].clone(),
            task: String::new(),
            perception: percs[i].clone(),
            image: Vec::new(),
            prompt: Vec::new(),
            target: vec![0; targets[i].len()],
            spans,
        });
        info.prompts.insert(ids[i].clone(), prompt);
        info.p_star.insert(ids[i].clone(), percs[i].clone());
    }
    Ok(info)
}

/// The self-reward's sampling seed: the pipeline seed mixed with the rollouts' artifact id, so
/// that the re-rollouts of two RL steps never share a random stream.
fn rollout_seed(seed: u64, rollouts: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"asymm-self-reward");
    h.update(&seed.to_le_bytes());
    h.update(rollouts.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// Tokens enough for the longest perception of the data (through `</perception>`) plus a margin.
fn perception_budget(examples: &[Example]) -> usize {
    let longest = examples
        .iter()
        .filter_map(|e| e.span("perception").map(|s| s.1))
        .max()
        .unwrap_or(0);
    longest + (longest / 4).max(16)
}

impl Stage for RewardScore {
    const NAME: &'static str = "reward-score";
    const VERSION: u32 = 9;
    const USES_DEVICE: bool = true;
    type Config = RewardScoreConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![ROLLOUTS, DATA, CHECKPOINT, TEACHER, CLIP]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }

    fn run(cfg: &RewardScoreConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let weights = cfg.weights()?;
        let need = cfg.needed(&weights)?;
        let table = read_input(ctx, &ROLLOUTS)?;
        if let Some((mode, _)) = read_sampling(&table)? {
            ensure!(
                mode == Mode::Standard,
                "reward-score scores standard rollouts; these are {}",
                mode.name()
            );
        }
        let rows = read_rollouts(&table)?;
        let items: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        let info = item_info(ctx, &items)?;
        let data_id = input_id(ctx, &DATA)?;
        let data_tok = read_tokenizer(ctx.store, data_id.as_str())?;
        let job = Scoring {
            cfg,
            ctx,
            rows: &rows,
            items: &items,
            info: &info,
            data_id: data_id.as_str(),
            data_tok: &data_tok,
            spec: DeviceSpec::parse(&ctx.device)?,
        };
        let wanted = |c: Component| need.contains(&c);
        let self_scores = wanted(Component::SelfReward)
            .then(|| score_self(&job))
            .transpose()?;
        let teacher = wanted(Component::Teacher)
            .then(|| score_teacher(&job))
            .transpose()?;
        let (teacher, transcripts) = teacher.unzip();
        let clip = wanted(Component::Clip)
            .then(|| score_clip(&job))
            .transpose()?;
        let sur = Surrogates {
            self_scores: self_scores.as_deref().map(|s| (s, cfg.self_n)),
            teacher: teacher.as_deref(),
            teacher_transcripts: transcripts.as_ref(),
            clip: clip.as_deref(),
        };
        let out = reward_rows(&rows, &info.p_star, &weights, sur).map_err(StageError::from)?;
        Ok(outputs([write_rewards(ctx, &out)?]))
    }
}

/// What scoring a surrogate reward reads: the stage's config and context, the rollouts and their
/// items, the data.
struct Scoring<'a> {
    cfg: &'a RewardScoreConfig,
    ctx: &'a RunCtx<'a>,
    rows: &'a [RolloutRow],
    items: &'a HashSet<String>,
    info: &'a ItemInfo,
    data_id: &'a str,
    data_tok: &'a Tokenizer,
    spec: DeviceSpec,
}

/// The self-reward of every rollout: N text-only re-rollouts of the policy from its own
/// perception.
fn score_self(j: &Scoring) -> Result<Vec<SelfScore>, StageError> {
    let Some(id) = optional_id(j.ctx, &CHECKPOINT) else {
        bail!("the self-reward needs the policy: wire input `checkpoint`");
    };
    ensure!(j.cfg.self_n >= 1, "self_n must be at least 1");
    let plan = plan_of_artifact(j.ctx.store, id.as_str(), Some(j.data_tok))?;
    // A checkpoint model reads prompts in its own tokens: the data's re-tokenized.
    let hf_items = match &plan.source {
        PlanSource::Native { .. } => None,
        PlanSource::Hf { .. } => {
            let mut ex = plan_examples(&plan, j.ctx.store, j.data_id, 0, &|_, id| {
                j.items.contains(id)
            })?;
            for e in &mut ex {
                e.image = Vec::new();
            }
            let prompts: HashMap<String, Vec<u32>> = ex
                .iter()
                .map(|e| (e.id.clone(), e.prompt.clone()))
                .collect();
            Some((prompts, ex))
        }
    };
    let (prompts, budget_examples) = match &hf_items {
        Some((p, e)) => (p, e),
        None => (&j.info.prompts, &j.info.budget_examples),
    };
    let budget = j.cfg.self_max_new_tokens.unwrap_or_else(|| {
        RolloutSpec {
            mode: Mode::TextOnly,
            ..RolloutSpec::default()
        }
        .token_budget(budget_examples)
    });
    let scores = crate::with_backend!(j.spec, |B, dev| {
        let model = plan.load::<B>(j.ctx.seed, &dev)?;
        let mut reasoner = VlmReasoner::<B> {
            model: &model,
            tok: &plan.codec,
            prompts,
            sampling: j.cfg.self_sampling,
            max_new_tokens: budget,
            batch_size: j.cfg.batch_size,
            seed: rollout_seed(j.ctx.seed, input_id(j.ctx, &ROLLOUTS)?.as_str()),
            device: &dev,
        };
        self_rewards(j.rows, &j.info.p_star, j.cfg.self_n, &mut reasoner).map_err(StageError::from)
    })?;
    let shares: Vec<f64> = scores.iter().filter_map(|s| s.unread).collect();
    let unread = shares.iter().sum::<f64>() * j.cfg.self_n as f64;
    if unread > 0.0 {
        eprintln!(
            "reward-score: {unread:.0} of {} self-reward re-rollouts ({:.1} %) end without a \
             readable reasoning segment (cut by the token budget of {budget}, or not in the \
             output format); each scores 0",
            shares.len() * j.cfg.self_n,
            100.0 * unread / (shares.len() * j.cfg.self_n).max(1) as f64
        );
    }
    Ok(scores)
}

/// The teacher's transcription of each item.
type Transcripts = HashMap<String, Option<String>>;

/// The teacher reward of every rollout (agreement with the teacher's transcription) and the
/// teacher's transcription of every item.
fn score_teacher(j: &Scoring) -> Result<(Vec<f64>, Transcripts), StageError> {
    let Some(id) = optional_id(j.ctx, &TEACHER) else {
        bail!("the teacher reward needs a teacher: wire input `teacher`");
    };
    let plan = plan_of_artifact(j.ctx.store, id.as_str(), Some(j.data_tok))?;
    let examples = plan_examples(&plan, j.ctx.store, j.data_id, 0, &|_, id| {
        j.items.contains(id)
    })?;
    let budget = perception_budget(&examples);
    let refs: Vec<&Example> = examples.iter().collect();
    let transcripts = crate::with_backend!(j.spec, |B, dev| {
        let model = plan.load::<B>(j.ctx.seed, &dev)?;
        let mut t = VlmTranscriber::<B> {
            model: &model,
            tok: &plan.codec,
            max_new_tokens: budget,
            batch_size: j.cfg.batch_size,
            device: &dev,
        };
        crate::rl::reward::Transcriber::transcribe(&mut t, &refs).map_err(StageError::from)
    })?;
    let by_id: HashMap<String, Option<String>> = examples
        .iter()
        .map(|e| e.id.clone())
        .zip(transcripts)
        .collect();
    Ok((teacher_rewards(j.rows, &by_id)?, by_id))
}

/// The CLIP-style reward of every rollout: the dual encoder's image–perception similarity.
fn score_clip(j: &Scoring) -> Result<Vec<f64>, StageError> {
    let Some(id) = optional_id(j.ctx, &CLIP) else {
        bail!("the clip reward needs a dual encoder: wire input `clip` (a clip-train stage)");
    };
    let (scores, unscored) = crate::with_backend!(j.spec, |B, dev| {
        let (ccfg, model) = read_clip::<B>(j.ctx.store, id.as_str(), j.data_tok, &dev)?;
        let examples =
            read_examples_where(j.ctx.store, j.data_id, ccfg.image_size, 0, &|_, id| {
                j.items.contains(id)
            })?;
        let image: HashMap<&str, &[f32]> = examples
            .iter()
            .map(|e| (e.id.as_str(), e.image.as_slice()))
            .collect();
        let mut similarity = |queries: &[(usize, Vec<u32>)]| {
            let mut pairs = Vec::with_capacity(queries.len());
            for (i, text) in queries {
                let Some(img) = image.get(j.rows[*i].id.as_str()) else {
                    return Err(crate::rl::RlError::Invalid(format!(
                        "rollout item `{}` is not in the data",
                        j.rows[*i].id
                    )));
                };
                pairs.push(Pair { image: img, text });
            }
            similarities(&model, ccfg.image_size, &pairs, j.cfg.batch_size, &dev)
                .map_err(|e| crate::rl::RlError::Invalid(e.to_string()))
        };
        clip_rewards(j.rows, j.data_tok, ccfg.max_text_len, &mut similarity)
            .map_err(StageError::from)
    })?;
    if unscored > 0 {
        eprintln!(
            "reward-score: {unscored} of {} perceptions could not be read or are longer \
                 than the dual encoder reads; their clip reward is -1",
            j.rows.len()
        );
    }
    Ok(scores)
}

fn write_rewards(ctx: &RunCtx, rows: &[RewardRow]) -> Result<Written, StageError> {
    let flag = |f: &dyn Fn(&RewardRow) -> bool| cols::bool(rows.iter().map(f).collect());
    let opt = |f: &dyn Fn(&RewardRow) -> Option<f64>| cols::f64_opt(rows.iter().map(f).collect());
    write_table(
        ctx,
        &MAIN,
        vec![
            (
                "id",
                cols::utf8(&rows.iter().map(|r| &r.id).collect::<Vec<_>>()),
            ),
            (
                "sample",
                cols::i32(rows.iter().map(|r| r.sample as i32).collect()),
            ),
            (
                "task",
                cols::utf8(&rows.iter().map(|r| &r.task).collect::<Vec<_>>()),
            ),
            ("a", flag(&|r| r.a)),
            ("a_p", flag(&|r| r.a_p)),
            ("a_tilde_r", flag(&|r| r.a_tilde_r)),
            ("self_first", opt(&|r| r.self_first)),
            ("self_mean", opt(&|r| r.self_mean)),
            (
                "self_samples",
                cols::i32(rows.iter().map(|r| r.self_n as i32).collect()),
            ),
            ("self_unread", opt(&|r| r.self_unread)),
            ("teacher", opt(&|r| r.teacher)),
            ("teacher_a_p", opt(&|r| r.teacher_a_p)),
            ("clip", opt(&|r| r.clip)),
            ("reward", cols::f64(rows.iter().map(|r| r.reward).collect())),
        ],
    )
}
