//! Cache keys and "why stale" explanations.
//!
//! A key is blake3 over the canonical JSON of its parts: stage name, stage code version, canonical
//! config, seed, device (for device-sensitive stages), input *content* ids and external-file
//! fingerprints. Using content ids means a byte-identical upstream rerun does not invalidate
//! anything downstream.

use crate::util::canon;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The parts a key is hashed from (stored in the run record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyParts {
    pub stage: String,
    pub version: u32,
    pub config: Value,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub inputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub externals: BTreeMap<String, String>,
}

impl KeyParts {
    pub fn key(&self) -> String {
        canon::hash_value(&serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(37).collect::<String>())
    } else {
        s
    }
}

/// One reason why an instance is not cached (or would run). `Display` gives the human-readable
/// sentence shown by `status` and `run --dry-run`; [`Reason::to_json`] the structured form.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// No previous run of this instance in this pipeline.
    NeverRun,
    /// The previous result's record or artifacts are gone.
    PreviousRemoved,
    /// The previous run record could not be read.
    PreviousUnreadable,
    /// Recomputed on request.
    Forced,
    /// An input comes from an upstream instance that has no result yet.
    UpstreamPending {
        input: String,
        upstream: String,
    },
    StageType {
        old: String,
        new: String,
    },
    /// The stage's code version.
    Version {
        old: u32,
        new: u32,
    },
    /// A config field (dotted path) was added (`old` is None), removed (`new` is None) or changed.
    Config {
        field: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    Seed {
        old: u64,
        new: u64,
    },
    Device {
        old: Option<String>,
        new: Option<String>,
    },
    InputChanged(String),
    InputAdded(String),
    InputRemoved(String),
    ExternalFile(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::PreviousRemoved => write!(f, "previous result was removed"),
            Reason::PreviousUnreadable => write!(f, "previous record unreadable"),
            Reason::Forced => write!(f, "forced"),
            Reason::UpstreamPending { input, upstream } => {
                write!(f, "input `{input}`: upstream `{upstream}` runs first")
            }
            Reason::StageType { old, new } => write!(f, "stage type {old} → {new}"),
            Reason::Version { old, new } => write!(f, "code version {old} → {new}"),
            Reason::Config { field, old, new } => match (old, new) {
                (None, Some(n)) => write!(f, "config `{field}` added ({})", short(n)),
                (Some(_), None) => write!(f, "config `{field}` removed"),
                (Some(o), Some(n)) => write!(f, "config `{field}` {} → {}", short(o), short(n)),
                (None, None) => write!(f, "config `{field}` changed"),
            },
            Reason::Seed { old, new } => write!(f, "seed {old} → {new}"),
            Reason::Device { old, new } => write!(
                f,
                "device {} → {}",
                old.as_deref().unwrap_or("-"),
                new.as_deref().unwrap_or("-")
            ),
            Reason::InputChanged(n) => write!(f, "input `{n}` changed"),
            Reason::InputAdded(n) => write!(f, "input `{n}` added"),
            Reason::InputRemoved(n) => write!(f, "input `{n}` removed"),
            Reason::ExternalFile(p) => write!(f, "external file `{p}` changed"),
        }
    }
}

