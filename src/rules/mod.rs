//! Rules: the YAML format ([`schema`]), loading with positioned errors ([`load`]), and the
//! compiled form the engine runs ([`Rule`], [`RuleSet`]).
//!
//! Loading validates everything up front (unknown keys, durations, fields, list references,
//! Rhai syntax, templates, duplicate names) so that a rule set that loads cannot fail later for
//! a reason visible in the file.

pub mod fields;
mod load;
mod matcher;
pub mod needs;
pub mod pattern;
mod schema;
pub mod script;
pub mod sigma;
mod template;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

pub use load::{
    LoadError, LoadOptions, RuleError, collect_rule_files, is_test_file, load_paths, load_sources,
    load_str,
};
pub use matcher::{
    ExactResource, Explained, Matcher, Patterns, ResourcePattern, SigmaMatch, Subresource,
};
pub use script::{Condition, ScriptLimits};
pub use template::{Captured, Summary, default_summary};

use crate::event::Span;
use crate::event::field::FieldPath;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The name Alertmanager routes usually use: critical and high as `critical`, medium as
    /// `warning`, low and info as `info`.
    pub fn alertmanager_label(self) -> &'static str {
        match self {
            Severity::Critical | Severity::High => "critical",
            Severity::Medium => "warning",
            Severity::Low | Severity::Info => "info",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    /// `info`, `low`, `medium`, `high` or `critical`, in any case.
    fn from_str(s: &str) -> Result<Severity, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown severity {s:?} (info, low, medium, high, critical)"))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule counts before it fires.
#[derive(Clone, Debug, PartialEq)]
pub enum WindowSpec {
    /// Fire when `threshold` matching requests of one group fall within `over`.
    Count { over: Span, threshold: u64 },
    /// Fire when `threshold` distinct values of `field` in one group fall within `over`.
    Distinct {
        over: Span,
        threshold: u64,
        field: FieldPath,
    },
    /// Fire when a group that has been seen stays silent for `after`.
    Absence { after: Span },
    /// Fire when requests matching `threshold` of the named `steps` (each a matcher in
    /// [`Rule::steps`]) fall within `over` in one group; with `ordered`, every step in the
    /// given order (threshold = all steps).
    Sequence {
        over: Span,
        steps: Vec<Arc<str>>,
        threshold: u64,
        ordered: bool,
    },
}

/// Most steps a sequence window can have (a request's matched steps are a 64-bit mask).
pub const MAX_SEQUENCE_STEPS: u64 = 64;

/// Where a rule was defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub description: Option<Arc<str>>,
    pub severity: Severity,
    /// Per-request severities of a rule without a window: the first matching block wins.
    pub severity_when: Vec<(Severity, Matcher)>,
    pub enabled: bool,
    pub matcher: Matcher,
    pub condition: Option<Condition>,
    pub summary: Option<Summary>,
    pub labels: Arc<BTreeMap<String, String>>,
    /// The rule's own notifier list (replaces routing), checked against the config by the daemon.
    pub notify: Option<Arc<[String]>>,
    pub group_by: Vec<FieldPath>,
    pub window: Option<WindowSpec>,
    /// The step matchers of a [`WindowSpec::Sequence`] window (empty otherwise), in step order;
    /// `matcher` is their OR.
    pub steps: Vec<Matcher>,
    pub throttle: Option<Span>,
    pub author: Option<Arc<str>>,
    pub tags: Vec<String>,
    pub references: Vec<String>,
    pub origin: Origin,
    /// The rule's stable identity: equal ids mean window state carries over a reload and a
    /// restart (see [`RuleId`]).
    pub id: RuleId,
    /// What snapshots written before [`RuleId`] identified the rule by (std's hasher over
    /// the rule's debug output): kept only to restore those snapshots once.
    pub legacy_fingerprint: u64,
}

