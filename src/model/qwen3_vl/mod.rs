//! Qwen3-VL (`Qwen3VLForConditionalGeneration`) in burn, built from a Hugging Face checkpoint's
//! `config.json` and loaded from its safetensors. The module tree mirrors the checkpoint's key
//! paths (`model.visual.*`, `model.language_model.*`, `lm_head`), so loading is burn-store's
//! PyTorch adapter (linear weights transposed, layer-norm `weight`/`bias` named `gamma`/`beta`)
//! and nothing else.
//!
//! - [`vision`]: the vision tower with its DeepStack mergers.
//! - [`crate::model::hf::text`]: the Qwen3 language model (shared with InternVL3.5).
//! - [`rope_index`]: the 3-axis (temporal, height, width) positions of an image + text sequence.
//!
//! Out of scope: video, the thinking-mode chat template.

pub mod config;
pub mod processor;
pub mod reference;
pub mod vision;

pub use config::Qwen3VlConfig;

use crate::model::hf::family::{Checkpoint, check_pairs};
use crate::model::hf::image::Rgb;
use crate::model::hf::reference::{Parity, Reference};
use crate::model::hf::text;
use crate::model::hf::{
    HfError, Result, checkpoint_err, load_safetensors, read_config, save_safetensors, untied_config,
};
use crate::text::chat::Family;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use processor::ProcessorConfig;
use std::path::Path;

/// A layer norm as the vision tower uses it (ε = 1e-6).
fn layer_norm<B: Backend>(d: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d).with_epsilon(1e-6).init(device)
}

/// `Qwen3VLModel`: the vision tower and the language model.
#[derive(Module, Debug)]
pub struct Qwen3VlModel<B: Backend> {
    pub visual: vision::VisionModel<B>,
    pub language_model: text::TextModel<B>,
}

/// `Qwen3VLForConditionalGeneration`.
#[derive(Module, Debug)]
pub struct Qwen3Vl<B: Backend> {
    pub model: Qwen3VlModel<B>,
    /// Absent when the head is tied to the token embeddings.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub cfg: Qwen3VlConfig,
    /// The checkpoint's `config.json` as read, written back unchanged by
    /// [`Qwen3Vl::save_pretrained`].
    #[module(skip)]
    pub config_json: String,
    /// The folder's `preprocessor_config.json` (Qwen3-VL's defaults without one).
    #[module(skip)]
    pub processor: ProcessorConfig,
}

/// A sequence being decoded: the layers' keys and values and the position of the next token
/// (after an image, text positions continue from the largest position so far).
#[derive(Clone)]
pub struct Decode<B: Backend> {
    pub cache: text::TextCache<B>,
    pub next_pos: i64,
}

pub use text::DecodeBatch;

/// One image's inputs as the processor gives them: patch rows [N, C·T·P·P] in merge-window order
/// and the patch grid (t, h, w).
pub struct ImageInput<B: Backend> {
    pub pixel_values: Tensor<B, 2>,
    pub grid: [usize; 3],
}

impl<B: Backend> Qwen3Vl<B> {
    /// A model of `cfg`'s shapes with placeholder weights (load a checkpoint into it).
    pub fn new(cfg: &Qwen3VlConfig, device: &B::Device) -> Result<Self> {
        cfg.validate()?;
        let tied = cfg.tie_word_embeddings;
        let t = &cfg.text_config;
        Ok(Qwen3Vl {
            model: Qwen3VlModel {
                visual: vision::VisionModel::new(&cfg.vision_config, device),
                language_model: text::TextModel::new(t, device),
            },
            lm_head: (!tied).then(|| text::untied_head(t, device)),
            cfg: cfg.clone(),
            config_json: String::new(),
            processor: ProcessorConfig::default(),
        })
    }

    /// Reads `dir/config.json`, `dir/preprocessor_config.json` and the weights
    /// (`model.safetensors`, or the shards listed in `model.safetensors.index.json`).
    pub fn from_pretrained(dir: &Path, device: &B::Device) -> Result<Self> {
        let mut model = Self::from_config(dir, device)?;
        model.load_weights(dir)?;
        Ok(model)
    }

