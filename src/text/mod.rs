//! Text: the model's tokenizer and the `<perception>…</perception><reasoning>…</reasoning>` format.

pub mod format;
pub mod tokenizer;

pub use format::{FormatError, Parsed};
pub use tokenizer::Tokenizer;
