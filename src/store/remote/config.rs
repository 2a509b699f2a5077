//! Named remotes of a store (`<store>/remotes.json`), as `asymm remote add|list|remove` keeps them.

use super::super::{Result, Store, StoreError, check_name, read_json, write_json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where one remote lives and how to reach it. Credentials are never stored here: they come from
/// the standard AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`) or a named profile of `~/.aws/credentials`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:8333`, MinIO, SeaweedFS, R2…); AWS when
    /// absent. Plain `http://` endpoints are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The AWS region; `AWS_REGION`, else `us-east-1`, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A profile of `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`) to take the keys from
    /// when the environment has none; `AWS_PROFILE`, else `default`, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

impl RemoteSpec {
    /// The bucket and the key prefix (without slashes at either end) of [`Self::url`].
    pub fn bucket_and_prefix(&self) -> Result<(String, String)> {
        let rest = self.url.strip_prefix("s3://").ok_or_else(|| {
            StoreError::RemoteConfig(format!(
                "`{}` is not an S3 URL (expected s3://bucket[/prefix])",
                self.url
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::RemoteConfig(format!(
                "`{}` names no bucket (expected s3://bucket[/prefix])",
                self.url
            )));
        }
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }
}

/// Every remote of a store, and which one `push`/`pull` use when none is named.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Remotes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteSpec>,
}

impl Remotes {
    /// The remote named `name`, or the default one: the one marked default, or the only one.
    pub fn pick(&self, name: Option<&str>) -> Result<(String, RemoteSpec)> {
        let name = match name {
            Some(n) => n.to_string(),
            None => match (&self.default, self.remotes.len()) {
                (Some(d), _) => d.clone(),
                (None, 1) => self.remotes.keys().next().cloned().unwrap_or_default(),
                (None, 0) => {
                    return Err(StoreError::RemoteConfig(
                        "this store has no remote; add one with `asymm remote add NAME s3://bucket/prefix`".into(),
                    ));
                }
                (None, _) => {
                    return Err(StoreError::RemoteConfig(format!(
                        "this store has {} remotes and no default; name one ({}) or mark one with `asymm remote add --default`",
                        self.remotes.len(),
                        self.remotes.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            },
        };
        let spec = self.remotes.get(&name).ok_or_else(|| {
            StoreError::RemoteConfig(format!(
                "no remote named `{name}` (known: {})",
                if self.remotes.is_empty() {
                    "none".to_string()
                } else {
                    self.remotes.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ))
        })?;
        Ok((name, spec.clone()))
    }
}

impl Store {
    fn remotes_path(&self) -> std::path::PathBuf {
        self.root().join("remotes.json")
    }

    /// The store's remotes (none when it has never had one).
    pub fn remotes(&self) -> Result<Remotes> {
        let p = self.remotes_path();
        if !p.is_file() {
            return Ok(Remotes::default());
        }
        read_json(&p)
    }

    /// Adds (or replaces) remote `name`; with `default`, `push`/`pull` use it when none is named.
    pub fn add_remote(&self, name: &str, spec: RemoteSpec, default: bool) -> Result<()> {
        check_name(name)?;
        spec.bucket_and_prefix()?;
        let mut all = self.remotes()?;
        all.remotes.insert(name.to_string(), spec);
        if default {
            all.default = Some(name.to_string());
        }
        write_json(&self.remotes_path(), &all)
    }

    /// Forgets remote `name` (nothing on the remote is touched).
    pub fn remove_remote(&self, name: &str) -> Result<()> {
        let mut all = self.remotes()?;
        if all.remotes.remove(name).is_none() {
            return Err(StoreError::RemoteConfig(format!(
                "no remote named `{name}`"
            )));
        }
        if all.default.as_deref() == Some(name) {
            all.default = None;
        }
        write_json(&self.remotes_path(), &all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> RemoteSpec {
        RemoteSpec {
            url: url.into(),
            endpoint: None,
            region: None,
            profile: None,
        }
    }

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        assert_eq!(
            spec("s3://b/team/x/").bucket_and_prefix().unwrap(),
            ("b".into(), "team/x".into())
        );
        assert_eq!(
            spec("s3://b").bucket_and_prefix().unwrap(),
            ("b".into(), String::new())
        );
        assert!(spec("gs://b/x").bucket_and_prefix().is_err());
        assert!(spec("s3:///x").bucket_and_prefix().is_err());
    }

    #[test]
    fn the_default_is_the_marked_one_or_the_only_one() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.remotes().unwrap().pick(None).is_err(), "no remote yet");
        s.add_remote("a", spec("s3://a"), false).unwrap();
        assert_eq!(s.remotes().unwrap().pick(None).unwrap().0, "a");
        s.add_remote("b", spec("s3://b"), false).unwrap();
        let err = s.remotes().unwrap().pick(None).unwrap_err().to_string();
        assert!(err.contains("no default"), "{err}");
        s.add_remote("b", spec("s3://b/p"), true).unwrap();
        assert_eq!(s.remotes().unwrap().pick(None).unwrap().1.url, "s3://b/p");
        assert!(s.remotes().unwrap().pick(Some("c")).is_err());
        s.remove_remote("b").unwrap();
        assert_eq!(s.remotes().unwrap().pick(None).unwrap().0, "a");
        assert!(s.add_remote("x", spec("http://x"), false).is_err());
    }
}
