//! Prometheus metrics of the daemon, served at `/metrics`. One registry per process, passed
//! around explicitly (no global registry).
//!
//! Every metric is defined here and recorded through a typed function of [`Metrics`]: names,
//! label names and label order live in this one file, and components never hold raw label
//! arrays. Label values are low-cardinality by construction: source, rule, notifier and
//! listener names come from configuration, codes and reasons from fixed sets the components
//! pass to [`Metrics::prime`]; never a username, IP or object name. Every metric is documented
//! in `docs/metrics.md`.

use std::collections::BTreeMap;

use crate::event::RESOURCE_VERBS;
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    events_received: IntCounterVec,
    events_decoded: IntCounterVec,
    events_rejected: IntCounterVec,
    events_late: IntCounterVec,
    webhook_requests: IntCounterVec,
    webhook_refused: IntCounterVec,
    connections_open: IntGaugeVec,
    connections_max: IntGaugeVec,
    http_refused: IntCounterVec,
    credential_reloads: IntCounterVec,
    state_problems: IntCounterVec,
    file_truncations: IntCounterVec,
    alerts: IntCounterVec,
    alerts_replayed_suppressed: IntCounter,
    alerts_storm_suppressed: IntCounterVec,
    rule_reloads: IntCounterVec,
    rules_loaded: IntGauge,
    script_errors: IntCounterVec,
    window_keys: IntGauge,
    queue_depth: IntGaugeVec,
    queue_capacity: IntGaugeVec,
    journal_bytes: IntGauge,
    journal_max_bytes: IntGauge,
    snapshots: IntCounterVec,
    archive_events: IntCounter,
    archive_segments: IntCounterVec,
    archive_bytes: IntGauge,
    archive_up: IntGauge,
    cluster_connected: IntGauge,
    cluster_held: IntGaugeVec,
    cluster_takeovers: IntCounterVec,
    cluster_evaluated_seq: IntGaugeVec,
    cluster_snapshots: IntCounterVec,
    archive_head: IntGaugeVec,
    archive_retired: IntCounter,
    alert_chain_head: IntGaugeVec,
    processing_latency: HistogramVec,
    snapshot_seconds: Histogram,
    snapshot_capture_seconds: Histogram,
    event_lag_seconds: Gauge,
    engine_backlog_age: Gauge,
    notifications: IntCounterVec,
    notification_attempts: IntCounterVec,
    notification_seconds: HistogramVec,
    notifications_pending: IntGaugeVec,
    silences_active: IntGauge,
    alert_firings: IntCounterVec,
    alert_active: IntGaugeVec,
    rule_evaluations: IntCounterVec,
    rule_matches: IntCounterVec,
    window_evictions: IntCounterVec,
    rule_condition_seconds: CounterVec,
    rule_condition_timeouts: IntCounterVec,
    rule_condition_skipped: IntCounterVec,
    rule_objects_too_deep: IntCounterVec,
    rule_late: IntCounterVec,
    rule_throttled: IntCounterVec,
    alerts_by_source_label: IntCounterVec,
    source_newest: GaugeVec,
    source_watermark: GaugeVec,
    window_held: IntGauge,
    audit_events: IntCounterVec,
    audit_resources: IntCounterVec,
    audit_auth_failures: IntCounterVec,
}

/// Registers metrics as they are made.
struct Reg<'r>(&'r Registry);

impl Reg<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique metric");
        c
    }
    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }
    fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid metric"))
    }
    fn float_gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.add(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid metric"),
        )
    }
    fn histograms(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        self.add(
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric"),
        )
    }
}

/// One source's counters, bound to its label once per batch.
pub struct SourceCounters {
    pub received: IntCounter,
    pub decoded: IntCounter,
    pub rejected: IntCounter,
    pub late: IntCounter,
}

