//! Batched autoregressive generation with a KV cache: one prefill over `[image, prefix]`, then one
//! cached step per new token. Rows stop at `<eos>` or after `max_new_tokens`.

use super::ModelError;
use super::any::Model;
use super::sampling::{SamplingConfig, log_prob, sample};
use super::{Fork, VisionLanguageModel};
use crate::util::rng::keyed_str;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// New tokens, without the final `<eos>`.
    pub tokens: Vec<u32>,
    /// The sampling log-probability of each new token, followed by that of the final `<eos>`
    /// when one was sampled (so `logprobs.len() == tokens.len() + !truncated`).
    pub logprobs: Vec<f32>,
    /// Stopped by the length limit rather than `<eos>`.
    pub truncated: bool,
}

/// Identity of a sequence for keyed sampling: its random stream is keyed by
/// (seed, purpose, item, sample), so two purposes (say a standard and a counterfactual rollout of
/// the same item and sample) never share a stream.
#[derive(Debug, Clone)]
pub struct SeqKey {
    pub purpose: &'static str,
    pub item: String,
    pub sample: u64,
}

/// How sequences are decoded: the sampling settings, the seed of the rows' keyed streams, the
/// token that ends a sequence and the budget of new tokens per sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationConfig {
    pub sampling: SamplingConfig,
    pub seed: u64,
    pub eos: u32,
    pub max_new_tokens: usize,
}

/// Generates one continuation per row.
pub fn generate<B: Backend>(
    model: &Model<B>,
    images: Tensor<B, 3>,
    prefixes: &[Vec<u32>],
    keys: &[SeqKey],
    config: &GenerationConfig,
) -> Result<Vec<Generated>, ModelError> {
    let rows: Vec<usize> = (0..prefixes.len()).collect();
    generate_shared(model, images, prefixes, &rows, keys, config)
}

/// Generates one continuation per row, where row i continues prompt `rows[i]` (an image of
/// `images` and its prefix in `prompts`): each prompt is prefilled once and its cache forked to
/// its rows, so the G samples of a prompt share one prefill. Each row samples from its own keyed
/// stream, so the result does not depend on how rows share prompts.
pub fn generate_shared<B: Backend>(
    model: &Model<B>,
    images: Tensor<B, 3>,
    prompts: &[Vec<u32>],
    rows: &[usize],
    keys: &[SeqKey],
    config: &GenerationConfig,
) -> Result<Vec<Generated>, ModelError> {
    let GenerationConfig {
        sampling,
        seed,
        eos,
        max_new_tokens,
    } = *config;
    let sampling = &sampling;
    let b = rows.len();
    let vocab = model.vocab_size();
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    if let Some(bad) = rows.iter().find(|&&r| r >= prompts.len()) {
        return Err(ModelError::Input(format!(
            "row of prompt {bad}, but there are {} prompts",
            prompts.len()
        )));
    }
    if images.dims()[0] != prompts.len() {
        return Err(ModelError::Input(format!(
            "{} images for {} prompts",
            images.dims()[0],
            prompts.len()
        )));
    }
    if keys.len() != b {
        return Err(ModelError::Input(format!(
            "{} keys for {b} sequences",
            keys.len()
        )));
    }
    let mut rngs: Vec<_> = keys
        .iter()
        .map(|k| keyed_str(seed, k.purpose, &k.item, k.sample))
        .collect();
    let mut out: Vec<Generated> = (0..b)
        .map(|_| Generated {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            truncated: false,
        })
        .collect();
    let mut done = vec![false; b];
    if b == 0 {
        return Ok(out);
    }
    let (mut logits, mut state) = model.prefill(images, prompts)?;
    if rows.iter().enumerate().any(|(i, &r)| i != r) || prompts.len() != b {
        let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [b]),
            &logits.device(),
        );
        logits = logits.select(0, idx);
        state = state.fork(rows);
    }
    // `live[j]`: the output row that row j of the decoding state continues. Finished rows
    // are dropped from the state once they are an eighth of it (each drop copies the cache once),
    // so the batch shrinks as its sequences end instead of decoding to its longest one.
    let mut live: Vec<usize> = (0..b).collect();
    for step in 0..max_new_tokens {
        let host: Vec<f32> = super::host_f32(logits)?;
        let vocab = host.len() / live.len();
        let mut next = vec![eos; live.len()];
        for (j, &i) in live.iter().enumerate() {
            if done[i] {
                continue;
            }
            let row = &host[j * vocab..(j + 1) * vocab];
            let tok = sample(row, sampling, &mut rngs[i]);
            out[i]
                .logprobs
                .push(log_prob(row, tok, sampling.temperature));
            if tok == eos {
                done[i] = true;
            } else {
                out[i].tokens.push(tok);
                next[j] = tok;
            }
        }
        let keep: Vec<usize> = (0..live.len()).filter(|&j| !done[live[j]]).collect();
        if keep.is_empty() || step + 1 == max_new_tokens {
            break;
        }
        if live.len() - keep.len() >= (live.len() / 8).max(1) {
            state = state.fork(&keep);
            next = keep.iter().map(|&j| next[j]).collect();
            live = keep.iter().map(|&j| live[j]).collect();
        }
        logits = model.step(&next, &mut state)?;
    }
    for i in 0..b {
        if !done[i] {
            out[i].truncated = true;
        }
    }
    Ok(out)
}

