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

fn registry() -> &'static std::result::Result<BTreeMap<String, Schema>, String> {
    static R: OnceLock<std::result::Result<BTreeMap<String, Schema>, String>> = OnceLock::new();
    R.get_or_init(|| {
        let mut m = BTreeMap::new();
        for (kind, text) in SCHEMA_FILES {
            let s: Schema =
                serde_json::from_str(text).map_err(|e| format!("schemas/{kind}.json: {e}"))?;
            if s.kind != *kind {
                return Err(format!("schemas/{kind}.json declares kind `{}`", s.kind));
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
        Err(msg) => Err(TableError::BadSchema {
            kind: kind.to_string(),
            msg: msg.clone(),
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
                .map(|c| Field::new(&c.name, c.ty.arrow(), c.nullable))
                .collect::<Vec<_>>(),
        )
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

    /// Builds a record batch from columns in schema order, checking types and nulls.
    pub fn batch(&self, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
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
    fn mismatch_names_the_column() {
        let s = schema("reasoning").unwrap();
        let err = s
            .batch(vec![cols::utf8(&["a"]), cols::i32(vec![1])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("column `reasoning`"), "{err}");
    }
}
