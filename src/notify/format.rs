//! What each kind of receiver is sent: pure functions from a [`Notification`] to a body, so
//! they are tested without a network and documented in one place (docs/notifications.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::alert::Alert;
use crate::rules::Severity;

/// Alerts of one group, for one notifier.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Stable over retries and restarts: the idempotency key receivers may deduplicate on.
    pub id: String,
    pub notifier: Arc<str>,
    pub group_key: String,
    /// The `group_by` fields and values (empty when every alert is its own group).
    pub group: Vec<(String, String)>,
    pub alerts: Vec<Arc<Alert>>,
    /// Alert-journal offsets of `alerts`, for the ledger.
    pub offsets: Vec<u64>,
    /// A `repeat_interval` reminder of alerts already delivered.
    pub repeat: bool,
}

impl Notification {
    pub fn make_id(
        notifier: &str,
        alerts: &[Arc<Alert>],
        repeat_at: Option<DateTime<Utc>>,
    ) -> String {
        let mut parts: Vec<&[u8]> = vec![notifier.as_bytes()];
        for a in alerts {
            parts.push(a.id.as_bytes());
        }
        let stamp = repeat_at.map(|t| t.to_rfc3339()).unwrap_or_default();
        parts.push(stamp.as_bytes());
        crate::alert::stable_hash(&parts)
    }

    /// A one-line title: `HIGH pod-exec: summary`, or `3 alerts: rule-a, rule-b`.
    pub fn title(&self) -> String {
        match self.alerts.as_slice() {
            [one] => format!(
                "{} {}: {}",
                one.severity.as_str().to_uppercase(),
                one.rule,
                one.summary
            ),
            many => {
                let mut rules: Vec<&str> = many.iter().map(|a| &*a.rule).collect();
                rules.dedup();
                rules.sort_unstable();
                rules.dedup();
                let top = many
                    .iter()
                    .map(|a| a.severity)
                    .max()
                    .unwrap_or(Severity::Info);
                format!(
                    "{} {} alerts: {}",
                    top.as_str().to_uppercase(),
                    many.len(),
                    rules.join(", ")
                )
            }
        }
    }

    /// The template context: `notification_id`, `notifier`, `group`, `repeat`, `title`,
    /// `alerts` (each as in docs/alerts.md).
    pub fn context(&self) -> Value {
        json!({
            "notification_id": self.id,
            "notifier": &*self.notifier,
            "group": self.group.iter().cloned().collect::<BTreeMap<_, _>>(),
            "repeat": self.repeat,
            "title": self.title(),
            "alerts": self.alerts.iter().map(|a| &**a).collect::<Vec<_>>(),
        })
    }
}

/// The generic webhook body (schema version 1).
pub fn generic(n: &Notification) -> Value {
    json!({
        "version": "1",
        "notification_id": n.id,
        "notifier": &*n.notifier,
        "group_key": n.group_key,
        "group": n.group.iter().cloned().collect::<BTreeMap<_, _>>(),
        "repeat": n.repeat,
        "alerts": n.alerts.iter().map(|a| &**a).collect::<Vec<_>>(),
    })
}

/// Slack incoming webhook: mrkdwn text with one section per alert (Slack caps a message at
/// 50 blocks; longer groups are summarised).
pub fn slack(n: &Notification) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": truncate(&n.title(), 150) }
    })];
    for a in n.alerts.iter().take(20) {
        let mut text = format!(
            "*{}* `{}`{}\n{}",
            a.severity.as_str().to_uppercase(),
            a.rule,
            if a.group.0.is_empty() {
                String::new()
            } else {
                format!(" [{}]", a.group)
            },
            a.summary
        );
        if !a.events.is_empty() {
            text.push_str("\n```");
            text.push_str(&event_table(a, 5));
            text.push_str("```");
        }
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": truncate(&text, 2900) }
        }));
    }
    if n.alerts.len() > 20 {
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("and {} more", n.alerts.len() - 20) }]
        }));
    }
    json!({ "text": n.title(), "blocks": blocks })
}

