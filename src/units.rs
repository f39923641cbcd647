//! Value types written in config files: durations (`250ms`, `30s`, `5m`, as in rule files)
//! and byte sizes (`512KiB`, `32MiB`). They live here, apart from any component, because every
//! component's config uses them.

use std::fmt;

use serde::Deserialize;

use crate::event::Span;

/// A duration written as in rule files: `250ms`, `30s`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub Span);

impl Duration {
    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.0.max(0) as u64)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

/// A size in bytes: an integer, or `512KiB`, `32MiB`, `1GiB` (also kB/MB/GB, powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("invalid size {text:?}: expected a number and a unit"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, kB, MB, GB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}
