//! Artifact schemas, one JSON file per kind in `schemas/` (embedded in the binary), and their
//! mapping to Arrow types. A mismatch on write or read is an error naming the column.

use super::{Result, TableError};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Fields, Schema as ArrowSchema};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Schema files shipped with the project.
const SCHEMA_FILES: &[(&str, &str)] = &[
    ("puzzles", include_str!("../../schemas/puzzles.json")),
    ("digits", include_str!("../../schemas/digits.json")),
    ("images", include_str!("../../schemas/images.json")),
    (
        "sft_targets",
        include_str!("../../schemas/sft_targets.json"),
    ),
    ("reasoning", include_str!("../../schemas/reasoning.json")),
    ("train_log", include_str!("../../schemas/train_log.json")),
    (
        "train_timing",
        include_str!("../../schemas/train_timing.json"),
    ),
    ("rollouts", include_str!("../../schemas/rollouts.json")),
    ("eval_items", include_str!("../../schemas/eval_items.json")),
    (
        "eval_summary",
        include_str!("../../schemas/eval_summary.json"),
    ),
    ("rewards", include_str!("../../schemas/rewards.json")),
    ("rl_eval", include_str!("../../schemas/rl_eval.json")),
    ("rl_samples", include_str!("../../schemas/rl_samples.json")),
    ("clip_log", include_str!("../../schemas/clip_log.json")),
    (
        "run_correlations",
        include_str!("../../schemas/run_correlations.json"),
    ),
    ("rl_log", include_str!("../../schemas/rl_log.json")),
    (
        "correlations",
        include_str!("../../schemas/correlations.json"),
    ),
    (
        "correlation_differences",
        include_str!("../../schemas/correlation_differences.json"),
    ),
    ("report", include_str!("../../schemas/report.json")),
];

/// A column type as written in schema files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ColType {
    #[serde(rename = "utf8")]
    Utf8,
    #[serde(rename = "bool")]
    Bool,
    #[serde(rename = "int32")]
    Int32,
    #[serde(rename = "int64")]
    Int64,
    #[serde(rename = "float32")]
    Float32,
    #[serde(rename = "float64")]
    Float64,
    #[serde(rename = "binary")]
    Binary,
    #[serde(rename = "list<int32>")]
    ListInt32,
    #[serde(rename = "list<utf8>")]
    ListUtf8,
    #[serde(rename = "list<float32>")]
    ListFloat32,
    /// HF-datasets image struct `{bytes: binary, path: utf8}`.
    #[serde(rename = "image")]
    Image,
}

impl ColType {
    /// The name used in schema files.
    pub fn name(self) -> &'static str {
        match self {
            ColType::Utf8 => "utf8",
            ColType::Bool => "bool",
            ColType::Int32 => "int32",
            ColType::Int64 => "int64",
            ColType::Float32 => "float32",
            ColType::Float64 => "float64",
            ColType::Binary => "binary",
            ColType::ListInt32 => "list<int32>",
            ColType::ListUtf8 => "list<utf8>",
            ColType::ListFloat32 => "list<float32>",
            ColType::Image => "image",
        }
    }

    /// The Hugging Face `datasets` feature of this type (`Features.from_dict` form).
    pub fn hf_feature(self) -> serde_json::Value {
        use serde_json::json;
        let value = |dtype: &str| json!({"dtype": dtype, "_type": "Value"});
        match self {
            ColType::Utf8 => value("string"),
            ColType::Bool => value("bool"),
            ColType::Int32 => value("int32"),
            ColType::Int64 => value("int64"),
            ColType::Float32 => value("float32"),
            ColType::Float64 => value("float64"),
            ColType::Binary => value("binary"),
            ColType::ListInt32 => json!({"feature": value("int32"), "_type": "Sequence"}),
            ColType::ListUtf8 => json!({"feature": value("string"), "_type": "Sequence"}),
            ColType::ListFloat32 => json!({"feature": value("float32"), "_type": "Sequence"}),
            ColType::Image => json!({"_type": "Image"}),
        }
    }

    pub fn arrow(self) -> DataType {
        match self {
            ColType::Utf8 => DataType::Utf8,
            ColType::Bool => DataType::Boolean,
            ColType::Int32 => DataType::Int32,
            ColType::Int64 => DataType::Int64,
            ColType::Float32 => DataType::Float32,
            ColType::Float64 => DataType::Float64,
            ColType::Binary => DataType::Binary,
            ColType::ListInt32 => {
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true)))
            }
            ColType::ListUtf8 => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            ColType::ListFloat32 => {
                DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
            }
            ColType::Image => DataType::Struct(Fields::from(vec![
                Field::new("bytes", DataType::Binary, true),
                Field::new("path", DataType::Utf8, true),
            ])),
        }
    }
}

