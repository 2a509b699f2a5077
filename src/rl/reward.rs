//! Rewards of sampled outputs: the outcome a (the final answer graded against the true puzzle
//! p*), the ground-truth perception reward a_p, the conditional reasoning accuracy ã_r, and the
//! surrogate perception rewards of the paper's appendix B.4 that need no p*:
//!
//! - `self` (Vision-SR1's self-reward): N text-only re-rollouts that reason from the generated
//!   perception alone (blank image); the reward is their mean final-answer accuracy against the
//!   ground truth. A perception that cannot be read gets 0 without re-rollouts. The first
//!   re-rollout alone is the N = 1 reward, so one pass with N = 4 measures both.
//! - `teacher`: another model transcribes the image greedily; the reward is 1(p = teacher's p),
//!   equality in the canonical format (as a_p's, up to surrounding whitespace).
//! - `clip`: the cosine similarity of the image's and the perception's embeddings under a
//!   contrastively trained dual encoder ([`crate::clip`]); a perception that cannot be read, or
//!   is longer than the encoder reads, gets the lowest similarity, −1.
//!
//! Rewards compose as a weighted sum of components (`outcome`, `ground_truth`, `self`,
//! `teacher`, `clip`); α-augmentation R = α·(perception reward) + (1 − α)·a is the two-term
//! case.

use super::{Result, RlError};
use crate::data::Codec;
use crate::data::Example;
use crate::eval::rollout::{Mode, RolloutRow, RolloutSpec, Sampler, run_rollouts};
use crate::eval::score::score;
use crate::model::Model;
use crate::model::VisionLanguageModel;
use crate::model::sampling::SamplingConfig;
use crate::tasks::TaskKind;
use crate::text::Tokenizer;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A reward component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// a: the final answer is right for the true puzzle.
    Outcome,
    /// a_p = 1(p = p*).
    GroundTruth,
    /// The self-reward (mean accuracy of N text-only re-rollouts).
    #[serde(rename = "self")]
    SelfReward,
    /// 1(p = the teacher's transcription).
    Teacher,
    /// Cosine similarity of image and perception under the dual encoder.
    Clip,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Outcome => "outcome",
            Component::GroundTruth => "ground_truth",
            Component::SelfReward => "self",
            Component::Teacher => "teacher",
            Component::Clip => "clip",
        }
    }
}

/// The reward as a weighted sum of components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardWeights(pub BTreeMap<Component, f64>);

impl RewardWeights {
    /// The outcome reward alone (standard RL).
    pub fn outcome() -> Self {
        RewardWeights([(Component::Outcome, 1.0)].into())
    }

    /// α-augmentation: R = α·(perception reward) + (1 − α)·a.
    pub fn augmented(alpha: f64, perception: Component) -> Result<Self> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(RlError::Invalid(format!("alpha {alpha} is outside [0, 1]")));
        }
        if perception == Component::Outcome {
            return Err(RlError::Invalid(
                "the perception reward cannot be the outcome".into(),
            ));
        }
        let mut w = BTreeMap::new();
        if alpha < 1.0 {
            w.insert(Component::Outcome, 1.0 - alpha);
        }
        if alpha > 0.0 {
            w.insert(perception, alpha);
        }
        Ok(RewardWeights(w))
    }

    pub fn uses(&self, c: Component) -> bool {
        self.0.get(&c).is_some_and(|&w| w != 0.0)
    }
}

/// Every component of one rollout's reward.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardRow {
    pub id: String,
    pub sample: usize,
    pub task: String,
    pub a: bool,
    pub a_p: bool,
    pub a_tilde_r: bool,
    /// The self-reward with N = 1 (the first re-rollout), when computed.
    pub self_first: Option<f64>,
    /// The self-reward with N re-rollouts, when computed.
    pub self_mean: Option<f64>,
    /// The share of the N re-rollouts without a readable answer ([`SelfScore::unread`]).
    pub self_unread: Option<f64>,
    /// N (0 when the self-reward was not computed).
    pub self_n: usize,
    pub teacher: Option<f64>,
    /// Whether the teacher's own transcription of the item equals p* (1 or 0): how well the
    /// teacher perceives, beside how its reward tracks the policy's perception.
    pub teacher_a_p: Option<f64>,
    pub clip: Option<f64>,
    /// The final scalar reward.
    pub reward: f64,
}

