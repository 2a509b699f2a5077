//! One SFT step's arithmetic: the micro-batches' forward and backward passes under the
//! objective (NGDiff's two halves, the diagnostics' perception / reasoning restrictions), the
//! gradients summed over data shards and peers, the objective's gradient, and the step's log
//! row from its one host read; and the standard loss that early stopping reads.

use super::{LogRow, SftSettings, TrainError, batch_indices};
use crate::data::Example;
use crate::model::{Model, VisionLanguageModel, host_f32};
use crate::train::batch::{Batch, make_batch};
use crate::train::gradient::{Form, Gradient};
use crate::train::objective::{
    ObjectiveKind, Selector, Term, ngdiff_lambda_device, span_mask, terms, token_weights,
};
use crate::train::parallel::{gradients, map_shards, replica, split};
use crate::train::peers::Peer;
use crate::train::trainer::{StepStats, TrainerError};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

fn nll<B: Backend>(
    model: &Model<B>,
    batch: &Batch<B>,
    images: Tensor<B, 3>,
) -> Result<Tensor<B, 2>, TrainError> {
    let logits = model.forward_text(images, batch.inputs.clone())?;
    let lp = log_softmax(logits, 2);
    let [b, l] = batch.labels.dims();
    Ok(lp
        .gather(2, batch.labels.clone().reshape([b, l, 1]))
        .reshape([b, l])
        .neg())
}

/// The gradients of `Σ nll · w · scale` and the per-token cross-entropy [B, L] (detached, on the
/// device).
fn weighted_grads<B: AutodiffBackend>(
    model: &Model<B>,
    batch: &Batch<B>,
    weights: &[f32],
    scale: f32,
) -> Result<(GradientsParams, Tensor<B::InnerBackend, 2>), TrainError> {
    let device = batch.inputs.device();
    let [b, l] = batch.labels.dims();
    let w = Tensor::<B, 2>::from_data(
        TensorData::new(
            weights.iter().map(|x| x * scale).collect::<Vec<_>>(),
            [b, l],
        ),
        &device,
    );
    gradients(model, |m| {
        let per_token = nll(m, batch, batch.images.clone())?;
        let detached = per_token.clone().detach().inner();
        Ok(((per_token * w).sum(), detached))
    })
}

/// Where each sum sits in a micro-batch's [`MicroStats::sums`].
const SUM_P: usize = 0;
const SUM_R: usize = 1;
const SUM_ALL: usize = 2;
const OBJECTIVE: usize = 3;
const SUM_BLANK: usize = 4;
const SUMS: usize = 5;

/// What one micro-batch contributed to a step: sums on the device (read once per step), token
/// counts on the host.
pub(super) struct MicroStats<B: Backend> {
    /// `[SUMS]`: summed cross-entropy over perception / reasoning / all target tokens, the value
    /// of a fixed-weight objective, and the summed perception cross-entropy with the image
    /// blanked (diagnostic steps).
    pub(super) sums: Option<Tensor<B, 1>>,
    pub(super) n_p: usize,
    pub(super) n_r: usize,
    pub(super) tokens: usize,
    pub(super) blank_n: usize,
}

impl<B: Backend> Default for MicroStats<B> {
    fn default() -> Self {
        MicroStats {
            sums: None,
            n_p: 0,
            n_r: 0,
            tokens: 0,
            blank_n: 0,
        }
    }
}

impl<B: Backend> MicroStats<B> {
    fn add(&mut self, o: MicroStats<B>) {
        self.sums = match (self.sums.take(), o.sums) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.n_p += o.n_p;
        self.n_r += o.n_r;
        self.tokens += o.tokens;
        self.blank_n += o.blank_n;
    }

    /// The sums and counts of every data-parallel peer.
    fn sum_over(self, peer: &Peer<B>) -> Result<Self, TrainError> {
        let counts = peer.sum_counts(&[self.n_p, self.n_r, self.tokens, self.blank_n])?;
        Ok(MicroStats {
            sums: self.sums.map(|s| peer.sum(s)).transpose()?,
            n_p: counts[0],
            n_r: counts[1],
            tokens: counts[2],
            blank_n: counts[3],
        })
    }
}

