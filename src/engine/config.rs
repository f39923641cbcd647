//! The engine's settings in the daemon's config file (`engine:`), as durations written like in
//! rule files; [`EngineConfig::options`] turns them into [`EngineOptions`].

use serde::Deserialize;

use super::EngineOptions;
use crate::event::Span;
use crate::units::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub lateness: Duration,
    pub max_keys_per_rule: usize,
    pub dedup_horizon: Duration,
    pub dedup_capacity: usize,
    pub max_pending: usize,
    /// Rhai operation budget per condition run.
    pub max_operations: u64,
    /// Wall-clock time without events after which event time moves on by itself, so windows
    /// close and absence rules fire while the audit stream is silent.
    pub idle_after: Duration,
    /// `/readyz` fails while the oldest batch the engine has not finished is older than this
    /// (a stalled engine must not look healthy).
    pub max_lag: Duration,
    /// A condition run is stopped after this long and counts as a script error.
    pub condition_timeout: Duration,
    /// Time one rule's conditions may take per second; past it the rule's condition is not
    /// run (counted) until the next second, so one costly rule cannot delay the others' alerts.
    /// `1s` or more: no budget.
    pub rule_time_budget: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let e = EngineOptions::default();
        EngineConfig {
            lateness: Duration(e.lateness),
            max_keys_per_rule: e.max_keys_per_rule,
            dedup_horizon: Duration(e.dedup_horizon),
            dedup_capacity: 200_000,
            max_pending: 200_000,
            max_operations: 100_000,
            idle_after: Duration(Span::from_secs(10)),
            max_lag: Duration(Span::from_secs(30)),
            condition_timeout: Duration(Span::from_millis(100)),
            rule_time_budget: Duration(Span::from_millis(250)),
        }
    }
}

impl EngineConfig {
    /// The engine's options under this config.
    pub fn options(&self) -> EngineOptions {
        EngineOptions {
            lateness: self.lateness.0,
            max_keys_per_rule: self.max_keys_per_rule,
            dedup_horizon: self.dedup_horizon.0,
            dedup_capacity: self.dedup_capacity,
            max_pending: self.max_pending,
            condition_timeout: self.condition_timeout.std(),
            rule_time_budget: (self.rule_time_budget.std() < std::time::Duration::from_secs(1))
                .then(|| self.rule_time_budget.std()),
            ..Default::default()
        }
    }
}
