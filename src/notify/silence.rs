//! Silences: time-bounded matchers that stop notifications for the alerts they match. A
//! silenced alert is still written to the alert journal, counted and logged; it is only not
//! sent. Kept in `silences.json` in the state dir, so they survive restarts.
//!
//! Matchers read like Alertmanager's: `name=value`, `name!=value`, `name=~regex`,
//! `name!~regex` (regexes anchored), over the fields of [`super::route::alert_field`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::Alert;

use super::route::alert_field;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "=~")]
    Re,
    #[serde(rename = "!~")]
    NotRe,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "MatcherText", into = "MatcherText")]
pub struct Matcher {
    pub name: String,
    pub op: Op,
    pub value: String,
    regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.op, &self.value) == (&other.name, other.op, &other.value)
    }
}

#[derive(Serialize, Deserialize)]
struct MatcherText {
    name: String,
    op: Op,
    value: String,
}

impl TryFrom<MatcherText> for Matcher {
    type Error = String;
    fn try_from(t: MatcherText) -> Result<Matcher, String> {
        Matcher::new(t.name, t.op, t.value)
    }
}

impl From<Matcher> for MatcherText {
    fn from(m: Matcher) -> MatcherText {
        MatcherText {
            name: m.name,
            op: m.op,
            value: m.value,
        }
    }
}

