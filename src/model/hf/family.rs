//! What every checkpoint family implements, once: open a checkpoint folder, read a batch of
//! prompts with their RGB images (the family's own image processing included), decode on from
//! the cache, write the folder back, and compare against a reference run. The rest of the
//! toolkit reaches a family only through [`Checkpoint`] (`model::HfNet`, itself a [`Checkpoint`],
//! picks the family of a folder at run time), so a new family is one module that implements it.

use super::image::Rgb;
use super::reference::{Parity, Reference};
use super::text::{DecodeBatch, TextModel, greedy};
use super::{HfError, Result};
use crate::text::chat::Family;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::path::Path;

/// The error of a batch whose prompts and images do not pair one to one.
pub(crate) fn check_pairs(rows: usize, images: usize) -> Result<()> {
    if rows == images {
        return Ok(());
    }
    Err(HfError::Input(format!(
        "{images} images for {rows} sequences"
    )))
}

/// A checkpoint family's network with its image processor.
pub trait Checkpoint<B: Backend>: Module<B> + Sized {
    /// The family, as the folder's `config.json` names it.
    fn family(&self) -> Family;

    /// The network of the checkpoint folder `dir`: its config, its image processor (checked
    /// against the vision tower) and, when `weights`, its weights; otherwise the config's
    /// shapes with random weights (what a size needs in memory and time, before any download).
    fn open(dir: &Path, weights: bool, device: &B::Device) -> Result<Self>;

    /// Rows of the output layer (the padded vocabulary).
    fn vocab_size(&self) -> usize;

    /// The Qwen3 language model the families share.
    fn text_model(&self) -> &TextModel<B>;

    fn device(&self) -> B::Device;

    /// Image tokens an image of `width` × `height` takes in the prompt.
    fn image_tokens(&self, width: usize, height: usize) -> Result<usize>;

    /// Runs prompts `rows[i]`, whose image tokens stand for `images[i]`, as one batch into a
    /// fresh cache: the logits [B, L, vocab], L the longest row, and the state to decode on
    /// from. Shorter rows are padded on the left with keys no query sees, so each row's logits
    /// are those it gets alone.
    fn prefill_images(
        &self,
        rows: &[&[u32]],
        images: &[&Rgb],
    ) -> Result<(Tensor<B, 3>, DecodeBatch<B>)>;

    /// Feeds one token per row after its cached positions: the next logits [B, vocab].
    fn step_batch(&self, tokens: &[u32], state: &mut DecodeBatch<B>) -> Tensor<B, 2>;

    /// Writes `dir/config.json` and the weights in the checkpoint's layout.
    fn save_pretrained(&self, dir: &Path) -> Result<()>;

    /// The logits on a reference run's inputs against the reference's.
    fn parity(&self, reference: &Reference) -> Result<Parity>;

    /// Greedy continuation of `prompt` whose image tokens stand for `image`: at most `max_new`
    /// tokens, ending after the first one in `stop`.
    fn greedy_image(
        &self,
        prompt: &[u32],
        image: &Rgb,
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let (logits, mut state) = self.prefill_images(&[prompt], &[image])?;
        let [_, l, v] = logits.dims();
        if l == 0 {
            return Err(HfError::Input("an empty prompt".into()));
        }
        let first = logits.slice([0..1, l - 1..l, 0..v]).reshape([1, v]);
        greedy(first, max_new, stop, |tok| {
            self.step_batch(&[tok], &mut state)
        })
    }
}
