//! `asymm remote add|list|remove`, `asymm push`, `asymm pull`: share results through an
//! S3-compatible store (see `asymm::store::Remote`).

use super::{Format, print_json};
use asymm::dag::{Outcome, RemoteUse, RunOptions, Runner, parse_pipeline, split_output};
use asymm::stages::StageRegistry;
use asymm::store::{Remote, RemoteSpec, Store, SyncReport};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum RemoteCmd {
    /// Add (or replace) a remote: `asymm remote add team s3://bucket/prefix`.
    Add {
        name: String,
        /// `s3://bucket[/prefix]`.
        url: String,
        /// An S3-compatible endpoint (MinIO, SeaweedFS, R2…); AWS when absent.
        #[arg(long)]
        endpoint: Option<String>,
        /// The region (default: AWS_REGION, else us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// A profile of ~/.aws/credentials, used when AWS_ACCESS_KEY_ID is not set.
        #[arg(long)]
        profile: Option<String>,
        /// Make it the remote `push` and `pull` use when none is named.
        #[arg(long)]
        default: bool,
    },
    /// List the remotes.
    List,
    /// Forget a remote (nothing on it is deleted).
    Remove { name: String },
}

/// `push` / `pull` arguments: `[NAME] [PIPELINE.toml[:STAGE]]`, either or both.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// A remote name and/or a pipeline (`PIPELINE.toml`, or `PIPELINE.toml:STAGE` for a stage
    /// and everything upstream of it). Without a pipeline: every run record (the store's for a
    /// push, the remote's for a pull).
    #[arg(num_args = 0..=2)]
    pub targets: Vec<String>,
    /// Device whose results a pipeline names for device-sensitive stages (default for push:
    /// whatever device computed them; for pull: cpu).
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// A pipeline file and, optionally, one of its stages.
type PipelineRef<'a> = (&'a str, Option<&'a str>);

impl SyncArgs {
    /// (remote name, pipeline file and stage) from the positional targets.
    fn split(&self) -> anyhow::Result<(Option<&str>, Option<PipelineRef<'_>>)> {
        let (mut name, mut pipeline) = (None, None);
        for t in &self.targets {
            let is_pipeline = t.ends_with(".toml") || t.contains(".toml:");
            match (is_pipeline, name.is_some(), pipeline.is_some()) {
                (true, _, false) => {
                    pipeline = Some(match t.rsplit_once(':') {
                        Some((file, stage)) if file.ends_with(".toml") => (file, Some(stage)),
                        _ => (t.as_str(), None),
                    })
                }
                (false, false, _) => name = Some(t.as_str()),
                _ => anyhow::bail!(
                    "expected at most one remote name and one PIPELINE.toml[:STAGE], got {:?}",
                    self.targets
                ),
            }
        }
        Ok((name, pipeline))
    }
}

pub fn remote(store: &Store, cmd: RemoteCmd) -> anyhow::Result<i32> {
    match cmd {
        RemoteCmd::Add {
            name,
            url,
            endpoint,
            region,
            profile,
            default,
        } => {
            let spec = RemoteSpec {
                url,
                endpoint,
                region,
                profile,
            };
            store.add_remote(&name, spec, default)?;
            println!("remote `{name}` added");
        }
        RemoteCmd::List => {
            let all = store.remotes()?;
            for (name, spec) in &all.remotes {
                let mark = if all.default.as_deref() == Some(name) {
                    " (default)"
                } else {
                    ""
                };
                let at = spec
                    .endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default();
                println!("{name}\t{}{at}{mark}", spec.url);
            }
        }
        RemoteCmd::Remove { name } => {
            store.remove_remote(&name)?;
            println!("remote `{name}` removed");
        }
    }
    Ok(0)
}

