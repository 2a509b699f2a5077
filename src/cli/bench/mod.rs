//! `asymm bench`: throughput of the data stages on one core (images rendered per second per task,
//! unique puzzles generated per second) and of the model (SFT target tokens/s per objective,
//! rollout new tokens/s with the KV cache), printed as Markdown tables and optionally written to a
//! file. Targets are recorded beside the measurements; nothing here asserts them.
//!
//! For the side-by-side comparison with the PyTorch twin (`make bench-twin`, `benches/twin/`),
//! `--json` prints the measurements with the process's peak resident memory, `--objectives` and
//! `--rollout-batches` pick the measurements of one process, and `--export-twin` writes the
//! examples, the SFT batch order and the settings for the twin to read.

mod counts;
mod data;
mod hf;
mod model;
mod setup;
mod twin;

use counts::Counts;
use data::{data_suite, share_suite};
use model::model_suite;
use setup::{example_count, examples, model_config, model_name, puzzles, sft_settings};
use twin::twin_export;

use asymm::data::{Example, image_ink};
use asymm::eval::rollout::{Mode, RolloutSpec, Sampler, run_rollouts};
use asymm::model::sampling::SamplingConfig;
use asymm::model::{DeviceSpec, Vlm, VlmConfig};
use asymm::render::digits::DigitBank;
use asymm::render::puzzle::{RenderConfig, render_one};
use asymm::tasks::TaskKind;
use asymm::tasks::generate::{SynthesizeConfig, generate};
use asymm::text::Tokenizer;
use asymm::train::objective::ObjectiveKind;
use asymm::train::sft::{SftSettings, train};
use burn::backend::Autodiff;
use burn::optim::AdamWConfig;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Items per measurement.
    #[arg(long, default_value_t = 2000)]
    pub items: usize,
    /// Which measurements: data, model, all, or shares (perception's share of SFT target
    /// tokens by task, Sudoku givens and trace verbosity).
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Model size preset for the model suite.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Changes one field of the preset's config (`layers=8`, `vit_layers=6`); repeatable. Launch
    /// counts depend on the number of layers, not their widths: `--model tiny --model-set
    /// layers=8 --model-set vit_layers=6` counts `small`'s launches at `tiny`'s cost.
    #[arg(long, value_name = "FIELD=VALUE")]
    pub model_set: Vec<String>,
    /// Device for the model suite (cpu, cuda:N, cuda:N/bf16, wgpu, wgpu:cpu).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Training steps timed in the model suite.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also write the table to this file.
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Print one JSON document (measurements, parameter count, threads, peak resident memory)
    /// instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// SFT objectives timed by the model suite, comma-separated (standard, ngdiff), or `none`.
    #[arg(long, default_value = "standard,ngdiff")]
    pub objectives: String,
    /// Rollout batch sizes timed by the model suite, comma-separated, or `none`.
    #[arg(long, default_value = "1,16")]
    pub rollout_batches: String,
    /// Samples per prompt (G) in rollout batches that are a multiple of it: batch 40 with G = 8
    /// samples 5 prompts 8 times each; other batches sample each prompt once.
    #[arg(long, default_value_t = 1)]
    pub rollout_samples: usize,
    /// Concurrent data-parallel shards of each SFT batch (sft-train's `data_shards`).
    #[arg(long, default_value_t = 2)]
    pub data_shards: usize,
    /// Data-parallel peers of the model suite's SFT steps (sft-train's `data_parallel`; with
    /// more than one, `--data-shards 1`).
    #[arg(long, default_value_t = 1)]
    pub data_parallel: usize,
    /// Write the model suite's examples, SFT batch order and settings as JSON for the PyTorch
    /// twin (benches/twin/) to this file, and measure nothing.
    #[arg(long)]
    pub export_twin: Option<PathBuf>,
    /// Run the model suite on a Qwen3-VL or InternVL3.5 checkpoint folder instead of a preset:
    /// its weights, or random weights of its config's shapes where the folder has none
    /// (config.json and tokenizer.json are enough).
    #[arg(long)]
    pub hf: Option<PathBuf>,
    /// Side of the puzzle images a checkpoint model reads (`model.image_size`).
    #[arg(long, default_value_t = 224)]
    pub hf_image_size: usize,
    /// Train the `--hf` model with activation checkpointing (sft-train's option).
    #[arg(long)]
    pub activation_checkpointing: bool,
    /// SFT steps at the start of each run (of `--steps`) left out of the timing: kernel
    /// compilation, autotuning, allocator growth. With N > 0 each rollout plan also runs once
    /// untimed before its timed pass.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Count, in the timed window, host reads per SFT step and per decoded token and, on the
    /// cubecl backends (`--device wgpu…`, `cuda…`), kernel launches and compilations.
    #[arg(long)]
    pub count_kernels: bool,
    /// The device's peak dense throughput in TFLOP/s (for example 989 for an H200 in bf16,
    /// 494 in TF32): SFT rows then report the model FLOPs utilization (MFU).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
}

