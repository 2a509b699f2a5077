//! `asymm bench`: throughput of the data stages on one core (images rendered per second per task,
//! unique puzzles generated per second) and of the model (SFT target tokens/s per objective,
//! rollout new tokens/s with the KV cache), printed as Markdown tables and optionally written to a
//! file. Targets are recorded beside the measurements; nothing here asserts them.

use asymm::eval::rollout::{Mode, RolloutSpec, run_rollouts};
use asymm::model::sampling::SamplingConfig;
use asymm::model::{DeviceSpec, Vlm, VlmConfig};
use asymm::render::digits::DigitBank;
use asymm::stages::render::{RenderConfig, render_one};
use asymm::stages::synthesize::{SynthesizeConfig, generate};
use asymm::tasks::TaskKind;
use asymm::text::Tokenizer;
use asymm::train::batch::{Example, image_ink};
use asymm::train::objective::ObjectiveKind;
use asymm::train::sft::{NoEval, SftSettings, train};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Items per measurement.
    #[arg(long, default_value_t = 2000)]
    pub items: usize,
    /// Which measurements: data, model or all.
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Model size preset for the model suite.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Device for the model suite (cpu, cuda:N, cuda:N/bf16).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Training steps timed in the model suite.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also write the table to this file.
    #[arg(long)]
    pub write: Option<PathBuf>,
}

struct Row {
    what: String,
    rate: f64,
    unit: &'static str,
    target: &'static str,
}

fn per_sec(n: usize, f: impl FnMut(usize)) -> f64 {
    let mut f = f;
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

pub fn bench(a: BenchArgs) -> anyhow::Result<i32> {
    let mut out = String::new();
    if a.suite == "data" || a.suite == "all" {
        out.push_str(&data_suite(&a));
    }
    if a.suite == "model" || a.suite == "all" {
        out.push_str(&model_suite(&a)?);
    }
    print!("{out}");
    if let Some(p) = &a.write {
        std::fs::write(p, &out)?;
    }
    Ok(0)
}

fn data_suite(a: &BenchArgs) -> String {
    let n = a.items.max(10);
    let mut rows = Vec::new();
    let gc = SynthesizeConfig::default();
    let sd = SynthesizeConfig {
        task: TaskKind::Sudoku,
        ..SynthesizeConfig::default()
    };
    rows.push(Row {
        what: "graph coloring generation (exact chromatic number)".into(),
        rate: per_sec(n, |i| {
            std::hint::black_box(generate(&gc, 1, i as u64));
        }),
        unit: "puzzles/s",
        target: "",
    });
    let sd_n = (n / 2).max(10);
    rows.push(Row {
        what: "sudoku generation (unique solution, 30 givens)".into(),
        rate: per_sec(sd_n, |i| {
            std::hint::black_box(generate(&sd, 1, i as u64));
        }),
        unit: "puzzles/s",
        target: "≥ 1,000",
    });
    let gcs: Vec<String> = (0..n)
        .map(|i| generate(&gc, 2, i as u64).perception)
        .collect();
    let sds: Vec<String> = (0..sd_n)
        .map(|i| generate(&sd, 2, i as u64).perception)
        .collect();
    let bank = DigitBank::strokes(50, 0);
    for size in [128u32, 224] {
        let cfg = RenderConfig {
            size,
            ..RenderConfig::default()
        };
        rows.push(Row {
            what: format!("graph coloring render + PNG, {size}×{size}"),
            rate: per_sec(n, |i| {
                let img = render_one(TaskKind::GraphColoring, "x", &gcs[i], &cfg, None, 1);
                std::hint::black_box(img.map(|g| g.to_png()).ok());
            }),
            unit: "images/s",
            target: if size == 224 { "≥ 2,000" } else { "" },
        });
    }
    let cfg = RenderConfig {
        size: 252,
        ..RenderConfig::default()
    };
    rows.push(Row {
        what: "sudoku render + PNG, 252×252".into(),
        rate: per_sec(sd_n, |i| {
            let img = render_one(TaskKind::Sudoku, "x", &sds[i], &cfg, Some(&bank), 1);
            std::hint::black_box(img.map(|g| g.to_png()).ok());
        }),
        unit: "images/s",
        target: "",
    });
    let mut out = String::from("| measurement (one core) | rate | target |\n|---|---:|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.0} {} | {} |\n",
            r.what, r.rate, r.unit, r.target
        ));
    }
    out.push_str(&perception_share(
        &gcs[..200.min(gcs.len())],
        &sds[..200.min(sds.len())],
    ));
    out
}

/// Perception's share of SFT target tokens per task and teacher verbosity.
fn perception_share(gcs: &[String], sds: &[String]) -> String {
    use asymm::stages::distill_format::{encode, teacher_reasoning};
    let tok = asymm::text::Tokenizer::task_vocabulary();
    let mut out = String::from(
        "\n| task | verbosity | mean target tokens | perception share of target tokens |\n|---|---:|---:|---:|\n",
    );
    for (task, items) in [(TaskKind::GraphColoring, gcs), (TaskKind::Sudoku, sds)] {
        for v in 0..=3u8 {
            let (mut p, mut total) = (0usize, 0usize);
            for perception in items {
                let Some(r) = teacher_reasoning(task, perception, v) else {
                    continue;
                };
                let e = encode(&tok, task.prompt(), perception, &r);
                p += (e.spans[0].2 - e.spans[0].1) as usize;
                total += e.target_ids.len();
            }
            let n = items.len().max(1);
            out.push_str(&format!(
                "| {} | {v} | {} | {:.1} % |\n",
                task.name(),
                total / n,
                100.0 * p as f64 / total.max(1) as f64
            ));
        }
    }
    out
}

