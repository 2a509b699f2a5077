//! InternVL3.5 (`InternVLForConditionalGeneration`, transformers' layout of the `-HF`
//! checkpoints) in burn, built from the checkpoint's `config.json` and loaded from its
//! safetensors. The module tree mirrors the checkpoint's key paths (`vision_tower.*`,
//! `multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head`), so loading
//! is burn-store's PyTorch adapter and nothing else.
//!
//! - [`vision`], InternViT;
//! - the projector: the tower's patch features, the class token dropped, folded by the pixel
//!   shuffle (`1/downsample_ratio`² neighbouring patches → one token), then layer norm, linear,
//!   GELU, linear to the LM's width.
//! - the Qwen3 language model ([`crate::model::hf::text`], shared with Qwen3-VL) with 1-D
//!   rotary positions.
//! - [`processor`], the image tiling.
//!
//! An image is its tiles (a thumbnail last when there are several); its tokens in the prompt are
//! one run of `tiles × tokens_per_tile` image-context tokens between `<img>` and `</img>`.
//! Out of scope: video, several images per prompt, the remote-code checkpoints' key layout
//! (`vision_model.*`, `mlp1.*`; convert them with transformers first).

pub mod config;
pub mod processor;
pub mod vision;

pub use config::InternVlConfig;

use crate::model::hf::family::{Checkpoint, check_pairs};
use crate::model::hf::image::Rgb;
use crate::model::hf::reference::{Parity, Reference, watch_finite};
use crate::model::hf::text::{self, DecodeBatch, PackedRows, TextModel};
use crate::model::hf::{HfError, Result, act, checkpoint_err, load_safetensors, read_config};
use crate::model::layers::linear3;
use crate::text::chat::Family;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use processor::TileConfig;
use std::path::Path;
use vision::{Norm, VisionModel};

/// The key names of transformers' in-memory module tree (`model.vision_tower.*`, …,
/// `lm_head.*`), which some tools save, mapped to the layout of the published `-HF`
/// checkpoints that this module tree mirrors (and that transformers' `save_pretrained` writes).
const KEYS_AS_IN_MEMORY: &[(&str, &str)] = &[
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^lm_head\.", "language_model.lm_head."),
];

/// `multi_modal_projector`.
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub layer_norm: Norm<B>,
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
    #[module(skip)]
    pub act: String,
}

/// `language_model`: the decoder and, when untied, its head.
#[derive(Module, Debug)]
pub struct CausalLm<B: Backend> {
    pub model: TextModel<B>,
    pub lm_head: Option<Linear<B>>,
}

/// `InternVLForConditionalGeneration`.
#[derive(Module, Debug)]
pub struct InternVl<B: Backend> {
    pub vision_tower: VisionModel<B>,
    pub multi_modal_projector: Projector<B>,
    pub language_model: CausalLm<B>,
    #[module(skip)]
    pub cfg: InternVlConfig,
    /// The checkpoint's `config.json` as read, written back unchanged by
    /// [`InternVl::save_pretrained`].
    #[module(skip)]
    pub config_json: String,
    /// The folder's `preprocessor_config.json` (InternVL's defaults without one).
    #[module(skip)]
    pub processor: TileConfig,
}

impl<B: Backend> InternVl<B> {
    /// A model of `cfg`'s shapes with placeholder weights (load a checkpoint into it).
    pub fn new(cfg: &InternVlConfig, device: &B::Device) -> Result<Self> {
        cfg.validate()?;
        let t = cfg.lm_config();
        let folded = cfg.vision_config.hidden_size * cfg.shuffle().pow(2);
        Ok(InternVl {
            vision_tower: VisionModel::new(&cfg.vision_config, device),
            multi_modal_projector: Projector {
                // nn.LayerNorm's default ε.
                layer_norm: Norm::new(folded, false, 1e-5, device),
                linear_1: LinearConfig::new(folded, t.hidden_size).init(device),
                linear_2: LinearConfig::new(t.hidden_size, t.hidden_size).init(device),
                act: cfg.projector_hidden_act.clone(),
            },
            language_model: CausalLm {
                model: TextModel::new(&t, device),
                lm_head: (!cfg.tie_word_embeddings).then(|| text::untied_head(&t, device)),
            },
            cfg: cfg.clone(),
            config_json: String::new(),
            processor: TileConfig::default(),
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
        let (cfg, text) = read_config::<InternVlConfig>(dir)?;
        Ok(InternVl {
            config_json: text,
            processor: TileConfig::from_dir(dir)?,
            ..Self::new(&cfg, device).map_err(|e| checkpoint_err(&dir.join("config.json"), e))?
        })
    }

    /// Loads every parameter from the checkpoint's safetensors; a parameter the files lack, or
    /// a tensor of the wrong shape, is an error naming it.
    pub fn load_weights(&mut self, dir: &Path) -> Result<()> {
        // A config that ties the head while the files hold one: that head, as transformers
        // does, unless it equals the embeddings (the config to save then says untied).
        let head = "language_model.lm_head.weight";
        let stored = load_safetensors(self, dir, KEYS_AS_IN_MEMORY, &[head])?;
        if self.language_model.lm_head.is_none() && !stored.is_empty() {
            let device = self.device();
            let lm = &mut self.language_model;
            lm.lm_head = Some(text::untied_head(&lm.model.cfg, &device));
            load_safetensors(self, dir, KEYS_AS_IN_MEMORY, &[])?;
            let lm = &mut self.language_model;
            if let Some(head) = &lm.lm_head
                && text::head_is_embeddings(head, &lm.model)?
            {
                lm.lm_head = None;
            } else {
                self.cfg.tie_word_embeddings = false;
                self.config_json =
                    crate::model::hf::untied_config(&self.config_json, &dir.join("config.json"))?;
            }
        }
        Ok(())
    }

    /// One image as the vision tower reads it: the processor's tiles [N, C, S, S].
    pub fn image_tiles(&self, image: &Rgb) -> Result<Tensor<B, 4>> {
        let (values, n) = self.processor.preprocess(image)?;
        let shape = [n, 3, self.processor.size.height, self.processor.size.width];
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device(),
        ))
    }