/// What a rule counted since the last report (see [`Metrics::rule_counted`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleDeltas {
    pub evaluations: u64,
    pub matches: u64,
    pub evictions: u64,
    pub condition_timeouts: u64,
    pub condition_skipped: u64,
    pub objects_too_deep: u64,
    pub late: u64,
    pub throttled: u64,
    pub condition_seconds: f64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = Reg(&registry);
        Metrics {
            events_received: r.counters(
                "auditwatch_events_received_total",
                "Records received, by source (file and stdin lines, items of webhook batches).",
                &["source"],
            ),
            events_decoded: r.counters(
                "auditwatch_events_decoded_total",
                "Audit events decoded and evaluated, by source.",
                &["source"],
            ),
            events_rejected: r.counters(
                "auditwatch_events_rejected_total",
                "Records rejected as malformed or not audit events, by source.",
                &["source"],
            ),
            events_late: r.counters(
                "auditwatch_late_events_total",
                "Events older than the watermark when they arrived (more than the lateness out of order): windows leave them out. By source.",
                &["source"],
            ),
            webhook_requests: r.counters(
                "auditwatch_webhook_requests_total",
                "Webhook requests answered, by source and HTTP status code.",
                &["source", "code"],
            ),
            webhook_refused: r.counters(
                "auditwatch_webhook_refused_total",
                "Webhook requests or connections refused, by source and reason.",
                &["source", "reason"],
            ),
            connections_open: r.gauges(
                "auditwatch_connections_open",
                "Connections open, by listener (a webhook source's name, or http).",
                &["listener"],
            ),
            connections_max: r.gauges(
                "auditwatch_connections_max",
                "Connections a listener holds at most; beyond it new ones wait to be accepted.",
                &["listener"],
            ),
            http_refused: r.counters(
                "auditwatch_http_refused_total",
                "Requests and connections refused by the operations listener (metrics, health, silences API), by reason.",
                &["reason"],
            ),
            credential_reloads: r.counters(
                "auditwatch_credential_reloads_total",
                "Reloads of bearer tokens, password files and TLS material after their files changed or on SIGHUP, by what and result (ok, error: the previous one stays in effect).",
                &["what", "result"],
            ),
            state_problems: r.counters(
                "auditwatch_state_problems_total",
                "Damaged or missing state found at start, by what (snapshot, journal, alert_journal) and problem (corrupt, missing, gap). See the daemon log for what was lost.",
                &["what", "problem"],
            ),
            file_truncations: r.counters(
                "auditwatch_file_truncations_total",
                "Truncations (copytruncate) of a followed file noticed, by source: it was read again from the start, after the lines before the truncation were read from its copy when one was found.",
                &["source"],
            ),
            alerts: r.counters(
                "auditwatch_alerts_total",
                "Alerts fired, by rule and severity.",
                &["rule", "severity"],
            ),
            alerts_storm_suppressed: r.counters(
                "auditwatch_alerts_storm_suppressed_total",
                "Alerts over their rule's storm limit (alerts.storm), by rule: folded into one summary alert of kind storm instead of being sent.",
                &["rule"],
            ),
            alerts_replayed_suppressed: r.counter(
                "auditwatch_alerts_replay_suppressed_total",
                "Alerts produced again by replaying the journal after a restart and not sent twice.",
            ),
            rule_reloads: r.counters(
                "auditwatch_rule_reloads_total",
                "Rule reloads, by result (ok, invalid).",
                &["result"],
            ),
            rules_loaded: r.gauge("auditwatch_rules_loaded", "Rules in the running rule set."),
            script_errors: r.counters(
                "auditwatch_script_errors_total",
                "Rhai condition errors, by rule.",
                &["rule"],
            ),
            window_keys: r.gauge(
                "auditwatch_window_keys",
                "Group keys held in windows, over all rules.",
            ),
            queue_depth: r.gauges(
                "auditwatch_queue_depth",
                "Items waiting in an internal queue.",
                &["queue"],
            ),
            queue_capacity: r.gauges(
                "auditwatch_queue_capacity",
                "Capacity of an internal queue (see auditwatch_queue_depth).",
                &["queue"],
            ),
            journal_bytes: r.gauge(
                "auditwatch_journal_bytes",
                "Bytes in the ingest journal (not yet compacted).",
            ),
            journal_max_bytes: r.gauge(
                "auditwatch_journal_max_bytes",
                "journal.max_size: at this many journal bytes the webhook answers 503.",
            ),
            archive_events: r.counter(
                "auditwatch_archive_events_total",
                "Events written to the archive (in sealed segments or the one in progress).",
            ),
            archive_segments: r.counters(
                "auditwatch_archive_segments_total",
                "Archive segments sealed, by result (ok, error).",
                &["result"],
            ),
            archive_bytes: r.gauge(
                "auditwatch_archive_bytes",
                "Bytes of sealed segments the archive keeps.",
            ),
            cluster_connected: r.gauge(
                "auditwatch_cluster_nats_connected",
                "Cluster mode: 1 while connected to NATS (receivers answer 503 and workers pause while 0).",
            ),
            cluster_held: r.gauges(
                "auditwatch_cluster_partition_held",
                "Cluster mode: 1 for each partition this worker holds the lease of.",
                &["partition"],
            ),
            cluster_takeovers: r.counters(
                "auditwatch_cluster_partition_takeovers_total",
                "Cluster mode: partitions this worker took, by how it resumed (snapshot, empty, rebuild).",
                &["partition", "resumed"],
            ),
            cluster_evaluated_seq: r.gauges(
                "auditwatch_cluster_evaluated_sequence",
                "Cluster mode: the events-stream sequence this worker last handed to the engine, per partition.",
                &["partition"],
            ),
            cluster_snapshots: r.counters(
                "auditwatch_cluster_snapshots_total",
                "Cluster mode: snapshots stored in JetStream, by result (ok, error).",
                &["partition", "result"],
            ),
            archive_up: r.gauge(
                "auditwatch_archive_up",
                "1 while the archive writes; 0 after a write failed (the ingest journal then keeps every batch since the last sealed segment, and the webhook answers 503 once it is full). Fix the cause and restart.",
            ),
            archive_head: r.gauges(
                "auditwatch_archive_chain_head",
                "The archive manifest's newest hash, as a label (value: segments in the chain). Prometheus keeps its history: an anchor for `auditwatch verify --expect-head`.",
                &["head"],
            ),
            archive_retired: r.counter(
                "auditwatch_archive_segments_retired_total",
                "Sealed segments removed by retention (age or size).",
            ),
            alert_chain_head: r.gauges(
                "auditwatch_alert_chain_head",
                "The alert journal's hash chain head, as a label (updated at most once a minute). Prometheus keeps its history: an anchor for `auditwatch verify --expect-alerts-head`.",
                &["head"],
            ),
            snapshots: r.counters(
                "auditwatch_snapshots_total",
                "State snapshots written, by result (ok, error).",
                &["result"],
            ),
            processing_latency: r.histograms(
                "auditwatch_processing_latency_seconds",
                "Time from receiving a batch to having evaluated it and emitted its alerts.",
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
                &["source"],
            ),
            snapshot_seconds: r.histogram(
                "auditwatch_snapshot_duration_seconds",
                "Time to write a state snapshot.",
                &[0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            ),
            snapshot_capture_seconds: r.histogram(
                "auditwatch_snapshot_capture_seconds",
                "Time the engine pauses to copy its state for a snapshot (the write happens beside it).",
                &[0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
            ),
            event_lag_seconds: r.float_gauge(
                "auditwatch_event_lag_seconds",
                "Wall clock minus the newest event time seen.",
            ),
            engine_backlog_age: r.float_gauge(
                "auditwatch_engine_backlog_age_seconds",
                "Age of the oldest batch the engine has received and not finished evaluating (0 while it waits for work). Grows without bound when the engine stalls.",
            ),
            notifications: r.counters(
                "auditwatch_notifications_total",
                "Alerts settled per notifier, by outcome (sent, silenced, inhibited, muted, failed, dropped, deduplicated).",
                &["notifier", "outcome"],
            ),
            notification_attempts: r.counters(
                "auditwatch_notification_attempts_total",
                "Send attempts, by notifier and result (ok, transient, permanent).",
                &["notifier", "result"],
            ),
            notification_seconds: r.histograms(
                "auditwatch_notification_duration_seconds",
                "Time of one send attempt, by notifier.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                &["notifier"],
            ),
            notifications_pending: r.gauges(
                "auditwatch_notifications_pending",
                "Alerts routed to a notifier and not delivered (or otherwise settled) yet.",
                &["notifier"],
            ),
            silences_active: r.gauge("auditwatch_silences_active", "Silences in effect now."),
            alert_firings: r.counters(
                "auditwatch_alert_firings_total",
                "Alerts of rules routed to a metrics notifier, by rule and severity.",
                &["rule", "severity"],
            ),
            alert_active: r.gauges(
                "auditwatch_alert_active",
                "1 while an alert of the rule is active (metric alerts; see docs/metrics.md).",
                &["rule", "severity"],
            ),
            rule_evaluations: r.counters(
                "auditwatch_rule_evaluations_total",
                "Records that passed a rule's match block (and were evaluated further), by rule.",
                &["rule"],
            ),
            rule_matches: r.counters(
                "auditwatch_rule_matches_total",
                "Requests a rule matched (after conditions and one-request-one-match), by rule.",
                &["rule"],
            ),
            window_evictions: r.counters(
                "auditwatch_window_evictions_total",
                "Window keys evicted because a rule reached max_keys_per_rule, by rule.",
                &["rule"],
            ),
            rule_condition_seconds: r.add(
                CounterVec::new(
                    Opts::new(
                        "auditwatch_rule_condition_seconds_total",
                        "Wall time spent in each rule's Rhai condition: what a rule costs.",
                    ),
                    &["rule"],
                )
                .expect("valid metric"),
            ),
            rule_condition_timeouts: r.counters(
                "auditwatch_rule_condition_timeouts_total",
                "Condition runs stopped at engine.condition_timeout (also counted as script errors), by rule.",
                &["rule"],
            ),
            rule_condition_skipped: r.counters(
                "auditwatch_rule_condition_skipped_total",
                "Requests that passed a rule's match block but whose condition was not run because the rule was over engine.rule_time_budget (they count as not matching), by rule.",
                &["rule"],
            ),
            rule_objects_too_deep: r.counters(
                "auditwatch_rule_objects_too_deep_total",
                "Requests whose objects a rule read were nested deeper than auditwatch parses (100 levels): the deeper parts were cut, the rest evaluated. By rule.",
                &["rule"],
            ),
            rule_late: r.counters(
                "auditwatch_rule_late_requests_total",
                "Requests a windowed rule matched that arrived older than the watermark and were left out of its window, by rule.",
                &["rule"],
            ),
            alerts_by_source_label: r.counters(
                "auditwatch_alerts_by_source_label_total",
                "Alerts fired, by one label of the source they came from (sources[].labels: label is its name, value its value; both come from the config only), rule and severity.",
                &["label", "value", "rule", "severity"],
            ),
            rule_throttled: r.counters(
                "auditwatch_rule_throttled_total",
                "Firings a rule's throttle swallowed (counted in the next alert's suppressed), by rule.",
                &["rule"],
            ),
            source_newest: r.float_gauges(
                "auditwatch_source_newest_event_timestamp_seconds",
                "Event time of the newest event from each event clock (a log file, stdin, or one apiserver sending to a webhook: at most 256), as Unix seconds.",
                &["source"],
            ),
            source_watermark: r.float_gauges(
                "auditwatch_source_watermark_timestamp_seconds",
                "Each event clock's watermark (its newest event time minus its lateness) as Unix seconds; 0 while the clock is idle.",
                &["source"],
            ),
            window_held: r.gauge(
                "auditwatch_window_held_requests",
                "Requests held for requests still to come within the lateness (sequence hits waiting for the watermark, and count and distinct windows' requests past it).",
            ),
            audit_resources: r.counters(
                "auditwatch_audit_resource_events_total",
                "Audit events evaluated, by resource (the common built-in resources; others as other, non-resource requests as none) and response code class.",
                &["resource", "code_class"],
            ),
            audit_auth_failures: r.counters(
                "auditwatch_audit_auth_failures_total",
                "Audit events answered 401 or 403, by code and user class (serviceaccount, node, system, anonymous, unauthenticated: a 401 without a user, user: anyone else).",
                &["code", "user_class"],
            ),
            audit_events: r.counters(
                "auditwatch_audit_events_total",
                "Audit events evaluated, by verb (get, list, watch, create, update, patch, delete, deletecollection, other) and response code class (2xx, 3xx, 4xx, 5xx, none).",
                &["verb", "code_class"],
            ),
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

    // Ingest and the network edge.

    /// A source's record counters, bound to its label.
    pub fn source(&self, source: &str) -> SourceCounters {
        SourceCounters {
            received: self.events_received.with_label_values(&[source]),
            decoded: self.events_decoded.with_label_values(&[source]),
            rejected: self.events_rejected.with_label_values(&[source]),
            late: self.events_late.with_label_values(&[source]),
        }
    }

    /// A batch of `source` was evaluated `seconds` after it was received.
    pub fn batch_processed(&self, source: &str, seconds: f64) {
        self.processing_latency
            .with_label_values(&[source])
            .observe(seconds);
    }

    /// A webhook request was answered with `code` (`"200"`).
    pub fn webhook_answered(&self, source: &str, code: &str) {
        self.webhook_requests
            .with_label_values(&[source, code])
            .inc();
    }

    pub fn webhook_refused(&self, source: &str, reason: &str) {
        self.webhook_refused
            .with_label_values(&[source, reason])
            .inc();
    }

    pub fn http_refused(&self, reason: &str) {
        self.http_refused.with_label_values(&[reason]).inc();
    }

    pub fn set_connections_open(&self, listener: &str, open: usize) {
        self.connections_open
            .with_label_values(&[listener])
            .set(open as i64);
    }

    pub fn set_connections_max(&self, listener: &str, max: usize) {
        self.connections_max
            .with_label_values(&[listener])
            .set(max as i64);
    }

    pub fn credential_reloaded(&self, what: &str, ok: bool) {
        self.credential_reloads
            .with_label_values(&[what, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Creates a credential's reload series at zero.
    pub fn credential_reloaded_primed(&self, what: &str) {
        for result in ["ok", "error"] {
            self.credential_reloads.with_label_values(&[what, result]);
        }
    }

    /// The counter a file follower increments on each truncation it notices.
    pub fn file_truncations(&self, source: &str) -> IntCounter {
        self.file_truncations.with_label_values(&[source])
    }

    pub fn set_queue_depth(&self, queue: &str, depth: usize) {
        self.queue_depth
            .with_label_values(&[queue])
            .set(depth as i64);
    }

    pub fn set_journal_bytes(&self, bytes: u64) {
        self.journal_bytes.set(bytes as i64);
    }

    pub fn set_event_lag(&self, seconds: f64) {
        self.event_lag_seconds.set(seconds);
    }

    pub fn set_engine_backlog_age(&self, seconds: f64) {
        self.engine_backlog_age.set(seconds);
    }

    /// Adds a batch's audited stream (verb × code class) to `auditwatch_audit_events_total`.
    pub fn record_stream(&self, tally: &mut StreamTally) {
        for (v, row) in tally.counts.iter_mut().enumerate() {
            for (c, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    self.audit_events
                        .with_label_values(&[VERBS[v], CODE_CLASSES[c]])
                        .inc_by(std::mem::take(n));
                }
            }
        }
        for (r, row) in tally.resources.iter_mut().enumerate() {
            for (c, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    self.audit_resources
                        .with_label_values(&[RESOURCES[r], CODE_CLASSES[c]])
                        .inc_by(std::mem::take(n));
                }
            }
        }
        for (code, row) in tally.auth_failures.iter_mut().enumerate() {
            for (u, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    self.audit_auth_failures
                        .with_label_values(&[["401", "403"][code], USER_CLASSES[u]])
                        .inc_by(std::mem::take(n));
                }
            }
        }
    }

    // State.

    pub fn state_problem(&self, what: &str, problem: &str) {
        self.state_problems
            .with_label_values(&[what, problem])
            .inc();
    }

    pub fn snapshot_written(&self, ok: bool, seconds: f64) {
        self.snapshots
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.snapshot_seconds.observe(seconds);
    }

    // The archive.

    pub fn archived(&self, events: u64) {
        self.archive_events.inc_by(events);
    }

    /// A segment sealed: the new chain head, and the segments it covers.
    pub fn archive_sealed(&self, head: &str, segments: u64, bytes_kept: u64) {
        self.archive_segments.with_label_values(&["ok"]).inc();
        self.archive_head.reset();
        self.archive_head
            .with_label_values(&[head])
            .set(segments as i64);
        self.archive_bytes.set(bytes_kept as i64);
        self.archive_up.set(1);
    }

    pub fn alert_chain_head(&self, head: &str) {
        self.alert_chain_head.reset();
        self.alert_chain_head.with_label_values(&[head]).set(1);
    }

    pub fn archive_failed(&self) {
        self.archive_segments.with_label_values(&["error"]).inc();
        self.archive_up.set(0);
    }

    pub fn cluster_connected(&self, up: bool) {
        self.cluster_connected.set(i64::from(up));
    }

    pub fn cluster_partition_held(&self, partition: &str, held: bool) {
        self.cluster_held
            .with_label_values(&[partition])
            .set(i64::from(held));
    }

    pub fn cluster_takeover(&self, partition: &str, resumed: &str) {
        self.cluster_takeovers
            .with_label_values(&[partition, resumed])
            .inc();
    }

    pub fn cluster_evaluated(&self, partition: &str, seq: u64) {
        self.cluster_evaluated_seq
            .with_label_values(&[partition])
            .set(seq as i64);
    }

    pub fn cluster_snapshot(&self, partition: &str, ok: bool) {
        self.cluster_snapshots
            .with_label_values(&[partition, if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn archive_ready(&self, up: bool) {
        self.archive_up.set(i64::from(up));
    }

    pub fn archive_retired(&self, n: u64, bytes_kept: u64) {
        self.archive_retired.inc_by(n);
        self.archive_bytes.set(bytes_kept as i64);
    }

    pub fn snapshot_captured(&self, seconds: f64) {
        self.snapshot_capture_seconds.observe(seconds);
    }

    // Rules and alerts.

    pub fn set_rules_loaded(&self, n: usize) {
        self.rules_loaded.set(n as i64);
    }

    pub fn rule_reload(&self, valid: bool) {
        self.rule_reloads
            .with_label_values(&[if valid { "ok" } else { "invalid" }])
            .inc();
    }

    /// One event clock's newest event time and watermark (`None` while idle), in Unix seconds.
    pub fn set_source_clock(&self, source: &str, newest: f64, watermark: Option<f64>) {
        self.source_newest.with_label_values(&[source]).set(newest);
        self.source_watermark
            .with_label_values(&[source])
            .set(watermark.unwrap_or(0.0));
    }

    /// Every sample of the metric family `name` as (labels, value), for the console, which
    /// shows the same numbers `/metrics` serves.
    pub fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut out = Vec::new();
        for family in self.registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect();
                let value = match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                    _ => continue,
                };
                out.push((labels, value));
            }
        }
        out
    }

    pub fn set_window_keys(&self, n: usize) {
        self.window_keys.set(n as i64);
    }

    pub fn set_window_held(&self, n: usize) {
        self.window_held.set(n as i64);
    }

    pub fn script_error(&self, rule: &str) {
        self.script_errors.with_label_values(&[rule]).inc();
    }

    /// What `rule` counted since the last call.
    pub fn rule_counted(&self, rule: &str, d: &RuleDeltas) {
        let add = |c: &IntCounterVec, n: u64| {
            if n > 0 {
                c.with_label_values(&[rule]).inc_by(n);
            }
        };
        add(&self.rule_evaluations, d.evaluations);
        add(&self.rule_matches, d.matches);
        add(&self.window_evictions, d.evictions);
        add(&self.rule_condition_timeouts, d.condition_timeouts);
        add(&self.rule_condition_skipped, d.condition_skipped);
        add(&self.rule_objects_too_deep, d.objects_too_deep);
        add(&self.rule_late, d.late);
        add(&self.rule_throttled, d.throttled);
        if d.condition_seconds > 0.0 {
            let c: Counter = self.rule_condition_seconds.with_label_values(&[rule]);
            c.inc_by(d.condition_seconds);
        }
    }

    pub fn alert_fired_with_source_label(
        &self,
        label: &str,
        value: &str,
        rule: &str,
        severity: &str,
    ) {
        self.alerts_by_source_label
            .with_label_values(&[label, value, rule, severity])
            .inc();
    }

    pub fn alert_fired(&self, rule: &str, severity: &str) {
        self.alerts.with_label_values(&[rule, severity]).inc();
    }

    pub fn alerts_storm_suppressed(&self, rule: &str, n: u64) {
        self.alerts_storm_suppressed
            .with_label_values(&[rule])
            .inc_by(n);
    }

    pub fn alert_replay_suppressed(&self) {
        self.alerts_replayed_suppressed.inc();
    }

    // Delivery.

    pub fn notification_settled(&self, notifier: &str, outcome: &str) {
        self.notifications
            .with_label_values(&[notifier, outcome])
            .inc();
    }

    pub fn notification_attempt(&self, notifier: &str, result: &str, seconds: f64) {
        self.notification_attempts
            .with_label_values(&[notifier, result])
            .inc();
        self.notification_seconds
            .with_label_values(&[notifier])
            .observe(seconds);
    }

    pub fn set_notifications_pending(&self, notifier: &str, n: usize) {
        self.notifications_pending
            .with_label_values(&[notifier])
            .set(n as i64);
    }

    pub fn set_silences_active(&self, n: usize) {
        self.silences_active.set(n as i64);
    }

    /// A metric alert (an alert routed to a `metrics` notifier) fired.
    pub fn metric_alert_fired(&self, rule: &str, severity: &str) {
        self.alert_firings
            .with_label_values(&[rule, severity])
            .inc();
        self.alert_active
            .with_label_values(&[rule, severity])
            .set(1);
    }

    pub fn set_metric_alert_active(&self, rule: &str, severity: &str, active: bool) {
        self.alert_active
            .with_label_values(&[rule, severity])
            .set(i64::from(active));
    }

    /// Creates the label sets known from configuration at zero, so that every series exists
    /// from the first scrape: `rate()` and dashboards see 0 instead of "no data", and an
    /// alert on `increase(...) > 0` fires on the first failure, not the second.
    pub fn prime(&self, known: &Known<'_>) {
        for &(source, is_webhook) in known.sources {
            self.events_received.with_label_values(&[source]);
            self.events_decoded.with_label_values(&[source]);
            self.events_rejected.with_label_values(&[source]);
            self.events_late.with_label_values(&[source]);
            self.processing_latency.with_label_values(&[source]);
            if is_webhook {
                for reason in known.webhook_refusals {
                    self.webhook_refused.with_label_values(&[source, reason]);
                }
                self.connections_open.with_label_values(&[source]);
            } else {
                self.file_truncations.with_label_values(&[source]);
            }
        }
        for reason in known.http_refusals {
            self.http_refused.with_label_values(&[reason]);
        }
        if !known.http_refusals.is_empty() {
            self.connections_open.with_label_values(&["http"]);
        }
        for what in known.credentials {
            for result in ["ok", "error"] {
                self.credential_reloads.with_label_values(&[what, result]);
            }
        }
        self.prime_rules(known.rules);
        for notifier in known.notifiers {
            for outcome in known.notification_outcomes {
                self.notifications.with_label_values(&[notifier, outcome]);
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
        for (what, problem) in known.state_problems {
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
            self.rule_late.with_label_values(&[rule]);
        }
    }
}

/// What the configuration and the components say exists, for [`Metrics::prime`]. The fixed
/// label sets (refusal reasons, outcomes) are the components' own lists, passed in so that
/// this module depends on none of them.
#[derive(Default)]
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
    /// Every `reason` of the webhook's refusals.
    pub webhook_refusals: &'a [&'a str],
    /// Every `reason` of the operations listener's refusals (empty: no listener).
    pub http_refusals: &'a [&'a str],
    /// Every outcome of a notification.
    pub notification_outcomes: &'a [&'a str],
    /// Every (what, problem) of the state checks at start.
    pub state_problems: &'a [(&'a str, &'a str)],
    /// Every credential that reloads (`what`).
    pub credentials: &'a [&'a str],
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
/// thread and added to `auditwatch_audit_events_total` once per batch
/// ([`Metrics::record_stream`]), so the hot path does no hashing or atomic work per event.
#[derive(Default)]
pub struct StreamTally {
    counts: [[u64; CODE_CLASSES.len()]; VERBS.len()],
    resources: [[u64; CODE_CLASSES.len()]; RESOURCES.len()],
    /// [401, 403] × user class.
    auth_failures: [[u64; USER_CLASSES.len()]; 2],
}

