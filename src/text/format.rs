//! The two-segment answer format `<perception>P</perception><reasoning>R</reasoning>`: building
//! it, and parsing model output into segments, each with its own typed reason why not.
//!
//! The two segments are extracted independently: a perception closed by `</perception>` is
//! returned even when the reasoning after it is truncated or followed by stray text, so that
//! a_p = 1(p = p*) depends on the perception only.

use super::tokenizer::{P_CLOSE, P_OPEN, R_CLOSE, R_OPEN};

/// Why a segment could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("missing tag `{0}`")]
    MissingTag(&'static str),
    #[error("output ends before `{0}`")]
    Truncated(&'static str),
    #[error("empty {0} segment")]
    Empty(&'static str),
    #[error("text before `<perception>`, between the segments or after `</reasoning>`")]
    Stray,
}

impl FormatError {
    /// A short stable code for tables.
    pub fn code(&self) -> &'static str {
        match self {
            FormatError::MissingTag(_) => "missing_tag",
            FormatError::Truncated(_) => "truncated",
            FormatError::Empty(_) => "empty",
            FormatError::Stray => "stray_text",
        }
    }
}

/// The result of parsing one answer: each segment, or why it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The perception segment (trimmed), whenever `</perception>` closes it.
    pub perception: Result<String, FormatError>,
    /// The reasoning segment (trimmed), when `<reasoning>…</reasoning>` follows the perception
    /// with nothing but whitespace around it.
    pub reasoning: Result<String, FormatError>,
}

impl Parsed {
    /// The perception, if extracted.
    pub fn perception(&self) -> Option<&str> {
        self.perception.as_deref().ok()
    }
    /// The reasoning, if extracted.
    pub fn reasoning(&self) -> Option<&str> {
        self.reasoning.as_deref().ok()
    }
}

/// Builds the target text.
pub fn build(perception: &str, reasoning: &str) -> String {
    format!("{P_OPEN}{perception}{P_CLOSE}{R_OPEN}{reasoning}{R_CLOSE}")
}

/// Parses a full answer (perception then reasoning).
pub fn parse(text: &str) -> Parsed {
    let t = text.trim_start();
    let Some(rest) = t.strip_prefix(P_OPEN) else {
        let err = if t.contains(P_OPEN) {
            FormatError::Stray
        } else if t.trim().is_empty() {
            FormatError::Truncated(P_OPEN)
        } else {
            FormatError::MissingTag(P_OPEN)
        };
        // Without a perception the reasoning cannot be located unambiguously: an output that
        // starts with `<reasoning>` is still read, anything else is not.
        let reasoning = if t.starts_with(R_OPEN) {
            parse_after_perception(t)
        } else {
            Err(err.clone())
        };
        return Parsed {
            perception: Err(err),
            reasoning,
        };
    };
    let Some((perception, after)) = rest.split_once(P_CLOSE) else {
        let err = FormatError::Truncated(P_CLOSE);
        return Parsed {
            perception: Err(err.clone()),
            reasoning: Err(err),
        };
    };
    let perception = match perception.trim() {
        "" => Err(FormatError::Empty("perception")),
        p => Ok(p.to_string()),
    };
    Parsed {
        perception,
        reasoning: parse_after_perception(after),
    }
}

/// The reasoning segment of the text that follows `</perception>`.
fn parse_after_perception(after: &str) -> Result<String, FormatError> {
    let rest = after.trim_start();
    if rest.is_empty() {
        return Err(FormatError::Truncated(R_OPEN));
    }
    let rest = rest.strip_prefix(R_OPEN).ok_or(if rest.contains(R_OPEN) {
        FormatError::Stray
    } else {
        FormatError::MissingTag(R_OPEN)
    })?;
    parse_reasoning(rest)
}

/// Parses the reasoning continuation that follows a forced `<reasoning>` tag.
pub fn parse_reasoning(text: &str) -> Result<String, FormatError> {
    let (reasoning, after) = text
        .split_once(R_CLOSE)
        .ok_or(FormatError::Truncated(R_CLOSE))?;
    if !after.trim().is_empty() {
        return Err(FormatError::Stray);
    }
    if reasoning.trim().is_empty() {
        return Err(FormatError::Empty("reasoning"));
    }
    Ok(reasoning.trim().to_string())
}

/// A formatted, tokenized target with its spans.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub prompt_ids: Vec<i32>,
    pub target_ids: Vec<i32>,
    /// (name, start, end) over `target_ids`.
    pub spans: Vec<(String, i32, i32)>,
}

