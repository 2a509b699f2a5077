//! Pipeline stages. Each stage is one module with a typed config (unknown keys are errors naming
//! them), a code `VERSION` bumped whenever its output for the same inputs would change, the inputs
//! it reads and outputs it writes, and a `run` from input artifacts to output artifacts.

pub mod digits;
pub mod distill_format;
pub mod evaluate;
pub mod import_reasoning;
pub mod model_io;
pub mod render;
pub mod rollout;
pub mod sft_train;
pub mod synthesize;
pub mod versions;

use crate::dag::{InputSpec, OutputSpec, Registry, RunCtx, StageDef};
use crate::store::StoreError;
use crate::table::TableError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
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
    #[error("{0}")]
    Invalid(String),
    #[error("i/o error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Outputs = BTreeMap<String, String>;

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

/// The artifact id of a required input (the runner checks required inputs are wired, so a
/// missing one is a bug in the stage's input list, reported rather than read as empty).
pub fn required_input<'a>(ctx: &'a RunCtx, name: &str) -> Result<&'a str, StageError> {
    ctx.input(name)
        .ok_or_else(|| StageError::Invalid(format!("input `{name}` is not wired")))
}

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

/// Shorthand for an input spec.
pub fn input(name: &'static str, kind: &'static str) -> InputSpec {
    InputSpec {
        name,
        kind,
        optional: false,
    }
}

/// Shorthand for an optional input spec.
pub fn optional(name: &'static str, kind: &'static str) -> InputSpec {
    InputSpec {
        name,
        kind,
        optional: true,
    }
}

/// Shorthand for the single `main` output.
pub fn main_output(kind: &'static str) -> Vec<OutputSpec> {
    vec![OutputSpec { name: "main", kind }]
}

/// One output map entry.
pub fn outputs(pairs: &[(&str, String)]) -> Outputs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

struct Adapter<S>(PhantomData<S>);

fn parse_config<C: DeserializeOwned>(table: &toml::Table) -> Result<C, String> {
    // Round-trip through TOML text so errors carry key names and positions.
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    toml::from_str(&text).map_err(|e| e.to_string().trim().replace('\n', " "))
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
    fn config(&self, table: &toml::Table) -> Result<serde_json::Value, String> {
        let cfg: S::Config = parse_config(table)?;
        let v = serde_json::to_value(&cfg).map_err(|e| e.to_string())?;
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
}
