//! The model a stage trains or samples from: the built-in [`Vlm`] or a Hugging Face checkpoint's
//! architecture ([`HfVlm`], Qwen3-VL). Training, decoding and evaluation go through [`Model`]'s
//! batched interface, so the objectives, the sampler and the metrics are the same for both.
//!
//! Images reach either model as ink in 0..1 on an `image_size`² grid (the puzzles are
//! grayscale); a checkpoint model turns each into the RGB patch rows its processor would give
//! (white paper, black ink), so a puzzle reads the same whichever model looks at it.

use super::ModelError;
use super::layers::MASKED;
use super::qwen3_vl::chat::ChatTokenizer;
use super::qwen3_vl::processor::{ProcessorConfig, Rgb};
use super::qwen3_vl::{DecodeBatch, ImageInput, Qwen3Vl};
use super::vlm::{DecodeState, Vlm};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use std::path::Path;

/// A Qwen3-VL checkpoint with the image processing its stages need.
#[derive(Module, Debug)]
pub struct HfVlm<B: Backend> {
    pub qwen: Qwen3Vl<B>,
    #[module(skip)]
    pub processor: ProcessorConfig,
    /// Side of the square ink grid the stages hand over (before the processor's resize).
    #[module(skip)]
    pub image_size: usize,
    /// Ids from here to the model's (padded) vocabulary size are unknown to the tokenizer: their
    /// logits are masked, so that nothing is sampled that the text would not show.
    #[module(skip)]
    pub known_ids: usize,
}

impl<B: Backend> HfVlm<B> {
    /// Reads the checkpoint folder (`config.json`, weights, `preprocessor_config.json`).
    pub fn from_pretrained(
        dir: &Path,
        image_size: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let qwen = Qwen3Vl::from_pretrained(dir, device)?;
        let processor = ProcessorConfig::from_dir(dir)?;
        processor.check(&qwen.cfg.vision_config)?;
        if image_size == 0 {
            return Err(ModelError::Config("image_size must be positive".into()));
        }
        let vocab = qwen.cfg.text_config.vocab_size;
        let known_ids = ChatTokenizer::from_dir(dir)?.known_ids();
        if known_ids == 0 || known_ids > vocab {
            return Err(ModelError::Config(format!(
                "the tokenizer knows ids up to {known_ids}, the model's vocabulary has {vocab}"
            )));
        }
        Ok(HfVlm {
            qwen,
            processor,
            image_size,
            known_ids,
        })
    }

    /// Runs `rows` (each with its image of `images` [B, S, S]) as one batch: the logits
    /// [B, L, vocab] and the decoding state ([`Qwen3Vl::prefill_rows`]).
    fn run_rows(
        &self,
        images: Tensor<B, 3>,
        rows: &[Vec<u32>],
    ) -> Result<(Tensor<B, 3>, DecodeBatch<B>), ModelError> {
        let inputs = self.inputs(images)?;
        if rows.is_empty() || inputs.len() != rows.len() {
            return Err(ModelError::Input(format!(
                "{} images for {} sequences",
                inputs.len(),
                rows.len()
            )));
        }
        let ids: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let images: Vec<&[ImageInput<B>]> = inputs.iter().map(std::slice::from_ref).collect();
        Ok(self.qwen.prefill_rows(&ids, &images)?)
    }

    /// `logits` [.., vocab] with the ids the tokenizer does not know masked.
    fn mask_unknown<const D: usize>(&self, logits: Tensor<B, D>) -> Tensor<B, D> {
        let v = self.qwen.cfg.text_config.vocab_size;
        if self.known_ids >= v {
            return logits;
        }
        let mut ranges = logits.dims().map(|n| 0..n);
        ranges[D - 1] = self.known_ids..v;
        logits.slice_fill(ranges, MASKED)
    }

    /// The number of `<|image_pad|>` tokens one puzzle image takes in the prompt.
    pub fn image_tokens(&self) -> Result<usize, ModelError> {
        Ok(self
            .processor
            .image_tokens(self.image_size, self.image_size)?)
    }

    /// The processor's input for each image of `images` [B, S, S] (ink in 0..1).
    fn inputs(&self, images: Tensor<B, 3>) -> Result<Vec<ImageInput<B>>, ModelError> {
        let device = images.device();
        let [b, h, w] = images.dims();
        let ink = super::host_f32(images)?;
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let pixels = ink[i * h * w..(i + 1) * h * w]
                .iter()
                .map(|&v| {
                    let g = ((1.0 - v.clamp(0.0, 1.0)) * 255.0).round() as u8;
                    [g, g, g]
                })
                .collect();
            let rgb = Rgb {
                width: w,
                height: h,
                pixels,
            };
            let (rows, grid) = self.processor.preprocess(&rgb)?;
            let n = rows.len() / grid.iter().product::<usize>().max(1);
            let pixel_values =
                Tensor::from_data(TensorData::new(rows, [grid.iter().product(), n]), &device);
            out.push(ImageInput { pixel_values, grid });
        }
        Ok(out)
    }
}

/// A model of either family. (Made once per stage, so the variants' sizes do not matter.)
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Model<B: Backend> {
    Native(Vlm<B>),
    Qwen3Vl(HfVlm<B>),
}

impl<B: Backend> From<Vlm<B>> for Model<B> {
    fn from(m: Vlm<B>) -> Self {
        Model::Native(m)
    }
}

