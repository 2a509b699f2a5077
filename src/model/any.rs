//! The model a stage trains or samples from: the built-in [`Vlm`] or a Hugging Face checkpoint's
//! architecture ([`HfVlm`]: Qwen3-VL or InternVL3.5). Training, decoding and evaluation go
//! through [`Model`]'s batched interface, so the objectives, the sampler and the metrics are the
//! same for all.
//!
//! Images reach every model as ink in 0..1 on an `image_size`² grid (the puzzles are
//! grayscale); a checkpoint model turns each into the RGB inputs its processor would give
//! (white paper, black ink), so a puzzle reads the same whichever model looks at it.

use super::ModelError;
use super::hf::image::Rgb;
use super::hf::read_config;
use super::hf::text::DecodeBatch;
use super::internvl::InternVl;
use super::internvl::processor::TileConfig;
use super::layers::MASKED;
use super::qwen3_vl::processor::ProcessorConfig;
use super::qwen3_vl::{ImageInput, Qwen3Vl};
use super::vlm::{DecodeState, Vlm};
use crate::text::chat::{ChatTokenizer, Family};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use std::path::Path;

/// A checkpoint's network, of one family.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum HfNet<B: Backend> {
    Qwen3Vl(Qwen3Vl<B>),
    InternVl(InternVl<B>),
}

/// A checkpoint family's image processing.
#[derive(Debug, Clone)]
pub enum ImageProcessor {
    /// Resize to the patch grid, patch rows in merge-window order.
    Qwen3Vl(ProcessorConfig),
    /// Tiles (and a thumbnail).
    InternVl(TileConfig),
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

impl ImageProcessor {
    fn from_dir(family: Family, dir: &Path) -> Result<Self, ModelError> {
        Ok(match family {
            Family::Qwen3Vl => ImageProcessor::Qwen3Vl(ProcessorConfig::from_dir(dir)?),
            Family::InternVl => ImageProcessor::InternVl(TileConfig::from_dir(dir)?),
        })
    }
}

/// A checkpoint model with the image processing its stages need.
#[derive(Module, Debug)]
pub struct HfVlm<B: Backend> {
    pub net: HfNet<B>,
    #[module(skip)]
    pub processor: ImageProcessor,
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

impl HfShape {
    /// The family, prompt image tokens and position limit of the checkpoint in `dir` for
    /// puzzle images of `image_size`², from its config and processor files alone.
    pub fn of_dir(dir: &Path, image_size: usize) -> Result<HfShape, ModelError> {
        Ok(Self::read(dir, image_size)?.0)
    }

