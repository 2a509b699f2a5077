//! One GRPO policy update from a step's sequences on the shared [`crate::train::trainer`]
//! (AdamW, global-norm clipping): `ppo_epochs` passes over the sequences in keyed-shuffled
//! mini-batches of `mini_batch` sequences, one optimizer step per mini-batch (gradients
//! accumulated over micro-batches of `micro_batch`), so that after the first mini-batch the
//! policy has moved and the ratio is no longer identically 1.

use super::grpo::{ForcedBatch, LossSettings, Sequence, clipped_objective, token_logprobs};
use super::{Result, RlError};
use crate::model::VisionLanguageModel;
use crate::model::{Model, host_f32};
use crate::train::gradient::Gradient;
use crate::train::parallel::{gradients, map_shards};
use crate::train::peers::{self, Peer, PerPeer};
use crate::train::sft::f32_on_device;
use crate::train::trainer::{OptimSettings, OptimState, StepStats, Trainer, TrainerError};
use crate::util::rng::keyed;
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Everything one update needs besides the model and the data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpdateSettings {
    pub loss: LossSettings,
    /// Passes over the step's sequences.
    pub ppo_epochs: usize,
    /// Sequences per optimizer step.
    pub mini_batch: usize,
    /// Sequences per forward/backward pass (gradients accumulated up to `mini_batch`).
    pub micro_batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    pub seed: u64,
    /// Refuse to update when the mean |log π_θ − log π_old| over the first mini-batch, taken
    /// before any step (so θ = θ_old), exceeds this: the rollouts were not sampled from this
    /// checkpoint at this temperature (0 = no check).
    pub max_logprob_gap: f64,
    /// Padded lengths rounded up to a multiple of this ([`crate::train::batch::bucketed`]):
    /// 1 on the CPU, 64 on a GPU.
    #[serde(default = "one")]
    pub seq_bucket: usize,
    /// Data-parallel peers ([`crate::train::peers`]): each computes the gradient of its part of
    /// every mini-batch, weighted by the whole mini-batch's normaliser, and the peers'
    /// gradients are all-reduced before clipping.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub data_parallel: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// What one mini-batch (one optimizer step) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinibatchRow {
    pub epoch: usize,
    pub minibatch: usize,
    pub sequences: usize,
    pub tokens: usize,
    /// The objective's value (pg + β·KL, aggregated as trained).
    pub loss: f64,
    /// The clipped policy-gradient term alone.
    pub pg_loss: f64,
    /// The k3 KL to the reference, aggregated as the loss (when a reference is given).
    pub kl: Option<f64>,
    /// Share of generated tokens whose clipped branch was taken.
    pub clip_frac: f64,
    /// Mean importance ratio over generated tokens.
    pub ratio_mean: f64,
    /// Mean per-token entropy of the policy at the sampling temperature.
    pub entropy: f64,
    /// Mean |log π_θ − log π_old| per token: before any step on the first mini-batch (a
    /// fidelity check of the stored log-probabilities), the policy's drift afterwards.
    pub logprob_gap: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub mean_reward: f64,
    /// Mean generated tokens per sequence.
    pub response_len: f64,
    /// Perception tokens / generated tokens.
    pub perception_share: f64,
}

fn check(settings: &UpdateSettings, seqs: &[Sequence]) -> Result<()> {
    settings.loss.check()?;
    if seqs.is_empty() {
        return Err(RlError::Invalid("no sequences to update on".into()));
    }
    if settings.ppo_epochs == 0
        || settings.mini_batch == 0
        || settings.micro_batch == 0
        || settings.data_parallel == 0
    {
        return Err(RlError::Invalid(
            "ppo_epochs, mini_batch, micro_batch and data_parallel must be at least 1".into(),
        ));
    }
    // The smallest mini-batch: the last one holds what is left of the sequences.
    let rest = seqs.len() % settings.mini_batch;
    let smallest = match rest {
        0 => settings.mini_batch.min(seqs.len()),
        r => r,
    };
    if smallest < settings.data_parallel {
        return Err(RlError::Invalid(format!(
            "a mini-batch of {smallest} sequences (mini_batch {} over {} sequences) cannot be \
             shared by data_parallel = {} peers: every peer needs a sequence",
            settings.mini_batch,
            seqs.len(),
            settings.data_parallel
        )));
    }
    Ok(())
}

