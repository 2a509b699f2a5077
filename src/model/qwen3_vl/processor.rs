//! Image preprocessing as transformers' Qwen2-VL image processor does it for Qwen3-VL: resize so
//! both sides are multiples of `patch × merge` with the pixel count within bounds
//! (`smart_resize`), scale to 0–1, normalize per channel, and cut into rows of
//! `C × temporal × patch × patch` values (the still image repeated over the temporal patch), in
//! merge-window order.
//!
//! Resampling: an image already at its target size is used as it is (as the reference does);
//! otherwise it is resized as PIL's bicubic filter resizes it ([`resize_bicubic`]); PIL's
//! fixed-point weights may round a value to the next level.

use super::vision::merge_order;
use crate::model::hf::image::{Rgb, resize_bicubic};
use crate::model::hf::{HfError, Result};
use serde::Deserialize;
use std::path::Path;

/// `preprocessor_config.json` (the fields used; Qwen3-VL's values by default).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ProcessorConfig {
    #[serde(default = "defaults::patch")]
    pub patch_size: usize,
    #[serde(default = "defaults::temporal")]
    pub temporal_patch_size: usize,
    #[serde(default = "defaults::merge")]
    pub merge_size: usize,
    #[serde(default = "defaults::half")]
    pub image_mean: [f32; 3],
    #[serde(default = "defaults::half")]
    pub image_std: [f32; 3],
    #[serde(default)]
    pub size: Option<SizeBounds>,
    #[serde(default)]
    pub min_pixels: Option<usize>,
    #[serde(default)]
    pub max_pixels: Option<usize>,
}

/// `size = { shortest_edge, longest_edge }`: the pixel-count bounds, despite the names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SizeBounds {
    pub shortest_edge: usize,
    pub longest_edge: usize,
}

mod defaults {
    pub fn patch() -> usize {
        16
    }
    pub fn temporal() -> usize {
        2
    }
    pub fn merge() -> usize {
        2
    }
    pub fn half() -> [f32; 3] {
        [0.5; 3]
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            size: None,
            min_pixels: None,
            max_pixels: None,
        }
    }
}

impl ProcessorConfig {
    /// Reads `dir/preprocessor_config.json`, or Qwen3-VL's defaults when the file is absent.
    pub fn from_dir(dir: &Path) -> Result<ProcessorConfig> {
        let path = dir.join("preprocessor_config.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| super::checkpoint_err(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProcessorConfig::default()),
            Err(e) => Err(super::checkpoint_err(&path, e)),
        }
    }

    /// Checks that the patches this processor cuts are the ones the model's vision tower reads.
    pub fn check(&self, vision: &super::config::VisionConfig) -> Result<()> {
        let mine = (self.patch_size, self.temporal_patch_size, self.merge_size);
        let model = (
            vision.patch_size,
            vision.temporal_patch_size,
            vision.spatial_merge_size,
        );
        if mine != model || vision.in_channels != 3 {
            return Err(HfError::Input(format!(
                "preprocessor (patch, temporal, merge) = {mine:?} but the vision config has \
                 {model:?} with {} channels",
                vision.in_channels
            )));
        }
        Ok(())
    }

    fn bounds(&self) -> (usize, usize) {
        let min = self
            .size
            .as_ref()
            .map(|s| s.shortest_edge)
            .or(self.min_pixels);
        let max = self
            .size
            .as_ref()
            .map(|s| s.longest_edge)
            .or(self.max_pixels);
        (min.unwrap_or(65_536), max.unwrap_or(16_777_216))
    }

    /// The target (height, width): multiples of `patch × merge`, aspect ratio kept as closely as
    /// the pixel bounds allow (transformers' `smart_resize`, Python's rounding included).
    pub fn smart_resize(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let factor = (self.patch_size * self.merge_size) as f64;
        let (min, max) = self.bounds();
        let (h, w) = (height as f64, width as f64);
        if height == 0 || width == 0 || h.max(w) / h.min(w) > 200.0 {
            return Err(HfError::Input(format!(
                "image of {width}×{height}: empty, or aspect ratio above 200"
            )));
        }
        let mut hb = (h / factor).round_ties_even() * factor;
        let mut wb = (w / factor).round_ties_even() * factor;
        if hb * wb > max as f64 {
            let beta = (h * w / max as f64).sqrt();
            hb = factor.max((h / beta / factor).floor() * factor);
            wb = factor.max((w / beta / factor).floor() * factor);
        } else if hb * wb < min as f64 {
            let beta = (min as f64 / (h * w)).sqrt();
            hb = (h * beta / factor).ceil() * factor;
            wb = (w * beta / factor).ceil() * factor;
        }
        Ok((hb as usize, wb as usize))
    }