/// Gradients accumulated over a step's micro-batches, in the trainer's [`Form`].
pub(super) struct StepGrads<B: AutodiffBackend> {
    /// The objective's gradient (fixed-weight objectives).
    total: Option<Gradient<B>>,
    /// NGDiff's two halves: the perception and reasoning mean losses' gradients.
    perception: Option<Gradient<B>>,
    reasoning: Option<Gradient<B>>,
    /// Diagnostic: the objective restricted to perception / reasoning tokens.
    diag_p: Option<Gradient<B>>,
    diag_r: Option<Gradient<B>>,
}

impl<B: AutodiffBackend> Default for StepGrads<B> {
    fn default() -> Self {
        StepGrads {
            total: None,
            perception: None,
            reasoning: None,
            diag_p: None,
            diag_r: None,
        }
    }
}

/// `*acc += g`.
fn accumulate<B: AutodiffBackend>(
    acc: &mut Option<Gradient<B>>,
    model: &Model<B>,
    g: Option<Gradient<B>>,
) -> Result<(), TrainError> {
    if let Some(g) = g {
        *acc = Some(Gradient::accumulate(acc.take(), model, g).map_err(TrainerError::from)?);
    }
    Ok(())
}

impl<B: AutodiffBackend> StepGrads<B> {
    /// Adds another shard's or micro-batch's gradients, field by field.
    fn add(&mut self, model: &Model<B>, o: StepGrads<B>) -> Result<(), TrainError> {
        accumulate(&mut self.total, model, o.total)?;
        accumulate(&mut self.perception, model, o.perception)?;
        accumulate(&mut self.reasoning, model, o.reasoning)?;
        accumulate(&mut self.diag_p, model, o.diag_p)?;
        accumulate(&mut self.diag_r, model, o.diag_r)
    }

    /// Every data-parallel peer's gradients summed, field by field (the fields set are the same
    /// on every peer: they follow from the settings and the step).
    fn sum_over(self, peer: &Peer<B::InnerBackend>, model: &Model<B>) -> Result<Self, TrainError> {
        let sum = |g: Option<Gradient<B>>| g.map(|g| peer.sum_gradient(model, g)).transpose();
        Ok(StepGrads {
            total: sum(self.total)?,
            perception: sum(self.perception)?,
            reasoning: sum(self.reasoning)?,
            diag_p: sum(self.diag_p)?,
            diag_r: sum(self.diag_r)?,
        })
    }
}

/// What every micro-batch of a step shares.
pub(super) struct StepCtx<'a, B: AutodiffBackend> {
    pub(super) settings: &'a SftSettings,
    /// The trainer's gradient form.
    pub(super) form: &'a Form,
    pub(super) pad: u32,
    pub(super) device: &'a B::Device,
    pub(super) diagnostics: bool,
}

/// `Σ_j x[j]·cols[c][j]` for each column `c` of host values, `x` [B, L] flattened: `[k]` sums
/// in f32 on the device (a bf16 backend's values are cast first, and no matrix product is used,
/// whose f32 inputs a GPU may round to TF32), so the logged statistics keep f32 precision.
fn column_sums<B: Backend>(x: Tensor<B, 2>, cols: &[Vec<f32>], device: &B::Device) -> Tensor<B, 1> {
    let n = x.dims()[0] * x.dims()[1];
    let x = f32_on_device(x.reshape([n]));
    let sums = cols
        .iter()
        .map(|c| {
            let c = f32_on_device(Tensor::<B, 1>::from_data(
                TensorData::new(c.clone(), [n]),
                device,
            ));
            (x.clone() * c).sum()
        })
        .collect();
    Tensor::cat(sums, 0)
}