/// Alertmanager API v2 `POST /api/v2/alerts` body. Labels: `alertname` (the rule),
/// `severity` (as `severity_label` maps it), `auditwatch_severity` (as the rule says),
/// `source="auditwatch"`, the rule's labels, and each group field as `group_<field>`
/// (sanitised to a label name). It started at its first request's time (`first_seen`, at the
/// latest now) and is active for `active_for` from now; `generatorURL` is its console page.
pub fn alertmanager(
    n: &Notification,
    now: DateTime<Utc>,
    active_for: std::time::Duration,
    severity_label: &dyn Fn(Severity) -> String,
    console_url: Option<&str>,
) -> Value {
    let ends =
        now + chrono::TimeDelta::from_std(active_for).unwrap_or(chrono::TimeDelta::minutes(5));
    let alerts: Vec<Value> = n
        .alerts
        .iter()
        .map(|a| {
            let mut labels = BTreeMap::new();
            for (k, v) in a.labels.iter() {
                labels.insert(label_name(k), v.clone());
            }
            for (k, v) in &a.group.0 {
                labels.insert(format!("group_{}", label_name(k)), v.clone());
            }
            labels.insert("alertname".into(), a.rule.to_string());
            labels.insert("severity".into(), severity_label(a.severity));
            labels.insert("auditwatch_severity".into(), a.severity.as_str().into());
            labels.insert("source".into(), "auditwatch".into());
            let mut annotations = BTreeMap::new();
            annotations.insert("summary".to_owned(), a.summary.clone());
            if let Some(d) = &a.description {
                annotations.insert("description".into(), d.to_string());
            }
            annotations.insert("auditwatch_id".into(), a.id.clone());
            annotations.insert("count".into(), a.count.to_string());
            annotations.insert("first_seen".into(), a.first_seen.to_string());
            annotations.insert("last_seen".into(), a.last_seen.to_string());
            if !a.audit_ids.is_empty() {
                annotations.insert("audit_ids".into(), a.audit_ids.join(","));
            }
            let mut alert = json!({
                "labels": labels,
                "annotations": annotations,
                "startsAt": a.first_seen.to_datetime().min(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "endsAt": ends.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            if let Some(url) = console_url {
                alert["generatorURL"] = Value::String(alert_url(url, &a.id));
            }
            alert
        })
        .collect();
    Value::Array(alerts)
}

/// The console's page of an alert.
pub fn alert_url(console_url: &str, id: &str) -> String {
    format!("{}/alerts/{id}", console_url.trim_end_matches('/'))
}

/// Alertmanager's webhook payload (`version: "4"`), what a `webhook_configs` receiver
/// expects: the group's alerts as [`alertmanager`] builds them (plus `status` and a
/// `fingerprint`), the group's labels, and the labels and annotations all alerts share.
pub fn alertmanager_webhook(
    n: &Notification,
    now: DateTime<Utc>,
    active_for: std::time::Duration,
    severity_label: &dyn Fn(Severity) -> String,
    console_url: Option<&str>,
) -> Value {
    let Value::Array(mut alerts) = alertmanager(n, now, active_for, severity_label, console_url)
    else {
        return Value::Null;
    };
    for (v, a) in alerts.iter_mut().zip(n.alerts.iter()) {
        v["status"] = "firing".into();
        v["fingerprint"] = a.id.get(..16).unwrap_or(&a.id).into();
        if v.get("generatorURL").is_none() {
            v["generatorURL"] = "".into();
        }
    }
    let common = |key: &str| -> serde_json::Map<String, Value> {
        let mut maps = alerts.iter().filter_map(|a| a[key].as_object());
        let Some(first) = maps.next() else {
            return serde_json::Map::new();
        };
        let mut shared = first.clone();
        for m in maps {
            shared.retain(|k, v| m.get(k) == Some(v));
        }
        shared
    };
    let group_labels: serde_json::Map<String, Value> = n
        .group
        .iter()
        .map(|(k, v)| (label_name(k), Value::String(v.clone())))
        .collect();
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": n.notifier.split('/').next().unwrap_or(&n.notifier),
        "groupLabels": group_labels,
        "commonLabels": common("labels"),
        "commonAnnotations": common("annotations"),
        "externalURL": console_url.unwrap_or_default(),
        "alerts": alerts,
    })
}

/// PagerDuty Events API v2: one `trigger` per alert, deduplicated by the alert id.
pub fn pagerduty(a: &Alert, routing_key: &str) -> Value {
    let severity = match a.severity {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "info",
    };
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": a.id,
        "payload": {
            "summary": truncate(&format!("{}: {}", a.rule, a.summary), 1024),
            "source": "auditwatch",
            "severity": severity,
            "timestamp": a.last_seen.to_string(),
            "group": &*a.rule,
            "class": a.kind,
            "custom_details": a,
        }
    })
}

/// A fixed-width table of an alert's contributing requests (at most `max` rows).
pub fn event_table(a: &Alert, max: usize) -> String {
    let rows: Vec<[String; 6]> = a
        .events
        .iter()
        .take(max)
        .map(|e| {
            [
                e.time.to_string(),
                e.user().to_owned(),
                e.verb().to_owned(),
                e.object().to_owned(),
                e.source_ip().to_owned(),
                if e.code == 0 {
                    String::new()
                } else {
                    e.code.to_string()
                },
            ]
        })
        .collect();
    let head = ["time", "user", "verb", "object", "source ip", "code"];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            if i + 1 < cells.len() {
                s.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(c.chars().count()),
                ));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&head);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    if a.events.len() > max {
        out.push_str(&format!("… and {} more\n", a.events.len() - max));
    }
    out
}