    /// The number of image tokens (merged patches) an image of `height × width` becomes.
    pub fn image_tokens(&self, height: usize, width: usize) -> Result<usize> {
        let (h, w) = self.smart_resize(height, width)?;
        let (p, m) = (self.patch_size, self.merge_size);
        Ok((h / p) * (w / p) / (m * m))
    }

    /// The patch rows [N, C·T·P·P] (row-major) and the grid (1, h, w) of one image.
    pub fn preprocess(&self, image: &Rgb) -> Result<(Vec<f32>, [usize; 3])> {
        let (th, tw) = self.smart_resize(image.height, image.width)?;
        let resized;
        let img = if (th, tw) == (image.height, image.width) {
            image
        } else {
            resized = resize_bicubic(image, tw, th)?;
            &resized
        };
        let (p, t, m) = (self.patch_size, self.temporal_patch_size, self.merge_size);
        let (gh, gw) = (th / p, tw / p);
        let scale = 1.0f32 / 255.0;
        // Normalized planes [C][H][W].
        let planes: Vec<Vec<f32>> = (0..3)
            .map(|c| {
                img.pixels
                    .iter()
                    .map(|px| (f32::from(px[c]) * scale - self.image_mean[c]) / self.image_std[c])
                    .collect()
            })
            .collect();
        let row = 3 * t * p * p;
        let mut out = Vec::with_capacity(gh * gw * row);
        for (r, c) in merge_order(gh, gw, m) {
            for plane in &planes {
                for _ in 0..t {
                    for py in 0..p {
                        let y = r * p + py;
                        out.extend_from_slice(&plane[y * tw + c * p..y * tw + c * p + p]);
                    }
                }
            }
        }
        Ok((out, [1, gh, gw]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' `smart_resize` on a few cases (values computed with its Python code).
    #[test]
    fn smart_resize_follows_the_reference() {
        let cfg = ProcessorConfig {
            patch_size: 14,
            merge_size: 2,
            min_pixels: Some(56 * 56),
            max_pixels: Some(14 * 14 * 4 * 1280),
            ..ProcessorConfig::default()
        };
        // round(100/28) = 4 → 112; round(70/28) = round(2.5) = 2 (ties to even) → 56.
        assert_eq!(cfg.smart_resize(100, 70).ok(), Some((112, 56)));
        // Too small: scaled up to at least 56² pixels.
        assert_eq!(cfg.smart_resize(20, 20).ok(), Some((56, 56)));
        // Too large: 2000×3000 scaled down under 1,003,520 pixels.
        let (h, w) = cfg.smart_resize(2000, 3000).unwrap_or_default();
        assert!(
            h * w <= 14 * 14 * 4 * 1280 && h % 28 == 0 && w % 28 == 0,
            "{h}×{w}"
        );
        assert_eq!((h, w), (812, 1204));
        assert!(cfg.smart_resize(1, 300).is_err());
    }

    /// An image off the patch grid is resized to `smart_resize`'s size and cut into that many
    /// rows of finite values within the normalized range.
    #[test]
    fn off_grid_images_are_resized_then_cut() {
        let cfg = ProcessorConfig {
            patch_size: 8,
            merge_size: 2,
            size: Some(SizeBounds {
                shortest_edge: 256,
                longest_edge: 4096,
            }),
            ..ProcessorConfig::default()
        };
        let img = Rgb {
            width: 50,
            height: 30,
            pixels: (0..1500)
                .map(|i| [(i % 251) as u8, (i % 13) as u8 * 19, 200])
                .collect(),
        };
        let (h, w) = cfg.smart_resize(30, 50).unwrap_or_default();
        assert_eq!((h, w), (32, 48));
        let (rows, grid) = cfg.preprocess(&img).expect("preprocess");
        assert_eq!(grid, [1, h / 8, w / 8]);
        assert_eq!(rows.len(), (h / 8) * (w / 8) * 3 * 2 * 8 * 8);
        assert!(
            rows.iter()
                .all(|v| v.is_finite() && (-1.0..=1.0).contains(v))
        );
    }
}
