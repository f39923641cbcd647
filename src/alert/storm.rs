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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::testing::alert;
    use crate::rules::Severity;

    fn at(rule: &str, secs: i64, user: &str) -> Alert {
        let mut a = alert(rule, Severity::Low, &[]);
        a.last_seen = EventTime::from_secs(1_800_000_000 + secs);
        a.first_seen = a.last_seen;
        a.group = Group(vec![(Arc::from("user.username"), user.to_owned())]);
        a.audit_ids = vec![format!("{rule}-{secs}-{user}")];
        a
    }

    fn guard(max: u64) -> StormGuard {
        StormGuard::new(&StormConfig {
            max_per_rule: max,
            per: Duration(Span::from_secs(60)),
        })
    }

    #[test]
    fn each_rule_has_its_own_limit_and_one_summary_per_bucket() {
        let mut g = guard(2);
        // 1_800_000_000 is a whole minute: seconds 0..59 are one bucket.
        let mut batch: Vec<Alert> = (0..5).map(|i| at("flood", i, "a")).collect();
        batch.push(at("flood", 5, "b"));
        batch.push(at("quiet", 6, "c"));
        let suppressed = g.admit(&mut batch, EventTime::from_secs(1_800_000_000));
        let rules: Vec<&str> = batch.iter().map(|a| &*a.rule).collect();
        assert_eq!(rules, ["flood", "flood", "quiet"]);
        assert_eq!(suppressed, [(Arc::from("flood"), 4)]);
        // The watermark passes the minute: one summary for flood, none for quiet.
        let mut none = Vec::new();
        g.admit(&mut none, EventTime::from_secs(1_800_000_060));
        assert_eq!(none.len(), 1);
        let s = &none[0];
        assert_eq!(
            (s.kind, &*s.rule, s.count, s.suppressed),
            (AlertKind::Storm, "flood", 6, 4)
        );
        assert_eq!(
            s.summary,
            "rule flood fired 6 times in 1m; 4 suppressed; top groups: user.username=a (3), user.username=b (1)"
        );
        assert_eq!(s.labels.get("storm").map(String::as_str), Some("true"));
        assert!(g.is_idle());
    }

    #[test]
    fn a_later_bucket_closes_the_earlier_and_the_same_input_gives_the_same_ids() {
        let run = || {
            let mut g = guard(1);
            let mut out = Vec::new();
            for (secs, user) in [(1, "a"), (2, "a"), (3, "b"), (61, "a"), (62, "a")] {
                let mut batch = vec![at("flood", secs, user)];
                g.admit(&mut batch, EventTime::MIN);
                out.extend(batch);
            }
            out
        };
        let out = run();
        let kinds: Vec<_> = out
            .iter()
            .map(|a| (a.kind, a.last_seen.0 / 1_000_000_000 - 1_800_000_000))
            .collect();
        assert_eq!(
            kinds,
            [
                (AlertKind::Count, 1),
                (AlertKind::Count, 61),
                (AlertKind::Storm, 3)
            ]
        );
        let ids: Vec<String> = out.iter().map(|a| a.id.clone()).collect();
        assert_eq!(ids, run().iter().map(|a| a.id.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let mut g = guard(0);
        let mut batch: Vec<Alert> = (0..500).map(|i| at("flood", i % 60, "a")).collect();
        assert!(g.admit(&mut batch, EventTime::MIN).is_empty());
        assert_eq!(batch.len(), 500);
    }
}
