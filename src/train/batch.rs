//! Examples and padded batches: image pixels, prompt and target ids, and named target spans.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

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

/// A right-padded teacher-forcing batch.
pub struct Batch<B: Backend> {
    pub images: Tensor<B, 3>,
    /// Input ids [B, L]: prompt + target without its last token, padded.
    pub inputs: Tensor<B, 2, Int>,
    /// Labels [B, L] (padding positions hold 0 and get weight 0).
    pub labels: Tensor<B, 2, Int>,
    /// For each row and input position, the target index its label has (None: prompt or pad).
    pub target_index: Vec<Vec<Option<usize>>>,
    pub len: usize,
}

/// `len` rounded up to a multiple of `bucket` (0 or 1: as it is), never past `limit` (nor
/// below `len`). On a GPU, kernels are compiled and tuned per shape: padded lengths in a few
/// buckets make shapes repeat from batch to batch.
pub fn bucketed(len: usize, bucket: usize, limit: usize) -> usize {
    if bucket <= 1 {
        return len;
    }
    len.div_ceil(bucket)
        .saturating_mul(bucket)
        .min(limit)
        .max(len)
}

/// Builds a batch; sequences longer than `max_text` are cut (their tail gets no loss). The
/// padded length is the longest row's, rounded up to a multiple of `bucket` (at most
/// `max_text`): padding after a row's end changes neither its loss nor its gradient (the
/// attention is causal and padding labels weigh 0).
pub fn make_batch<B: Backend>(
    examples: &[&Example],
    image_size: usize,
    max_text: usize,
    bucket: usize,
    pad: u32,
    device: &B::Device,
) -> Batch<B> {
    let b = examples.len();
    let texts: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| {
            let mut t = e.prompt.clone();
            t.extend(&e.target);
            t.truncate(max_text + 1);
            t
        })
        .collect();
    let len = texts
        .iter()
        .map(|t| t.len().saturating_sub(1))
        .max()
        .unwrap_or(0)
        .max(1);
    let len = bucketed(len, bucket, max_text.max(1));
    let mut inputs = vec![pad as i64; b * len];
    let mut labels = vec![0i64; b * len];
    let mut target_index = vec![vec![None; len]; b];
    for (i, (t, e)) in texts.iter().zip(examples).enumerate() {
        for j in 0..t.len().saturating_sub(1) {
            inputs[i * len + j] = t[j] as i64;
            labels[i * len + j] = t[j + 1] as i64;
            let k = j + 1;
            if k >= e.prompt.len() {
                target_index[i][j] = Some(k - e.prompt.len());
            }
        }
    }
    let mut pixels = Vec::with_capacity(b * image_size * image_size);
    for e in examples {
        pixels.extend_from_slice(&e.image);
    }
    Batch {
        images: Tensor::from_data(TensorData::new(pixels, [b, image_size, image_size]), device),
        inputs: Tensor::from_data(TensorData::new(inputs, [b, len]), device),
        labels: Tensor::from_data(TensorData::new(labels, [b, len]), device),
        target_index,
        len,
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

    #[test]
    fn buckets_round_up_within_the_limit() {
        assert_eq!(bucketed(37, 1, 100), 37);
        assert_eq!(bucketed(37, 0, 100), 37);
        assert_eq!(bucketed(37, 64, 100), 64);
        assert_eq!(bucketed(64, 64, 100), 64);
        assert_eq!(bucketed(65, 64, 100), 100);
        assert_eq!(bucketed(120, 64, 100), 120);
    }
    use crate::stages::render::{RenderConfig, render_one};
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