    /// Writes `dir/config.json` (the one read) and `dir/model.safetensors` in the checkpoint's
    /// layout, so transformers loads the result.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        crate::model::hf::save_safetensors(self, dir, &self.config_json)
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.text_config.vocab_size
    }

    /// The image tokens of tiles `pixels` [N, C, S, S]: [N · tokens_per_tile, LM width], tile
    /// by tile.
    ///
    /// # Shapes
    /// - pixels: `[N, C, S, S]` → `[N · (S/P/r)², d_lm]`, r = 1/downsample_ratio
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        self.project(self.vision_tower.forward(pixels))
    }

    /// The image tokens [N · tokens_per_tile, LM width] of the tower's last hidden states
    /// [N, 1 + patches, hidden]: pixel shuffle and projector.
    pub fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, t, d] = hidden.dims();
        let g = self.cfg.vision_config.grid();
        let r = self.cfg.shuffle();
        // The class token dropped; [N, g, g, d] folded to [N, g/r, g/r, d·r²] as the
        // reference's pixel shuffle does it (two reshapes, each after swapping the sides).
        let x = hidden
            .slice([0..n, 1..t, 0..d])
            .reshape([n, g, g / r, d * r])
            .swap_dims(1, 2)
            .reshape([n, g / r, g / r, d * r * r])
            .swap_dims(1, 2)
            .reshape([n, (g / r) * (g / r), d * r * r]);
        let p = &self.multi_modal_projector;
        let y = linear3(&p.linear_1, p.layer_norm.forward(x));
        let y = linear3(&p.linear_2, act(y, &p.act));
        let [_, k, w] = y.dims();
        y.reshape([n * k, w])
    }

    /// Runs sequences (`rows[i]`, whose first image-token run stands for the tiles `tiles[i]`
    /// [N_i, C, S, S], or no image) as one batch into a fresh cache: the logits
    /// [B, L, vocab], L the longest row, and the state to decode on from. Shorter rows are
    /// padded on the left with keys no query sees.
    pub fn prefill_rows(
        &self,
        rows: &[&[u32]],
        tiles: &[Option<Tensor<B, 4>>],
    ) -> Result<(Tensor<B, 3>, DecodeBatch<B>)> {
        for t in tiles.iter().flatten() {
            self.check_tiles(t)?;
        }
        let per_tile = self.cfg.tokens_per_tile();
        let counts: Vec<(usize, usize)> = tiles
            .iter()
            .map(|t| t.as_ref().map_or((0, 0), |t| (1, t.dims()[0] * per_tile)))
            .collect();
        let packed = PackedRows::new(
            rows,
            self.vocab_size(),
            self.cfg.image_token_id,
            &counts,
            |_, ids| Ok(PackedRows::sequential(ids)),
        )?;
        let all: Vec<Tensor<B, 4>> = tiles.iter().flatten().cloned().collect();
        let embeds = (!all.is_empty()).then(|| self.image_features(Tensor::cat(all, 0)));
        let lm = &self.language_model;
        Ok(lm.model.prefill(
            &packed,
            embeds,
            Vec::new(),
            lm.lm_head.as_ref(),
            &self.device(),
        ))
    }

    /// Tiles must be the tower's squares: `[N ≥ 1, channels, image_size, image_size]` (the
    /// reference would interpolate the positions for another size; its processor never gives
    /// one).
    pub fn check_tiles(&self, tiles: &Tensor<B, 4>) -> Result<()> {
        let v = &self.cfg.vision_config;
        let [n, c, h, w] = tiles.dims();
        if n == 0 || c != v.num_channels || h != v.image_size || w != v.image_size {
            return Err(HfError::Input(format!(
                "tiles of shape [{n}, {c}, {h}, {w}]; the vision tower reads [N, {}, {s}, {s}]",
                v.num_channels,
                s = v.image_size
            )));
        }
        Ok(())
    }

    /// Feeds one token per row of a batch after its cached positions: the next logits
    /// [B, vocab].
    pub fn step_batch(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Tensor<B, 2> {
        let lm = &self.language_model;
        lm.model.step_batch(tokens, state, lm.lm_head.as_ref())
    }

    /// Greedy continuation of `prompt` (whose image-token run stands for `tiles`): at most
    /// `max_new` tokens, ending after the first one in `stop`.
    pub fn greedy(
        &self,
        prompt: &[u32],
        tiles: Tensor<B, 4>,
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        if max_new == 0 {
            return Ok(Vec::new());
        }
        let (logits, mut state) = self.prefill_rows(&[prompt], &[Some(tiles)])?;
        let [_, l, v] = logits.dims();
        let first = logits.slice([0..1, l - 1..l, 0..v]).reshape([1, v]);
        text::greedy(first, max_new, stop, |tok| {
            self.step_batch(&[tok], &mut state)
        })
    }

    pub fn device(&self) -> B::Device {
        self.language_model.model.embed_tokens.weight.val().device()
    }
}