    /// The model of `dir/config.json` and `dir/preprocessor_config.json`, its weights not read.
    pub fn from_config(dir: &Path, device: &B::Device) -> Result<Self> {
        let (cfg, text) = read_config::<Qwen3VlConfig>(dir)?;
        Ok(Qwen3Vl {
            config_json: text,
            processor: ProcessorConfig::from_dir(dir)?,
            ..Self::new(&cfg, device).map_err(|e| checkpoint_err(&dir.join("config.json"), e))?
        })
    }

    /// One image as the vision tower reads it: the processor's patch rows and grid.
    pub fn image_input(&self, image: &Rgb) -> Result<ImageInput<B>> {
        let (rows, grid) = self.processor.preprocess(image)?;
        let n = grid.iter().product::<usize>();
        let width = rows.len() / n.max(1);
        Ok(ImageInput {
            pixel_values: Tensor::from_data(TensorData::new(rows, [n, width]), &self.device()),
            grid,
        })
    }

    /// Writes `dir/config.json` (the one read) and `dir/model.safetensors` in the checkpoint's
    /// layout (its key names, PyTorch's `[out, in]` linear weights, `format = pt` metadata), so
    /// transformers loads the result.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        save_safetensors(self, dir, &self.config_json)
    }

    /// Loads every parameter from the checkpoint's safetensors; a parameter the files lack, or
    /// a tensor of the wrong shape, is an error naming it.
    ///
    /// A config that ties the head to the embeddings while the files hold a head
    /// (`lm_head.weight`) gets that head, as transformers does, unless it equals the embeddings;
    /// the config kept for [`Qwen3Vl::save_pretrained`] then says the head is untied, so that
    /// every reader keeps it.
    pub fn load_weights(&mut self, dir: &Path) -> Result<()> {
        let stored = load_safetensors(self, dir, &[], &["lm_head.weight"])?;
        if self.lm_head.is_none() && !stored.is_empty() {
            let t = &self.cfg.text_config;
            self.lm_head = Some(text::untied_head(t, &self.device()));
            load_safetensors(self, dir, &[], &[])?;
            if let Some(head) = &self.lm_head
                && text::head_is_embeddings(head, &self.model.language_model)?
            {
                self.lm_head = None;
            } else {
                self.cfg.tie_word_embeddings = false;
                self.config_json = untied_config(&self.config_json, &dir.join("config.json"))?;
            }
        }
        Ok(())
    }

    /// Logits [1, L, vocab] of one sequence `ids` whose image tokens stand for `images` (in
    /// order; each contributes t·h·w / m² tokens).
    pub fn forward(&self, ids: &[u32], images: &[ImageInput<B>]) -> Result<Tensor<B, 3>> {
        Ok(self.prefill_all(ids, images)?.0)
    }

    /// Runs a prompt into a fresh cache: the logits of its last position [1, vocab] and the
    /// state to continue from with [`Qwen3Vl::step`].
    pub fn prefill(
        &self,
        ids: &[u32],
        images: &[ImageInput<B>],
    ) -> Result<(Tensor<B, 2>, Decode<B>)> {
        let (logits, state) = self.prefill_all(ids, images)?;
        let [_, l, v] = logits.dims();
        Ok((logits.slice([0..1, l - 1..l, 0..v]).reshape([1, v]), state))
    }

    /// Feeds one token after the cached ones: the next logits [1, vocab].
    pub fn step(&self, token: u32, state: &mut Decode<B>) -> Tensor<B, 2> {
        let mut batch = DecodeBatch {
            cache: std::mem::take(&mut state.cache),
            next_pos: vec![state.next_pos],
        };
        let logits = self.step_batch(&[token], &mut batch);
        state.cache = batch.cache;
        state.next_pos = batch.next_pos[0];
        logits
    }

    /// Feeds one token per row of a batch after its cached positions: the next logits
    /// [B, vocab].
    pub fn step_batch(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Tensor<B, 2> {
        self.model
            .language_model
            .step_batch(tokens, state, self.lm_head.as_ref())
    }

    fn prefill_all(
        &self,
        ids: &[u32],
        images: &[ImageInput<B>],
    ) -> Result<(Tensor<B, 3>, Decode<B>)> {
        let (logits, batch) = self.prefill_rows(&[ids], &[images])?;
        let next_pos = batch.next_pos.first().copied().unwrap_or(0);
        Ok((
            logits,
            Decode {
                cache: batch.cache,
                next_pos,
            },
        ))
    }

    /// Runs sequences (`rows[i]`, whose image tokens stand for `images[i]`) as one batch into a
    /// fresh cache: the logits [B, L, vocab], L the longest row, and the state to decode on from.
    /// Shorter rows are padded on the left with keys no query sees, so each row's logits are
    /// those it gets alone, its last token's at position L − 1.
    pub fn prefill_rows(
        &self,
        rows: &[&[u32]],
        images: &[&[ImageInput<B>]],
    ) -> Result<(Tensor<B, 3>, DecodeBatch<B>)> {
        let device = self.device();
        let cfg = &self.cfg;
        let m2 = cfg.vision_config.spatial_merge_size.pow(2);
        let counts: Vec<(usize, usize)> = images
            .iter()
            .map(|imgs| {
                let features = imgs.iter().map(|i| i.grid.iter().product::<usize>() / m2);
                (imgs.len(), features.sum())
            })
            .collect();
        let packed = text::PackedRows::new(
            rows,
            cfg.text_config.vocab_size,
            cfg.image_token_id,
            &counts,
            |r, ids| {
                let grids: Vec<[usize; 3]> = images[r].iter().map(|i| i.grid).collect();
                rope_index(cfg, ids, &grids)
            },
        )?;
        let all: Vec<&ImageInput<B>> = images.iter().flat_map(|i| i.iter()).collect();
        let (embeds, deepstack) = if all.is_empty() {
            (None, Vec::new())
        } else {
            let pixels = Tensor::cat(all.iter().map(|i| i.pixel_values.clone()).collect(), 0);
            let grids: Vec<[usize; 3]> = all.iter().map(|i| i.grid).collect();
            let vis = self.model.visual.forward(pixels, &grids);
            (Some(vis.embeds), vis.deepstack)
        };
        Ok(self.model.language_model.prefill(
            &packed,
            embeds,
            deepstack,
            self.lm_head.as_ref(),
            &device,
        ))
    }

    /// Greedy continuation of `prompt` (whose image tokens stand for `images`): at most `max_new`
    /// tokens, ending after the first one in `stop`.
    pub fn greedy(
        &self,
        prompt: &[u32],
        images: &[ImageInput<B>],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        if max_new == 0 {
            return Ok(Vec::new());
        }
        let (logits, mut state) = self.prefill(prompt, images)?;
        text::greedy(logits, max_new, stop, |tok| self.step(tok, &mut state))
    }

    pub fn device(&self) -> B::Device {
        self.model.language_model.embed_tokens.weight.val().device()
    }
}