/// The mini-batches of one epoch: a keyed permutation of the sequences, cut into runs of
/// `mini_batch` (the last one may be shorter).
pub fn minibatches(n: usize, mini_batch: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut keyed(seed, "grpo/minibatch", epoch as u64, 0));
    perm.chunks(mini_batch.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

struct Acc<B: Backend> {
    /// `[ACC_SUMS]` on the device, read once per optimizer step: the loss, the policy-gradient
    /// and KL terms, and the token sums of clipping, ratio, entropy and the log-probability gap.
    sums: Option<Tensor<B, 1>>,
    kl: bool,
    tokens: usize,
}

const ACC_LOSS: usize = 0;
const ACC_PG: usize = 1;
const ACC_KL: usize = 2;
const ACC_CLIPPED: usize = 3;
const ACC_RATIO: usize = 4;
const ACC_ENTROPY: usize = 5;
const ACC_GAP: usize = 6;
const ACC_SUMS: usize = 7;

impl<B: Backend> Default for Acc<B> {
    fn default() -> Self {
        Acc {
            sums: None,
            kl: false,
            tokens: 0,
        }
    }
}

impl<B: Backend> Acc<B> {
    fn add(&mut self, o: Acc<B>) {
        self.sums = match (self.sums.take(), o.sums) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.kl |= o.kl;
        self.tokens += o.tokens;
    }
}

/// The models one update reads: the policy it trains, the AdamW state the policy's optimizer
/// continues from, and the frozen reference of the KL term.
pub struct Policy<'a, B: AutodiffBackend> {
    pub model: Model<B>,
    /// The previous update's [`ModelUpdate::state`], for AdamW to continue from its moments
    /// and step count, as an RL trainer that keeps its optimizer across steps does; its
    /// weights must be the policy's. `None`: a fresh optimizer.
    pub state: Option<&'a OptimState>,
    /// Its KL is logged whenever it is given, and added to the loss with weight `kl_coef`
    /// (which needs one).
    pub reference: Option<Model<B::InnerBackend>>,
}

/// The result of [`update_model`].
pub struct ModelUpdate<B: Backend> {
    pub model: Model<B>,
    /// The AdamW state after the update, for the next RL step to continue from.
    pub state: OptimState,
    pub log: Vec<MinibatchRow>,
}

/// Runs one update of `policy` on `seqs` (right-padded with `pad`), calling `progress` after
/// each optimizer step; with `data_parallel` peers, the leader's result and progress.
pub fn update_model<B: AutodiffBackend>(
    settings: &UpdateSettings,
    policy: Policy<'_, B>,
    seqs: &[Sequence],
    pad: u32,
    device: &B::Device,
    progress: impl FnMut(&MinibatchRow) + Send,
) -> Result<ModelUpdate<B::InnerBackend>> {
    check(settings, seqs)?;
    let progress = std::sync::Mutex::new(Some(progress));
    let Policy {
        model,
        state,
        reference,
    } = policy;
    let models = PerPeer::new((model, reference), settings.data_parallel);
    peers::run(settings.data_parallel, device, |peer| {
        let mut leader = match peer.is_leader() {
            true => progress.lock().unwrap_or_else(|e| e.into_inner()).take(),
            false => None,
        };
        let (model, reference) = models
            .take(&peer)
            .ok_or_else(|| RlError::Invalid("a peer without a model".into()))?;
        let policy = Policy {
            model,
            state,
            reference,
        };
        update_peer(&peer, settings, policy, seqs, pad, device, |row| {
            if let Some(p) = &mut leader {
                p(row);
            }
        })
    })
}