/// Tokenizes prompt and target so that span boundaries fall exactly between tokens.
pub fn encode(
    tok: &super::tokenizer::Tokenizer,
    prompt: &str,
    perception: &str,
    reasoning: &str,
) -> Encoded {
    let ids = |s: &str| {
        tok.encode(s)
            .into_iter()
            .map(|x| x as i32)
            .collect::<Vec<i32>>()
    };
    let mut prompt_ids = vec![tok.bos() as i32];
    prompt_ids.extend(ids(prompt));
    let mut t = Vec::new();
    t.extend(ids(P_OPEN));
    t.extend(ids(perception));
    t.extend(ids(P_CLOSE));
    let p_end = t.len() as i32;
    t.extend(ids(R_OPEN));
    // Split the reasoning before its final answer so the answer is a span of its own.
    let cut = reasoning.rfind("answer").unwrap_or(reasoning.len());
    t.extend(ids(&reasoning[..cut]));
    let a_start = t.len() as i32;
    t.extend(ids(&reasoning[cut..]));
    let a_end = t.len() as i32;
    t.extend(ids(R_CLOSE));
    t.push(tok.eos() as i32);
    let end = t.len() as i32;
    Encoded {
        prompt_ids,
        target_ids: t,
        spans: vec![
            ("perception".into(), 0, p_end),
            ("reasoning".into(), p_end, end),
            ("answer".into(), a_start, a_end),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::TaskKind;
    use crate::text::tokenizer::Tokenizer;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let s = build("nodes 3\nedges 0-1", "answer 0:1 1:2 2:1");
        let seg = parse(&s);
        assert_eq!(seg.perception(), Some("nodes 3\nedges 0-1"));
        assert_eq!(seg.reasoning(), Some("answer 0:1 1:2 2:1"));
    }

    #[test]
    fn perception_survives_a_broken_reasoning() {
        // Truncated reasoning: the perception is still read.
        let p = parse("<perception>abc</perception><reasoning>xy");
        assert_eq!(p.perception(), Some("abc"));
        assert_eq!(p.reasoning, Err(FormatError::Truncated(R_CLOSE)));
        // Stray text after the reasoning.
        let p = parse("<perception>a</perception><reasoning>x</reasoning>junk");
        assert_eq!(p.perception(), Some("a"));
        assert_eq!(p.reasoning, Err(FormatError::Stray));
        // No reasoning at all.
        let p = parse("<perception>abc</perception>");
        assert_eq!(p.perception(), Some("abc"));
        assert_eq!(p.reasoning, Err(FormatError::Truncated(R_OPEN)));
        // Text between the segments.
        let p = parse("<perception>abc</perception> so <reasoning>x</reasoning>");
        assert_eq!(p.perception(), Some("abc"));
        assert_eq!(p.reasoning, Err(FormatError::Stray));
        let p = parse("<perception>abc</perception> so");
        assert_eq!(p.reasoning, Err(FormatError::MissingTag(R_OPEN)));
    }

    #[test]
    fn perception_errors() {
        let p = parse("hello");
        assert_eq!(p.perception, Err(FormatError::MissingTag(P_OPEN)));
        assert!(p.reasoning.is_err());
        assert_eq!(
            parse("<perception>abc").perception,
            Err(FormatError::Truncated(P_CLOSE))
        );
        assert_eq!(
            parse("x<perception>abc</perception>").perception,
            Err(FormatError::Stray)
        );
        let p = parse("<perception> </perception><reasoning>x</reasoning>");
        assert_eq!(p.perception, Err(FormatError::Empty("perception")));
        assert_eq!(p.reasoning(), Some("x"));
        // A reasoning without any perception is still read.
        let p = parse("<reasoning>x</reasoning>");
        assert_eq!(p.perception, Err(FormatError::MissingTag(P_OPEN)));
        assert_eq!(p.reasoning(), Some("x"));
        assert_eq!(parse("").perception, Err(FormatError::Truncated(P_OPEN)));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
            let _ = parse_reasoning(&s);
        }

        #[test]
        fn perception_is_independent_of_what_follows(p in "[a-z0-9 -]{1,30}", tail in ".{0,60}") {
            let s = format!("{P_OPEN}{p}{P_CLOSE}{tail}");
            let parsed = parse(&s);
            prop_assert_eq!(parsed.perception(), Some(p.trim()).filter(|p| !p.is_empty()));
        }
    }

    #[test]
    fn spans_cover_the_segments_exactly() {
        let tok = Tokenizer::task_vocabulary();
        let p = "nodes 3\nedges 0-1 1-2";
        let r = "order 1 0 2\nanswer 0:1 1:2 2:1";
        let e = encode(&tok, "color", p, r);
        let dec = |a: i32, b: i32| {
            tok.decode(
                &e.target_ids[a as usize..b as usize]
                    .iter()
                    .map(|&x| x as u32)
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            dec(e.spans[0].1, e.spans[0].2),
            format!("{P_OPEN}{p}{P_CLOSE}")
        );
        assert_eq!(
            dec(e.spans[1].1, e.spans[1].2),
            format!("{R_OPEN}{r}{R_CLOSE}")
        );
        assert_eq!(dec(e.spans[2].1, e.spans[2].2), "answer 0:1 1:2 2:1");
        assert_eq!(e.spans[1].2 as usize, e.target_ids.len());
        assert_eq!(*e.target_ids.last().unwrap(), tok.eos() as i32);
        assert_eq!(e.prompt_ids[0], tok.bos() as i32);
    }

    #[test]
    fn paper_verbosity_puts_perception_at_two_to_three_percent() {
        use crate::tasks::generate::{SynthesizeConfig, generate};
        let tok = Tokenizer::task_vocabulary();
        for task in [TaskKind::GraphColoring, TaskKind::Sudoku] {
            let cfg = SynthesizeConfig {
                task,
                ..SynthesizeConfig::default()
            };
            let (mut p, mut total) = (0, 0);
            for i in 0..60 {
                let perception = generate(&cfg, 7, i).perception;
                let r = task.task().trace(&perception, 3).unwrap();
                let e = encode(&tok, task.prompt(), &perception, &r);
                p += e.spans[0].2 - e.spans[0].1;
                total += e.target_ids.len() as i32;
            }
            let share = p as f64 / total as f64;
            assert!((0.02..=0.035).contains(&share), "{task:?}: {share}");
        }
    }
}
