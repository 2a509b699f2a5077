//! Canonical JSON: object keys sorted recursively, no insignificant whitespace. Used wherever a
//! value is hashed, so that the same value always gives the same bytes.

use serde_json::Value;

/// Returns `v` with every object's keys sorted (recursively).
pub fn canonicalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), canonicalize(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonicalize).collect()),
        other => other.clone(),
    }
}

/// Canonical compact serialization of `v`.
pub fn to_canonical_string(v: &Value) -> String {
    // serde_json writes maps in insertion order; canonicalize first.
    serde_json::to_string(&canonicalize(v)).unwrap_or_default()
}

/// blake3 of the canonical serialization.
pub fn hash_value(v: &Value) -> String {
    blake3::hash(to_canonical_string(v).as_bytes())
        .to_hex()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, 2]}, "b": 1});
        assert_eq!(hash_value(&a), hash_value(&b));
        assert_ne!(hash_value(&a), hash_value(&json!({"b": 2})));
        assert_eq!(
            to_canonical_string(&b),
            r#"{"a":{"x":null,"y":[1,2]},"b":1}"#
        );
    }
}