/// Opens the remote `name` (or the store's default one).
pub fn open_remote(store: &Store, name: Option<&str>) -> anyhow::Result<Remote> {
    let (name, spec) = store.remotes()?.pick(name)?;
    Ok(Remote::open(&name, &spec)?)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn report_json(
    verb: &str,
    remote: &Remote,
    r: &SyncReport,
    missing: &[String],
) -> serde_json::Value {
    json!({
        "action": verb,
        "remote": remote.name(),
        "url": remote.url(),
        "records": r.records,
        "records_present": r.records_present,
        "artifacts": r.artifacts,
        "files": r.files,
        "bytes": r.bytes,
        "tombstones": r.tombstones,
        "missing": missing,
    })
}

/// Run-record keys of a pipeline's cached results (a stage and its ancestors with `STAGE`).
fn pipeline_keys(
    store: &Store,
    file: &str,
    stage: Option<&str>,
    device: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(std::path::Path::new(file), &reg)?;
    let mut runner = match device {
        Some(d) => Runner::new(store, &reg, d),
        None => Runner::new(store, &reg, "cpu").any_device(),
    };
    let rows = runner.run(&p, &select(stage))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.outcome == Outcome::Cached)
        .filter_map(|r| r.key)
        .collect())
}

fn select(stage: Option<&str>) -> RunOptions {
    RunOptions {
        until: stage
            .map(|s| vec![split_output(s).0.to_string()])
            .unwrap_or_default(),
        dry_run: true,
        ..RunOptions::default()
    }
}

pub fn push(store: &Store, a: SyncArgs) -> anyhow::Result<i32> {
    let (name, pipeline) = a.split()?;
    let remote = open_remote(store, name)?;
    let keys = match pipeline {
        Some((file, stage)) => pipeline_keys(store, file, stage, a.device.as_deref())?,
        None => {
            let mut keys = Vec::new();
            for k in store.record_keys()? {
                if store.record(&k)?.is_some() {
                    keys.push(k);
                }
            }
            keys
        }
    };
    let r = remote.push(store, &keys)?;
    if a.format == Format::Json {
        print_json(&report_json("push", &remote, &r, &[]))?;
    } else {
        println!(
            "pushed {} artifacts ({} files, {}) and {} run records to `{}` ({} records already there)",
            r.artifacts,
            r.files,
            mb(r.bytes),
            r.records,
            remote.name(),
            r.records_present
        );
    }
    Ok(0)
}

pub fn pull(store: &Store, a: SyncArgs) -> anyhow::Result<i32> {
    let (name, pipeline) = a.split()?;
    let remote = open_remote(store, name)?;
    let (r, missing) = match pipeline {
        None => {
            let keys = remote.record_keys()?;
            (remote.pull(store, &keys)?, Vec::new())
        }
        Some((file, stage)) => {
            // The pipeline's keys depend on upstream results, so they are found stage by stage:
            // the planner looks each result up here, then on the remote.
            let reg = StageRegistry::default();
            let p = parse_pipeline(std::path::Path::new(file), &reg)?;
            let mut runner = Runner::new(store, &reg, a.device.as_deref().unwrap_or("cpu"))
                .with_remote(RemoteUse {
                    remote: &remote,
                    pull: true,
                    push: false,
                });
            let rows = runner.run(&p, &select(stage))?;
            let missing: Vec<String> = rows
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::WouldRun(_)))
                .map(|r| r.instance.clone())
                .collect();
            let mut r = runner.pulled().clone();
            let found = rows.iter().filter(|r| r.outcome == Outcome::Cached).count();
            r.records_present = found.saturating_sub(r.records);
            (r, missing)
        }
    };
    if a.format == Format::Json {
        print_json(&report_json("pull", &remote, &r, &missing))?;
    } else {
        println!(
            "pulled {} run records and {} artifacts ({} files, {}) from `{}` ({} records already here)",
            r.records,
            r.artifacts,
            r.files,
            mb(r.bytes),
            remote.name(),
            r.records_present
        );
        if !missing.is_empty() {
            println!(
                "not on the remote (run them, or pull after they are pushed): {}",
                missing.join(", ")
            );
        }
    }
    Ok(0)
}