impl<B: Backend> Checkpoint<B> for Qwen3Vl<B> {
    fn family(&self) -> Family {
        Family::Qwen3Vl
    }

    fn open(dir: &Path, weights: bool, device: &B::Device) -> Result<Self> {
        let mut model = Self::from_config(dir, device)?;
        model.processor.check(&model.cfg.vision_config)?;
        if weights {
            model.load_weights(dir)?;
        }
        Ok(model)
    }

    fn vocab_size(&self) -> usize {
        self.cfg.text_config.vocab_size
    }

    fn text_model(&self) -> &text::TextModel<B> {
        &self.model.language_model
    }

    fn device(&self) -> B::Device {
        Qwen3Vl::device(self)
    }

    fn image_tokens(&self, width: usize, height: usize) -> Result<usize> {
        self.processor.image_tokens(height, width)
    }

    fn prefill_images(
        &self,
        rows: &[&[u32]],
        images: &[&Rgb],
    ) -> Result<(Tensor<B, 3>, DecodeBatch<B>)> {
        check_pairs(rows.len(), images.len())?;
        let inputs = images
            .iter()
            .map(|img| self.image_input(img))
            .collect::<Result<Vec<_>>>()?;
        let per_row: Vec<&[ImageInput<B>]> = inputs.iter().map(std::slice::from_ref).collect();
        self.prefill_rows(rows, &per_row)
    }

