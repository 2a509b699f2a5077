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
        /// Repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Check a compute device where the test suite cannot run: KV-cached == uncached greedy
    /// decoding, logits equal to the CPU's for the same weights (within --tolerance), and a few
    /// training steps lowering the loss. Prints JSON; exits 1 if a check fails.
    DeviceCheck {
        /// cpu, cuda:N or cuda:N/bf16.
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
    /// Compare a Qwen3-VL checkpoint's logits and positions with a reference run saved by
    /// transformers (a parity fixture folder: the checkpoint plus reference.safetensors). Prints
    /// JSON; exits 1 when positions differ or a logit differs by more than --tolerance.
    HfParity {
        /// The fixture folder (e.g. tests/fixtures/qwen3_vl/tied).
        #[arg(long)]
        fixture: PathBuf,
        /// cpu, cuda:N or cuda:N/bf16.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f32,
    },
    /// Run a Qwen3-VL checkpoint (a Hugging Face folder: config.json, safetensors,
    /// tokenizer.json, preprocessor_config.json) on one image and one message: greedy decoding,
    /// the answer printed.
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
        /// cpu, cuda:N or cuda:N/bf16.
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
        } => {
            use asymm::model::qwen3_vl::{Qwen3Vl, reference};
            let spec = asymm::model::DeviceSpec::parse(&device)?;
            let r = reference::Reference::read(&fixture.join("reference.safetensors"))?;
            let p = asymm::with_backend!(spec, |B, dev| {
                let model = Qwen3Vl::<B>::from_pretrained(&fixture, &dev)?;
                reference::parity(&model, &r).map_err(anyhow::Error::from)
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
        DevCmd::HfGenerate {
            checkpoint,
            image,
            prompt,
            max_new_tokens,
            device,
        } => {
            use asymm::model::qwen3_vl::{ImageInput, Qwen3Vl, chat::ChatTokenizer, processor};
            let spec = asymm::model::DeviceSpec::parse(&device)?;
            let tok = ChatTokenizer::from_dir(&checkpoint)?;
            let proc = processor::ProcessorConfig::from_dir(&checkpoint)?;
            let bytes =
                std::fs::read(&image).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
            let (rows, grid) = proc.preprocess(&processor::Rgb::from_png(&bytes)?)?;
            let m = proc.merge_size * proc.merge_size;
            let ids = tok.prompt(&prompt, grid.iter().product::<usize>() / m)?;
            let stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
                .iter()
                .filter_map(|t| tok.token_id(t))
                .collect();
            let out = asymm::with_backend!(spec, |B, dev| {
                let model = Qwen3Vl::<B>::from_pretrained(&checkpoint, &dev)?;
                proc.check(&model.cfg.vision_config)?;
                let n = rows.len() / model.cfg.vision_config.patch_features().max(1);
                let pixel_values = burn::tensor::Tensor::<B, 2>::from_data(
                    burn::tensor::TensorData::new(
                        rows,
                        [n, model.cfg.vision_config.patch_features()],
                    ),
                    &dev,
                );
                model
                    .greedy(
                        &ids,
                        &[ImageInput { pixel_values, grid }],
                        max_new_tokens,
                        &stop,
                    )
                    .map_err(anyhow::Error::from)
            })?;
            println!("{}", tok.decode(&out, true)?);
            Ok(0)
        }
        DevCmd::DeviceCheck {
            device,
            model,
            tolerance,
            steps,
        } => {
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
        DevCmd::StageVersions {
            write,
            unchanged_output,
            root,
        } => {
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
    }
}
