//! Text ↔ token ids for one model, and where the answer's segments lie in them: the task
//! vocabulary of the built-in model, or a checkpoint's `tokenizer.json` with its chat prompt.

use crate::text::Tokenizer;
use crate::text::chat::{ChatError, ChatTokenizer};
use crate::text::tokenizer::{P_CLOSE, P_OPEN, R_OPEN};
use std::sync::Arc;

/// Errors of a [`Codec`].
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("model config: the checkpoint's tokenizer has no <|im_end|> token")]
    NoEos,
    #[error("model input: target without </perception>: {0:?}")]
    NoPerceptionClose(String),
    #[error(transparent)]
    Chat(#[from] ChatError),
}

pub type Result<T> = std::result::Result<T, CodecError>;

/// Text ↔ token ids for one model.
#[derive(Clone)]
pub enum Codec {
    Task(Tokenizer),
    Hf(HfCodec),
}

/// A checkpoint's tokenizer: generation ends at `<|im_end|>`, which also pads batches (padded
/// positions carry no loss).
#[derive(Clone)]
pub struct HfCodec {
    pub tok: Arc<ChatTokenizer>,
    pub eos: u32,
}

/// One example in a checkpoint tokenizer's ids ([`HfCodec::example`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
    /// (name, start, end) over `target`.
    pub spans: Vec<(String, usize, usize)>,
}

impl HfCodec {
    pub fn new(tok: ChatTokenizer) -> Result<Self> {
        let eos = tok.token_id("<|im_end|>").ok_or(CodecError::NoEos)?;
        Ok(HfCodec {
            tok: Arc::new(tok),
            eos,
        })
    }

    /// Prompt ids (the chat template around `image_tokens` image slots and `prompt`), target
    /// ids (`target` then `<|im_end|>`) and the named spans over the target: `perception`
    /// through `</perception>`, `reasoning` the rest, `answer` from the last "answer" of the
    /// reasoning to its end. The target is tokenized as one string, as the model reads it
    /// when sampling; a token that straddles the perception/reasoning boundary belongs to the
    /// perception (with a byte-level BPE, `><` of `</perception><reasoning>` is one token), as
    /// [`Codec::perception_end`] counts sampled tokens; the answer span starts with the token
    /// that holds its first byte (`Ġanswer`).
    pub fn example(&self, prompt: &str, target: &str, image_tokens: usize) -> Result<Tokenized> {
        let prompt_ids = self.tok.prompt(prompt, image_tokens)?;
        let (mut ids, offsets) = self.tok.encode_with_offsets(target)?;
        // Tokens that start before `byte`, and tokens that end by it.
        let token_at = |byte: usize| offsets.iter().take_while(|o| o.0 < byte).count();
        let tokens_before = |byte: usize| offsets.iter().take_while(|o| o.1 <= byte).count();
        let pb = target
            .find(P_CLOSE)
            .map(|k| k + P_CLOSE.len())
            .ok_or_else(|| CodecError::NoPerceptionClose(target.to_string()))?;
        let p_end = token_at(pb);
        let r_end = target
            .rfind("</reasoning>")
            .filter(|&k| k >= pb)
            .unwrap_or(target.len());
        let a = target[pb..r_end].rfind("answer").map(|k| k + pb);
        ids.push(self.eos);
        let end = ids.len();
        let mut spans = vec![
            ("perception".to_string(), 0, p_end),
            ("reasoning".to_string(), p_end, end),
        ];
        if let Some(a) = a {
            spans.push(("answer".to_string(), tokens_before(a), token_at(r_end)));
        }
        Ok(Tokenized {
            prompt: prompt_ids,
            target: ids,
            spans,
        })
    }
}

impl From<Tokenizer> for Codec {
    fn from(t: Tokenizer) -> Self {
        Codec::Task(t)
    }
}

