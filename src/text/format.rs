//! The two-segment answer format `<perception>P</perception><reasoning>R</reasoning>`: building
//! it, and parsing model output into segments or a typed reason why not.

use super::tokenizer::{P_CLOSE, P_OPEN, R_CLOSE, R_OPEN};

/// The parsed segments of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    pub perception: String,
    pub reasoning: String,
}

/// Why an output is not in the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("missing tag `{0}`")]
    MissingTag(&'static str),
    #[error("output ends before `{0}`")]
    Truncated(&'static str),
    #[error("empty {0} segment")]
    Empty(&'static str),
    #[error("text before `<perception>` or after `</reasoning>`")]
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

/// Builds the target text.
pub fn build(perception: &str, reasoning: &str) -> String {
    format!("{P_OPEN}{perception}{P_CLOSE}{R_OPEN}{reasoning}{R_CLOSE}")
}

/// Parses a full answer.
pub fn parse(text: &str) -> Result<Segments, FormatError> {
    let t = text.trim();
    let rest = t.strip_prefix(P_OPEN).ok_or(if t.contains(P_OPEN) {
        FormatError::Stray
    } else {
        FormatError::MissingTag(P_OPEN)
    })?;
    let (perception, rest) = rest
        .split_once(P_CLOSE)
        .ok_or(FormatError::Truncated(P_CLOSE))?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix(R_OPEN).ok_or(if rest.is_empty() {
        FormatError::Truncated(R_OPEN)
    } else {
        FormatError::MissingTag(R_OPEN)
    })?;
    let reasoning = parse_reasoning(rest)?;
    if perception.trim().is_empty() {
        return Err(FormatError::Empty("perception"));
    }
    Ok(Segments {
        perception: perception.trim().to_string(),
        reasoning,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_errors() {
        let s = build("nodes 3\nedges 0-1", "answer 0:1 1:2 2:1");
        let seg = parse(&s).unwrap();
        assert_eq!(seg.perception, "nodes 3\nedges 0-1");
        assert_eq!(seg.reasoning, "answer 0:1 1:2 2:1");
        assert_eq!(parse("hello"), Err(FormatError::MissingTag(P_OPEN)));
        assert_eq!(
            parse("<perception>abc"),
            Err(FormatError::Truncated(P_CLOSE))
        );
        assert_eq!(
            parse("<perception>abc</perception>"),
            Err(FormatError::Truncated(R_OPEN))
        );
        assert_eq!(
            parse("<perception>abc</perception><reasoning>xy"),
            Err(FormatError::Truncated(R_CLOSE))
        );
        assert_eq!(
            parse("<perception> </perception><reasoning>x</reasoning>"),
            Err(FormatError::Empty("perception"))
        );
        assert_eq!(
            parse("<perception>a</perception><reasoning>x</reasoning>junk"),
            Err(FormatError::Stray)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
            let _ = parse_reasoning(&s);
        }
    }
}
