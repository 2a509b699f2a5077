//! The model a stage trains or samples from: the built-in [`Vlm`] or a Hugging Face checkpoint's
//! architecture ([`HfVlm`]: Qwen3-VL or InternVL3.5). Training, decoding and evaluation go
//! through [`Model`]'s batched interface, so the objectives, the sampler and the metrics are the
//! same for all.
//!
//! Images reach every model as ink in 0..1 on an `image_size`² grid (the puzzles are
//! grayscale); a checkpoint model turns each into the RGB inputs its processor would give
//! (white paper, black ink), so a puzzle reads the same whichever model looks at it.

use super::ModelError;
use super::hf::family::Checkpoint;
use super::hf::image::Rgb;
use super::hf::reference::{Parity, Reference};
use super::hf::text::{DecodeBatch, TextModel};
use super::internvl::{self, InternVl};
use super::layers::MASKED;
use super::qwen3_vl::{self, Qwen3Vl};
use super::vlm::{DecodeState, Vlm};
use crate::text::chat::{ChatTokenizer, Family};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use std::path::Path;

/// What every stage needs of a model, implemented once by the built-in [`Vlm`] and once by a
/// checkpoint ([`HfVlm`], whatever its family); [`Model`] holds either and passes each call on.
/// Training reads [`VisionLanguageModel::forward_text`]; decoding
/// [`VisionLanguageModel::prefill`] and [`VisionLanguageModel::step`]; checkpoints of a run
/// [`VisionLanguageModel::weights_bytes`] and [`VisionLanguageModel::with_weights`].
pub trait VisionLanguageModel<B: Backend>: Sized {
    /// Per-row decoding state of a batch.
    type State: Fork;

    /// Side of the square ink grid the model reads.
    fn image_size(&self) -> usize;

    /// Rows of the output layer.
    fn vocab_size(&self) -> usize;

    /// Teacher-forced logits [B, L, vocab] of text `ids` [B, L] read with `images` [B, S, S]:
    /// the logits at position t predict token t+1. The built-in model reads the image before
    /// the text; a checkpoint model reads it where the prompt's image tokens stand.
    ///
    /// # Shapes
    /// - images: `[B, S, S]`, ids: `[B, L]` → `[B, L, vocab]`
    fn forward_text(
        &self,
        images: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ModelError>;

    /// Encodes a batch of prompts with their images; returns the logits of each row's last
    /// prompt token [B, vocab] and the state to continue from.
    fn prefill(
        &self,
        images: Tensor<B, 3>,
        prefixes: &[Vec<u32>],
    ) -> Result<(Tensor<B, 2>, Self::State), ModelError>;

    /// Feeds one token per row; the next logits [B, vocab].
    fn step(&self, tokens: &[u32], state: &mut Self::State) -> Result<Tensor<B, 2>, ModelError>;

    /// The weights in the checkpoint format of the family's own module tree
    /// ([`super::checkpoint::weights_to_bytes`] of the inner model, so a built-in model's bytes
    /// do not depend on a wrapper).
    fn weights_bytes(&self) -> Result<Vec<u8>, ModelError>;

    /// This model with the weights of [`VisionLanguageModel::weights_bytes`] loaded.
    fn with_weights(self, bytes: &[u8]) -> Result<Self, ModelError>;
}

/// A decoding state whose rows can be continued in another arrangement.
pub trait Fork {
    /// The state of a batch whose row i continues row `rows[i]` of this one.
    fn fork(self, rows: &[usize]) -> Self;
}

impl<B: Backend> Fork for DecodeState<B> {
    fn fork(self, rows: &[usize]) -> Self {
        DecodeState::fork(self, rows)
    }
}

impl<B: Backend> Fork for DecodeBatch<B> {
    fn fork(self, rows: &[usize]) -> Self {
        self.select(rows)
    }
}

impl<B: Backend> VisionLanguageModel<B> for Vlm<B> {
    type State = DecodeState<B>;

    fn image_size(&self) -> usize {
        self.image_size
    }

    fn vocab_size(&self) -> usize {
        self.embed.weight.dims()[0]
    }

    fn forward_text(
        &self,
        images: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        Ok(Vlm::forward_text(self, images, ids))
    }

    fn prefill(
        &self,
        images: Tensor<B, 3>,
        prefixes: &[Vec<u32>],
    ) -> Result<(Tensor<B, 2>, DecodeState<B>), ModelError> {
        Ok(Vlm::prefill(self, images, prefixes))
    }

