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
    /// Compute device for model stages: cpu or cuda:N.
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
    Ok(0)
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
