//! Rule unit tests (`auditwatch test`), in the spirit of `promtool test rules`: given input
//! events, expect exactly these alerts.
//!
//! ```yaml
//! start: 2024-01-01T00:00:00Z      # base for `at` offsets (this is the default)
//! scope: pack                       # pack (default): only the alerts of the rules loaded from
//!                                   # the directory these tests were found in; all: every rule
//! tests:
//!   - name: five failures in five minutes
//!     events:
//!       - event: { verb: get, user: { username: mallory }, responseStatus: { code: 403 } }
//!         at: 10s                   # offset from start, or an RFC 3339 time
//!         repeat: 5                 # copies, each with its own auditID ...
//!         every: 30s                # ... this far apart
//!       - file: ../fixtures/demo.log  # relative to this test file
//!     rules: [repeated-auth-failures]  # optional: only these rules' alerts are checked
//!     expect:
//!       - rule: repeated-auth-failures
//!         group: { user.username: mallory }
//!         count: 5
//! ```
//! Inline events get `kind`, `apiVersion`, `auditID`, `stage: ResponseComplete`,
//! `level: Metadata` and both timestamps filled in when absent, then go through the real
//! decoder like any log line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::alert::Alert;
use crate::engine::{Engine, EngineOptions};
use crate::event::InputFormat;
use crate::event::decode_each;
use crate::event::{EventTime, Position, Span};
use crate::position::PositionedError;
use crate::rules::RuleSet;
use crate::source::RecordReader;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    scope: Scope,
    tests: Vec<TestCase>,
}

/// Whose alerts a test file checks.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Scope {
    /// The rules of the pack the tests belong to (the rule directory they were found in), so
    /// that another pack loaded beside it does not make them fail.
    #[default]
    Pack,
    /// Every loaded rule.
    All,
}

/// A test file and the pack it belongs to: the rule directory it was found in (`None` for a
/// file named with `--tests`: every rule is checked).
#[derive(Debug, Clone)]
pub struct TestFileIn {
    pub path: PathBuf,
    pub pack: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    #[serde(default)]
    events: Vec<EventInput>,
    #[serde(default)]
    rules: Option<Vec<String>>,
    #[serde(default)]
    expect: Vec<Expected>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput {
    #[serde(default)]
    event: Option<serde_yaml::Value>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default)]
    every: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Expected {
    rule: String,
    #[serde(default)]
    group: Option<BTreeMap<String, String>>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    severity: Option<crate::rules::Severity>,
}

#[derive(Debug, Error)]
pub enum TestFileError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Invalid(#[from] PositionedError),
    #[error("{path}: test {test:?}: {message}")]
    Input {
        path: String,
        test: String,
        message: String,
    },
}

/// Outcome of one test case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    /// Empty when the test passed; otherwise a readable diff.
    pub failure: Option<String>,
}

/// Collects `*.test.yaml` files under `paths` (files are taken as given), each with the
/// directory of `paths` it was found under as its pack.
pub fn discover(paths: &[PathBuf]) -> Vec<TestFileIn> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if crate::rules::is_test_file(&p) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found);
            out.extend(found.into_iter().map(|path| TestFileIn {
                path,
                pack: Some(p.clone()),
            }));
        } else {
            out.push(TestFileIn {
                path: p.clone(),
                pack: None,
            });
        }
    }
    out
}