impl<B: Backend> Checkpoint<B> for InternVl<B> {
    fn family(&self) -> Family {
        Family::InternVl
    }

    fn open(dir: &Path, weights: bool, device: &B::Device) -> Result<Self> {
        let mut model = Self::from_config(dir, device)?;
        model.processor.check(model.cfg.vision_config.image_size)?;
        if weights {
            model.load_weights(dir)?;
        }
        Ok(model)
    }

    fn vocab_size(&self) -> usize {
        InternVl::vocab_size(self)
    }

    fn text_model(&self) -> &TextModel<B> {
        &self.language_model.model
    }

    fn device(&self) -> B::Device {
        InternVl::device(self)
    }

    fn image_tokens(&self, width: usize, height: usize) -> Result<usize> {
        Ok(self.processor.tiles(height, width) * self.cfg.tokens_per_tile())
    }

    fn prefill_images(
        &self,
        rows: &[&[u32]],
        images: &[&Rgb],
    ) -> Result<(Tensor<B, 3>, DecodeBatch<B>)> {
        check_pairs(rows.len(), images.len())?;
        let tiles = images
            .iter()
            .map(|img| self.image_tiles(img).map(Some))
            .collect::<Result<Vec<_>>>()?;
        self.prefill_rows(rows, &tiles)
    }

    fn step_batch(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Tensor<B, 2> {
        InternVl::step_batch(self, tokens, state)
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        InternVl::save_pretrained(self, dir)
    }

    fn parity(&self, reference: &Reference) -> Result<Parity> {
        parity(self, reference)
    }
}

/// Image tokens a puzzle image of `image_size`² takes in the prompt and the position limit of
/// the language model (if the config states one), from the folder's config and processor
/// files alone.
pub fn prompt_shape(dir: &Path, image_size: usize) -> Result<(usize, Option<usize>)> {
    let (cfg, _) = read_config::<InternVlConfig>(dir)?;
    let tiles = TileConfig::from_dir(dir)?.tiles(image_size, image_size);
    Ok((
        tiles * cfg.tokens_per_tile(),
        cfg.text_config.max_position_embeddings,
    ))
}

/// Runs `model` on a reference run's inputs (`input_ids`, `pixel_values` [tiles, C, S, S]) and
/// compares the logits. The positions are the ids' indices in both (the reference run passed
/// none, so transformers counted them up): `positions_equal` is true by construction.
pub fn parity<B: Backend>(model: &InternVl<B>, reference: &Reference) -> Result<Parity> {
    let device = model.device();
    let ids = reference.ids()?;
    let (shape, px) = reference.f32("pixel_values")?;
    let shape: [usize; 4] = shape
        .try_into()
        .map_err(|_| HfError::Input("pixel_values is not [tiles, C, H, W]".into()))?;
    let tiles = Tensor::<B, 4>::from_data(TensorData::new(px, shape), &device);
    model.check_tiles(&tiles)?;
    let mut first_bad: Option<String> = None;
    let hidden = model
        .vision_tower
        .forward_observed(tiles.clone(), &mut watch_finite(&mut first_bad));
    let features = crate::model::host_f32(model.project(hidden))
        .map_err(|e| HfError::Input(format!("reading image features: {e}")))?;
    let (logits, _) = model.prefill_rows(&[&ids], &[Some(tiles)])?;
    Parity::measure(reference, logits, true, &features, first_bad)
}
