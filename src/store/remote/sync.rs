//! Push and pull: moving run records and the artifacts they need between a store and a remote.

use super::super::bundle::record_inputs;
use super::super::object::{Manifest, check_file_name};
use super::super::{Result, RunRecord, Store, StoreError, io_err, is_hex64};
use super::{Remote, RemotePath};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a push or pull moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Run records written (on the remote for a push, in the store for a pull).
    pub records: usize,
    /// Records that were there already, or that another machine wrote first.
    pub records_present: usize,
    /// Artifacts that arrived whole (their manifests written).
    pub artifacts: usize,
    /// Files moved (for a push, manifests included) and their bytes.
    pub files: usize,
    pub bytes: u64,
    /// Tombstones of artifacts discarded after use.
    pub tombstones: usize,
}

/// Files at or below this size go up in one request; larger ones in parts.
const SINGLE_PUT_BYTES: u64 = 32 << 20;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;

enum Fail {
    Io(PathBuf, std::io::Error),
    Remote(object_store::Error),
}

async fn upload_file(
    client: Arc<dyn ObjectStore>,
    path: RemotePath,
    local: PathBuf,
) -> std::result::Result<u64, Fail> {
    let io = |e| Fail::Io(local.clone(), e);
    let size = std::fs::metadata(&local).map_err(io)?.len();
    if size <= SINGLE_PUT_BYTES {
        let bytes = std::fs::read(&local).map_err(io)?;
        client
            .put(&path, PutPayload::from(Bytes::from(bytes)))
            .await
            .map_err(Fail::Remote)?;
        return Ok(size);
    }
    use std::io::Read;
    use tokio::io::AsyncWriteExt;
    let mut w =
        object_store::buffered::BufWriter::with_capacity(client, path, SINGLE_PUT_BYTES as usize);
    let mut f = std::fs::File::open(&local).map_err(io)?;
    loop {
        let mut chunk = vec![0u8; 8 << 20];
        let n = f.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        if let Err(e) = w.put(Bytes::from(chunk)).await {
            let _ = w.abort().await;
            return Err(Fail::Remote(e));
        }
    }
    w.shutdown().await.map_err(|e| {
        Fail::Remote(object_store::Error::Generic {
            store: "S3",
            source: Box::new(e),
        })
    })?;
    Ok(size)
}

async fn download_file(
    client: Arc<dyn ObjectStore>,
    path: RemotePath,
    local: PathBuf,
) -> std::result::Result<u64, Fail> {
    use std::io::Write;
    let got = client.get(&path).await.map_err(Fail::Remote)?;
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = local.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let mut f = std::fs::File::create(&partial).map_err(|e| Fail::Io(partial.clone(), e))?;
    let mut stream = got.into_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Fail::Remote)?;
        f.write_all(&chunk)
            .map_err(|e| Fail::Io(partial.clone(), e))?;
        n += chunk.len() as u64;
    }
    f.sync_all().map_err(|e| Fail::Io(partial.clone(), e))?;
    std::fs::rename(&partial, &local).map_err(|e| Fail::Io(local.clone(), e))?;
    Ok(n)
}

impl Remote {
    fn fail(&self, op: &'static str, rel: &str, f: Fail) -> StoreError {
        match f {
            Fail::Io(path, source) => StoreError::Io { path, source },
            Fail::Remote(e) => self.err(op, rel, e),
        }
    }

    /// Moves `(path below the prefix, local file)` pairs with `one`, several at a time;
    /// returns each path with its bytes.
    fn transfer<F, Fut>(
        &self,
        op: &'static str,
        files: Vec<(String, PathBuf)>,
        report: &mut SyncReport,
        one: F,
    ) -> Result<Vec<(String, u64)>>
    where
        F: Fn(Arc<dyn ObjectStore>, RemotePath, PathBuf) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<u64, Fail>>,
    {
        let jobs = files.into_iter().map(|(rel, local)| {
            let moved = one(self.client.clone(), self.path(&rel), local);
            async move { (rel, moved.await) }
        });
        let done: Vec<_> = self.rt.block_on(
            futures::stream::iter(jobs)
                .buffer_unordered(CONCURRENCY)
                .collect(),
        );
        let mut out = Vec::with_capacity(done.len());
        for (rel, r) in done {
            let n = r.map_err(|f| self.fail(op, &rel, f))?;
            report.files += 1;
            report.bytes += n;
            out.push((rel, n));
        }
        Ok(out)
    }

    /// Uploads `(path below the prefix, local file)` pairs.
    fn upload(&self, files: Vec<(String, PathBuf)>, report: &mut SyncReport) -> Result<()> {
        for (rel, n) in self.transfer("write", files, report, upload_file)? {
            self.note_object(&rel, n);
        }
        Ok(())
    }

    /// Downloads `(path below the prefix, local file)` pairs.
    fn download(&self, files: Vec<(String, PathBuf)>, report: &mut SyncReport) -> Result<()> {
        self.transfer("read", files, report, download_file)
            .map(|_| ())
    }

