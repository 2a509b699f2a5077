//! Subcommands. Each file holds one command group; this module defines the argument tree.

mod bench;
mod bundle;
mod dev;
mod inspect;
mod remote;
mod run;
mod store_cmds;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Output format of the inspection commands.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts and tests.
    Json,
}

/// Prints a JSON document on stdout.
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(Parser, Debug)]
#[command(
    name = "asymm",
    version,
    about = "Perception vs. reasoning experiments for vision-language models"
)]
pub struct Cli {
    /// Artifact store directory.
    #[arg(long, global = true, env = "ASYMM_STORE", default_value = "artifacts")]
    pub store: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a pipeline, reusing every cached stage.
    Run(run::RunArgs),
    /// Run one stage instance with a given cache key (what a Slurm job runs).
    #[command(hide = true)]
    RunStage(run::RunStageArgs),
    /// Show each stage of a pipeline: cached, stale (and why) or missing.
    Status(inspect::PipelineArg),
    /// Print a pipeline's expanded graph of stage instances.
    Dag(inspect::DagArgs),
    /// Show an artifact: manifest, schema and first rows.
    Show(inspect::ShowArgs),
    /// Re-hash every stored artifact and report corruption.
    Verify,
    /// Delete artifacts not reachable from pipeline heads or tags.
    Gc(store_cmds::GcArgs),
    /// Name artifacts so that gc keeps them.
    Tag(store_cmds::TagArgs),
    /// List stored artifacts.
    List,
    /// Measure data-stage throughput (one core) and model training/rollout tokens per second.
    Bench(bench::BenchArgs),
    /// Export or import artifact bundles.
    #[command(subcommand)]
    Bundle(bundle::BundleCmd),
    /// Manage the store's remotes (S3-compatible object stores shared between machines).
    #[command(subcommand)]
    Remote(remote::RemoteCmd),
    /// Upload run records and their artifacts to a remote: `push [NAME] [PIPELINE.toml[:STAGE]]`.
    Push(remote::SyncArgs),
    /// Download run records and their artifacts from a remote: `pull [NAME] [PIPELINE.toml[:STAGE]]`.
    Pull(remote::SyncArgs),
    /// Maintenance commands for working on asymm itself.
    #[command(subcommand, hide = true)]
    Dev(dev::DevCmd),
}

/// Runs a command; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let cmd = match cli.cmd {
        Cmd::Bench(a) => return bench::bench(a),
        Cmd::Dev(d) => return dev::dev(d),
        cmd => cmd,
    };
    let store = asymm::store::Store::open(&cli.store)?;
    match cmd {
        Cmd::Bench(_) | Cmd::Dev(_) => unreachable!("handled above"),
        Cmd::Run(a) => run::run(&store, a),
        Cmd::RunStage(a) => run::run_stage(&store, a),
        Cmd::Status(a) => inspect::status(&store, a),
        Cmd::Dag(a) => inspect::dag(a),
        Cmd::Show(a) => inspect::show(&store, a),
        Cmd::Verify => store_cmds::verify(&store),
        Cmd::Gc(a) => store_cmds::gc(&store, a),
        Cmd::Tag(a) => store_cmds::tag(&store, a),
        Cmd::List => store_cmds::list(&store),
        Cmd::Bundle(b) => bundle::bundle(&store, b),
        Cmd::Remote(r) => remote::remote(&store, r),
        Cmd::Push(a) => remote::push(&store, a),
        Cmd::Pull(a) => remote::pull(&store, a),
    }
}

/// Resolves an artifact reference: a full id, a unique id prefix (6+ characters), or
/// `PIPELINE_FILE:INSTANCE[.OUTPUT]` (the instance's current cached output). For the latter,
/// `device` keys device-sensitive stages for that device; without it, their most recent result
/// on any device is used (see [`asymm::dag::Runner::any_device`]).
pub fn resolve_ref(
    store: &asymm::store::Store,
    r: &str,
    device: Option<&str>,
) -> anyhow::Result<String> {
    if let Some((file, inst)) = r.rsplit_once(':')
        && file.ends_with(".toml")
    {
        let reg = asymm::stages::StageRegistry::default();
        let p = asymm::dag::parse_pipeline(std::path::Path::new(file), &reg)?;
        let (inst, out) = asymm::dag::split_output(inst);
        let mut runner = match device {
            Some(d) => asymm::dag::Runner::new(store, &reg, d),
            None => asymm::dag::Runner::new(store, &reg, "cpu").any_device(),
        };
        let rows = runner.status(&p)?;
        let row = rows
            .iter()
            .find(|s| s.instance == inst)
            .ok_or_else(|| anyhow::anyhow!("no instance `{inst}` in {file}"))?;
        return row.outputs.get(out).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "`{inst}` has no cached output `{out}` (state: {})",
                row.state
            )
        });
    }
    if asymm::store::is_hex64(r) {
        return Ok(r.to_string());
    }
    if r.len() < 6 || !r.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!(
            "`{r}` is not an artifact id, a 6+ character id prefix, or PIPELINE.toml:STAGE"
        );
    }
    let hits: Vec<String> = store
        .list()?
        .into_iter()
        .filter(|id| id.starts_with(r))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no artifact id starts with `{r}`"),
        _ => anyhow::bail!("`{r}` is ambiguous ({} artifacts match)", hits.len()),
    }
}

/// First 12 characters of an id, for tables.
pub fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}
