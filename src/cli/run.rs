//! `asymm run`: execute a pipeline and print the run table.

use super::{Format, print_json, short};
use asymm::dag::{
    Executor, Outcome, RemoteUse, RunOptions, RunRow, Runner, SlurmConfig, SlurmRun, absolute,
    parse_pipeline,
};
use asymm::stages::StageRegistry;
use asymm::store::Store;
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Run only this stage (repeatable); its inputs must already be cached.
    #[arg(long)]
    pub only: Vec<String>,
    /// Run this stage and everything it depends on (repeatable).
    #[arg(long)]
    pub until: Vec<String>,
    /// Recompute this stage even if cached (repeatable).
    #[arg(long)]
    pub force: Vec<String>,
    /// Show what would run and why, without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Compute device for model stages: cpu, cuda:N, cuda:N/bf16 (bfloat16 on the GPU), wgpu or
    /// wgpu:cpu (the cubecl kernels through wgpu; a software Vulkan device with `:cpu`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output format of the run report (progress always goes to stderr).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Pull results missing here from this remote (`asymm remote add`) and push every result
    /// of the run to it; overrides the pipeline's `remote`. Not used by `--dry-run`.
    #[arg(long, conflicts_with = "no_remote")]
    pub remote: Option<String>,
    /// Ignore the pipeline's `remote`.
    #[arg(long)]
    pub no_remote: bool,
    /// Where stage instances run: `local` (this process) or `slurm` (one job each, with the
    /// pipeline's `executor.slurm` settings); default: the pipeline's `executor`, else local.
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorArg {
    Local,
    Slurm,
}

/// `asymm run-stage`: what one Slurm job runs.
#[derive(Args, Debug)]
pub struct RunStageArgs {
    /// Pipeline file (TOML).
    pub pipeline: PathBuf,
    /// The stage instance to run; its inputs must be in the store (or on the remote).
    #[arg(long)]
    pub instance: String,
    /// The cache key the instance was submitted with; a pipeline that changed since is refused.
    #[arg(long)]
    pub key: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Pull inputs from and push the result to this remote.
    #[arg(long)]
    pub remote: Option<String>,
    /// Recompute the instance even when its result is cached.
    #[arg(long)]
    pub force: bool,
}

/// A runner on `device` that pulls from and pushes to `remote`, if any.
fn runner_for<'a>(
    store: &'a Store,
    reg: &'a StageRegistry,
    device: &str,
    remote: Option<&'a asymm::store::Remote>,
) -> Runner<'a> {
    let runner = Runner::new(store, reg, device);
    match remote {
        Some(remote) => runner.with_remote(RemoteUse {
            remote,
            pull: true,
            push: true,
        }),
        None => runner,
    }
}

/// Runs one stage instance whose key must be `key`.
pub fn run_stage(store: &Store, a: RunStageArgs) -> anyhow::Result<i32> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(&a.pipeline, &reg)?;
    let remote = match &a.remote {
        Some(n) => Some(super::remote::open_remote(store, Some(n))?),
        None => None,
    };
    let mut runner = runner_for(store, &reg, &a.device, remote.as_ref());
    let mut opts = RunOptions {
        only: vec![a.instance.clone()],
        force: if a.force {
            vec![a.instance.clone()]
        } else {
            Vec::new()
        },
        dry_run: true,
        ..RunOptions::default()
    };
    let planned = runner.run(&p, &opts)?;
    let row = planned
        .iter()
        .find(|r| r.instance == a.instance)
        .ok_or_else(|| {
            anyhow::anyhow!("no instance `{}` in {}", a.instance, a.pipeline.display())
        })?;
    if row.key.as_deref() != Some(a.key.as_str()) {
        anyhow::bail!(
            "`{}` now has key {}, not {}: the pipeline or its inputs changed since the job was submitted",
            a.instance,
            row.key.as_deref().unwrap_or("(inputs missing)"),
            a.key
        );
    }
    opts.dry_run = false;
    let rows = runner.run(&p, &opts)?;
    for r in rows.iter().filter(|r| r.instance == a.instance) {
        println!(
            "{} {:?} {:.1}s",
            r.instance,
            r.outcome,
            r.duration.as_secs_f64()
        );
    }
    Ok(0)
}