/// `t` as f32 on its device (a no-op on f32 backends).
pub(crate) fn f32_on_device<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.cast(burn::tensor::FloatDType::F32)
}

/// Forward and backward passes of one micro-batch, accumulated into `g`; no host read.
fn micro_batch<B: AutodiffBackend>(
    ctx: &StepCtx<B>,
    model: &Model<B>,
    exs: &[&Example],
    scale: f32,
    g: &mut StepGrads<B>,
) -> Result<MicroStats<B::InnerBackend>, TrainError> {
    let StepCtx {
        settings,
        form,
        pad,
        device,
        diagnostics,
    } = *ctx;
    let batch = make_batch::<B>(
        exs,
        model.image_size(),
        settings.max_text,
        settings.seq_bucket,
        pad,
        device,
    );
    // The gradient of `Σ nll · w · scale` in the trainer's form, and the per-token loss.
    let grads = |w: &[f32]| -> Result<_, TrainError> {
        let (g, h) = weighted_grads(model, &batch, w, scale)?;
        Ok((Some(form.gradient::<B, _>(model, g, device)), h))
    };
    let pmask = span_mask(exs, &batch.target_index, "perception");
    let rmask = span_mask(exs, &batch.target_index, "reasoning");
    let (per_token, objective_w) = if settings.objective == ObjectiveKind::Ngdiff {
        let half = |name: &str| -> Vec<Term> { vec![(Selector::Span(name.into()), 1.0)] };
        let w = |name| token_weights(exs, &batch.target_index, &half(name));
        let (gp, h) = grads(&w("perception"))?;
        accumulate(&mut g.perception, model, gp)?;
        let (gr, _) = grads(&w("reasoning"))?;
        accumulate(&mut g.reasoning, model, gr)?;
        (h, vec![0.0; pmask.len()])
    } else {
        let w = token_weights(
            exs,
            &batch.target_index,
            &terms(settings.objective, settings.lambda, &settings.extra_spans),
        );
        let (total, h) = grads(&w)?;
        accumulate(&mut g.total, model, total)?;
        if diagnostics {
            // Perception vs reasoning gradient under the objective being trained.
            let masked = |mask: &[bool]| {
                w.iter()
                    .zip(mask)
                    .map(|(&x, &m)| if m { x } else { 0.0 })
                    .collect::<Vec<f32>>()
            };
            let (gp, _) = grads(&masked(&pmask))?;
            accumulate(&mut g.diag_p, model, gp)?;
            let (gr, _) = grads(&masked(&rmask))?;
            accumulate(&mut g.diag_r, model, gr)?;
        }
        (h, w.iter().map(|x| x * scale).collect())
    };
    let f = |m: &[bool]| {
        m.iter()
            .map(|&b| f32::from(u8::from(b)))
            .collect::<Vec<f32>>()
    };
    let is_target: Vec<bool> = batch
        .target_index
        .iter()
        .flatten()
        .map(Option::is_some)
        .collect();
    let (pcol, rcol, tcol) = (f(&pmask), f(&rmask), f(&is_target));
    let sums = column_sums(per_token, &[pcol.clone(), rcol, tcol, objective_w], device);
    let blank = if diagnostics {
        let blank = nll(model, &batch, batch.images.zeros_like())?
            .detach()
            .inner();
        column_sums(blank, &[pcol], device)
    } else {
        f32_on_device(Tensor::zeros([1], device))
    };
    let n_p = pmask.iter().filter(|&&m| m).count();
    Ok(MicroStats {
        sums: Some(Tensor::cat(vec![sums, blank], 0)),
        n_p,
        n_r: rmask.iter().filter(|&&m| m).count(),
        tokens: is_target.iter().filter(|&&t| t).count(),
        blank_n: if diagnostics { n_p } else { 0 },
    })
}