/// The update of one peer (of the only one without data parallelism).
fn update_peer<B: AutodiffBackend>(
    peer: &Peer<B::InnerBackend>,
    settings: &UpdateSettings,
    policy: Policy<'_, B>,
    seqs: &[Sequence],
    pad: u32,
    device: &B::Device,
    mut progress: impl FnMut(&MinibatchRow),
) -> Result<ModelUpdate<B::InnerBackend>> {
    let Policy {
        model: policy,
        state,
        reference,
    } = policy;
    let per_epoch = seqs.len().div_ceil(settings.mini_batch);
    let optim = OptimSettings {
        steps: settings.ppo_epochs * per_epoch,
        lr: settings.lr,
        min_lr: settings.lr,
        warmup_ratio: 0.0,
        weight_decay: settings.weight_decay,
        grad_clip: settings.grad_clip,
    };
    let image_size = policy.image_size();
    let mut trainer = Trainer::<B>::new(policy, &optim, device);
    if let Some(st) = state {
        trainer.load_state(st)?;
    }
    if reference.is_none() && settings.loss.kl_coef > 0.0 {
        return Err(RlError::Invalid(format!(
            "kl_coef is {} but no reference model is given",
            settings.loss.kl_coef
        )));
    }
    let batches = Minibatches {
        settings,
        reference: reference.as_ref(),
        image_size,
        pad,
        device,
    };
    let mut log = Vec::new();
    let mut step = 0;
    for epoch in 0..settings.ppo_epochs {
        for (mb, idx) in minibatches(seqs.len(), settings.mini_batch, settings.seed, epoch)
            .into_iter()
            .enumerate()
        {
            let (grads, acc) = batches.gradient(peer, &trainer, seqs, &idx)?;
            let done = trainer.step(step, grads)?;
            // The optimizer step's one host read.
            let sums = acc
                .sums
                .unwrap_or_else(|| Tensor::zeros([ACC_SUMS], device));
            let host = host_f32(Tensor::cat(vec![sums, done.grad_norm], 0))?;
            let v = |k: usize| host.get(k).copied().unwrap_or(f32::NAN) as f64;
            let stats = StepStats::read(done.lr, v(ACC_SUMS), trainer.grad_clip());
            let tokens = acc.tokens.max(1) as f64;
            let gap = v(ACC_GAP) / tokens;
            if step == 0 && settings.max_logprob_gap > 0.0 && gap > settings.max_logprob_gap {
                return Err(RlError::Invalid(format!(
                    "before any update the policy's log-probabilities differ from the rollouts' \
                     by {gap:.4} per token on average (limit {}): the rollouts were not sampled \
                     from this checkpoint, or not at temperature {}",
                    settings.max_logprob_gap, settings.loss.temperature
                )));
            }
            let chosen: Vec<&Sequence> = idx.iter().map(|&i| &seqs[i]).collect();
            let (mean_reward, response_len, perception_share) = sequence_means(&chosen);
            let row = MinibatchRow {
                epoch,
                minibatch: mb,
                sequences: idx.len(),
                tokens: acc.tokens,
                loss: v(ACC_LOSS),
                pg_loss: v(ACC_PG),
                kl: acc.kl.then(|| v(ACC_KL)),
                clip_frac: v(ACC_CLIPPED) / tokens,
                ratio_mean: v(ACC_RATIO) / tokens,
                entropy: v(ACC_ENTROPY) / tokens,
                logprob_gap: gap,
                grad_norm: stats.grad_norm,
                lr: stats.lr,
                mean_reward,
                response_len,
                perception_share,
            };
            progress(&row);
            log.push(row);
            step += 1;
        }
    }
    Ok(ModelUpdate {
        state: trainer.state()?,
        model: trainer.model().valid(),
        log,
    })
}

/// Of a mini-batch's sequences: the mean reward, the mean generated length and perception's
/// share of the generated tokens.
fn sequence_means(chosen: &[&Sequence]) -> (f64, f64, f64) {
    let n = chosen.len().max(1) as f64;
    let generated: usize = chosen.iter().map(|s| s.tokens.len()).sum();
    let perception: usize = chosen
        .iter()
        .map(|s| s.perception_tokens.min(s.tokens.len()))
        .sum();
    (
        chosen.iter().map(|s| s.reward).sum::<f64>() / n,
        generated as f64 / n,
        perception as f64 / generated.max(1) as f64,
    )
}

