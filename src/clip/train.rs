//! Contrastive training of the dual encoder on (image, p*) pairs, its held-out retrieval
//! accuracy, and the similarities the CLIP reward reads. One loop, top to bottom: each epoch a
//! keyed permutation of the pairs cut into batches; per batch InfoNCE, backward, global-norm
//! clipping, one AdamW step on a cosine schedule.

use super::{Clip, ClipConfig};
use crate::model::ModelError;
use crate::train::grads::{grad_norm, scale};
use crate::train::schedule::cosine_with_warmup;
use crate::util::rng::keyed;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Errors of the dual encoder.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("clip config: {0}")]
    Config(#[from] crate::model::config::ConfigError),
}

pub type Result<T> = std::result::Result<T, ClipError>;

/// One training pair: an image [S·S] with ink in 0..1 and a token sequence.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub image: &'a [f32],
    pub text: &'a [u32],
}

/// Optimizer and schedule of the contrastive training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTrainSettings {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    pub seed: u64,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipLogRow {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Share of the batch's images whose most similar text in the batch is their own.
    pub batch_accuracy: f64,
    /// The inverse temperature exp(logit_scale).
    pub scale: f64,
}

fn images<B: Backend>(pairs: &[Pair], size: usize, device: &B::Device) -> Result<Tensor<B, 3>> {
    let mut v = Vec::with_capacity(pairs.len() * size * size);
    for p in pairs {
        if p.image.len() != size * size {
            return Err(ClipError::Invalid(format!(
                "an image of {} pixels where the encoder reads {size}×{size}",
                p.image.len()
            )));
        }
        v.extend_from_slice(p.image);
    }
    Ok(Tensor::from_data(
        TensorData::new(v, [pairs.len(), size, size]),
        device,
    ))
}

fn check_texts(cfg: &ClipConfig, pairs: &[Pair]) -> Result<()> {
    for p in pairs {
        if p.text.is_empty() || p.text.len() > cfg.max_text_len {
            return Err(ClipError::Invalid(format!(
                "a text of {} tokens; the encoder reads 1 to {}",
                p.text.len(),
                cfg.max_text_len
            )));
        }
        if let Some(&bad) = p.text.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ClipError::Invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                cfg.vocab_size
            )));
        }
    }
    Ok(())
}

/// Top-1 matches of each row of `logits` [B, B] on its diagonal, from host values.
fn diagonal_hits(logits: &[f32], b: usize) -> usize {
    (0..b)
        .filter(|&i| {
            let row = &logits[i * b..(i + 1) * b];
            row.iter().enumerate().all(|(j, &x)| j == i || x < row[i])
        })
        .count()
}

