//! Pipeline files and their expansion into stage instances.
//!
//! ```toml
//! [pipeline]
//! name = "default"
//! seed = 1
//!
//! [stages.synthesize]
//! task = "graph_coloring"
//!
//! [stages.sft]
//! stage = "sft-train"                 # stage type; defaults to the table name
//! inputs = { data = "distill" }       # input name → producing stage (or "stage.output")
//! sweep = { lambda = [0.3, 0.7] }     # one instance per value (cartesian over keys)
//! ```
//! Stages downstream of a swept stage are expanded once per upstream instance, so a sweep
//! propagates through the rest of the graph without copy-pasting stages. A declaration of a
//! composite type (see [`Registry::expand`]) is first replaced by the ordinary declarations it
//! stands for.

use super::{ConfigError, DagError, Registry};
use instances::Instances;

mod instances;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A stage instance: one node of the expanded graph.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `decl` or `decl[k=v,…]`.
    pub name: String,
    /// The declaring table's name.
    pub decl: String,
    /// Stage type.
    pub stage: String,
    pub config: serde_json::Value,
    pub seed: u64,
    /// Input name → (upstream instance, output name).
    pub inputs: BTreeMap<String, (String, String)>,
    /// Sweep values that distinguish this instance.
    pub vars: BTreeMap<String, String>,
    /// Outputs discarded (see [`crate::store::Store::discard`]) once every instance of the
    /// pipeline that reads them has its result; recomputed when a stage that must run needs
    /// them.
    pub discard: Vec<String>,
}

/// An expanded pipeline: instances in a deterministic topological order.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub seed: u64,
    pub instances: Vec<Instance>,
}

struct Decl {
    name: String,
    stage: String,
    inputs: BTreeMap<String, (String, String)>,
    sweep: Vec<(String, Vec<toml::Value>)>,
    seed: Option<u64>,
    /// Outputs to discard once every stage of the pipeline that reads them has its result.
    discard: Vec<String>,
    /// (sweep variable, config path): set the path to the value of a variable swept upstream.
    follow: Vec<(String, String)>,
    table: toml::Table,
}

const RESERVED: &[&str] = &["stage", "inputs", "sweep", "seed", "discard", "follow"];

fn perr(path: &str, msg: impl Into<String>) -> DagError {
    DagError::Parse {
        path: path.to_string(),
        msg: msg.into(),
    }
}

/// Reads and expands a pipeline file.
pub fn parse_pipeline(path: &Path, reg: &dyn Registry) -> Result<Pipeline, DagError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| perr(&p, format!("cannot read: {e}")))?;
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    parse_str(&text, &p, &default_name, reg)
}

/// Parses pipeline text (`origin` names it in errors).
pub fn parse_str(
    text: &str,
    origin: &str,
    default_name: &str,
    reg: &dyn Registry,
) -> Result<Pipeline, DagError> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| perr(origin, e.to_string()))?;
    for k in doc.keys() {
        if k != "pipeline" && k != "stages" {
            return Err(perr(
                origin,
                format!("unknown top-level table `{k}` (expected `pipeline` and `stages`)"),
            ));
        }
    }
    let (name, seed) = parse_head(&doc, origin, default_name)?;
    let decls = parse_decls(&doc, origin, reg)?;
    let order = topo_order(&decls)?;
    let by_name: BTreeMap<&str, &Decl> = decls.iter().map(|d| (d.name.as_str(), d)).collect();
    // Check types of the declared graph.
    for d in &decls {
        check_decl(d, &by_name, reg)?;
    }
    let mut graph = Instances::default();
    for dname in order {
        graph.add(by_name[dname.as_str()], reg, seed)?;
    }
    Ok(Pipeline {
        name,
        seed,
        instances: graph.instances,
    })
}

