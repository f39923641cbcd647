//! The alert: what comes out of the engine, and its two renderings (JSON line, text line).
//!
//! The JSON form is a public interface (documented in `docs/alerts.md`); notifiers and the
//! `auditwatch test` harness consume the same struct.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

mod event_ref;
pub mod query;
pub mod storm;
#[cfg(test)]
pub(crate) mod testing;

pub use event_ref::EventRef;

use crate::event::EventTime;
use crate::rules::Severity;

/// The group an alert belongs to: `group_by` field → value, in `group_by` order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Group(pub Vec<(Arc<str>, String)>);

impl Serialize for Group {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Group, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Group;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of group_by field to value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Group, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((Arc::from(k), v));
                }
                Ok(Group(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Which kind of rule produced the alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// One matching request (no window).
    Event,
    Count,
    Distinct,
    Absence,
    /// Requests matching the steps of a sequence window.
    Sequence,
    /// The summary of a rule's alerts over its storm limit (see [`storm`]).
    Storm,
}

impl AlertKind {
    /// The name as serialized (`event`, `count`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Event => "event",
            AlertKind::Count => "count",
            AlertKind::Distinct => "distinct",
            AlertKind::Absence => "absence",
            AlertKind::Sequence => "sequence",
            AlertKind::Storm => "storm",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable identity of this firing (see [`alert_id`]): the same events give the same ID,
    /// so a restart that replays them, and receivers that deduplicate, see one alert.
    pub id: String,
    pub rule: Arc<str>,
    pub severity: Severity,
    pub kind: AlertKind,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Arc<str>>,
    pub group: Group,
    /// Requests in the window when it fired (distinct values for a distinct count; 0 for an
    /// absence; 1 for a plain event rule).
    pub count: u64,
    pub first_seen: EventTime,
    pub last_seen: EventTime,
    /// auditIDs of the contributing requests, oldest first, at most [`MAX_AUDIT_IDS`].
    pub audit_ids: Vec<String>,
    /// The contributing requests (who, verb, object, source IP, time, code), as `audit_ids`.
    #[serde(default)]
    pub events: Vec<EventRef>,
    pub labels: Arc<BTreeMap<String, String>>,
    /// The rule's `notify` list, when it has one (it replaces routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Arc<[String]>>,
    /// Firings of this rule and group swallowed by `throttle` since the previous alert.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Arc<str>>,
}

/// The ID of a firing: 32 hex digits of two FNV-1a hashes over the rule, kind, group key,
/// time span, count and first auditID. Fixed algorithm (not std's hasher, which may change
/// between Rust releases), because IDs are persisted and sent to receivers.
pub fn alert_id(
    rule: &str,
    kind: AlertKind,
    key: &str,
    first_seen: EventTime,
    last_seen: EventTime,
    count: u64,
    first_audit_id: &str,
) -> String {
    let kind = kind as u8;
    let parts: [&[u8]; 7] = [
        rule.as_bytes(),
        &[kind],
        key.as_bytes(),
        &first_seen.0.to_le_bytes(),
        &last_seen.0.to_le_bytes(),
        &count.to_le_bytes(),
        first_audit_id.as_bytes(),
    ];
    stable_hash(&parts)
}

/// 32 hex digits of two FNV-1a hashes over `parts`: stable across Rust releases and
/// platforms (std's hasher is not), for IDs that are persisted or sent to receivers.
pub fn stable_hash(parts: &[&[u8]]) -> String {
    fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
        let mut h = seed;
        for part in parts {
            for &b in *part {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            // Separator, so ("ab","c") and ("a","bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325, parts),
        fnv(0x6c62_272e_07bb_0142, parts)
    )
}

/// Cap on `audit_ids` per alert, so a 10,000-event burst makes a readable alert.
pub const MAX_AUDIT_IDS: usize = 20;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Alert {
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One human line: `time SEVERITY rule [group] count=N: summary`.
    /// The value of a field as routes, groups, silences and queries see it: `rule` (also
    /// `alertname`), `severity`, `kind`, `id`, `group.<field>` (a `group_by` value), or a rule
    /// label.
    pub fn field(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match name {
            "rule" | "alertname" => Some(Cow::Borrowed(&self.rule)),
            "severity" => Some(Cow::Borrowed(self.severity.as_str())),
            "kind" => Some(Cow::Borrowed(self.kind.as_str())),
            "id" => Some(Cow::Borrowed(&self.id)),
            _ => match name.strip_prefix("group.") {
                Some(field) => self
                    .group
                    .0
                    .iter()
                    .find(|(k, _)| &**k == field)
                    .map(|(_, v)| Cow::Borrowed(v.as_str())),
                None => self.labels.get(name).map(|v| Cow::Borrowed(v.as_str())),
            },
        }
    }

    /// One line for a terminal or a log file. Everything in it that came from an event (user
    /// names, object names, summaries) has its control characters escaped (`\n`, `\u{1b}`),
    /// and so have bidirectional-text overrides: a user name holding a newline and a forged
    /// `CRITICAL` line, or an ANSI escape, prints as the harmless text it is.
    pub fn to_text_line(&self) -> String {
        let line = self.unescaped_text_line();
        match escape_controls(&line) {
            std::borrow::Cow::Borrowed(_) => line,
            std::borrow::Cow::Owned(escaped) => escaped,
        }
    }

    fn unescaped_text_line(&self) -> String {
        let mut s = format!(
            "{} {:<8} {}",
            self.last_seen,
            self.severity.as_str().to_uppercase(),
            self.rule
        );
        if !self.group.0.is_empty() {
            let _ = write!(s, " [{}]", self.group);
        }
        if self.kind != AlertKind::Event {
            let _ = write!(s, " count={}", self.count);
        }
        if self.suppressed > 0 {
            let _ = write!(s, " (+{} throttled)", self.suppressed);
        }
        let _ = write!(s, ": {}", self.summary);
        s
    }
}

/// `text` with control characters (C0, DEL, C1) and bidirectional overrides written as
/// escapes; borrowed when there are none.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.contains(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}