    fn step(&self, tokens: &[u32], state: &mut DecodeState<B>) -> Result<Tensor<B, 2>, ModelError> {
        Ok(Vlm::step(self, tokens, state))
    }

    fn weights_bytes(&self) -> Result<Vec<u8>, ModelError> {
        super::checkpoint::weights_to_bytes(self)
    }

    fn with_weights(self, bytes: &[u8]) -> Result<Self, ModelError> {
        super::checkpoint::load_weights(self, bytes)
    }
}

/// A checkpoint's network, of the family its folder names.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum HfNet<B: Backend> {
    Qwen3Vl(Qwen3Vl<B>),
    InternVl(InternVl<B>),
}

/// `$body` with `$n` bound to the family's network of `$net` (an [`HfNet`]).
macro_rules! each_family {
    ($net:expr, $n:ident => $body:expr) => {
        match $net {
            HfNet::Qwen3Vl($n) => $body,
            HfNet::InternVl($n) => $body,
        }
    };
}

impl<B: Backend> Checkpoint<B> for HfNet<B> {
    fn family(&self) -> Family {
        each_family!(self, n => n.family())
    }

    fn open(dir: &Path, weights: bool, device: &B::Device) -> super::hf::Result<Self> {
        Ok(match Family::of_dir(dir)? {
            Family::Qwen3Vl => HfNet::Qwen3Vl(Qwen3Vl::open(dir, weights, device)?),
            Family::InternVl => HfNet::InternVl(InternVl::open(dir, weights, device)?),
        })
    }

    fn vocab_size(&self) -> usize {
        each_family!(self, n => Checkpoint::vocab_size(n))
    }

    fn text_model(&self) -> &TextModel<B> {
        each_family!(self, n => n.text_model())
    }

    fn device(&self) -> B::Device {
        each_family!(self, n => Checkpoint::device(n))
    }

    fn image_tokens(&self, width: usize, height: usize) -> super::hf::Result<usize> {
        each_family!(self, n => n.image_tokens(width, height))
    }

    fn prefill_images(
        &self,
        rows: &[&[u32]],
        images: &[&Rgb],
    ) -> super::hf::Result<(Tensor<B, 3>, DecodeBatch<B>)> {
        each_family!(self, n => n.prefill_images(rows, images))
    }

    fn step_batch(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Tensor<B, 2> {
        each_family!(self, n => Checkpoint::step_batch(n, tokens, state))
    }

    fn save_pretrained(&self, dir: &Path) -> super::hf::Result<()> {
        each_family!(self, n => Checkpoint::save_pretrained(n, dir))
    }

    fn parity(&self, reference: &Reference) -> super::hf::Result<Parity> {
        each_family!(self, n => n.parity(reference))
    }
}

impl<B: Backend> HfNet<B> {
    /// The weights in the checkpoint format of the family's module tree.
    pub fn weights_bytes(&self) -> Result<Vec<u8>, ModelError> {
        each_family!(self, n => super::checkpoint::weights_to_bytes(n))
    }

    /// This network with the weights of [`HfNet::weights_bytes`] loaded.
    pub fn with_weights(self, bytes: &[u8]) -> Result<Self, ModelError> {
        use super::checkpoint::load_weights;
        Ok(match self {
            HfNet::Qwen3Vl(n) => HfNet::Qwen3Vl(load_weights(n, bytes)?),
            HfNet::InternVl(n) => HfNet::InternVl(load_weights(n, bytes)?),
        })
    }
}

/// What a stage needs to know of a checkpoint folder before loading its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct HfShape {
    pub family: Family,
    /// Image tokens one puzzle image takes in the prompt.
    pub image_tokens: usize,
    /// The longest sequence the language model was trained for, if the config says.
    pub max_positions: Option<usize>,
}

impl HfShape {
    /// The family, prompt image tokens and position limit of the checkpoint in `dir` for
    /// puzzle images of `image_size`², from its config and processor files alone.
    pub fn of_dir(dir: &Path, image_size: usize) -> Result<HfShape, ModelError> {
        if image_size == 0 {
            return Err(ModelError::Config("image_size must be positive".into()));
        }
        let family = Family::of_dir(dir)?;
        let (image_tokens, max_positions) = match family {
            Family::Qwen3Vl => qwen3_vl::prompt_shape(dir, image_size)?,
            Family::InternVl => internvl::prompt_shape(dir, image_size)?,
        };
        Ok(HfShape {
            family,
            image_tokens,
            max_positions,
        })
    }
}

