//! Tabular artifacts: Arrow record batches stored as Parquet with a pinned writer configuration
//! (so identical data gives identical bytes), validated against the schemas in `schemas/` both when
//! written and when read.

mod schema;

pub use schema::{ColType, ColumnSpec, Schema, kinds, schema};

use crate::store::{ArtifactWriter, Store, StoreError};
use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    ListArray, StringArray, StructArray,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

/// File name of the Parquet data inside a tabular artifact.
pub const DATA_FILE: &str = "data.parquet";

/// Errors of the table layer.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown artifact kind `{0}` (no schema in schemas/)")]
    UnknownKind(String),
    #[error("schema `{kind}`: {msg}")]
    BadSchema { kind: String, msg: String },
    #[error("`{kind}` column `{column}`: {msg}")]
    Column {
        kind: String,
        column: String,
        msg: String,
    },
    #[error("artifact {id} is of kind `{found}`, expected `{expected}`")]
    WrongKind {
        id: String,
        found: String,
        expected: String,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T> = std::result::Result<T, TableError>;

fn writer_properties(s: &Schema) -> WriterProperties {
    use parquet::file::metadata::KeyValue;
    let kv = vec![
        KeyValue::new("asymm.kind".into(), s.kind.clone()),
        KeyValue::new("asymm.schema_version".into(), s.version.to_string()),
    ];
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(4096))
        .set_created_by("asymm".to_string())
        .set_key_value_metadata(Some(kv))
        .build()
}

/// Validates `columns`, given by name in any order, against the schema of `kind` and writes
/// them as `data.parquet` into `w`. Returns the row count.
pub fn write(w: &mut ArtifactWriter, kind: &str, columns: Vec<(&str, ArrayRef)>) -> Result<u64> {
    let batch = schema(kind)?.batch_named(columns)?;
    write_batch(w, kind, batch)
}

/// [`write`], with the rows of `earlier` (a table of the same kind) first: a log that grows by
/// one artifact per step.
pub fn write_after(
    w: &mut ArtifactWriter,
    kind: &str,
    earlier: Option<&Table>,
    columns: Vec<(&str, ArrayRef)>,
) -> Result<u64> {
    let batch = schema(kind)?.batch_named(columns)?;
    let batch = match earlier {
        Some(t) => {
            if t.kind != kind {
                return Err(TableError::WrongKind {
                    id: "(earlier rows)".into(),
                    found: t.kind.clone(),
                    expected: kind.to_string(),
                });
            }
            arrow::compute::concat_batches(&batch.schema(), [&t.batch, &batch])?
        }
        None => batch,
    };
    write_batch(w, kind, batch)
}

fn write_batch(w: &mut ArtifactWriter, kind: &str, batch: RecordBatch) -> Result<u64> {
    let s = schema(kind)?;
    // The `huggingface` features travel in the Arrow schema's metadata, where `datasets` reads
    // them.
    let batch = match s.hf_metadata() {
        Some(hf) => {
            let meta = std::collections::HashMap::from([("huggingface".to_string(), hf)]);
            let schema = batch.schema().as_ref().clone().with_metadata(meta);
            batch.with_schema(Arc::new(schema))?
        }
        None => batch,
    };
    let mut f = w.create(DATA_FILE)?;
    {
        let mut aw = ArrowWriter::try_new(&mut f, batch.schema(), Some(writer_properties(s)))?;
        aw.write(&batch)?;
        aw.close()?;
    }
    w.finish(DATA_FILE, f)?;
    Ok(batch.num_rows() as u64)
}

/// A tabular artifact read back into memory.
#[derive(Debug, Clone)]
pub struct Table {
    pub kind: String,
    pub batch: RecordBatch,
}

impl Table {
    /// Reads artifact `id`, checking its kind and its columns against the schema.
    pub fn read(store: &Store, id: &str, kind: &str) -> Result<Table> {
        let m = store.manifest(id)?;
        if m.kind != kind {
            return Err(TableError::WrongKind {
                id: id.to_string(),
                found: m.kind,
                expected: kind.to_string(),
            });
        }
        let bytes = store.read_file(id, DATA_FILE)?;
        Self::from_parquet(bytes, kind)
    }

