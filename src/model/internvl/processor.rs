//! Image preprocessing as transformers' InternVL processor does it (`GotOcr2ImageProcessor` with
//! `crop_to_patches`, which `InternVLProcessor` turns on): pick the tile grid whose aspect ratio
//! is closest to the image's (ties go to more tiles while the image's area exceeds half the
//! grid's), resize the image to that grid of `size` tiles, cut the tiles row by row, add a
//! thumbnail of the whole image when there is more than one tile, scale to 0–1 and normalize
//! per channel.
//!
//! Resampling: an image already at its target size is used as it is; otherwise it is resized
//! as PIL's bicubic filter resizes it (see [`resize_bicubic`]); PIL's fixed-point weights may
//! round a value to the next level.

use crate::model::hf::image::{Rgb, resize_bicubic};
use crate::model::hf::{HfError, Result, checkpoint_err};
use serde::Deserialize;
use std::path::Path;

/// `preprocessor_config.json` (the fields used). A field the file lacks takes the reference
/// class's default (`GotOcr2ImageProcessor`: CLIP's mean and std, 384² tiles); without a file,
/// InternVL's values (ImageNet's mean and std, 448² tiles).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TileConfig {
    #[serde(default = "defaults::size")]
    pub size: TileSize,
    #[serde(default = "defaults::mean")]
    pub image_mean: [f32; 3],
    #[serde(default = "defaults::std")]
    pub image_std: [f32; 3],
    #[serde(default = "defaults::min")]
    pub min_patches: usize,
    #[serde(default = "defaults::max")]
    pub max_patches: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TileSize {
    pub height: usize,
    pub width: usize,
}

mod defaults {
    pub fn size() -> super::TileSize {
        super::TileSize {
            height: 384,
            width: 384,
        }
    }
    pub fn mean() -> [f32; 3] {
        [0.481_454_66, 0.457_827_5, 0.408_210_73]
    }
    pub fn std() -> [f32; 3] {
        [0.268_629_54, 0.261_302_6, 0.275_777_1]
    }
    pub fn min() -> usize {
        1
    }
    pub fn max() -> usize {
        12
    }
}

/// InternVL's settings, for a checkpoint folder without `preprocessor_config.json`.
impl Default for TileConfig {
    fn default() -> Self {
        TileConfig {
            size: TileSize {
                height: 448,
                width: 448,
            },
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            min_patches: defaults::min(),
            max_patches: defaults::max(),
        }
    }
}

impl TileConfig {
    /// Reads `dir/preprocessor_config.json`, or InternVL's defaults when the file is absent.
    pub fn from_dir(dir: &Path) -> Result<TileConfig> {
        let path = dir.join("preprocessor_config.json");
        let cfg: TileConfig = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| checkpoint_err(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TileConfig::default(),
            Err(e) => return Err(checkpoint_err(&path, e)),
        };
        if cfg.min_patches == 0 || cfg.min_patches > cfg.max_patches {
            return Err(checkpoint_err(
                &path,
                format!(
                    "min_patches {} and max_patches {} give no tiling",
                    cfg.min_patches, cfg.max_patches
                ),
            ));
        }
        Ok(cfg)
    }

    /// Checks that the tiles are the squares the vision tower reads.
    pub fn check(&self, image_size: usize) -> Result<()> {
        if (self.size.height, self.size.width) != (image_size, image_size) {
            return Err(HfError::Input(format!(
                "the processor cuts {}×{} tiles, the vision tower reads {image_size}×{image_size}",
                self.size.height, self.size.width
            )));
        }
        Ok(())
    }

