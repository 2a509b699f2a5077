//! Pipeline stages. Each stage is one module with a typed config (unknown keys are errors naming
//! them), a code `VERSION` bumped whenever its output for the same inputs would change, the inputs
//! it reads and outputs it writes, and a `run` from input artifacts to output artifacts.

pub mod artifacts;
pub mod clip_train;
pub mod correlate;
pub mod digits;
pub mod distill_format;
pub mod evaluate;
pub mod grpo_loop;
pub mod grpo_update;
pub mod import_reasoning;
pub mod model_io;
pub mod reach;
pub mod render;
pub mod report;
pub mod reward_score;
pub mod rollout;
pub mod sft_train;
pub mod synthesize;
pub mod versions;

use crate::dag::{ConfigError, InputSpec, OutputSpec, Registry, RunCtx, StageDef};
use crate::store::StoreError;
use crate::table::{self, Table, TableError};
use arrow::array::ArrayRef;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::path::PathBuf;

/// Errors raised inside stages.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Train(#[from] crate::train::sft::TrainError),
    #[error(transparent)]
    Clip(#[from] crate::clip::train::ClipError),
    #[error(transparent)]
    Rl(#[from] crate::rl::RlError),
    #[error(transparent)]
    Render(#[from] crate::render::puzzle::RenderError),
    #[error(transparent)]
    Generate(#[from] crate::tasks::generate::GenerateError),
    #[error("{0}")]
    Invalid(String),
    #[error("i/o error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
pub use crate::dag::Outputs;

/// Returns early with a [`StageError::Invalid`] built from a format string.
#[macro_export]
macro_rules! stage_bail {
    ($($arg:tt)*) => {
        return Err($crate::stages::StageError::Invalid(format!($($arg)*)))
    };
}
pub use stage_bail as bail;

/// Returns early with a [`StageError::Invalid`] unless the condition holds.
#[macro_export]
macro_rules! stage_ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::stages::bail!($($arg)*);
        }
    };
}
pub use stage_ensure as ensure;

/// A pipeline stage with a typed config.
pub trait Stage: Send + Sync + 'static {
    const NAME: &'static str;
    const VERSION: u32;
    /// Whether the compute device is part of the cache key.
    const USES_DEVICE: bool = false;
    type Config: Serialize + DeserializeOwned + Default;
    fn inputs() -> Vec<InputSpec>;
    fn outputs() -> Vec<OutputSpec>;
    fn external_files(_cfg: &Self::Config) -> Vec<PathBuf> {
        Vec::new()
    }
    fn run(cfg: &Self::Config, ctx: &RunCtx) -> Result<Outputs, StageError>;
}

/// A stored artifact's content id, as stages hand artifacts around.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactId(String);

impl ArtifactId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Declares a required input; stages name each input's kind once, in a constant:
/// `const DATA: InputSpec = input("data", "sft_targets");`.
pub const fn input(name: &'static str, kind: &'static str) -> InputSpec {
    InputSpec {
        name,
        kind,
        optional: false,
        many: false,
    }
}

/// Declares an optional input.
pub const fn optional(name: &'static str, kind: &'static str) -> InputSpec {
    InputSpec {
        name,
        kind,
        optional: true,
        many: false,
    }
}

/// Declares a list input (`name = ["a", "b"]` in the pipeline; possibly empty).
pub const fn many(name: &'static str, kind: &'static str) -> InputSpec {
    InputSpec {
        name,
        kind,
        optional: true,
        many: true,
    }
}

/// Reads every table of a list input, in the pipeline's order, with the instance that
/// produced it.
pub fn read_many(ctx: &RunCtx, spec: &InputSpec) -> Result<Vec<(String, Table)>, StageError> {
    ctx.inputs_many(spec.name)
        .into_iter()
        .map(|(id, source)| Ok((source.to_string(), Table::read(ctx.store, id, spec.kind)?)))
        .collect()
}

/// Declares an output: `const MAIN: OutputSpec = output("main", "rollouts");`.
pub const fn output(name: &'static str, kind: &'static str) -> OutputSpec {
    OutputSpec { name, kind }
}

/// The artifact of a required input (the runner wires every required input, so a missing one
/// is a mistake in the stage's declarations, reported rather than read as empty).
pub fn input_id(ctx: &RunCtx, spec: &InputSpec) -> Result<ArtifactId, StageError> {
    optional_id(ctx, spec)
        .ok_or_else(|| StageError::Invalid(format!("input `{}` is not wired", spec.name)))
}

/// The artifact of an optional input, if wired.
pub fn optional_id(ctx: &RunCtx, spec: &InputSpec) -> Option<ArtifactId> {
    ctx.input(spec.name).map(|id| ArtifactId(id.to_string()))
}

/// Reads a required tabular input, checking it has the declared kind.
pub fn read_input(ctx: &RunCtx, spec: &InputSpec) -> Result<Table, StageError> {
    Ok(Table::read(
        ctx.store,
        input_id(ctx, spec)?.as_str(),
        spec.kind,
    )?)
}

/// Reads an optional tabular input, if wired.
pub fn read_optional(ctx: &RunCtx, spec: &InputSpec) -> Result<Option<Table>, StageError> {
    match optional_id(ctx, spec) {
        Some(id) => Ok(Some(Table::read(ctx.store, id.as_str(), spec.kind)?)),
        None => Ok(None),
    }
}

/// The artifact written for one declared output.
#[derive(Debug, Clone)]
pub struct Written {
    name: &'static str,
    pub id: ArtifactId,
}

