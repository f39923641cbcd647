//! `auditwatch explain ALERT_ID`: what on-call needs when an alert fires, from one place. The
//! alert (from the daemon's alert journal, or the JSON lines a replay printed), each
//! contributing request in full from the archive, which of the rule's criteria each one met
//! (evaluated again by the rule's own match block and condition), and everything else the same
//! identity did within 15 minutes either side.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::alert::Alert;
use crate::event::{EventTime, InputFormat, Position, Span, decode_each};
use crate::query::columnar;
use crate::query::lang;
use crate::rules::Explained;
use crate::rules::RuleSet;
use crate::rules::fields::ObjectCache;
use crate::rules::script::ConditionRunner;

/// How far either side of the alert the identity's other requests are shown.
pub const AROUND: Span = Span::from_secs(15 * 60);

/// At most this many of the identity's other requests are listed (all are counted).
const AROUND_SHOWN: usize = 200;

/// Where the alert and the events are read from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The daemon's alert journal (`STATE_DIR/alerts.jsonl`) or a replay's `--format json`
    /// output.
    pub alerts: PathBuf,
    /// Archive directories or segments.
    pub archive: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("no alert {id} in {path}")]
    NotFound { id: String, path: String },
    #[error("{id} is the start of {n} alert IDs in {path}; give more of it")]
    Ambiguous { id: String, n: usize, path: String },
}

/// One contributing request.
#[derive(Debug)]
pub struct Contributor {
    /// Its event time (the archive's `time` column).
    pub time: Option<EventTime>,
    pub event: serde_json::Value,
    /// The rule's criteria on it; empty when the rule is not loaded.
    pub criteria: Vec<Explained>,
    /// For a sequence: the steps it matches (0-based).
    pub steps: Vec<usize>,
    /// The rule's condition on it: `None` without one.
    pub condition: Option<Result<bool, String>>,
}

/// Everything `explain` found.
#[derive(Debug)]
pub struct Explanation {
    pub alert: Alert,
    pub rule_loaded: bool,
    pub contributors: Vec<Contributor>,
    /// Contributing auditIDs the archive does not hold (retention, or archiving off).
    pub missing: Vec<String>,
    /// The identity whose other requests are listed, and the window.
    pub identity: Option<String>,
    pub window: (EventTime, EventTime),
    pub around: Vec<(Option<EventTime>, serde_json::Value)>,
    pub around_total: u64,
    /// Archive files that could not be read, and why.
    pub unreadable: Vec<(String, String)>,
}

