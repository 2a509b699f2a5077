//! The checkpoint's tokenizer (`tokenizer.json`, through the `tokenizers` crate) and the chat
//! prompt for one image and one user message.
//!
//! The template is the single-image, single-turn case of the family's chat template, with no
//! system prompt and the assistant turn opened. Qwen3-VL:
//!
//! ```text
//! <|im_start|>user\n<|vision_start|><|image_pad|>…<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! InternVL3.5:
//!
//! ```text
//! <|im_start|>user\n<img><IMG_CONTEXT>…</img>\n{text}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! with the image token repeated once per image token (Qwen3-VL: t·h·w / m²; InternVL: tiles ×
//! tokens per tile), as the reference processors expand it. Multi-turn chats, several images,
//! video and the thinking-mode template are out of scope.

use std::path::Path;

/// Errors reading a checkpoint's tokenizer or building its prompt.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A file of the checkpoint folder that cannot be read or is not what it should be.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    /// Text or ids the tokenizer cannot encode or decode.
    #[error("model input: {0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, ChatError>;

fn file_err(path: &Path, msg: impl std::fmt::Display) -> ChatError {
    ChatError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// The checkpoint families: which architecture a folder holds and which chat prompt it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Qwen3Vl,
    InternVl,
}

impl Family {
    /// The `model_type` of the family's `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Qwen3Vl => "qwen3_vl",
            Family::InternVl => "internvl",
        }
    }

    pub fn from_name(name: &str) -> Option<Family> {
        [Family::Qwen3Vl, Family::InternVl]
            .into_iter()
            .find(|f| f.name() == name)
    }

    /// The family of a checkpoint folder, from its `config.json`'s `model_type`.
    pub fn of_dir(dir: &Path) -> Result<Family> {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(default)]
            model_type: String,
        }
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
        let head: Head = serde_json::from_str(&text).map_err(|e| file_err(&path, e))?;
        Family::from_name(&head.model_type).ok_or_else(|| {
            file_err(
                &path,
                format!(
                    "model_type `{}` is not one this toolkit runs (qwen3_vl, internvl)",
                    head.model_type
                ),
            )
        })
    }

    /// The tokens around an image's slots and the image token itself: (before, slot, after).
    fn image_tokens(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::Qwen3Vl => ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
            Family::InternVl => ("<img>", "<IMG_CONTEXT>", "</img>\n"),
        }
    }
}

/// Byte ranges of tokens in the text they were read from.
pub type Offsets = Vec<(usize, usize)>;

pub struct ChatTokenizer {
    tok: tokenizers::Tokenizer,
    family: Family,
}

impl ChatTokenizer {
    /// Reads `dir/tokenizer.json`; the chat prompt is that of the family `dir/config.json`
    /// names (Qwen3-VL's for a folder with a tokenizer only).
    pub fn from_dir(dir: &Path) -> Result<ChatTokenizer> {
        let path = dir.join("tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(&path).map_err(|e| file_err(&path, e))?;
        let family = if dir.join("config.json").is_file() {
            Family::of_dir(dir)?
        } else {
            Family::Qwen3Vl
        };
        Ok(ChatTokenizer { tok, family })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The ids of `text`, special tokens written in it recognized, none added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| ChatError::Input(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The ids of `text` with each token's byte range in it.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| ChatError::Input(format!("tokenizing {text:?}: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The text of `ids` (special tokens dropped with `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tok
            .decode(ids, skip_special)
            .map_err(|e| ChatError::Input(format!("decoding {} ids: {e}", ids.len())))
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
        let (before, slot, after) = self.family.image_tokens();
        let pad = self
            .token_id(slot)
            .ok_or_else(|| ChatError::Input(format!("the tokenizer has no {slot} token")))?;
        let mut ids = self.encode(&format!("<|im_start|>user\n{before}"))?;
        ids.extend(std::iter::repeat_n(pad, image_tokens));
        ids.extend(self.encode(&format!("{after}{text}<|im_end|>\n<|im_start|>assistant\n"))?);
        Ok(ids)
    }
}