impl StreamTally {
    pub fn count(&mut self, ev: &crate::event::AuditEvent<'_>) {
        let code = ev.response_status.as_ref().map(|s| s.code);
        let class = code_class_label(code);
        self.counts[verb_label(&ev.verb)][class] += 1;
        self.resources[resource_label(&ev.object_ref().resource)][class] += 1;
        if let Some(i) = match code {
            Some(401) => Some(0),
            Some(403) => Some(1),
            _ => None,
        } {
            self.auth_failures[i][user_class_label(&ev.user.username, code)] += 1;
        }
    }
}

/// The `resource` label values: common built-in resources, then `other`, then `none`
/// (non-resource requests such as /healthz or /version). Bounded: any other resource name,
/// including a CRD's or one an attacker makes up, is `other`.
pub const RESOURCES: [&str; 26] = [
    "pods",
    "secrets",
    "configmaps",
    "services",
    "endpoints",
    "endpointslices",
    "events",
    "leases",
    "nodes",
    "namespaces",
    "serviceaccounts",
    "deployments",
    "replicasets",
    "daemonsets",
    "statefulsets",
    "jobs",
    "cronjobs",
    "ingresses",
    "networkpolicies",
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
    "persistentvolumeclaims",
    "other",
    "none",
];

pub fn resource_label(resource: &str) -> usize {
    if resource.is_empty() {
        return RESOURCES.len() - 1;
    }
    RESOURCES[..RESOURCES.len() - 2]
        .iter()
        .position(|r| *r == resource)
        .unwrap_or(RESOURCES.len() - 2)
}