    /// Pushes run records and everything they need: their outputs, the artifacts they read,
    /// and the lineage of both; discarded ones as tombstones. Records already on the remote
    /// cost nothing but one listing.
    pub fn push(&self, store: &Store, keys: &[String]) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        for key in keys {
            self.push_record(store, key, &mut report)?;
        }
        Ok(report)
    }

    fn push_record(&self, store: &Store, key: &str, report: &mut SyncReport) -> Result<()> {
        if self.has_record(key)? {
            report.records_present += 1;
            return Ok(());
        }
        let rec = store
            .record(key)?
            .ok_or_else(|| StoreError::Missing(format!("run record {key}")))?;
        let roots: Vec<String> = rec
            .outputs
            .values()
            .cloned()
            .chain(record_inputs(&rec))
            .collect();
        let ids = store.closure(&roots)?;
        let gone = |id: &String| !store.has(id) && store.is_discarded(id);
        // A record on the remote must be pullable: everything it names is here or discarded.
        let absent = |id: &String| !store.has(id) && !store.is_discarded(id);
        let mut named: Vec<&String> = roots.iter().collect();
        let manifests: Vec<_> = ids
            .iter()
            .map(|id| store.manifest(id))
            .collect::<Result<_>>()?;
        named.extend(manifests.iter().flat_map(|m| m.lineage.values()));
        if let Some(id) = named.into_iter().find(|id| absent(id)) {
            return Err(StoreError::Missing(format!(
                "{id}, which run record {key} needs (collected away?); the record is not pushed"
            )));
        }
        let mut tombstones: BTreeSet<String> =
            roots.iter().filter(|id| gone(id)).cloned().collect();
        let (mut files, mut manifests) = (Vec::new(), Vec::new());
        for id in &ids {
            let m = store.manifest(id)?;
            tombstones.extend(m.lineage.values().filter(|up| gone(up)).cloned());
            let mrel = format!("objects/{id}/manifest.json");
            if self.object_size(&mrel)?.is_some() {
                continue;
            }
            // Nothing corrupt leaves this store.
            store.verify(id)?;
            for f in &m.files {
                let rel = format!("objects/{id}/{}", f.name);
                if self.object_size(&rel)? != Some(f.bytes) {
                    files.push((rel, store.object_dir(id).join(&f.name)));
                }
            }
            manifests.push((mrel, store.object_dir(id).join("manifest.json")));
        }
        // Files, then manifests, then the record: whatever the remote shows is whole.
        self.upload(files, report)?;
        report.artifacts += manifests.len();
        self.upload(manifests, report)?;
        for id in &tombstones {
            self.put(&format!("discarded/{id}"), Bytes::new())?;
            report.tombstones += 1;
        }
        let bytes = serde_json::to_vec_pretty(&rec).map_err(|source| StoreError::Json {
            path: format!("records/{key}.json").into(),
            source,
        })?;
        if self.put_create(&format!("records/{key}.json"), Bytes::from(bytes))? {
            report.records += 1;
        } else {
            // Another machine committed this key first: its record stands, and is as good.
            report.records_present += 1;
        }
        self.note_record(key);
        Ok(())
    }

    fn corrupt(&self, id: &str, what: impl Into<String>) -> StoreError {
        StoreError::RemoteCorrupt {
            remote: self.name.clone(),
            id: id.to_string(),
            what: what.into(),
        }
    }

    /// Pulls run records (and what they need) that the store lacks; keys the remote does not
    /// have are left out of the report.
    pub fn pull(&self, store: &Store, keys: &[String]) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        for key in keys {
            self.pull_one(store, key, &mut report)?;
        }
        Ok(report)
    }

    /// The run record for `key`: the store's, or else the remote's, pulled with everything it
    /// needs; `None` when neither has it.
    pub fn pull_record(&self, store: &Store, key: &str) -> Result<Option<RunRecord>> {
        self.pull_one(store, key, &mut SyncReport::default())
    }

    /// [`Self::pull_record`], adding what moved to `report`.
    pub fn pull_one(
        &self,
        store: &Store,
        key: &str,
        report: &mut SyncReport,
    ) -> Result<Option<RunRecord>> {
        if let Some(r) = store.record(key)? {
            report.records_present += 1;
            return Ok(Some(r));
        }
        if !is_hex64(key) {
            return Ok(None);
        }
        let Some(bytes) = self.get(&format!("records/{key}.json"))? else {
            return Ok(None);
        };
        let rec: RunRecord = serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(key, format!("run record unreadable: {e}")))?;
        if rec.key != key {
            return Err(self.corrupt(key, format!("run record names key {}", rec.key)));
        }
        let (need, tombstones) = self.needs(store, &rec)?;
        // Pulls from this remote into this store take turns: they share the staging folder,
        // which an interrupted pull leaves behind for the next one to resume from.
        let lock_key = blake3::hash(format!("pull:{}", self.name).as_bytes()).to_hex();
        let _lock = store.lock_key(lock_key.as_str())?;
        if let Some(r) = store.record(key)? {
            report.records_present += 1;
            return Ok(Some(r));
        }
        let stage = store.tmp_dir().join(format!("pull-{}", self.name));
        self.fetch_objects(&stage, &need, report)?;
        // Everything is verified before anything is published.
        let staged = Store {
            root: stage.clone(),
        };
        for (id, (m, _)) in &need {
            tidy(&staged.object_dir(id), m)?;
            if let Err(e) = staged.verify(id) {
                let _ = std::fs::remove_dir_all(staged.object_dir(id));
                return Err(self.corrupt(id, format!("{e}; nothing of record {key} was imported")));
            }
        }
        // Tombstones, then each artifact after its lineage: a pull cut off here leaves no
        // artifact whose ancestors are missing.
        for id in &tombstones {
            store.put_tombstone(id)?;
            report.tombstones += 1;
        }
        for id in lineage_first(&need) {
            if store.publish_dir(&staged.object_dir(&id), &id)? {
                report.artifacts += 1;
            }
        }
        let objects = store.root().join("objects");
        crate::util::fsx::sync_dir(&objects).map_err(io_err(&objects))?;
        store.put_record(&rec)?;
        self.note_record(key);
        report.records += 1;
        Ok(Some(rec))
    }

    /// The artifacts record `rec` needs that the store lacks (id → manifest, from the remote),
    /// and those the remote holds only as tombstones.
    #[allow(clippy::type_complexity)]
    fn needs(
        &self,
        store: &Store,
        rec: &RunRecord,
    ) -> Result<(BTreeMap<String, (Manifest, Bytes)>, BTreeSet<String>)> {
        let mut need = BTreeMap::new();
        let mut tombstones = BTreeSet::new();
        let mut stack: Vec<String> = rec
            .outputs
            .values()
            .cloned()
            .chain(record_inputs(rec))
            .collect();
        while let Some(id) = stack.pop() {
            if !is_hex64(&id) {
                return Err(self.corrupt(&rec.key, format!("names `{id}`, not an artifact id")));
            }
            if store.has(&id) || need.contains_key(&id) || tombstones.contains(&id) {
                continue;
            }
            match self.get(&format!("objects/{id}/manifest.json"))? {
                Some(bytes) => {
                    let m: Manifest = serde_json::from_slice(&bytes)
                        .map_err(|e| self.corrupt(&id, format!("manifest unreadable: {e}")))?;
                    if m.id != id {
                        return Err(self.corrupt(&id, format!("manifest names id {}", m.id)));
                    }
                    for f in &m.files {
                        check_file_name(&f.name).map_err(|_| {
                            self.corrupt(&id, format!("unsafe file name `{}`", f.name))
                        })?;
                    }
                    stack.extend(m.lineage.values().cloned());
                    need.insert(id, (m, bytes));
                }
                None if store.is_discarded(&id) => {}
                None if self.get(&format!("discarded/{id}"))?.is_some() => {
                    tombstones.insert(id);
                }
                None => {
                    return Err(self.corrupt(
                        &id,
                        format!(
                            "run record {} needs it, and the remote does not have it",
                            rec.key
                        ),
                    ));
                }
            }
        }
        Ok((need, tombstones))
    }

    /// Downloads the files of `need` under `stage/objects/<id>/`, skipping files a previous,
    /// interrupted pull left there whole.
    fn fetch_objects(
        &self,
        stage: &Path,
        need: &BTreeMap<String, (Manifest, Bytes)>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let mut files = Vec::new();
        for (id, (m, bytes)) in need {
            let dir = stage.join("objects").join(id);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let mp = dir.join("manifest.json");
            crate::util::fsx::write_atomic(&mp, bytes).map_err(io_err(&mp))?;
            for f in &m.files {
                let local = dir.join(&f.name);
                let whole = std::fs::read(&local).is_ok_and(|b| {
                    b.len() as u64 == f.bytes && blake3::hash(&b).to_hex().as_str() == f.blake3
                });
                if !whole {
                    files.push((format!("objects/{id}/{}", f.name), local));
                }
            }
        }
        self.download(files, report)
    }
}

/// Removes from a staged artifact folder every file its manifest does not list (what a download
/// cut off left behind), so that only the artifact itself is published.
fn tidy(dir: &Path, m: &Manifest) -> Result<()> {
    let listed: BTreeSet<&str> = m
        .files
        .iter()
        .map(|f| f.name.as_str())
        .chain(std::iter::once("manifest.json"))
        .collect();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        if !listed.contains(name.to_string_lossy().as_ref()) {
            let p = e.path();
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// The ids of `need`, each after the ids of its lineage that are also in `need`.
fn lineage_first(need: &BTreeMap<String, (Manifest, Bytes)>) -> Vec<String> {
    fn visit(
        id: &str,
        need: &BTreeMap<String, (Manifest, Bytes)>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !done.insert(id.to_string()) {
            return;
        }
        if let Some((m, _)) = need.get(id) {
            for up in m.lineage.values() {
                if need.contains_key(up) {
                    visit(up, need, done, order);
                }
            }
        }
        order.push(id.to_string());
    }
    let (mut done, mut order) = (BTreeSet::new(), Vec::new());
    for id in need.keys() {
        visit(id, need, &mut done, &mut order);
    }
    order
}