/// Greedy decoding without the cache (full forward per token); the reference for tests.
pub fn greedy_uncached<B: Backend>(
    model: &Model<B>,
    images: Tensor<B, 3>,
    prefixes: &[Vec<u32>],
    eos: u32,
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let b = prefixes.len();
    let mut seqs: Vec<Vec<u32>> = prefixes.to_vec();
    let mut outs = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..max_new_tokens {
        let logits = model.prefill(images.clone(), &seqs)?.0;
        let host: Vec<f32> = super::host_f32(logits)?;
        let vocab = host.len() / b;
        for i in 0..b {
            if done[i] {
                // Keep lengths aligned with the cached run: finished rows are fed <eos>.
                seqs[i].push(eos);
                continue;
            }
            let tok = super::sampling::argmax(&host[i * vocab..(i + 1) * vocab]);
            if tok == eos {
                done[i] = true;
            } else {
                outs[i].push(tok);
            }
            seqs[i].push(tok);
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cpu, VlmConfig};
    use burn::tensor::TensorData;

    fn small_model() -> (Model<Cpu>, VlmConfig) {
        let cfg = crate::model::config::small_config();
        let dev = Default::default();
        Cpu::seed(&dev, 11);
        (crate::model::Vlm::new(&cfg, &dev).into(), cfg)
    }

    fn images(b: usize, s: usize) -> Tensor<Cpu, 3> {
        let px: Vec<f32> = (0..b * s * s)
            .map(|i| ((i * 7919) % 101) as f32 / 100.0)
            .collect();
        Tensor::from_data(TensorData::new(px, [b, s, s]), &Default::default())
    }

    /// Keys of `n` sequences of the purpose "test", items `{prefix}0`, `{prefix}1`, ….
    fn keys(prefix: &str, n: usize) -> Vec<SeqKey> {
        (0..n)
            .map(|i| SeqKey {
                purpose: "test",
                item: format!("{prefix}{i}"),
                sample: 0,
            })
            .collect()
    }

    /// Plain sampling (no top-p or top-k) at `temperature`.
    fn sampled(temperature: f32, seed: u64, eos: u32, max_new_tokens: usize) -> GenerationConfig {
        GenerationConfig {
            sampling: SamplingConfig {
                temperature,
                top_p: 1.0,
                top_k: 0,
            },
            seed,
            eos,
            max_new_tokens,
        }
    }

    #[test]
    fn kv_cached_greedy_equals_uncached_greedy() {
        let (m, cfg) = small_model();
        // Different prefix lengths exercise left padding.
        let prefixes = vec![vec![1, 5, 9, 3], vec![2, 7], vec![4, 4, 4, 4, 4, 6]];
        let keys = keys("x", 3);
        let eos = u32::MAX; // never sampled: forces the full length
        let reads = crate::model::host::reads_on_this_thread();
        let cached = generate(
            &m,
            images(3, cfg.image_size),
            &prefixes,
            &keys,
            &GenerationConfig {
                sampling: SamplingConfig::greedy(),
                seed: 0,
                eos,
                max_new_tokens: 12,
            },
        )
        .unwrap();
        // One host read (the logits) per decoded token, none in the prefill.
        assert_eq!(crate::model::host::reads_on_this_thread() - reads, 12);
        let uncached = greedy_uncached(&m, images(3, cfg.image_size), &prefixes, eos, 12).unwrap();
        for (c, u) in cached.iter().zip(&uncached) {
            assert_eq!(&c.tokens, u);
        }
        assert!(cached.iter().any(|c| c.tokens.len() > 3));
    }

    #[test]
    fn sampling_is_keyed_and_batch_invariant() {
        let (m, cfg) = small_model();
        let p = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let keys = keys("x", 2);
        let g = sampled(1.0, 5, 39, 10);
        let both = generate(&m, images(2, cfg.image_size), &p, &keys, &g).unwrap();
        let again = generate(&m, images(2, cfg.image_size), &p, &keys, &g).unwrap();
        assert_eq!(both, again);
        let first_alone = generate(&m, images(1, cfg.image_size), &p[..1], &keys[..1], &g).unwrap();
        assert_eq!(first_alone[0], both[0]);
        // Sharing one prefill between rows of the same prompt changes nothing.
        let shared = generate_shared(
            &m,
            images(1, cfg.image_size),
            &p[..1],
            &[0, 0],
            &[keys[0].clone(), keys[1].clone()],
            &g,
        )
        .unwrap();
        let separate = generate(
            &m,
            Tensor::cat(
                vec![images(1, cfg.image_size), images(1, cfg.image_size)],
                0,
            ),
            &[p[0].clone(), p[0].clone()],
            &keys,
            &g,
        )
        .unwrap();
        assert_eq!(shared, separate);
        // Each token carries its sampling log-probability (plus the final <eos>'s).
        for out in &both {
            assert_eq!(
                out.logprobs.len(),
                out.tokens.len() + usize::from(!out.truncated)
            );
            assert!(out.logprobs.iter().all(|&l| l <= 0.0 && l.is_finite()));
        }
        // Another purpose with the same item and sample draws from another stream.
        let other: Vec<SeqKey> = keys
            .iter()
            .map(|k| SeqKey {
                purpose: "test/other",
                ..k.clone()
            })
            .collect();
        let moved = generate(&m, images(2, cfg.image_size), &p, &other, &g).unwrap();
        assert_ne!(moved, both);
    }

    #[test]
    fn rows_that_end_early_leave_the_batch_without_changing_the_others() {
        let (m, cfg) = small_model();
        let n = 12;
        let p: Vec<Vec<u32>> = (0..n).map(|i| vec![1 + i as u32 % 7, 2, 3]).collect();
        let keys = keys("e", n);
        let g = sampled(1.5, 3, 7, 40);
        let all = generate(&m, images(n, cfg.image_size), &p, &keys, &g).unwrap();
        // The rows end at different steps (so the batch is compacted along the way), and some
        // run to the budget.
        let ended: Vec<usize> = all
            .iter()
            .filter(|o| !o.truncated)
            .map(|o| o.tokens.len())
            .collect();
        assert!(ended.len() >= 3, "{ended:?}");
        assert!(ended.iter().min() < ended.iter().max());
        assert!(all.iter().any(|o| o.truncated));
        for (i, row) in all.iter().enumerate() {
            let alone = generate(
                &m,
                images(n, cfg.image_size).narrow(0, i, 1),
                &p[i..i + 1],
                &keys[i..i + 1],
                &g,
            )
            .unwrap();
            assert_eq!(&alone[0], row, "row {i}");
        }
    }

    #[test]
    fn malformed_prompts_never_panic() {
        let (m, cfg) = small_model();
        let mut rng = crate::util::rng::keyed(1, "fuzz", 0, 0);
        use rand::RngExt;
        for case in 0..20 {
            let n = rng.random_range(0..30usize);
            let p: Vec<u32> = (0..n).map(|_| rng.random_range(0..40u32)).collect();
            let out = generate(
                &m,
                images(1, cfg.image_size),
                &[p],
                &[SeqKey {
                    purpose: "test",
                    item: format!("f{case}"),
                    sample: 0,
                }],
                &GenerationConfig {
                    sampling: SamplingConfig::default(),
                    seed: 0,
                    eos: 0,
                    max_new_tokens: 5,
                },
            )
            .unwrap();
            assert!(out[0].tokens.len() <= 5);
        }
        // Ids outside the vocabulary are an error, not a panic.
        let keys = [SeqKey {
            purpose: "test",
            item: "z".into(),
            sample: 0,
        }];
        let r = generate(
            &m,
            images(1, cfg.image_size),
            &[vec![1, 400]],
            &keys,
            &GenerationConfig {
                sampling: SamplingConfig::default(),
                seed: 0,
                eos: 0,
                max_new_tokens: 5,
            },
        );
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("outside the vocabulary")
        );
    }
}