/// What every mini-batch of one update reads besides the policy and the sequences.
struct Minibatches<'a, B: AutodiffBackend> {
    settings: &'a UpdateSettings,
    reference: Option<&'a Model<B::InnerBackend>>,
    image_size: usize,
    pad: u32,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> Minibatches<'_, B> {
    /// The gradient of one mini-batch (the sequences `idx` of `seqs`) and its statistics: the
    /// micro-batches run concurrently, each on its own replica of the model, and are summed in
    /// order — the same bits as running them one after another. With data-parallel peers, this
    /// peer's part of the mini-batch (its micro-batches one after another), then summed over
    /// the peers.
    fn gradient(
        &self,
        peer: &Peer<B::InnerBackend>,
        trainer: &Trainer<B>,
        seqs: &[Sequence],
        idx: &[usize],
    ) -> Result<(Gradient<B>, Acc<B::InnerBackend>)> {
        let micros: Vec<Vec<&Sequence>> = peer
            .part(idx)
            .chunks(self.settings.micro_batch)
            .map(|m| m.iter().map(|&i| &seqs[i]).collect())
            .collect();
        let (model, form, device) = (trainer.model(), trainer.form(), self.device);
        let micro = |i: usize| {
            let mut a = Acc::default();
            self.micro_step(model, &micros[i], idx.len(), &mut a)
                .map(|g| (form.gradient::<B, _>(model, g, device), a))
        };
        let parts = match peer.count() {
            1 => map_shards(micros.len(), micro),
            _ => (0..micros.len()).map(micro).collect(),
        };
        let mut grads: Option<Gradient<B>> = None;
        let mut acc = Acc::default();
        for part in parts {
            let (g, a) = part?;
            acc.add(a);
            grads = Some(Gradient::accumulate(grads, model, g).map_err(TrainerError::from)?);
        }
        let grads = grads.ok_or_else(|| RlError::Invalid("an empty mini-batch".into()))?;
        if peer.count() == 1 {
            return Ok((grads, acc));
        }
        let grads = peer.sum_gradient(model, grads)?;
        let tokens = peer.sum_counts(&[acc.tokens])?[0];
        let sums = acc.sums.map(|s| peer.sum(s)).transpose()?;
        Ok((
            grads,
            Acc {
                sums,
                kl: acc.kl,
                tokens,
            },
        ))
    }

    /// Forward and backward passes of one micro-batch of a mini-batch of `of` sequences.
    fn micro_step(
        &self,
        model: &Model<B>,
        part: &[&Sequence],
        of: usize,
        acc: &mut Acc<B::InnerBackend>,
    ) -> Result<GradientsParams> {
        let (image_size, bucket, pad) = (self.image_size, self.settings.seq_bucket, self.pad);
        let (loss, device) = (&self.settings.loss, self.device);
        let batch = ForcedBatch::<B>::new(part, image_size, bucket, pad, device)?;
        let ref_logp = match self.reference {
            Some(r) => {
                let inner =
                    ForcedBatch::<B::InnerBackend>::new(part, image_size, bucket, pad, device)?;
                Some(Tensor::<B, 2>::from_inner(
                    token_logprobs(r, &inner, loss.temperature)?.0,
                ))
            }
            None => None,
        };
        let (grads, ()) = gradients(model, |model| {
            let (logp, entropy) = token_logprobs(model, &batch, loss.temperature)?;
            let of = of as f32;
            let mask = batch.tensor(|_, _| 1.0, device);
            let weight = batch.tensor(|i, _| 1.0 / (part[i].tokens.len() as f32 * of), device);
            let inv_len = Tensor::<B, 2>::from_data(
                TensorData::new(
                    part.iter()
                        .map(|s| 1.0 / s.tokens.len() as f32)
                        .collect::<Vec<_>>(),
                    [part.len(), 1],
                ),
                device,
            );
            let old = batch.tensor(|i, j| part[i].old_logprobs[j], device);
            let gap = ((logp.clone().detach() - old.clone()).abs() * mask.clone()).sum();
            let o = clipped_objective(
                logp,
                old,
                batch.tensor(|i, j| part[i].advantages[j], device),
                mask.clone(),
                weight.clone(),
                inv_len,
                ref_logp,
                loss,
            );
            // Read with the optimizer step's other statistics (no host read here).
            let scalars: Vec<Tensor<B, 1>> = vec![
                o.loss.clone().detach(),
                (o.pg.detach() * weight.clone()).sum(),
                o.kl.clone()
                    .map(|k| (k.detach() * weight.clone()).sum())
                    .unwrap_or_else(|| Tensor::zeros([1], device)),
                (o.clipped * mask.clone()).sum(),
                (o.ratio * mask.clone()).sum(),
                (entropy * mask).sum(),
                gap,
            ];
            acc.add(Acc {
                // Summed across micro-batches in f32, whatever the backend's float type.
                sums: Some(f32_on_device(Tensor::cat(scalars, 0).inner())),
                kl: o.kl.is_some(),
                tokens: 0,
            });
            acc.tokens += part.iter().map(|s| s.tokens.len()).sum::<usize>();
            Ok::<_, RlError>((o.loss, ()))
        })?;
        Ok(grads)
    }
}

#[cfg(test)]
mod tests;
