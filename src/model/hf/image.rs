//! RGB images as the checkpoints' processors read them: PNG decoding and PIL's bicubic resize.

use super::{HfError, Result};

/// An 8-bit RGB image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[u8; 3]>,
}

impl Rgb {
    /// Decodes an 8-bit PNG (gray, gray + alpha, RGB or RGBA; alpha dropped).
    pub fn from_png(bytes: &[u8]) -> Result<Rgb> {
        let bad = |e: String| HfError::Input(format!("image: {e}"));
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| bad("too large".into()))?;
        let mut buf = vec![0; size];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        buf.truncate(info.buffer_size());
        let channels = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => return Err(bad("palette left unexpanded".into())),
        };
        let pixels = buf
            .chunks_exact(channels)
            .map(|p| {
                if channels < 3 {
                    [p[0]; 3]
                } else {
                    [p[0], p[1], p[2]]
                }
            })
            .collect();
        Ok(Rgb {
            width: info.width as usize,
            height: info.height as usize,
            pixels,
        })
    }
}

/// `image` resized to `width`×`height` as PIL's bicubic filter does it: a Catmull-Rom convolution
/// (a = −0.5), widened when shrinking so that every source pixel counts, along the width first,
/// rounded and clipped to whole levels, then along the height (the `image` crate's resampler,
/// one axis per call, so that the intermediate is rounded as PIL's is).
pub fn resize_bicubic(image: &Rgb, width: usize, height: usize) -> Result<Rgb> {
    use image::imageops::{FilterType, resize};
    let bad = || HfError::Input(format!("cannot resize an image to {width}×{height}"));
    let side = |n: usize| u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(bad);
    let (w, h, tw, th) = (
        side(image.width)?,
        side(image.height)?,
        side(width)?,
        side(height)?,
    );
    let src = image::RgbImage::from_raw(w, h, image.pixels.iter().flatten().copied().collect())
        .ok_or_else(bad)?;
    // `resize` copies an axis whose size does not change.
    let across = resize(&src, tw, h, FilterType::CatmullRom);
    let dst = resize(&across, tw, th, FilterType::CatmullRom);
    Ok(Rgb {
        width,
        height,
        pixels: dst.pixels().map(|p| p.0).collect(),
    })
}
