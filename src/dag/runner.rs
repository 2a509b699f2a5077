//! Scheduling and execution: walk instances in topological order, compute each key from its
//! inputs' content ids, reuse cached results, run the rest under a per-key lock, and publish the
//! run record last so a crash loses at most the stage in flight.

use super::externals::Fingerprinter;
use super::key::{KeyParts, Reason, explain};
use super::{DagError, Instance, Pipeline, Registry, RunCtx};
use crate::store::{Remote, RunRecord, Store, StoreError, SyncReport};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

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
    WouldRun(Vec<Reason>),
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
    /// The cache key of the result (that of the run record found or written); `None` while an
    /// upstream result is missing, since the key depends on the inputs' content ids.
    pub key: Option<String>,
}

/// One row of `status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub instance: String,
    pub stage: String,
    /// `cached`, `stale` (ran before, with other key parts) or `missing` (never ran in this
    /// pipeline).
    pub state: &'static str,
    pub reasons: Vec<Reason>,
    pub outputs: BTreeMap<String, String>,
    /// The cache key (see [`RunRow::key`]).
    pub key: Option<String>,
}

/// How a run uses a store remote: results missing here are pulled from it when it has them, and
/// every selected result (computed or found) is pushed to it.
#[derive(Debug, Clone, Copy)]
pub struct RemoteUse<'a> {
    pub remote: &'a Remote,
    pub pull: bool,
    pub push: bool,
}

/// Executes pipelines against a store.
pub struct Runner<'a> {
    pub(super) store: &'a Store,
    reg: &'a dyn Registry,
    device: String,
    fingerprints: Fingerprinter,
    /// Accept a device-sensitive stage's result whatever device computed it (see
    /// [`Runner::any_device`]).
    any_device: bool,
    /// Every readable run record with its key parts and modification time, loaded on first use.
    records: Option<Vec<(SystemTime, RunRecord, KeyParts)>>,
    remote: Option<RemoteUse<'a>>,
    /// What this runner pulled from the remote.
    pulled: SyncReport,
}

