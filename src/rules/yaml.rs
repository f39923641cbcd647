//! YAML parsing shared by rule files and rule tests: serde_yaml, plus merge keys.
//!
//! serde_yaml 0.9 does not apply `<<: *anchor` merges by itself. We parse directly first (its
//! errors carry positions); only when that fails do we retry with merges applied, and report
//! the first error if the retry fails as well.

use serde::de::DeserializeOwned;

pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_yaml::Error> {
    match serde_yaml::from_str::<T>(text) {
        Ok(v) => Ok(v),
        Err(first) => {
            let merged = serde_yaml::from_str::<serde_yaml::Value>(text).and_then(|mut v| {
                v.apply_merge()?;
                serde_yaml::from_value::<T>(v)
            });
            merged.map_err(|_| first)
        }
    }
}

/// Applies merge keys inside an already parsed value (e.g. an inline event).
pub fn merged(value: &serde_yaml::Value) -> serde_yaml::Value {
    let mut v = value.clone();
    // A failed merge leaves the value as written; the decoder then reports what is wrong.
    let _ = v.apply_merge();
    v
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    #[test]
    fn applies_merge_keys() {
        let text = "a: &x { k: 1, j: 2 }\nb:\n  <<: *x\n  j: 3\n";
        let v: BTreeMap<String, BTreeMap<String, i32>> = super::from_str(text).unwrap();
        assert_eq!(v["b"]["k"], 1);
        assert_eq!(v["b"]["j"], 3);
    }
}