/// SFT steps and KV-cached rollouts on graph-coloring examples (verbosity 0 teacher traces).
fn model_suite(a: &BenchArgs) -> anyhow::Result<String> {
    let spec = DeviceSpec::parse(&a.device)?;
    let tok = Tokenizer::task_vocabulary();
    let cfg = VlmConfig::preset(&a.model, tok.vocab_size())
        .ok_or_else(|| anyhow::anyhow!("unknown model preset `{}` (tiny, small)", a.model))?;
    let examples = examples(&tok, cfg.image_size, 64)?;
    let steps = a.steps.max(2);
    asymm::with_backend!(spec, |B, device| {
        let mut out = format!(
            "\n| model suite: `{}` ({:.1} M parameters) on {} | rate |\n|---|---:|\n",
            a.model,
            cfg.parameters() as f64 / 1e6,
            a.device
        );
        for objective in [ObjectiveKind::Standard, ObjectiveKind::Ngdiff] {
            let rate =
                sft_rate::<Autodiff<B>>(&cfg, &examples, objective, steps, &device, tok.pad())?;
            out.push_str(&format!(
                "| SFT, {} objective, batch 8 | {rate:.0} target tokens/s |\n",
                format!("{objective:?}").to_lowercase()
            ));
        }
        let model = Vlm::<B>::new(&cfg, &device);
        for (batch, n) in [(1usize, 4usize), (16, 16)] {
            let spec = RolloutSpec {
                mode: Mode::Standard,
                samples: 1,
                sampling: SamplingConfig::default(),
                max_new_tokens: Some(128),
                batch_size: batch,
            };
            let t = Instant::now();
            let rows = run_rollouts(
                &model,
                &tok,
                &examples[..n],
                None,
                &spec,
                1,
                &device,
                |_| {},
            )?;
            let new: usize = rows.iter().map(|r| r.new_tokens).sum();
            out.push_str(&format!(
                "| rollout (KV cache), batch {batch}, ≤128 new tokens | {:.0} new tokens/s |\n",
                new as f64 / t.elapsed().as_secs_f64()
            ));
        }
        Ok::<String, anyhow::Error>(out)
    })
}

/// Training examples built in memory, as distill-format would.
fn examples(tok: &Tokenizer, image_size: usize, n: usize) -> anyhow::Result<Vec<Example>> {
    use asymm::stages::distill_format::{encode, teacher_reasoning};
    let gc = SynthesizeConfig::default();
    let cfg = RenderConfig {
        size: image_size as u32,
        ..RenderConfig::default()
    };
    let ids = |v: Vec<i32>| v.into_iter().map(|x| x.max(0) as u32).collect::<Vec<u32>>();
    (0..n)
        .map(|i| {
            let p = generate(&gc, 3, i as u64).perception;
            let r = teacher_reasoning(TaskKind::GraphColoring, &p, 0)
                .ok_or_else(|| anyhow::anyhow!("no teacher trace"))?;
            let png = render_one(TaskKind::GraphColoring, "x", &p, &cfg, None, 1)?.to_png();
            let e = encode(tok, TaskKind::GraphColoring.prompt(), &p, &r);
            Ok(Example {
                id: format!("bench-{i}"),
                task: "graph_coloring".into(),
                perception: p,
                image: image_ink(&png, image_size)
                    .ok_or_else(|| anyhow::anyhow!("render produced a bad PNG"))?,
                prompt: ids(e.prompt_ids),
                target: ids(e.target_ids),
                spans: e
                    .spans
                    .into_iter()
                    .map(|(n, s, t)| (n, s as usize, t as usize))
                    .collect(),
            })
        })
        .collect()
}

/// Target tokens per second over `steps` SFT steps, the first (warm-up) step excluded.
fn sft_rate<B: AutodiffBackend>(
    cfg: &VlmConfig,
    examples: &[Example],
    objective: ObjectiveKind,
    steps: usize,
    device: &B::Device,
    pad: u32,
) -> anyhow::Result<f64> {
    let settings = SftSettings {
        objective,
        lambda: 0.5,
        extra_spans: vec![],
        steps,
        batch_size: 8,
        grad_accum: 1,
        lr: 1e-3,
        min_lr: 1e-4,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        grad_clip: 1.0,
        diagnostics_every: 0,
        snapshot_every: 0,
        eval_every: 0,
        seed: 1,
        max_text: cfg.max_seq_len - cfg.patches(),
    };
    let scratch = asymm::util::fsx::TempDir::new("asymm-bench")?;
    let out = train::<B>(
        &settings,
        cfg,
        None,
        examples,
        device,
        scratch.path(),
        pad,
        &mut NoEval,
    )?;
    let timed = &out.timing[1..];
    let tokens: usize = timed.iter().map(|t| t.tokens).sum();
    let secs: f64 = timed.iter().map(|t| t.seconds).sum();
    Ok(tokens as f64 / secs.max(1e-9))
}
