//! The formatted example every learning stage reads: a puzzle's image as ink, its prompt and
//! target token ids with the target's named spans (`perception`, `reasoning`), and the
//! ground-truth perception p*; and the image decoding that turns a rendered PNG into that ink.
//! Training batches them (`train::batch`), evaluation samples from them (`eval`), rewards score
//! against them (`rl`). `codec` turns text into a model's token ids and finds the answer's
//! segments in them.

pub mod codec;

pub use codec::Codec;

/// One formatted training or evaluation example.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub task: String,
    /// Ground-truth perception text p*.
    pub perception: String,
    /// Ink in 0..1, `image_size`² values.
    pub image: Vec<f32>,
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
    /// (name, start, end) over `target`.
    pub spans: Vec<(String, usize, usize)>,
}

impl Example {
    pub fn span(&self, name: &str) -> Option<(usize, usize)> {
        self.spans.iter().find(|s| s.0 == name).map(|s| (s.1, s.2))
    }
}

/// Decodes a grayscale PNG and resizes it (bilinear) to `size`², returning ink in 0..1.
pub fn image_ink(png: &[u8], size: usize) -> Option<Vec<f32>> {
    let g = crate::render::Gray::from_png(png)?;
    let (w, h) = (g.width as usize, g.height as usize);
    if w == 0 || h == 0 {
        return None;
    }
    let at = |x: usize, y: usize| 1.0 - g.pixels[y.min(h - 1) * w + x.min(w - 1)] as f32 / 255.0;
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let sx = ((x as f32 + 0.5) * w as f32 / size as f32 - 0.5).max(0.0);
            let sy = ((y as f32 + 0.5) * h as f32 / size as f32 - 0.5).max(0.0);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (tx, ty) = (sx - x0 as f32, sy - y0 as f32);
            let v = at(x0, y0) * (1.0 - tx) * (1.0 - ty)
                + at(x0 + 1, y0) * tx * (1.0 - ty)
                + at(x0, y0 + 1) * (1.0 - tx) * ty
                + at(x0 + 1, y0 + 1) * tx * ty;
            out.push(v);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::puzzle::{RenderConfig, render_one};
    use crate::tasks::TaskKind;

    #[test]
    fn rendered_graph_reaches_the_model_as_ink() {
        let cfg = RenderConfig {
            size: 128,
            ..RenderConfig::default()
        };
        let png = render_one(
            TaskKind::GraphColoring,
            "x",
            "nodes 5\nedges 0-1 1-2 2-3 3-4",
            &cfg,
            None,
            1,
        )
        .unwrap()
        .to_png();
        let ink = image_ink(&png, 128).unwrap();
        assert_eq!(ink.len(), 128 * 128);
        let dark = ink.iter().filter(|&&v| v > 0.5).count() as f64 / ink.len() as f64;
        assert!((0.01..0.3).contains(&dark), "dark fraction {dark}");
        assert!(ink.iter().all(|v| (0.0..=1.0).contains(v)));
        // Resizing keeps the drawing: the same ink at half size.
        let half = image_ink(&png, 64).unwrap();
        let dark_half = half.iter().filter(|&&v| v > 0.5).count() as f64 / half.len() as f64;
        assert!((dark_half - dark).abs() < 0.05, "{dark_half} vs {dark}");
    }
}