use asymm::eval::score::SummaryRow;

/// JSON: `{"pipeline", "device", "dry_run", "stages": [{"name", "stage", "result":
/// "cached|ran|would_run|skipped", "seconds", "key", "outputs": {name: id}, "why": […]}],
/// "stage_seconds", "evaluations": [{"stage", "artifact", "rows": [{"task", "metric", "n",
/// "items", "mean", "ci_low", "ci_high", "interval"}]}]}`.
pub fn run(store: &Store, a: RunArgs) -> anyhow::Result<i32> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(&a.pipeline, &reg)?;
    let opts = RunOptions {
        only: a.only,
        until: a.until,
        force: a.force,
        dry_run: a.dry_run,
    };
    let remote_name = if a.no_remote || opts.dry_run {
        None
    } else {
        a.remote.as_deref().or(p.remote.as_deref())
    };
    let remote = match remote_name {
        Some(n) => Some(super::remote::open_remote(store, Some(n))?),
        None => None,
    };
    let mut runner = runner_for(store, &reg, &a.device, remote.as_ref());
    let executor = match a.executor {
        Some(ExecutorArg::Local) => Executor::Local,
        Some(ExecutorArg::Slurm) => match &p.executor {
            Executor::Slurm(c) => Executor::Slurm(c.clone()),
            Executor::Local => Executor::Slurm(SlurmConfig::default()),
        },
        None => p.executor.clone(),
    };
    let rows = match &executor {
        Executor::Slurm(config) if !opts.dry_run => {
            let slurm = SlurmRun {
                config,
                exe: std::env::current_exe()?,
                store: absolute(store.root())?,
                pipeline_file: absolute(&a.pipeline)?,
                device: a.device.clone(),
                remote: remote.as_ref().map(|r| r.name().to_string()),
                poll: std::time::Duration::from_secs(2),
            };
            let report = slurm.run(&mut runner, &p, &opts)?;
            eprintln!("slurm: {} jobs submitted", report.jobs);
            report.rows
        }
        _ => runner.run(&p, &opts)?,
    };
    if let Some(r) = &remote {
        let pulled = runner.pulled();
        eprintln!(
            "remote `{}`: pulled {} run records and {} artifacts",
            r.name(),
            pulled.records,
            pulled.artifacts
        );
    }
    let total: f64 = rows.iter().map(|r| r.duration.as_secs_f64()).sum();
    let found = highlights(store, &rows)?;
    if a.format == Format::Json {
        print_run_json(&p.name, &a.device, opts.dry_run, &rows, total, &found)?;
    } else {
        print_run_table(store, &p.name, &rows, total, &found)?;
    }
    Ok(0)
}

/// What a run's table shows below the stages: the evaluations' summaries, SFT's perception
/// shares, the reports.
struct Highlights {
    /// (instance, artifact, rows) of every `eval_summary` written or reused.
    summaries: Vec<(String, String, Vec<SummaryRow>)>,
    /// (instance, shares) of every SFT log with diagnostics.
    shares: Vec<(String, Shares)>,
    /// (instance, artifact) of every report.
    reports: Vec<(String, String)>,
}