    /// The tile grid (columns, rows) for an image of `height`×`width`
    /// (transformers' `get_optimal_tiled_canvas`).
    pub fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        let mut grids: Vec<(usize, usize)> = (1..=self.max_patches)
            .flat_map(|w| (1..=self.max_patches).map(move |h| (w, h)))
            .filter(|&(w, h)| (self.min_patches..=self.max_patches).contains(&(w * h)))
            .collect();
        // A stable sort by tile count, as the reference's `sorted`.
        grids.sort_by_key(|&(w, h)| w * h);
        let aspect = width as f64 / height as f64;
        let area = (width * height) as f64;
        let tile_area = (self.size.height * self.size.width) as f64;
        let mut best = (1, 1);
        let mut best_diff = f64::INFINITY;
        for (w, h) in grids {
            let diff = (aspect - w as f64 / h as f64).abs();
            if diff < best_diff {
                best_diff = diff;
                best = (w, h);
            } else if diff == best_diff && area > 0.5 * tile_area * (w * h) as f64 {
                best = (w, h);
            }
        }
        best
    }

    /// How many tiles an image of `height`×`width` becomes (a thumbnail included).
    pub fn tiles(&self, height: usize, width: usize) -> usize {
        let (c, r) = self.grid(height, width);
        if c * r == 1 { 1 } else { c * r + 1 }
    }

    /// The tiles of `image`, normalized, as [tiles, 3, H, W] values (row-major), and their
    /// number.
    pub fn preprocess(&self, image: &Rgb) -> Result<(Vec<f32>, usize)> {
        let (th, tw) = (self.size.height, self.size.width);
        let (cols, rows) = self.grid(image.height, image.width);
        let resized = resize_to(image, tw * cols, th * rows)?;
        let mut out = Vec::with_capacity((cols * rows + 1) * 3 * th * tw);
        for i in 0..cols * rows {
            let (c, r) = (i % cols, i / cols);
            self.push_tile(&resized, c * tw, r * th, &mut out);
        }
        let mut tiles = cols * rows;
        if tiles > 1 {
            let thumb = resize_to(image, tw, th)?;
            self.push_tile(&thumb, 0, 0, &mut out);
            tiles += 1;
        }
        Ok((out, tiles))
    }

    /// Appends the normalized planes [3][H][W] of the tile at (`x0`, `y0`) of `img`.
    fn push_tile(&self, img: &Rgb, x0: usize, y0: usize, out: &mut Vec<f32>) {
        let (th, tw) = (self.size.height, self.size.width);
        let scale = 1.0f32 / 255.0;
        for c in 0..3 {
            for y in y0..y0 + th {
                let row = &img.pixels[y * img.width + x0..y * img.width + x0 + tw];
                out.extend(
                    row.iter().map(|px| {
                        (f32::from(px[c]) * scale - self.image_mean[c]) / self.image_std[c]
                    }),
                );
            }
        }
    }
}

/// `image` at `width`×`height`: itself when it already is, else resized.
fn resize_to(image: &Rgb, width: usize, height: usize) -> Result<Rgb> {
    if (image.width, image.height) == (width, height) {
        Ok(image.clone())
    } else {
        resize_bicubic(image, width, height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tile: usize, max: usize) -> TileConfig {
        TileConfig {
            size: TileSize {
                height: tile,
                width: tile,
            },
            max_patches: max,
            ..TileConfig::default()
        }
    }

    /// transformers' `get_optimal_tiled_canvas` on a few cases (values from its Python code):
    /// a small square image is one tile; a wide one is cut along its width; an image large
    /// enough takes the bigger of two grids of the same aspect.
    #[test]
    fn the_grid_follows_the_reference() {
        let c = cfg(448, 12);
        assert_eq!(c.grid(224, 224), (1, 1));
        assert_eq!(c.grid(448, 896), (2, 1));
        assert_eq!(c.grid(700, 700), (2, 2));
        assert_eq!(c.grid(1000, 1000), (3, 3));
        assert_eq!(c.grid(2000, 2000), (3, 3));
        assert_eq!(c.grid(300, 1000), (3, 1));
        assert_eq!(c.tiles(224, 224), 1);
        assert_eq!(c.tiles(448, 896), 3);
        assert_eq!(cfg(32, 12).grid(32, 64), (2, 1));
        assert_eq!(cfg(448, 1).grid(448, 896), (1, 1));
    }
}
