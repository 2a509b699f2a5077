//! `asymm dev …` (hidden): maintenance commands for working on asymm itself.

use asymm::stages::StageRegistry;
use asymm::stages::versions;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Check the stage version table (src/stages/versions.json) against the stages' sources, or
    /// with --write refresh it.
    StageVersions {
        /// Rewrite the table (refused while a stage's sources changed without a VERSION bump).
        #[arg(long)]
        write: bool,
        /// Record STAGE's changed sources without a VERSION bump; only when its output provably
        /// did not change (a refactor, a rename). Repeatable.
        #[arg(long, value_name = "STAGE", requires = "write")]
        unchanged_output: Vec<String>,
        /// Print the files STAGE's output is keyed on (its file and all its code reaches) and
        /// stop.
        #[arg(long, value_name = "STAGE", conflicts_with = "write")]
        sources: Option<String>,
        /// Repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Check a compute device where the test suite cannot run: KV-cached == uncached greedy
    /// decoding, logits equal to the CPU's for the same weights (within --tolerance), and a few
    /// training steps lowering the loss. Prints JSON; exits 1 if a check fails.
    DeviceCheck {
        /// cpu, cuda:N, cuda:N/bf16, wgpu or wgpu:cpu.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Model size preset.
        #[arg(long, default_value = "tiny")]
        model: String,
        /// Largest accepted |logit difference| against the CPU.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f32,
        /// Training steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
    },
    /// Compare a checkpoint's logits (and Qwen3-VL's positions) with a reference run saved by
    /// transformers (a parity fixture folder: the checkpoint plus reference.safetensors). Prints
    /// JSON; exits 1 when positions differ or a logit differs by more than --tolerance.
    HfParity {
        /// The fixture folder (e.g. tests/fixtures/qwen3_vl/tied, tests/fixtures/internvl/tied).
        #[arg(long)]
        fixture: PathBuf,
        /// cpu, cuda:N, cuda:N/bf16, wgpu or wgpu:cpu.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f32,
    },
    /// Estimate what training a checkpoint needs in device memory, from its config.json and
    /// preprocessor_config.json alone (no weights read): parameters by part, SFT's and GRPO's
    /// static memory (weights, gradients, AdamW moments, GRPO's reference model) and the
    /// activations one sequence keeps for backward. Prints JSON.
    HfMemory {
        /// The checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Side of the square puzzle images (as `model.image_size` in a pipeline).
        #[arg(long, default_value_t = 224)]
        image_size: usize,
        /// Text tokens per sequence (prompt and answer) besides the image's.
        #[arg(long, default_value_t = 512)]
        text_tokens: usize,
        /// f32 or bf16.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Device memory in GiB, to say how many sequences fit after the static memory.
        #[arg(long, default_value_t = 80.0)]
        budget_gib: f64,
    },
    /// Run a Qwen3-VL or InternVL3.5 checkpoint (a Hugging Face folder: config.json,
    /// safetensors, tokenizer.json, preprocessor_config.json) on one image and one message:
    /// greedy decoding, the answer printed.
    HfGenerate {
        /// The checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// A PNG image.
        #[arg(long)]
        image: PathBuf,
        /// The user message.
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// cpu, cuda:N, cuda:N/bf16, wgpu or wgpu:cpu.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

pub fn dev(cmd: DevCmd) -> anyhow::Result<i32> {
    match cmd {
        DevCmd::HfParity {
            fixture,
            device,
            tolerance,
        } => hf_parity(fixture, device, tolerance),
        DevCmd::HfMemory {
            checkpoint,
            image_size,
            text_tokens,
            dtype,
            budget_gib,
        } => hf_memory(checkpoint, image_size, text_tokens, dtype, budget_gib),
        DevCmd::HfGenerate {
            checkpoint,
            image,
            prompt,
            max_new_tokens,
            device,
        } => hf_generate(checkpoint, image, prompt, max_new_tokens, device),
        DevCmd::DeviceCheck {
            device,
            model,
            tolerance,
            steps,
        } => device_check(device, model, tolerance, steps),
        DevCmd::StageVersions {
            write,
            unchanged_output,
            sources,
            root,
        } => stage_versions(write, unchanged_output, sources, root),
    }
}

/// `dev hf-parity`: a checkpoint fixture's logits against the reference file transformers wrote.
fn hf_parity(fixture: PathBuf, device: String, tolerance: f32) -> anyhow::Result<i32> {
    use asymm::model::hf::reference::Reference;
    use asymm::model::{Checkpoint, HfNet};
    let spec = asymm::model::DeviceSpec::parse(&device)?;
    let r = Reference::read(&fixture.join("reference.safetensors"))?;
    let p = asymm::with_backend!(spec, |B, dev| {
        let model = HfNet::<B>::open(&fixture, true, &dev)?;
        model.parity(&r).map_err(anyhow::Error::from)
    })?;
    let passed = p.positions_equal && p.max_abs_logit_diff <= tolerance;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "fixture": fixture,
            "device": device,
            "tolerance": tolerance,
            "passed": passed,
            "parity": p,
        }))?
    );
    Ok(if passed { 0 } else { 1 })
}