fn highlights(store: &Store, rows: &[RunRow]) -> anyhow::Result<Highlights> {
    let mut summaries = Vec::new();
    let mut shares = Vec::new();
    let mut reports = Vec::new();
    for r in rows
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Skipped))
    {
        for id in r.outputs.values() {
            match store.manifest(id).map(|m| m.kind) {
                Ok(k) if k == "eval_summary" => {
                    summaries.push((r.instance.clone(), id.clone(), summary(store, id)?));
                }
                Ok(k) if k == "report" => reports.push((r.instance.clone(), id.clone())),
                Ok(k) if k == "train_log" => {
                    if let Some(s) = perception_shares(store, id)? {
                        shares.push((r.instance.clone(), s));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Highlights {
        summaries,
        shares,
        reports,
    })
}

fn print_run_json(
    name: &str,
    device: &str,
    dry_run: bool,
    rows: &[RunRow],
    total: f64,
    found: &Highlights,
) -> anyhow::Result<()> {
    let stages: Vec<Value> = rows
        .iter()
        .map(|r| {
            let (result, why) = match &r.outcome {
                Outcome::Cached => ("cached", vec![]),
                Outcome::Ran => ("ran", vec![]),
                Outcome::WouldRun(why) => ("would_run", why.iter().map(|x| x.to_json()).collect()),
                Outcome::Skipped => ("skipped", vec![]),
            };
            json!({
                "name": r.instance,
                "stage": r.stage,
                "result": result,
                "seconds": r.duration.as_secs_f64(),
                "key": r.key,
                "outputs": r.outputs,
                "why": why,
            })
        })
        .collect();
    let evaluations: Vec<Value> = found
        .summaries
        .iter()
        .map(|(stage, id, rows)| json!({"stage": stage, "artifact": id, "rows": rows}))
        .collect();
    let shares: Vec<Value> = found
        .shares
        .iter()
        .map(|(stage, s)| {
            json!({"stage": stage, "step": s.step, "tokens": s.tokens, "loss": s.loss,
                   "gradient": s.gradient})
        })
        .collect();
    print_json(&json!({
        "pipeline": name,
        "device": device,
        "dry_run": dry_run,
        "stages": stages,
        "stage_seconds": total,
        "evaluations": evaluations,
        "perception_shares": shares,
    }))?;
    Ok(())
}

fn print_run_table(
    store: &Store,
    name: &str,
    rows: &[RunRow],
    total: f64,
    found: &Highlights,
) -> anyhow::Result<()> {
    println!("pipeline {name} ({} stages)", rows.len());
    println!(
        "{:<36} {:<16} {:>10}  artifact / reason",
        "stage", "result", "seconds"
    );
    let mut skipped = 0;
    for r in rows {
        if matches!(r.outcome, Outcome::Skipped) {
            // Not selected (--until, --only): counted below, not listed.
            skipped += 1;
            continue;
        }
        let secs = r.duration.as_secs_f64();
        let (result, detail) = match &r.outcome {
            Outcome::Cached => ("cached", outputs_label(&r.outputs)),
            Outcome::Ran => ("ran", outputs_label(&r.outputs)),
            Outcome::WouldRun(why) => (
                "would run",
                why.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Outcome::Skipped => continue,
        };
        println!(
            "{:<36} {:<16} {:>10.2}  {}",
            r.instance, result, secs, detail
        );
    }
    if skipped > 0 {
        let noun = if skipped == 1 { "stage" } else { "stages" };
        println!("({skipped} {noun} not selected)");
    }
    println!("stage work: {total:.2} s");
    for (instance, s) in &found.shares {
        let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.1} %", 100.0 * v));
        println!(
            "\n{instance}: perception is {} of the target tokens, {} of the loss and {} of the \
             gradient norm (step {})",
            pct(Some(s.tokens)),
            pct(Some(s.loss)),
            pct(s.gradient),
            s.step
        );
    }
    for (instance, _, rows) in &found.summaries {
        print_summary(instance, rows);
    }
    for (instance, id) in &found.reports {
        print_report(store, instance, id)?;
    }
    Ok(())
}

/// A report's findings (one line each) and where its HTML is.
fn print_report(store: &Store, instance: &str, id: &str) -> anyhow::Result<()> {
    let md = String::from_utf8(store.read_file(id, "report.md")?)?;
    println!("\n{instance}:");
    let findings = md
        .lines()
        .skip_while(|l| !l.starts_with("## Findings"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "));
    for line in findings.filter(|l| l.starts_with("- ")) {
        println!("  {}", line.trim_start_matches("- ").replace("**", ""));
    }
    println!(
        "  open {}",
        store.verified_path(id, "report.html")?.display()
    );
    Ok(())
}

/// Where the perception/reasoning asymmetry shows in one task's evaluation: reasoning with the
/// oracle transcription forced (a_r) against end-to-end (a) and perception (a_p).
fn asymmetry(rows: &[SummaryRow], task: &str) -> Option<String> {
    let get = |m: &str| rows.iter().find(|s| s.task == task && s.metric == m);
    let (a, a_p, a_r) = (get("a")?, get("a_p")?, get("a_r")?);
    let verdict = if a_r.ci_low > a.ci_high && a_r.ci_low > a_p.ci_high {
        "reasoning succeeds far more often when given the right transcription than the model \
         transcribes right: perception is what fails first"
    } else if a_p.ci_low > a_r.ci_high {
        "the model transcribes right more often than it reasons right: reasoning is what fails \
         first"
    } else {
        "the intervals overlap: no clear asymmetry at this sample size"
    };
    let given = get("a_given_p").map_or(String::new(), |g| {
        format!(
            ", and P(a | a_p) = {:.3} when its own transcription is right",
            g.mean
        )
    });
    Some(format!(
        "  asymmetry ({task}): a_r = {:.3} with p* forced against a_p = {:.3} and a = {:.3}{given}; \
         {verdict}.",
        a_r.mean, a_p.mean, a.mean
    ))
}

/// Perception's share of an SFT run's target tokens, loss and gradient norm, from its log's
/// last diagnostic step (the last step when none measured the gradient).
struct Shares {
    step: usize,
    tokens: f64,
    loss: f64,
    gradient: Option<f64>,
}

fn perception_shares(store: &Store, id: &str) -> anyhow::Result<Option<Shares>> {
    use asymm::train::sft::{LogRow, last_diagnostic};
    let log = LogRow::read_all(&asymm::table::Table::read(store, id, "train_log")?)?;
    Ok(last_diagnostic(&log).map(|r| Shares {
        step: r.step,
        tokens: r.perception_token_share,
        loss: r.perception_loss_share,
        gradient: r.perception_grad_share,
    }))
}

/// Reads an evaluation summary artifact.
fn summary(store: &Store, id: &str) -> anyhow::Result<Vec<SummaryRow>> {
    let t = asymm::table::Table::read(store, id, "eval_summary")?;
    Ok(SummaryRow::read_all(&t)?)
}

/// Prints an evaluation summary (task, metric, n, mean, 95 % interval and how it was computed).
fn print_summary(instance: &str, rows: &[SummaryRow]) {
    let w = rows
        .iter()
        .map(|s| s.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!();
    println!("{instance}:");
    println!(
        "  {:<16} {:<w$} {:>6} {:>8}  95% CI",
        "task", "metric", "n", "mean"
    );
    for s in rows {
        println!(
            "  {:<16} {:<w$} {:>6} {:>8.3}  [{:.3}, {:.3}] {}",
            s.task, s.metric, s.n, s.mean, s.ci_low, s.ci_high, s.interval
        );
    }
    let mut tasks: Vec<&str> = rows.iter().map(|s| s.task.as_str()).collect();
    tasks.dedup();
    for t in tasks {
        if let Some(line) = asymmetry(rows, t) {
            println!("{line}");
        }
    }
}

fn outputs_label(o: &std::collections::BTreeMap<String, String>) -> String {
    o.iter()
        .map(|(k, v)| {
            if k == "main" {
                short(v).to_string()
            } else {
                format!("{k}={}", short(v))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