    /// Decodes Parquet bytes and validates them against `kind`'s schema.
    pub fn from_parquet(bytes: Vec<u8>, kind: &str) -> Result<Table> {
        let s = schema(kind)?;
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?.build()?;
        let arrow_schema = Arc::new(s.arrow_schema());
        let mut batches = Vec::new();
        for b in reader {
            let b = b?;
            s.check(b.schema().as_ref())?;
            batches.push(b);
        }
        let batch = arrow::compute::concat_batches(&arrow_schema, &batches)?;
        Ok(Table {
            kind: kind.to_string(),
            batch,
        })
    }

    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    fn col<T: 'static>(&self, name: &str) -> Result<&T> {
        let c = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| TableError::Column {
                kind: self.kind.clone(),
                column: name.to_string(),
                msg: "missing".into(),
            })?;
        c.as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| TableError::Column {
                kind: self.kind.clone(),
                column: name.to_string(),
                msg: format!("unexpected type {}", c.data_type()),
            })
    }

    pub fn utf8(&self, name: &str) -> Result<&StringArray> {
        self.col(name)
    }
    pub fn i32(&self, name: &str) -> Result<&Int32Array> {
        self.col(name)
    }
    pub fn i64(&self, name: &str) -> Result<&Int64Array> {
        self.col(name)
    }
    pub fn f32(&self, name: &str) -> Result<&Float32Array> {
        self.col(name)
    }
    pub fn f64(&self, name: &str) -> Result<&Float64Array> {
        self.col(name)
    }
    pub fn bool(&self, name: &str) -> Result<&BooleanArray> {
        self.col(name)
    }
    pub fn binary(&self, name: &str) -> Result<&BinaryArray> {
        self.col(name)
    }
    pub fn list(&self, name: &str) -> Result<&ListArray> {
        self.col(name)
    }

    /// Column of strings as owned values (nulls become `None`).
    pub fn strings(&self, name: &str) -> Result<Vec<Option<String>>> {
        let a = self.utf8(name)?;
        Ok((0..a.len())
            .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
            .collect())
    }

    /// Non-null strings; a null is an error naming the column.
    pub fn required_strings(&self, name: &str) -> Result<Vec<String>> {
        self.strings(name)?
            .into_iter()
            .map(|s| {
                s.ok_or_else(|| TableError::Column {
                    kind: self.kind.clone(),
                    column: name.to_string(),
                    msg: "unexpected null".into(),
                })
            })
            .collect()
    }

    /// A `list<int32>` column as vectors.
    pub fn int_lists(&self, name: &str) -> Result<Vec<Vec<i32>>> {
        let l = self.list(name)?;
        let mut out = Vec::with_capacity(l.len());
        for i in 0..l.len() {
            let v = l.value(i);
            let ints =
                v.as_any()
                    .downcast_ref::<Int32Array>()
                    .ok_or_else(|| TableError::Column {
                        kind: self.kind.clone(),
                        column: name.to_string(),
                        msg: "list items are not int32".into(),
                    })?;
            out.push(ints.values().to_vec());
        }
        Ok(out)
    }

    /// A `list<float32>` column as vectors.
    pub fn f32_lists(&self, name: &str) -> Result<Vec<Vec<f32>>> {
        let l = self.list(name)?;
        let mut out = Vec::with_capacity(l.len());
        for i in 0..l.len() {
            let v = l.value(i);
            let xs =
                v.as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or_else(|| TableError::Column {
                        kind: self.kind.clone(),
                        column: name.to_string(),
                        msg: "list items are not float32".into(),
                    })?;
            out.push(xs.values().to_vec());
        }
        Ok(out)
    }

    /// A `list<float32>` column as vectors (null rows become `None`; a null item is an error).
    pub fn float_lists(&self, name: &str) -> Result<Vec<Option<Vec<f32>>>> {
        let l = self.list(name)?;
        let err = |msg: &str| TableError::Column {
            kind: self.kind.clone(),
            column: name.to_string(),
            msg: msg.into(),
        };
        let mut out = Vec::with_capacity(l.len());
        for i in 0..l.len() {
            if l.is_null(i) {
                out.push(None);
                continue;
            }
            let v = l.value(i);
            let xs = v
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| err("list items are not float32"))?;
            if xs.null_count() > 0 {
                return Err(err("null list item"));
            }
            out.push(Some(xs.values().to_vec()));
        }
        Ok(out)
    }

    /// A `float32` column as values (nulls become `None`).
    pub fn floats(&self, name: &str) -> Result<Vec<Option<f32>>> {
        let a = self.f32(name)?;
        Ok((0..a.len())
            .map(|i| (!a.is_null(i)).then(|| a.value(i)))
            .collect())
    }

    /// A `list<utf8>` column as vectors.
    pub fn str_lists(&self, name: &str) -> Result<Vec<Vec<String>>> {
        let l = self.list(name)?;
        let mut out = Vec::with_capacity(l.len());
        for i in 0..l.len() {
            let v = l.value(i);
            let s = v
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| TableError::Column {
                    kind: self.kind.clone(),
                    column: name.to_string(),
                    msg: "list items are not strings".into(),
                })?;
            out.push((0..s.len()).map(|k| s.value(k).to_string()).collect());
        }
        Ok(out)
    }

    /// PNG bytes from an image struct column (`{bytes, path}`).
    pub fn image_bytes(&self, name: &str) -> Result<BinaryArray> {
        let s: &StructArray = self.col(name)?;
        let b = s
            .column_by_name("bytes")
            .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
            .ok_or_else(|| TableError::Column {
                kind: self.kind.clone(),
                column: name.to_string(),
                msg: "image struct has no binary `bytes` field".into(),
            })?;
        Ok(b.clone())
    }
}

