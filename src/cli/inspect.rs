//! `asymm status`, `asymm dag` and `asymm show`: read-only views of pipelines and artifacts.
//!
//! With `--format json` each prints one JSON document on stdout (field names are stable; see
//! each function) and nothing else there.

use super::{Format, print_json, resolve_ref, short};
use asymm::dag::{Runner, parse_pipeline};
use asymm::stages::StageRegistry;
use asymm::store::Store;
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PipelineArg {
    /// Pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Compute device the pipeline would run on (part of model stages' keys).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct DagArgs {
    /// Pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Print Graphviz DOT instead of text.
    #[arg(long, conflicts_with = "format")]
    pub dot: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Artifact id, unique id prefix, or PIPELINE.toml:STAGE[.OUTPUT].
    pub artifact: String,
    /// Number of rows to print [default: 5 as a table, all as JSON].
    #[arg(long)]
    pub rows: Option<usize>,
    /// Only these columns (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Only rows where this column is set (not null), e.g. `eval_a_p` for a training log's
    /// held-out evaluations.
    #[arg(long)]
    pub where_set: Option<String>,
    /// Only the last row of each run of equal values in this column, e.g. `step` for one row
    /// per RL step of a GRPO log (its last mini-batch).
    #[arg(long)]
    pub last_per: Option<String>,
    /// Device whose results PIPELINE.toml:STAGE names for device-sensitive stages (default: the
    /// most recent result on any device).
    #[arg(long)]
    pub device: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// JSON: `{"pipeline", "device", "stages": [{"name", "stage", "state": "cached|stale|missing",
/// "key", "outputs": {name: id}, "why": [{"kind", "message", …}]}]}`. `key` is null while an
/// upstream result is missing; `why` is empty for cached stages.
pub fn status(store: &Store, a: PipelineArg) -> anyhow::Result<i32> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(&a.pipeline, &reg)?;
    let rows = Runner::new(store, &reg, &a.device).status(&p)?;
    if a.format == Format::Json {
        let stages: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.instance,
                    "stage": r.stage,
                    "state": r.state,
                    "key": r.key,
                    "outputs": r.outputs,
                    "why": r.reasons.iter().map(|x| x.to_json()).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!({"pipeline": p.name, "device": a.device, "stages": stages}))?;
        return Ok(0);
    }
    println!("{:<36} {:<8} artifact / why", "stage", "state");
    for r in rows {
        let detail = if r.state == "cached" {
            r.outputs
                .values()
                .map(|v| short(v))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            r.reasons
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        println!("{:<36} {:<8} {}", r.instance, r.state, detail);
    }
    Ok(0)
}

/// JSON: `{"pipeline", "seed", "instances": [{"name", "decl", "stage", "seed", "vars",
/// "config"}], "edges": [{"from", "output", "to", "input"}]}`, instances in run order.
pub fn dag(a: DagArgs) -> anyhow::Result<i32> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(&a.pipeline, &reg)?;
    if a.format == Format::Json {
        let instances: Vec<Value> = p
            .instances
            .iter()
            .map(|i| {
                json!({
                    "name": i.name,
                    "decl": i.decl,
                    "stage": i.stage,
                    "seed": i.seed,
                    "vars": i.vars,
                    "config": i.config,
                })
            })
            .collect();
        let edges: Vec<Value> = p
            .instances
            .iter()
            .flat_map(|i| {
                i.inputs.iter().map(|(input, (up, out))| {
                    json!({"from": up, "output": out, "to": i.name, "input": input})
                })
            })
            .collect();
        print_json(&json!({
            "pipeline": p.name,
            "seed": p.seed,
            "instances": instances,
            "edges": edges,
        }))?;
    } else if a.dot {
        println!("digraph \"{}\" {{", p.name);
        for i in &p.instances {
            println!("  \"{}\" [label=\"{}\\n({})\"];", i.name, i.name, i.stage);
            for (input, (up, out)) in &i.inputs {
                println!("  \"{up}\" -> \"{}\" [label=\"{out}→{input}\"];", i.name);
            }
        }
        println!("}}");
    } else {
        println!("pipeline {} (seed {})", p.name, p.seed);
        for i in &p.instances {
            let ins: Vec<String> = i
                .inputs
                .iter()
                .map(|(input, (up, out))| {
                    if out == "main" {
                        format!("{input}←{up}")
                    } else {
                        format!("{input}←{up}.{out}")
                    }
                })
                .collect();
            println!("  {:<36} {:<16} {}", i.name, i.stage, ins.join(", "));
        }
    }
    Ok(0)
}

