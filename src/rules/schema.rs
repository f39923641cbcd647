//! The rule file format, as serde types. `docs/rules.md` is the prose version of this file.
//!
//! Everything is `deny_unknown_fields`: a misspelt key is an error with its position, never a
//! silently ignored filter.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The outer shape of a rules file; each rule is then deserialized on its own so that one
/// broken rule does not hide the errors of the others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileShape {
    /// Name → items (a definition), or `{append: [...]}` / `{replace: [...]}` (an edit of a
    /// list another file defines); read by [`ListDoc::from_value`].
    #[serde(default)]
    pub lists: BTreeMap<String, serde_yaml::Value>,
    /// Names or globs of rules, from any loaded file, that load but are never evaluated.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Names or globs of rules that ship switched off (`enabled: false`) to turn on.
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub rules: Vec<serde_yaml::Value>,
}

/// One entry of a file's `lists`.
#[derive(Debug, Clone, PartialEq)]
pub enum ListDoc {
    Define(Vec<String>),
    /// Items added to a list defined in another file (site tuning of a shipped pack).
    Append(Vec<String>),
    /// New items for a list defined in another file; at most one file may replace a list.
    Replace(Vec<String>),
}

impl ListDoc {
    /// Reads a list entry; the error says what shapes are accepted.
    pub fn from_value(value: &serde_yaml::Value) -> Result<ListDoc, String> {
        use serde_yaml::Value;
        let strings = |v: &Value| -> Result<Vec<String>, String> {
            let Value::Sequence(items) = v else {
                return Err("expected a list of strings".into());
            };
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => Err("list items must be strings".to_owned()),
                })
                .collect()
        };
        match value {
            Value::Sequence(_) => strings(value).map(ListDoc::Define),
            Value::Mapping(map) if map.len() == 1 => {
                let (key, items) = map.iter().next().expect("one entry");
                match key.as_str() {
                    Some("append") => strings(items).map(ListDoc::Append),
                    Some("replace") => strings(items).map(ListDoc::Replace),
                    _ => Err("a list edit is `{append: [...]}` or `{replace: [...]}`".to_owned()),
                }
            }
            _ => Err(
                "expected a list of strings, `{append: [...]}` or `{replace: [...]}`".to_owned(),
            ),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    /// Unique across every loaded file; used in alerts, metrics and tests.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub severity: SeverityDoc,
    /// Severity by request: the first entry whose block matches the request sets the alert's
    /// severity (rules without a window only); `severity` otherwise.
    #[serde(default)]
    pub severity_when: Vec<SeverityWhenDoc>,
    /// `false` loads and validates the rule but never evaluates it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Declarative prefilter; every listed criterion must hold.
    #[serde(default, rename = "match")]
    pub match_: Option<MatchDoc>,
    /// A Rhai expression that must evaluate to `true` (after `match` passed).
    #[serde(default)]
    pub condition: Option<String>,
    /// Alert text, a minijinja template over the event's fields and the alert's.
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Notifiers (by name, from the daemon config) this rule's alerts go to, instead of the
    /// routing tree.
    #[serde(default)]
    pub notify: Option<Vec<String>>,
    /// Fields that key throttling (and the alert's `group`) for a rule without a window.
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    #[serde(default)]
    pub window: Option<WindowDoc>,
    /// At most one alert per group per this long (event time), e.g. `10m`.
    #[serde(default)]
    pub throttle: Option<String>,
    /// Who wrote the rule; carried into alerts (required attribution for DRL-licensed rules).
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One `severity_when` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityWhenDoc {
    pub severity: SeverityDoc,
    #[serde(rename = "match")]
    pub match_: MatchDoc,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SeverityDoc {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// A declarative match block. Lists mean "any of"; fields are AND-ed.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct MatchDoc {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, ...
    #[serde(default)]
    pub verbs: Option<Vec<String>>,
    /// `[group/]resource[/subresource]`: `pods`, `pods/exec`, `networking.k8s.io/ingresses`,
    /// `core/secrets` (core group only), `*/pods` (any group).
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Authenticated `user.username` (glob patterns).
    #[serde(default)]
    pub users: Option<Vec<String>>,
    /// Effective user: impersonated user if any, else `user.username`.
    #[serde(default)]
    pub effective_users: Option<Vec<String>>,
    /// Any of `user.groups` matches any pattern.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Codes (`403`), classes (`4xx`) or ranges (`400-499`).
    #[serde(default)]
    pub response_codes: Option<Vec<CodeDoc>>,
    #[serde(default)]
    pub stages: Option<Vec<String>>,
    #[serde(default)]
    pub levels: Option<Vec<String>>,
    /// Addresses or CIDRs; any of `sourceIPs` inside any of them.
    #[serde(default)]
    pub source_ips: Option<Vec<String>>,
    /// Whether the client address (`sourceIPs[0]`) is globally routable. (A key added to
    /// any rule document also goes into `legacy_debug_text`'s list in load.rs.)
    #[serde(default)]
    pub public_source_ip: Option<bool>,
    #[serde(default)]
    pub user_agents: Option<Vec<String>>,
    #[serde(default)]
    pub request_uris: Option<Vec<String>>,
    /// Field criteria: path → accepted values (any of); see docs/rules.md.
    #[serde(default)]
    pub fields: BTreeMap<String, Vec<serde_yaml::Value>>,
    /// Like `fields`, but the path must reach at least one value and every value it reaches
    /// must be accepted ("every container's image is allowed").
    #[serde(default)]
    pub every: BTreeMap<String, Vec<serde_yaml::Value>>,
    /// Paths that must reach nothing (or only null, "", [] or {}).
    #[serde(default)]
    pub absent: Vec<String>,
    /// Paths that must reach something.
    #[serde(default)]
    pub present: Vec<String>,
    /// At least one of these blocks must match.
    #[serde(default)]
    pub any: Vec<MatchDoc>,
    /// Exceptions: the event is excluded when any of these blocks matches it fully.
    #[serde(default)]
    pub except: Vec<MatchDoc>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum CodeDoc {
    Code(i64),
    Text(String),
}

/// Window spec: a count (`over` + `threshold`), a distinct count (plus `distinct`), an
/// absence (`absent_for`), or a sequence (`over` + `sequence`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDoc {
    #[serde(default)]
    pub over: Option<String>,
    #[serde(default)]
    pub threshold: Option<u64>,
    #[serde(default)]
    pub distinct: Option<String>,
    #[serde(default)]
    pub absent_for: Option<String>,
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Steps that must all be seen within `over` in one group, in order unless
    /// `ordered: false` (then `threshold` of them, default all).
    #[serde(default)]
    pub sequence: Option<Vec<StepDoc>>,
    #[serde(default)]
    pub ordered: Option<bool>,
}

/// One step of a sequence window: a match block, named for alerts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDoc {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: MatchDoc,
}
