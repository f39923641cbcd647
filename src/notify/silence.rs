//! Silences: time-bounded matchers that stop notifications for the alerts they match. A
//! silenced alert is still written to the alert journal, counted and logged; it is only not
//! sent. Kept in `silences.json` in the state dir, so they survive restarts.
//!
//! A silence is a way to stop alerts, so it is bounded like any input an attacker may send
//! ([`SilenceLimits`]: duration, count, comment and matcher sizes), and one that matches every
//! alert must be confirmed explicitly (`confirm_match_all`) and is logged at WARN. Who created
//! or expired which silence is recorded in the alert journal by [`SilenceDesk`], which the HTTP
//! API and the console share.
//!
//! Matchers read like Alertmanager's: `name=value`, `name!=value`, `name=~regex`,
//! `name!~regex` (regexes anchored), over the fields of [`Alert::field`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::rules::Severity;
use crate::state::{ChangeRecord, SharedAlertJournal};

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

    /// Whether the alert's field passes. `severity` has two names per alert, auditwatch's
    /// own (`high`) and Alertmanager's usual one (`critical`, see
    /// [`Severity::alertmanager_label`]): `=` and `=~` pass when either does, `!=` and `!~`
    /// when both do, so routes and silences written for Alertmanager work unchanged.
    pub fn matches(&self, alert: &Alert) -> bool {
        if self.name == "severity" {
            return self.accepts_severity(alert.severity);
        }
        let got = alert.field(&self.name);
        self.accepts(got.as_deref().unwrap_or(""))
    }

    fn accepts_severity(&self, severity: Severity) -> bool {
        let (own, am) = (severity.as_str(), severity.alertmanager_label());
        match self.op {
            Op::Eq | Op::Re => self.accepts(own) || self.accepts(am),
            Op::Ne | Op::NotRe => self.accepts(own) && self.accepts(am),
        }
    }

    /// Whether the matcher accepts every value its field can have: `rule=~".*"`,
    /// `rule=~".+"`, `rule!=""`, `severity!=fatal` ... Decided on probe values: every
    /// severity for `severity`; arbitrary text for the fields every alert has (`rule`, `id`,
    /// `kind`); that and the empty string for labels and group fields, which may be missing.
    pub fn accepts_anything(&self) -> bool {
        match self.name.as_str() {
            "severity" => Severity::ALL.iter().all(|s| self.accepts_severity(*s)),
            "rule" | "alertname" | "id" | "kind" => PROBES.iter().all(|p| self.accepts(p)),
            _ => self.accepts("") && PROBES.iter().all(|p| self.accepts(p)),
        }
    }

    fn accepts(&self, got: &str) -> bool {
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
    /// As the client gave it (free text, like Alertmanager's `createdBy`).
    #[serde(default)]
    pub created_by: String,
    /// Who the daemon authenticated when the silence was created (`anonymous` without auth).
    #[serde(default)]
    pub authenticated_as: String,
    #[serde(default)]
    pub comment: String,
    /// Who expired it, if it was expired early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
}

/// Bounds on silences (`silences:` in the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SilenceLimits {
    /// Silences that are active or pending at once.
    pub max_silences: usize,
    /// Longest time a silence may run (`ends_at - starts_at`).
    pub max_duration: crate::units::Duration,
    /// Longest comment, in bytes.
    pub max_comment_bytes: usize,
    /// Matchers per silence.
    pub max_matchers: usize,
    /// Longest matcher name or value, in bytes (a regex is compiled from it).
    pub max_matcher_bytes: usize,
}

impl Default for SilenceLimits {
    fn default() -> Self {
        SilenceLimits {
            max_silences: 500,
            max_duration: crate::units::Duration(crate::event::Span::from_secs(30 * 86_400)),
            max_comment_bytes: 1024,
            max_matchers: 16,
            max_matcher_bytes: 512,
        }
    }
}

/// Values that "any value" matchers are tried on (see [`Matcher::accepts_anything`]).
const PROBES: [&str; 5] = [
    "x",
    "pod-exec",
    "Critical",
    "0123456789abcdef",
    "Z9-_.:/@ ü",
];

impl Silence {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    pub fn matches(&self, alert: &Alert) -> bool {
        !self.matchers.is_empty() && self.matchers.iter().all(|m| m.matches(alert))
    }

