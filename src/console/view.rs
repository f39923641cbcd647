//! What the console's pages show, gathered from the alert journal, the silences, the delivery
//! outcomes, the archive and the metrics registry (so the rules and sources pages show the
//! very numbers `/metrics` serves).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ConsoleOptions, ser};
use crate::alert::Alert;
use crate::alert::query::AlertQuery;
use crate::event::EventTime;
use crate::notify::ledger::Outcome;
use crate::notify::silence::NewSilence;
use crate::rules::Severity;
use crate::state::alerts::read_recent_alerts;

/// How much of the end of the alert journal the pages read.
const RECENT_BYTES: u64 = 32 * 1024 * 1024;
/// Rows shown on the alerts page at most.
const MAX_ROWS: usize = 500;
/// Recent alerts a silence preview is tried on.
const PREVIEW_ALERTS: usize = 5_000;
/// An alert is active while its notification is pending, or this long after it fired.
const ACTIVE_FOR: chrono::TimeDelta = chrono::TimeDelta::hours(1);
pub const ACTIVE_FOR_TEXT: &str = "hour";

/// The alerts page's filters, as the query string gives them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AlertFilter {
    pub rule: Option<String>,
    pub severity: Option<String>,
    /// `field=value` over the group, or text any group value contains.
    pub group: Option<String>,
    /// `name=value` over the labels.
    pub label: Option<String>,
    /// A duration back from now (`1h`) or an RFC 3339 time.
    pub since: Option<String>,
    pub until: Option<String>,
    pub q: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AlertRow {
    pub id: String,
    pub last_seen: String,
    pub rule: String,
    pub severity: &'static str,
    pub summary: String,
    pub group: String,
    /// `name=value`, the rule's and the source's.
    pub labels: Vec<String>,
    pub count: u64,
    pub state: String,
    pub active: bool,
}

pub struct Listed {
    pub rows: Vec<AlertRow>,
    pub shown: usize,
    pub matched: usize,
    pub scanned: usize,
    pub active: usize,
}

fn time_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn event_time_text(t: EventTime) -> String {
    time_text(t.to_datetime())
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let span = crate::event::Span::parse(text)
        .map_err(|_| format!("{text:?} is neither a duration (1h) nor an RFC 3339 time"))?;
    Ok(now - chrono::TimeDelta::nanoseconds(span.0))
}