impl RewardRow {
    /// The value of a component (`None` when it was not computed).
    pub fn component(&self, c: Component) -> Option<f64> {
        match c {
            Component::Outcome => Some(f64::from(u8::from(self.a))),
            Component::GroundTruth => Some(f64::from(u8::from(self.a_p))),
            Component::SelfReward => self.self_mean,
            Component::Teacher => self.teacher,
            Component::Clip => self.clip,
        }
    }
}

/// What the self-reward asks of a model: reason from a perception alone.
pub struct Query<'a> {
    pub id: &'a str,
    pub sample: usize,
    pub task: &'a str,
    pub perception: &'a str,
}

/// Reasons from textual perceptions only (the self-reward's secondary rollouts).
pub trait Reasoner {
    /// `n` reasoning segments per query (`None` where the output could not be read).
    fn reason(&mut self, queries: &[Query], n: usize) -> Result<Vec<Vec<Option<String>>>>;
}

/// Transcribes images into perceptions (the teacher).
pub trait Transcriber {
    /// One perception per example (`None` where the output could not be read).
    fn transcribe(&mut self, examples: &[&Example]) -> Result<Vec<Option<String>>>;
}

fn task_of(name: &str) -> Result<TaskKind> {
    TaskKind::parse(name).ok_or_else(|| RlError::Invalid(format!("unknown task `{name}`")))
}

/// One rollout's self-reward.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SelfScore {
    /// N = 1: whether the first re-rollout's answer is right for the true p* (1 or 0).
    pub first: f64,
    /// N = n: the share of the n re-rollouts whose answer is right.
    pub mean: f64,
    /// The share of the n re-rollouts without a readable reasoning segment (run past the token
    /// budget, or not in the output format): scored 0, as the paper's reward scores a missing
    /// answer (a readable segment whose answer is wrong or unparsable is just wrong), and
    /// reported, since a reasoner that cannot finish makes the reward 0 whatever the perception.
    /// `None` when the rollout's own perception could not be read (nothing was re-rolled).
    pub unread: Option<f64>,
}

/// The self-reward of each rollout: (N = 1, N = `n`) — the first re-rollout's accuracy and the
/// mean over `n` — graded against the true p*, with the share of re-rollouts left unread.
pub fn self_rewards(
    rows: &[RolloutRow],
    p_star: &HashMap<String, String>,
    n: usize,
    reasoner: &mut dyn Reasoner,
) -> Result<Vec<SelfScore>> {
    if n == 0 {
        return Err(RlError::Invalid("self_n must be at least 1".into()));
    }
    let readable: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].perception.is_some())
        .collect();
    let queries: Vec<Query> = readable
        .iter()
        .map(|&i| Query {
            id: &rows[i].id,
            sample: rows[i].sample,
            task: &rows[i].task,
            perception: rows[i].perception.as_deref().unwrap_or_default(),
        })
        .collect();
    let answers = reasoner.reason(&queries, n)?;
    if answers.len() != queries.len() || answers.iter().any(|a| a.len() != n) {
        return Err(RlError::Invalid(format!(
            "the reasoner answered {} of {} queries",
            answers.len(),
            queries.len()
        )));
    }
    let mut out = vec![SelfScore::default(); rows.len()];
    for (&i, reasonings) in readable.iter().zip(answers) {
        let r = &rows[i];
        let truth = truth(p_star, &r.id)?;
        let task = task_of(&r.task)?.task();
        let right: Vec<f64> = reasonings
            .iter()
            .map(|x| {
                f64::from(u8::from(
                    x.as_deref().is_some_and(|x| task.accuracy(x, truth)),
                ))
            })
            .collect();
        let unread = reasonings.iter().filter(|x| x.is_none()).count();
        out[i] = SelfScore {
            first: right[0],
            mean: right.iter().sum::<f64>() / n as f64,
            unread: Some(unread as f64 / n as f64),
        };
    }
    Ok(out)
}

fn truth<'a>(p_star: &'a HashMap<String, String>, id: &str) -> Result<&'a str> {
    p_star
        .get(id)
        .map(String::as_str)
        .ok_or_else(|| RlError::Invalid(format!("rollout item `{id}` is not in the data")))
}

