//! Rendering puzzles to images with tiny-skia: graph drawings, Sudoku grids with handwritten
//! digits, the stroke font for labels and fallback digits, and grayscale PNG encoding.
//! Nothing is read from the system (no fonts), so images are byte-identical everywhere.

pub mod clearance;
pub mod digits;
pub mod glyphs;
pub mod graph;
pub mod puzzle;
pub mod sudoku;

/// An 8-bit grayscale image, row-major, 0 = black, 255 = white.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gray {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// A white `size`×`size` canvas, or `None` for a zero size.
pub fn white_canvas(size: u32) -> Option<tiny_skia::Pixmap> {
    let mut pm = tiny_skia::Pixmap::new(size, size)?;
    pm.fill(tiny_skia::Color::WHITE);
    Some(pm)
}

impl Gray {
    /// The 0×0 image (what drawing at size 0 gives).
    pub fn empty() -> Gray {
        Gray {
            width: 0,
            height: 0,
            pixels: vec![],
        }
    }

    /// Converts a tiny-skia pixmap (drawn in black on white) to grayscale.
    pub fn from_pixmap(p: &tiny_skia::Pixmap) -> Gray {
        // Premultiplied RGBA over an opaque white background: red channel is the luminance of
        // black-on-white drawings.
        let pixels = p.data().chunks_exact(4).map(|px| px[0]).collect();
        Gray {
            width: p.width(),
            height: p.height(),
            pixels,
        }
    }

    /// Encodes as an 8-bit grayscale PNG with fixed settings (fast compression, fixed filter).
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pixels.len() / 4);
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            enc.set_filter(png::Filter::Sub);
            let written = enc
                .write_header()
                .and_then(|mut w| w.write_image_data(&self.pixels));
            debug_assert!(written.is_ok());
        }
        out
    }

    /// Decodes an 8-bit grayscale PNG (as written by [`Gray::to_png`]).
    pub fn from_png(bytes: &[u8]) -> Option<Gray> {
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().ok()?;
        let mut buf = vec![0; reader.output_buffer_size()?];
        let info = reader.next_frame(&mut buf).ok()?;
        if info.color_type != png::ColorType::Grayscale || info.bit_depth != png::BitDepth::Eight {
            return None;
        }
        buf.truncate(info.buffer_size());
        Some(Gray {
            width: info.width,
            height: info.height,
            pixels: buf,
        })
    }
}
