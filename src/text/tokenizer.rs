//! A small fixed task vocabulary: special tokens (segment tags, image, bos/eos), every printable
//! ASCII character, and whole words that the prompts and solver traces use often. Encoding is
//! greedy longest-match, decoding is concatenation, so any ASCII text round-trips exactly.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";
pub const IMAGE: &str = "<image>";
pub const P_OPEN: &str = "<perception>";
pub const P_CLOSE: &str = "</perception>";
pub const R_OPEN: &str = "<reasoning>";
pub const R_CLOSE: &str = "</reasoning>";

const SPECIALS: &[&str] = &[PAD, BOS, EOS, UNK, IMAGE, P_OPEN, P_CLOSE, R_OPEN, R_CLOSE];

const WORDS: &[&str] = &[
    "nodes",
    "edges",
    "order",
    "node",
    "degree",
    "neighbors",
    "neighbor",
    "try",
    "colors",
    "color",
    "conflict",
    "backtrack",
    "success",
    "fail",
    "with",
    "check",
    "ok",
    "answer",
    "candidates",
    "naked",
    "single",
    "hidden",
    "row",
    "col",
    "box",
    "guess",
    "undo",
    "grid",
    "no",
    "the",
    "graph",
    "as",
    "few",
    "possible",
    "so",
    "that",
    "edge",
    "joins",
    "two",
    "of",
    "one",
    "solve",
    "sudoku",
];

/// Errors loading a serialized tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tokenizer is missing required token `{0}`")]
    MissingToken(String),
    #[error("tokenizer lists token `{0}` twice")]
    Duplicate(String),
}

#[derive(Serialize, Deserialize)]
struct Serialized {
    format: String,
    tokens: Vec<String>,
}

/// The tokenizer: token strings indexed by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    max_len: usize,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::task_vocabulary()
    }
}

impl Tokenizer {
    /// The built-in task vocabulary.
    pub fn task_vocabulary() -> Self {
        let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        tokens.push("\n".to_string());
        tokens.extend((32u8..=126).map(|b| (b as char).to_string()));
        for w in WORDS {
            tokens.push(w.to_string());
            tokens.push(format!(" {w}"));
        }
        tokens.extend((0..10).map(|d| format!(" {d}")));
        Self::from_tokens(tokens).unwrap_or_else(|_| unreachable!("built-in vocabulary is valid"))
    }

    fn from_tokens(tokens: Vec<String>) -> Result<Self, TokenizerError> {
        let mut ids = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if ids.insert(t.clone(), i as u32).is_some() {
                return Err(TokenizerError::Duplicate(t.clone()));
            }
        }
        for s in SPECIALS {
            if !ids.contains_key(*s) {
                return Err(TokenizerError::MissingToken(s.to_string()));
            }
        }
        let max_len = tokens.iter().map(|t| t.len()).max().unwrap_or(1);
        Ok(Tokenizer {
            tokens,
            ids,
            max_len,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Id of a token string (specials included).
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    fn special(&self, token: &str) -> u32 {
        self.id(token).unwrap_or(0)
    }
    pub fn pad(&self) -> u32 {
        self.special(PAD)
    }
    pub fn bos(&self) -> u32 {
        self.special(BOS)
    }
    pub fn eos(&self) -> u32 {
        self.special(EOS)
    }
    pub fn unk(&self) -> u32 {
        self.special(UNK)
    }

    /// Greedy longest-match encoding; characters outside the vocabulary become `<unk>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 2 + 1);
        let mut i = 0;
        while i < text.len() {
            let mut matched = false;
            let mut len = self.max_len.min(text.len() - i);
            while len > 0 {
                if let Some(piece) = text.get(i..i + len)
                    && let Some(&id) = self.ids.get(piece)
                {
                    out.push(id);
                    i += len;
                    matched = true;
                    break;
                }
                len -= 1;
            }
            if !matched {
                out.push(self.unk());
                let step = text[i..].chars().next().map(char::len_utf8).unwrap_or(1);
                i += step;
            }
        }
        out
    }

    /// Concatenates token strings; ids outside the vocabulary decode as `<unk>`; pad, bos and eos
    /// decode to nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        let (pad, bos, eos) = (self.pad(), self.bos(), self.eos());
        let mut s = String::new();
        for &id in ids {
            if id == pad || id == bos || id == eos {
                continue;
            }
            s.push_str(
                self.tokens
                    .get(id as usize)
                    .map(String::as_str)
                    .unwrap_or(UNK),
            );
        }
        s
    }

    /// The token string of one id.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Serialized form (stored with every artifact that holds token ids).
    pub fn to_json(&self) -> String {
        let s = Serialized {
            format: "asymm-tokenizer-v1".into(),
            tokens: self.tokens.clone(),
        };
        serde_json::to_string_pretty(&s).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Self, TokenizerError> {
        let s: Serialized = serde_json::from_str(json)?;
        Self::from_tokens(s.tokens)
    }

    /// Short content hash identifying this vocabulary.
    pub fn fingerprint(&self) -> String {
        blake3::hash(self.to_json().as_bytes()).to_hex()[..16].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_and_tags_are_single_tokens() {
        let t = Tokenizer::task_vocabulary();
        let ids = t.encode("<perception>nodes 7\nedges 0-1</perception>");
        assert_eq!(ids[0], t.id(P_OPEN).unwrap());
        assert_eq!(ids[1], t.id("nodes").unwrap());
        assert_eq!(ids[2], t.id(" 7").unwrap());
        assert_eq!(*ids.last().unwrap(), t.id(P_CLOSE).unwrap());
        assert!(t.vocab_size() < 256);
    }

    #[test]
    fn json_round_trip() {
        let t = Tokenizer::task_vocabulary();
        let u = Tokenizer::from_json(&t.to_json()).unwrap();
        assert_eq!(t, u);
        assert!(Tokenizer::from_json("{\"format\":\"x\",\"tokens\":[\"a\",\"a\"]}").is_err());
        assert!(Tokenizer::from_json("{\"format\":\"x\",\"tokens\":[\"a\"]}").is_err());
    }

    proptest! {
        #[test]
        fn ascii_round_trips(s in "[ -~\n]{0,200}") {
            let t = Tokenizer::task_vocabulary();
            prop_assert_eq!(t.decode(&t.encode(&s)), s.replace(PAD, "").replace(BOS, "").replace(EOS, ""));
        }

        #[test]
        fn decode_never_panics(ids in proptest::collection::vec(0u32..1000, 0..100)) {
            let _ = Tokenizer::task_vocabulary().decode(&ids);
        }
    }
}
