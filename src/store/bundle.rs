//! Bundles: one tar file holding chosen artifacts, everything upstream of them, and the run records
//! that produced them, so a collaborator who imports it gets cache hits for the same pipeline.
//!
//! Import is defensive: only regular files at the exact paths a bundle may contain are accepted
//! (no links, no `..`, no absolute paths, no unexpected names); every file is re-hashed against its
//! manifest and every manifest against its id before anything is published. A rejected bundle
//! leaves the store as it was.

use super::{Result, RunRecord, Store, StoreError, io_err, is_hex64, object::Manifest, read_json};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path};

/// Summary of an export or import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleReport {
    pub artifacts: usize,
    pub records: usize,
    pub bytes: u64,
    /// Artifacts already present (import only).
    pub already_present: usize,
}

const MAX_ENTRY_BYTES: u64 = 16 << 30;

fn bundle_err(msg: impl Into<String>) -> StoreError {
    StoreError::Bundle(msg.into())
}

/// The artifact ids a run read, from its record's key parts (`inputs`: name → id).
pub(super) fn record_inputs(r: &RunRecord) -> impl Iterator<Item = String> + '_ {
    r.key_parts
        .get("inputs")
        .and_then(|v| v.as_object())
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|v| v.as_str().map(String::from))
}

/// Writes `roots` and their lineage, plus matching run records, to the tar file `out`.
pub fn export_bundle(store: &Store, roots: &[String], out: &Path) -> Result<BundleReport> {
    for r in roots {
        if !store.has(r) {
            return Err(StoreError::Missing(r.clone()));
        }
    }
    // The roots' lineage, grown to whole runs: a run record is a cache hit only when every one of
    // its outputs is there (a training run's timing table, an RL step's optimizer state, an
    // evaluation's per-item table), so each run that produced an exported artifact brings all
    // of its outputs and their lineage.
    let mut all = Vec::new();
    for key in store.record_keys()? {
        if let Some(r) = store.record(&key)?
            && !r.outputs.is_empty()
        {
            all.push(r);
        }
    }
    // A run's inputs come from its record's key, not only from its outputs' manifests: an
    // artifact two runs produced alike carries the first run's manifest, and so its lineage.
    let mut ids = store.closure(roots)?;
    loop {
        let mut more = Vec::new();
        for r in &all {
            if r.outputs.values().any(|id| ids.contains(id)) {
                more.extend(
                    r.outputs
                        .values()
                        .cloned()
                        .chain(record_inputs(r))
                        .filter(|id| !ids.contains(id) && store.has(id)),
                );
            }
        }
        if more.is_empty() {
            break;
        }
        ids.extend(store.closure(&more)?);
    }
    // Outputs discarded after use travel as tombstones, so their records stay cache hits.
    let gone = |id: &String| !ids.contains(id) && store.is_discarded(id);
    let records: Vec<RunRecord> = all
        .into_iter()
        .filter(|r| {
            r.outputs.values().any(|id| ids.contains(id))
                && r.outputs.values().all(|id| ids.contains(id) || gone(id))
        })
        .collect();
    let mut tombstones: BTreeSet<String> = records
        .iter()
        .flat_map(|r| r.outputs.values())
        .filter(|id| gone(id))
        .cloned()
        .collect();
    for id in &ids {
        for up in store.manifest(id)?.lineage.values() {
            if gone(up) {
                tombstones.insert(up.clone());
            }
        }
    }
    for r in &records {
        tombstones.extend(record_inputs(r).filter(|id| gone(id)));
    }
    let tmp = out.with_extension(format!("partial-{}", std::process::id()));
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut tar = tar::Builder::new(file);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut report = BundleReport::default();
    let index = serde_json::json!({
        "format": "asymm-bundle-v1",
        "roots": roots,
        "artifacts": ids,
        "records": records.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        "discarded": tombstones,
    });
    append(
        &mut tar,
        "bundle.json",
        &serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )?;
    for id in &ids {
        store.verify(id)?;
        let m = store.manifest(id)?;
        let dir = store.object_dir(id);
        for name in std::iter::once("manifest.json".to_string())
            .chain(m.files.iter().map(|f| f.name.clone()))
        {
            let p = dir.join(&name);
            let bytes = fs::read(&p).map_err(io_err(&p))?;
            report.bytes += bytes.len() as u64;
            append(&mut tar, &format!("objects/{id}/{name}"), &bytes)?;
        }
        report.artifacts += 1;
    }
    for id in &tombstones {
        append(&mut tar, &format!("discarded/{id}"), b"")?;
    }
    for r in &records {
        let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
        append(&mut tar, &format!("records/{}.json", r.key), &bytes)?;
        report.records += 1;
    }
    let file = tar.into_inner().map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(report)
}