/// One column of a schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColType,
    #[serde(default)]
    pub nullable: bool,
    #[serde(default)]
    pub doc: String,
}

/// The schema of one artifact kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub kind: String,
    pub version: u32,
    #[serde(default)]
    pub doc: String,
    pub columns: Vec<ColumnSpec>,
}

/// A schema file that does not describe its kind.
#[derive(Debug, thiserror::Error)]
enum SchemaFileError {
    #[error("schemas/{kind}.json: {source}")]
    Json {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("schemas/{kind}.json declares kind `{declared}`")]
    Kind {
        kind: &'static str,
        declared: String,
    },
}

fn registry() -> &'static std::result::Result<BTreeMap<String, Schema>, SchemaFileError> {
    static R: OnceLock<std::result::Result<BTreeMap<String, Schema>, SchemaFileError>> =
        OnceLock::new();
    R.get_or_init(|| {
        let mut m = BTreeMap::new();
        for &(kind, text) in SCHEMA_FILES {
            let s: Schema = serde_json::from_str(text)
                .map_err(|source| SchemaFileError::Json { kind, source })?;
            if s.kind != kind {
                return Err(SchemaFileError::Kind {
                    kind,
                    declared: s.kind,
                });
            }
            m.insert(kind.to_string(), s);
        }
        Ok(m)
    })
}

/// The schema of `kind`.
pub fn schema(kind: &str) -> Result<&'static Schema> {
    match registry() {
        Ok(m) => m
            .get(kind)
            .ok_or_else(|| TableError::UnknownKind(kind.to_string())),
        Err(e) => Err(TableError::BadSchema {
            kind: kind.to_string(),
            msg: e.to_string(),
        }),
    }
}

/// Every known tabular kind.
pub fn kinds() -> Vec<&'static str> {
    SCHEMA_FILES.iter().map(|(k, _)| *k).collect()
}

impl Schema {
    pub fn arrow_schema(&self) -> ArrowSchema {
        ArrowSchema::new(
            self.columns
                .iter()
                // Image columns are nullable at the Arrow level, as `datasets`' `Image` feature
                // is (it matches features to fields by type and nullability); the schema's own
                // `nullable` is still enforced when writing.
                .map(|c| Field::new(&c.name, c.ty.arrow(), c.nullable || c.ty == ColType::Image))
                .collect::<Vec<_>>(),
        )
    }

