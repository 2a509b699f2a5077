//! import-reasoning: bring externally produced reasoning (a Parquet file with string columns `id`
//! and `reasoning`) into the store, so distill-format can use it in place of the programmatic
//! teacher. The file's content is fingerprinted into the cache key.

use super::{Outputs, Stage, StageError, output, outputs, write_table};
use crate::dag::{InputSpec, OutputSpec, RunCtx};
use crate::table::cols;
use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportReasoningConfig {
    /// Path of the Parquet file.
    pub path: String,
}

pub struct ImportReasoning;

fn string_column(
    batch: &arrow::record_batch::RecordBatch,
    name: &str,
    path: &str,
) -> Result<StringArray, StageError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| StageError::Invalid(format!("{path}: no column `{name}`")))?;
    let cast = arrow::compute::cast(col, &DataType::Utf8)
        .map_err(|e| StageError::Invalid(format!("{path}: column `{name}` is not text: {e}")))?;
    cast.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| StageError::Invalid(format!("{path}: column `{name}` is not text")))
}

const MAIN: OutputSpec = output("main", "reasoning");

impl Stage for ImportReasoning {
    const NAME: &'static str = "import-reasoning";
    const VERSION: u32 = 1;
    type Config = ImportReasoningConfig;

    fn inputs() -> Vec<InputSpec> {
        vec![]
    }
    fn outputs() -> Vec<OutputSpec> {
        vec![MAIN]
    }
    fn external_files(cfg: &ImportReasoningConfig) -> Vec<PathBuf> {
        vec![PathBuf::from(&cfg.path)]
    }

    fn run(cfg: &ImportReasoningConfig, ctx: &RunCtx) -> Result<Outputs, StageError> {
        let bytes = std::fs::read(&cfg.path).map_err(|source| StageError::Io {
            path: PathBuf::from(&cfg.path),
            source,
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .and_then(|b| b.build())
            .map_err(|e| StageError::Invalid(format!("{}: not a Parquet file: {e}", cfg.path)))?;
        let (mut ids, mut texts) = (Vec::new(), Vec::new());
        for batch in reader {
            let batch = batch.map_err(|e| StageError::Invalid(format!("{}: {e}", cfg.path)))?;
            let id = string_column(&batch, "id", &cfg.path)?;
            let r = string_column(&batch, "reasoning", &cfg.path)?;
            for i in 0..batch.num_rows() {
                if id.is_null(i) || r.is_null(i) {
                    return Err(StageError::Invalid(format!(
                        "{}: row {i} has a null",
                        cfg.path
                    )));
                }
                ids.push(id.value(i).to_string());
                texts.push(r.value(i).to_string());
            }
        }
        Ok(outputs([write_table(
            ctx,
            &MAIN,
            vec![("id", cols::utf8(&ids)), ("reasoning", cols::utf8(&texts))],
        )?]))
    }
}
