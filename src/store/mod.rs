//! The content-addressed artifact store.
//!
//! Layout under the store root:
//! ```text
//! objects/<id>/manifest.json + data files   one immutable artifact, id = blake3 of its content
//! records/<key>.json                        run record: a cache key and the artifacts it produced
//! refs/heads/<pipeline>/<instance>.json     the key an instance last ran with (for "why stale")
//! refs/tags/<name>.json                     named roots kept by `gc`
//! discarded/<id>                            tombstone of an artifact removed by retention: its
//!                                           run records stay valid, and the runner recomputes it
//!                                           when a stage that must run needs it
//! locks/<key>.lock                          OS file locks, one per cache key
//! tmp/                                      staging area; anything here is garbage after a crash
//! ```
//! The store knows nothing of stages or models: it stores directories of files, hashes them once at
//! write time, verifies them on read and keeps lineage (which artifacts an artifact was made from).

mod bundle;
mod gc;
mod object;
mod record;
mod remote;

pub use bundle::{BundleReport, export_bundle, import_bundle};
pub use gc::GcReport;
pub use object::{ArtifactWriter, FileEntry, Manifest};
pub use record::{KeyLock, RunRecord};
pub use remote::{Remote, RemoteSpec, Remotes, SyncReport};

use std::fs;
use std::path::{Path, PathBuf};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact {0} is not in the store")]
    Missing(String),
    #[error(
        "artifact {0} was discarded by a retention setting (`keep_every`); `asymm run` recomputes it when a stage needs it"
    )]
    Discarded(String),
    #[error("artifact {id} has no file named `{name}`")]
    MissingFile { id: String, name: String },
    #[error("artifact {id} is corrupt: {what}")]
    Corrupt { id: String, what: String },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid name `{0}`: use letters, digits, '-', '_', '.', '@', '=', '[', ']' and ','")]
    BadName(String),
    #[error("bundle rejected: {0}")]
    Bundle(String),
    #[error("remote: {0}")]
    RemoteConfig(String),
    #[error("remote `{remote}`: cannot {op} `{path}`: {source}")]
    Remote {
        remote: String,
        op: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error(
        "remote `{remote}` refused to {op} `{path}` (a read-only credential can pull but not push): {source}"
    )]
    RemoteDenied {
        remote: String,
        op: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("remote `{remote}`: artifact {id} is corrupt: {what}")]
    RemoteCorrupt {
        remote: String,
        id: String,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A handle on a store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

const DIRS: &[&str] = &[
    "objects",
    "records",
    "refs/heads",
    "refs/tags",
    "locks",
    "tmp",
    "discarded",
];

impl Store {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in DIRS {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn object_dir(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(id)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Whether artifact `id` is present (its manifest exists).
    pub fn has(&self, id: &str) -> bool {
        is_hex64(id) && self.object_dir(id).join("manifest.json").is_file()
    }

    fn tombstone(&self, id: &str) -> PathBuf {
        self.root.join("discarded").join(id)
    }

    /// Whether artifact `id` was removed by [`Store::discard`] (and not written again since).
    pub fn is_discarded(&self, id: &str) -> bool {
        is_hex64(id) && !self.has(id) && self.tombstone(id).is_file()
    }

    /// Records that artifact `id` was discarded elsewhere (a bundle's tombstone).
    pub(crate) fn put_tombstone(&self, id: &str) -> Result<()> {
        let t = self.tombstone(id);
        if let Some(dir) = t.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        fs::write(&t, b"").map_err(io_err(&t))
    }

    /// Removes artifact `id`, leaving a tombstone so that the run records naming it stay valid
    /// (`gc` keeps them) and a stage needing it can have it recomputed. Returns the bytes
    /// freed; discarding an absent artifact frees nothing.
    pub fn discard(&self, id: &str) -> Result<u64> {
        if !self.has(id) {
            return Ok(0);
        }
        let t = self.tombstone(id);
        fs::write(&t, b"").map_err(io_err(&t))?;
        self.remove_object(id)
    }

    /// Removes an object directory (manifest first, so a crash never leaves a half-object that
    /// looks valid); returns its size.
    pub(crate) fn remove_object(&self, id: &str) -> Result<u64> {
        let dir = self.object_dir(id);
        let bytes = gc::dir_size(&dir);
        let m = dir.join("manifest.json");
        fs::remove_file(&m).map_err(io_err(&m))?;
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(bytes)
    }

    /// All artifact ids present in the store, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        list_names(&self.root.join("objects"), |n| {
            is_hex64(n).then(|| n.to_string())
        })
    }
}

/// Whether `s` is a 64-character lowercase hex string (a blake3 digest).
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a user-facing name (tag, pipeline, instance) is safe as a single path component.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@=[],".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

pub(crate) fn list_names<F: Fn(&str) -> Option<String>>(dir: &Path, f: F) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        if let Some(n) = e.file_name().to_str().and_then(&f) {
            out.push(n);
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    crate::util::fsx::write_atomic(path, &bytes).map_err(io_err(path))
}
