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
mod tests {
    use super::*;

    const P: &str = "nodes 3\nedges 0-1 1-2";
    const WRONG: &str = "nodes 3\nedges 0-2";

    fn row(id: &str, sample: usize, p: Option<&str>, r: Option<&str>) -> RolloutRow {
        RolloutRow {
            id: id.into(),
            sample,
            task: "graph_coloring".into(),
            text: String::new(),
            perception: p.map(String::from),
            reasoning: r.map(String::from),
            perception_error: None,
            reasoning_error: None,
            token_ids: vec![],
            logprobs: vec![],
            perception_tokens: 0,
            reasoning_tokens: 0,
            new_tokens: 0,
            truncated: false,
        }
    }

    /// A reasoner that solves the puzzle its perception describes, right with a fixed pattern
    /// over re-rollouts (`pattern[k % len]`), otherwise answering nonsense.
    struct Solver {
        pattern: Vec<bool>,
        calls: usize,
    }

    impl Reasoner for Solver {
        fn reason(&mut self, queries: &[Query], n: usize) -> Result<Vec<Vec<Option<String>>>> {
            self.calls += queries.len() * n;
            Ok(queries
                .iter()
                .map(|q| {
                    (0..n)
                        .map(|k| {
                            let g = crate::tasks::graph_coloring::Graph::parse(q.perception)?;
                            let (_, colors) = crate::tasks::graph_coloring::chromatic(&g);
                            Some(if self.pattern[k % self.pattern.len()] {
                                crate::tasks::graph_coloring::answer_line(&colors)
                            } else {
                                "answer".to_string()
                            })
                        })
                        .collect()
                })
                .collect())
        }
    }

    fn truth() -> HashMap<String, String> {
        [("g".to_string(), P.to_string())].into()
    }

    /// A reasoner that never finishes: every re-rollout is cut by the token budget.
    struct Rambler;

    impl Reasoner for Rambler {
        fn reason(&mut self, queries: &[Query], n: usize) -> Result<Vec<Vec<Option<String>>>> {
            Ok(queries.iter().map(|_| vec![None; n]).collect())
        }
    }

    /// Re-rollouts without an answer score 0 and are counted, so that a self-reward that is 0
    /// because its reasoner cannot finish is told apart from one whose perceptions are wrong.
    #[test]
    fn self_rewards_count_re_rollouts_without_an_answer() {
        let rows = vec![row("g", 0, Some(P), None), row("g", 1, None, None)];
        let s = self_rewards(&rows, &truth(), 4, &mut Rambler).unwrap();
        assert_eq!(
            s[0],
            SelfScore {
                first: 0.0,
                mean: 0.0,
                unread: Some(1.0)
            }
        );
        // Nothing was re-rolled for an unreadable perception: no share to report.
        assert_eq!(s[1].unread, None);
    }

    /// With the perception p* the self-reward is the reasoner's accuracy on p* (its reasoning
    /// accuracy): here 3 of 4 re-rollouts right, and the first one right.
    #[test]
    fn self_reward_with_a_perfect_perception_is_the_reasoning_accuracy() {
        let mut solver = Solver {
            pattern: vec![true, false, true, true, false],
            calls: 0,
        };
        let rows = vec![
            row("g", 0, Some(P), None),
            row("g", 1, Some(WRONG), None),
            row("g", 2, None, None),
        ];
        let s = self_rewards(&rows, &truth(), 4, &mut solver).unwrap();
        let pairs = |s: &[SelfScore]| s.iter().map(|x| (x.first, x.mean)).collect::<Vec<_>>();
        assert_eq!(pairs(&s)[0], (1.0, 0.75));
        // The solver's answer for the graph missing an edge colors 1 and 2 alike: wrong for p*.
        assert_eq!(pairs(&s)[1], (0.0, 0.0));
        // No readable perception: 0, and no re-rollouts were spent on it.
        assert_eq!(s[2], SelfScore::default());
        // Every re-rollout of the readable perceptions had an answer line.
        assert_eq!(s[0].unread, Some(0.0));
        assert_eq!(solver.calls, 8);
        solver.calls = 0;
        // N = 5: the fifth re-rollout is wrong; N = 1 is the first one alone.
        let s = self_rewards(&rows, &truth(), 5, &mut solver).unwrap();
        assert_eq!((s[0].first, s[0].mean), (1.0, 0.6));
        // A perfect reasoner's self-reward is a_p on these rows.
        let mut perfect = Solver {
            pattern: vec![true],
            calls: 0,
        };
        let s = self_rewards(&rows, &truth(), 1, &mut perfect).unwrap();
        assert_eq!(
            s.iter().map(|x| x.mean).collect::<Vec<_>>(),
            [1.0, 0.0, 0.0]
        );
    }

