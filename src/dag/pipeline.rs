//! Pipeline files and their expansion into stage instances.
//!
//! ```toml
//! [pipeline]
//! name = "default"
//! seed = 1
//! remote = "team"                     # optional: pull from and push to this store remote
//! executor = { slurm = { partition = "gpu", time = "02:00:00", gres = "gpu:1" } }  # or "local"
//!
//! [stages.synthesize]
//! task = "graph_coloring"
//!
//! [stages.sft]
//! stage = "sft-train"                 # stage type; defaults to the table name
//! inputs = { data = "distill" }       # input name → producing stage (or "stage.output")
//! sweep = { lambda = [0.3, 0.7] }     # one instance per value (cartesian over keys)
//!
//! [stages.sft_replicates]
//! stage = "sft-train"
//! inputs = { data = "distill" }
//! sweep = { seed = [1, 2, 3] }        # replicates: each instance runs with its own seed
//! ```
//! Stages downstream of a swept stage are expanded once per upstream instance, so a sweep
//! propagates through the rest of the graph without copy-pasting stages. Sweeping `seed` sets
//! the instances' seed rather than a config key, and the instances downstream of a replicate
//! (its rollouts, its evaluation) run with the replicate's seed unless they set `seed`
//! themselves. A declaration of a
//! composite type (see [`Registry::expand`]) is first replaced by the ordinary declarations it
//! stands for.

use super::{ConfigError, DagError, Position, Registry};
use instances::Instances;
use serde::Deserialize;

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
    /// The store remote a run pulls from and pushes to (`remote = "NAME"`; `run --remote`
    /// overrides it).
    pub remote: Option<String>,
    /// Where the instances run (`executor = "local"` or `{ slurm = { … } }`; `run --executor`
    /// overrides it).
    pub executor: super::Executor,
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

/// The sweep key that sets the instances' seed (replicates) instead of a config key.
pub const SEED: &str = "seed";

/// A pipeline file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    #[serde(default)]
    pipeline: Head,
    #[serde(default)]
    stages: BTreeMap<String, StageDecl>,
}

/// The `[pipeline]` table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Head {
    /// The file's stem when absent.
    name: Option<String>,
    #[serde(default)]
    seed: u64,
    /// A remote of the store (`asymm remote add`) that runs pull from and push to.
    remote: Option<String>,
    #[serde(default)]
    executor: super::Executor,
}

/// One `[stages.<name>]` table as written: the keys the runner reads ([`RESERVED`]), and every
/// other key as the stage's own configuration (checked by the stage type, which knows its keys).
#[derive(Deserialize)]
struct StageDecl {
    /// The stage type; the table's name (`_` read as `-`) when absent.
    stage: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, Targets>,
    #[serde(default)]
    sweep: BTreeMap<String, Vec<toml::Value>>,
    seed: Option<u64>,
    #[serde(default)]
    discard: Vec<String>,
    #[serde(default)]
    follow: BTreeMap<String, String>,
    #[serde(flatten)]
    config: toml::Table,
}

/// An input's producers: `"stage"`, `"stage.output"`, or a list of them (a list input).
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "an input names a stage (\"stage\" or \"stage.output\") or a list of them"
)]
enum Targets {
    One(String),
    Many(Vec<String>),
}

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

/// Parses pipeline text (`origin` names it in errors, which point at its lines).
pub fn parse_str(
    text: &str,
    origin: &str,
    default_name: &str,
    reg: &dyn Registry,
) -> Result<Pipeline, DagError> {
    let file: PipelineFile = toml::from_str(text).map_err(|e| perr(origin, e.to_string()))?;
    let name = file
        .pipeline
        .name
        .unwrap_or_else(|| default_name.to_string());
    crate::store::check_name(&name).map_err(|e| perr(origin, e.to_string()))?;
    let seed = file.pipeline.seed;
    let remote = file.pipeline.remote;
    let executor = file.pipeline.executor;
    let build = || {
        let decls = declarations(file.stages, text, origin, reg)?;
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
        Ok(graph.instances)
    };
    let instances = build().map_err(|e| locate(e, text, origin))?;
    Ok(Pipeline {
        name,
        seed,
        instances,
        remote,
        executor,
    })
}

