//! Scheduling and execution: walk instances in topological order, compute each key from its
//! inputs' content ids, reuse cached results, run the rest under a per-key lock, and publish the
//! run record last so a crash loses at most the stage in flight.

use super::externals::Fingerprinter;
use super::key::{KeyParts, explain};
use super::{DagError, Instance, Pipeline, Registry, RunCtx};
use crate::store::{RunRecord, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What `run` should do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only these stages (declaration or instance names); their inputs must be cached.
    pub only: Vec<String>,
    /// Run these stages and everything upstream of them.
    pub until: Vec<String>,
    /// Recompute these stages even when cached.
    pub force: Vec<String>,
    /// Only report what would run and why.
    pub dry_run: bool,
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    Ran,
    /// Dry run: would run, for these reasons.
    WouldRun(Vec<String>),
    /// Not selected by --only/--until.
    Skipped,
}

/// One row of the run table.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub instance: String,
    pub stage: String,
    pub outcome: Outcome,
    pub duration: Duration,
    pub outputs: BTreeMap<String, String>,
}

/// One row of `status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub instance: String,
    pub stage: String,
    /// `cached`, `stale` or `missing`.
    pub state: &'static str,
    pub reasons: Vec<String>,
    pub outputs: BTreeMap<String, String>,
}

/// Executes pipelines against a store.
pub struct Runner<'a> {
    store: &'a Store,
    reg: &'a dyn Registry,
    device: String,
    fingerprints: Fingerprinter,
}

enum Resolved {
    Ready(BTreeMap<String, String>),
    /// Input name and the upstream instance that has no result yet.
    Pending(String, String),
}

impl<'a> Runner<'a> {
    pub fn new(store: &'a Store, reg: &'a dyn Registry, device: &str) -> Self {
        Runner {
            store,
            reg,
            device: device.to_string(),
            fingerprints: Fingerprinter::new(store.root()),
        }
    }

