//! auditwatch: a real-time alerting rules engine for Kubernetes audit logs.
//!
//! The pipeline, left to right: [`event`] decodes `audit.k8s.io` events, [`rules`] loads and
//! compiles YAML rule files (match blocks + Rhai conditions), [`engine`] dispatches each event
//! to the rules that can match it, [`window`] keeps keyed sliding windows in event time, and
//! [`alert`] is what comes out. [`source`] reads files and stdin for replays; [`ruletest`] runs
//! rule unit tests. A module only uses the ones to its left.
#![forbid(unsafe_code)]

pub mod alert;
pub mod bundled;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod event;
pub mod log_gate;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod policy;
pub mod replay;
pub mod rules;
pub mod ruletest;
pub mod source;
pub mod state;
pub mod units;
pub mod window;
