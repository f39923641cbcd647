//! Prometheus metrics of the daemon, served at `/metrics`. One registry per process, passed
//! around explicitly (no global registry). Label values are low-cardinality by construction:
//! source and rule names come from configuration, codes and reasons from fixed sets; never a
//! username, IP or object name. Every metric is documented in `docs/metrics.md`.

use crate::event::RESOURCE_VERBS;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Records read, by source (lines, webhook items).
    pub events_received: IntCounterVec,
    /// Events decoded and evaluated, by source.
    pub events_decoded: IntCounterVec,
    /// Records rejected by the decoder, by source.
    pub events_rejected: IntCounterVec,
    /// Webhook requests answered, by source and status code.
    pub webhook_requests: IntCounterVec,
    /// Webhook requests refused, by source and reason.
    pub webhook_refused: IntCounterVec,
    /// Connections open, by listener (a webhook source's name, or `http`).
    pub connections_open: IntGaugeVec,
    /// Each listener's connection cap (after fitting the descriptor limit).
    pub connections_max: IntGaugeVec,
    /// Operations listener refusals, by reason.
    pub http_refused: IntCounterVec,
    /// Token, password and TLS file reloads, by what and result.
    pub credential_reloads: IntCounterVec,
    /// Damaged or missing state found at start, by what and problem.
    pub state_problems: IntCounterVec,
    /// Truncations of followed files noticed, by source.
    pub file_truncations: IntCounterVec,
    /// Alerts fired, by rule and severity.
    pub alerts: IntCounterVec,
    /// Alerts not emitted again after a restart because the alert journal already had them.
    pub alerts_replayed_suppressed: IntCounter,
    pub rule_reloads: IntCounterVec,
    pub rules_loaded: IntGauge,
    /// Condition errors by rule.
    pub script_errors: IntCounterVec,
    pub window_keys: IntGauge,
    pub queue_depth: IntGaugeVec,
    /// Capacity of each queue of `queue_depth`, so alerts can say "near full".
    pub queue_capacity: IntGaugeVec,
    pub journal_bytes: IntGauge,
    pub journal_max_bytes: IntGauge,
    pub snapshots: IntCounterVec,
    /// Webhook receipt → batch evaluated (alerts emitted), seconds.
    pub processing_latency: HistogramVec,
    pub snapshot_seconds: Histogram,
    pub snapshot_capture_seconds: Histogram,
    /// Event-time lag: wall clock minus the newest event time, seconds.
    pub event_lag_seconds: prometheus::Gauge,
    /// Age of the oldest batch the engine has received and not finished (0 when idle).
    pub engine_backlog_age: prometheus::Gauge,
    /// Final outcome per (notifier, alert): sent, silenced, failed, dropped, deduplicated.
    pub notifications: IntCounterVec,
    /// Send attempts by notifier and result (ok, transient, permanent).
    pub notification_attempts: IntCounterVec,
    pub notification_seconds: HistogramVec,
    /// Alerts routed to a notifier and not settled yet.
    pub notifications_pending: IntGaugeVec,
    pub silences_active: IntGauge,
    /// Metric alerts: firings and whether the rule's alert is active, by rule and severity.
    pub alert_firings: IntCounterVec,
    pub alert_active: IntGaugeVec,
    /// Rule evaluations (matched the prefilter), matches and window evictions, by rule.
    pub rule_evaluations: IntCounterVec,
    pub rule_matches: IntCounterVec,
    pub window_evictions: IntCounterVec,
    /// Wall time in each rule's condition, seconds.
    pub rule_condition_seconds: prometheus::CounterVec,
    /// Condition runs stopped at engine.condition_timeout, by rule.
    pub rule_condition_timeouts: IntCounterVec,
    /// Requests whose condition was not run, the rule being over engine.rule_time_budget.
    pub rule_condition_skipped: IntCounterVec,
    /// Requests a rule read objects of that were nested too deep (cut), by rule.
    pub rule_objects_too_deep: IntCounterVec,
    /// The audited stream itself: events by verb and response code class (bounded label sets,
    /// see [`verb_label`] and [`code_class_label`]).
    pub audit_events: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        }
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "auditwatch_processing_latency_seconds",
                "Time from receiving a batch to having evaluated it and emitted its alerts.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["source"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        let snapshot_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "auditwatch_snapshot_duration_seconds",
                "Time to write a state snapshot.",
            )
            .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(snapshot_seconds.clone()))
            .expect("unique metric");
        let snapshot_capture_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "auditwatch_snapshot_capture_seconds",
                "Time the engine pauses to copy its state for a snapshot (the write happens beside it).",
            )
            .buckets(vec![0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(snapshot_capture_seconds.clone()))
            .expect("unique metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "auditwatch_queue_depth",
                "Items waiting in an internal queue.",
            ),
            &["queue"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("unique metric");
        let lag = prometheus::Gauge::new(
            "auditwatch_event_lag_seconds",
            "Wall clock minus the newest event time seen.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag.clone()))
            .expect("unique metric");
        let backlog_age = prometheus::Gauge::new(
            "auditwatch_engine_backlog_age_seconds",
            "Age of the oldest batch the engine has received and not finished evaluating (0 while it waits for work). Grows without bound when the engine stalls.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(backlog_age.clone()))
            .expect("unique metric");
        let suppressed = IntCounter::new(
            "auditwatch_alerts_replay_suppressed_total",
            "Alerts produced again by replaying the journal after a restart and not sent twice.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(suppressed.clone()))
            .expect("unique metric");
        let notification_seconds = HistogramVec::new(
            HistogramOpts::new(
                "auditwatch_notification_duration_seconds",
                "Time of one send attempt, by notifier.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["notifier"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(notification_seconds.clone()))
            .expect("unique metric");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let connections_open = gauge_vec(
            "auditwatch_connections_open",
            "Connections open, by listener (a webhook source's name, or http).",
            &["listener"],
        );
        let connections_max = gauge_vec(
            "auditwatch_connections_max",
            "Connections a listener holds at most; beyond it new ones wait to be accepted.",
            &["listener"],
        );
        let queue_capacity = gauge_vec(
            "auditwatch_queue_capacity",
            "Capacity of an internal queue (see auditwatch_queue_depth).",
            &["queue"],
        );
        let notifications_pending = gauge_vec(
            "auditwatch_notifications_pending",
            "Alerts routed to a notifier and not delivered (or otherwise settled) yet.",
            &["notifier"],
        );
        let alert_active = gauge_vec(
            "auditwatch_alert_active",
            "1 while an alert of the rule is active (metric alerts; see docs/metrics.md).",
            &["rule", "severity"],
        );
        Metrics {
            notifications: counter_vec(
                &registry,
                "auditwatch_notifications_total",
                "Alerts settled per notifier, by outcome (sent, silenced, failed, dropped, deduplicated).",
                &["notifier", "outcome"],
            ),
            notification_attempts: counter_vec(
                &registry,
                "auditwatch_notification_attempts_total",
                "Send attempts, by notifier and result (ok, transient, permanent).",
                &["notifier", "result"],
            ),
            notification_seconds,
            notifications_pending,
            silences_active: gauge(
                &registry,
                "auditwatch_silences_active",
                "Silences in effect now.",
            ),
            alert_firings: counter_vec(
                &registry,
                "auditwatch_alert_firings_total",
                "Alerts of rules routed to a metrics notifier, by rule and severity.",
                &["rule", "severity"],
            ),
            alert_active,
            rule_evaluations: counter_vec(
                &registry,
                "auditwatch_rule_evaluations_total",
                "Records that passed a rule's match block (and were evaluated further), by rule.",
                &["rule"],
            ),
            rule_matches: counter_vec(
                &registry,
                "auditwatch_rule_matches_total",
                "Requests a rule matched (after conditions and one-request-one-match), by rule.",
                &["rule"],
            ),
            window_evictions: counter_vec(
                &registry,
                "auditwatch_window_evictions_total",
                "Window keys evicted because a rule reached max_keys_per_rule, by rule.",
                &["rule"],
            ),
            rule_condition_seconds: {
                let c = prometheus::CounterVec::new(
                    Opts::new(
                        "auditwatch_rule_condition_seconds_total",
                        "Wall time spent in each rule's Rhai condition: what a rule costs.",
                    ),
                    &["rule"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            rule_condition_timeouts: counter_vec(
                &registry,
                "auditwatch_rule_condition_timeouts_total",
                "Condition runs stopped at engine.condition_timeout (also counted as script errors), by rule.",
                &["rule"],
            ),
            rule_condition_skipped: counter_vec(
                &registry,
                "auditwatch_rule_condition_skipped_total",
                "Requests that passed a rule's match block but whose condition was not run because the rule was over engine.rule_time_budget (they count as not matching), by rule.",
                &["rule"],
            ),
            rule_objects_too_deep: counter_vec(
                &registry,
                "auditwatch_rule_objects_too_deep_total",
                "Requests whose objects a rule read were nested deeper than auditwatch parses (100 levels): the deeper parts were cut, the rest evaluated. By rule.",
                &["rule"],
            ),
            audit_events: counter_vec(
                &registry,
                "auditwatch_audit_events_total",
                "Audit events evaluated, by verb (get, list, watch, create, update, patch, delete, deletecollection, other) and response code class (2xx, 3xx, 4xx, 5xx, none).",
                &["verb", "code_class"],
            ),
            events_received: counter_vec(
                &registry,
                "auditwatch_events_received_total",
                "Records received, by source.",
                &["source"],
            ),
            events_decoded: counter_vec(
                &registry,
                "auditwatch_events_decoded_total",
                "Audit events decoded and evaluated, by source.",
                &["source"],
            ),
            events_rejected: counter_vec(
                &registry,
                "auditwatch_events_rejected_total",
                "Records rejected as malformed or not audit events, by source.",
                &["source"],
            ),
            webhook_requests: counter_vec(
                &registry,
                "auditwatch_webhook_requests_total",
                "Webhook requests answered, by source and HTTP status code.",
                &["source", "code"],
            ),
            webhook_refused: counter_vec(
                &registry,
                "auditwatch_webhook_refused_total",
                "Webhook requests or connections refused, by source and reason.",
                &["source", "reason"],
            ),
            connections_open,
            connections_max,
            file_truncations: counter_vec(
                &registry,
                "auditwatch_file_truncations_total",
                "Truncations (copytruncate) of a followed file noticed, by source: it was read again from the start, after the lines before the truncation were read from its copy when one was found.",
                &["source"],
            ),
            state_problems: counter_vec(
                &registry,
                "auditwatch_state_problems_total",
                "Damaged or missing state found at start, by what (snapshot, journal, alert_journal) and problem (corrupt, missing, gap). See the daemon log for what was lost.",
                &["what", "problem"],
            ),
            credential_reloads: counter_vec(
                &registry,
                "auditwatch_credential_reloads_total",
                "Reloads of bearer tokens, password files and TLS material after their files changed or on SIGHUP, by what and result (ok, error: the previous one stays in effect).",
                &["what", "result"],
            ),
            http_refused: counter_vec(
                &registry,
                "auditwatch_http_refused_total",
                "Requests and connections refused by the operations listener (metrics, health, silences API), by reason.",
                &["reason"],
            ),
            alerts: counter_vec(
                &registry,
                "auditwatch_alerts_total",
                "Alerts fired, by rule and severity.",
                &["rule", "severity"],
            ),
            alerts_replayed_suppressed: suppressed,
            rule_reloads: counter_vec(
                &registry,
                "auditwatch_rule_reloads_total",
                "Rule reloads, by result (ok, invalid).",
                &["result"],
            ),
            rules_loaded: gauge(
                &registry,
                "auditwatch_rules_loaded",
                "Rules in the running rule set.",
            ),
            script_errors: counter_vec(
                &registry,
                "auditwatch_script_errors_total",
                "Rhai condition errors, by rule.",
                &["rule"],
            ),
            window_keys: gauge(
                &registry,
                "auditwatch_window_keys",
                "Group keys held in windows, over all rules.",
            ),
            queue_depth,
            queue_capacity,
            journal_bytes: gauge(
                &registry,
                "auditwatch_journal_bytes",
                "Bytes in the ingest journal (not yet compacted).",
            ),
            journal_max_bytes: gauge(
                &registry,
                "auditwatch_journal_max_bytes",
                "journal.max_size: at this many journal bytes the webhook answers 503.",
            ),
            snapshots: counter_vec(
                &registry,
                "auditwatch_snapshots_total",
                "State snapshots written, by result (ok, error).",
                &["result"],
            ),
            processing_latency: latency,
            snapshot_seconds,
            snapshot_capture_seconds,
            event_lag_seconds: lag,
            engine_backlog_age: backlog_age,
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates the label sets known from configuration at zero, so that every series exists
    /// from the first scrape: `rate()` and dashboards see 0 instead of "no data", and an
    /// alert on `increase(...) > 0` fires on the first failure, not the second.
    pub fn prime(&self, known: &Known<'_>) {
        for &(source, is_webhook) in known.sources {
            self.events_received.with_label_values(&[source]);
            self.events_decoded.with_label_values(&[source]);
            self.events_rejected.with_label_values(&[source]);
            self.processing_latency.with_label_values(&[source]);
            if is_webhook {
                for reason in crate::source::webhook::REFUSE_REASONS {
                    self.webhook_refused.with_label_values(&[source, reason]);
                }
            } else {
                self.file_truncations.with_label_values(&[source]);
            }
        }
        self.prime_rules(known.rules);
        for notifier in known.notifiers {
            for outcome in crate::notify::ledger::Outcome::ALL {
                self.notifications
                    .with_label_values(&[notifier, outcome.as_str()]);
            }
            for result in ["ok", "transient", "permanent"] {
                self.notification_attempts
                    .with_label_values(&[notifier, result]);
            }
            self.notification_seconds.with_label_values(&[notifier]);
            self.notifications_pending.with_label_values(&[notifier]);
            let queue = format!("notify:{notifier}");
            self.queue_depth.with_label_values(&[&queue]);
            self.queue_capacity
                .with_label_values(&[&queue])
                .set(known.notify_queue as i64);
        }
        self.queue_depth.with_label_values(&["engine"]);
        self.queue_capacity
            .with_label_values(&["engine"])
            .set(known.engine_queue as i64);
        self.journal_max_bytes.set(known.journal_max as i64);
        for result in ["ok", "invalid"] {
            self.rule_reloads.with_label_values(&[result]);
        }
        for result in ["ok", "error"] {
            self.snapshots.with_label_values(&[result]);
        }
        for (what, problem) in [
            ("snapshot", "corrupt"),
            ("snapshot", "missing"),
            ("journal", "corrupt"),
            ("journal", "missing"),
            ("journal", "gap"),
            ("alert_journal", "missing"),
        ] {
            self.state_problems.with_label_values(&[what, problem]);
        }
    }

    /// The per-rule part of [`Metrics::prime`], also run after a reload (new rules).
    pub fn prime_rules(&self, rules: &[(&str, &str)]) {
        for &(rule, severity) in rules {
            self.alerts.with_label_values(&[rule, severity]);
            self.script_errors.with_label_values(&[rule]);
            self.rule_evaluations.with_label_values(&[rule]);
            self.rule_matches.with_label_values(&[rule]);
            self.window_evictions.with_label_values(&[rule]);
            self.rule_condition_seconds.with_label_values(&[rule]);
            self.rule_condition_timeouts.with_label_values(&[rule]);
            self.rule_condition_skipped.with_label_values(&[rule]);
            self.rule_objects_too_deep.with_label_values(&[rule]);
        }
    }
}

/// What the configuration says exists, for [`Metrics::prime`].
pub struct Known<'a> {
    /// Source names, and whether the source is a webhook.
    pub sources: &'a [(&'a str, bool)],
    /// Rule names and their severities.
    pub rules: &'a [(&'a str, &'a str)],
    pub notifiers: &'a [&'a str],
    /// Capacities: the engine's batch queue, each notifier's queue, the journal in bytes.
    pub engine_queue: usize,
    pub notify_queue: usize,
    pub journal_max: u64,
}

/// The `verb` label of `auditwatch_audit_events_total`: the Kubernetes resource verbs, and
/// `other` for the rest (non-resource requests' HTTP methods, custom verbs).
pub fn verb_label(verb: &str) -> usize {
    VERBS
        .iter()
        .position(|v| *v == verb)
        .unwrap_or(VERBS.len() - 1)
}

/// The `verb` label values: the resource verbs, then `other`.
pub const VERBS: [&str; 9] = {
    let mut labels = ["other"; 9];
    let mut i = 0;
    while i < RESOURCE_VERBS.len() {
        labels[i] = RESOURCE_VERBS[i];
        i += 1;
    }
    labels
};

pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The `code_class` label: `none` when the event has no response status (RequestReceived) or
/// a code outside 100..=599.
pub fn code_class_label(code: Option<i32>) -> usize {
    match code {
        Some(c @ 100..=599) => (c / 100 - 1) as usize,
        _ => CODE_CLASSES.len() - 1,
    }
}

/// Counts of the audited stream by (verb, code class), kept in a plain array on the engine
/// thread and added to `auditwatch_audit_events_total` once per batch, so the hot path does
/// no hashing or atomic work per event.
#[derive(Default)]
pub struct StreamTally {
    counts: [[u64; CODE_CLASSES.len()]; VERBS.len()],
}

impl StreamTally {
    pub fn count(&mut self, verb: &str, code: Option<i32>) {
        self.counts[verb_label(verb)][code_class_label(code)] += 1;
    }

    /// Adds the counts to the metric and starts again from zero.
    pub fn flush(&mut self, metric: &IntCounterVec) {
        for (v, row) in self.counts.iter_mut().enumerate() {
            for (c, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    metric
                        .with_label_values(&[VERBS[v], CODE_CLASSES[c]])
                        .inc_by(std::mem::take(n));
                }
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_labels_are_bounded() {
        assert_eq!(VERBS[verb_label("list")], "list");
        assert_eq!(VERBS[verb_label("post")], "other");
        assert_eq!(VERBS[verb_label("")], "other");
        assert_eq!(CODE_CLASSES[code_class_label(Some(201))], "2xx");
        assert_eq!(CODE_CLASSES[code_class_label(Some(403))], "4xx");
        assert_eq!(CODE_CLASSES[code_class_label(Some(599))], "5xx");
        assert_eq!(CODE_CLASSES[code_class_label(Some(0))], "none");
        assert_eq!(CODE_CLASSES[code_class_label(None)], "none");
    }

    #[test]
    fn tally_flushes_into_the_counter_once() {
        let m = Metrics::new();
        let mut t = StreamTally::default();
        t.count("get", Some(200));
        t.count("get", Some(200));
        t.count("exec", Some(101));
        t.flush(&m.audit_events);
        t.flush(&m.audit_events);
        assert_eq!(m.audit_events.with_label_values(&["get", "2xx"]).get(), 2);
        assert_eq!(m.audit_events.with_label_values(&["other", "1xx"]).get(), 1);
    }

    #[test]
    fn priming_creates_zero_series() {
        let m = Metrics::new();
        m.prime(&Known {
            sources: &[("apiserver", true)],
            rules: &[("exec-into-pod", "high")],
            notifiers: &["slack"],
            engine_queue: 64,
            notify_queue: 256,
            journal_max: 1 << 30,
        });
        let text = m.render();
        for series in [
            "auditwatch_events_rejected_total{source=\"apiserver\"} 0",
            "auditwatch_webhook_refused_total{reason=\"saturated\",source=\"apiserver\"} 0",
            "auditwatch_alerts_total{rule=\"exec-into-pod\",severity=\"high\"} 0",
            "auditwatch_notifications_total{notifier=\"slack\",outcome=\"failed\"} 0",
            "auditwatch_queue_depth{queue=\"notify:slack\"} 0",
            "auditwatch_queue_capacity{queue=\"engine\"} 64",
            "auditwatch_journal_max_bytes 1073741824",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}