/// JSON views of tables (`asymm show --format json`).
impl Table {
    /// The column names, in schema order.
    pub fn column_names(&self) -> Vec<String> {
        self.batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Row `i` as a JSON object over `columns` (all columns when empty). Strings, booleans and
    /// numbers are themselves, nulls and non-finite floats `null`, lists arrays; a binary cell
    /// is `{"len": bytes, "blake3": hex}` and a struct (such as an image) an object of its
    /// fields.
    pub fn row_json(
        &self,
        i: usize,
        columns: &[String],
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        let names = if columns.is_empty() {
            self.column_names()
        } else {
            columns.to_vec()
        };
        let mut row = serde_json::Map::new();
        for name in names {
            let col = self
                .batch
                .column_by_name(&name)
                .ok_or_else(|| TableError::Column {
                    kind: self.kind.clone(),
                    column: name.clone(),
                    msg: "missing".into(),
                })?;
            let v = cell_json(col.as_ref(), i).map_err(|e| TableError::Column {
                kind: self.kind.clone(),
                column: name.clone(),
                msg: e.to_string(),
            })?;
            row.insert(name, v);
        }
        Ok(row)
    }
}

/// Why a cell has no JSON form.
#[derive(Debug, thiserror::Error)]
enum CellError {
    #[error("unexpected array for type {0}")]
    Array(arrow::datatypes::DataType),
    #[error("row {row} out of range ({rows} rows)")]
    Row { row: usize, rows: usize },
    #[error("type {0} has no JSON form")]
    NoJson(arrow::datatypes::DataType),
}

fn downcast<T: 'static>(a: &dyn Array) -> std::result::Result<&T, CellError> {
    a.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| CellError::Array(a.data_type().clone()))
}

fn float_json(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// One cell as JSON (see [`Table::row_json`]).
fn cell_json(a: &dyn Array, i: usize) -> std::result::Result<serde_json::Value, CellError> {
    use arrow::datatypes::DataType;
    use serde_json::{Value, json};
    if i >= a.len() {
        return Err(CellError::Row {
            row: i,
            rows: a.len(),
        });
    }
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match a.data_type() {
        DataType::Utf8 => json!(downcast::<StringArray>(a)?.value(i)),
        DataType::Boolean => json!(downcast::<BooleanArray>(a)?.value(i)),
        DataType::Int32 => json!(downcast::<Int32Array>(a)?.value(i)),
        DataType::Int64 => json!(downcast::<Int64Array>(a)?.value(i)),
        DataType::Float32 => float_json(downcast::<Float32Array>(a)?.value(i) as f64),
        DataType::Float64 => float_json(downcast::<Float64Array>(a)?.value(i)),
        DataType::Binary => {
            let b = downcast::<BinaryArray>(a)?.value(i);
            json!({"len": b.len(), "blake3": blake3::hash(b).to_hex().to_string()})
        }
        DataType::List(_) => {
            let items = downcast::<ListArray>(a)?.value(i);
            Value::Array(
                (0..items.len())
                    .map(|k| cell_json(items.as_ref(), k))
                    .collect::<std::result::Result<_, _>>()?,
            )
        }
        DataType::Struct(fields) => {
            let s = downcast::<StructArray>(a)?;
            let mut m = serde_json::Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                m.insert(f.name().clone(), cell_json(c.as_ref(), i)?);
            }
            Value::Object(m)
        }
        other => return Err(CellError::NoJson(other.clone())),
    })
}