/// The `[pipeline]` table's name and seed (the file's stem and 0 when absent).
fn parse_head(
    doc: &toml::Table,
    origin: &str,
    default_name: &str,
) -> Result<(String, u64), DagError> {
    let (mut name, mut seed) = (default_name.to_string(), 0u64);
    if let Some(head) = doc.get("pipeline") {
        let head = head
            .as_table()
            .ok_or_else(|| perr(origin, "`pipeline` must be a table"))?;
        for (k, v) in head {
            match k.as_str() {
                "name" => {
                    name = v
                        .as_str()
                        .ok_or_else(|| perr(origin, "`pipeline.name` must be a string"))?
                        .to_string()
                }
                "seed" => {
                    seed = as_u64(v).ok_or_else(|| {
                        perr(origin, "`pipeline.seed` must be a non-negative integer")
                    })?
                }
                other => return Err(perr(origin, format!("unknown key `pipeline.{other}`"))),
            }
        }
    }
    crate::store::check_name(&name).map_err(|e| perr(origin, e.to_string()))?;
    Ok((name, seed))
}

/// The `[stages.*]` tables as declarations, composites expanded; names unique.
fn parse_decls(doc: &toml::Table, origin: &str, reg: &dyn Registry) -> Result<Vec<Decl>, DagError> {
    let stages = doc
        .get("stages")
        .and_then(|s| s.as_table())
        .ok_or_else(|| perr(origin, "no `[stages.*]` tables"))?;
    let mut decls: Vec<Decl> = Vec::new();
    for (sname, v) in stages {
        let t = v
            .as_table()
            .ok_or_else(|| perr(origin, format!("`stages.{sname}` must be a table")))?;
        let kind = match t.get("stage").and_then(|k| k.as_str()) {
            Some(k) => k.to_string(),
            None => sname.replace('_', "-"),
        };
        match reg.expand(&kind, sname, t) {
            None => decls.push(parse_decl(origin, sname, t)?),
            Some(Err(source)) => {
                return Err(DagError::Config {
                    stage: sname.clone(),
                    source,
                });
            }
            Some(Ok(parts)) => {
                for (name, table) in parts {
                    decls.push(parse_decl(origin, &name, &table)?);
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for d in &decls {
        if !seen.insert(d.name.as_str()) {
            return Err(perr(
                origin,
                format!(
                    "two stages are named `{}` (one expanded from a composite)",
                    d.name
                ),
            ));
        }
    }
    Ok(decls)
}

fn as_u64(v: &toml::Value) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i).ok())
}

fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `stage.output` → (stage, output), `stage` → (stage, "main"); a swept instance's brackets
/// (`rl[alpha=0.5].eval`) are part of the stage.
pub fn split_output(s: &str) -> (&str, &str) {
    let from = s.rfind(']').map_or(0, |i| i + 1);
    match s[from..].find('.') {
        Some(i) => (&s[..from + i], &s[from + i + 1..]),
        None => (s, "main"),
    }
}

/// The slot for a dotted key path inside a table, creating intermediate tables.
fn set_path<'a>(t: &'a mut toml::Table, path: &str) -> Option<&'a mut toml::Value> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop()?;
    let mut cur = t;
    for p in parts {
        cur = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()?;
    }
    Some(
        cur.entry(last.to_string())
            .or_insert(toml::Value::Boolean(false)),
    )
}