    fn step_batch(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Tensor<B, 2> {
        Qwen3Vl::step_batch(self, tokens, state)
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        Qwen3Vl::save_pretrained(self, dir)
    }

    fn parity(&self, reference: &Reference) -> Result<Parity> {
        reference::parity(self, reference)
    }
}

/// Image tokens a puzzle image of `image_size`² takes in the prompt and the position limit of
/// the language model (if the config states one), from the folder's config and processor
/// files alone.
pub fn prompt_shape(dir: &Path, image_size: usize) -> Result<(usize, Option<usize>)> {
    let (cfg, _) = read_config::<Qwen3VlConfig>(dir)?;
    let tokens = ProcessorConfig::from_dir(dir)?.image_tokens(image_size, image_size)?;
    Ok((tokens, cfg.text_config.max_position_embeddings))
}

/// The 3-axis positions (temporal, height, width) of a sequence, as transformers'
/// `get_rope_index` gives them: text tokens count up on all three axes; the tokens of an image
/// with grid (t, h, w) and merge m sit at (s, s + r, s + c) for merged row r < h/m and column
/// c < w/m, s being the position after the preceding text; text after the image continues at
/// s + max(h, w)/m.
pub fn rope_index(cfg: &Qwen3VlConfig, ids: &[u32], grids: &[[usize; 3]]) -> Result<[Vec<i64>; 3]> {
    let m = cfg.vision_config.spatial_merge_size;
    let mut out: [Vec<i64>; 3] = Default::default();
    let mut grids = grids.iter();
    let mut pos = 0i64;
    let mut i = 0;
    while i < ids.len() {
        // An image-token run stands for the next image; once the images are used up, image
        // tokens are text.
        let image = if ids[i] == cfg.image_token_id {
            grids.next()
        } else {
            None
        };
        let Some(&[t, h, w]) = image else {
            for axis in &mut out {
                axis.push(pos);
            }
            pos += 1;
            i += 1;
            continue;
        };
        let run = ids[i..]
            .iter()
            .take_while(|&&x| x == cfg.image_token_id)
            .count();
        let (gh, gw) = (h / m, w / m);
        if run != t * gh * gw {
            return Err(HfError::Input(format!(
                "an image of grid {t}×{h}×{w} needs {} image tokens, the ids have {run} in a row",
                t * gh * gw
            )));
        }
        for ti in 0..t {
            for r in 0..gh {
                for c in 0..gw {
                    out[0].push(pos + ti as i64);
                    out[1].push(pos + r as i64);
                    out[2].push(pos + c as i64);
                }
            }
        }
        pos += gh.max(gw) as i64;
        i += run;
    }
    if grids.next().is_some() {
        return Err(HfError::Input("more images than image-token runs".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Qwen3VlConfig {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl/tied/config.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    /// A config the model cannot run names the key that breaks it.
    #[test]
    fn bad_configs_name_their_key() {
        cfg().validate().unwrap();
        let mut c = cfg();
        c.vision_config.num_heads = 0;
        assert_eq!(c.validate().unwrap_err().field, "vision_config.num_heads");
        let mut c = cfg();
        c.text_config.use_sliding_window = true;
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "text_config.use_sliding_window");
        assert!(e.to_string().contains("not supported"), "{e}");
        let mut c = cfg();
        c.text_config.hidden_act = "relu".into();
        assert_eq!(c.validate().unwrap_err().field, "text_config.hidden_act");
    }

    /// Image tokens after the images are used up (as a sampled `<|image_pad|>`) are text: they
    /// count up on every axis and are not image slots.
    #[test]
    fn image_tokens_beyond_the_images_are_text() {
        let c = cfg();
        let im = c.image_token_id;
        let m = c.vision_config.spatial_merge_size;
        let grid = [1, 2 * m, 2 * m];
        let ids = [7, im, im, im, im, 8, im, 9];
        let [t, h, w] = rope_index(&c, &ids, &[grid]).unwrap();
        assert_eq!(t, [0, 1, 1, 1, 1, 3, 4, 5]);
        assert_eq!(h, [0, 1, 1, 2, 2, 3, 4, 5]);
        assert_eq!(w, [0, 1, 2, 1, 2, 3, 4, 5]);
        assert_eq!(text::image_slots(im, &ids, 1), [1, 2, 3, 4]);
        assert!(text::image_slots(im, &ids, 0).is_empty());
        assert_eq!(text::image_slots(im, &ids, 2), [1, 2, 3, 4, 6]);
        // Too few image tokens for the grid is still an error.
        assert!(rope_index(&c, &[7, im, 8], &[grid]).is_err());
    }
}
