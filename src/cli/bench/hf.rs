//! The model suite on a checkpoint folder (`--hf DIR`): SFT steps and KV-cached rollouts of a
//! Qwen3-VL or InternVL3.5 model on the suite's graph-coloring puzzles, re-tokenized with the
//! folder's tokenizer and chat prompt as the stages do it. A folder without weights gets random
//! weights of its config's shapes: the time and memory of a size (`benches/shapes/`), measured
//! before anything is downloaded.

use super::{EXAMPLES, Report, SFT_BATCH, SFT_SEED, SftMeasure, puzzles, rollout_plans};
use asymm::data::Codec;
use asymm::data::Example;
use asymm::model::load::{ModelPlan, PlanSource};
use asymm::model::{DeviceSpec, HfVlm, Model};
use asymm::tasks::TaskKind;
use asymm::text::tokenizer::{P_CLOSE, P_OPEN, R_CLOSE, R_OPEN};
use asymm::train::sft::SftSettings;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::module::Module;
use burn::tensor::backend::Backend;
use std::path::Path;
use std::time::Instant;

/// Whether the folder holds weights (else the model gets random ones); weights in another
/// format than safetensors are refused rather than replaced by random ones.
fn has_weights(dir: &Path) -> anyhow::Result<bool> {
    if dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file()
    {
        return Ok(true);
    }
    for other in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
        anyhow::ensure!(
            !dir.join(other).is_file(),
            "{}: {other} but no safetensors (convert the weights to safetensors)",
            dir.display()
        );
    }
    Ok(false)
}

/// The timed SFT run of the suite.
struct Sft<'a> {
    a: &'a super::BenchArgs,
    dir: &'a Path,
    image_size: usize,
    settings: &'a SftSettings,
    examples: &'a [Example],
    pad: u32,
}

impl Sft<'_> {
    /// The model's parameters, and the measurement of the steps after the warm-up.
    fn time<B: Backend, C: CheckpointStrategy>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<(usize, SftMeasure)> {
        let model = load::<Autodiff<B, C>>(self.dir, self.image_size, device)?;
        let params = model.num_params();
        let m = super::model::time_sft::<Autodiff<B, C>>(
            self.a,
            self.settings,
            model,
            self.examples,
            device,
            self.pad,
        )?;
        Ok((params, m))
    }
}

fn load<B: Backend>(dir: &Path, image_size: usize, device: &B::Device) -> anyhow::Result<Model<B>> {
    Ok(Model::Hf(if has_weights(dir)? {
        HfVlm::from_pretrained(dir, image_size, device)?
    } else {
        HfVlm::from_config(dir, image_size, device)?
    }))
}

pub(super) fn hf_suite(
    a: &super::BenchArgs,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<String> {
    let spec = DeviceSpec::parse(&a.device)?;
    let plan = ModelPlan::hf(dir, a.hf_image_size)?;
    let Codec::Hf(codec) = &plan.codec else {
        anyhow::bail!("{}: not a checkpoint folder", dir.display());
    };
    let PlanSource::Hf { image_tokens, .. } = &plan.source else {
        anyhow::bail!("{}: not a checkpoint folder", dir.display());
    };
    let plans = rollout_plans(a)?;
    let n = super::example_count(&plans);
    let examples = puzzles(a.hf_image_size, n)?
        .into_iter()
        .enumerate()
        .map(|(i, z)| {
            let target = format!(
                "{P_OPEN}{}{P_CLOSE}{R_OPEN}{}{R_CLOSE}",
                z.perception, z.reasoning
            );
            let t = codec.example(TaskKind::GraphColoring.prompt(), &target, *image_tokens)?;
            Ok(Example {
                id: format!("bench-{i}"),
                task: "graph_coloring".into(),
                perception: z.perception,
                image: z.ink,
                prompt: t.prompt,
                target: t.target,
                spans: t.spans,
            })
        })
        .collect::<anyhow::Result<Vec<Example>>>()?;
    let weights = if has_weights(dir)? {
        "its weights"
    } else {
        "random weights"
    };
    let steps = a.steps.max(2);
    let settings = SftSettings {
        steps,
        data_shards: 1,
        batch_size: SFT_BATCH,
        seed: SFT_SEED,
        max_text: plan.max_text(),
        seq_bucket: spec.seq_bucket(),
        ..SftSettings::default()
    };
    let sft = Sft {
        a,
        dir,
        image_size: a.hf_image_size,
        settings: &settings,
        examples: &examples[..EXAMPLES.min(examples.len())],
        pad: codec.eos,
    };
    super::model::start_counting(a, spec)?;
    asymm::with_backend!(spec, |B, device| {
        <B as Backend>::seed(&device, SFT_SEED);
        let t = Instant::now();
        let (params, m) = if a.activation_checkpointing {
            sft.time::<B, BalancedCheckpointing>(&device)?
        } else {
            sft.time::<B, NoCheckpointing>(&device)?
        };
        report.parameters = Some(params);
        let mut out = format!(
            "\n| model suite: `{}` ({weights}, {:.1} M parameters) on {} | rate |\n|---|---:|\n",
            dir.display(),
            params as f64 / 1e6,
            a.device
        );
        let ckpt = if a.activation_checkpointing {
            ", activation checkpointing"
        } else {
            ""
        };
        out.push_str(&format!(
            "| SFT, standard objective, batch {SFT_BATCH}{ckpt} ({steps} steps in {:.1} s) | {:.0} target tokens/s |\n",
            t.elapsed().as_secs_f64(),
            m.tokens as f64 / m.seconds.max(1e-9)
        ));
        out.push_str(&m.flops_row(a.peak_tflops));
        if let Some(c) = &m.counts {
            out.push_str(&c.rows(m.steps as f64, "SFT step"));
        }
        report.sft.push(m);
        if !plans.is_empty() {
            let model = load::<B>(dir, a.hf_image_size, &device)?;
            super::model::time_rollouts(
                a,
                &model,
                &plan.codec,
                &examples,
                &plans,
                &device,
                &mut out,
                report,
            )?;
        }
        Ok::<String, anyhow::Error>(out)
    })
}