/// The teacher reward of each rollout: 1 when its perception equals the teacher's
/// transcription of the item (`teacher[id]`), 0 otherwise (also when either is unreadable).
pub fn teacher_rewards(
    rows: &[RolloutRow],
    teacher: &HashMap<String, Option<String>>,
) -> Result<Vec<f64>> {
    rows.iter()
        .map(|r| {
            let t = teacher.get(&r.id).ok_or_else(|| {
                RlError::Invalid(format!("no teacher transcription of `{}`", r.id))
            })?;
            let task = task_of(&r.task)?.task();
            Ok(f64::from(u8::from(matches!(
                (&r.perception, t),
                (Some(p), Some(t)) if task.perception_correct(p, t)
            ))))
        })
        .collect()
}

/// Cosine similarities of (row, perception tokens) queries with their items' images.
pub type Similarity<'a> = dyn FnMut(&[(usize, Vec<u32>)]) -> Result<Vec<f64>> + 'a;

/// The CLIP reward of each rollout: `similarity(i, perception tokens)` of its item's image
/// and its perception, or −1 (the lowest similarity) where the perception cannot be read or
/// has more than `max_tokens` tokens. Returns the rewards and how many rows got −1 that way.
pub fn clip_rewards(
    rows: &[RolloutRow],
    tok: &Tokenizer,
    max_tokens: usize,
    similarity: &mut Similarity,
) -> Result<(Vec<f64>, usize)> {
    let mut queries = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(p) = &r.perception {
            let ids = tok.encode(p.trim());
            if !ids.is_empty() && ids.len() <= max_tokens {
                queries.push((i, ids));
            }
        }
    }
    let sims = similarity(&queries)?;
    if sims.len() != queries.len() {
        return Err(RlError::Invalid(format!(
            "{} similarities for {} perceptions",
            sims.len(),
            queries.len()
        )));
    }
    let mut out = vec![-1.0; rows.len()];
    for ((i, _), s) in queries.iter().zip(sims) {
        out[*i] = s;
    }
    Ok((out, rows.len() - queries.len()))
}

/// The surrogate perception rewards computed for a set of rollouts (row-aligned).
#[derive(Debug, Clone, Copy, Default)]
pub struct Surrogates<'a> {
    /// Self-rewards and n.
    pub self_scores: Option<(&'a [SelfScore], usize)>,
    pub teacher: Option<&'a [f64]>,
    /// The teacher's transcription of each item (`None`: unreadable), for its own a_p.
    pub teacher_transcripts: Option<&'a HashMap<String, Option<String>>>,
    pub clip: Option<&'a [f64]>,
}

/// Scores rollouts and composes their rewards. The surrogates the weights use must be given.
pub fn reward_rows(
    rows: &[RolloutRow],
    p_star: &HashMap<String, String>,
    weights: &RewardWeights,
    sur: Surrogates,
) -> Result<Vec<RewardRow>> {
    for (c, given) in [
        (Component::SelfReward, sur.self_scores.is_some()),
        (Component::Teacher, sur.teacher.is_some()),
        (Component::Clip, sur.clip.is_some()),
    ] {
        if weights.uses(c) && !given {
            return Err(RlError::Invalid(format!(
                "the reward uses `{}`, which was not computed",
                c.name()
            )));
        }
    }
    for (name, n) in [
        ("self", sur.self_scores.map(|(v, _)| v.len())),
        ("teacher", sur.teacher.map(<[f64]>::len)),
        ("clip", sur.clip.map(<[f64]>::len)),
    ] {
        if let Some(n) = n.filter(|&n| n != rows.len()) {
            return Err(RlError::Invalid(format!(
                "{n} {name} rewards for {} rollouts",
                rows.len()
            )));
        }
    }
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let task = task_of(&r.task)?;
            let p_true = truth(p_star, &r.id)?;
            let s = score(
                task,
                p_true,
                (r.perception.as_deref(), r.reasoning.as_deref()),
                None,
            );
            let mut row = RewardRow {
                id: r.id.clone(),
                sample: r.sample,
                task: r.task.clone(),
                a: s.a,
                a_p: s.a_p,
                a_tilde_r: s.a_tilde_r,
                self_first: sur.self_scores.map(|(v, _)| v[i].first),
                self_mean: sur.self_scores.map(|(v, _)| v[i].mean),
                self_unread: sur.self_scores.and_then(|(v, _)| v[i].unread),
                self_n: sur.self_scores.map(|(_, n)| n).unwrap_or(0),
                teacher: sur.teacher.map(|t| t[i]),
                teacher_a_p: sur.teacher_transcripts.map(|t| {
                    let own = t.get(&r.id).and_then(Option::as_deref);
                    f64::from(u8::from(
                        own.is_some_and(|t| task.perception_correct(t, p_true)),
                    ))
                }),
                clip: sur.clip.map(|t| t[i]),
                reward: 0.0,
            };
            let mut total = 0.0;
            for (&c, &w) in &weights.0 {
                if w != 0.0 {
                    total += w * row.component(c).unwrap_or(0.0);
                }
            }
            row.reward = total;
            Ok(row)
        })
        .collect()
}

