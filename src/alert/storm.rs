//! Alert storms: a per-rule firing rate limit between the engine and the alert journal, so a
//! rule that fires on most events (an untuned pack on a busy cluster) neither floods the
//! receivers nor buries the other rules' alerts.
//!
//! Each rule's alerts are counted in tumbling buckets of event time (`per`, default 1m, by
//! the alert's `last_seen`). The first `max_per_rule` alerts of a bucket pass; the rest are
//! counted (with their groups) and, when the bucket closes (the watermark passes its end, or
//! the rule fires in a later bucket), become one alert of kind `storm`: "rule X fired N times
//! in 1m; M suppressed; top groups …". Event time, not wall time, so a replay of the same
//! events after a restart makes the same decisions and the same summary ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use super::{Alert, AlertKind, Group, MAX_AUDIT_IDS, alert_id};
use crate::event::{EventTime, Span};
use crate::units::Duration;

/// `alerts.storm` in the daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormConfig {
    /// Alerts one rule may send per `per` before the rest are folded into a summary; 0: no
    /// limit.
    pub max_per_rule: u64,
    pub per: Duration,
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            max_per_rule: 100,
            per: Duration(Span::from_secs(60)),
        }
    }
}

/// Distinct groups counted per bucket; the rest are counted together.
const MAX_GROUPS: usize = 1000;
/// Groups named in a summary.
const TOP_GROUPS: usize = 5;

struct Bucket {
    start: EventTime,
    fired: u64,
    suppressed: u64,
    /// The first alert over the limit: the summary takes its severity, labels and routing.
    first_suppressed: Option<Alert>,
    last_seen: EventTime,
    groups: HashMap<String, u64>,
    other_groups: u64,
    audit_ids: Vec<String>,
}

/// What a closed bucket left: a summary alert, or nothing when the rule stayed under the
/// limit.
pub struct StormGuard {
    max: u64,
    per: i64,
    buckets: HashMap<Arc<str>, Bucket>,
}

impl StormGuard {
    pub fn new(config: &StormConfig) -> StormGuard {
        StormGuard {
            max: config.max_per_rule,
            per: config.per.0.0.max(1),
            buckets: HashMap::new(),
        }
    }

    /// No rule has alerts counted in an open bucket.
    pub fn is_idle(&self) -> bool {
        self.buckets.is_empty()
    }

    fn bucket_of(&self, t: EventTime) -> EventTime {
        EventTime(t.0.div_euclid(self.per) * self.per)
    }

    /// Lets each rule's first `max_per_rule` alerts per bucket through `alerts` and counts the
    /// rest; appends the summaries of the buckets that closed (the watermark is past their
    /// end, or the rule fired in a later one). Returns the number of alerts suppressed per
    /// rule in this call, for the storm metric.
    pub fn admit(&mut self, alerts: &mut Vec<Alert>, watermark: EventTime) -> Vec<(Arc<str>, u64)> {
        let mut suppressed: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        if self.max == 0 {
            return Vec::new();
        }
        let mut summaries = Vec::new();
        let mut kept = Vec::with_capacity(alerts.len());
        for alert in alerts.drain(..) {
            if alert.kind == AlertKind::Storm {
                kept.push(alert);
                continue;
            }
            let start = self.bucket_of(alert.last_seen);
            // An alert older than the rule's current bucket (a late window) counts there.
            let current = self.buckets.get(&alert.rule).map(|b| b.start);
            if current.is_none_or(|c| c < start) {
                if let Some(old) = self.buckets.remove(&alert.rule) {
                    summaries.extend(summary(&alert.rule, old, self.per));
                }
                self.buckets.insert(
                    Arc::clone(&alert.rule),
                    Bucket {
                        start,
                        fired: 0,
                        suppressed: 0,
                        first_suppressed: None,
                        last_seen: alert.last_seen,
                        groups: HashMap::new(),
                        other_groups: 0,
                        audit_ids: Vec::new(),
                    },
                );
            }
            let Some(bucket) = self.buckets.get_mut(&alert.rule) else {
                kept.push(alert);
                continue;
            };
            bucket.fired += 1;
            bucket.last_seen = bucket.last_seen.max(alert.last_seen);
            if bucket.fired <= self.max {
                kept.push(alert);
                continue;
            }
            bucket.suppressed += 1;
            *suppressed.entry(Arc::clone(&alert.rule)).or_default() += 1;
            let group = alert.group.to_string();
            let room = bucket.groups.len() < MAX_GROUPS;
            match bucket.groups.get_mut(&group) {
                Some(n) => *n += 1,
                None if room => {
                    bucket.groups.insert(group, 1);
                }
                None => bucket.other_groups += 1,
            }
            if bucket.audit_ids.len() < MAX_AUDIT_IDS {
                bucket.audit_ids.extend(alert.audit_ids.first().cloned());
            }
            if bucket.first_suppressed.is_none() {
                bucket.first_suppressed = Some(alert);
            }
        }
        // Buckets the watermark has passed are complete.
        let per = self.per;
        let closed: Vec<Arc<str>> = self
            .buckets
            .iter()
            .filter(|(_, b)| b.start.0.saturating_add(per) <= watermark.0)
            .map(|(rule, _)| Arc::clone(rule))
            .collect();
        for rule in closed {
            if let Some(b) = self.buckets.remove(&rule) {
                summaries.extend(summary(&rule, b, per));
            }
        }
        summaries.sort_by(|a, b| (a.first_seen, &a.rule).cmp(&(b.first_seen, &b.rule)));
        kept.extend(summaries);
        *alerts = kept;
        suppressed.into_iter().collect()
    }
}

/// The summary of a closed bucket, if anything was suppressed in it.
fn summary(rule: &Arc<str>, b: Bucket, per: i64) -> Option<Alert> {
    let template = b.first_suppressed?;
    let mut groups: Vec<(String, u64)> = b.groups.into_iter().collect();
    groups.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    let mut top: Vec<String> = groups
        .iter()
        .take(TOP_GROUPS)
        .map(|(g, n)| {
            let g = if g.is_empty() { "(no group)" } else { g };
            format!("{g} ({n})")
        })
        .collect();
    if groups.len() > TOP_GROUPS || b.other_groups > 0 {
        top.push(format!(
            "{} more groups",
            groups.len().saturating_sub(TOP_GROUPS) as u64 + b.other_groups.min(1)
        ));
    }
    let span = Span(per);
    let text = format!(
        "rule {rule} fired {} times in {span}; {} suppressed; top groups: {}",
        b.fired,
        b.suppressed,
        top.join(", ")
    );
    let mut labels = (*template.labels).clone();
    labels.insert("storm".into(), "true".into());
    let first = b.audit_ids.first().map_or("", |s| s.as_str()).to_owned();
    Some(Alert {
        id: alert_id(
            rule,
            AlertKind::Storm,
            "",
            b.start,
            b.last_seen,
            b.fired,
            &first,
        ),
        rule: Arc::clone(rule),
        severity: template.severity,
        kind: AlertKind::Storm,
        summary: text,
        description: template.description.clone(),
        group: Group(Vec::new()),
        count: b.fired,
        first_seen: b.start,
        last_seen: b.last_seen,
        audit_ids: b.audit_ids,
        events: Vec::new(),
        labels: Arc::new(labels),
        notify: template.notify.clone(),
        suppressed: b.suppressed,
        author: template.author.clone(),
    })
}