/// Model FLOPs of one SFT example of `text` tokens (prompt and target) on the built-in model:
/// forward and backward (3× the forward) of every matrix product, counted as 2 FLOPs per
/// multiply-add — the encoder's layers and the projector over the image patches, the language
/// model's layers and head over patches and text (the head runs on every position), and
/// attention's two products over the full (unmasked) score matrices. Element-wise work, norms
/// and the optimizer are left out, as in the usual 6·N·tokens count.
fn sft_flops(cfg: &VlmConfig, text: usize) -> f64 {
    let (n, t) = (cfg.patches() as f64, (cfg.patches() + text) as f64);
    let layer = |d: f64| 4.0 * d * d + 3.0 * d * d * cfg.mlp_ratio as f64;
    let (vd, d) = (cfg.vit_dim as f64, cfg.d_model as f64);
    let encoder = cfg.patch_features() as f64 * vd + cfg.vit_layers as f64 * layer(vd) + vd * d;
    let lm = cfg.layers as f64 * layer(d) + d * cfg.vocab_size as f64;
    let products = 2.0 * (encoder * n + lm * t);
    let attention = 4.0 * (cfg.vit_layers as f64 * vd * n * n + cfg.layers as f64 * d * t * t);
    3.0 * (products + attention)
}

/// The warm-up steps of a run of `steps`: at least one step must be timed.
fn warmup_steps(a: &BenchArgs, steps: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(
        a.warmup < steps,
        "--warmup {} leaves none of the {steps} steps to time (raise --steps)",
        a.warmup
    );
    Ok(a.warmup)
}

/// The median of `v` (0 for none).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// New tokens per rollout output.
const ROLLOUT_TOKENS: usize = 128;
/// SFT batch size of the model suite.
const SFT_BATCH: usize = 8;
/// Seed of the model suite's SFT runs (model initialization and batch order).
const SFT_SEED: u64 = 1;
/// Training examples built for the model suite (more when the rollouts need more prompts).
const EXAMPLES: usize = 64;

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
    if !["data", "model", "shares", "all"].contains(&a.suite.as_str()) {
        anyhow::bail!("unknown suite `{}` (data, model, shares, all)", a.suite);
    }
    if let Some(p) = &a.export_twin {
        std::fs::write(p, serde_json::to_string(&twin_export(&a)?)?)?;
        return Ok(0);
    }
    let mut report = Report::default();
    if a.suite == "data" || a.suite == "all" {
        report.markdown.push_str(&data_suite(&a, &mut report.data));
    }
    if a.suite == "shares" {
        report.markdown.push_str(&share_suite(&a));
    }
    if a.suite == "model" || a.suite == "all" {
        let md = match &a.hf {
            Some(dir) => hf::hf_suite(&a, dir, &mut report)?,
            None => model_suite(&a, &mut report)?,
        };
        report.markdown.push_str(&md);
    }
    let out = if a.json {
        let mut v = serde_json::to_string_pretty(&report.to_json(&a))?;
        v.push('\n');
        v
    } else {
        report.markdown
    };
    print!("{out}");
    if let Some(p) = &a.write {
        std::fs::write(p, &out)?;
    }
    Ok(0)
}

/// Everything one `bench` process measured.
#[derive(Default)]
struct Report {
    markdown: String,
    data: Vec<Row>,
    parameters: Option<usize>,
    sft: Vec<SftMeasure>,
    rollout: Vec<RolloutMeasure>,
}

struct SftMeasure {
    /// Model FLOPs per timed step ([`sft_flops`] over the suite's mean example), for MFU.
    flops_per_step: Option<f64>,
    objective: ObjectiveKind,
    /// Timed steps (the warm-up steps excluded) and the target tokens they trained on.
    steps: usize,
    tokens: usize,
    seconds: f64,
    /// The median timed step's seconds.
    median_step: f64,
    /// What the timed steps did (`--count-kernels`).
    counts: Option<Counts>,
}