/// Per-row decoding state of a batch ([`Model::prefill`], [`Model::step`]).
pub enum Decoding<B: Backend> {
    Native(DecodeState<B>),
    /// The batch's cache (its prompts left-padded to one length).
    Qwen3Vl(DecodeBatch<B>),
}

impl<B: Backend> Decoding<B> {
    /// The state of a batch whose row i continues row `rows[i]` of this one.
    pub fn fork(self, rows: &[usize]) -> Self {
        match self {
            Decoding::Native(s) => Decoding::Native(s.fork(rows)),
            Decoding::Qwen3Vl(s) => Decoding::Qwen3Vl(s.select(rows)),
        }
    }
}

fn ids_of<B: Backend>(ids: Tensor<B, 2, Int>) -> Result<Vec<Vec<u32>>, ModelError> {
    let [b, l] = ids.dims();
    let flat = ids
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| ModelError::TensorRead(format!("{e:?}")))?;
    let rows = (0..b)
        .map(|i| {
            flat[i * l..(i + 1) * l]
                .iter()
                .map(|&x| u32::try_from(x).map_err(|_| ModelError::Input(format!("token id {x}"))))
                .collect()
        })
        .collect::<Result<Vec<Vec<u32>>, ModelError>>()?;
    Ok(rows)
}

impl<B: Backend> Model<B> {
    /// Side of the square ink grid the model reads.
    pub fn image_size(&self) -> usize {
        match self {
            Model::Native(m) => m.image_size,
            Model::Qwen3Vl(m) => m.image_size,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Native(m) => m.embed.weight.dims()[0],
            Model::Qwen3Vl(m) => m.qwen.cfg.text_config.vocab_size,
        }
    }

    /// The weights in the checkpoint format of the family's own module tree
    /// ([`super::checkpoint::weights_to_bytes`] of the inner model, so a built-in model's bytes
    /// do not depend on this wrapper).
    pub fn weights_bytes(&self) -> Result<Vec<u8>, ModelError> {
        match self {
            Model::Native(m) => super::checkpoint::weights_to_bytes(m),
            Model::Qwen3Vl(m) => super::checkpoint::weights_to_bytes(&m.qwen),
        }
    }

    /// This model with the weights of [`Model::weights_bytes`] loaded.
    pub fn with_weights(self, bytes: &[u8]) -> Result<Self, ModelError> {
        use super::checkpoint::load_weights;
        Ok(match self {
            Model::Native(m) => Model::Native(load_weights(m, bytes)?),
            Model::Qwen3Vl(HfVlm {
                qwen,
                processor,
                image_size,
                known_ids,
            }) => Model::Qwen3Vl(HfVlm {
                qwen: load_weights(qwen, bytes)?,
                processor,
                image_size,
                known_ids,
            }),
        })
    }

    /// The built-in model, if this is one.
    pub fn native(&self) -> Option<&Vlm<B>> {
        match self {
            Model::Native(m) => Some(m),
            Model::Qwen3Vl(_) => None,
        }
    }

    /// Teacher-forced logits [B, L, vocab] of text `ids` [B, L] read with `images` [B, S, S]:
    /// the logits at position t predict token t+1. The built-in model reads the image before
    /// the text; a checkpoint model reads it where the prompt's image tokens stand.
    ///
    /// # Shapes
    /// - images: `[B, S, S]`, ids: `[B, L]` → `[B, L, vocab]`
    pub fn forward_text(
        &self,
        images: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        match self {
            Model::Native(m) => Ok(m.forward_text(images, ids)),
            Model::Qwen3Vl(m) => {
                let (logits, _) = m.run_rows(images, &ids_of(ids)?)?;
                Ok(m.mask_unknown(logits))
            }
        }
    }

    /// Encodes a batch of prompts with their images; returns the logits of each row's last
    /// prompt token [B, vocab] and the state to continue from.
    pub fn prefill(
        &self,
        images: Tensor<B, 3>,
        prefixes: &[Vec<u32>],
    ) -> Result<(Tensor<B, 2>, Decoding<B>), ModelError> {
        match self {
            Model::Native(m) => {
                let (l, s) = m.prefill(images, prefixes);
                Ok((l, Decoding::Native(s)))
            }
            Model::Qwen3Vl(m) => {
                // One batch, shorter prompts padded on the left.
                let (logits, batch) = m.run_rows(images, prefixes)?;
                let [b, l, v] = logits.dims();
                let logits = logits.slice([0..b, l - 1..l, 0..v]).reshape([b, v]);
                Ok((m.mask_unknown(logits), Decoding::Qwen3Vl(batch)))
            }
        }
    }

    /// Feeds one token per row; the next logits [B, vocab].
    pub fn step(
        &self,
        tokens: &[u32],
        state: &mut Decoding<B>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        match (self, state) {
            (Model::Native(m), Decoding::Native(s)) => Ok(m.step(tokens, s)),
            (Model::Qwen3Vl(m), Decoding::Qwen3Vl(s)) => {
                if tokens.len() != s.next_pos.len() {
                    return Err(ModelError::Input(format!(
                        "{} tokens for {} rows",
                        tokens.len(),
                        s.next_pos.len()
                    )));
                }
                Ok(m.mask_unknown(m.qwen.step_batch(tokens, s)))
            }
            _ => Err(ModelError::Input(
                "a decoding state of another model family".into(),
            )),
        }
    }
}