/// The standard objective's loss of `model` on `examples`: each example's mean cross-entropy
/// over its target tokens, averaged over the examples, as the standard objective weighs a batch
/// (the validation loss of early stopping). Batches of `settings.batch_size`.
pub fn standard_loss<B: Backend>(
    model: &Model<B>,
    examples: &[Example],
    settings: &SftSettings,
    pad: u32,
    device: &B::Device,
) -> Result<f64, TrainError> {
    let mut per_example = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(settings.batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = make_batch::<B>(
            &refs,
            model.image_size(),
            settings.max_text,
            settings.seq_bucket,
            pad,
            device,
        );
        let nll = host_f32(nll(model, &batch, batch.images.clone())?)?;
        for (i, row) in batch.target_index.iter().enumerate() {
            let losses: Vec<f64> = row
                .iter()
                .enumerate()
                .filter(|(_, t)| t.is_some())
                .map(|(j, _)| f64::from(nll[i * batch.len + j]))
                .collect();
            if !losses.is_empty() {
                per_example.push(losses.iter().sum::<f64>() / losses.len() as f64);
            }
        }
    }
    if per_example.is_empty() {
        return Err(TrainError::Other(
            "the validation examples have no target tokens".into(),
        ));
    }
    Ok(per_example.iter().sum::<f64>() / per_example.len() as f64)
}

/// The gradients and statistics of step `step`: its micro-batches (each split into data
/// shards run concurrently on replicas of the model, summed in order), forward and backward;
/// with data-parallel peers, this peer's part of each micro-batch, then summed over the peers.
pub(super) fn step_gradients<B: AutodiffBackend>(
    ctx: &StepCtx<B>,
    peer: &Peer<B::InnerBackend>,
    model: &Model<B>,
    train_set: &[Example],
    step: usize,
) -> Result<(StepGrads<B>, MicroStats<B::InnerBackend>), TrainError> {
    let settings = ctx.settings;
    let mut grads = StepGrads::default();
    let mut st = MicroStats::default();
    for micro in 0..settings.grad_accum {
        let idx = batch_indices(train_set.len(), settings, step, micro);
        let batch: Vec<&Example> = idx.iter().map(|&i| &train_set[i]).collect();
        let exs = peer.part(&batch);
        let shards = split(exs, settings.data_shards);
        // Token weights are per-example means over the batch: a shard's share of the batch
        // rescales them so that the shards' (and peers') gradients sum to the batch's.
        let scale = |shard: &[&Example]| {
            shard.len() as f32 / batch.len() as f32 / settings.grad_accum as f32
        };
        if shards.len() == 1 {
            st.add(micro_batch(ctx, model, exs, scale(exs), &mut grads)?);
            continue;
        }
        let parts = map_shards(shards.len(), |i| {
            let mut g = StepGrads::default();
            micro_batch(ctx, &replica(model), shards[i], scale(shards[i]), &mut g).map(|m| (m, g))
        });
        for part in parts {
            let (m, g) = part?;
            st.add(m);
            grads.add(model, g)?;
        }
    }
    if peer.count() > 1 {
        grads = grads.sum_over(peer, model)?;
        st = st.sum_over(peer)?;
    }
    Ok((grads, st))
}

/// A step's statistics besides the loss sums, still on the device until the step's one host
/// read: the global gradient norm, NGDiff's λ and half norms, the diagnostics' norms of the
/// objective restricted to perception and to reasoning.
pub(super) struct OnDevice<I: Backend> {
    pub(super) grad_norm: Tensor<I, 1>,
    pub(super) ngdiff: Option<[Tensor<I, 1>; 3]>,
    pub(super) diag: Option<[Tensor<I, 1>; 2]>,
}

pub(super) type Norms<I> = (Option<[Tensor<I, 1>; 3]>, Option<[Tensor<I, 1>; 2]>);