    /// Whether it matches every alert (each of its matchers accepts anything).
    pub fn matches_everything(&self) -> bool {
        self.matchers.iter().all(Matcher::accepts_anything)
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
    /// Must be true for a silence that matches every alert.
    #[serde(default)]
    pub confirm_match_all: bool,
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
    #[error("{0}")]
    Limit(String),
    #[error("no silence with id {0:?}")]
    NotFound(String),
    #[error("the silences are unavailable (a thread panicked holding them)")]
    Poisoned,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Adds and expires silences for a client and records who did it, from where, in the alert
/// journal. The silences API and the console both go through it.
#[derive(Clone)]
pub struct SilenceDesk {
    pub silences: Arc<Mutex<Silences>>,
    pub journal: SharedAlertJournal,
}

impl SilenceDesk {
    pub fn add(
        &self,
        new: NewSilence,
        by: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Silence, SilenceError> {
        let created = self
            .silences
            .lock()
            .map_err(|_| SilenceError::Poisoned)?
            .add(new, by, Utc::now())?;
        let matchers: Vec<String> = created.matchers.iter().map(ToString::to_string).collect();
        if created.matches_everything() {
            tracing::warn!(silence = %created.id, ?matchers, ends_at = %created.ends_at, by, "silence added that matches EVERY alert: no notification goes out until it ends");
        } else {
            tracing::info!(silence = %created.id, ?matchers, ends_at = %created.ends_at, by, "silence added");
        }
        self.record("create", by, peer, &created);
        Ok(created)
    }

    pub fn expire(
        &self,
        id: &str,
        by: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Silence, SilenceError> {
        let expired = self
            .silences
            .lock()
            .map_err(|_| SilenceError::Poisoned)?
            .expire(id, by, Utc::now())?;
        tracing::info!(silence = %expired.id, by, "silence expired");
        self.record("expire", by, peer, &expired);
        Ok(expired)
    }

    /// Records a change in the alert journal; a failure is logged (the change stands: it is
    /// already persisted in `silences.json`).
    fn record(&self, action: &str, by: &str, peer: Option<SocketAddr>, silence: &Silence) {
        let change = ChangeRecord {
            record: "silence".into(),
            action: action.into(),
            at: Utc::now(),
            by: by.to_owned(),
            peer: peer.map(|p| p.to_string()),
            object: serde_json::to_value(silence).unwrap_or_default(),
        };
        let written = self
            .journal
            .lock()
            .map_err(|_| "lock poisoned".to_owned())
            .and_then(|mut j| j.append_change(&change).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::error!(error = %e, action, "cannot record the silence change in the alert journal");
        }
    }
}

/// The silences, persisted on every change.
#[derive(Debug)]
pub struct Silences {
    path: PathBuf,
    list: Vec<Silence>,
    limits: SilenceLimits,
}

/// Expired silences are kept this long (for `silence list`), then forgotten.
const KEEP_EXPIRED: chrono::TimeDelta = chrono::TimeDelta::days(7);

impl Silences {
    pub fn open(path: &Path, limits: SilenceLimits) -> Result<Silences, SilenceError> {
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
            limits,
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

    /// Adds a silence for `by` (the authenticated principal). Bounded by the limits; one that
    /// matches every alert needs `confirm_match_all`.
    pub fn add(
        &mut self,
        new: NewSilence,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Silence, SilenceError> {
        let silence = self.build(new, by, now)?;
        let limits = &self.limits;
        let in_force = self.list.iter().filter(|s| s.ends_at > now).count();
        if in_force >= limits.max_silences {
            return Err(SilenceError::Limit(format!(
                "{in_force} silences are active or pending; at most {} (silences.max_silences): expire some first",
                limits.max_silences
            )));
        }
        self.list.retain(|s| s.ends_at + KEEP_EXPIRED > now);
        // Expired ones are kept for listing, but not without bound either.
        while self.list.len() >= 2 * limits.max_silences {
            let Some(oldest) = self
                .list
                .iter()
                .enumerate()
                .filter(|(_, s)| s.ends_at <= now)
                .min_by_key(|(_, s)| s.ends_at)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.list.remove(oldest);
        }
        self.list.push(silence.clone());
        self.save()?;
        Ok(silence)
    }

    /// The silence `new` describes, checked against the limits, without adding it (the
    /// console previews what it would mute before it is saved).
    pub fn build(
        &self,
        new: NewSilence,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Silence, SilenceError> {
        let limits = &self.limits;
        if new.matchers.len() > limits.max_matchers {
            return Err(SilenceError::Limit(format!(
                "{} matchers; at most {} (silences.max_matchers)",
                new.matchers.len(),
                limits.max_matchers
            )));
        }
        if new.comment.len() > limits.max_comment_bytes {
            return Err(SilenceError::Limit(format!(
                "comment of {} bytes; at most {} (silences.max_comment_bytes)",
                new.comment.len(),
                limits.max_comment_bytes
            )));
        }
        if new.created_by.len() > limits.max_comment_bytes {
            return Err(SilenceError::Limit(format!(
                "created_by of {} bytes; at most {}",
                new.created_by.len(),
                limits.max_comment_bytes
            )));
        }
        let too_long = |text: &str| text.len() > limits.max_matcher_bytes;
        let matchers = new
            .matchers
            .into_iter()
            .map(|m| match m {
                MatcherSpec::Text(t) if too_long(&t) => Err(format!(
                    "matcher of {} bytes; at most {} (silences.max_matcher_bytes)",
                    t.len(),
                    limits.max_matcher_bytes
                )),
                MatcherSpec::Text(t) => t.parse::<Matcher>(),
                MatcherSpec::Object(m) if too_long(&m.name) || too_long(&m.value) => Err(format!(
                    "matcher name or value over {} bytes (silences.max_matcher_bytes)",
                    limits.max_matcher_bytes
                )),
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
                Some(chrono::TimeDelta::nanoseconds(span.0))
                    .and_then(|d| starts_at.checked_add_signed(d))
                    .ok_or_else(|| SilenceError::Invalid(format!("duration {d:?} is too long")))?
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
        let max = chrono::TimeDelta::nanoseconds(limits.max_duration.0.0);
        if ends_at - starts_at > max {
            return Err(SilenceError::Limit(format!(
                "a silence may last {} at most (silences.max_duration); this one would last until {ends_at}",
                limits.max_duration.0
            )));
        }
        if starts_at - now > max {
            return Err(SilenceError::Limit(format!(
                "a silence may start {} ahead at most",
                limits.max_duration.0
            )));
        }
        let silence = Silence {
            id: silence_id(&matchers, starts_at, now),
            matchers,
            starts_at,
            ends_at,
            created_by: if new.created_by.is_empty() {
                by.to_owned()
            } else {
                new.created_by
            },
            authenticated_as: by.to_owned(),
            comment: new.comment,
            expired_by: None,
        };
        if silence.matches_everything() && !new.confirm_match_all {
            return Err(SilenceError::Invalid(
                "this silence matches every alert: set confirm_match_all: true (--confirm-match-all) if that is what you mean".into(),
            ));
        }
        Ok(silence)
    }

    /// Ends a silence now, for `by`.
    pub fn expire(
        &mut self,
        id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Silence, SilenceError> {
        let s = self
            .list
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| SilenceError::NotFound(id.to_owned()))?;
        if s.ends_at > now {
            s.ends_at = now.max(s.starts_at);
            s.expired_by = Some(by.to_owned());
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
        let bytes = serde_json::to_vec(&self.list).map_err(|e| io(std::io::Error::other(e)))?;
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

/// A new silence's id: 16 hex digits of a SHA-256 over its matchers, its start, the time of
/// creation and this process (unique for practical purposes; stored, never recomputed).
fn silence_id(matchers: &[Matcher], starts: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for m in matchers {
        ctx.update(m.to_string().as_bytes());
        ctx.update(&[0]);
    }
    for t in [starts, now] {
        ctx.update(&t.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
    }
    ctx.update(&std::process::id().to_le_bytes());
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::testing::alert;
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
    fn silences_that_match_everything_are_recognised() {
        for (matchers, everything) in [
            (vec!["rule=~.*"], true),
            (vec!["rule=~.+"], true),
            (vec!["rule!=\"\""], true),
            (vec!["severity=~\"info|low|medium|high|critical\""], true),
            (vec!["severity!=fatal"], true),
            (vec!["team=~.*"], true),
            (vec!["rule=~.*", "severity=~.*"], true),
            (vec!["team=~.+"], false),
            (vec!["rule=pod-exec"], false),
            (vec!["rule=~pod-.*"], false),
            (vec!["severity=~\"low|medium|high|critical\""], false),
            (vec!["rule=~.*", "severity=high"], false),
        ] {
            let silence = Silence {
                id: String::new(),
                matchers: matchers.iter().map(|m| m.parse().unwrap()).collect(),
                starts_at: Utc::now(),
                ends_at: Utc::now(),
                created_by: String::new(),
                authenticated_as: String::new(),
                comment: String::new(),
                expired_by: None,
            };
            assert_eq!(silence.matches_everything(), everything, "{matchers:?}");
        }
    }

    #[test]
    fn silences_persist_expire_and_only_match_while_active() {
        let dir = std::env::temp_dir().join(format!("aw-silence-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silences.json");
        let _ = std::fs::remove_file(&path);
        let now = Utc::now();
        let mut s = Silences::open(&path, SilenceLimits::default()).unwrap();
        let created = s
            .add(
                NewSilence {
                    matchers: vec![MatcherSpec::Text("rule=pod-exec".into())],
                    starts_at: None,
                    ends_at: None,
                    duration: Some("2h".into()),
                    created_by: "alice".into(),
                    comment: "maintenance".into(),
                    confirm_match_all: false,
                },
                "alice",
                now,
            )
            .unwrap();
        let a = alert("pod-exec", Severity::High, &[]);
        assert!(s.silencing(&a, now).is_some());
        assert!(s.silencing(&a, now + chrono::TimeDelta::hours(3)).is_none());
        let reopened = Silences::open(&path, SilenceLimits::default()).unwrap();
        assert_eq!(reopened.list(), s.list());
        s.expire(&created.id, "bob", now + chrono::TimeDelta::minutes(1))
            .unwrap();
        assert_eq!(s.list()[0].expired_by.as_deref(), Some("bob"));
        assert!(
            s.silencing(&a, now + chrono::TimeDelta::minutes(2))
                .is_none()
        );
        assert!(matches!(
            s.expire("nope", "bob", now),
            Err(SilenceError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