/// A checkpoint model with what its stages need around the network: the puzzles' image size
/// and the ids the tokenizer knows.
#[derive(Module, Debug)]
pub struct HfVlm<B: Backend> {
    pub net: HfNet<B>,
    /// Side of the square ink grid the stages hand over (before the processor's resize).
    #[module(skip)]
    pub image_size: usize,
    /// Ids from here to the model's (padded) vocabulary size are unknown to the tokenizer: their
    /// logits are masked, so that nothing is sampled that the text would not show.
    #[module(skip)]
    pub known_ids: usize,
    /// Image tokens one puzzle image takes in the prompt ([`HfShape::image_tokens`]).
    #[module(skip)]
    pub image_tokens: usize,
}

impl<B: Backend> HfVlm<B> {
    /// Reads the checkpoint folder (`config.json`, weights, `preprocessor_config.json`) of
    /// either family.
    pub fn from_pretrained(
        dir: &Path,
        image_size: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::open(dir, image_size, true, device)
    }

    /// A model of the folder's config with random weights (its weights files, if any, unread):
    /// what a size needs in memory and time, before any download.
    pub fn from_config(
        dir: &Path,
        image_size: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::open(dir, image_size, false, device)
    }

    fn open(
        dir: &Path,
        image_size: usize,
        weights: bool,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let shape = HfShape::of_dir(dir, image_size)?;
        // Config, processor and tokenizer are checked before any weight is read.
        let known_ids = ChatTokenizer::from_dir(dir)?.known_ids();
        let net = HfNet::open(dir, weights, device)?;
        let vocab = net.vocab_size();
        if known_ids == 0 || known_ids > vocab {
            return Err(ModelError::Config(format!(
                "the tokenizer knows ids up to {known_ids}, the model's vocabulary has {vocab}"
            )));
        }
        Ok(HfVlm {
            net,
            image_size,
            known_ids,
            image_tokens: shape.image_tokens,
        })
    }

    /// Runs `rows` (each with its image of `images` [B, S, S]) as one batch: the logits
    /// [B, L, vocab] and the decoding state.
    fn run_rows(
        &self,
        images: Tensor<B, 3>,
        rows: &[Vec<u32>],
    ) -> Result<(Tensor<B, 3>, DecodeBatch<B>), ModelError> {
        let rgb = rgb_images(images)?;
        if rows.is_empty() || rgb.len() != rows.len() {
            return Err(ModelError::Input(format!(
                "{} images for {} sequences",
                rgb.len(),
                rows.len()
            )));
        }
        let ids: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let images: Vec<&Rgb> = rgb.iter().collect();
        Ok(self.net.prefill_images(&ids, &images)?)
    }

    /// `logits` [.., vocab] with the ids the tokenizer does not know masked.
    fn mask_unknown<const D: usize>(&self, logits: Tensor<B, D>) -> Tensor<B, D> {
        let v = self.net.vocab_size();
        if self.known_ids >= v {
            return logits;
        }
        let mut ranges = logits.dims().map(|n| 0..n);
        ranges[D - 1] = self.known_ids..v;
        logits.slice_fill(ranges, MASKED)
    }
}

impl<B: Backend> VisionLanguageModel<B> for HfVlm<B> {
    type State = DecodeBatch<B>;

    fn image_size(&self) -> usize {
        self.image_size
    }

    fn vocab_size(&self) -> usize {
        self.net.vocab_size()
    }

    fn forward_text(
        &self,
        images: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let (logits, _) = self.run_rows(images, &ids_of(ids)?)?;
        Ok(self.mask_unknown(logits))
    }

    fn prefill(
        &self,
        images: Tensor<B, 3>,
        prefixes: &[Vec<u32>],
    ) -> Result<(Tensor<B, 2>, DecodeBatch<B>), ModelError> {
        // One batch, shorter prompts padded on the left.
        let (logits, batch) = self.run_rows(images, prefixes)?;
        let [b, l, v] = logits.dims();
        let logits = logits.slice([0..b, l - 1..l, 0..v]).reshape([b, v]);
        Ok((self.mask_unknown(logits), batch))
    }