struct RolloutMeasure {
    plan: RolloutPlan,
    new_tokens: usize,
    /// Each output's new tokens and whether it ended with `<eos>` (else the budget cut it).
    rows: Vec<(usize, bool)>,
    seconds: f64,
    /// Decoding steps run (each batch runs until its longest row stops).
    decode_steps: usize,
    counts: Option<Counts>,
}

impl SftMeasure {
    /// Model TFLOP/s over the timed steps.
    fn tflops_per_s(&self) -> Option<f64> {
        self.flops_per_step
            .map(|f| f * self.steps as f64 / self.seconds.max(1e-9) / 1e12)
    }

    fn mfu(&self, peak_tflops: Option<f64>) -> Option<f64> {
        Some(self.tflops_per_s()? / peak_tflops.filter(|p| *p > 0.0)?)
    }

    /// A Markdown row of the model FLOP rate (and MFU with `--peak-tflops`).
    fn flops_row(&self, peak_tflops: Option<f64>) -> String {
        match (self.tflops_per_s(), self.mfu(peak_tflops)) {
            (Some(r), Some(m)) => format!(
                "| model FLOP rate (MFU at {:.0} TFLOP/s peak) | {r:.3} TFLOP/s ({:.1} %) |\n",
                peak_tflops.unwrap_or(0.0),
                100.0 * m
            ),
            (Some(r), None) => format!("| model FLOP rate | {r:.3} TFLOP/s |\n"),
            _ => String::new(),
        }
    }
}

impl Report {
    fn to_json(&self, a: &BenchArgs) -> serde_json::Value {
        use serde_json::json;
        json!({
            "suite": a.suite,
            "model": a.hf.as_ref().map_or(model_name(a), |d| d.display().to_string()),
            "device": a.device,
            "parameters": self.parameters,
            "threads": threads(),
            "data": self.data.iter().map(|r| json!({
                "measurement": r.what, "rate": r.rate, "unit": r.unit,
            })).collect::<Vec<_>>(),
            "sft": self.sft.iter().map(|m| json!({
                "objective": objective_name(m.objective),
                "batch": SFT_BATCH,
                "steps_timed": m.steps,
                "target_tokens": m.tokens,
                "seconds": m.seconds,
                "median_step_seconds": m.median_step,
                "target_tokens_per_s": m.tokens as f64 / m.seconds.max(1e-9),
                "warmup_steps": a.warmup,
                "per_step": m.counts.as_ref().map(|c| c.json(m.steps as f64)),
                "model_tflops_per_s": m.tflops_per_s(),
                "mfu": m.mfu(a.peak_tflops),
            })).collect::<Vec<_>>(),
            "rollout": self.rollout.iter().map(|m| json!({
                "batch": m.plan.batch,
                "samples": m.plan.samples,
                "prompts_per_batch": m.plan.prompts,
                "batches": m.plan.batches,
                "max_new_tokens": ROLLOUT_TOKENS,
                "sequences": m.plan.sequences(),
                "new_tokens": m.new_tokens,
                "truncated": m.rows.iter().filter(|r| !r.1).count(),
                // Where each output stopped: its new tokens, or null where the budget cut it.
                "stops": m.rows.iter().map(|&(n, eos)| eos.then_some(n)).collect::<Vec<_>>(),
                "seconds": m.seconds,
                "new_tokens_per_s": m.new_tokens as f64 / m.seconds.max(1e-9),
                "decode_steps": m.decode_steps,
                "per_decode_step": m.counts.as_ref().map(|c| c.json(m.decode_steps as f64)),
            })).collect::<Vec<_>>(),
            "peak_rss_kib": peak_rss_kib(),
        })
    }
}

/// The compute threads the CPU backend uses (rayon's global pool).
fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// This process's peak resident set size (VmHWM) in KiB; `None` where /proc is unavailable.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn objective_name(o: ObjectiveKind) -> String {
    format!("{o:?}").to_lowercase()
}

/// A comma-separated list, or `none` for an empty one.
fn list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> anyhow::Result<Vec<T>> {
    if s.trim() == "none" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| parse(x.trim()).ok_or_else(|| anyhow::anyhow!("bad {what} `{x}`")))
        .collect()
}

fn objectives(a: &BenchArgs) -> anyhow::Result<Vec<ObjectiveKind>> {
    list(&a.objectives, "objective (standard, ngdiff)", |x| match x {
        "standard" => Some(ObjectiveKind::Standard),
        "ngdiff" => Some(ObjectiveKind::Ngdiff),
        _ => None,
    })
}

