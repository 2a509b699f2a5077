//! Run records (cache key → produced artifacts), refs (heads and tags) and per-key locks.
//!
//! A run record is published only after all of its artifacts are committed, so its presence means
//! the cached result is complete. Locks are OS file locks, released by the kernel if the holder dies.

use super::{
    Result, Store, StoreError, check_name, io_err, is_hex64, list_names, read_json, write_json,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};

/// What one execution of a keyed computation produced, and what went into its key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub key: String,
    /// The parts the key was hashed from (a JSON object), kept to explain staleness.
    pub key_parts: serde_json::Value,
    /// Output name → artifact id.
    pub outputs: BTreeMap<String, String>,
    pub duration_ms: u64,
    pub tool_version: String,
}

/// An exclusive lock on one cache key; released on drop (or by the kernel on a crash).
pub struct KeyLock {
    _file: File,
}

impl Store {
    /// The record for `key`, if that computation has completed.
    pub fn record(&self, key: &str) -> Result<Option<RunRecord>> {
        if !is_hex64(key) {
            return Ok(None);
        }
        let p = self.root().join("records").join(format!("{key}.json"));
        if !p.is_file() {
            return Ok(None);
        }
        let r: RunRecord = read_json(&p)?;
        // A record whose outputs were collected away is no cache hit; outputs discarded by
        // retention are recomputed when needed (see the runner).
        if r.outputs
            .values()
            .all(|id| self.has(id) || self.is_discarded(id))
        {
            Ok(Some(r))
        } else {
            Ok(None)
        }
    }

    /// Publishes a record (after its outputs are committed).
    pub fn put_record(&self, r: &RunRecord) -> Result<()> {
        if !is_hex64(&r.key) {
            return Err(StoreError::BadName(r.key.clone()));
        }
        write_json(
            &self.root().join("records").join(format!("{}.json", r.key)),
            r,
        )
    }

    /// When the record for `key` was written (`None` if there is no such record).
    pub fn record_time(&self, key: &str) -> Result<Option<std::time::SystemTime>> {
        if !is_hex64(key) {
            return Ok(None);
        }
        let p = self.root().join("records").join(format!("{key}.json"));
        match fs::metadata(&p) {
            Ok(m) => m.modified().map(Some).map_err(io_err(&p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Every record key in the store.
    pub fn record_keys(&self) -> Result<Vec<String>> {
        list_names(&self.root().join("records"), |n| {
            n.strip_suffix(".json")
                .filter(|k| is_hex64(k))
                .map(str::to_string)
        })
    }

    pub(crate) fn remove_record(&self, key: &str) -> Result<()> {
        let p = self.root().join("records").join(format!("{key}.json"));
        fs::remove_file(&p).map_err(io_err(&p))
    }

    /// Blocks until this process holds the lock for `key`.
    pub fn lock_key(&self, key: &str) -> Result<KeyLock> {
        if !is_hex64(key) {
            return Err(StoreError::BadName(key.to_string()));
        }
        let p = self.root().join("locks").join(format!("{key}.lock"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        Ok(KeyLock { _file: f })
    }

    fn head_path(&self, pipeline: &str, instance: &str) -> Result<std::path::PathBuf> {
        check_name(pipeline)?;
        check_name(instance)?;
        Ok(self
            .root()
            .join("refs/heads")
            .join(pipeline)
            .join(format!("{instance}.json")))
    }

    /// Sets the head of `instance` in `pipeline` to `key`.
    pub fn set_head(&self, pipeline: &str, instance: &str, key: &str) -> Result<()> {
        let p = self.head_path(pipeline, instance)?;
        write_json(&p, &serde_json::json!({ "key": key }))
    }

    /// The key `instance` of `pipeline` last ran with.
    pub fn head(&self, pipeline: &str, instance: &str) -> Result<Option<String>> {
        let p = self.head_path(pipeline, instance)?;
        if !p.is_file() {
            return Ok(None);
        }
        let v: serde_json::Value = read_json(&p)?;
        Ok(v.get("key").and_then(|k| k.as_str()).map(str::to_string))
    }

    /// Every head key, across all pipelines.
    pub fn all_heads(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let base = self.root().join("refs/heads");
        for pipeline in list_names(&base, |n| Some(n.to_string()))? {
            for inst in list_names(&base.join(&pipeline), |n| {
                n.strip_suffix(".json").map(str::to_string)
            })? {
                if let Some(k) = self.head(&pipeline, &inst)? {
                    keys.push(k);
                }
            }
        }
        Ok(keys)
    }

    /// Names artifacts as a gc root.
    pub fn set_tag(&self, name: &str, ids: &[String]) -> Result<()> {
        check_name(name)?;
        for id in ids {
            if !self.has(id) {
                return Err(StoreError::Missing(id.clone()));
            }
        }
        write_json(
            &self.root().join("refs/tags").join(format!("{name}.json")),
            &serde_json::json!({ "artifacts": ids }),
        )
    }

    /// All tags with their artifact ids.
    pub fn tags(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let dir = self.root().join("refs/tags");
        let mut out = BTreeMap::new();
        for name in list_names(&dir, |n| n.strip_suffix(".json").map(str::to_string))? {
            let v: serde_json::Value = read_json(&dir.join(format!("{name}.json")))?;
            let ids = v
                .get("artifacts")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            out.insert(name, ids);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_need_their_outputs() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let s = Store::open(d.path()).unwrap();
        let key = "a".repeat(64);
        let rec = RunRecord {
            key: key.clone(),
            key_parts: serde_json::json!({}),
            outputs: [("main".to_string(), "b".repeat(64))].into(),
            duration_ms: 1,
            tool_version: "t".into(),
        };
        s.put_record(&rec).unwrap();
        assert!(s.record(&key).unwrap().is_none(), "output missing → no hit");
        let _l = s.lock_key(&key).unwrap();
        s.set_head("p", "stage[x=1]", &key).unwrap();
        assert_eq!(s.head("p", "stage[x=1]").unwrap(), Some(key.clone()));
        assert!(s.set_head("../x", "s", &key).is_err());
    }
}
