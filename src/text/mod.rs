//! Text: the built-in model's tokenizer, a checkpoint's tokenizer with its chat prompt
//! (`chat`), and the `<perception>…</perception><reasoning>…</reasoning>` format.

pub mod chat;
pub mod format;
pub mod tokenizer;

pub use format::{FormatError, Parsed};
pub use tokenizer::Tokenizer;
