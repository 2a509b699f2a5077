//! `asymm run`: execute a pipeline and print the run table.

use super::short;
use asymm::dag::{Outcome, RunOptions, Runner, parse_pipeline};
use asymm::stages::StageRegistry;
use asymm::store::Store;
use clap::Args;
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
    /// Compute device for model stages: cpu, cuda:N, or cuda:N/bf16 (bfloat16 on the GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(store: &Store, a: RunArgs) -> anyhow::Result<i32> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(&a.pipeline, &reg)?;
    let opts = RunOptions {
        only: a.only,
        until: a.until,
        force: a.force,
        dry_run: a.dry_run,
    };
    let mut runner = Runner::new(store, &reg, &a.device);
    let rows = runner.run(&p, &opts)?;
    println!("pipeline {} ({} stages)", p.name, rows.len());
    println!(
        "{:<36} {:<16} {:>10}  artifact / reason",
        "stage", "result", "seconds"
    );
    let mut total = 0.0;
    for r in &rows {
        let secs = r.duration.as_secs_f64();
        total += secs;
        let (result, detail) = match &r.outcome {
            Outcome::Cached => ("cached", outputs_label(&r.outputs)),
            Outcome::Ran => ("ran", outputs_label(&r.outputs)),
            Outcome::WouldRun(why) => ("would run", why.join("; ")),
            Outcome::Skipped => ("skipped", String::new()),
        };
        println!(
            "{:<36} {:<16} {:>10.2}  {}",
            r.instance, result, secs, detail
        );
    }
    println!("stage work: {total:.2} s");
    for r in &rows {
        for id in r.outputs.values() {
            if store.manifest(id).is_ok_and(|m| m.kind == "eval_summary") {
                print_summary(store, &r.instance, id)?;
            }
        }
    }
    Ok(0)
}

/// Prints an evaluation summary (task, metric, n, mean, 95 % interval).
fn print_summary(store: &Store, instance: &str, id: &str) -> anyhow::Result<()> {
    let t = asymm::table::Table::read(store, id, "eval_summary")?;
    let (tasks, metrics) = (t.required_strings("task")?, t.required_strings("metric")?);
    let (n, mean, lo, hi) = (
        t.i64("n")?,
        t.f64("mean")?,
        t.f64("ci_low")?,
        t.f64("ci_high")?,
    );
    println!();
    println!("{instance}:");
    println!(
        "  {:<16} {:<10} {:>6} {:>8}  95% CI",
        "task", "metric", "n", "mean"
    );
    for i in 0..t.rows() {
        println!(
            "  {:<16} {:<10} {:>6} {:>8.3}  [{:.3}, {:.3}]",
            tasks[i],
            metrics[i],
            n.value(i),
            mean.value(i),
            lo.value(i),
            hi.value(i)
        );
    }
    Ok(())
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