/// The self-reward's secondary rollouts on the VLM: text-only mode (a blank image and the
/// generated perception forced), `n` samples per query, keyed by (seed, item, sample, k) so
/// that re-rollouts of different samples of one item never share a stream.
pub struct VlmReasoner<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub tok: &'a Codec,
    /// The task prompt's token ids per item.
    pub prompts: &'a HashMap<String, Vec<u32>>,
    pub sampling: SamplingConfig,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub device: &'a B::Device,
}

/// Queries per call of the sampler (bounds the memory of the blank images).
const CHUNK: usize = 256;

impl<B: Backend> Reasoner for VlmReasoner<'_, B> {
    fn reason(&mut self, queries: &[Query], n: usize) -> Result<Vec<Vec<Option<String>>>> {
        let s = self.model.image_size();
        let spec = RolloutSpec {
            mode: Mode::TextOnly,
            samples: n,
            sampling: self.sampling,
            max_new_tokens: Some(self.max_new_tokens),
            batch_size: self.batch_size,
        };
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(CHUNK) {
            let mut examples = Vec::with_capacity(chunk.len());
            let mut forced = HashMap::new();
            for q in chunk {
                let prompt = self
                    .prompts
                    .get(q.id)
                    .ok_or_else(|| RlError::Invalid(format!("no prompt for item `{}`", q.id)))?;
                let key = format!("{}/self/{}", q.id, q.sample);
                forced.insert((key.clone(), 0), q.perception.to_string());
                examples.push(Example {
                    id: key,
                    task: q.task.to_string(),
                    perception: q.perception.to_string(),
                    image: vec![0.0; s * s],
                    prompt: prompt.clone(),
                    target: Vec::new(),
                    spans: Vec::new(),
                });
            }
            let rows = run_rollouts(
                &Sampler {
                    model: self.model,
                    codec: self.tok,
                    device: self.device,
                },
                &examples,
                Some(&forced),
                &spec,
                self.seed,
                |_| {},
            )?;
            let mut by: HashMap<(String, usize), Option<String>> = rows
                .into_iter()
                .map(|r| ((r.id, r.sample), r.reasoning))
                .collect();
            for e in &examples {
                out.push(
                    (0..n)
                        .map(|k| by.remove(&(e.id.clone(), k)).flatten())
                        .collect(),
                );
            }
        }
        Ok(out)
    }
}

/// The teacher on the VLM: one greedy standard rollout per item, long enough for the longest
/// perception of the data; only its perception segment is read.
pub struct VlmTranscriber<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub tok: &'a Codec,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub device: &'a B::Device,
}

impl<B: Backend> Transcriber for VlmTranscriber<'_, B> {
    fn transcribe(&mut self, examples: &[&Example]) -> Result<Vec<Option<String>>> {
        let spec = RolloutSpec {
            mode: Mode::Standard,
            samples: 1,
            sampling: SamplingConfig::greedy(),
            max_new_tokens: Some(self.max_new_tokens),
            batch_size: self.batch_size,
        };
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(CHUNK) {
            let owned: Vec<Example> = chunk.iter().map(|e| (*e).clone()).collect();
            let rows = run_rollouts(
                &Sampler {
                    model: self.model,
                    codec: self.tok,
                    device: self.device,
                },
                &owned,
                None,
                &spec,
                0,
                |_| {},
            )?;
            out.extend(rows.into_iter().map(|r| r.perception));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
