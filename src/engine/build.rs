//! Turning what fired (a matched request, or a window's [`Firing`]) into an [`Alert`]: its
//! group, its summary (the rule's template, or one that says what the window saw), its events
//! and its stable id. Kept apart from dispatch: it runs once per alert, not per event.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::alert::{Alert, AlertKind, Group, MAX_AUDIT_IDS, alert_id};
use crate::rules::{Rule, RuleSet, Severity, WindowSpec};
use crate::window::{Firing, KEY_SEPARATOR, split_source};

pub(super) fn build_alert(
    rule: &Rule,
    rules: &RuleSet,
    (kind, severity): (AlertKind, Severity),
    firing: Firing,
    fallback_summary: Option<String>,
) -> Alert {
    let suppressed = firing.suppressed;
    let (group_part, source_labels) = split_source(&firing.key);
    let group = Group(if rule.group_by.is_empty() {
        Vec::new()
    } else {
        rule.group_by
            .iter()
            .zip(group_part.split(KEY_SEPARATOR))
            .map(|(f, v)| (Arc::from(f.as_str()), v.to_owned()))
            .collect()
    });
    // The source's labels join the rule's (and win: they say where the request came from).
    let labels = if source_labels.is_empty() {
        rule.labels.clone()
    } else {
        let mut merged = (*rule.labels).clone();
        merged.extend(source_labels);
        Arc::new(merged)
    };
    let summary = match (&rule.summary, fallback_summary) {
        (Some(template), _) => {
            // Only the alert fields the template reads are built.
            let mut vars = Map::new();
            let mut put = |name: &str, value: &dyn Fn() -> Value| {
                if template.uses(name) {
                    vars.insert(name.to_owned(), value());
                }
            };
            put("rule", &|| Value::from(&*rule.name));
            put("severity", &|| Value::from(severity.as_str()));
            put("count", &|| Value::from(firing.count));
            put("group", &|| {
                serde_json::to_value(&group).unwrap_or(Value::Null)
            });
            put("first_seen", &|| Value::from(firing.first_seen.to_string()));
            put("last_seen", &|| Value::from(firing.last_seen.to_string()));
            put("labels", &|| {
                serde_json::to_value(&*labels).unwrap_or(Value::Null)
            });
            put("description", &|| {
                Value::from(rule.description.as_deref().unwrap_or(""))
            });
            put("suppressed", &|| Value::from(suppressed));
            put("kind", &|| {
                serde_json::to_value(kind).unwrap_or(Value::Null)
            });
            template.render(rules.templates(), &firing.captured, vars)
        }
        (None, Some(text)) => text,
        (None, None) => window_summary(rule, kind, &group, &firing),
    };
    let mut events = firing.events;
    events.truncate(MAX_AUDIT_IDS);
    let audit_ids: Vec<String> = events
        .iter()
        .filter(|e| !e.audit_id().is_empty())
        .map(|e| e.audit_id().to_owned())
        .collect();
    let id = alert_id(
        &rule.name,
        kind,
        &firing.key,
        firing.first_seen,
        firing.last_seen,
        firing.count,
        audit_ids.first().map_or("", |s| s.as_str()),
    );
    Alert {
        id,
        rule: rule.name.clone(),
        severity,
        kind,
        summary,
        description: rule.description.clone(),
        group,
        count: firing.count,
        first_seen: firing.first_seen,
        last_seen: firing.last_seen,
        audit_ids,
        events,
        labels,
        notify: rule.notify.clone(),
        suppressed,
        author: rule.author.clone(),
    }
}

fn window_summary(rule: &Rule, kind: AlertKind, group: &Group, f: &Firing) -> String {
    let who = if group.0.is_empty() {
        String::new()
    } else {
        format!(" for {group}")
    };
    match (&rule.window, kind) {
        (Some(WindowSpec::Count { over, .. }), _) => {
            format!("{} matching requests within {over}{who}", f.count)
        }
        (Some(WindowSpec::Distinct { over, field, .. }), _) => {
            format!("{} distinct {field} within {over}{who}", f.count)
        }
        (
            Some(WindowSpec::Sequence {
                over,
                steps,
                threshold,
                ordered,
            }),
            _,
        ) => {
            let joined = steps
                .iter()
                .map(|s| s.as_ref())
                .collect::<Vec<_>>()
                .join(if *ordered { " then " } else { ", " });
            if *ordered || *threshold == steps.len() as u64 {
                format!("{joined} within {over}{who}")
            } else {
                format!("{threshold} of {joined} within {over}{who}")
            }
        }
        (Some(WindowSpec::Absence { after }), _) => {
            format!("no matching events for {after}{who} since {}", f.last_seen)
        }
        (None, _) => format!("{} matched", rule.name),
    }
}