    #[test]
    fn composition_keeps_every_component() {
        let rows = vec![
            // Right perception, right answer.
            row("g", 0, Some(P), Some("answer 0:1 1:2 2:1")),
            // Wrong perception, answer consistent with it (ã_r) but not with p*.
            row("g", 1, Some(WRONG), Some("answer 0:1 1:2 2:2")),
            // Right perception, wrong answer.
            row("g", 2, Some(P), Some("answer 0:1 1:1 2:1")),
        ];
        let selfs = [(1.0, 1.0), (0.0, 0.25), (1.0, 0.5)].map(|(first, mean)| SelfScore {
            first,
            mean,
            unread: Some(0.5),
        });
        let transcripts: HashMap<String, Option<String>> =
            [("g".to_string(), Some(P.to_string()))].into();
        let teacher = teacher_rewards(&rows, &transcripts).unwrap();
        assert_eq!(teacher, [1.0, 0.0, 1.0]);
        let w = RewardWeights::augmented(0.25, Component::GroundTruth).unwrap();
        let sur = Surrogates {
            self_scores: Some((&selfs, 4)),
            teacher: Some(&teacher),
            teacher_transcripts: Some(&transcripts),
            clip: None,
        };
        let out = reward_rows(&rows, &truth(), &w, sur).unwrap();
        let flags: Vec<(bool, bool, bool)> =
            out.iter().map(|r| (r.a, r.a_p, r.a_tilde_r)).collect();
        assert_eq!(
            flags,
            [
                (true, true, true),
                (false, false, true),
                (false, true, false)
            ]
        );
        assert_eq!(
            out.iter().map(|r| r.reward).collect::<Vec<_>>(),
            [1.0, 0.0, 0.25]
        );
        assert_eq!(out[1].self_mean, Some(0.25));
        assert_eq!(out[1].self_unread, Some(0.5));
        assert_eq!(out[2].teacher, Some(1.0));
        // The teacher read the item right: its own a_p is 1 on every row of it.
        assert!(out.iter().all(|r| r.teacher_a_p == Some(1.0)));
        let misread: HashMap<String, Option<String>> =
            [("g".to_string(), Some(WRONG.to_string()))].into();
        let sur = Surrogates {
            teacher_transcripts: Some(&misread),
            ..Surrogates::default()
        };
        let out2 = reward_rows(&rows, &truth(), &RewardWeights::outcome(), sur).unwrap();
        assert!(out2.iter().all(|r| r.teacher_a_p == Some(0.0)));
        assert_eq!(out[0].self_n, 4);
        let outcome = reward_rows(
            &rows,
            &truth(),
            &RewardWeights::outcome(),
            Surrogates::default(),
        )
        .unwrap();
        assert_eq!(
            outcome.iter().map(|r| r.reward).collect::<Vec<_>>(),
            [1.0, 0.0, 0.0]
        );
        let s = RewardWeights::augmented(0.5, Component::SelfReward).unwrap();
        let only_self = Surrogates {
            self_scores: Some((&selfs, 4)),
            ..Surrogates::default()
        };
        let out = reward_rows(&rows, &truth(), &s, only_self).unwrap();
        assert_eq!(
            out.iter().map(|r| r.reward).collect::<Vec<_>>(),
            [1.0, 0.125, 0.25]
        );
        // A reward that needs a component not computed is refused.
        assert!(reward_rows(&rows, &truth(), &s, Surrogates::default()).is_err());
        assert!(RewardWeights::augmented(1.5, Component::Teacher).is_err());
    }

    /// The CLIP reward is the similarity of the perceptions that can be scored, in row order,
    /// and −1 (counted) for one that cannot be read or is longer than the encoder reads.
    #[test]
    fn clip_rewards_score_readable_perceptions_and_count_the_rest() {
        let tok = Tokenizer::task_vocabulary();
        let long = format!("{P}\n{P}\n{P}");
        let rows = vec![
            row("g", 0, Some(P), None),
            row("g", 1, None, None),
            row("g", 2, Some(&long), None),
            row("g", 3, Some(WRONG), None),
        ];
        let max = tok.encode(P).len();
        let mut seen = Vec::new();
        let mut sim = |q: &[(usize, Vec<u32>)]| -> Result<Vec<f64>> {
            seen = q.to_vec();
            Ok(q.iter().map(|(i, _)| 0.25 * *i as f64).collect())
        };
        let (r, unscored) = clip_rewards(&rows, &tok, max, &mut sim).unwrap();
        assert_eq!(r, [0.0, -1.0, -1.0, 0.75]);
        assert_eq!(unscored, 2);
        assert_eq!(seen[0], (0, tok.encode(P)));
        assert_eq!(seen[1], (3, tok.encode(WRONG)));
        // A scorer that answers for fewer queries is an error, not a silent zero.
        let mut short = |_: &[(usize, Vec<u32>)]| -> Result<Vec<f64>> { Ok(vec![0.5]) };
        assert!(clip_rewards(&rows, &tok, max, &mut short).is_err());
    }
}