/// Finds the alert whose ID is `id` (or starts with it, when that is unique).
pub fn find_alert(id: &str, path: &Path) -> Result<Alert, ExplainError> {
    let io_err = |source| ExplainError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut found: Vec<Alert> = Vec::new();
    for line in io::BufReader::new(file).lines() {
        let line = line.map_err(io_err)?;
        // The journal also holds change records (silences, acknowledgements): not alerts.
        let Ok(alert) = serde_json::from_str::<Alert>(&line) else {
            continue;
        };
        if alert.id == id {
            return Ok(alert);
        }
        if alert.id.starts_with(id) && !found.iter().any(|a| a.id == alert.id) {
            found.push(alert);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ExplainError::NotFound {
            id: id.to_owned(),
            path: path.display().to_string(),
        }),
        n => Err(ExplainError::Ambiguous {
            id: id.to_owned(),
            n,
            path: path.display().to_string(),
        }),
    }
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Explains alert `id`.
pub fn explain(id: &str, sources: &Sources, rules: &RuleSet) -> Result<Explanation, ExplainError> {
    let alert = find_alert(id, &sources.alerts)?;
    let mut unreadable = Vec::new();
    let mut contributors = Vec::new();
    let mut missing = Vec::new();
    if !alert.audit_ids.is_empty() {
        let list: Vec<String> = alert.audit_ids.iter().map(|i| quoted(i)).collect();
        let filter = lang::parse(&format!("auditID in ({})", list.join(", "))).map_err(|e| {
            ExplainError::Io {
                path: "<auditIDs>".into(),
                source: io::Error::other(e.to_string()),
            }
        })?;
        // Row groups a day or more away from the alert cannot hold its requests: skip them
        // (a day of margin over the window, whatever the sources' lateness).
        let margin = Span::from_secs(24 * 3600);
        let (events, _) = columnar::select(
            &sources.archive,
            &filter,
            (
                Some(alert.first_seen.saturating_sub(margin)),
                Some(alert.last_seen.saturating_add(margin)),
            ),
            alert.audit_ids.len() * 4,
            &mut unreadable,
        );
        for want in &alert.audit_ids {
            match events
                .iter()
                .find(|(_, e)| e["auditID"].as_str() == Some(want.as_str()))
            {
                Some((time, event)) => contributors.push((*time, event.clone())),
                None => missing.push(want.clone()),
            }
        }
    }
    let rule = rules.rules.iter().find(|r| *r.name == *alert.rule);
    let mut runner = ConditionRunner::new(rules, Duration::from_secs(1));
    let contributors = contributors
        .into_iter()
        .map(|(time, event)| {
            let mut c = Contributor {
                time,
                event,
                criteria: Vec::new(),
                steps: Vec::new(),
                condition: None,
            };
            let Some(rule) = rule else { return c };
            let text = c.event.to_string();
            let position = Position {
                source: std::sync::Arc::from("archive"),
                line: 1,
                offset: 0,
                item: None,
            };
            decode_each(
                InputFormat::Native,
                &position,
                &text,
                &mut |_| {},
                &mut |ev| {
                    let objects = ObjectCache::new(rules.object_paths());
                    c.criteria = rule.matcher.explain(ev, &objects);
                    c.steps = rule
                        .steps
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.matches(ev, &objects))
                        .map(|(i, _)| i)
                        .collect();
                    if let Some(cond) = &rule.condition {
                        runner.begin_event();
                        c.condition = Some(runner.run(cond, ev).map_err(|e| e.to_string()));
                    }
                },
            );
            c
        })
        .collect::<Vec<_>>();
    // The identity: the user of the first contributing request.
    let identity = contributors
        .first()
        .and_then(|c| c.event["user"]["username"].as_str())
        .map(str::to_owned);
    let window = (
        alert.first_seen.saturating_sub(AROUND),
        alert.last_seen.saturating_add(AROUND),
    );
    let (mut around, mut around_total) = (Vec::new(), 0);
    if let Some(user) = &identity {
        let filter = lang::parse(&format!("user.username = {}", quoted(user))).map_err(|e| {
            ExplainError::Io {
                path: "<identity>".into(),
                source: io::Error::other(e.to_string()),
            }
        })?;
        let (events, total) = columnar::select(
            &sources.archive,
            &filter,
            (Some(window.0), Some(window.1)),
            AROUND_SHOWN + alert.audit_ids.len(),
            &mut unreadable,
        );
        around = events
            .into_iter()
            .filter(|(_, e)| {
                e["auditID"]
                    .as_str()
                    .is_none_or(|id| !alert.audit_ids.iter().any(|a| a == id))
            })
            .take(AROUND_SHOWN)
            .collect();
        around_total = total.saturating_sub(contributors.len() as u64);
    }
    Ok(Explanation {
        rule_loaded: rule.is_some(),
        alert,
        contributors,
        missing,
        identity,
        window,
        around,
        around_total,
        unreadable,
    })
}