impl AlertFilter {
    fn query(&self, now: DateTime<Utc>) -> Result<AlertQuery, String> {
        let mut q = AlertQuery::default();
        if let Some(rule) = nonempty(&self.rule) {
            q.rules.push(rule.to_owned());
        }
        if let Some(sev) = nonempty(&self.severity) {
            q.min_severity = Some(sev.parse::<Severity>()?);
        }
        if let Some(label) = nonempty(&self.label) {
            let (k, v) = label
                .split_once('=')
                .ok_or_else(|| format!("label filter {label:?}: write name=value"))?;
            q.fields.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        if let Some(group) = nonempty(&self.group) {
            match group.split_once('=') {
                Some((k, v)) => q
                    .fields
                    .push((format!("group.{}", k.trim()), v.trim().to_owned())),
                None => q.text = Some(group.to_owned()),
            }
        }
        if let Some(text) = nonempty(&self.q) {
            q.text = Some(text.to_owned());
        }
        q.since = nonempty(&self.since)
            .map(|s| parse_time(s, now))
            .transpose()?;
        q.until = nonempty(&self.until)
            .map(|s| parse_time(s, now))
            .transpose()?;
        Ok(q)
    }
}

/// One word for what became of an alert across its notifiers.
fn state_of(opts: &ConsoleOptions, alert: &Alert, now: DateTime<Utc>) -> (String, bool) {
    let deliveries = opts
        .deliveries
        .lock()
        .map(|d| d.of(&alert.id).to_vec())
        .unwrap_or_default();
    let recent = now - alert.last_seen.to_datetime() < ACTIVE_FOR;
    let has = |o: Outcome| deliveries.iter().any(|d| d.outcome == o);
    let state = [
        Outcome::Silenced,
        Outcome::Inhibited,
        Outcome::Muted,
        Outcome::Failed,
        Outcome::Dropped,
        Outcome::Sent,
        Outcome::Deduplicated,
    ]
    .into_iter()
    .find(|o| has(*o))
    .map(|o| o.as_str().to_owned());
    match state {
        Some(s) => (s, recent),
        None => ("pending".to_owned(), true),
    }
}

fn row(opts: &ConsoleOptions, a: &Alert, now: DateTime<Utc>) -> AlertRow {
    let (state, active) = state_of(opts, a, now);
    AlertRow {
        id: a.id.clone(),
        last_seen: event_time_text(a.last_seen),
        rule: a.rule.to_string(),
        severity: a.severity.as_str(),
        summary: a.summary.clone(),
        group: a.group.to_string(),
        labels: a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        count: a.count,
        state,
        active,
    }
}

/// The newest alerts the filter keeps.
pub fn list_alerts(opts: &ConsoleOptions, filter: &AlertFilter) -> Result<Listed, String> {
    let now = Utc::now();
    let query = filter.query(now)?;
    let mut kept: std::collections::VecDeque<Alert> = std::collections::VecDeque::new();
    let (mut matched, mut scanned) = (0, 0);
    read_recent_alerts(&opts.alerts_path, RECENT_BYTES, |_, a| {
        scanned += 1;
        if query.matches(&a) {
            matched += 1;
            if kept.len() == MAX_ROWS {
                kept.pop_front();
            }
            kept.push_back(a);
        }
    })
    .map_err(|e| format!("{}: {e}", opts.alerts_path.display()))?;
    let rows: Vec<AlertRow> = kept.iter().rev().map(|a| row(opts, a, now)).collect();
    Ok(Listed {
        shown: rows.len(),
        active: rows.iter().filter(|r| r.active).count(),
        rows,
        matched,
        scanned,
    })
}

pub fn rule_names(opts: &ConsoleOptions) -> Vec<String> {
    opts.rules
        .read()
        .map(|set| set.rules.iter().map(|r| r.name.to_string()).collect())
        .unwrap_or_default()
}

#[derive(Debug, Serialize)]
struct EventRow {
    time: String,
    user: String,
    verb: String,
    object: String,
    source_ip: String,
    code: u16,
    audit_id: String,
}

#[derive(Debug, Serialize)]
struct Record {
    time: String,
    audit_id: String,
    json: String,
}

/// Everything the alert's page shows; `None` when the journal has no such alert.
pub fn alert_detail(opts: &ConsoleOptions, id: &str) -> Result<Option<minijinja::Value>, String> {
    let alert = match crate::explain::find_alert(id, &opts.alerts_path) {
        Ok(a) if a.id == id => a,
        Ok(_) | Err(crate::explain::ExplainError::NotFound { .. }) => return Ok(None),
        Err(crate::explain::ExplainError::Ambiguous { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let now = Utc::now();
    let (state, _) = state_of(opts, &alert, now);
    let deliveries = opts
        .deliveries
        .lock()
        .map(|d| d.of(&alert.id).to_vec())
        .unwrap_or_default();
    let silencing: Vec<_> = opts
        .desk
        .silences
        .lock()
        .map(|s| {
            s.list()
                .iter()
                .filter(|x| x.is_active(now) && x.matches(&alert))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let events: Vec<EventRow> = alert
        .events
        .iter()
        .map(|e| EventRow {
            time: event_time_text(e.time),
            user: e.user().to_owned(),
            verb: e.verb().to_owned(),
            object: e.object().to_owned(),
            source_ip: e.source_ip().to_owned(),
            code: e.code,
            audit_id: e.audit_id().to_owned(),
        })
        .collect();
    let (records, missing, records_error) = match &opts.archive_dir {
        None => (None, Vec::new(), None),
        Some(dir) => full_records(opts, dir, &alert),
    };
    Ok(Some(minijinja::context! {
        title => format!("{}: {}", alert.rule, alert.summary),
        a => ser(&alert),
        group => alert.group.to_string(),
        first_seen => event_time_text(alert.first_seen),
        last_seen => event_time_text(alert.last_seen),
        state,
        deliveries => ser(&deliveries),
        silencing => ser(&silencing),
        events => ser(&events),
        records => records.as_ref().map(ser),
        missing => ser(&missing),
        records_error,
    }))
}

/// The contributing requests in full, from the archive's sealed segments.
fn full_records(
    opts: &ConsoleOptions,
    dir: &std::path::Path,
    alert: &Alert,
) -> (Option<Vec<Record>>, Vec<String>, Option<String>) {
    let rules = match opts.rules.read() {
        Ok(r) => std::sync::Arc::clone(&r),
        Err(_) => {
            return (
                Some(Vec::new()),
                Vec::new(),
                Some("rules unavailable".into()),
            );
        }
    };
    let sources = crate::explain::Sources {
        alerts: opts.alerts_path.clone(),
        archive: vec![dir.to_owned()],
    };
    match crate::explain::explain(&alert.id, &sources, &rules) {
        Ok(x) => {
            let records = x
                .contributors
                .iter()
                .map(|c| Record {
                    time: c.time.map(event_time_text).unwrap_or_default(),
                    audit_id: c
                        .event
                        .get("auditID")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    json: serde_json::to_string_pretty(&c.event).unwrap_or_default(),
                })
                .collect();
            (Some(records), x.missing, None)
        }
        Err(e) => (Some(Vec::new()), Vec::new(), Some(e.to_string())),
    }
}

#[derive(Debug, Serialize)]
pub struct SilenceRow {
    id: String,
    state: &'static str,
    matchers: Vec<String>,
    starts_at: String,
    ends_at: String,
    created_by: String,
    authenticated_as: String,
    comment: String,
    expired_by: Option<String>,
}

/// Every silence, active and pending first, then the most recently ended.
pub fn silence_rows(opts: &ConsoleOptions) -> Vec<SilenceRow> {
    let now = Utc::now();
    let Ok(s) = opts.desk.silences.lock() else {
        return Vec::new();
    };
    let mut list: Vec<_> = s.list().to_vec();
    list.sort_by_key(|x| (x.state(now) == "expired", std::cmp::Reverse(x.ends_at)));
    list.iter()
        .map(|x| SilenceRow {
            id: x.id.clone(),
            state: x.state(now),
            matchers: x.matchers.iter().map(ToString::to_string).collect(),
            starts_at: time_text(x.starts_at),
            ends_at: time_text(x.ends_at),
            created_by: x.created_by.clone(),
            authenticated_as: x.authenticated_as.clone(),
            comment: x.comment.clone(),
            expired_by: x.expired_by.clone(),
        })
        .collect()
}

/// Matchers that select alerts like `a`: its rule and group.
pub fn matchers_for(a: &Alert) -> String {
    let quote = |v: &str| {
        if v.contains('"') {
            v.to_owned()
        } else {
            format!("\"{v}\"")
        }
    };
    let mut lines = vec![format!("rule={}", quote(&a.rule))];
    for (k, v) in &a.group.0 {
        lines.push(format!("group.{k}={}", quote(v)));
    }
    lines.join("\n")
}

pub struct Preview {
    pub muted: Vec<AlertRow>,
    pub scanned: usize,
}

/// The recent alerts a silence made of `new` would have matched (nothing is saved).
pub fn preview_silence(
    opts: &ConsoleOptions,
    new: NewSilence,
    by: &str,
) -> Result<Preview, String> {
    let now = Utc::now();
    let silence = opts
        .desk
        .silences
        .lock()
        .map_err(|_| "silences unavailable".to_owned())?
        .build(new, by, now)
        .map_err(|e| e.to_string())?;
    let mut recent: std::collections::VecDeque<Alert> = std::collections::VecDeque::new();
    read_recent_alerts(&opts.alerts_path, RECENT_BYTES, |_, a| {
        if recent.len() == PREVIEW_ALERTS {
            recent.pop_front();
        }
        recent.push_back(a);
    })
    .map_err(|e| format!("{}: {e}", opts.alerts_path.display()))?;
    let muted = recent
        .iter()
        .rev()
        .filter(|a| silence.matches(a))
        .take(MAX_ROWS)
        .map(|a| row(opts, a, now))
        .collect();
    Ok(Preview {
        muted,
        scanned: recent.len(),
    })
}

#[derive(Debug, Default, Serialize)]
pub struct RuleRow {
    name: String,
    severity: &'static str,
    evaluations: u64,
    matches: u64,
    alerts: u64,
    throttled: u64,
    late: u64,
    script_errors: u64,
    last_fired: Option<String>,
    cost: String,
}

/// Per-rule values of one metric family (summed over its other labels).
fn by_label(opts: &ConsoleOptions, metric: &str, label: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (labels, value) in opts.metrics.samples(metric) {
        if let Some(v) = labels.get(label) {
            *out.entry(v.clone()).or_insert(0.0) += value;
        }
    }
    out
}

pub fn rule_rows(opts: &ConsoleOptions) -> Vec<RuleRow> {
    let get = |metric: &str| by_label(opts, metric, "rule");
    let evaluations = get("auditwatch_rule_evaluations_total");
    let matches = get("auditwatch_rule_matches_total");
    let alerts = get("auditwatch_alerts_total");
    let throttled = get("auditwatch_rule_throttled_total");
    let late = get("auditwatch_rule_late_requests_total");
    let errors = get("auditwatch_script_errors_total");
    let cost = get("auditwatch_rule_condition_seconds_total");
    let mut last: HashMap<String, EventTime> = HashMap::new();
    let _ = read_recent_alerts(&opts.alerts_path, RECENT_BYTES, |_, a| {
        let t = last.entry(a.rule.to_string()).or_insert(a.last_seen);
        *t = (*t).max(a.last_seen);
    });
    let Ok(set) = opts.rules.read() else {
        return Vec::new();
    };
    let n = |m: &HashMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0) as u64;
    set.rules
        .iter()
        .map(|r| {
            let name = r.name.to_string();
            RuleRow {
                severity: r.severity.as_str(),
                evaluations: n(&evaluations, &name),
                matches: n(&matches, &name),
                alerts: n(&alerts, &name),
                throttled: n(&throttled, &name),
                late: n(&late, &name),
                script_errors: n(&errors, &name),
                last_fired: last.get(&name).map(|t| event_time_text(*t)),
                cost: format!("{:.3} s", cost.get(&name).copied().unwrap_or(0.0)),
                name,
            }
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct SourceRow {
    name: String,
    labels: BTreeMap<String, String>,
    received: u64,
    decoded: u64,
    rejected: u64,
    late: u64,
    refused: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct ClockRow {
    name: String,
    newest: String,
    watermark: Option<String>,
    lag: String,
}

pub fn source_rows(opts: &ConsoleOptions) -> (Vec<SourceRow>, Vec<ClockRow>) {
    let get = |metric: &str| by_label(opts, metric, "source");
    let received = get("auditwatch_events_received_total");
    let decoded = get("auditwatch_events_decoded_total");
    let rejected = get("auditwatch_events_rejected_total");
    let late = get("auditwatch_late_events_total");
    let mut refused: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (labels, value) in opts.metrics.samples("auditwatch_webhook_refused_total") {
        if let (Some(s), Some(r)) = (labels.get("source"), labels.get("reason"))
            && value > 0.0
        {
            refused
                .entry(s.clone())
                .or_default()
                .push((r.clone(), value as u64));
        }
    }
    let mut names: Vec<String> = opts.source_labels.iter().map(|(n, _)| n.clone()).collect();
    for n in received.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let n = |m: &HashMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0) as u64;
    let sources = names
        .into_iter()
        .map(|name| SourceRow {
            labels: opts
                .source_labels
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, l)| l.clone())
                .unwrap_or_default(),
            received: n(&received, &name),
            decoded: n(&decoded, &name),
            rejected: n(&rejected, &name),
            late: n(&late, &name),
            refused: refused.remove(&name).unwrap_or_default(),
            name,
        })
        .collect();
    let watermarks = get("auditwatch_source_watermark_timestamp_seconds");
    let now = Utc::now().timestamp_millis() as f64 / 1e3;
    let as_time = |secs: f64| DateTime::from_timestamp_millis((secs * 1e3) as i64).map(time_text);
    let mut clocks: Vec<ClockRow> = opts
        .metrics
        .samples("auditwatch_source_newest_event_timestamp_seconds")
        .into_iter()
        .filter_map(|(labels, newest)| {
            let name = labels.get("source")?.clone();
            let watermark = watermarks.get(&name).copied().filter(|w| *w > 0.0);
            Some(ClockRow {
                lag: format!("{:.1} s", now - watermark.unwrap_or(newest)),
                newest: as_time(newest).unwrap_or_default(),
                watermark: watermark.and_then(as_time),
                name,
            })
        })
        .collect();
    clocks.sort_by(|a, b| a.name.cmp(&b.name));
    (sources, clocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_an_alert_query() {
        let now = Utc::now();
        let f = AlertFilter {
            rule: Some("pod-exec".into()),
            severity: Some("high".into()),
            group: Some("user=alice".into()),
            label: Some("team=apps".into()),
            since: Some("1h".into()),
            ..AlertFilter::default()
        };
        let q = f.query(now).unwrap();
        assert_eq!(q.rules, ["pod-exec"]);
        assert_eq!(q.min_severity, Some(Severity::High));
        assert!(q.fields.contains(&("group.user".into(), "alice".into())));
        assert!(q.fields.contains(&("team".into(), "apps".into())));
        assert_eq!(q.since, Some(now - chrono::TimeDelta::hours(1)));
        let bad = AlertFilter {
            severity: Some("urgent".into()),
            ..AlertFilter::default()
        };
        assert!(bad.query(now).unwrap_err().contains("urgent"));
        let bad = AlertFilter {
            since: Some("yesterday".into()),
            ..AlertFilter::default()
        };
        assert!(bad.query(now).is_err());
    }

    #[test]
    fn silence_matchers_from_an_alert_parse_back() {
        let a = crate::alert::testing::alert("pod-exec", Severity::High, &[]);
        let text = matchers_for(&a);
        assert!(text.starts_with("rule=\"pod-exec\""), "{text}");
        for line in text.lines() {
            let m: crate::notify::silence::Matcher = line.parse().unwrap();
            assert!(m.matches(&a), "{line}");
        }
    }
}