    /// The `huggingface` schema metadata that makes `datasets.load_dataset("parquet", …)` see
    /// image columns as `Image` features without a cast; `None` for kinds without images.
    pub fn hf_metadata(&self) -> Option<String> {
        if !self.columns.iter().any(|c| c.ty == ColType::Image) {
            return None;
        }
        let features: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty.hf_feature()))
            .collect();
        Some(serde_json::json!({"info": {"features": features}}).to_string())
    }

    fn col_err(&self, column: &str, msg: impl Into<String>) -> TableError {
        TableError::Column {
            kind: self.kind.clone(),
            column: column.to_string(),
            msg: msg.into(),
        }
    }

    /// Checks an Arrow schema (as read from a file) against this one.
    pub fn check(&self, got: &ArrowSchema) -> Result<()> {
        for (i, spec) in self.columns.iter().enumerate() {
            let Some(f) = got.fields().get(i) else {
                return Err(self.col_err(&spec.name, "missing"));
            };
            if f.name() != &spec.name {
                return Err(self.col_err(
                    &spec.name,
                    format!("expected at position {i}, found column `{}`", f.name()),
                ));
            }
            if !types_match(f.data_type(), &spec.ty.arrow()) {
                return Err(self.col_err(
                    &spec.name,
                    format!("expected type {}, found {}", spec.ty.name(), f.data_type()),
                ));
            }
        }
        if let Some(extra) = got.fields().get(self.columns.len()) {
            return Err(self.col_err(extra.name(), "not in the schema"));
        }
        Ok(())
    }

    /// Builds a record batch from columns given by name, in any order: each schema column must
    /// be given exactly once and no other, so columns are bound by name, never by position.
    pub fn batch_named(&self, columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
        let mut by_name: BTreeMap<&str, ArrayRef> = BTreeMap::new();
        for (name, col) in columns {
            if !self.columns.iter().any(|c| c.name == name) {
                return Err(self.col_err(name, "not in the schema"));
            }
            if by_name.insert(name, col).is_some() {
                return Err(self.col_err(name, "given twice"));
            }
        }
        let ordered = self
            .columns
            .iter()
            .map(|spec| {
                by_name
                    .remove(spec.name.as_str())
                    .ok_or_else(|| self.col_err(&spec.name, "missing"))
            })
            .collect::<Result<Vec<_>>>()?;
        self.batch(ordered)
    }

    /// Builds a record batch from columns in schema order, checking types and nulls.
    fn batch(&self, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
        if columns.len() != self.columns.len() {
            return Err(TableError::BadSchema {
                kind: self.kind.clone(),
                msg: format!(
                    "{} columns given, schema has {}",
                    columns.len(),
                    self.columns.len()
                ),
            });
        }
        for (spec, col) in self.columns.iter().zip(&columns) {
            if !types_match(col.data_type(), &spec.ty.arrow()) {
                return Err(self.col_err(
                    &spec.name,
                    format!("expected type {}, got {}", spec.ty.name(), col.data_type()),
                ));
            }
            if !spec.nullable && col.null_count() > 0 {
                return Err(self.col_err(&spec.name, "nulls in a non-nullable column"));
            }
        }
        Ok(RecordBatch::try_new(
            Arc::new(self.arrow_schema()),
            columns,
        )?)
    }
}

/// Type equality that ignores nested field nullability and names of list items.
pub(super) fn types_match(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => types_match(x.data_type(), y.data_type()),
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(f, g)| f.name() == g.name() && types_match(f.data_type(), g.data_type()))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::cols;

    #[test]
    fn all_schema_files_parse() {
        for k in kinds() {
            schema(k).unwrap();
        }
        assert!(schema("nope").is_err());
    }

    #[test]
    fn named_columns_bind_by_name() {
        let s = schema("train_timing").unwrap();
        let names: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["step", "seconds", "tokens", "tokens_per_sec"]);
        let cols = || {
            vec![
                ("tokens_per_sec", cols::f64(vec![2.0])),
                ("step", cols::i32(vec![1])),
                ("seconds", cols::f64(vec![0.5])),
                ("tokens", cols::i64(vec![1])),
            ]
        };
        let b = s.batch_named(cols()).unwrap();
        let secs = b
            .column_by_name("seconds")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap()
            .value(0);
        assert_eq!(secs, 0.5);
        let mut missing = cols();
        missing.pop();
        assert!(
            s.batch_named(missing)
                .unwrap_err()
                .to_string()
                .contains("`tokens`")
        );
        let mut extra = cols();
        extra.push(("speed", cols::f64(vec![1.0])));
        assert!(
            s.batch_named(extra)
                .unwrap_err()
                .to_string()
                .contains("`speed`")
        );
        let mut twice = cols();
        twice.push(("step", cols::i32(vec![1])));
        assert!(
            s.batch_named(twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn mismatch_names_the_column() {
        let s = schema("reasoning").unwrap();
        let err = s
            .batch(vec![cols::utf8(&["a"]), cols::i32(vec![1])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("column `reasoning`"), "{err}");
    }
}