/// `dev hf-memory`: a checkpoint's estimated training memory.
fn hf_memory(
    checkpoint: PathBuf,
    image_size: usize,
    text_tokens: usize,
    dtype: String,
    budget_gib: f64,
) -> anyhow::Result<i32> {
    let bytes = match dtype.as_str() {
        "f32" => 4,
        "bf16" => 2,
        other => anyhow::bail!("--dtype {other}: use f32 or bf16"),
    };
    let report = memory_report(&checkpoint, image_size, text_tokens, bytes, budget_gib)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(0)
}

/// `dev hf-generate`: greedy generation from a checkpoint folder for one image and message.
fn hf_generate(
    checkpoint: PathBuf,
    image: PathBuf,
    prompt: String,
    max_new_tokens: usize,
    device: String,
) -> anyhow::Result<i32> {
    use asymm::model::{Checkpoint, HfNet};
    use asymm::text::chat::ChatTokenizer;
    let spec = asymm::model::DeviceSpec::parse(&device)?;
    let tok = ChatTokenizer::from_dir(&checkpoint)?;
    let bytes = std::fs::read(&image).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    let rgb = asymm::model::hf::image::Rgb::from_png(&bytes)?;
    let stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tok.token_id(t))
        .collect();
    let out = asymm::with_backend!(spec, |B, dev| {
        let model = HfNet::<B>::open(&checkpoint, true, &dev)?;
        let ids = tok.prompt(&prompt, model.image_tokens(rgb.width, rgb.height)?)?;
        model
            .greedy_image(&ids, &rgb, max_new_tokens, &stop)
            .map_err(anyhow::Error::from)
    })?;
    println!("{}", tok.decode(&out, true)?);
    Ok(0)
}

/// `dev device-check`: cached against uncached decoding, logits against the CPU's, a few training steps.
fn device_check(
    device: String,
    model: String,
    tolerance: f32,
    steps: usize,
) -> anyhow::Result<i32> {
    let spec = asymm::model::DeviceSpec::parse(&device)?;
    let vocab = asymm::text::Tokenizer::task_vocabulary().vocab_size();
    let cfg = asymm::model::VlmConfig::preset(&model, vocab)
        .ok_or_else(|| anyhow::anyhow!("unknown model preset `{model}` (tiny, small)"))?;
    let report = asymm::with_backend!(spec, |B, dev| {
        asymm::model::check::check_device::<burn::backend::Autodiff<B>>(&cfg, &dev, steps)
            .map_err(anyhow::Error::from)
    })?;
    let passed = report.passed(tolerance);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "device": device,
            "model": model,
            "tolerance": tolerance,
            "passed": passed,
            "report": report,
        }))?
    );
    Ok(if passed { 0 } else { 1 })
}

