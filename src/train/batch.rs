//! Padded teacher-forcing batches of [`Example`]s: image pixels, input and label ids, and each
//! position's target index.

use crate::data::Example;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

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
}