/// The trained objective's gradient from the step's accumulated gradients (NGDiff: λ·g_p +
/// (1 − λ)·g_r with λ from the two norms), with NGDiff's `[λ, ‖g_p‖, ‖g_r‖]` and the
/// diagnostics' two norms on the device.
pub(super) fn objective_gradient<B: AutodiffBackend>(
    settings: &SftSettings,
    model: &Model<B>,
    grads: StepGrads<B>,
    device: &B::Device,
) -> Result<(Gradient<B>, Norms<B::InnerBackend>), TrainError> {
    let diag = match (&grads.diag_p, &grads.diag_r) {
        (Some(gp), Some(gr)) => Some([gp.norm(model, device), gr.norm(model, device)]),
        _ => None,
    };
    if settings.objective == ObjectiveKind::Ngdiff {
        let (Some(gp), Some(gr)) = (grads.perception, grads.reasoning) else {
            return Err(TrainError::Other("no gradients".into()));
        };
        let (np, nr) = (gp.norm(model, device), gr.norm(model, device));
        let l = ngdiff_lambda_device(np.clone(), nr.clone());
        let rest = l.clone().neg() + 1.0;
        let g = Gradient::combine(model, gp, l.clone(), gr, rest).map_err(TrainerError::from)?;
        return Ok((g, (Some([l, np, nr]), diag)));
    }
    let g = grads
        .total
        .ok_or_else(|| TrainError::Other("no gradients".into()))?;
    Ok((g, (None, diag)))
}

/// The log row of step `step` (0-based), with the step's one host read; `stats` turns the read
/// gradient norm into the optimizer step's statistics.
pub(super) fn read_row<I: Backend>(
    settings: &SftSettings,
    step: usize,
    diagnostics: bool,
    st: MicroStats<I>,
    on_device: OnDevice<I>,
    device: &I::Device,
    stats: impl Fn(f64) -> StepStats,
) -> Result<LogRow, TrainError> {
    let mut parts = vec![
        st.sums
            .unwrap_or_else(|| f32_on_device(Tensor::zeros([SUMS], device))),
        on_device.grad_norm,
    ];
    let has_diag_norms = on_device.diag.is_some();
    parts.extend(on_device.ngdiff.into_iter().flatten());
    parts.extend(on_device.diag.into_iter().flatten());
    let parts = parts.into_iter().map(f32_on_device).collect();
    let host = host_f32(Tensor::cat(parts, 0))?;
    let v = |k: usize| host.get(k).copied().unwrap_or(f32::NAN) as f64;
    let stats = stats(v(SUMS));
    let (mean_p, mean_r) = (
        v(SUM_P) / st.n_p.max(1) as f64,
        v(SUM_R) / st.n_r.max(1) as f64,
    );
    let mut at = SUMS + 1;
    let mut next = || {
        at += 1;
        v(at - 1)
    };
    let (lambda, objective, mut grad_share) = if settings.objective == ObjectiveKind::Ngdiff {
        let (l, np, nr) = (next(), next(), next());
        // The trained objective's halves: λ·g_p and (1 − λ)·g_r.
        let (wp, wr) = (l * np, (1.0 - l) * nr);
        (
            Some(l),
            l * mean_p + (1.0 - l) * mean_r,
            diagnostics.then(|| wp / (wp + wr).max(1e-12)),
        )
    } else {
        let lambda = (settings.objective == ObjectiveKind::Reweight).then_some(settings.lambda);
        (lambda, v(OBJECTIVE), None)
    };
    if has_diag_norms {
        let (np, nr) = (next(), next());
        grad_share = Some(np / (np + nr).max(1e-12));
    }
    Ok(LogRow {
        step: step + 1,
        loss: objective,
        loss_perception: mean_p,
        loss_reasoning: mean_r,
        perception_token_share: st.n_p as f64 / st.tokens.max(1) as f64,
        perception_loss_share: v(SUM_P) / v(SUM_ALL).max(1e-12),
        perception_grad_share: grad_share,
        loss_perception_blank: (st.blank_n > 0).then(|| v(SUM_BLANK) / st.blank_n as f64),
        lambda,
        lr: stats.lr,
        grad_norm: stats.grad_norm,
        val_loss: None,
        eval: None,
    })
}