/// A stage's bad configuration, placed at the key's line and column in the user's file (at its
/// stage table when the key is not written there, as for a missing field).
fn locate(e: DagError, text: &str, origin: &str) -> DagError {
    match e {
        DagError::Config {
            stage,
            at: None,
            reason,
        } => {
            let mut path = vec!["stages", stage.as_str()];
            if let ConfigError::At { key, .. } = &reason {
                path.extend(key.split('.'));
            }
            let at = position(text, &path).map(|(line, column)| Position {
                file: origin.to_string(),
                line,
                column,
            });
            DagError::Config { stage, at, reason }
        }
        other => other,
    }
}

/// The 1-based line and column of the deepest key of `path` written in TOML `text`.
fn position(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for seg in path {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref() == seg)?;
        found = Some(key.span().start);
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    let offset = found?;
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

/// The `[stages.*]` tables as declarations, composites expanded; names unique.
fn declarations(
    stages: BTreeMap<String, StageDecl>,
    text: &str,
    origin: &str,
    reg: &dyn Registry,
) -> Result<Vec<Decl>, DagError> {
    if stages.is_empty() {
        return Err(perr(origin, "no `[stages.*]` tables"));
    }
    let mut decls: Vec<Decl> = Vec::new();
    for (sname, sd) in stages {
        let kind = sd.stage.clone().unwrap_or_else(|| sname.replace('_', "-"));
        // A composite reads its table as written (its keys mean what it says they mean).
        let raw = || -> Result<toml::Table, DagError> {
            let doc: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| perr(origin, e.to_string()))?;
            doc.get("stages")
                .and_then(|s| s.get(&sname))
                .and_then(|t| t.as_table())
                .cloned()
                .ok_or_else(|| perr(origin, format!("`stages.{sname}` must be a table")))
        };
        let expanded = if reg.composites().contains(&kind.as_str()) {
            reg.expand(&kind, &sname, &raw()?)
        } else {
            None
        };
        match expanded {
            None => decls.push(Decl::new(origin, &sname, sd)?),
            Some(Err(reason)) => {
                return Err(DagError::Config {
                    stage: sname,
                    at: None,
                    reason,
                });
            }
            Some(Ok(parts)) => {
                for (name, table) in parts {
                    let sd =
                        toml::Value::Table(table)
                            .try_into()
                            .map_err(|e: toml::de::Error| {
                                perr(origin, format!("stage `{name}` (from `{sname}`): {e}"))
                            })?;
                    decls.push(Decl::new(origin, &name, sd)?);
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

impl Decl {
    /// The declaration `[stages.<name>]` stands for, its names and sweep checked.
    fn new(origin: &str, name: &str, sd: StageDecl) -> Result<Decl, DagError> {
        crate::store::check_name(name).map_err(|e| perr(origin, format!("stage name: {e}")))?;
        let mut inputs = BTreeMap::new();
        for (iname, targets) in sd.inputs {
            let targets: Vec<(String, String)> = match targets {
                Targets::One(t) => vec![(iname, t)],
                Targets::Many(ts) => ts
                    .into_iter()
                    .enumerate()
                    .map(|(k, t)| (format!("{iname}.{k}"), t))
                    .collect(),
            };
            for (iname, target) in targets {
                let (up, out) = split_output(&target);
                inputs.insert(iname, (up.to_string(), out.to_string()));
            }
        }
        for (k, values) in &sd.sweep {
            if values.is_empty() {
                return Err(perr(
                    origin,
                    format!("`stages.{name}.sweep.{k}` must be a non-empty list"),
                ));
            }
            if k == SEED {
                if sd.seed.is_some() {
                    return Err(perr(
                        origin,
                        format!("`stages.{name}` both sets `seed` and sweeps it; keep one"),
                    ));
                }
                if let Some(v) = values.iter().find(|v| v.as_integer().is_none_or(|i| i < 0)) {
                    return Err(perr(
                        origin,
                        format!(
                            "`stages.{name}.sweep.seed` lists `{v}`; seeds are non-negative \
                             integers"
                        ),
                    ));
                }
                continue;
            }
            if RESERVED.contains(&k.as_str()) {
                return Err(perr(
                    origin,
                    format!("`stages.{name}.sweep.{k}`: cannot sweep a reserved key"),
                ));
            }
        }
        Ok(Decl {
            name: name.to_string(),
            stage: sd.stage.unwrap_or_else(|| name.replace('_', "-")),
            inputs,
            sweep: sd.sweep.into_iter().collect(),
            seed: sd.seed,
            discard: sd.discard,
            follow: sd.follow.into_iter().collect(),
            table: sd.config,
        })
    }
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
            at: None,
            reason: ConfigError::Invalid(format!(
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