fn append(tar: &mut tar::Builder<File>, path: &str, bytes: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, bytes)
        .map_err(|e| bundle_err(format!("cannot write `{path}`: {e}")))
}

/// Where an accepted bundle entry goes.
enum Slot {
    Index,
    Object(String, String),
    Record(String),
    /// An artifact discarded after use in the exporting store.
    Tombstone(String),
}

/// Where the entry at `path` goes; a path outside the bundle's layout rejects the bundle.
fn classify(path: &Path) -> Result<Slot> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| bundle_err(format!("non-UTF-8 path {}", path.display())))?
                    .to_string(),
            ),
            Component::CurDir => {}
            _ => return Err(bundle_err(format!("unsafe path `{}`", path.display()))),
        }
    }
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["bundle.json"] => Ok(Slot::Index),
        ["objects", id, name] if is_hex64(id) && safe_file(name) => {
            Ok(Slot::Object(id.to_string(), name.to_string()))
        }
        ["discarded", id] if is_hex64(id) => Ok(Slot::Tombstone(id.to_string())),
        ["records", f] => match f.strip_suffix(".json") {
            Some(k) if is_hex64(k) => Ok(Slot::Record(k.to_string())),
            _ => Err(bundle_err(format!("unexpected path `{}`", path.display()))),
        },
        _ => Err(bundle_err(format!("unexpected path `{}`", path.display()))),
    }
}