impl Codec {
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Codec::Task(t) => Ok(t.encode(text)),
            Codec::Hf(h) => Ok(h.tok.encode(text)?),
        }
    }

    /// The text of generated ids (special tokens kept, so that nothing the model wrote is
    /// hidden from the parser).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Codec::Task(t) => Ok(t.decode(ids)),
            Codec::Hf(h) => Ok(h.tok.decode(ids, false)?),
        }
    }

    /// The text forced after the prompt when the perception `p` is given:
    /// `<perception>p</perception><reasoning>`. A checkpoint tokenizer stops before the tag's
    /// final `>`: its pre-tokenizer starts a new piece there, which the training targets merge
    /// with what follows (`>order`), so the forced tokens are exactly those of the targets and
    /// the model writes the `>` itself.
    pub fn forced_text(&self, p: &str) -> String {
        let open = match self {
            Codec::Task(_) => R_OPEN,
            Codec::Hf(_) => R_OPEN.strip_suffix('>').unwrap_or(R_OPEN),
        };
        format!("{P_OPEN}{p}{P_CLOSE}{open}")
    }

    /// The reasoning text of a continuation of [`Codec::forced_text`]: a checkpoint model's
    /// first completes the tag, and that `>` is not reasoning.
    pub fn continuation<'a>(&self, text: &'a str) -> &'a str {
        match self {
            Codec::Task(_) => text,
            Codec::Hf(_) => text.strip_prefix('>').unwrap_or(text),
        }
    }

    /// The token that ends generation.
    pub fn eos(&self) -> u32 {
        match self {
            Codec::Task(t) => t.eos(),
            Codec::Hf(h) => h.eos,
        }
    }

    /// The id right-padded batches are filled with.
    pub fn pad(&self) -> u32 {
        match self {
            Codec::Task(t) => t.pad(),
            Codec::Hf(h) => h.eos,
        }
    }

    /// How many of the generated `tokens` make up the perception segment: through the token
    /// that completes `</perception>`, or all of them when it never closes.
    pub fn perception_end(&self, tokens: &[u32]) -> Result<usize> {
        match self {
            Codec::Task(t) => Ok(t
                .id(P_CLOSE)
                .and_then(|c| tokens.iter().position(|&x| x == c))
                .map(|k| k + 1)
                .unwrap_or(tokens.len())),
            Codec::Hf(h) => {
                // The shortest prefix whose text contains the closing tag (a prefix's text grows
                // with its length, so the search halves the range each time).
                let closes = |k: usize| -> Result<bool> {
                    Ok(h.tok.decode(&tokens[..k], false)?.contains(P_CLOSE))
                };
                if !closes(tokens.len())? {
                    return Ok(tokens.len());
                }
                let (mut lo, mut hi) = (0, tokens.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if closes(mid)? {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                Ok(lo)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (start, end) of span `name`.
    fn span_of(t: &Tokenized, name: &str) -> (usize, usize) {
        let s = t.spans.iter().find(|s| s.0 == name).expect("span");
        (s.1, s.2)
    }

    /// The text of target tokens `a..b`.
    fn text_of(h: &HfCodec, t: &Tokenized, (a, b): (usize, usize)) -> String {
        h.tok.decode(&t.target[a..b], false).unwrap()
    }

    fn codec() -> Codec {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl/tied");
        Codec::Hf(HfCodec::new(ChatTokenizer::from_dir(&dir).unwrap()).unwrap())
    }

    /// The target is tokenized whole; the perception span ends with the token that completes
    /// `</perception>`, the reasoning span holds the rest and `<|im_end|>`, the answer span the
    /// reasoning from its last "answer"; the same boundary is found in sampled tokens.
    #[test]
    fn spans_follow_the_text() {
        let c = codec();
        let Codec::Hf(h) = &c else { unreachable!() };
        let target = "<perception>nodes 3\nedges 0-1</perception><reasoning>two colors; answer 0:A 1:B</reasoning>";
        let t = h.example("Color the graph.", target, 4).unwrap();
        let span = |n: &str| span_of(&t, n);
        let text = |r: (usize, usize)| text_of(h, &t, r);
        let p = span("perception");
        assert_eq!(p.0, 0);
        assert!(text(p).ends_with("</perception>"), "{:?}", text(p));
        assert!(text(p).starts_with("<perception>"), "{:?}", text(p));
        let r = span("reasoning");
        assert_eq!((r.0, r.1), (p.1, t.target.len()));
        assert_eq!(
            text(r),
            "<reasoning>two colors; answer 0:A 1:B</reasoning><|im_end|>"
        );
        assert!(
            text(span("answer")).starts_with("answer"),
            "{:?}",
            text(span("answer"))
        );
        assert_eq!(c.perception_end(&t.target).unwrap(), p.1);
        assert_eq!(c.perception_end(&t.target[..p.1 - 1]).unwrap(), p.1 - 1);
        assert_eq!(t.target.last(), Some(&c.eos()));
        // The chat prompt holds one image slot per image token.
        let slot = h.tok.token_id("<|image_pad|>").unwrap();
        assert_eq!(t.prompt.iter().filter(|&&x| x == slot).count(), 4);
        assert!(h.example("p", "no tags", 4).is_err());
    }

    /// With a byte-level BPE whose merges cross the tags (`><`, `>order`, `Ġanswer`; made by
    /// `make_bpe_tokenizer.py`): the spans still tile the target, perception ends with the
    /// token that completes `</perception>` (here `><`), the answer span starts with
    /// `Ġanswer`, and the boundary found in sampled tokens is the same.
    #[test]
    fn spans_follow_merges_across_the_tags() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl/bpe");
        let h = HfCodec::new(ChatTokenizer::from_dir(&dir).unwrap()).unwrap();
        let target = "<perception>nodes 3\nedges 0-1 1-2</perception><reasoning>order the nodes by degree; answer 0:A 1:B 2:A</reasoning>";
        let t = h.example("Color the graph.", target, 4).unwrap();
        let span = |n: &str| span_of(&t, n);
        let text = |r: (usize, usize)| text_of(&h, &t, r);
        let (p, r, a) = (span("perception"), span("reasoning"), span("answer"));
        assert_eq!(text(p), "<perception>nodes 3\nedges 0-1 1-2</perception><");
        assert_eq!(
            text(r),
            "reasoning>order the nodes by degree; answer 0:A 1:B 2:A</reasoning><|im_end|>"
        );
        assert_eq!(
            format!("{}{}", text(p), text(r)),
            format!("{target}<|im_end|>")
        );
        assert_eq!(text(a), " answer 0:A 1:B 2:A");
        assert_eq!(Codec::Hf(h.clone()).perception_end(&t.target).unwrap(), p.1);
        // The forced perception is the target's first tokens, exactly.
        let c = Codec::Hf(h.clone());
        let forced = c.encode(&c.forced_text("nodes 3\nedges 0-1 1-2")).unwrap();
        assert_eq!(forced[..], t.target[..forced.len()]);
        assert_eq!(h.tok.decode(&forced[p.1..], false).unwrap(), "reasoning");
        assert_eq!(c.continuation(">order the"), "order the");
    }
}
