//! Test helpers: alerts built by hand.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Alert, AlertKind, EventRef, Group, alert_id};
use crate::event::EventTime;
use crate::rules::Severity;

pub fn alert(rule: &str, severity: Severity, labels: &[(&str, &str)]) -> Alert {
    let t = EventTime::from_secs(1_741_943_000);
    let events = vec![EventRef::new(
        t,
        403,
        "0f1c2d3e",
        "mallory",
        "get",
        "secrets prod/db",
        "203.0.113.7",
    )];
    Alert {
        id: alert_id(rule, AlertKind::Count, "", t, t, 1, "0f1c2d3e"),
        rule: Arc::from(rule),
        severity,
        kind: AlertKind::Count,
        summary: format!("{rule} fired"),
        description: None,
        group: Group::default(),
        count: 1,
        first_seen: t,
        last_seen: t,
        audit_ids: vec!["0f1c2d3e".into()],
        events,
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        notify: None,
        suppressed: 0,
        author: None,
    }
}
