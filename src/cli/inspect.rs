//! `asymm status`, `asymm dag` and `asymm show`: read-only views of pipelines and artifacts.

use super::{resolve_ref, short};
use asymm::dag::{Runner, parse_pipeline};
use asymm::stages::StageRegistry;
use asymm::store::Store;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PipelineArg {
    /// Pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Compute device the pipeline would run on (part of model stages' keys).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct DagArgs {
    /// Pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Print Graphviz DOT instead of text.
    #[arg(long)]
    pub dot: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Artifact id, unique id prefix, or PIPELINE.toml:STAGE[.OUTPUT].
    pub artifact: String,
    /// Number of rows to print.
    #[arg(long, default_value_t = 5)]
    pub rows: usize,
    /// Only these columns (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Only rows where this column is set (not null), e.g. `eval_a_p` for a training log's
    /// held-out evaluations.
    #[arg(long)]
    pub where_set: Option<String>,
}

pub fn status(store: &Store, a: PipelineArg) -> anyhow::Result<i32> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(&a.pipeline, &reg)?;
    let rows = Runner::new(store, &reg, &a.device).status(&p)?;
    println!("{:<36} {:<8} artifact / why", "stage", "state");
    for r in rows {
        let detail = if r.state == "cached" {
            r.outputs
                .values()
                .map(|v| short(v))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            r.reasons.join("; ")
        };
        println!("{:<36} {:<8} {}", r.instance, r.state, detail);
    }
    Ok(0)
}

pub fn dag(a: DagArgs) -> anyhow::Result<i32> {
    let reg = StageRegistry::default();
    let p = parse_pipeline(&a.pipeline, &reg)?;
    if a.dot {
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

pub fn show(store: &Store, a: ShowArgs) -> anyhow::Result<i32> {
    let id = resolve_ref(store, &a.artifact)?;
    let m = store.manifest(&id)?;
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
        if let Some(col) = &a.where_set {
            let mask = df
                .column(col)
                .map_err(|_| anyhow::anyhow!("no column `{col}` in this artifact"))?
                .is_not_null();
            df = df.filter(&mask)?;
        }
        if !a.columns.is_empty() {
            if let Some(bad) = a.columns.iter().find(|c| df.column(c.as_str()).is_err()) {
                anyhow::bail!("no column `{bad}` in this artifact");
            }
            df = df.select(a.columns.iter().map(String::as_str))?;
        }
        println!("{}", df.head(Some(a.rows)));
    }
    Ok(0)
}