fn parse_decl(origin: &str, name: &str, t: &toml::Table) -> Result<Decl, DagError> {
    crate::store::check_name(name).map_err(|e| perr(origin, format!("stage name: {e}")))?;
    let stage = match t.get("stage") {
        Some(v) => v
            .as_str()
            .ok_or_else(|| perr(origin, format!("`stages.{name}.stage` must be a string")))?
            .to_string(),
        None => name.replace('_', "-"),
    };
    let mut inputs = BTreeMap::new();
    if let Some(v) = t.get("inputs") {
        let it = v.as_table().ok_or_else(|| {
            perr(
                origin,
                format!("`stages.{name}.inputs` must be a table of input = \"stage\""),
            )
        })?;
        for (iname, target) in it {
            let bad = || {
                perr(
                    origin,
                    format!(
                        "`stages.{name}.inputs.{iname}` must be a stage name (or a list of them)"
                    ),
                )
            };
            let targets: Vec<(String, &str)> = match target {
                toml::Value::String(t) => vec![(iname.clone(), t.as_str())],
                toml::Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .map(|(k, v)| v.as_str().map(|t| (format!("{iname}.{k}"), t)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?,
                _ => return Err(bad()),
            };
            for (iname, target) in targets {
                let (up, out) = split_output(target);
                inputs.insert(iname, (up.to_string(), out.to_string()));
            }
        }
    }
    let mut sweep = Vec::new();
    if let Some(v) = t.get("sweep") {
        let st = v.as_table().ok_or_else(|| {
            perr(
                origin,
                format!("`stages.{name}.sweep` must be a table of key = [values]"),
            )
        })?;
        for (k, vals) in st {
            let arr = vals.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                perr(
                    origin,
                    format!("`stages.{name}.sweep.{k}` must be a non-empty list"),
                )
            })?;
            if RESERVED.contains(&k.as_str()) {
                return Err(perr(
                    origin,
                    format!("`stages.{name}.sweep.{k}`: cannot sweep a reserved key"),
                ));
            }
            sweep.push((k.clone(), arr.clone()));
        }
    }
    let seed = match t.get("seed") {
        Some(v) => Some(as_u64(v).ok_or_else(|| {
            perr(
                origin,
                format!("`stages.{name}.seed` must be a non-negative integer"),
            )
        })?),
        None => None,
    };
    let discard = match t.get("discard") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                perr(
                    origin,
                    format!("`stages.{name}.discard` must be a list of output names"),
                )
            })?,
    };
    let follow = match t.get("follow") {
        None => Vec::new(),
        Some(v) => v
            .as_table()
            .and_then(|f| {
                f.iter()
                    .map(|(var, path)| path.as_str().map(|p| (var.clone(), p.to_string())))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                perr(
                    origin,
                    format!("`stages.{name}.follow` must be a table of variable = \"config.path\""),
                )
            })?,
    };
    let table = t
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Decl {
        name: name.to_string(),
        stage,
        inputs,
        sweep,
        seed,
        discard,
        follow,
        table,
    })
}

fn unknown_stage(d: &Decl, reg: &dyn Registry) -> DagError {
    let mut known = reg.names();
    known.extend(reg.composites());
    DagError::UnknownStage {
        stage: d.name.clone(),
        kind: d.stage.clone(),
        known: known.join(", "),
    }
}

fn check_decl(
    d: &Decl,
    by_name: &BTreeMap<&str, &Decl>,
    reg: &dyn Registry,
) -> Result<(), DagError> {
    let def = reg.get(&d.stage).ok_or_else(|| unknown_stage(d, reg))?;
    let outs = def.outputs();
    if let Some(bad) = d
        .discard
        .iter()
        .find(|o| !outs.iter().any(|s| s.name == *o))
    {
        return Err(DagError::Config {
            stage: d.name.clone(),
            source: ConfigError::Invalid(format!(
                "`discard` names `{bad}`, which is not an output of {} ({})",
                d.stage,
                outs.iter().map(|o| o.name).collect::<Vec<_>>().join(", ")
            )),
        });
    }
    let specs = def.inputs();
    for (iname, (up, out)) in &d.inputs {
        // A list input's entries are `name.k`.
        let base = iname.split_once('.').map_or(iname.as_str(), |(b, _)| b);
        let spec = specs
            .iter()
            .find(|s| s.name == iname || (s.many && s.name == base))
            .ok_or_else(|| DagError::ExtraInput {
                stage: d.name.clone(),
                input: iname.clone(),
                known: specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
            })?;
        let up_decl = by_name
            .get(up.as_str())
            .ok_or_else(|| DagError::UnknownInput {
                stage: d.name.clone(),
                input: iname.clone(),
                target: up.clone(),
            })?;
        let up_def = reg
            .get(&up_decl.stage)
            .ok_or_else(|| unknown_stage(up_decl, reg))?;
        let o = up_def
            .outputs()
            .into_iter()
            .find(|o| o.name == out)
            .ok_or_else(|| DagError::UnknownOutput {
                stage: d.name.clone(),
                target: up.clone(),
                output: out.clone(),
            })?;
        if o.kind != spec.kind {
            return Err(DagError::WrongKind {
                stage: d.name.clone(),
                input: iname.clone(),
                target: up.clone(),
                expected: spec.kind.to_string(),
                found: o.kind.to_string(),
            });
        }
    }
    for s in specs {
        if !s.optional && !d.inputs.contains_key(s.name) {
            return Err(DagError::MissingInput {
                stage: d.name.clone(),
                input: s.name.to_string(),
                kind: s.kind.to_string(),
            });
        }
    }
    Ok(())
}

