//! auditwatch: a real-time alerting rules engine for Kubernetes audit logs.
//!
//! Data flows one way: sources → decode → rules → windows → alerts → notifiers. The module map
//! below is in layer order: a module may use the ones before it, never one after it.
//! `tests/architecture.rs` reads this list and fails on an import against it or on an import
//! cycle between files, so the map stays true.
//!
//! 1. `event` — the `audit.k8s.io` event: typed model, decoding of lines, `Event`, `EventList`
//!    and managed-cluster exports, field paths, bounded parsing of nested objects.
//! 2. `position` — `file:line:column` errors for every YAML file auditwatch reads.
//! 3. `units` — durations and byte sizes as config files write them.
//! 4. `log_gate` — rate-limited logging of errors an outsider can cause at will.
//! 5. `rules` — rule files: schema, loading with positions, patterns, match blocks, Rhai
//!    conditions (and their runner), templates, Sigma.
//! 6. `bundled` — the rule packs compiled into the binary.
//! 7. `policy` — whether an apiserver audit policy records what the rules read.
//! 8. `alert` — the `Alert`, its fields, and queries over the alert journal.
//! 9. `window` — keyed sliding windows in event time, early firing, event clocks, eviction.
//! 10. `engine` — per-event dispatch to the rules, windows and throttles; building alerts.
//! 11. `metrics` — every Prometheus metric, recorded through typed functions.
//! 12. `state` — what survives restarts: the ingest journal and its writer, snapshots, the
//!     alert journal, and their settings.
//! 13. `net` — the network edge: bounded serving, TLS, authentication, reloading secrets.
//! 14. `source` — the sources (log file, webhook, stdin, replay files) and the batch contract
//!     they hand to the engine.
//! 15. `archive` — every event kept as Parquet segments, sealed write-once.
//! 16. `replay` — rules over log files in event time.
//! 17. `query` — `auditwatch query`: filter, group and count audit events without a rule.
//! 18. `explain` — `auditwatch explain`: an alert, its requests from the archive, the
//!     criteria each met, and what the same identity did around it.
//! 19. `ruletest` — rule unit tests.
//! 20. `notify` — alert delivery: routes, silences, groups, retries, the ledger.
//! 21. `cluster` — cluster mode's NATS JetStream side: the events and alerts streams,
//!     partition leases, shared snapshots and the shared delivery ledger.
//! 22. `console` — the on-call web console: alerts, silences, rules, sources.
//! 23. `ops` — the operations endpoint: metrics, health, the silences API, the console.
//! 24. `config` — the daemon's config file: assembles the components' settings.
//! 25. `daemon` — `auditwatch run`: recovery, the engine thread, wiring, reload, shutdown,
//!     and cluster mode's receivers and workers.
#![forbid(unsafe_code)]

pub mod alert;
pub mod archive;
pub mod bundled;
pub mod cluster;
pub mod config;
pub mod console;
pub mod daemon;
pub mod engine;
pub mod event;
pub mod explain;
pub mod log_gate;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod ops;
pub mod policy;
pub mod position;
pub mod query;
pub mod replay;
pub mod rules;
pub mod ruletest;
pub mod source;
pub mod state;
pub mod units;
pub mod window;