    /// [`HfShape::of_dir`] and the folder's image processor.
    fn read(dir: &Path, image_size: usize) -> Result<(HfShape, ImageProcessor), ModelError> {
        if image_size == 0 {
            return Err(ModelError::Config("image_size must be positive".into()));
        }
        let family = Family::of_dir(dir)?;
        let processor = ImageProcessor::from_dir(family, dir)?;
        let (image_tokens, max_positions) = match &processor {
            ImageProcessor::Qwen3Vl(p) => {
                let (cfg, _) = read_config::<super::qwen3_vl::Qwen3VlConfig>(dir)?;
                (
                    p.image_tokens(image_size, image_size)?,
                    cfg.text_config.max_position_embeddings,
                )
            }
            ImageProcessor::InternVl(p) => {
                let (cfg, _) = read_config::<super::internvl::InternVlConfig>(dir)?;
                (
                    p.tiles(image_size, image_size) * cfg.tokens_per_tile(),
                    cfg.text_config.max_position_embeddings,
                )
            }
        };
        let shape = HfShape {
            family,
            image_tokens,
            max_positions,
        };
        Ok((shape, processor))
    }
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
        let (shape, processor) = HfShape::read(dir, image_size)?;
        // Config, processor and tokenizer are checked before any weight is read.
        let known_ids = ChatTokenizer::from_dir(dir)?.known_ids();
        let net = match &processor {
            ImageProcessor::Qwen3Vl(p) => {
                let (cfg, text) = read_config::<super::qwen3_vl::Qwen3VlConfig>(dir)?;
                p.check(&cfg.vision_config)?;
                HfNet::Qwen3Vl(if weights {
                    Qwen3Vl::from_pretrained(dir, device)?
                } else {
                    Qwen3Vl {
                        config_json: text,
                        ..Qwen3Vl::new(&cfg, device)?
                    }
                })
            }
            ImageProcessor::InternVl(p) => {
                let (cfg, text) = read_config::<super::internvl::InternVlConfig>(dir)?;
                p.check(cfg.vision_config.image_size)?;
                HfNet::InternVl(if weights {
                    InternVl::from_pretrained(dir, device)?
                } else {
                    InternVl {
                        config_json: text,
                        ..InternVl::new(&cfg, device)?
                    }
                })
            }
        };
        let vocab = net.vocab_size();
        if known_ids == 0 || known_ids > vocab {
            return Err(ModelError::Config(format!(
                "the tokenizer knows ids up to {known_ids}, the model's vocabulary has {vocab}"
            )));
        }
        Ok(HfVlm {
            net,
            processor,
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
        let device = self.net.device();
        Ok(match (&self.net, &self.processor) {
            (HfNet::Qwen3Vl(m), ImageProcessor::Qwen3Vl(p)) => {
                let inputs = rgb
                    .iter()
                    .map(|img| {
                        let (rows, grid) = p.preprocess(img)?;
                        let n = grid.iter().product::<usize>();
                        let width = rows.len() / n.max(1);
                        let pixel_values =
                            Tensor::from_data(TensorData::new(rows, [n, width]), &device);
                        Ok(ImageInput { pixel_values, grid })
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                let images: Vec<&[ImageInput<B>]> =
                    inputs.iter().map(std::slice::from_ref).collect();
                m.prefill_rows(&ids, &images)?
            }
            (HfNet::InternVl(m), ImageProcessor::InternVl(p)) => {
                let tiles = rgb
                    .iter()
                    .map(|img| {
                        let (values, n) = p.preprocess(img)?;
                        let shape = [n, 3, p.size.height, p.size.width];
                        Ok(Some(Tensor::from_data(
                            TensorData::new(values, shape),
                            &device,
                        )))
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                m.prefill_rows(&ids, &tiles)?
            }
            _ => {
                return Err(ModelError::Config(
                    "a processor of another family than the model".into(),
                ));
            }
        })
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

impl<B: Backend> HfNet<B> {
    pub fn vocab_size(&self) -> usize {
        match self {
            HfNet::Qwen3Vl(m) => m.cfg.text_config.vocab_size,
            HfNet::InternVl(m) => m.vocab_size(),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            HfNet::Qwen3Vl(_) => Family::Qwen3Vl,
            HfNet::InternVl(_) => Family::InternVl,
        }
    }

    /// The Qwen3 language model both families share.
    pub fn text_model(&self) -> &super::hf::text::TextModel<B> {
        match self {
            HfNet::Qwen3Vl(m) => &m.model.language_model,
            HfNet::InternVl(m) => &m.language_model.model,
        }
    }

    fn device(&self) -> B::Device {
        match self {
            HfNet::Qwen3Vl(m) => m.device(),
            HfNet::InternVl(m) => m.device(),
        }
    }

    fn step_batch(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Tensor<B, 2> {
        match self {
            HfNet::Qwen3Vl(m) => m.step_batch(tokens, state),
            HfNet::InternVl(m) => m.step_batch(tokens, state),
        }
    }

    /// Writes the checkpoint folder's config and weights in the family's layout.
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), ModelError> {
        match self {
            HfNet::Qwen3Vl(m) => m.save_pretrained(dir)?,
            HfNet::InternVl(m) => m.save_pretrained(dir)?,
        }
        Ok(())
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

/// A model of either family. (Made once per stage, so the variants' sizes do not matter.)
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

/// Per-row decoding state of a batch ([`Model::prefill`], [`Model::step`]).
pub enum Decoding<B: Backend> {
    Native(DecodeState<B>),
    /// The batch's cache (its prompts left-padded to one length).
    Hf(DecodeBatch<B>),
}

impl<B: Backend> Decoding<B> {
    /// The state of a batch whose row i continues row `rows[i]` of this one.
    pub fn fork(self, rows: &[usize]) -> Self {
        match self {
            Decoding::Native(s) => Decoding::Native(s.fork(rows)),
            Decoding::Hf(s) => Decoding::Hf(s.select(rows)),
        }
    }
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

impl<B: Backend> Model<B> {
    /// Side of the square ink grid the model reads.
    pub fn image_size(&self) -> usize {
        match self {
            Model::Native(m) => m.image_size,
            Model::Hf(m) => m.image_size,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Native(m) => m.embed.weight.dims()[0],
            Model::Hf(m) => m.net.vocab_size(),
        }
    }

    /// The weights in the checkpoint format of the family's own module tree
    /// ([`super::checkpoint::weights_to_bytes`] of the inner model, so a built-in model's bytes
    /// do not depend on this wrapper).
    pub fn weights_bytes(&self) -> Result<Vec<u8>, ModelError> {
        match self {
            Model::Native(m) => super::checkpoint::weights_to_bytes(m),
            Model::Hf(m) => match &m.net {
                HfNet::Qwen3Vl(n) => super::checkpoint::weights_to_bytes(n),
                HfNet::InternVl(n) => super::checkpoint::weights_to_bytes(n),
            },
        }
    }

    /// This model with the weights of [`Model::weights_bytes`] loaded.
    pub fn with_weights(self, bytes: &[u8]) -> Result<Self, ModelError> {
        use super::checkpoint::load_weights;
        Ok(match self {
            Model::Native(m) => Model::Native(load_weights(m, bytes)?),
            Model::Hf(HfVlm {
                net,
                processor,
                image_size,
                known_ids,
                image_tokens,
            }) => Model::Hf(HfVlm {
                net: match net {
                    HfNet::Qwen3Vl(n) => HfNet::Qwen3Vl(load_weights(n, bytes)?),
                    HfNet::InternVl(n) => HfNet::InternVl(load_weights(n, bytes)?),
                },
                processor,
                image_size,
                known_ids,
                image_tokens,
            }),
        })
    }

    /// The built-in model, if this is one.
    pub fn native(&self) -> Option<&Vlm<B>> {
        match self {
            Model::Native(m) => Some(m),
            Model::Hf(_) => None,
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
            Model::Hf(m) => {
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
            Model::Hf(m) => {
                // One batch, shorter prompts padded on the left.
                let (logits, batch) = m.run_rows(images, prefixes)?;
                let [b, l, v] = logits.dims();
                let logits = logits.slice([0..b, l - 1..l, 0..v]).reshape([b, v]);
                Ok((m.mask_unknown(logits), Decoding::Hf(batch)))
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
            (Model::Hf(m), Decoding::Hf(s)) => {
                if tokens.len() != s.next_pos.len() {
                    return Err(ModelError::Input(format!(
                        "{} tokens for {} rows",
                        tokens.len(),
                        s.next_pos.len()
                    )));
                }
                Ok(m.mask_unknown(m.net.step_batch(tokens, s)))
            }
            _ => Err(ModelError::Input(
                "a decoding state of another model family".into(),
            )),
        }
    }
}
