//! What the PyTorch twin needs to train and sample on the same work as the model suite.

use super::*;

/// The SFT batches of the first `steps` steps, as the trainer draws them: epochs are keyed
/// permutations of the examples (mirrors `train::sft`'s batch order, without gradient
/// accumulation, so that the twin trains on the same batches).
pub(super) fn sft_batches(n: usize, steps: usize) -> Vec<Vec<usize>> {
    use rand::seq::SliceRandom;
    let mut perms: Vec<Vec<usize>> = Vec::new();
    (0..steps)
        .map(|step| {
            (step * SFT_BATCH..(step + 1) * SFT_BATCH)
                .map(|c| {
                    let epoch = c / n;
                    while perms.len() <= epoch {
                        let mut p: Vec<usize> = (0..n).collect();
                        p.shuffle(&mut asymm::util::rng::keyed(
                            SFT_SEED,
                            "sft/shuffle",
                            perms.len() as u64,
                            0,
                        ));
                        perms.push(p);
                    }
                    perms[epoch][c % n]
                })
                .collect()
        })
        .collect()
}

/// What the PyTorch twin needs to repeat the model suite: the model shape and parameter count,
/// the examples (images as base64 little-endian f32), the SFT batches and settings, and the
/// rollout plans and sampling settings.
pub(super) fn twin_export(a: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    use serde_json::json;
    let tok = Tokenizer::task_vocabulary();
    let cfg = model_config(a, &tok)?;
    let plans = rollout_plans(a)?;
    let examples = examples(&tok, cfg.image_size, example_count(&plans))?;
    let steps = a.steps.max(2);
    let sampling = SamplingConfig::default();
    let s = sft_settings(&cfg, ObjectiveKind::Standard, steps, a.data_shards);
    // The trainer's optimizer: burn's AdamW defaults with the run's weight decay.
    let adamw = AdamWConfig::new().with_weight_decay(s.weight_decay as f32);
    Ok(json!({
        "model": super::model_name(a),
        "config": {
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "vit_dim": cfg.vit_dim,
            "vit_layers": cfg.vit_layers,
            "vit_heads": cfg.vit_heads,
            "conv_stem": cfg.conv_stem,
            "d_model": cfg.d_model,
            "layers": cfg.layers,
            "heads": cfg.heads,
            "mlp_ratio": cfg.mlp_ratio,
            "vocab_size": cfg.vocab_size,
            "max_seq_len": cfg.max_seq_len,
            "rope_theta": cfg.rope_theta,
        },
        "parameters": cfg.parameters(),
        "pad": tok.pad(),
        "eos": tok.eos(),
        "sft": {
            "batch": SFT_BATCH,
            "steps": steps,
            "warmup": super::warmup_steps(a, steps)?,
            "batches": sft_batches(EXAMPLES, steps),
            "lr": s.lr,
            "min_lr": s.min_lr,
            "warmup_ratio": s.warmup_ratio,
            "weight_decay": s.weight_decay,
            "grad_clip": s.grad_clip,
            "max_text": s.max_text,
            "adamw": serde_json::to_value(&adamw)?,
        },
        "rollout": {
            "max_new_tokens": ROLLOUT_TOKENS,
            "warmup_passes": usize::from(a.warmup > 0),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "plans": plans.iter().map(|p| json!({
                "batch": p.batch,
                "samples": p.samples,
                "prompts_per_batch": p.prompts,
                "batches": p.batches,
            })).collect::<Vec<_>>(),
        },
        "examples": examples.iter().map(|e| json!({
            "id": e.id,
            "prompt": e.prompt,
            "target": e.target,
            "spans": e.spans,
            "image_f32le_base64": f32le_base64(&e.image),
        })).collect::<Vec<_>>(),
    }))
}

/// Little-endian f32 values as standard base64 (with padding), as the twin reads images.
pub(super) fn f32le_base64(values: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
