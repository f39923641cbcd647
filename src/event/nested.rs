//! Parsing the event's raw JSON parts (`requestObject`, `responseObject`, ...) with a bound on
//! nesting that does not lose the rest of the object.
//!
//! serde_json refuses a document nested more than 128 levels deep, whole. Objects are parsed
//! for rules on demand, so before this a value nested that deep anywhere in a pod made the pod
//! unreadable to every rule: privileged, hostPath and host-namespace checks silently did not
//! fire, and a custom resource with free-form fields could be used to hide a pod change that
//! way. Here, subtrees below [`MAX_DEPTH`] are replaced by `null` (skipped without recursion:
//! serde_json skips ignored values iteratively) and the parse reports that it cut something,
//! so rules still see everything above the cut and the cut is counted.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The scalar methods of a serde `Visitor` that builds a `serde_json::Value` (for the
/// visitors here and in the rules' pruned parse, which differ only in maps and arrays).
macro_rules! scalar_visits {
    () => {
        fn visit_bool<E>(self, v: bool) -> Result<serde_json::Value, E> {
            Ok(serde_json::Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<serde_json::Value, E> {
            Ok(serde_json::Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<serde_json::Value, E> {
            Ok(serde_json::Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<serde_json::Value, E> {
            Ok(serde_json::Value::from(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<serde_json::Value, E> {
            Ok(serde_json::Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<serde_json::Value, E> {
            Ok(serde_json::Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<serde_json::Value, E> {
            Ok(serde_json::Value::Null)
        }
    };
}
pub(crate) use scalar_visits;

/// Levels kept below the part's root. Kubernetes objects nest a few dozen levels at most.
pub const MAX_DEPTH: usize = 100;

/// A JSON value parsed to at most [`MAX_DEPTH`] levels below `depth`; deeper subtrees become
/// `null` and set `cut`.
pub struct Capped<'c> {
    pub depth: usize,
    pub cut: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Capped<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth >= MAX_DEPTH {
            self.cut.set(true);
            IgnoredAny::deserialize(d)?;
            return Ok(Value::Null);
        }
        d.deserialize_any(self)
    }
}

use serde::Deserialize as _;

impl<'de> Visitor<'de> for Capped<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    scalar_visits!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Capped {
            depth: self.depth + 1,
            cut: self.cut,
        })? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(Capped {
                depth: self.depth + 1,
                cut: self.cut,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `text`; `cut` is set when a subtree was too deep and replaced by `null`.
pub fn parse(text: &str, cut: &Cell<bool>) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Capped { depth: 0, cut }.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Whether a serde_json error is its nesting limit (the only reason a raw part that was
/// valid JSON when the event was decoded fails to parse again).
pub fn is_too_deep(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("recursion limit exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!(
            r#"{{"spec":{{"containers":[{{"securityContext":{{"privileged":true}}}}]}},"x":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    }

    #[test]
    fn deep_subtrees_are_cut_and_the_rest_is_kept() {
        // What serde_json does on its own: the whole object is lost.
        let deep = nested(200);
        let e = serde_json::from_str::<Value>(&deep).unwrap_err();
        assert!(is_too_deep(&e), "{e}");
        let cut = Cell::new(false);
        let v = parse(&deep, &cut).unwrap();
        assert!(cut.get());
        assert_eq!(
            v["spec"]["containers"][0]["securityContext"]["privileged"],
            true
        );
        // A million levels: no stack overflow, no error.
        let cut = Cell::new(false);
        assert!(parse(&nested(1_000_000), &cut).is_ok() && cut.get());
        // Shallow: nothing cut, the same value as serde_json.
        let cut = Cell::new(false);
        let shallow = nested(20);
        assert_eq!(
            parse(&shallow, &cut).unwrap(),
            serde_json::from_str::<Value>(&shallow).unwrap()
        );
        assert!(!cut.get());
    }
}
