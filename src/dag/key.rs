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
    if s.len() > 40 {
        format!("{}…", &s[..37.min(s.len())])
    } else {
        s
    }
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
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
                    (None, Some(y)) => out.push(format!("config `{p}` added ({})", short(y))),
                    (Some(_), None) => out.push(format!("config `{p}` removed")),
                    (None, None) => {}
                }
            }
        }
        _ if old != new => out.push(format!("config `{path}` {} → {}", short(old), short(new))),
        _ => {}
    }
}

/// Human-readable reasons why `new` differs from `old`.
pub fn explain(old: &KeyParts, new: &KeyParts) -> Vec<String> {
    let mut out = Vec::new();
    if old.stage != new.stage {
        out.push(format!("stage type {} → {}", old.stage, new.stage));
    }
    if old.version != new.version {
        out.push(format!("code version {} → {}", old.version, new.version));
    }
    diff_values("", &old.config, &new.config, &mut out);
    if old.seed != new.seed {
        out.push(format!("seed {} → {}", old.seed, new.seed));
    }
    if old.device != new.device {
        out.push(format!(
            "device {} → {}",
            old.device.as_deref().unwrap_or("-"),
            new.device.as_deref().unwrap_or("-")
        ));
    }
    for (name, id) in &new.inputs {
        match old.inputs.get(name) {
            Some(o) if o == id => {}
            Some(_) => out.push(format!("input `{name}` changed")),
            None => out.push(format!("input `{name}` added")),
        }
    }
    for name in old.inputs.keys() {
        if !new.inputs.contains_key(name) {
            out.push(format!("input `{name}` removed"));
        }
    }
    for (path, fp) in &new.externals {
        if old.externals.get(path) != Some(fp) {
            out.push(format!("external file `{path}` changed"));
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
        assert_eq!(explain(&a, &b), vec!["config `size` 224 → 128"]);
        let mut c = parts();
        c.version = 2;
        c.inputs.insert("puzzles".into(), "b".repeat(64));
        let why = explain(&a, &c);
        assert!(why.contains(&"code version 1 → 2".to_string()));
        assert!(why.contains(&"input `puzzles` changed".to_string()));
        let mut d = parts();
        d.config = json!({"size": 224, "style": {"line": 3}});
        assert_eq!(explain(&a, &d), vec!["config `style.line` 2 → 3"]);
    }
}