/// A rule's identity across reloads, restarts and upgrades: the SHA-256 of its definition in a
/// canonical form (the rule's YAML value, merge keys applied, as JSON with sorted keys and no
/// spaces). Reformatting, reordering keys, comments and quoting do not change it; changing
/// what the rule says does. Specified, so it does not change with a toolchain or a new field
/// in auditwatch's own structs (the fingerprint it replaces did both).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub [u8; 32]);

impl RuleId {
    /// The id of a rule definition given as a YAML value.
    pub fn of_yaml(value: &serde_yaml::Value) -> RuleId {
        // JSON's objects here are BTreeMaps: sorted keys. A value JSON cannot hold (a
        // non-string map key) is hashed in its YAML form.
        let canonical = match serde_json::to_value(value).and_then(|v| serde_json::to_vec(&v)) {
            Ok(json) => json,
            Err(_) => serde_yaml::to_string(value)
                .unwrap_or_default()
                .into_bytes(),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &canonical);
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        RuleId(id)
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RuleId({})", self.hex())
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The running rule set, swapped whole on reload, for readers outside the engine thread (the
/// console's rules page).
pub type SharedRules = std::sync::Arc<std::sync::RwLock<std::sync::Arc<RuleSet>>>;

/// Every loaded rule plus what their conditions and templates share.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub lists: BTreeMap<String, Vec<String>>,
    pub files: Vec<PathBuf>,
    pub(crate) scripts: rhai::Engine,
    pub(crate) script_limits: script::ScriptLimits,
    pub(crate) lists_value: rhai::Dynamic,
    pub(crate) templates: minijinja::Environment<'static>,
    /// Object paths read by any rule's match block (for pruned object parsing).
    pub(crate) object_paths: fields::ObjectPaths,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("lists", &self.lists.len())
            .field("files", &self.files)
            .finish()
    }
}

impl RuleSet {
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.name == name)
    }

    pub fn script_engine(&self) -> &rhai::Engine {
        &self.scripts
    }

    pub fn script_limits(&self) -> script::ScriptLimits {
        self.script_limits
    }

    pub fn lists_value(&self) -> &rhai::Dynamic {
        &self.lists_value
    }

    pub fn templates(&self) -> &minijinja::Environment<'static> {
        &self.templates
    }

    pub fn object_paths(&self) -> &fields::ObjectPaths {
        &self.object_paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<String> {
        load_str("r.yaml", text, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .rules
            .iter()
            .map(|r| r.id.hex())
            .collect()
    }

    /// SHA-256 of the canonical form below, computed once and written down.
    const PINNED: &str = "1402a421645657ff0a73d8fba2ef05e11ef3409a379fabbe41e0d4c6730a3294";

    const RULE: &str = "rules:\n  - name: brute-force\n    severity: high\n    match: { response_codes: [403] }\n    window: { over: 5m, threshold: 5, group_by: [user.username] }\n";

    /// The id is specified (SHA-256 of the rule as JSON with sorted keys): pinned, so a change
    /// of the hashing, or of how rules are read, shows here before it restarts every window
    /// after an upgrade.
    #[test]
    fn rule_ids_are_pinned_and_ignore_formatting() {
        let canonical = r#"{"match":{"response_codes":[403]},"name":"brute-force","severity":"high","window":{"group_by":["user.username"],"over":"5m","threshold":5}}"#;
        let expected = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        let expected: String = expected
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ids(RULE), std::slice::from_ref(&expected));
        assert_eq!(expected, PINNED);
        // Reordered keys, block style, comments and quotes: the same rule.
        let reformatted = "rules:\n  # the brute force\n  - severity: \"high\"\n    name: brute-force\n    window:\n      threshold: 5\n      group_by: [\"user.username\"]\n      over: 5m\n    match:\n      response_codes: [403]\n";
        assert_eq!(ids(reformatted), std::slice::from_ref(&expected));
        // What the rule says changes: another id.
        assert_ne!(
            ids(&RULE.replace("threshold: 5", "threshold: 6")),
            [expected]
        );
    }
}