    fn step(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Result<Tensor<B, 2>, ModelError> {
        if tokens.len() != state.next_pos.len() {
            return Err(ModelError::Input(format!(
                "{} tokens for {} rows",
                tokens.len(),
                state.next_pos.len()
            )));
        }
        Ok(self.mask_unknown(self.net.step_batch(tokens, state)))
    }

    fn weights_bytes(&self) -> Result<Vec<u8>, ModelError> {
        self.net.weights_bytes()
    }

    fn with_weights(self, bytes: &[u8]) -> Result<Self, ModelError> {
        Ok(HfVlm {
            net: self.net.with_weights(bytes)?,
            ..self
        })
    }
}

/// Each image of `images` [B, S, S] (ink in 0..1) as RGB: white paper, black ink.
fn rgb_images<B: Backend>(images: Tensor<B, 3>) -> Result<Vec<Rgb>, ModelError> {
    let [b, h, w] = images.dims();
    let ink = super::host_f32(images)?;
    Ok((0..b)
        .map(|i| Rgb {
            width: w,
            height: h,
            pixels: ink[i * h * w..(i + 1) * h * w]
                .iter()
                .map(|&v| {
                    let g = ((1.0 - v.clamp(0.0, 1.0)) * 255.0).round() as u8;
                    [g, g, g]
                })
                .collect(),
        })
        .collect())
}

fn ids_of<B: Backend>(ids: Tensor<B, 2, Int>) -> Result<Vec<Vec<u32>>, ModelError> {
    let [b, l] = ids.dims();
    let flat = super::host_i64(ids)?;
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

/// A model of either kind, built-in or checkpoint: the one type the stages train and sample
/// from. (Made once per stage, so the variants' sizes do not matter.)
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Model<B: Backend> {
    Native(Vlm<B>),
    Hf(HfVlm<B>),
}

impl<B: Backend> From<Vlm<B>> for Model<B> {
    fn from(m: Vlm<B>) -> Self {
        Model::Native(m)
    }
}

/// Per-row decoding state of a batch of a [`Model`].
pub enum Decoding<B: Backend> {
    Native(DecodeState<B>),
    /// The batch's cache (its prompts left-padded to one length).
    Hf(DecodeBatch<B>),
}

impl<B: Backend> Fork for Decoding<B> {
    fn fork(self, rows: &[usize]) -> Self {
        match self {
            Decoding::Native(s) => Decoding::Native(s.fork(rows)),
            Decoding::Hf(s) => Decoding::Hf(Fork::fork(s, rows)),
        }
    }
}

/// `$body` with `$m` bound to the model inside `$model` (a [`Model`]).
macro_rules! each_model {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            Model::Native($m) => $body,
            Model::Hf($m) => $body,
        }
    };
}

impl<B: Backend> Model<B> {
    /// The built-in model, if this is one.
    pub fn native(&self) -> Option<&Vlm<B>> {
        match self {
            Model::Native(m) => Some(m),
            Model::Hf(_) => None,
        }
    }
}

impl<B: Backend> VisionLanguageModel<B> for Model<B> {
    type State = Decoding<B>;

    fn image_size(&self) -> usize {
        each_model!(self, m => VisionLanguageModel::image_size(m))
    }

    fn vocab_size(&self) -> usize {
        each_model!(self, m => VisionLanguageModel::vocab_size(m))
    }

    fn forward_text(
        &self,
        images: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        each_model!(self, m => VisionLanguageModel::forward_text(m, images, ids))
    }

    fn prefill(
        &self,
        images: Tensor<B, 3>,
        prefixes: &[Vec<u32>],
    ) -> Result<(Tensor<B, 2>, Decoding<B>), ModelError> {
        Ok(match self {
            Model::Native(m) => {
                let (l, s) = VisionLanguageModel::prefill(m, images, prefixes)?;
                (l, Decoding::Native(s))
            }
            Model::Hf(m) => {
                let (l, s) = m.prefill(images, prefixes)?;
                (l, Decoding::Hf(s))
            }
        })
    }

    fn step(&self, tokens: &[u32], state: &mut Decoding<B>) -> Result<Tensor<B, 2>, ModelError> {
        match (self, state) {
            (Model::Native(m), Decoding::Native(s)) => VisionLanguageModel::step(m, tokens, s),
            (Model::Hf(m), Decoding::Hf(s)) => m.step(tokens, s),
            _ => Err(ModelError::Input(
                "a decoding state of another kind of model".into(),
            )),
        }
    }

    fn weights_bytes(&self) -> Result<Vec<u8>, ModelError> {
        each_model!(self, m => m.weights_bytes())
    }

    fn with_weights(self, bytes: &[u8]) -> Result<Self, ModelError> {
        Ok(match self {
            Model::Native(m) => Model::Native(m.with_weights(bytes)?),
            Model::Hf(m) => Model::Hf(m.with_weights(bytes)?),
        })
    }
}