/// JSON: `{"artifact", "manifest": {…as stored…}, "table"}` where `table` is null for
/// non-tabular artifacts and otherwise `{"schema": {"kind", "version", "columns": [{"name",
/// "type", "nullable", "doc"}]}, "columns": [names shown], "total_rows" (after --where-set),
/// "rows": [{column: value}]}` (cells as in `Table::row_json`).
pub fn show(store: &Store, a: ShowArgs) -> anyhow::Result<i32> {
    let id = resolve_ref(store, &a.artifact, a.device.as_deref())?;
    let m = store.manifest(&id)?;
    if a.format == Format::Json {
        let table = match asymm::table::schema(&m.kind) {
            Ok(s) => Some(show_table_json(store, &id, s, &a)?),
            Err(_) => None,
        };
        print_json(&json!({"artifact": id, "manifest": m, "table": table}))?;
        return Ok(0);
    }
    println!("artifact {id}");
    println!("kind     {} (schema v{})", m.kind, m.schema_version);
    if let Some(r) = m.rows {
        println!("rows     {r}");
    }
    for f in &m.files {
        println!(
            "file     {} ({} bytes, blake3 {})",
            f.name,
            f.bytes,
            short(&f.blake3)
        );
    }
    for (k, v) in &m.lineage {
        println!("input    {k} = {}", short(v));
    }
    if !m.producer.is_null() {
        println!("producer {}", serde_json::to_string(&m.producer)?);
    }
    if let Ok(s) = asymm::table::schema(&m.kind) {
        println!("schema:");
        for c in &s.columns {
            println!(
                "  {:<20} {:<12} {}{}",
                c.name,
                c.ty.name(),
                if c.nullable { "nullable " } else { "" },
                c.doc
            );
        }
        let bytes = store.read_file(&id, asymm::table::DATA_FILE)?;
        let df = polars::prelude::ParquetReader::new(std::io::Cursor::new(bytes));
        use polars::prelude::SerReader;
        let mut df = df.finish()?;
        if a.where_set.is_some() || a.last_per.is_some() {
            let t = asymm::table::Table::read(store, &id, &s.kind)?;
            let keep = selected_rows(&t, &a)?;
            let mut mask = vec![false; t.rows()];
            for i in keep {
                mask[i] = true;
            }
            let mask: polars::prelude::BooleanChunked = mask.into_iter().collect();
            df = df.filter(&mask)?;
        }
        if !a.columns.is_empty() {
            if let Some(bad) = a.columns.iter().find(|c| df.column(c.as_str()).is_err()) {
                anyhow::bail!("no column `{bad}` in this artifact");
            }
            df = df.select(a.columns.iter().map(String::as_str))?;
        }
        println!("{}", df.head(Some(a.rows.unwrap_or(5))));
    }
    Ok(0)
}

/// The rows `--where-set` and `--last-per` keep, in order.
fn selected_rows(t: &asymm::table::Table, a: &ShowArgs) -> anyhow::Result<Vec<usize>> {
    use arrow::array::Array;
    let column = |col: &str| {
        t.batch
            .column_by_name(col)
            .ok_or_else(|| anyhow::anyhow!("no column `{col}` in this artifact"))
    };
    let mut keep: Vec<usize> = (0..t.rows()).collect();
    if let Some(col) = &a.where_set {
        let c = column(col)?;
        keep.retain(|&i| !c.is_null(i));
    }
    if let Some(col) = &a.last_per {
        let c = column(col)?;
        let rows: Vec<arrow::array::ArrayRef> = keep.iter().map(|&i| c.slice(i, 1)).collect();
        keep = keep
            .iter()
            .enumerate()
            .filter(|(k, _)| {
                rows.get(k + 1)
                    .is_none_or(|next| next.as_ref() != rows[*k].as_ref())
            })
            .map(|(_, &i)| i)
            .collect();
    }
    Ok(keep)
}

fn show_table_json(
    store: &Store,
    id: &str,
    s: &asymm::table::Schema,
    a: &ShowArgs,
) -> anyhow::Result<Value> {
    let t = asymm::table::Table::read(store, id, &s.kind)?;
    let names = t.column_names();
    let known = |c: &String| -> anyhow::Result<()> {
        if names.contains(c) {
            Ok(())
        } else {
            anyhow::bail!("no column `{c}` in this artifact")
        }
    };
    a.columns.iter().try_for_each(known)?;
    let selected = selected_rows(&t, a)?;
    let rows = selected
        .iter()
        .take(a.rows.unwrap_or(usize::MAX))
        .map(|&i| t.row_json(i, &a.columns).map(Value::Object))
        .collect::<Result<Vec<_>, _>>()?;
    let columns: Vec<Value> = s
        .columns
        .iter()
        .map(|c| json!({"name": c.name, "type": c.ty.name(), "nullable": c.nullable, "doc": c.doc}))
        .collect();
    Ok(json!({
        "schema": {"kind": s.kind, "version": s.version, "columns": columns},
        "columns": if a.columns.is_empty() { names } else { a.columns.clone() },
        "total_rows": selected.len(),
        "rows": rows,
    }))
}
