//! Helpers: run the binary, write pipelines, read run tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_asymm"))
}

/// Runs `asymm --store <store> args…`.
pub fn asymm(store: &Path, args: &[&str]) -> Output {
    asymm_env(store, args, &[])
}

pub fn asymm_env(store: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.arg("--store").arg(store).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn asymm")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// A small graph-coloring data pipeline with a given render size.
pub fn data_pipeline(dir: &Path, render_size: u32) -> PathBuf {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[pipeline]
name = "t"
seed = 3

[stages.synthesize]
task = "graph_coloring"
splits = {{ test = 8, sft = 24, rl = 4 }}

[stages.render]
inputs = {{ puzzles = "synthesize" }}
size = {render_size}

[stages.distill_format]
inputs = {{ puzzles = "synthesize", images = "render" }}
verbosity = 1
"#
        ),
    )
    .unwrap();
    p
}

/// `(stage, result, artifact)` rows of a run table.
pub fn table(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .skip(2)
        .take_while(|l| !l.starts_with("stage work"))
        .filter(|l| !l.starts_with('('))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 2 {
                return None;
            }
            let (stage, rest) = (cols[0], &cols[1..]);
            let (result, rest) = if rest[0] == "would" {
                ("would run".to_string(), &rest[2..])
            } else {
                (rest[0].to_string(), &rest[1..])
            };
            let artifact = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
            Some((stage.to_string(), result, artifact))
        })
        .collect()
}

pub fn result_of(rows: &[(String, String, String)], stage: &str) -> String {
    rows.iter()
        .find(|r| r.0 == stage)
        .map(|r| r.1.clone())
        .unwrap_or_else(|| panic!("no row for {stage}: {rows:?}"))
}

/// Every object file (not manifests) in a store.
pub fn object_files(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(store.join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            if f.file_name() != "manifest.json" {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// Runs `asymm --store <store> args… --format json` successfully and parses its stdout (which
/// must be exactly one JSON document).
pub fn json(store: &Path, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--format", "json"]);
    let out = ok(asymm(store, &all));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{out}"))
}

/// The entry named `name` in a `status`/`run` document's `stages`.
pub fn stage<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {doc:#}"))
}

/// The `why` kinds of a status entry.
pub fn why_kinds(entry: &serde_json::Value) -> Vec<String> {
    entry["why"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The rows of a `show --format json` document's table.
pub fn rows(doc: &serde_json::Value) -> &Vec<serde_json::Value> {
    doc["table"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no table rows in {doc:#}"))
}
