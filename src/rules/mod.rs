//! Rules: the YAML format ([`schema`]), loading with positioned errors ([`load`]), and the
//! compiled form the engine runs ([`Rule`], [`RuleSet`]).
//!
//! Loading validates everything up front (unknown keys, durations, fields, list references,
//! Rhai syntax, templates, duplicate names) so that a rule set that loads cannot fail later for
//! a reason visible in the file.

pub mod fields;
mod load;
mod matcher;
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
pub use matcher::{ExactResource, Matcher, Patterns, ResourcePattern, SigmaMatch, Subresource};
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
    /// Hash of the rule's definition; equal fingerprints mean window state can be carried over
    /// a reload.
    pub fingerprint: u64,
}

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