/// How one rollout measurement is run: `batches` batches of `prompts` prompts × `samples`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RolloutPlan {
    batch: usize,
    samples: usize,
    prompts: usize,
    batches: usize,
}

impl RolloutPlan {
    /// Batch `batch` with G = `g`: G samples per prompt when the batch is a multiple of G, and
    /// enough batches for at least 4 outputs (batch 1 runs 4 batches).
    fn new(batch: usize, g: usize) -> RolloutPlan {
        let samples = if g > 1 && batch.is_multiple_of(g) {
            g
        } else {
            1
        };
        RolloutPlan {
            batch,
            samples,
            prompts: batch / samples,
            batches: 4usize.div_ceil(batch),
        }
    }

    fn sequences(&self) -> usize {
        self.batch * self.batches
    }

    /// The examples it reads.
    fn examples(&self) -> usize {
        self.prompts * self.batches
    }
}

fn rollout_plans(a: &BenchArgs) -> anyhow::Result<Vec<RolloutPlan>> {
    let g = a.rollout_samples.max(1);
    list(&a.rollout_batches, "rollout batch", |x| {
        x.parse::<usize>()
            .ok()
            .filter(|&b| b > 0)
            .map(|b| RolloutPlan::new(b, g))
    })
}

#[cfg(test)]
mod tests {
    use super::twin::{f32le_base64, sft_batches};
    use super::*;

    #[test]
    fn rollout_plans_keep_the_default_and_group_samples() {
        assert_eq!(
            RolloutPlan::new(1, 1),
            RolloutPlan {
                batch: 1,
                samples: 1,
                prompts: 1,
                batches: 4
            }
        );
        assert_eq!(RolloutPlan::new(16, 1).examples(), 16);
        let p = RolloutPlan::new(40, 8);
        assert_eq!(
            (p.samples, p.prompts, p.batches, p.sequences()),
            (8, 5, 1, 40)
        );
        // A batch that is not a multiple of G samples each prompt once.
        assert_eq!(RolloutPlan::new(1, 8).samples, 1);
        assert_eq!(example_count(&[RolloutPlan::new(100, 1)]), 100);
        assert_eq!(example_count(&[]), EXAMPLES);
    }

    /// The FLOP count by hand for a model of one layer each: 6·N·tokens plus attention.
    #[test]
    fn sft_flops_by_hand() {
        let cfg = VlmConfig {
            image_size: 8,
            patch_size: 4,
            vit_dim: 2,
            vit_layers: 1,
            vit_heads: 1,
            conv_stem: 0,
            d_model: 4,
            layers: 1,
            heads: 1,
            mlp_ratio: 1,
            vocab_size: 10,
            max_seq_len: 32,
            rope_theta: 1e4,
        };
        // 4 patches of 16 pixels; 6 text tokens, so 10 LM positions.
        let encoder = 16.0 * 2.0 + (4.0 * 4.0 + 3.0 * 4.0) + 2.0 * 4.0;
        let lm = (4.0 * 16.0 + 3.0 * 16.0) + 4.0 * 10.0;
        let attention = 4.0 * (2.0 * 16.0 + 4.0 * 100.0);
        let want = 3.0 * (2.0 * (encoder * 4.0 + lm * 10.0) + attention);
        assert_eq!(sft_flops(&cfg, 6), want);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn lists_parse_and_refuse() {
        let p = |s: &str| list(s, "n", |x| x.parse::<usize>().ok());
        assert_eq!(p("1, 40").unwrap(), vec![1, 40]);
        assert!(p("none").unwrap().is_empty());
        assert!(p("1,x").unwrap_err().to_string().contains("bad n `x`"));
    }

    #[test]
    fn sft_batches_cover_each_epoch_once() {
        let b = sft_batches(16, 4);
        assert!(b.iter().all(|x| x.len() == SFT_BATCH));
        let mut first: Vec<usize> = b[..2].concat();
        first.sort();
        assert_eq!(first, (0..16).collect::<Vec<_>>());
        assert_eq!(b, sft_batches(16, 4));
    }

    #[test]
    fn base64_of_f32() {
        assert_eq!(f32le_base64(&[1.0]), "AACAPw==");
        assert_eq!(f32le_base64(&[]), "");
        assert_eq!(f32le_base64(&[0.0, 1.0]), "AAAAAAAAgD8=");
    }
}
