//! Prometheus metrics of the daemon, served at `/metrics`. One registry per process, passed
//! around explicitly (no global registry). Label values are low-cardinality by construction:
//! source and rule names come from configuration, codes and reasons from fixed sets; never a
//! username, IP or object name. Every metric is documented in `docs/metrics.md`.

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
    pub journal_bytes: IntGauge,
    pub snapshots: IntCounterVec,
    /// Webhook receipt → batch evaluated (alerts emitted), seconds.
    pub processing_latency: HistogramVec,
    pub snapshot_seconds: Histogram,
    pub snapshot_capture_seconds: Histogram,
    /// Event-time lag: wall clock minus the newest event time, seconds.
    pub event_lag_seconds: prometheus::Gauge,
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
            journal_bytes: gauge(
                &registry,
                "auditwatch_journal_bytes",
                "Bytes in the ingest journal (not yet compacted).",
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