pub(super) enum Resolved {
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
            any_device: false,
            records: None,
            remote: None,
            pulled: SyncReport::default(),
        }
    }

    /// Pulls missing results from, and pushes results to, a remote (see [`RemoteUse`]).
    pub fn with_remote(mut self, remote: RemoteUse<'a>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// What the runner pulled from its remote so far.
    pub fn pulled(&self) -> &SyncReport {
        &self.pulled
    }

    /// The remote's record for `key`, pulled into the store, when the run pulls.
    pub(super) fn pull(&mut self, key: &str) -> Result<Option<RunRecord>, DagError> {
        match self.remote {
            Some(r) if r.pull => Ok(r.remote.pull_one(self.store, key, &mut self.pulled)?),
            _ => Ok(None),
        }
    }

    /// Pushes result `key` when the run pushes. A remote that refuses writes (a read-only
    /// credential) is told once and the run goes on pulling only.
    fn push(&mut self, key: &str) -> Result<(), DagError> {
        let Some(r) = self.remote.filter(|r| r.push) else {
            return Ok(());
        };
        match r.remote.push(self.store, &[key.to_string()]) {
            Ok(_) => Ok(()),
            Err(e @ StoreError::RemoteDenied { .. }) => {
                eprintln!("warning: {e}; results stay in this store only");
                self.remote = Some(RemoteUse { push: false, ..r });
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// For looking results up rather than computing them: a device-sensitive stage counts as
    /// cached when a run record matches its key in everything but the device. The instance's
    /// head (its most recent run in this pipeline) is preferred when it matches; otherwise the
    /// most recently written matching record. Everything downstream is then keyed on that
    /// result's artifacts, so `PIPELINE.toml:STAGE` finds what a `--device cuda:0` run produced.
    pub fn any_device(mut self) -> Self {
        self.any_device = true;
        self
    }

    /// Whether `old` equals `parts` but for the device.
    fn same_but_device(old: &KeyParts, parts: &KeyParts) -> bool {
        old.device.is_some()
            && KeyParts {
                device: parts.device.clone(),
                ..old.clone()
            } == *parts
    }

    /// The completed run record for `parts` (whose key is `key`), if any; with `pull`, one
    /// the remote has is pulled.
    fn lookup(
        &mut self,
        pipeline: &str,
        inst: &Instance,
        parts: &KeyParts,
        key: &str,
        pull: bool,
    ) -> Result<Option<RunRecord>, DagError> {
        if !self.any_device || parts.device.is_none() {
            if let Some(rec) = self.store.record(key)? {
                return Ok(Some(rec));
            }
            return if pull { self.pull(key) } else { Ok(None) };
        }
        if let Some(head) = self.store.head(pipeline, &inst.name)?
            && let Some(rec) = self.store.record(&head)?
            && serde_json::from_value::<KeyParts>(rec.key_parts.clone())
                .is_ok_and(|old| Self::same_but_device(&old, parts))
        {
            return Ok(Some(rec));
        }
        if self.records.is_none() {
            let mut all = Vec::new();
            for k in self.store.record_keys()? {
                let (Some(rec), Some(t)) = (self.store.record(&k)?, self.store.record_time(&k)?)
                else {
                    continue;
                };
                if let Ok(kp) = serde_json::from_value::<KeyParts>(rec.key_parts.clone()) {
                    all.push((t, rec, kp));
                }
            }
            self.records = Some(all);
        }
        let found = self
            .records
            .iter()
            .flatten()
            .filter(|(_, _, kp)| Self::same_but_device(kp, parts))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(&b.1.key)))
            .map(|(_, rec, _)| rec.clone());
        match found {
            Some(rec) => Ok(Some(rec)),
            None if pull => self.pull(key),
            None => Ok(None),
        }
    }

    pub(super) fn resolve(
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

    pub(super) fn key_parts(
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
    ) -> Result<Vec<Reason>, DagError> {
        let Some(old_key) = self.store.head(pipeline, &inst.name)? else {
            return Ok(vec![Reason::NeverRun]);
        };
        let Some(old) = self.store.record(&old_key)? else {
            return Ok(vec![Reason::PreviousRemoved]);
        };
        let old_parts: Option<KeyParts> = serde_json::from_value(old.key_parts).ok();
        Ok(match old_parts {
            Some(mut o) => {
                if self.any_device && o.device.is_some() {
                    o.device.clone_from(&parts.device);
                }
                let r = explain(&o, parts);
                if r.is_empty() {
                    vec![Reason::Forced]
                } else {
                    r
                }
            }
            None => vec![Reason::PreviousUnreadable],
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

    /// The instances upstream of `selected` (not themselves selected).
    fn ancestors(p: &Pipeline, selected: &BTreeSet<String>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = selected.iter().collect();
        while let Some(n) = stack.pop() {
            if let Some(i) = p.instances.iter().find(|i| &i.name == n) {
                for (up, _) in i.inputs.values() {
                    if !selected.contains(up) && seen.insert(up.clone()) {
                        stack.push(up);
                    }
                }
            }
        }
        seen
    }

    /// Runs (or with `dry_run`, plans) the pipeline.
    pub fn run(&mut self, p: &Pipeline, opts: &RunOptions) -> Result<Vec<RunRow>, DagError> {
        let selected = Self::selection(p, opts)?;
        // A selected instance's inputs may be on the remote only (a job on a node with a store
        // of its own): its ancestors' results are pulled too, never computed.
        let upstream = Self::ancestors(p, &selected);
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
                            outcome: Outcome::WouldRun(vec![Reason::UpstreamPending {
                                input,
                                upstream: up,
                            }]),
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
                let pull = is_sel || upstream.contains(&inst.name);
                self.lookup(&p.name, inst, &parts, &key, pull)?
            };
            if let Some(rec) = cached {
                results.insert(inst.name.clone(), rec.outputs.clone());
                if is_sel && !opts.dry_run {
                    self.store.set_head(&p.name, &inst.name, &rec.key)?;
                    self.push(&rec.key)?;
                }
                rows.push(RunRow {
                    outcome: if is_sel {
                        Outcome::Cached
                    } else {
                        Outcome::Skipped
                    },
                    outputs: rec.outputs,
                    key: Some(rec.key),
                    ..skipped(inst)
                });
                continue;
            }
            if !is_sel {
                rows.push(RunRow {
                    key: Some(key),
                    ..skipped(inst)
                });
                continue;
            }
            if opts.dry_run {
                let mut why = self.why(&p.name, inst, &parts)?;
                if forced {
                    why.insert(0, Reason::Forced);
                    why.dedup();
                }
                rows.push(RunRow {
                    outcome: Outcome::WouldRun(why),
                    key: Some(key),
                    ..skipped(inst)
                });
                continue;
            }
            // Inputs discarded by retention are recomputed first; on a device whose results
            // are not bit-identical the recomputed ids may differ, and with them this key.
            let ids = parts.inputs.clone();
            let (parts, key) = if self.restore_inputs(p, &mut results, &ids)? {
                let Resolved::Ready(inputs) = self.resolve(inst, &results) else {
                    return Err(DagError::NotComputed {
                        stage: inst.name.clone(),
                        upstream: String::new(),
                    });
                };
                let parts = self.key_parts(inst, inputs)?;
                let key = parts.key();
                (parts, key)
            } else {
                (parts, key)
            };
            let row = self.execute(p, inst, parts, key, forced)?;
            if let Some(k) = &row.key {
                self.push(k)?;
            }
            results.insert(inst.name.clone(), row.outputs.clone());
            rows.push(row);
            // What this stage was the last to read may go now, not at the end of the run.
            let producers: BTreeSet<&str> = inst.inputs.values().map(|(u, _)| u.as_str()).collect();
            self.discard_consumed(p, &results, Some(&producers))?;
        }
        self.fingerprints.save();
        if !opts.dry_run {
            self.discard_consumed(p, &results, None)?;
        }
        Ok(rows)
    }

    pub(super) fn execute(
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
                key: Some(key),
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
            sources: inst
                .inputs
                .iter()
                .map(|(name, (up, _))| (name.clone(), up.clone()))
                .collect(),
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
            eprintln!(
                "ASYMM_FAULT: aborting `{}` before its run record",
                inst.name
            );
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
            key: Some(key),
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
                Outcome::WouldRun(why) if why == [Reason::NeverRun] => ("missing", why),
                // Waiting on upstream: missing if it never ran, stale if it did.
                Outcome::WouldRun(why)
                    if matches!(why[..], [Reason::UpstreamPending { .. }])
                        && self.store.head(&p.name, &r.instance)?.is_none() =>
                {
                    ("missing", why)
                }
                Outcome::WouldRun(why) => ("stale", why),
                Outcome::Ran | Outcome::Skipped => ("cached", vec![]),
            };
            out.push(StatusRow {
                instance: r.instance,
                stage: r.stage,
                state,
                reasons,
                outputs: r.outputs,
                key: r.key,
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
        key: None,
    }
}

#[cfg(test)]
mod tests;