impl Written {
    /// An artifact committed by other means (a directory artifact) for output `out`.
    pub fn new(out: &OutputSpec, id: String) -> Written {
        Written {
            name: out.name,
            id: ArtifactId(id),
        }
    }
}

/// Writes the table for output `out`: the kind comes from the declaration, the columns are
/// bound to the schema by name, and the artifact is committed with this stage's lineage.
pub fn write_table(
    ctx: &RunCtx,
    out: &OutputSpec,
    columns: Vec<(&str, ArrayRef)>,
) -> Result<Written, StageError> {
    write_table_with_files(ctx, out, columns, &[])
}

/// [`write_table`], with the rows of `earlier` (the same kind, e.g. the previous step's log)
/// before the new ones.
pub fn write_table_after(
    ctx: &RunCtx,
    out: &OutputSpec,
    earlier: Option<&Table>,
    columns: Vec<(&str, ArrayRef)>,
) -> Result<Written, StageError> {
    let schema = table::schema(out.kind)?;
    let mut w = ctx.store.writer(out.kind, schema.version)?;
    let rows = table::write_after(&mut w, out.kind, earlier, columns)?;
    Ok(Written::new(out, ctx.commit(w, Some(rows))?))
}

/// [`write_table`], with further files stored beside the table in the same artifact.
pub fn write_table_with_files(
    ctx: &RunCtx,
    out: &OutputSpec,
    columns: Vec<(&str, ArrayRef)>,
    files: &[(&str, &[u8])],
) -> Result<Written, StageError> {
    let schema = table::schema(out.kind)?;
    let mut w = ctx.store.writer(out.kind, schema.version)?;
    let rows = table::write(&mut w, out.kind, columns)?;
    for (name, bytes) in files {
        w.add_bytes(name, bytes)?;
    }
    Ok(Written::new(out, ctx.commit(w, Some(rows))?))
}

/// The output map of a run.
pub fn outputs(written: impl IntoIterator<Item = Written>) -> Outputs {
    written
        .into_iter()
        .map(|w| (w.name.to_string(), w.id.0))
        .collect()
}

struct Adapter<S>(PhantomData<S>);

fn parse_config<C: DeserializeOwned>(table: &toml::Table) -> Result<C, ConfigError> {
    // Round-trip through TOML text so that an error points into it; the position is turned
    // into the dotted key (the text's lines are not the user's file's).
    let text = toml::to_string(table).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    toml::from_str(&text).map_err(|e| {
        let reason = e.message().trim().replace('\n', " ");
        match e.span().and_then(|s| key_at(&text, s.start)) {
            Some(key) => ConfigError::At { key, reason },
            None => ConfigError::Invalid(reason),
        }
    })
}

/// The dotted key of the line holding byte `offset` of serialized TOML `text`: its `[table]`
/// header (if any) and the key before its `=`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?.trim();
    let header = |l: &str| {
        l.strip_prefix('[')
            .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    };
    if let Some(h) = header(line) {
        return Some(h);
    }
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    let table = text[..start].lines().rev().find_map(|l| header(l.trim()));
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

impl<S: Stage> StageDef for Adapter<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn inputs(&self) -> Vec<InputSpec> {
        S::inputs()
    }
    fn outputs(&self) -> Vec<OutputSpec> {
        S::outputs()
    }
    fn config(&self, table: &toml::Table) -> Result<serde_json::Value, ConfigError> {
        let cfg: S::Config = parse_config(table)?;
        let v = serde_json::to_value(&cfg).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(crate::util::canon::canonicalize(&v))
    }
    fn external_files(&self, config: &serde_json::Value) -> Vec<PathBuf> {
        serde_json::from_value::<S::Config>(config.clone())
            .map(|c| S::external_files(&c))
            .unwrap_or_default()
    }
    fn uses_device(&self) -> bool {
        S::USES_DEVICE
    }
    fn run(&self, ctx: &RunCtx) -> Result<Outputs, Box<dyn std::error::Error + Send + Sync>> {
        let cfg: S::Config = serde_json::from_value(ctx.config.clone())
            .map_err(|e| StageError::Invalid(format!("config: {e}")))?;
        Ok(S::run(&cfg, ctx)?)
    }
}

/// All built-in stages.
pub struct StageRegistry {
    stages: Vec<Box<dyn StageDef>>,
}

impl Default for StageRegistry {
    fn default() -> Self {
        fn b<S: Stage>() -> Box<dyn StageDef> {
            Box::new(Adapter::<S>(PhantomData))
        }
        StageRegistry {
            stages: vec![
                b::<synthesize::Synthesize>(),
                b::<digits::Digits>(),
                b::<render::Render>(),
                b::<import_reasoning::ImportReasoning>(),
                b::<distill_format::DistillFormat>(),
                b::<sft_train::SftTrain>(),
                b::<rollout::Rollout>(),
                b::<evaluate::Evaluate>(),
                b::<reward_score::RewardScore>(),
                b::<grpo_update::GrpoUpdate>(),
                b::<correlate::Correlate>(),
                b::<clip_train::ClipTrain>(),
                b::<report::Report>(),
            ],
        }
    }
}

impl Registry for StageRegistry {
    fn get(&self, name: &str) -> Option<&dyn StageDef> {
        self.stages
            .iter()
            .find(|s| s.name() == name)
            .map(|b| b.as_ref())
    }
    fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
    fn expand(&self, kind: &str, name: &str, table: &toml::Table) -> Option<crate::dag::Expansion> {
        (kind == grpo_loop::KIND).then(|| grpo_loop::expand(name, table))
    }
    fn composites(&self) -> Vec<&'static str> {
        vec![grpo_loop::KIND]
    }
}