/// Trains a fresh encoder of shape `cfg` on `pairs`.
pub fn train<B: AutodiffBackend>(
    cfg: &ClipConfig,
    pairs: &[Pair],
    s: &ClipTrainSettings,
    device: &B::Device,
    mut progress: impl FnMut(&ClipLogRow),
) -> Result<(Clip<B::InnerBackend>, Vec<ClipLogRow>)> {
    cfg.validate()?;
    check_texts(cfg, pairs)?;
    if s.batch_size < 2 || pairs.len() < s.batch_size {
        return Err(ClipError::Invalid(format!(
            "contrastive batches need at least 2 pairs and at most the {} pairs given; \
             batch_size is {}",
            pairs.len(),
            s.batch_size
        )));
    }
    B::seed(device, s.seed);
    let mut model = cfg.init::<B>(device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(s.weight_decay as f32)
        .init::<B, Clip<B>>();
    let per_epoch = pairs.len() / s.batch_size;
    let mut order: Vec<usize> = Vec::new();
    let mut log = Vec::with_capacity(s.steps);
    for step in 0..s.steps {
        let (epoch, k) = (step / per_epoch, step % per_epoch);
        if k == 0 {
            order = (0..pairs.len()).collect();
            order.shuffle(&mut keyed(s.seed, "clip/batches", epoch as u64, 0));
        }
        let batch: Vec<Pair> = order[k * s.batch_size..(k + 1) * s.batch_size]
            .iter()
            .map(|&i| pairs[i])
            .collect();
        let texts: Vec<Vec<u32>> = batch.iter().map(|p| p.text.to_vec()).collect();
        let ei = model.encode_images(images::<B>(&batch, cfg.image_size, device)?);
        let et = model.encode_texts(&texts, device);
        let (loss, logits) = model.info_nce(ei, et);
        let host = |t: Tensor<B::InnerBackend, 2>| crate::model::host_f32(t);
        let l = host(logits.inner())?;
        let loss_value = crate::model::host_f32(loss.clone().inner())?
            .first()
            .copied()
            .unwrap_or(f32::NAN) as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = grad_norm::<B, _>(&model, &grads)?;
        let grads = if s.grad_clip > 0.0 && norm > s.grad_clip {
            scale::<B, _>(&model, grads, (s.grad_clip / norm) as f32)
        } else {
            grads
        };
        let lr = cosine_with_warmup(step, s.steps, s.lr, s.min_lr, s.warmup_ratio);
        let scale_value = crate::model::host_f32(model.logit_scale.val().inner())?
            .first()
            .map_or(f64::NAN, |&x| f64::from(x.min(100f32.ln())).exp());
        model = optim.step(lr, model, grads);
        let row = ClipLogRow {
            step,
            loss: loss_value,
            lr,
            grad_norm: norm,
            batch_accuracy: diagonal_hits(&l, batch.len()) as f64 / batch.len() as f64,
            scale: scale_value,
        };
        progress(&row);
        log.push(row);
    }
    Ok((model.valid(), log))
}

/// Cosine similarity of each pair's image and text embeddings, in batches of `batch`.
pub fn similarities<B: Backend>(
    model: &Clip<B>,
    image_size: usize,
    pairs: &[Pair],
    batch: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let texts: Vec<Vec<u32>> = chunk.iter().map(|p| p.text.to_vec()).collect();
        let ei = model.encode_images(images::<B>(chunk, image_size, device)?);
        let et = model.encode_texts(&texts, device);
        let cos = crate::model::host_f32((ei * et).sum_dim(1))?;
        out.extend(cos.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Held-out image→text retrieval: the share of images whose most similar text, among the
/// texts of their chunk of `batch` pairs, is their own (chance: 1/batch).
pub fn retrieval_accuracy<B: Backend>(
    model: &Clip<B>,
    image_size: usize,
    pairs: &[Pair],
    batch: usize,
    device: &B::Device,
) -> Result<f64> {
    let mut hits = 0;
    for chunk in pairs.chunks(batch.max(2)) {
        let texts: Vec<Vec<u32>> = chunk.iter().map(|p| p.text.to_vec()).collect();
        let ei = model.encode_images(images::<B>(chunk, image_size, device)?);
        let et = model.encode_texts(&texts, device);
        let l = crate::model::host_f32(ei.matmul(et.transpose()))?;
        hits += diagonal_hits(&l, chunk.len());
    }
    Ok(hits as f64 / pairs.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::super::tests::tiny;
    use super::*;
    use crate::model::Cpu;
    use burn::backend::Autodiff;

    /// Four images that differ in which quadrant is inked, each paired with its own token:
    /// training drives the loss down and retrieval to every pair, and the matched similarity
    /// above the mismatched.
    #[test]
    fn learns_to_match_images_with_their_texts() {
        let dev = Default::default();
        let imgs: Vec<Vec<f32>> = (0..4)
            .map(|q| {
                (0..256)
                    .map(|k| {
                        let (y, x) = (k / 16, k % 16);
                        f32::from(u8::from((y / 8) * 2 + x / 8 == q))
                    })
                    .collect()
            })
            .collect();
        let texts: Vec<Vec<u32>> = (0..4).map(|q| vec![1, 2 + q as u32]).collect();
        let pairs: Vec<Pair> = imgs
            .iter()
            .zip(&texts)
            .map(|(i, t)| Pair { image: i, text: t })
            .collect();
        let s = ClipTrainSettings {
            steps: 60,
            batch_size: 4,
            lr: 3e-3,
            min_lr: 3e-3,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 1,
        };
        let (model, log) = train::<Autodiff<Cpu>>(&tiny(), &pairs, &s, &dev, |_| {}).unwrap();
        assert!(
            log[59].loss < 0.5 * log[0].loss,
            "{:?} → {:?}",
            log[0],
            log[59]
        );
        assert_eq!(
            retrieval_accuracy(&model, 16, &pairs, 4, &dev).unwrap(),
            1.0
        );
        let swapped: Vec<Pair> = (0..4)
            .map(|q| Pair {
                image: &imgs[q],
                text: &texts[(q + 1) % 4],
            })
            .collect();
        let right = similarities(&model, 16, &pairs, 4, &dev).unwrap();
        let wrong = similarities(&model, 16, &swapped, 4, &dev).unwrap();
        for q in 0..4 {
            assert!(right[q] > wrong[q] + 0.1, "{right:?} vs {wrong:?}");
        }
        // Texts the encoder cannot read are refused, naming the limit.
        let long = vec![1u32; 7];
        let err = train::<Autodiff<Cpu>>(
            &tiny(),
            &[
                Pair {
                    image: &imgs[0],
                    text: &long,
                },
                pairs[1],
            ],
            &ClipTrainSettings { batch_size: 2, ..s },
            &dev,
            |_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("1 to 6"), "{err}");
    }
}
