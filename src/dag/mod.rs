//! The pipeline DAG: parse pipeline files, expand sweeps into stage instances, compute cache keys,
//! explain staleness, and run what is not cached.
//!
//! The DAG knows nothing of ML. Stages are opaque [`StageDef`]s found in a [`Registry`]; they
//! declare named, typed inputs and outputs, validate their own configs, and turn input artifact ids
//! into output artifact ids through the store.

mod externals;
mod key;
mod pipeline;
mod retention;
mod runner;
mod slurm;

pub use key::{KeyParts, Reason, explain};
pub use pipeline::{Instance, Pipeline, SEED, parse_pipeline, split_output};
pub use runner::{Outcome, RemoteUse, RunOptions, RunRow, Runner, StatusRow};
pub use slurm::{Executor, JobState, SlurmConfig, SlurmReport, SlurmRun, absolute};

use crate::store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One named input of a stage.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: &'static str,
    /// Artifact kind the input must have.
    pub kind: &'static str,
    pub optional: bool,
    /// A list of artifacts of this kind: the pipeline gives `name = ["a", "b.log", …]` (or one
    /// name), wired as inputs `name.0`, `name.1`, … (see [`RunCtx::inputs_many`]).
    pub many: bool,
}

/// One named output of a stage.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: &'static str,
    pub kind: &'static str,
}

/// Errors while loading or checking a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("stage `{stage}`: unknown stage type `{kind}` (known: {known})")]
    UnknownStage {
        stage: String,
        kind: String,
        known: String,
    },
    #[error(
        "stage `{stage}`: input `{input}` refers to `{target}`, which is not a stage of this pipeline"
    )]
    UnknownInput {
        stage: String,
        input: String,
        target: String,
    },
    #[error("stage `{stage}`: required input `{input}` (kind `{kind}`) is not connected")]
    MissingInput {
        stage: String,
        input: String,
        kind: String,
    },
    #[error("stage `{stage}`: it has no input named `{input}` (its inputs: {known})")]
    ExtraInput {
        stage: String,
        input: String,
        known: String,
    },
    #[error(
        "stage `{stage}`: input `{input}` expects kind `{expected}`, but `{target}` produces `{found}`"
    )]
    WrongKind {
        stage: String,
        input: String,
        target: String,
        expected: String,
        found: String,
    },
    #[error("stage `{stage}`: `{target}` has no output named `{output}`")]
    UnknownOutput {
        stage: String,
        target: String,
        output: String,
    },
    #[error("cycle through stages: {0}")]
    Cycle(String),
    #[error(
        "{}stage `{stage}`: bad config: {reason}",
        .at.as_ref().map(|p| format!("{p}: ")).unwrap_or_default()
    )]
    Config {
        stage: String,
        /// Where the bad key (or the stage's table) is written, when it is in the file.
        at: Option<Position>,
        reason: ConfigError,
    },
    #[error("stage `{stage}`: bad sweep: {msg}")]
    Sweep { stage: String, msg: String },
    #[error("no stage or instance named `{0}` in this pipeline")]
    NoSuchStage(String),
    #[error("`{stage}` needs `{upstream}`, which has not been computed (run without --only first)")]
    NotComputed { stage: String, upstream: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("executor: {0}")]
    Executor(String),
    #[error("stage `{stage}` failed")]
    StageFailed {
        stage: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("stage `{stage}` returned no artifact for its output `{output}`")]
    MissingOutput { stage: String, output: String },
}

/// Context handed to a running stage.
pub struct RunCtx<'a> {
    pub store: &'a Store,
    /// The instance name (`stage` or `stage[k=v]`).
    pub instance: String,
    /// Validated, canonical config.
    pub config: serde_json::Value,
    /// Input name → artifact id.
    pub inputs: BTreeMap<String, String>,
    /// Input name → the instance that produced it (for labels only: not part of the key, and
    /// an artifact two instances produced alike carries the first one's manifest).
    pub sources: BTreeMap<String, String>,
    pub seed: u64,
    /// Compute device requested on the command line (`cpu`, `cuda:0`).
    pub device: String,
    /// Producer description recorded in every output manifest.
    pub producer: serde_json::Value,
    pub(crate) fault: Option<String>,
    /// The cache key being computed.
    pub key: String,
}