/// The `user_class` label values.
pub const USER_CLASSES: [&str; 6] = [
    "serviceaccount",
    "node",
    "system",
    "anonymous",
    "unauthenticated",
    "user",
];

pub fn user_class_label(username: &str, code: Option<i32>) -> usize {
    if username.starts_with("system:serviceaccount:") {
        0
    } else if username.starts_with("system:node:") {
        1
    } else if username == "system:anonymous" {
        3
    } else if username.starts_with("system:") {
        2
    } else if username.is_empty() && code == Some(401) {
        4
    } else {
        5
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
        let ev = |verb: &str, resource: &str, user: &str, code: u16| {
            format!(
                r#"{{"auditID":"1","verb":"{verb}","user":{{"username":"{user}"}},"objectRef":{{"resource":"{resource}"}},"responseStatus":{{"code":{code}}}}}"#
            )
        };
        for line in [
            ev("get", "secrets", "alice", 200),
            ev("get", "secrets", "alice", 200),
            ev(
                "exec",
                "widgets.example.com",
                "system:serviceaccount:a:b",
                403,
            ),
            ev("list", "pods", "", 401),
        ] {
            t.count(&crate::event::decode_event(&line).unwrap());
        }
        m.record_stream(&mut t);
        m.record_stream(&mut t);
        assert_eq!(m.audit_events.with_label_values(&["get", "2xx"]).get(), 2);
        assert_eq!(m.audit_events.with_label_values(&["other", "4xx"]).get(), 1);
        let res = |r: &str, c: &str| m.audit_resources.with_label_values(&[r, c]).get();
        assert_eq!((res("secrets", "2xx"), res("other", "4xx")), (2, 1));
        let auth = |c: &str, u: &str| m.audit_auth_failures.with_label_values(&[c, u]).get();
        assert_eq!(
            (
                auth("403", "serviceaccount"),
                auth("401", "unauthenticated")
            ),
            (1, 1)
        );
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
            webhook_refusals: &["saturated"],
            http_refusals: &["host"],
            notification_outcomes: &["failed"],
            state_problems: &[("snapshot", "corrupt")],
            credentials: &["http bearer token"],
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
            "auditwatch_http_refused_total{reason=\"host\"} 0",
            "auditwatch_state_problems_total{problem=\"corrupt\",what=\"snapshot\"} 0",
            "auditwatch_credential_reloads_total{result=\"error\",what=\"http bearer token\"} 0",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}