/// Column constructors.
pub mod cols {
    use super::*;
    use arrow::array::{ListBuilder, StringBuilder};
    use arrow::buffer::NullBuffer;
    use arrow::datatypes::{DataType, Field, Fields};

    pub fn utf8<S: AsRef<str>>(v: &[S]) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(v.iter().map(|s| s.as_ref())))
    }
    pub fn utf8_opt(v: &[Option<String>]) -> ArrayRef {
        Arc::new(v.iter().map(|s| s.as_deref()).collect::<StringArray>())
    }
    pub fn i32(v: Vec<i32>) -> ArrayRef {
        Arc::new(Int32Array::from(v))
    }
    pub fn i32_opt(v: Vec<Option<i32>>) -> ArrayRef {
        Arc::new(Int32Array::from(v))
    }
    pub fn i64(v: Vec<i64>) -> ArrayRef {
        Arc::new(Int64Array::from(v))
    }
    pub fn f32(v: Vec<f32>) -> ArrayRef {
        Arc::new(Float32Array::from(v))
    }
    pub fn f32_opt(v: Vec<Option<f32>>) -> ArrayRef {
        Arc::new(Float32Array::from(v))
    }
    pub fn f64(v: Vec<f64>) -> ArrayRef {
        Arc::new(Float64Array::from(v))
    }
    pub fn f64_opt(v: Vec<Option<f64>>) -> ArrayRef {
        Arc::new(Float64Array::from(v))
    }
    pub fn bool(v: Vec<bool>) -> ArrayRef {
        Arc::new(BooleanArray::from(v))
    }
    pub fn bool_opt(v: Vec<Option<bool>>) -> ArrayRef {
        Arc::new(BooleanArray::from(v))
    }
    pub fn binary(v: &[Vec<u8>]) -> ArrayRef {
        Arc::new(BinaryArray::from_iter_values(v.iter()))
    }
    pub fn list_i32(v: &[Vec<i32>]) -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<
            arrow::datatypes::Int32Type,
            _,
            _,
        >(v.iter().map(|x| Some(x.iter().map(|&y| Some(y))))))
    }
    pub fn list_f32(v: &[Vec<f32>]) -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<
            arrow::datatypes::Float32Type,
            _,
            _,
        >(v.iter().map(|x| Some(x.iter().map(|&y| Some(y))))))
    }
    /// A `list<float32>` column; `None` rows are null.
    pub fn list_f32_opt(v: &[Option<Vec<f32>>]) -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<
            arrow::datatypes::Float32Type,
            _,
            _,
        >(
            v.iter()
                .map(|row| row.as_ref().map(|xs| xs.iter().map(|&x| Some(x)))),
        ))
    }
    pub fn list_utf8(v: &[Vec<String>]) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for row in v {
            for s in row {
                b.values().append_value(s);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    }
    /// HF-datasets image struct: `{bytes: binary, path: string}`.
    pub fn image(pngs: &[Vec<u8>], paths: &[String]) -> ArrayRef {
        let fields = Fields::from(vec![
            Field::new("bytes", DataType::Binary, true),
            Field::new("path", DataType::Utf8, true),
        ]);
        Arc::new(StructArray::new(
            fields,
            vec![binary(pngs), utf8(paths)],
            None::<NullBuffer>,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Image artifacts carry the `huggingface` features metadata naming every column, with the
    /// image column as an `Image` feature; other kinds carry none.
    #[test]
    fn image_artifacts_carry_hf_features() {
        let dir = crate::util::fsx::TempDir::new("asymm-hf").unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = schema("images").unwrap();
        let mut w = store.writer("images", s.version).unwrap();
        let columns: Vec<(&str, ArrayRef)> = s
            .columns
            .iter()
            .map(|c| {
                let a: ArrayRef = match c.ty {
                    ColType::Image => cols::image(&[vec![1, 2]], &["x.png".to_string()]),
                    t => arrow::array::new_null_array(&t.arrow(), 1),
                };
                (c.name.as_str(), a)
            })
            .collect();
        // Nulls in non-nullable columns are refused; build those with values instead.
        let columns = columns
            .into_iter()
            .map(|(n, a)| {
                let spec = s.columns.iter().find(|c| c.name == n).unwrap();
                let a = if a.null_count() > 0 && !spec.nullable {
                    match spec.ty {
                        ColType::Utf8 => cols::utf8(&["a"]),
                        ColType::Int32 => cols::i32(vec![1]),
                        ColType::Float32 => cols::f32(vec![1.0]),
                        ColType::Float64 => cols::f64(vec![1.0]),
                        ColType::Bool => cols::bool(vec![true]),
                        ColType::Int64 => cols::i64(vec![1]),
                        _ => a,
                    }
                } else {
                    a
                };
                (n, a)
            })
            .collect();
        write(&mut w, "images", columns).unwrap();
        let id = w
            .commit(Some(1), Default::default(), serde_json::Value::Null)
            .unwrap();
        let bytes = store.read_file(&id, DATA_FILE).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        let hf = reader
            .schema()
            .metadata()
            .get("huggingface")
            .cloned()
            .expect("huggingface metadata");
        // `datasets` takes a feature only where its Arrow field equals the file's, nullability
        // included: the image field must be nullable.
        assert!(
            reader
                .schema()
                .field_with_name("image")
                .unwrap()
                .is_nullable()
        );
        let v: serde_json::Value = serde_json::from_str(&hf).unwrap();
        let features = v["info"]["features"].as_object().unwrap();
        assert_eq!(features.len(), s.columns.len());
        assert_eq!(features["image"]["_type"], "Image");
        assert_eq!(features["id"]["dtype"], "string");
        assert!(schema("rollouts").unwrap().hf_metadata().is_none());
    }

    #[test]
    fn rows_as_json() {
        let batch = RecordBatch::try_from_iter(vec![
            ("id", cols::utf8(&["a", "b"])),
            ("x", cols::f64_opt(vec![Some(0.25), None])),
            ("nan", cols::f64(vec![f64::NAN, 1.0])),
            ("l", cols::list_i32(&[vec![1, 2], vec![]])),
            (
                "img",
                cols::image(&[b"png".to_vec(), vec![]], &["p.png".into(), "q".into()]),
            ),
        ])
        .unwrap();
        let t = Table {
            kind: "test".into(),
            batch,
        };
        assert_eq!(t.column_names(), ["id", "x", "nan", "l", "img"]);
        let r0 = serde_json::Value::Object(t.row_json(0, &[]).unwrap());
        assert_eq!(
            r0,
            json!({
                "id": "a", "x": 0.25, "nan": null, "l": [1, 2],
                "img": {
                    "bytes": {"len": 3, "blake3": blake3::hash(b"png").to_hex().to_string()},
                    "path": "p.png"
                }
            })
        );
        let r1 = t.row_json(1, &["x".into(), "l".into()]).unwrap();
        assert_eq!(serde_json::Value::Object(r1), json!({"x": null, "l": []}));
        assert!(t.row_json(0, &["nope".into()]).is_err());
        assert!(t.row_json(2, &[]).is_err());
    }

    #[test]
    fn float_lists_round_trip_with_null_rows() {
        let rows = vec![Some(vec![1.5f32, 224.0]), None, Some(vec![])];
        let batch = RecordBatch::try_from_iter([
            ("xs", cols::list_f32_opt(&rows)),
            ("r", cols::f32_opt(vec![Some(2.5), None, Some(0.0)])),
        ])
        .unwrap();
        let t = Table {
            kind: "test".into(),
            batch,
        };
        assert_eq!(t.float_lists("xs").unwrap(), rows);
        assert_eq!(t.floats("r").unwrap(), vec![Some(2.5), None, Some(0.0)]);
        assert!(t.float_lists("r").is_err());
        assert!(schema::types_match(
            cols::list_f32_opt(&rows).data_type(),
            &ColType::ListFloat32.arrow()
        ));
    }
}
