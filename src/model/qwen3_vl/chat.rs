//! The checkpoint's tokenizer (`tokenizer.json`, through the `tokenizers` crate) and the chat
//! prompt for one image and one user message.
//!
//! The template is the single-image, single-turn case of Qwen3-VL's chat template, with no system
//! prompt and the assistant turn opened:
//!
//! ```text
//! <|im_start|>user\n<|vision_start|><|image_pad|>…<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! with `<|image_pad|>` repeated once per image token (t·h·w / m²), as the reference processor
//! expands it. Multi-turn chats, several images, video and the thinking-mode template are out of
//! scope.

use super::{HfError, Result, checkpoint_err};
use std::path::Path;

/// Byte ranges of tokens in the text they were read from.
pub type Offsets = Vec<(usize, usize)>;

pub struct ChatTokenizer {
    tok: tokenizers::Tokenizer,
}

impl ChatTokenizer {
    /// Reads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<ChatTokenizer> {
        let path = dir.join("tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(&path).map_err(|e| checkpoint_err(&path, e))?;
        Ok(ChatTokenizer { tok })
    }

    /// The ids of `text`, special tokens written in it recognized, none added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| HfError::Input(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The ids of `text` with each token's byte range in it.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| HfError::Input(format!("tokenizing {text:?}: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The text of `ids` (special tokens dropped with `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tok
            .decode(ids, skip_special)
            .map_err(|e| HfError::Input(format!("decoding {} ids: {e}", ids.len())))
    }

    /// One past the largest id the tokenizer knows (special tokens included): the model's
    /// vocabulary may be larger (padded), and ids from there on decode to nothing.
    pub fn known_ids(&self) -> usize {
        self.tok
            .get_vocab(true)
            .values()
            .max()
            .map(|&m| m as usize + 1)
            .unwrap_or(0)
    }

    /// The id of a token of the vocabulary (special ones included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }

    /// The prompt ids for one image of `image_tokens` tokens and the user's `text`.
    pub fn prompt(&self, text: &str, image_tokens: usize) -> Result<Vec<u32>> {
        let pad = self
            .token_id("<|image_pad|>")
            .ok_or_else(|| HfError::Input("the tokenizer has no <|image_pad|> token".into()))?;
        let mut ids = self.encode("<|im_start|>user\n<|vision_start|>")?;
        ids.extend(std::iter::repeat_n(pad, image_tokens));
        ids.extend(self.encode(&format!(
            "<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
        ))?);
        Ok(ids)
    }
}