impl RunCtx<'_> {
    /// The artifact id of input `name`.
    pub fn input(&self, name: &str) -> Option<&str> {
        self.inputs.get(name).map(String::as_str)
    }

    /// The artifacts of a list input `name`, in the pipeline's order, each with the instance
    /// that produced it.
    pub fn inputs_many(&self, name: &str) -> Vec<(&str, &str)> {
        let mut v: Vec<(usize, &str, &str)> = self
            .inputs
            .iter()
            .filter_map(|(k, id)| {
                let index = if k == name {
                    Some(0)
                } else {
                    k.strip_prefix(name)
                        .and_then(|r| r.strip_prefix('.'))
                        .and_then(|i| i.parse().ok())
                };
                let source = self.sources.get(k).map_or("", String::as_str);
                index.map(|i| (i, id.as_str(), source))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, id, source)| (id, source)).collect()
    }

    /// A scratch directory private to this key that survives a crash (for resumable stages);
    /// removed by the runner once the result is published.
    pub fn scratch(&self) -> std::path::PathBuf {
        self.store.root().join("scratch").join(&self.key)
    }

    /// Test hook: aborts the process when `ASYMM_FAULT` names this stage and `point`.
    pub fn fault_point(&self, point: &str) {
        if self.fault.as_deref() == Some(point) {
            std::process::abort();
        }
    }

    /// Commits an artifact written by this stage, recording lineage and producer.
    pub fn commit(
        &self,
        writer: crate::store::ArtifactWriter,
        rows: Option<u64>,
    ) -> crate::store::Result<String> {
        if self.fault.as_deref() == Some("before-commit") {
            // Test hook: die with staged files on disk and nothing published.
            std::process::abort();
        }
        writer.commit(rows, self.inputs.clone(), self.producer.clone())
    }
}

/// A stage run's outputs: output name → artifact id.
pub type Outputs = BTreeMap<String, String>;

/// A stage type the DAG can schedule.
pub trait StageDef: Send + Sync {
    fn name(&self) -> &'static str;
    /// Bumped whenever the output for the same inputs and config would change.
    fn version(&self) -> u32;
    fn inputs(&self) -> Vec<InputSpec>;
    fn outputs(&self) -> Vec<OutputSpec>;
    /// Validates a config table and returns its canonical form with defaults filled in.
    fn config(&self, table: &toml::Table) -> Result<serde_json::Value, ConfigError>;
    /// Files outside the store that the output depends on (fingerprinted into the key).
    fn external_files(&self, _config: &serde_json::Value) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Whether the compute device is part of the key (results differ across devices).
    fn uses_device(&self) -> bool {
        false
    }
    /// Runs the stage; returns output name → artifact id.
    fn run(&self, ctx: &RunCtx) -> Result<Outputs, Box<dyn std::error::Error + Send + Sync>>;
}

/// A composite's expansion: ordinary declarations, each a name and its `[stages.<name>]` table
/// (with its own `stage` and `inputs`), or why the composite's table is wrong.
pub type Expansion = Result<Vec<(String, toml::Table)>, ConfigError>;

/// Why a stage's (or a composite's) settings table is wrong, naming the key where it is known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("at `{key}`: {reason}")]
    At { key: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for ConfigError {
    fn from(reason: String) -> Self {
        ConfigError::Invalid(reason)
    }
}

impl From<&str> for ConfigError {
    fn from(reason: &str) -> Self {
        ConfigError::Invalid(reason.to_string())
    }
}

/// A place in a pipeline file: 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Where the DAG finds stage types by name.
pub trait Registry {
    fn get(&self, name: &str) -> Option<&dyn StageDef>;
    fn names(&self) -> Vec<&'static str>;
    /// Composite stage types: a declaration `[stages.<name>]` of such a type stands for several
    /// ordinary declarations, which it expands into before the graph is built. `None` for an
    /// ordinary type. The DAG knows nothing of what a composite means.
    fn expand(&self, _kind: &str, _name: &str, _table: &toml::Table) -> Option<Expansion> {
        None
    }
    /// The composite types' names (for messages).
    fn composites(&self) -> Vec<&'static str> {
        Vec::new()
    }
}