    fn resolve(
        &self,
        inst: &Instance,
        results: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Resolved {
        let mut ids = BTreeMap::new();
        for (iname, (up, out)) in &inst.inputs {
            match results.get(up).and_then(|o| o.get(out)) {
                Some(id) => {
                    ids.insert(iname.clone(), id.clone());
                }
                None => return Resolved::Pending(iname.clone(), up.clone()),
            }
        }
        Resolved::Ready(ids)
    }

    fn key_parts(
        &mut self,
        inst: &Instance,
        inputs: BTreeMap<String, String>,
    ) -> Result<KeyParts, DagError> {
        let def = self
            .reg
            .get(&inst.stage)
            .ok_or_else(|| DagError::NoSuchStage(inst.stage.clone()))?;
        let mut externals = BTreeMap::new();
        for p in def.external_files(&inst.config) {
            externals.insert(p.display().to_string(), self.fingerprints.fingerprint(&p));
        }
        Ok(KeyParts {
            stage: inst.stage.clone(),
            version: def.version(),
            config: inst.config.clone(),
            seed: inst.seed,
            device: def.uses_device().then(|| self.device.clone()),
            inputs,
            externals,
        })
    }

    fn why(
        &self,
        pipeline: &str,
        inst: &Instance,
        parts: &KeyParts,
    ) -> Result<Vec<String>, DagError> {
        let Some(old_key) = self.store.head(pipeline, &inst.name)? else {
            return Ok(vec!["never run".into()]);
        };
        let Some(old) = self.store.record(&old_key)? else {
            return Ok(vec!["previous result was removed".into()]);
        };
        let old_parts: Option<KeyParts> = serde_json::from_value(old.key_parts).ok();
        Ok(match old_parts {
            Some(o) => {
                let r = explain(&o, parts);
                if r.is_empty() {
                    vec!["forced".into()]
                } else {
                    r
                }
            }
            None => vec!["previous record unreadable".into()],
        })
    }

    fn matches(inst: &Instance, names: &[String]) -> bool {
        names.iter().any(|n| n == &inst.name || n == &inst.decl)
    }

    fn selection(p: &Pipeline, opts: &RunOptions) -> Result<BTreeSet<String>, DagError> {
        for n in opts.only.iter().chain(&opts.until).chain(&opts.force) {
            if !p.instances.iter().any(|i| &i.name == n || &i.decl == n) {
                return Err(DagError::NoSuchStage(n.clone()));
            }
        }
        let mut sel: BTreeSet<String> = BTreeSet::new();
        if opts.only.is_empty() && opts.until.is_empty() {
            sel.extend(p.instances.iter().map(|i| i.name.clone()));
            return Ok(sel);
        }
        for i in &p.instances {
            if Self::matches(i, &opts.only) {
                sel.insert(i.name.clone());
            }
        }
        // --until: the targets and their ancestors.
        let mut stack: Vec<String> = p
            .instances
            .iter()
            .filter(|i| Self::matches(i, &opts.until))
            .map(|i| i.name.clone())
            .collect();
        while let Some(n) = stack.pop() {
            if sel.insert(n.clone())
                && let Some(i) = p.instances.iter().find(|i| i.name == n)
            {
                stack.extend(i.inputs.values().map(|(u, _)| u.clone()));
            }
        }
        Ok(sel)
    }

    /// Runs (or with `dry_run`, plans) the pipeline.
    pub fn run(&mut self, p: &Pipeline, opts: &RunOptions) -> Result<Vec<RunRow>, DagError> {
        let selected = Self::selection(p, opts)?;
        let mut results: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut rows = Vec::new();
        for inst in &p.instances {
            let is_sel = selected.contains(&inst.name);
            let inputs = match self.resolve(inst, &results) {
                Resolved::Ready(ids) => ids,
                Resolved::Pending(input, up) => {
                    if !is_sel {
                        rows.push(skipped(inst));
                        continue;
                    }
                    if opts.dry_run {
                        rows.push(RunRow {
                            outcome: Outcome::WouldRun(vec![format!(
                                "input `{input}`: upstream `{up}` runs first"
                            )]),
                            ..skipped(inst)
                        });
                        continue;
                    }
                    return Err(DagError::NotComputed {
                        stage: inst.name.clone(),
                        upstream: up,
                    });
                }
            };
            let parts = self.key_parts(inst, inputs)?;
            let key = parts.key();
            let forced = Self::matches(inst, &opts.force);
            let cached = if forced {
                None
            } else {
                self.store.record(&key)?
            };
            if let Some(rec) = cached {
                results.insert(inst.name.clone(), rec.outputs.clone());
                if is_sel && !opts.dry_run {
                    self.store.set_head(&p.name, &inst.name, &key)?;
                }
                rows.push(RunRow {
                    outcome: if is_sel {
                        Outcome::Cached
                    } else {
                        Outcome::Skipped
                    },
                    outputs: rec.outputs,
                    ..skipped(inst)
                });
                continue;
            }
            if !is_sel {
                rows.push(skipped(inst));
                continue;
            }
            if opts.dry_run {
                let mut why = self.why(&p.name, inst, &parts)?;
                if forced {
                    why.insert(0, "forced".into());
                    why.dedup();
                }
                rows.push(RunRow {
                    outcome: Outcome::WouldRun(why),
                    ..skipped(inst)
                });
                continue;
            }
            let row = self.execute(p, inst, parts, key, forced)?;
            results.insert(inst.name.clone(), row.outputs.clone());
            rows.push(row);
        }
        self.fingerprints.save();
        Ok(rows)
    }

    fn execute(
        &mut self,
        p: &Pipeline,
        inst: &Instance,
        parts: KeyParts,
        key: String,
        forced: bool,
    ) -> Result<RunRow, DagError> {
        let _lock = self.store.lock_key(&key)?;
        // Another process may have finished this key while we waited for the lock.
        if !forced && let Some(rec) = self.store.record(&key)? {
            self.store.set_head(&p.name, &inst.name, &key)?;
            return Ok(RunRow {
                outcome: Outcome::Cached,
                outputs: rec.outputs,
                ..skipped(inst)
            });
        }
        let def = self
            .reg
            .get(&inst.stage)
            .ok_or_else(|| DagError::NoSuchStage(inst.stage.clone()))?;
        let fault = std::env::var("ASYMM_FAULT")
            .ok()
            .and_then(|f| {
                f.split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .filter(|(a, _)| a == &inst.name || a == &inst.decl)
            .map(|(_, b)| b);
        let ctx = RunCtx {
            store: self.store,
            instance: inst.name.clone(),
            config: inst.config.clone(),
            inputs: parts.inputs.clone(),
            seed: inst.seed,
            device: self.device.clone(),
            producer: serde_json::json!({
                "stage": inst.stage,
                "version": parts.version,
                "instance": inst.name,
                "pipeline": p.name,
                "config": inst.config,
                "seed": inst.seed,
            }),
            fault: fault.clone(),
            key: key.clone(),
        };
        let t0 = Instant::now();
        let outputs = def.run(&ctx).map_err(|source| DagError::StageFailed {
            stage: inst.name.clone(),
            source,
        })?;
        let duration = t0.elapsed();
        for o in def.outputs() {
            if !outputs.contains_key(o.name) {
                return Err(DagError::MissingOutput {
                    stage: inst.name.clone(),
                    output: o.name.to_string(),
                });
            }
        }
        if fault.as_deref() == Some("before-record") {
            std::process::abort();
        }
        self.store.put_record(&RunRecord {
            key: key.clone(),
            key_parts: serde_json::to_value(&parts).unwrap_or_default(),
            outputs: outputs.clone(),
            duration_ms: duration.as_millis() as u64,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
        })?;
        self.store.set_head(&p.name, &inst.name, &key)?;
        let _ = std::fs::remove_dir_all(ctx.scratch());
        Ok(RunRow {
            outcome: Outcome::Ran,
            duration,
            outputs,
            ..skipped(inst)
        })
    }

    /// Each instance's state without running anything.
    pub fn status(&mut self, p: &Pipeline) -> Result<Vec<StatusRow>, DagError> {
        let rows = self.run(
            p,
            &RunOptions {
                dry_run: true,
                ..Default::default()
            },
        )?;
        let mut out = Vec::new();
        for r in rows {
            let (state, reasons) = match r.outcome {
                Outcome::Cached => ("cached", vec![]),
                Outcome::WouldRun(why) if why == ["never run"] => ("missing", why),
                Outcome::WouldRun(why) => ("stale", why),
                Outcome::Ran | Outcome::Skipped => ("cached", vec![]),
            };
            out.push(StatusRow {
                instance: r.instance,
                stage: r.stage,
                state,
                reasons,
                outputs: r.outputs,
            });
        }
        Ok(out)
    }
}

fn skipped(inst: &Instance) -> RunRow {
    RunRow {
        instance: inst.name.clone(),
        stage: inst.stage.clone(),
        outcome: Outcome::Skipped,
        duration: Duration::ZERO,
        outputs: BTreeMap::new(),
    }
}
