//! One GRPO step's batch: the sampled rollouts matched to their reward rows, group-normalized
//! advantages (one group per item), and the training sequences — the prefix the policy read
//! (prompt, plus the forced perception of counterfactual and text-only rollouts), the sampled
//! tokens with their old log-probabilities, and per-token advantages (optionally rescaled per
//! segment, appendix B.3).

use super::advantage::{ADV_EPS, StdKind, grouped_advantages, token_advantages};
use super::grpo::Sequence;
use super::reward::RewardRow;
use super::{Result, RlError};
use crate::data::Codec;
use crate::data::Example;
use crate::eval::rollout::{Mode, RolloutRow, prefix};
use std::collections::HashMap;
use std::sync::Arc;

/// How the rollouts were sampled and how their advantages are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchSpec {
    /// The rollouts' sampling mode (text-only rollouts saw a blank image).
    pub mode: Mode,
    /// Side of the images the policy reads.
    pub image_size: usize,
    pub adv_std: StdKind,
    /// λ of the per-segment advantage rescaling (`None`: every token the sequence's advantage).
    pub token_lambda: Option<f64>,
}

/// The batch of one step (see the module docs).
pub struct StepBatch<'a> {
    /// One sequence per rollout, in the rollouts' order.
    pub sequences: Vec<Sequence>,
    /// Each rollout's reward row, in the rollouts' order.
    pub rewards: Vec<&'a RewardRow>,
    /// Each rollout's group-normalized advantage Â (before any segment scaling), in the
    /// rollouts' order.
    pub advantages: Vec<f64>,
    /// The share of items whose samples all got the same reward (zero advantage).
    pub zero_groups: f64,
}

/// `rows` matched one to one with `rewards` by (item, sample); an unmatched or duplicated row is
/// an error naming it.
pub fn match_rewards<'a>(
    rows: &[RolloutRow],
    rewards: &'a [RewardRow],
) -> Result<Vec<&'a RewardRow>> {
    let by_key: HashMap<(&str, usize), usize> = rewards
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.id.as_str(), r.sample), i))
        .collect();
    if by_key.len() != rows.len() || rewards.len() != rows.len() {
        return Err(RlError::Invalid(format!(
            "{} rewards for {} rollouts",
            rewards.len(),
            rows.len()
        )));
    }
    rows.iter()
        .map(|r| {
            by_key
                .get(&(r.id.as_str(), r.sample))
                .map(|&i| &rewards[i])
                .ok_or_else(|| {
                    RlError::Invalid(format!(
                        "no reward for rollout `{}` sample {}",
                        r.id, r.sample
                    ))
                })
        })
        .collect()
}