/// One request as a line: time, verb, object, code, source address, auditID.
fn one_line(time: Option<EventTime>, e: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let oref = &e["objectRef"];
    let mut object = s(&oref["resource"]);
    if !s(&oref["subresource"]).is_empty() {
        object = format!("{object}/{}", s(&oref["subresource"]));
    }
    if !s(&oref["namespace"]).is_empty() && !s(&oref["name"]).is_empty() {
        object = format!("{object} {}/{}", s(&oref["namespace"]), s(&oref["name"]));
    } else if !s(&oref["namespace"]).is_empty() {
        object = format!("{object} {}", s(&oref["namespace"]));
    } else if !s(&oref["name"]).is_empty() {
        object = format!("{object} {}", s(&oref["name"]));
    }
    format!(
        "{:<27}  {:<7} {:<40} {:>3}  {:<15} {}",
        time.map_or(String::new(), |t| t.to_string()),
        s(&e["verb"]),
        object,
        e["responseStatus"]["code"]
            .as_i64()
            .map_or(String::new(), |c| c.to_string()),
        e["sourceIPs"][0].as_str().unwrap_or(""),
        s(&e["auditID"]),
    )
}

/// Writes the explanation for a terminal (control characters in event values escaped by
/// the JSON encoding).
pub fn render(x: &Explanation, out: &mut dyn Write) -> io::Result<()> {
    let a = &x.alert;
    writeln!(out, "alert {}", a.id)?;
    writeln!(out, "  {}", a.to_text_line())?;
    writeln!(
        out,
        "  rule {} ({}), {} request(s) from {} to {}",
        a.rule,
        a.severity.as_str(),
        a.count,
        a.first_seen,
        a.last_seen
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "contributing requests: {} of {} in the archive",
        x.contributors.len(),
        a.audit_ids.len()
    )?;
    for id in &x.missing {
        writeln!(
            out,
            "  {id}: not in the archive: not sealed yet (segments are sealed every archive.segment_max_age, 1m by default), removed by retention, or archived elsewhere"
        )?;
    }
    for (n, c) in x.contributors.iter().enumerate() {
        writeln!(out)?;
        writeln!(out, "[{}] {}", n + 1, one_line(c.time, &c.event))?;
        let pretty = serde_json::to_string_pretty(&c.event).unwrap_or_default();
        for line in pretty.lines() {
            writeln!(out, "    {line}")?;
        }
        if !x.rule_loaded {
            writeln!(
                out,
                "  criteria: rule {} is not in the loaded rules (--rules)",
                a.rule
            )?;
            continue;
        }
        writeln!(out, "  criteria of rule {}:", a.rule)?;
        if c.criteria.is_empty() {
            writeln!(out, "    (the match block is empty: every request)")?;
        }
        for e in &c.criteria {
            let mark = if e.held { "met    " } else { "NOT met" };
            let value = if e.value.is_empty() {
                String::new()
            } else {
                format!("  ({})", serde_json::Value::from(e.value.as_str()))
            };
            writeln!(
                out,
                "    {}{mark} {}{value}",
                "  ".repeat(e.depth),
                e.criterion
            )?;
        }
        if !c.steps.is_empty() {
            let steps: Vec<String> = c.steps.iter().map(|s| (s + 1).to_string()).collect();
            writeln!(out, "    sequence step(s) it matches: {}", steps.join(", "))?;
        }
        match &c.condition {
            Some(Ok(held)) => writeln!(
                out,
                "    {} condition",
                if *held { "met    " } else { "NOT met" }
            )?,
            Some(Err(e)) => writeln!(out, "    error   condition: {e}")?,
            None => {}
        }
    }
    writeln!(out)?;
    match &x.identity {
        Some(user) => {
            writeln!(
                out,
                "other requests of {user} from {} to {} (±15 min): {}{}",
                x.window.0,
                x.window.1,
                x.around_total,
                if x.around_total as usize > x.around.len() {
                    format!(", the first {} shown", x.around.len())
                } else {
                    String::new()
                }
            )?;
            for (t, e) in &x.around {
                writeln!(out, "  {}", one_line(*t, e))?;
            }
        }
        None => writeln!(
            out,
            "other requests of the same identity: none found (no contributing request in the archive)"
        )?,
    }
    for (path, why) in &x.unreadable {
        writeln!(out, "warning: {path}: {why}")?;
    }
    Ok(())
}
