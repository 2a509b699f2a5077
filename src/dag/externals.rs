//! Fingerprints of files outside the store that a stage reads (for example a downloaded dataset).
//! The blake3 of each file is memoized by (path, size, mtime) so a no-op run hashes nothing large.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Memo {
    files: BTreeMap<String, (u64, u128, String)>,
}

/// Fingerprints paths (files, or directories walked recursively); absent paths give "absent".
pub struct Fingerprinter {
    memo_path: PathBuf,
    memo: Memo,
    dirty: bool,
}

impl Fingerprinter {
    pub fn new(store_root: &Path) -> Self {
        let memo_path = store_root.join("refs").join("externals-memo.json");
        let memo = fs::read(&memo_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Fingerprinter {
            memo_path,
            memo,
            dirty: false,
        }
    }

    /// Fingerprint of one path.
    pub fn fingerprint(&mut self, path: &Path) -> String {
        let mut files = Vec::new();
        collect(path, &mut files);
        if files.is_empty() {
            return "absent".to_string();
        }
        files.sort();
        let mut h = blake3::Hasher::new();
        for f in files {
            let rel = f
                .strip_prefix(path)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(self.file_hash(&f).as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    fn file_hash(&mut self, f: &Path) -> String {
        let key = f.to_string_lossy().into_owned();
        let meta = fs::metadata(f).ok();
        let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        if let Some((s, t, h)) = self.memo.files.get(&key)
            && *s == size
            && *t == mtime
        {
            return h.clone();
        }
        let h = fs::read(f)
            .map(|b| blake3::hash(&b).to_hex().to_string())
            .unwrap_or_else(|_| "unreadable".to_string());
        self.memo.files.insert(key, (size, mtime, h.clone()));
        self.dirty = true;
        h
    }

    /// Saves the memo (best effort: it is only a cache).
    pub fn save(&self) {
        if self.dirty
            && let Ok(b) = serde_json::to_vec(&self.memo)
        {
            let _ = crate::util::fsx::write_atomic(&self.memo_path, &b);
        }
    }
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    let Ok(meta) = fs::metadata(p) else { return };
    if meta.is_file() {
        out.push(p.to_path_buf());
    } else if meta.is_dir()
        && let Ok(rd) = fs::read_dir(p)
    {
        for e in rd.flatten() {
            collect(&e.path(), out);
        }
    }
}