/// The batch for `rows` (see the module docs); `examples` must hold every row's item.
pub fn step_batch<'a>(
    rows: &[RolloutRow],
    rewards: &'a [RewardRow],
    examples: &[Example],
    codec: &Codec,
    spec: &BatchSpec,
) -> Result<StepBatch<'a>> {
    let matched = match_rewards(rows, rewards)?;
    let reward: Vec<f64> = matched.iter().map(|r| r.reward).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let (adv, zero) = grouped_advantages(&ids, &reward, spec.adv_std, ADV_EPS);
    let s = spec.image_size;
    let blank: Arc<[f32]> = vec![0.0f32; s * s].into();
    let by_item: HashMap<&str, (&Example, Arc<[f32]>)> = examples
        .iter()
        .map(|e| (e.id.as_str(), (e, Arc::from(e.image.as_slice()))))
        .collect();
    let mut sequences = Vec::with_capacity(rows.len());
    for (k, r) in rows.iter().enumerate() {
        let Some((e, image)) = by_item.get(r.id.as_str()) else {
            return Err(RlError::Invalid(format!(
                "rollout item `{}` is not in the data",
                r.id
            )));
        };
        let forced = match spec.mode {
            Mode::Standard => None,
            Mode::Counterfactual | Mode::TextOnly => r.perception.as_deref(),
        };
        let n = r.token_ids.len();
        if n == 0 {
            return Err(RlError::Invalid(format!(
                "rollout `{}` sample {} has no tokens",
                r.id, r.sample
            )));
        }
        sequences.push(Sequence {
            image: if spec.mode == Mode::TextOnly {
                blank.clone()
            } else {
                image.clone()
            },
            prefix: prefix(codec, &e.prompt, forced)?,
            tokens: r.token_ids.clone(),
            old_logprobs: r.logprobs.clone(),
            perception_tokens: r.perception_tokens,
            advantages: token_advantages(adv[k], n, r.perception_tokens, spec.token_lambda)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
            reward: reward[k],
        });
    }
    Ok(StepBatch {
        sequences,
        rewards: matched,
        advantages: adv,
        zero_groups: zero.values().filter(|&&z| z).count() as f64 / zero.len().max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokenizer::Tokenizer;

    fn rollout(id: &str, sample: usize, tokens: usize) -> RolloutRow {
        RolloutRow {
            id: id.into(),
            sample,
            task: "graph_coloring".into(),
            text: String::new(),
            perception: Some("nodes 2\nedges 0-1".into()),
            reasoning: None,
            perception_error: None,
            reasoning_error: None,
            token_ids: vec![5; tokens],
            logprobs: vec![-0.5; tokens],
            perception_tokens: 1,
            reasoning_tokens: tokens.saturating_sub(1),
            new_tokens: tokens,
            truncated: false,
        }
    }

    fn reward(id: &str, sample: usize, r: f64) -> RewardRow {
        RewardRow {
            id: id.into(),
            sample,
            task: "graph_coloring".into(),
            a: r > 0.5,
            a_p: r > 0.5,
            a_tilde_r: r > 0.5,
            self_first: None,
            self_mean: None,
            self_unread: None,
            self_n: 0,
            teacher: None,
            teacher_a_p: None,
            clip: None,
            reward: r,
        }
    }

    fn example(id: &str) -> Example {
        Example {
            id: id.into(),
            task: "graph_coloring".into(),
            perception: "nodes 2\nedges 0-1".into(),
            image: vec![0.5; 4],
            prompt: vec![1, 2],
            target: vec![3],
            spans: vec![],
        }
    }

    /// Rewards are matched by (item, sample) whatever their order; advantages are normalized
    /// per item; a text-only rollout reads a blank image after the forced perception.
    #[test]
    fn rollouts_meet_their_rewards_and_advantages() {
        let rows = [
            rollout("a", 0, 3),
            rollout("a", 1, 2),
            rollout("b", 0, 2),
            rollout("b", 1, 2),
            rollout("c", 0, 2),
            rollout("c", 1, 2),
        ];
        // Listed in another order than the rollouts, with distinct rewards within an item, so
        // pairing by position would be seen.
        let rewards = [
            reward("b", 1, 0.75),
            reward("c", 0, 1.0),
            reward("a", 1, 0.0),
            reward("a", 0, 1.0),
            reward("c", 1, 1.0),
            reward("b", 0, 0.25),
        ];
        let examples = [example("a"), example("b"), example("c")];
        let codec = Codec::from(Tokenizer::task_vocabulary());
        let spec = |mode| BatchSpec {
            mode,
            image_size: 2,
            adv_std: StdKind::Sample,
            token_lambda: None,
        };
        let b = step_batch(&rows, &rewards, &examples, &codec, &spec(Mode::Standard)).unwrap();
        let got: Vec<f64> = b.sequences.iter().map(|s| s.reward).collect();
        assert_eq!(got, [1.0, 0.0, 0.25, 0.75, 1.0, 1.0]);
        let matched: Vec<(&str, usize)> = b
            .rewards
            .iter()
            .map(|r| (r.id.as_str(), r.sample))
            .collect();
        assert_eq!(
            matched,
            [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("c", 1)]
        );
        // Items a and b: advantages of opposite signs on every token (the better sample
        // positive); item c: equal rewards → zero advantages, one group of three.
        assert!(b.sequences[0].advantages.iter().all(|&x| x > 0.0));
        assert!(b.sequences[1].advantages.iter().all(|&x| x < 0.0));
        assert!(b.sequences[2].advantages.iter().all(|&x| x < 0.0));
        assert!(b.sequences[3].advantages.iter().all(|&x| x > 0.0));
        assert_eq!(b.sequences[0].advantages.len(), 3);
        assert!(b.sequences[4].advantages.iter().all(|&x| x == 0.0));
        assert!((b.zero_groups - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(b.sequences[0].prefix, vec![1, 2]);
        assert_eq!(&*b.sequences[0].image, &[0.5; 4]);
        let t = step_batch(&rows, &rewards, &examples, &codec, &spec(Mode::TextOnly)).unwrap();
        assert_eq!(&*t.sequences[0].image, &[0.0; 4]);
        assert!(
            t.sequences[0].prefix.len() > 2,
            "the forced perception follows the prompt"
        );
        // A missing reward, an item not in the data: errors naming them.
        let e = step_batch(
            &rows,
            &rewards[..5],
            &examples,
            &codec,
            &spec(Mode::Standard),
        );
        assert!(
            e.err()
                .is_some_and(|e| e.to_string().contains("5 rewards for 6"))
        );
        let mut other = rewards.clone();
        other[0].sample = 7;
        let e = step_batch(&rows, &other, &examples, &codec, &spec(Mode::Standard));
        assert!(e.err().is_some_and(|e| e.to_string().contains("sample 1")));
        let e = step_batch(
            &rows,
            &rewards,
            &examples[..1],
            &codec,
            &spec(Mode::Standard),
        );
        assert!(e.err().is_some_and(|e| e.to_string().contains("`b`")));
    }
}
