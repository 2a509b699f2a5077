//! Progress bars (indicatif) on stderr; hidden automatically when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A counting bar with a label, rate and ETA.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_prefix(label.to_string());
    b
}
