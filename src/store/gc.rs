//! Garbage collection: keep every artifact reachable (through lineage) from the roots — the
//! outputs of every pipeline head and every tag — and delete the rest, with records that pointed
//! at deleted artifacts and stale temporary files. Records whose outputs were discarded by
//! retention stay: the runner recomputes such outputs when they are needed.

use super::{Result, Store};
use std::collections::BTreeSet;
use std::fs;

/// What `gc` removed and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub kept: usize,
    pub removed: Vec<String>,
    pub records_removed: usize,
    pub bytes_freed: u64,
}

impl Store {
    /// The ids reachable from `roots` through manifests' lineage.
    pub fn closure(&self, roots: &[String]) -> Result<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = roots.to_vec();
        while let Some(id) = stack.pop() {
            if !self.has(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let m = self.manifest(&id)?;
            stack.extend(m.lineage.values().cloned());
        }
        Ok(seen)
    }

    /// The gc roots: outputs of every head record, and every tag.
    pub fn roots(&self) -> Result<Vec<String>> {
        let mut roots = Vec::new();
        for key in self.all_heads()? {
            if let Some(r) = self.record(&key)? {
                roots.extend(r.outputs.values().cloned());
            }
        }
        for ids in self.tags()?.into_values() {
            roots.extend(ids);
        }
        Ok(roots)
    }

    /// Removes everything not reachable from [`Store::roots`]. With `dry_run`, only reports.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let keep = self.closure(&self.roots()?)?;
        let mut report = GcReport::default();
        for id in self.list()? {
            if keep.contains(&id) {
                report.kept += 1;
                continue;
            }
            if dry_run {
                report.bytes_freed += dir_size(&self.object_dir(&id));
            } else {
                report.bytes_freed += self.remove_object(&id)?;
            }
            report.removed.push(id);
        }
        for key in self.record_keys()? {
            let p = self.root().join("records").join(format!("{key}.json"));
            let r: super::RunRecord = super::read_json(&p)?;
            // A discarded output (retention) can be recomputed from the record: keep it.
            if r.outputs
                .values()
                .any(|id| !keep.contains(id) && !self.is_discarded(id))
            {
                report.records_removed += 1;
                if !dry_run {
                    self.remove_record(&key)?;
                }
            }
        }
        if !dry_run {
            // Staging leftovers from crashed writers. Live writers in other processes would lose
            // their staging directory, so only entries older than an hour are removed.
            let tmp = self.tmp_dir();
            if let Ok(rd) = fs::read_dir(&tmp) {
                for e in rd.flatten() {
                    let old = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age.as_secs() > 3600);
                    if old {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        Ok(report)
    }
}

pub(crate) fn dir_size(dir: &std::path::Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