/// Kahn's algorithm with name order as the tie-break; a leftover set is a cycle.
fn topo_order(decls: &[Decl]) -> Result<Vec<String>, DagError> {
    let names: BTreeSet<&str> = decls.iter().map(|d| d.name.as_str()).collect();
    let mut indeg: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
    let mut down: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in decls {
        let ups: BTreeSet<&str> = d.inputs.values().map(|(s, _)| s.as_str()).collect();
        for up in ups {
            if !names.contains(up) {
                let input = d
                    .inputs
                    .iter()
                    .find(|(_, (s, _))| s == up)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default();
                return Err(DagError::UnknownInput {
                    stage: d.name.clone(),
                    input,
                    target: up.to_string(),
                });
            }
            *indeg.get_mut(d.name.as_str()).unwrap_or(&mut 0) += 1;
            down.entry(up).or_default().push(d.name.as_str());
        }
    }
    let mut ready: BTreeSet<&str> = indeg
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut order = Vec::new();
    while let Some(n) = ready.pop_first() {
        order.push(n.to_string());
        for &m in down.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(c) = indeg.get_mut(m) {
                *c -= 1;
                if *c == 0 {
                    ready.insert(m);
                }
            }
        }
    }
    if order.len() < decls.len() {
        let stuck: BTreeSet<&str> = names
            .iter()
            .filter(|k| !order.iter().any(|o| o == *k))
            .copied()
            .collect();
        return Err(DagError::Cycle(cycle_path(decls, &stuck)));
    }
    Ok(order)
}

/// One cycle among the stages Kahn's algorithm could not order, as `a → b → a` (each stage feeds
/// the next), starting from its first name. Stages merely downstream of a cycle are left out.
fn cycle_path(decls: &[Decl], stuck: &BTreeSet<&str>) -> String {
    // Every stuck stage has a stuck upstream stage, so walking upstream must come back.
    let upstream = |n: &str| -> Option<&str> {
        let d = decls.iter().find(|d| d.name == n)?;
        let ups: BTreeSet<&str> = d.inputs.values().map(|(s, _)| s.as_str()).collect();
        ups.into_iter().find(|u| stuck.contains(u))
    };
    let Some(mut cur) = stuck.first().copied() else {
        return String::new();
    };
    let mut path: Vec<&str> = vec![cur];
    let cycle = loop {
        match upstream(cur) {
            Some(up) => {
                if let Some(pos) = path.iter().position(|p| *p == up) {
                    break path.split_off(pos);
                }
                path.push(up);
                cur = up;
            }
            None => return stuck.iter().copied().collect::<Vec<_>>().join(" → "),
        }
    };
    // `cycle` runs upstream; turn it around and start from its first name.
    let mut down: Vec<&str> = cycle.into_iter().rev().collect();
    if let Some(first) = (0..down.len()).min_by_key(|&i| down[i]) {
        down.rotate_left(first);
    }
    if let Some(&head) = down.first() {
        down.push(head);
    }
    down.join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_split_after_a_swept_instance_s_brackets() {
        assert_eq!(split_output("rl.log"), ("rl", "log"));
        assert_eq!(split_output("rl"), ("rl", "main"));
        assert_eq!(split_output("rl[alpha=0.5]"), ("rl[alpha=0.5]", "main"));
        assert_eq!(
            split_output("rl[alpha=0.5].eval"),
            ("rl[alpha=0.5]", "eval")
        );
        assert_eq!(split_output("r[a=1,b=0.25].x"), ("r[a=1,b=0.25]", "x"));
    }
}