impl Matcher {
    pub fn new(name: String, op: Op, value: String) -> Result<Matcher, String> {
        if name.is_empty() {
            return Err("a matcher needs a field name".into());
        }
        let regex = match op {
            Op::Re | Op::NotRe => Some(
                regex::Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("invalid regex {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name,
            op,
            value,
            regex,
        })
    }

    pub fn matches(&self, alert: &Alert) -> bool {
        let got = alert_field(alert, &self.name);
        let got = got.as_deref().unwrap_or("");
        match (self.op, &self.regex) {
            (Op::Eq, _) => got == self.value,
            (Op::Ne, _) => got != self.value,
            (Op::Re, Some(re)) => re.is_match(got),
            (Op::NotRe, Some(re)) => !re.is_match(got),
            _ => false,
        }
    }
}

impl FromStr for Matcher {
    type Err = String;
    /// `rule=foo`, `severity!=info`, `group.user=~"bob|eve"`.
    fn from_str(s: &str) -> Result<Matcher, String> {
        let (at, op, len) = ["!=", "=~", "!~", "="]
            .iter()
            .filter_map(|op| s.find(op).map(|i| (i, *op)))
            .min_by_key(|(i, op)| (*i, std::cmp::Reverse(op.len())))
            .map(|(i, op)| {
                let parsed = match op {
                    "!=" => Op::Ne,
                    "=~" => Op::Re,
                    "!~" => Op::NotRe,
                    _ => Op::Eq,
                };
                (i, parsed, op.len())
            })
            .ok_or_else(|| {
                format!("matcher {s:?} has no operator (use =, !=, =~ or !~, e.g. rule=pod-exec)")
            })?;
        let name = s[..at].trim().to_owned();
        let value = s[at + len..].trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .to_owned();
        Matcher::new(name, op, value)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Re => "=~",
            Op::NotRe => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    pub fn matches(&self, alert: &Alert) -> bool {
        !self.matchers.is_empty() && self.matchers.iter().all(|m| m.matches(alert))
    }

    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }
}

/// What a client asks for when creating a silence (HTTP API and CLI).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Matchers as text (`rule=foo`) or objects.
    pub matchers: Vec<MatcherSpec>,
    pub starts_at: Option<DateTime<Utc>>,
    /// Either `ends_at` or `duration` (e.g. `2h`).
    pub ends_at: Option<DateTime<Utc>>,
    pub duration: Option<String>,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatcherSpec {
    Text(String),
    Object(Matcher),
}

#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error("{0}")]
    Invalid(String),
    #[error("no silence with id {0:?}")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The silences, persisted on every change.
#[derive(Debug)]
pub struct Silences {
    path: PathBuf,
    list: Vec<Silence>,
}

/// Expired silences are kept this long (for `silence list`), then forgotten.
const KEEP_EXPIRED: chrono::TimeDelta = chrono::TimeDelta::days(7);

impl Silences {
    pub fn open(path: &Path) -> Result<Silences, SilenceError> {
        let io = |source| SilenceError::Io {
            path: path.to_owned(),
            source,
        };
        let list = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| SilenceError::Invalid(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(Silences {
            path: path.to_owned(),
            list,
        })
    }

    pub fn list(&self) -> &[Silence] {
        &self.list
    }

    /// The first active silence matching `alert`.
    pub fn silencing(&self, alert: &Alert, now: DateTime<Utc>) -> Option<&Silence> {
        self.list
            .iter()
            .find(|s| s.is_active(now) && s.matches(alert))
    }

    pub fn active_count(&self, now: DateTime<Utc>) -> usize {
        self.list.iter().filter(|s| s.is_active(now)).count()
    }

    pub fn add(&mut self, new: NewSilence, now: DateTime<Utc>) -> Result<Silence, SilenceError> {
        let matchers = new
            .matchers
            .into_iter()
            .map(|m| match m {
                MatcherSpec::Text(t) => t.parse::<Matcher>(),
                MatcherSpec::Object(m) => Ok(m),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(SilenceError::Invalid)?;
        if matchers.is_empty() {
            return Err(SilenceError::Invalid(
                "a silence needs at least one matcher".into(),
            ));
        }
        let starts_at = new.starts_at.unwrap_or(now);
        let ends_at = match (new.ends_at, new.duration) {
            (Some(end), None) => end,
            (None, Some(d)) => {
                let span = crate::event::Span::parse(&d).map_err(SilenceError::Invalid)?;
                starts_at + chrono::TimeDelta::nanoseconds(span.0)
            }
            _ => {
                return Err(SilenceError::Invalid(
                    "give exactly one of ends_at and duration".into(),
                ));
            }
        };
        if ends_at <= starts_at {
            return Err(SilenceError::Invalid(
                "ends_at must be after starts_at".into(),
            ));
        }
        let silence = Silence {
            id: silence_id(&matchers, starts_at, now),
            matchers,
            starts_at,
            ends_at,
            created_by: new.created_by,
            comment: new.comment,
        };
        self.list.retain(|s| s.ends_at + KEEP_EXPIRED > now);
        self.list.push(silence.clone());
        self.save()?;
        Ok(silence)
    }

    /// Ends a silence now.
    pub fn expire(&mut self, id: &str, now: DateTime<Utc>) -> Result<Silence, SilenceError> {
        let s = self
            .list
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| SilenceError::NotFound(id.to_owned()))?;
        if s.ends_at > now {
            s.ends_at = now.max(s.starts_at);
        }
        let out = s.clone();
        self.save()?;
        Ok(out)
    }

    fn save(&self) -> Result<(), SilenceError> {
        let io = |source| SilenceError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(&self.list).map_err(|e| io(std::io::Error::other(e)))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            crate::state::sync_dir(dir).map_err(io)?;
        }
        Ok(())
    }
}

fn silence_id(matchers: &[Matcher], starts: DateTime<Utc>, now: DateTime<Utc>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in matchers {
        m.to_string().hash(&mut h);
    }
    starts.timestamp_nanos_opt().hash(&mut h);
    now.timestamp_nanos_opt().hash(&mut h);
    std::process::id().hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing::alert;
    use crate::rules::Severity;

    #[test]
    fn matchers_parse_and_match() {
        let a = alert("pod-exec", Severity::High, &[("team", "apps")]);
        for (text, want) in [
            ("rule=pod-exec", true),
            ("rule!=pod-exec", false),
            ("severity=~\"high|critical\"", true),
            ("team!~ap", true),
            ("team=~ap.*", true),
            ("missing=", true),
        ] {
            let m: Matcher = text.parse().unwrap();
            assert_eq!(m.matches(&a), want, "{text}");
        }
        assert!("rule".parse::<Matcher>().is_err());
        assert!("rule=~(".parse::<Matcher>().is_err());
    }

    #[test]
    fn silences_persist_expire_and_only_match_while_active() {
        let dir = std::env::temp_dir().join(format!("aw-silence-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silences.json");
        let _ = std::fs::remove_file(&path);
        let now = Utc::now();
        let mut s = Silences::open(&path).unwrap();
        let created = s
            .add(
                NewSilence {
                    matchers: vec![MatcherSpec::Text("rule=pod-exec".into())],
                    starts_at: None,
                    ends_at: None,
                    duration: Some("2h".into()),
                    created_by: "alice".into(),
                    comment: "maintenance".into(),
                },
                now,
            )
            .unwrap();
        let a = alert("pod-exec", Severity::High, &[]);
        assert!(s.silencing(&a, now).is_some());
        assert!(s.silencing(&a, now + chrono::TimeDelta::hours(3)).is_none());
        let reopened = Silences::open(&path).unwrap();
        assert_eq!(reopened.list(), s.list());
        s.expire(&created.id, now + chrono::TimeDelta::minutes(1))
            .unwrap();
        assert!(
            s.silencing(&a, now + chrono::TimeDelta::minutes(2))
                .is_none()
        );
        assert!(matches!(
            s.expire("nope", now),
            Err(SilenceError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