/// `dev stage-versions`: the stage version guard (check, `--write`, `--sources`).
fn stage_versions(
    write: bool,
    unchanged_output: Vec<String>,
    sources: Option<String>,
    root: PathBuf,
) -> anyhow::Result<i32> {
    if !root
        .join(versions::TABLE_PATH)
        .parent()
        .is_some_and(|d| d.is_dir())
    {
        anyhow::bail!(
            "{} has no src/stages: run from the repository root or pass --root",
            root.display()
        );
    }
    let reg = StageRegistry::default();
    if let Some(stage) = sources {
        anyhow::ensure!(
            asymm::dag::Registry::get(&reg, &stage).is_some(),
            versions::VersionsError::UnknownStage(stage)
        );
        for f in versions::stage_sources(&root, &stage)? {
            println!("{f}");
        }
        return Ok(0);
    }
    if write {
        let r = versions::refresh(&root, &reg, &unchanged_output)?;
        for f in &r.recorded {
            match f {
                versions::Finding::Outdated { stage, what } => {
                    println!("recorded `{stage}`: {what}")
                }
                versions::Finding::NotBumped { stage, version, .. } => println!(
                    "recorded `{stage}`: sources changed, VERSION kept at {version} \
                     (--unchanged-output)"
                ),
                other => println!("recorded: {other}"),
            }
        }
        if r.written {
            println!("wrote {}", versions::TABLE_PATH);
        } else {
            println!("{} is up to date", versions::TABLE_PATH);
        }
        return Ok(0);
    }
    let findings = versions::check(&root, &reg)?;
    for f in &findings {
        println!("{f}");
    }
    if findings.is_empty() {
        println!("{} is up to date", versions::TABLE_PATH);
        Ok(0)
    } else {
        Ok(1)
    }
}

/// `dev hf-memory`'s report for the checkpoint in `dir`.
fn memory_report(
    dir: &std::path::Path,
    image_size: usize,
    text_tokens: usize,
    bytes: u64,
    budget_gib: f64,
) -> anyhow::Result<serde_json::Value> {
    use asymm::model::memory::{self, TowerShape};
    use asymm::text::chat::Family;
    let shape = asymm::model::HfShape::of_dir(dir, image_size)?;
    let text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("config.json").display()))?;
    let (params, lm, tower) = match shape.family {
        Family::Qwen3Vl => {
            let cfg: asymm::model::qwen3_vl::Qwen3VlConfig = serde_json::from_str(&text)?;
            let v = &cfg.vision_config;
            let patches = shape.image_tokens * v.spatial_merge_size.pow(2);
            let tower = TowerShape {
                layers: v.depth,
                width: v.hidden_size,
                mlp: v.intermediate_size,
                heads: v.num_heads,
                tokens_per_attention: patches,
                groups: 1,
            };
            (memory::count_qwen3_vl(&cfg), cfg.text_config.clone(), tower)
        }
        Family::InternVl => {
            let cfg: asymm::model::internvl::InternVlConfig = serde_json::from_str(&text)?;
            let v = &cfg.vision_config;
            let tower = TowerShape {
                layers: v.num_hidden_layers,
                width: v.hidden_size,
                mlp: v.intermediate_size,
                heads: v.num_attention_heads,
                tokens_per_attention: v.grid().pow(2) + 1,
                groups: shape.image_tokens / cfg.tokens_per_tile().max(1),
            };
            (memory::count_internvl(&cfg), cfg.lm_config(), tower)
        }
    };
    let tokens = shape.image_tokens + text_tokens;
    let e = memory::estimate(params, &lm, tower, tokens, bytes);
    let gib = |b: u64| (b as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0;
    let budget = (budget_gib * (1u64 << 30) as f64) as u64;
    Ok(serde_json::json!({
        "checkpoint": dir,
        "family": shape.family.name(),
        "bytes_per_value": bytes,
        "params": e.params,
        "params_total": e.params.total(),
        "image_tokens": shape.image_tokens,
        "tokens_per_sequence": tokens,
        "bytes": {
            "weights": e.weights,
            "sft_static": e.sft_static(),
            "grpo_static": e.grpo_static(),
            "activations_per_sequence": e.activations_per_sequence,
            "logits_per_sequence": e.logits_per_sequence,
            "kv_cache_per_sequence": e.kv_cache_per_sequence,
        },
        "gib": {
            "weights": gib(e.weights),
            "sft_static": gib(e.sft_static()),
            "grpo_static": gib(e.grpo_static()),
            "activations_per_sequence": gib(e.activations_per_sequence),
            "logits_per_sequence": gib(e.logits_per_sequence),
            "kv_cache_per_sequence": gib(e.kv_cache_per_sequence),
        },
        "budget_gib": budget_gib,
        "sft_sequences_per_micro_batch": e.sequences_within(budget, e.sft_static()),
        "grpo_sequences_per_micro_batch": e.sequences_within(budget, e.grpo_static()),
        "note": "an estimate from the shapes, not a measurement: activations are what eager \
                 backpropagation keeps (linear-map inputs, attention probabilities, logits and \
                 their log-softmax); allocator slack and backend buffers come on top",
    }))
}