/// Runs every test in one file against `rules`.
pub fn run_file(
    rules: &Arc<RuleSet>,
    file_in: &TestFileIn,
) -> Result<Vec<CaseResult>, TestFileError> {
    let path = file_in.path.as_path();
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TestFileError::Io {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let file: TestFile =
        crate::rules::yaml::from_str(&text).map_err(|e| PositionedError::from_yaml(&shown, &e))?;
    let start = match &file.start {
        Some(s) => EventTime::parse_rfc3339(s).ok_or_else(|| {
            PositionedError::at(
                &shown,
                crate::position::Pos { line: 1, column: 1 },
                format!("start: invalid time {s:?}"),
            )
        })?,
        None => EventTime::parse_rfc3339("2024-01-01T00:00:00Z").unwrap_or_default(),
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut results = Vec::new();
    for case in &file.tests {
        let input_err = |message: String| TestFileError::Input {
            path: shown.clone(),
            test: case.name.clone(),
            message,
        };
        if let Some(names) = &case.rules {
            for n in names {
                if rules.rule(n).is_none() {
                    return Err(input_err(format!("unknown rule {n:?} in `rules`")));
                }
            }
        }
        for e in &case.expect {
            if rules.rule(&e.rule).is_none() {
                return Err(input_err(format!("expect: unknown rule {:?}", e.rule)));
            }
        }
        let lines = materialize(case, start, base_dir).map_err(input_err)?;
        let mut engine = Engine::new(Arc::clone(rules), EngineOptions::default());
        let mut alerts = Vec::new();
        let mut errors = Vec::new();
        for (pos, line) in &lines {
            decode_each(
                InputFormat::Auto,
                pos,
                line,
                &mut |e| errors.push(e.to_string()),
                &mut |ev| engine.process(ev, &mut alerts),
            );
        }
        engine.finish(&mut alerts);
        for e in engine.take_script_errors() {
            errors.push(format!("rule {:?}: script error: {}", e.rule, e.message));
        }
        // A windowed rule's event listed after a newer one (beyond the lateness) never reaches
        // its window: say so instead of letting the test pass or fail for a hidden reason.
        for (rule, stats) in engine.rule_stats() {
            if stats.late > 0 {
                errors.push(format!(
                    "rule {:?}: {} matching event(s) came more than the lateness ({}) after a newer event and were left out of its window; list the test's events in time order",
                    rule.name,
                    stats.late,
                    EngineOptions::default().lateness
                ));
            }
        }
        if let Some(names) = &case.rules {
            alerts.retain(|a| names.iter().any(|n| *n == *a.rule));
        } else if let (Scope::Pack, Some(pack)) = (file.scope, &file_in.pack) {
            alerts.retain(|a| {
                rules
                    .rule(&a.rule)
                    .is_some_and(|r| Path::new(&*r.origin.file).starts_with(pack))
            });
        }
        results.push(CaseResult {
            file: shown.clone(),
            name: case.name.clone(),
            failure: compare(&case.expect, &alerts, &errors),
        });
    }
    Ok(results)
}

fn materialize(
    case: &TestCase,
    start: EventTime,
    base_dir: &Path,
) -> Result<Vec<(Position, String)>, String> {
    let mut out = Vec::new();
    let source: Arc<str> = Arc::from(format!("test {:?}", case.name));
    let mut cursor = start;
    for (i, input) in case.events.iter().enumerate() {
        match (&input.event, &input.file) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(format!(
                    "events[{i}]: give exactly one of `event` or `file`"
                ));
            }
            (None, Some(file)) => {
                let path = base_dir.join(file);
                let mut reader = RecordReader::open(&path)
                    .map_err(|e| format!("events[{i}]: {}: {e}", path.display()))?;
                while let Some(rec) = reader
                    .next_record()
                    .map_err(|e| format!("events[{i}]: {e}"))?
                {
                    out.push((rec.position.clone(), rec.text.to_owned()));
                }
            }
            (Some(event), None) => {
                let at = match input.at.as_deref() {
                    None => cursor,
                    Some(text) => match EventTime::parse_rfc3339(text) {
                        Some(t) => t,
                        None => start.saturating_add(
                            Span::parse(text).map_err(|e| format!("events[{i}].at: {e}"))?,
                        ),
                    },
                };
                let every = match input.every.as_deref() {
                    Some(e) => Span::parse(e).map_err(|e| format!("events[{i}].every: {e}"))?,
                    None => Span::from_secs(1),
                };
                let repeat = input.repeat.unwrap_or(1);
                let template: Value = serde_json::to_value(crate::rules::yaml::merged(event))
                    .map_err(|e| format!("events[{i}].event: {e}"))?;
                if !template.is_object() {
                    return Err(format!("events[{i}].event must be a mapping"));
                }
                for k in 0..repeat {
                    let time = at.saturating_add(Span(every.0.saturating_mul(i64::from(k))));
                    let mut ev = template.clone();
                    fill_defaults(&mut ev, time, &format!("{}-{i}-{k}", slug(&case.name)));
                    out.push((
                        Position {
                            source: source.clone(),
                            line: 0,
                            offset: 0,
                            item: Some(out.len()),
                        },
                        ev.to_string(),
                    ));
                    cursor = time.saturating_add(Span::from_secs(1));
                }
            }
        }
    }
    Ok(out)
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn fill_defaults(ev: &mut Value, time: EventTime, id: &str) {
    let Value::Object(map) = ev else { return };
    let ts = Value::from(time.to_string());
    for (k, v) in [
        ("kind", Value::from("Event")),
        ("apiVersion", Value::from("audit.k8s.io/v1")),
        ("level", Value::from("Metadata")),
        ("auditID", Value::from(id)),
        ("stage", Value::from("ResponseComplete")),
        ("requestReceivedTimestamp", ts.clone()),
        ("stageTimestamp", ts),
    ] {
        map.entry(k).or_insert(v);
    }
}

fn describe(a: &Alert) -> String {
    let mut s = format!("{} {} count={}", a.rule, a.severity, a.count);
    if !a.group.0.is_empty() {
        let _ = write!(s, " group={{{}}}", a.group);
    }
    let _ = write!(s, " summary={:?}", a.summary);
    s
}

fn describe_expected(e: &Expected) -> String {
    let mut s = e.rule.clone();
    if let Some(sev) = e.severity {
        let _ = write!(s, " {sev}");
    }
    if let Some(c) = e.count {
        let _ = write!(s, " count={c}");
    }
    if let Some(g) = &e.group {
        let pairs: Vec<String> = g.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(s, " group={{{}}}", pairs.join(" "));
    }
    if let Some(sm) = &e.summary {
        let _ = write!(s, " summary={sm:?}");
    }
    s
}

fn satisfies(a: &Alert, e: &Expected) -> bool {
    if *a.rule != *e.rule {
        return false;
    }
    if e.count.is_some_and(|c| c != a.count) || e.severity.is_some_and(|s| s != a.severity) {
        return false;
    }
    if let Some(g) = &e.group {
        let got: BTreeMap<String, String> = a
            .group
            .0
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if &got != g {
            return false;
        }
    }
    e.summary.as_ref().is_none_or(|s| *s == a.summary)
}

/// Pairs expected with actual alerts; returns a diff when they differ.
fn compare(expected: &[Expected], alerts: &[Alert], errors: &[String]) -> Option<String> {
    let mut used = vec![false; alerts.len()];
    let mut missing = Vec::new();
    for e in expected {
        match (0..alerts.len()).find(|&i| !used[i] && satisfies(&alerts[i], e)) {
            Some(i) => used[i] = true,
            None => missing.push(e),
        }
    }
    let unexpected: Vec<&Alert> = alerts
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(a, _)| a)
        .collect();
    if missing.is_empty() && unexpected.is_empty() && errors.is_empty() {
        return None;
    }
    let mut out = String::new();
    for m in missing {
        let _ = writeln!(out, "  - expected: {}", describe_expected(m));
    }
    for u in unexpected {
        let _ = writeln!(out, "  + got:      {}", describe(u));
    }
    for e in errors {
        let _ = writeln!(out, "  ! {e}");
    }
    Some(out)
}
