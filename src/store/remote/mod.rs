//! Artifact remotes: the store's artifacts, run records and tombstones mirrored on an
//! S3-compatible object store, so machines share what they computed, as DVC remotes and Bazel's
//! remote cache do. The client is the `object_store` crate.
//!
//! Layout under `s3://bucket/prefix/`, the local store's own:
//! ```text
//! objects/<id>/<file>          an artifact's files
//! objects/<id>/manifest.json   written after its files: a manifest there means a whole artifact
//! records/<key>.json           a run record, written last, with a conditional create
//! discarded/<id>               an artifact discarded after use where it was computed
//! ```
//! The run record is the commit point: a push uploads files, then manifests, then the record with
//! `If-None-Match: *`, so a record on the remote always names whole artifacts. Two machines that
//! push the same key leave one record; the second's "already exists" is success (both computed
//! the same key; the store's content addressing makes either result valid). Everything is
//! content-addressed, so pushing again uploads nothing that is there, and an interrupted push or
//! pull picks up where it stopped. A pull re-hashes every file against its manifest and every
//! manifest against its id before anything enters the store. Local file locks are no commit point
//! here: two machines may compute the same key at once, and the conditional create settles it.

mod config;
mod sync;

pub use config::{RemoteSpec, Remotes};
pub use sync::SyncReport;

use super::{Result, StoreError};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as RemotePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A connection to one remote.
pub struct Remote {
    name: String,
    url: String,
    client: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
    /// Keys of the records known to be on the remote: listed once, then kept up to date with
    /// what this process pushes.
    records: Mutex<Option<std::collections::BTreeSet<String>>>,
    /// Sizes of the files known under `objects/` (path below the prefix → bytes), likewise.
    objects: Mutex<Option<BTreeMap<String, u64>>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({} = {})", self.name, self.url)
    }
}

/// The credentials of a named profile in the shared credentials file, if there is one.
fn profile_credentials(spec: &RemoteSpec) -> Result<Option<(String, String, Option<String>)>> {
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials"))
        });
    let explicit = spec
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok());
    let profile = explicit.clone().unwrap_or_else(|| "default".into());
    let Some(file) = file.filter(|f| f.is_file()) else {
        return match explicit {
            Some(p) => Err(StoreError::RemoteConfig(format!(
                "profile `{p}` asked for, but there is no shared credentials file (~/.aws/credentials or AWS_SHARED_CREDENTIALS_FILE)"
            ))),
            None => Ok(None),
        };
    };
    let ini = ini::Ini::load_from_file(&file)
        .map_err(|e| StoreError::RemoteConfig(format!("cannot read {}: {e}", file.display())))?;
    let Some(section) = ini.section(Some(profile.as_str())) else {
        return match explicit {
            Some(p) => Err(StoreError::RemoteConfig(format!(
                "no profile `{p}` in {}",
                file.display()
            ))),
            None => Ok(None),
        };
    };
    match (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        (Some(k), Some(s)) => Ok(Some((
            k.to_string(),
            s.to_string(),
            section.get("aws_session_token").map(str::to_string),
        ))),
        _ => Err(StoreError::RemoteConfig(format!(
            "profile `{profile}` in {} has no aws_access_key_id / aws_secret_access_key",
            file.display()
        ))),
    }
}

impl Remote {
    /// Connects to remote `name` as `spec` describes, with credentials from the environment or
    /// the profile. Nothing is sent until the first operation.
    pub fn open(name: &str, spec: &RemoteSpec) -> Result<Remote> {
        let (bucket, prefix) = spec.bucket_and_prefix()?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        if let Some(e) = &spec.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let region = spec
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        // A profile named on the remote wins over keys in the environment; otherwise the
        // environment's keys, then AWS_PROFILE or `default`.
        let env_keys = spec.profile.is_none()
            && std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
            && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some();
        if !env_keys {
            match profile_credentials(spec)? {
                Some((key, secret, token)) => {
                    b = b.with_access_key_id(key).with_secret_access_key(secret);
                    if let Some(t) = token {
                        b = b.with_token(t);
                    }
                }
                None if std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
                    || std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some() => {}
                None => {
                    return Err(StoreError::RemoteConfig(format!(
                        "no credentials for remote `{name}`: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE, `--profile`)"
                    )));
                }
            }
        }
        let client = b.build().map_err(|source| StoreError::Remote {
            remote: name.to_string(),
            op: "configure",
            path: spec.url.clone(),
            source: Box::new(source),
        })?;
        Remote::with_client(name, &spec.url, Arc::new(client), &prefix)
    }

