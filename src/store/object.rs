//! Immutable artifacts: a directory of files plus a manifest, named by the blake3 of its content.
//! Files are hashed once, while they are written; reads re-hash and compare, so a flipped byte is
//! an error naming the artifact and file rather than silently wrong data.

use super::{Result, Store, StoreError, io_err, read_json, write_json};
use crate::util::fsx;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One file of an artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub blake3: String,
    pub bytes: u64,
}

/// An artifact's manifest (`objects/<id>/manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Content id: blake3 over kind and the (name, size, hash) of every file.
    pub id: String,
    /// Artifact kind (names a schema for tabular artifacts).
    pub kind: String,
    pub schema_version: u32,
    /// Row count for tabular artifacts.
    pub rows: Option<u64>,
    pub files: Vec<FileEntry>,
    /// Artifacts this one was computed from (input name → id): its lineage.
    pub lineage: BTreeMap<String, String>,
    /// Free-form description of the producer (stage, config…), opaque to the store.
    pub producer: serde_json::Value,
}

/// The content id of a set of files of a given kind.
pub fn content_id(kind: &str, files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = blake3::Hasher::new();
    h.update(b"asymm-artifact-v1\0");
    h.update(kind.as_bytes());
    h.update(b"\0");
    for f in sorted {
        h.update(f.name.as_bytes());
        h.update(b"\0");
        h.update(&f.bytes.to_le_bytes());
        h.update(f.blake3.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

pub(crate) fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "manifest.json"
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// Stages a new artifact in `tmp/`; nothing is visible in the store until [`ArtifactWriter::commit`].
pub struct ArtifactWriter {
    store: Store,
    dir: PathBuf,
    kind: String,
    schema_version: u32,
    files: Vec<FileEntry>,
    committed: bool,
}

/// A `Write` that hashes while writing.
pub struct HashingFile {
    inner: BufWriter<File>,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// Starts a new artifact of `kind`.
    pub fn writer(&self, kind: &str, schema_version: u32) -> Result<ArtifactWriter> {
        let dir = self
            .tmp_dir()
            .join(format!("w-{}-{}", std::process::id(), fsx::unique()));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(ArtifactWriter {
            store: self.clone(),
            dir,
            kind: kind.to_string(),
            schema_version,
            files: Vec::new(),
            committed: false,
        })
    }

    /// Reads an artifact's manifest.
    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        if !super::is_hex64(id) {
            return Err(StoreError::Missing(id.to_string()));
        }
        let p = self.object_dir(id).join("manifest.json");
        if !p.is_file() {
            if self.is_discarded(id) {
                return Err(StoreError::Discarded(id.to_string()));
            }
            return Err(StoreError::Missing(id.to_string()));
        }
        let m: Manifest = read_json(&p)?;
        if m.id != id {
            return Err(StoreError::Corrupt {
                id: id.to_string(),
                what: format!("manifest names id {}", m.id),
            });
        }
        Ok(m)
    }

    /// Reads one file of an artifact, verifying its size and hash against the manifest.
    pub fn read_file(&self, id: &str, name: &str) -> Result<Vec<u8>> {
        let m = self.manifest(id)?;
        let entry =
            m.files
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| StoreError::MissingFile {
                    id: id.to_string(),
                    name: name.to_string(),
                })?;
        let p = self.object_dir(id).join(name);
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        check_entry(id, entry, &bytes)?;
        Ok(bytes)
    }

    /// Path of one file of an artifact, after verifying it (for readers that want a path).
    pub fn verified_path(&self, id: &str, name: &str) -> Result<PathBuf> {
        self.read_file(id, name)?;
        Ok(self.object_dir(id).join(name))
    }

    /// Re-hashes every file of artifact `id` and checks the content id.
    pub fn verify(&self, id: &str) -> Result<()> {
        let m = self.manifest(id)?;
        for f in &m.files {
            let p = self.object_dir(id).join(&f.name);
            let bytes = fs::read(&p).map_err(|_| StoreError::Corrupt {
                id: id.to_string(),
                what: format!("file `{}` is missing", f.name),
            })?;
            check_entry(id, f, &bytes)?;
        }
        let cid = content_id(&m.kind, &m.files);
        if cid != id {
            return Err(StoreError::Corrupt {
                id: id.to_string(),
                what: format!("manifest describes content {cid}"),
            });
        }
        Ok(())
    }
}

impl Store {
    /// Moves a verified artifact folder (manifest and files) into `objects/<id>`; `false` when
    /// the store had that artifact already.
    pub(crate) fn publish_dir(&self, from: &Path, id: &str) -> Result<bool> {
        if self.has(id) {
            return Ok(false);
        }
        let to = self.object_dir(id);
        match fs::rename(from, &to) {
            Ok(()) => Ok(true),
            // Another writer published the same content first.
            Err(_) if self.has(id) => Ok(false),
            Err(e) => Err(io_err(&to)(e)),
        }
    }
}

fn check_entry(id: &str, entry: &FileEntry, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != entry.bytes {
        return Err(StoreError::Corrupt {
            id: id.to_string(),
            what: format!(
                "file `{}` has {} bytes, manifest says {}",
                entry.name,
                bytes.len(),
                entry.bytes
            ),
        });
    }
    let h = blake3::hash(bytes).to_hex().to_string();
    if h != entry.blake3 {
        return Err(StoreError::Corrupt {
            id: id.to_string(),
            what: format!("file `{}` does not match its hash", entry.name),
        });
    }
    Ok(())
}

impl ArtifactWriter {
    /// The staging directory (for writers that produce files themselves, then call [`Self::adopt`]).
    pub fn staging_dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a file from memory.
    pub fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut f = self.create(name)?;
        f.write_all(bytes).map_err(io_err(&self.dir))?;
        self.finish(name, f)
    }

    /// Creates a file to stream into; call [`Self::finish`] when done.
    pub fn create(&mut self, name: &str) -> Result<HashingFile> {
        check_file_name(name)?;
        if self.files.iter().any(|f| f.name == name) {
            return Err(StoreError::BadName(format!("{name} (written twice)")));
        }
        let p = self.dir.join(name);
        let f = File::create(&p).map_err(io_err(&p))?;
        Ok(HashingFile {
            inner: BufWriter::new(f),
            hasher: blake3::Hasher::new(),
            bytes: 0,
        })
    }

    /// Flushes and fsyncs a streamed file and records its hash.
    pub fn finish(&mut self, name: &str, f: HashingFile) -> Result<()> {
        let HashingFile {
            inner,
            hasher,
            bytes,
        } = f;
        let file = inner
            .into_inner()
            .map_err(|e| io_err(&self.dir)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.dir))?;
        self.files.push(FileEntry {
            name: name.to_string(),
            blake3: hasher.finalize().to_hex().to_string(),
            bytes,
        });
        Ok(())
    }

    /// Adds a file that something else wrote into the staging directory (hashes it once).
    pub fn adopt(&mut self, name: &str) -> Result<()> {
        check_file_name(name)?;
        let p = self.dir.join(name);
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&p))?;
        self.files.push(FileEntry {
            name: name.to_string(),
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            bytes: bytes.len() as u64,
        });
        Ok(())
    }

    /// Publishes the artifact: writes its manifest and renames the staging directory into
    /// `objects/<id>`. Returns the id. Identical content already present is reused.
    pub fn commit(
        mut self,
        rows: Option<u64>,
        lineage: BTreeMap<String, String>,
        producer: serde_json::Value,
    ) -> Result<String> {
        self.files.sort_by(|a, b| a.name.cmp(&b.name));
        let id = content_id(&self.kind, &self.files);
        let manifest = Manifest {
            id: id.clone(),
            kind: self.kind.clone(),
            schema_version: self.schema_version,
            rows,
            files: self.files.clone(),
            lineage,
            producer,
        };
        write_json(&self.dir.join("manifest.json"), &manifest)?;
        fsx::sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        let target = self.store.object_dir(&id);
        if self.store.has(&id) {
            self.committed = true;
            let _ = fs::remove_dir_all(&self.dir);
            return Ok(id);
        }
        match fs::rename(&self.dir, &target) {
            Ok(()) => {}
            // Another writer published the same content first.
            Err(_) if self.store.has(&id) => {
                let _ = fs::remove_dir_all(&self.dir);
            }
            Err(e) => return Err(io_err(&target)(e)),
        }
        self.committed = true;
        let objects = self.store.root().join("objects");
        fsx::sync_dir(&objects).map_err(io_err(&objects))?;
        Ok(id)
    }
}

impl Drop for ArtifactWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_detect_corruption() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut w = s.writer("blob", 1).unwrap();
        w.add_bytes("data.bin", b"hello world").unwrap();
        let id = w
            .commit(None, BTreeMap::new(), serde_json::Value::Null)
            .unwrap();
        assert!(s.has(&id));
        assert_eq!(s.read_file(&id, "data.bin").unwrap(), b"hello world");
        s.verify(&id).unwrap();

        // Same content, same id.
        let mut w = s.writer("blob", 1).unwrap();
        w.add_bytes("data.bin", b"hello world").unwrap();
        let id2 = w
            .commit(Some(3), BTreeMap::new(), serde_json::Value::Null)
            .unwrap();
        assert_eq!(id, id2);

        // Flip a byte.
        let p = s.object_dir(&id).join("data.bin");
        fs::write(&p, b"hello worle").unwrap();
        assert!(matches!(s.verify(&id), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            s.read_file(&id, "data.bin"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn uncommitted_writer_leaves_nothing() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let s = Store::open(d.path()).unwrap();
        {
            let mut w = s.writer("blob", 1).unwrap();
            w.add_bytes("x", b"1").unwrap();
        }
        assert!(s.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }
}