impl Reason {
    /// A short, stable name for the kind of reason (`config`, `input`, `code_version`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::NeverRun => "never_run",
            Reason::PreviousRemoved => "previous_removed",
            Reason::PreviousUnreadable => "previous_unreadable",
            Reason::Forced => "forced",
            Reason::UpstreamPending { .. } => "upstream_pending",
            Reason::StageType { .. } => "stage_type",
            Reason::Version { .. } => "code_version",
            Reason::Config { .. } => "config",
            Reason::Seed { .. } => "seed",
            Reason::Device { .. } => "device",
            Reason::InputChanged(_) | Reason::InputAdded(_) | Reason::InputRemoved(_) => "input",
            Reason::ExternalFile(_) => "external_file",
        }
    }

    /// The structured form: `{"kind": …, "message": …}` plus the kind's own fields
    /// (`field`/`old`/`new` for config, `input` and `change` for inputs, `old`/`new` for versions…).
    pub fn to_json(&self) -> Value {
        use serde_json::json;
        let mut v = match self {
            Reason::NeverRun
            | Reason::PreviousRemoved
            | Reason::PreviousUnreadable
            | Reason::Forced => json!({}),
            Reason::UpstreamPending { input, upstream } => {
                json!({"input": input, "upstream": upstream})
            }
            Reason::StageType { old, new } => json!({"old": old, "new": new}),
            Reason::Version { old, new } => json!({"old": old, "new": new}),
            Reason::Config { field, old, new } => {
                json!({"field": field, "old": old, "new": new})
            }
            Reason::Seed { old, new } => json!({"old": old, "new": new}),
            Reason::Device { old, new } => json!({"old": old, "new": new}),
            Reason::InputChanged(n) => json!({"input": n, "change": "changed"}),
            Reason::InputAdded(n) => json!({"input": n, "change": "added"}),
            Reason::InputRemoved(n) => json!({"input": n, "change": "removed"}),
            Reason::ExternalFile(p) => json!({"path": p}),
        };
        if let Value::Object(m) = &mut v {
            m.insert("kind".into(), json!(self.kind()));
            m.insert("message".into(), json!(self.to_string()));
        }
        v
    }
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<Reason>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_values(&p, x, y, out),
                    (x, y) if x.is_some() || y.is_some() => out.push(Reason::Config {
                        field: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                    _ => {}
                }
            }
        }
        _ if old != new => out.push(Reason::Config {
            field: path.to_string(),
            old: Some(old.clone()),
            new: Some(new.clone()),
        }),
        _ => {}
    }
}

/// Why `new` differs from `old`.
pub fn explain(old: &KeyParts, new: &KeyParts) -> Vec<Reason> {
    let mut out = Vec::new();
    if old.stage != new.stage {
        out.push(Reason::StageType {
            old: old.stage.clone(),
            new: new.stage.clone(),
        });
    }
    if old.version != new.version {
        out.push(Reason::Version {
            old: old.version,
            new: new.version,
        });
    }
    diff_values("", &old.config, &new.config, &mut out);
    if old.seed != new.seed {
        out.push(Reason::Seed {
            old: old.seed,
            new: new.seed,
        });
    }
    if old.device != new.device {
        out.push(Reason::Device {
            old: old.device.clone(),
            new: new.device.clone(),
        });
    }
    for (name, id) in &new.inputs {
        match old.inputs.get(name) {
            Some(o) if o == id => {}
            Some(_) => out.push(Reason::InputChanged(name.clone())),
            None => out.push(Reason::InputAdded(name.clone())),
        }
    }
    for name in old.inputs.keys() {
        if !new.inputs.contains_key(name) {
            out.push(Reason::InputRemoved(name.clone()));
        }
    }
    for (path, fp) in &new.externals {
        if old.externals.get(path) != Some(fp) {
            out.push(Reason::ExternalFile(path.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts() -> KeyParts {
        KeyParts {
            stage: "render".into(),
            version: 1,
            config: json!({"size": 224, "style": {"line": 2}}),
            seed: 1,
            device: None,
            inputs: [("puzzles".to_string(), "a".repeat(64))].into(),
            externals: BTreeMap::new(),
        }
    }

    #[test]
    fn key_changes_with_each_part_and_explains_it() {
        let a = parts();
        let mut b = parts();
        assert_eq!(a.key(), b.key());
        b.config = json!({"size": 128, "style": {"line": 2}});
        assert_ne!(a.key(), b.key());
        let text = |r: Vec<Reason>| r.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(text(explain(&a, &b)), vec!["config `size` 224 → 128"]);
        let j = explain(&a, &b)[0].to_json();
        assert_eq!(j["kind"], "config");
        assert_eq!(j["field"], "size");
        assert_eq!(
            (j["old"].clone(), j["new"].clone()),
            (json!(224), json!(128))
        );
        let mut c = parts();
        c.version = 2;
        c.inputs.insert("puzzles".into(), "b".repeat(64));
        let why = text(explain(&a, &c));
        assert!(why.contains(&"code version 1 → 2".to_string()));
        assert!(why.contains(&"input `puzzles` changed".to_string()));
        assert!(explain(&a, &c).contains(&Reason::Version { old: 1, new: 2 }));
        let mut d = parts();
        d.config = json!({"size": 224, "style": {"line": 3}});
        assert_eq!(text(explain(&a, &d)), vec!["config `style.line` 2 → 3"]);
    }
}