    /// A remote on any `object_store` backend (S3 as [`Self::open`] configures it, a local
    /// folder, memory…), its keys under `prefix`; `url` names it in messages.
    pub fn with_client(
        name: &str,
        url: &str,
        client: Arc<dyn ObjectStore>,
        prefix: &str,
    ) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        Ok(Remote {
            name: name.to_string(),
            url: url.to_string(),
            client,
            prefix: prefix.trim_matches('/').to_string(),
            rt,
            records: Mutex::new(None),
            objects: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object path of `rel` (a path below the remote's prefix).
    fn path(&self, rel: &str) -> RemotePath {
        if self.prefix.is_empty() {
            RemotePath::from(rel)
        } else {
            RemotePath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn err(&self, op: &'static str, rel: &str, source: object_store::Error) -> StoreError {
        let writes = matches!(op, "write" | "create");
        match source {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
                if writes =>
            {
                StoreError::RemoteDenied {
                    remote: self.name.clone(),
                    op,
                    path: rel.to_string(),
                    source: Box::new(source),
                }
            }
            source => StoreError::Remote {
                remote: self.name.clone(),
                op,
                path: rel.to_string(),
                source: Box::new(source),
            },
        }
    }

    /// Reads `rel` whole; `None` when it is not there.
    fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        let path = self.path(rel);
        let client = self.client.clone();
        let got = self.rt.block_on(async move {
            match client.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map_err(|e| self.err("read", rel, e))
    }

    /// Writes `rel` (replacing it: the layout is content-addressed, so a replacement is equal).
    fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(rel);
        let client = self.client.clone();
        self.rt
            .block_on(async move { client.put(&path, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(|e| self.err("write", rel, e))
    }

    /// Creates `rel` only if it is not there (`If-None-Match: *`); `false` when it was.
    fn put_create(&self, rel: &str, bytes: Bytes) -> Result<bool> {
        let path = self.path(rel);
        let client = self.client.clone();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let r = self
            .rt
            .block_on(async move { client.put_opts(&path, PutPayload::from(bytes), opts).await });
        match r {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err("create", rel, e)),
        }
    }

    /// Every file under `rel` (a folder below the prefix): path relative to the prefix → size.
    fn list(&self, rel: &str) -> Result<BTreeMap<String, u64>> {
        let path = self.path(rel);
        let client = self.client.clone();
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(async move { client.list(Some(&path)).try_collect().await })
            .map_err(|e| self.err("list", rel, e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                full.strip_prefix(&strip).map(|r| (r.to_string(), m.size))
            })
            .collect())
    }

    /// Whether run record `key` is on the remote (from one listing, kept up to date).
    pub fn has_record(&self, key: &str) -> Result<bool> {
        let mut known = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none() {
            let listed = self.list("records")?;
            *known = Some(
                listed
                    .keys()
                    .filter_map(|p| p.strip_prefix("records/")?.strip_suffix(".json"))
                    .map(str::to_string)
                    .collect(),
            );
        }
        Ok(known.as_ref().is_some_and(|k| k.contains(key)))
    }

    fn note_record(&self, key: &str) {
        let mut known = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = known.as_mut() {
            k.insert(key.to_string());
        }
    }

    /// The size of `objects/…` file `rel` on the remote, if it is there (one listing).
    fn object_size(&self, rel: &str) -> Result<Option<u64>> {
        let mut known = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none() {
            *known = Some(self.list("objects")?);
        }
        Ok(known.as_ref().and_then(|k| k.get(rel).copied()))
    }

    fn note_object(&self, rel: &str, bytes: u64) {
        let mut known = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = known.as_mut() {
            k.insert(rel.to_string(), bytes);
        }
    }

    /// Forgets what the listings said (another machine may have pushed since).
    pub fn refresh(&self) {
        *self.records.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.objects.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Every run-record key on the remote.
    pub fn record_keys(&self) -> Result<Vec<String>> {
        self.has_record("")?;
        let known = self.records.lock().unwrap_or_else(|p| p.into_inner());
        Ok(known.iter().flatten().cloned().collect())
    }
}