fn safe_file(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Imports the bundle at `path` into `store`, verifying everything first.
pub fn import_bundle(store: &Store, path: &Path) -> Result<BundleReport> {
    let stage = store.tmp_dir().join(format!(
        "import-{}-{}",
        std::process::id(),
        crate::util::fsx::unique()
    ));
    fs::create_dir_all(&stage).map_err(io_err(&stage))?;
    let result = import_staged(store, path, &stage);
    let _ = fs::remove_dir_all(&stage);
    result
}

fn import_staged(store: &Store, path: &Path, stage: &Path) -> Result<BundleReport> {
    let staged = Staged::unpack(path, stage)?;
    let records = staged.verify(store, stage)?;
    staged.publish(store, stage, &records)
}

/// A bundle's entries written under a staging folder, not yet in the store.
#[derive(Default)]
struct Staged {
    /// Artifact id → its file names.
    objects: BTreeMap<String, BTreeSet<String>>,
    /// Run-record keys, in the bundle's order.
    records: Vec<String>,
    tombstones: BTreeSet<String>,
    saw_index: bool,
    bytes: u64,
}

impl Staged {
    /// Writes the entries of the bundle at `path` under `stage`, refusing anything but regular
    /// files of the bundle's layout, duplicates and oversized entries.
    fn unpack(path: &Path, stage: &Path) -> Result<Staged> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut archive = tar::Archive::new(file);
        let mut st = Staged::default();
        let entries = archive
            .entries()
            .map_err(|e| bundle_err(format!("not a tar file: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bundle_err(format!("unreadable entry: {e}")))?;
            let kind = entry.header().entry_type();
            let epath = entry
                .path()
                .map_err(|e| bundle_err(format!("bad entry path: {e}")))?
                .into_owned();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                return Err(bundle_err(format!(
                    "entry `{}` is not a regular file (links and devices are refused)",
                    epath.display()
                )));
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > MAX_ENTRY_BYTES {
                return Err(bundle_err(format!(
                    "entry `{}` is too large",
                    epath.display()
                )));
            }
            let slot = classify(&epath)?;
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bundle_err(format!("truncated entry `{}`: {e}", epath.display())))?;
            st.bytes += bytes.len() as u64;
            let dest = match &slot {
                Slot::Index => {
                    st.saw_index = true;
                    continue;
                }
                Slot::Tombstone(id) => {
                    if !bytes.is_empty() || !st.tombstones.insert(id.clone()) {
                        return Err(bundle_err(format!("bad tombstone `{}`", epath.display())));
                    }
                    continue;
                }
                Slot::Object(id, name) => {
                    if !st
                        .objects
                        .entry(id.clone())
                        .or_default()
                        .insert(name.clone())
                    {
                        return Err(bundle_err(format!("duplicate entry `{}`", epath.display())));
                    }
                    stage.join("objects").join(id).join(name)
                }
                Slot::Record(k) => {
                    if st.records.contains(k) {
                        return Err(bundle_err(format!("duplicate record {k}")));
                    }
                    st.records.push(k.clone());
                    stage.join("records").join(format!("{k}.json"))
                }
            };
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            fs::write(&dest, &bytes).map_err(io_err(&dest))?;
        }
        if !st.saw_index {
            return Err(bundle_err("missing bundle.json (not an asymm bundle)"));
        }
        Ok(st)
    }

    /// Checks every staged object (its manifest parses and lists exactly its files, the
    /// hashes match, its lineage is in the bundle or the store) and parses the run records
    /// (each names its own key and artifacts that exist).
    fn verify(&self, store: &Store, stage: &Path) -> Result<Vec<RunRecord>> {
        let staged = Store {
            root: stage.to_path_buf(),
        };
        for (id, names) in &self.objects {
            if !names.contains("manifest.json") {
                return Err(bundle_err(format!("artifact {id} has no manifest")));
            }
            let m: Manifest = read_json(&staged.object_dir(id).join("manifest.json"))
                .map_err(|e| bundle_err(format!("artifact {id}: {e}")))?;
            let listed: BTreeSet<String> = m
                .files
                .iter()
                .map(|f| f.name.clone())
                .chain(std::iter::once("manifest.json".to_string()))
                .collect();
            if &listed != names {
                return Err(bundle_err(format!(
                    "artifact {id}: files in the bundle do not match its manifest"
                )));
            }
            staged
                .verify(id)
                .map_err(|e| bundle_err(format!("hash mismatch: {e}")))?;
            for up in m.lineage.values() {
                if !self.objects.contains_key(up)
                    && !store.has(up)
                    && !self.tombstones.contains(up)
                    && !store.is_discarded(up)
                {
                    return Err(bundle_err(format!(
                        "artifact {id} depends on {up}, which is neither in the bundle nor the store"
                    )));
                }
            }
        }
        let mut parsed = Vec::new();
        for k in &self.records {
            let r: RunRecord = read_json(&stage.join("records").join(format!("{k}.json")))
                .map_err(|e| bundle_err(format!("record {k}: {e}")))?;
            if &r.key != k {
                return Err(bundle_err(format!("record {k} names key {}", r.key)));
            }
            for id in r.outputs.values() {
                if !self.objects.contains_key(id) && !store.has(id) && !self.tombstones.contains(id)
                {
                    return Err(bundle_err(format!(
                        "record {k} points at missing artifact {id}"
                    )));
                }
            }
            parsed.push(r);
        }
        Ok(parsed)
    }

    /// Moves the objects into the store, then the tombstones and records it lacks.
    fn publish(&self, store: &Store, stage: &Path, parsed: &[RunRecord]) -> Result<BundleReport> {
        let mut report = BundleReport {
            bytes: self.bytes,
            ..BundleReport::default()
        };
        for id in self.objects.keys() {
            if store.publish_dir(&stage.join("objects").join(id), id)? {
                report.artifacts += 1;
            } else {
                report.already_present += 1;
            }
        }
        for id in &self.tombstones {
            if !store.has(id) && !self.objects.contains_key(id) {
                store.put_tombstone(id)?;
            }
        }
        for r in parsed {
            if store.record(&r.key)?.is_none() {
                store.put_record(r)?;
                report.records += 1;
            }
        }
        Ok(report)
    }
}