/// A Prometheus/Alertmanager label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn label_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::testing::alert;

    fn note(alerts: Vec<Alert>) -> Notification {
        let alerts: Vec<Arc<Alert>> = alerts.into_iter().map(Arc::new).collect();
        Notification {
            id: Notification::make_id("hook", &alerts, None),
            notifier: "hook".into(),
            group_key: "rule=x".into(),
            group: vec![("rule".into(), "x".into())],
            offsets: vec![0; alerts.len()],
            alerts,
            repeat: false,
        }
    }

    #[test]
    fn alertmanager_labels_are_valid_names_and_carry_the_id() {
        let mut a = alert("pod-exec", Severity::High, &[("team.name", "apps")]);
        a.group = crate::alert::Group(vec![("effectiveUser.username".into(), "bob".into())]);
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        a.first_seen = crate::event::EventTime::parse_rfc3339("2025-12-31T23:58:00Z").unwrap();
        let v = alertmanager(
            &note(vec![a.clone()]),
            now,
            std::time::Duration::from_secs(300),
            &|s| {
                if s == Severity::High {
                    "critical".into()
                } else {
                    "x".into()
                }
            },
            Some("https://auditwatch.example/"),
        );
        assert_eq!(
            v[0]["generatorURL"],
            format!("https://auditwatch.example/alerts/{}", a.id)
        );
        let labels = &v[0]["labels"];
        assert_eq!(labels["alertname"], "pod-exec");
        assert_eq!(labels["team_name"], "apps");
        assert_eq!(labels["group_effectiveUser_username"], "bob");
        assert_eq!(v[0]["annotations"]["auditwatch_id"], a.id.as_str());
        assert_eq!(v[0]["endsAt"], "2026-01-01T00:05:00.000Z");
        // It started when its first request came, not when it was sent.
        assert_eq!(v[0]["startsAt"], "2025-12-31T23:58:00.000Z");
        assert_eq!(labels["severity"], "critical");
        assert_eq!(labels["auditwatch_severity"], "high");
    }

    #[test]
    fn alertmanager_webhook_payload_has_its_envelope() {
        let a = alert("pod-exec", Severity::Medium, &[("team", "apps")]);
        let b = alert("pod-exec", Severity::Medium, &[("team", "web")]);
        let mut n = note(vec![a.clone(), b]);
        n.notifier = "team-x/webhook/0".into();
        let v = alertmanager_webhook(
            &n,
            Utc::now(),
            std::time::Duration::from_secs(300),
            &|s| s.alertmanager_label().to_owned(),
            None,
        );
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["receiver"], "team-x");
        assert_eq!(v["commonLabels"]["severity"], "warning");
        assert_eq!(v["commonLabels"]["alertname"], "pod-exec");
        assert!(v["commonLabels"].get("team").is_none(), "not shared");
        assert_eq!(v["alerts"][0]["status"], "firing");
        assert_eq!(v["alerts"][0]["fingerprint"], &a.id[..16]);
    }

    #[test]
    fn pagerduty_dedups_on_the_alert_id_and_maps_severity() {
        let a = alert("crb", Severity::Critical, &[]);
        let v = pagerduty(&a, "key");
        assert_eq!(v["dedup_key"], a.id.as_str());
        assert_eq!(v["payload"]["severity"], "critical");
        assert_eq!(v["event_action"], "trigger");
    }

    #[test]
    fn ids_are_stable_and_titles_summarise() {
        let n = note(vec![
            alert("a", Severity::Low, &[]),
            alert("b", Severity::High, &[]),
        ]);
        assert_eq!(
            n.id,
            note(vec![
                alert("a", Severity::Low, &[]),
                alert("b", Severity::High, &[])
            ])
            .id
        );
        assert_eq!(n.title(), "HIGH 2 alerts: a, b");
        let g = generic(&n);
        assert_eq!(g["alerts"][1]["rule"], "b");
        assert_eq!(g["notification_id"], n.id.as_str());
        let s = slack(&n);
        assert_eq!(s["blocks"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn event_tables_line_up() {
        let a = alert("x", Severity::Low, &[]);
        let t = event_table(&a, 5);
        let mut lines = t.lines();
        let head = lines.next().unwrap();
        let row = lines.next().unwrap();
        assert!(head.starts_with("time "));
        assert_eq!(head.find("user"), row.find("mallory"));
    }
}
