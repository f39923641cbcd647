//! The engine: one event in, alerts out. Plain synchronous code, so it is easy to test, to
//! benchmark, and to drive from a replay or a live daemon alike.
//!
//! Per event: look up the rules that can match its verb (an index built at load), run each
//! rule's match block, then its Rhai condition (the event is converted for Rhai at most once),
//! then apply "one request, one match". Plain rules alert at once (subject to `throttle`);
//! windowed rules hand a hit to the reorder buffer, and the windows fire as the watermark moves.

mod build;
mod config;
mod dedup;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use config::EngineConfig;
pub use dedup::{RequestDedup, audit_key};

use crate::alert::{Alert, AlertKind, EventRef};
use crate::event::{AuditEvent, EventTime, Span};
use crate::rules::fields::ObjectCache;
use crate::rules::script::{ConditionError, ConditionRunner};
use crate::rules::{Rule, RuleId, RuleSet, WindowSpec, default_summary};
use crate::window::{
    Firing, GroupKey, Hit, KEY_SEPARATOR, ReorderBuffer, ReorderSnapshot, RuleWindow, Throttle,
    WindowSnapshot,
};
use build::build_alert;

/// Response code classes: 0 = no response yet, 1-5 = 1xx-5xx, 6 = anything else.
const CODE_CLASSES: usize = 7;

/// Candidate rules per response code class, in rule order.
type ByCode = [Vec<u32>; CODE_CLASSES];

/// Verb → candidate rules per code class.
type VerbIndex = Vec<(Box<str>, ByCode)>;

/// One bit per resource name (a 64-bit Bloom filter): a rule whose top-level `resources` all
/// name an exact resource can only match events whose resource bit is in its mask. Checking the
/// mask skips most rules of a verb without running their match block.
fn resource_bit(resource: &str) -> u64 {
    // FNV-1a: deterministic and cheap for the short names resources have.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in resource.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    1 << (h >> 58)
}

/// The resource mask of each rule (all bits: any resource).
fn resource_masks(rules: &RuleSet) -> Vec<u64> {
    rules
        .rules
        .iter()
        .map(|r| match &r.matcher.resources {
            Some(patterns) => patterns
                .iter()
                .map(|p| p.exact_resource().map(resource_bit))
                .try_fold(0, |mask, bit| bit.map(|b| mask | b))
                .unwrap_or(u64::MAX),
            None => u64::MAX,
        })
        .collect()
}

fn code_class(ev: &AuditEvent<'_>) -> usize {
    match &ev.response_status {
        None => 0,
        Some(s) => match s.code / 100 {
            c @ 1..=5 => c as usize,
            _ => 6,
        },
    }
}

/// The code classes a rule's top-level `response_codes` can match (all without it).
fn rule_classes(rule: &Rule) -> [bool; CODE_CLASSES] {
    let Some(ranges) = &rule.matcher.response_codes else {
        return [true; CODE_CLASSES];
    };
    let mut classes = [false; CODE_CLASSES];
    for &(lo, hi) in ranges {
        for (c, slot) in classes.iter_mut().enumerate().take(6).skip(1) {
            let (clo, chi) = (c as i32 * 100, c as i32 * 100 + 99);
            if lo <= chi && hi >= clo {
                *slot = true;
            }
        }
        if lo < 100 || hi > 599 {
            classes[6] = true;
        }
    }
    classes
}

/// Tuning knobs; the defaults suit both replay and a live stream.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How far behind the newest event an event may arrive and still count in windows.
    pub lateness: Span,
    /// Keys per windowed rule before the least recently updated is evicted.
    pub max_keys_per_rule: usize,
    /// How long "one request, one match" remembers a request.
    pub dedup_horizon: Span,
    /// How many (request, rule) matches it remembers at most.
    pub dedup_capacity: usize,
    /// Windowed hits waiting for the watermark, at most.
    pub max_pending: usize,
    /// Script errors kept for the caller to report (all are counted).
    pub max_diagnostics: usize,
    /// A condition run is stopped after this long (wall clock) and counts as an error.
    pub condition_timeout: std::time::Duration,
    /// Time a rule's conditions may take per second of wall time; past it, its condition is
    /// not run (the request counts as not matching, and is counted) until the next second.
    /// `None`: no budget (replays and rule tests, which must not depend on the clock).
    pub rule_time_budget: Option<std::time::Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lateness: Span::from_secs(5),
            max_keys_per_rule: 100_000,
            dedup_horizon: Span::from_secs(3600),
            dedup_capacity: 1_000_000,
            max_pending: 1_000_000,
            max_diagnostics: 1000,
            condition_timeout: std::time::Duration::from_millis(100),
            rule_time_budget: None,
        }
    }
}

/// Counters per rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Events that passed the match block.
    pub prefiltered: u64,
    /// Condition runs.
    pub evaluated: u64,
    /// Requests that matched (after dedup).
    pub matched: u64,
    /// Later records of an already matched request.
    pub deduplicated: u64,
    pub alerts: u64,
    pub throttled: u64,
    pub script_errors: u64,
    /// Hits older than the watermark on arrival.
    pub late: u64,
    pub evicted_keys: u64,
    /// Wall time spent in the rule's condition, nanoseconds.
    pub condition_nanos: u64,
    /// Condition runs stopped at `condition_timeout` (also counted in `script_errors`).
    pub condition_timeouts: u64,
    /// Requests whose condition was not run because the rule was over its time budget.
    pub budget_skipped: u64,
    /// Requests whose objects were nested too deep for the rule to read all of them.
    pub objects_too_deep: u64,
}

/// Engine-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub events: u64,
    pub events_without_time: u64,
    pub late_hits: u64,
    pub forced_releases: u64,
}

/// A script error, for the caller to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    pub rule: Arc<str>,
    pub audit_id: String,
    pub message: String,
}

/// The engine's state (windows, throttles, pending hits, remembered requests), for the
/// daemon to persist and restore across restarts. Rules are identified by name and
/// fingerprint, so a snapshot restores into a changed rule set: unchanged rules get their
/// state back, the others start empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub rules: Vec<RuleSnapshot>,
    pub reorder: ReorderSnapshot,
    /// (time, auditID key, index into `rules`).
    pub dedup: Vec<(EventTime, [u64; 2], u32)>,
    pub last_expiry: EventTime,
}

impl EngineSnapshot {
    /// Sorts the per-key state so the same engine state always serialises the same way.
    /// Kept out of [`Engine::snapshot`] so the copy the engine pauses for stays short.
    pub fn canonicalize(&mut self) {
        self.reorder.canonicalize();
        for rule in &mut self.rules {
            if let Some(w) = &mut rule.window {
                w.canonicalize();
            }
            rule.throttle.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleSnapshot {
    pub name: String,
    /// [`crate::rules::Rule::legacy_fingerprint`]: how snapshots before rule ids matched
    /// rules (still written, so an older build restores this snapshot too).
    pub fingerprint: u64,
    /// The rule's [`crate::rules::RuleId`] in hex; empty in snapshots written before it.
    #[serde(default)]
    pub id: String,
    pub window: Option<WindowSnapshot>,
    pub throttle: Vec<(GroupKey, EventTime, u64)>,
}

struct RuleState {
    window: Option<RuleWindow>,
    throttle: Option<Throttle>,
    stats: RuleStats,
    /// Condition time used in the current second (for `rule_time_budget`).
    budget: (std::time::Instant, std::time::Duration),
}

impl RuleState {
    /// Whether the rule may run its condition now, under `budget` per second.
    fn within_budget(&mut self, budget: Option<std::time::Duration>) -> bool {
        let Some(budget) = budget else {
            return true;
        };
        if self.budget.0.elapsed() >= std::time::Duration::from_secs(1) {
            self.budget = (std::time::Instant::now(), std::time::Duration::ZERO);
        }
        self.budget.1 < budget
    }

    /// Passes an alert for `key` at `time` through the throttle. `Some(swallowed)` if it may
    /// go out; `None` (counted) if throttled.
    fn admit(&mut self, key: &GroupKey, time: EventTime) -> Option<u64> {
        let swallowed = match &mut self.throttle {
            Some(t) => t.admit(key, time),
            None => Some(0),
        };
        match swallowed {
            Some(_) => self.stats.alerts += 1,
            None => self.stats.throttled += 1,
        }
        swallowed
    }

    fn new(rule: &Rule, opts: &EngineOptions) -> RuleState {
        RuleState {
            window: rule
                .window
                .clone()
                .map(|spec| RuleWindow::new(spec, opts.max_keys_per_rule)),
            throttle: rule
                .throttle
                .map(|period| Throttle::new(period, opts.max_keys_per_rule)),
            stats: RuleStats::default(),
            budget: (std::time::Instant::now(), std::time::Duration::ZERO),
        }
    }
}

pub struct Engine {
    rules: Arc<RuleSet>,
    opts: EngineOptions,
    /// Verb → indices of the rules that can match it, in rule order. A short list searched
    /// linearly: there are a dozen verbs, and hashing every event's verb costs more.
    by_verb: VerbIndex,
    any_verb: ByCode,
    states: Vec<RuleState>,
    dedup: RequestDedup,
    reorder: ReorderBuffer,
    conditions: ConditionRunner,
    stats: EngineStats,
    diagnostics: Vec<ScriptError>,
    /// Event time of the last housekeeping pass.
    last_expiry: EventTime,
    firings: Vec<(EventTime, Firing)>,
    /// The group key of rules without `group_by`, shared to avoid an allocation per hit.
    empty_key: GroupKey,
    /// Indices of the absence rules, the only ones the watermark alone can fire.
    absence_rules: Vec<usize>,
    /// Per rule: the resources it can match ([`resource_bit`]).
    resource_masks: Vec<u64>,
    /// Per rule: whether its match block or condition reads the event's objects.
    reads_objects: Vec<bool>,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, opts: EngineOptions) -> Engine {
        let states = rules
            .rules
            .iter()
            .map(|r| RuleState::new(r, &opts))
            .collect();
        let (by_verb, any_verb) = index_by_verb(&rules);
        let absence = absence_rules(&rules);
        let resource_masks = resource_masks(&rules);
        let conditions = ConditionRunner::new(&rules, opts.condition_timeout);
        let reads_objects = reads_objects(&rules);
        Engine {
            dedup: RequestDedup::new(opts.dedup_horizon, opts.dedup_capacity),
            reorder: ReorderBuffer::new(opts.lateness, opts.max_pending),
            rules,
            opts,
            by_verb,
            any_verb,
            states,
            conditions,
            stats: EngineStats::default(),
            diagnostics: Vec::new(),
            last_expiry: EventTime::MIN,
            firings: Vec::new(),
            empty_key: Arc::from(""),
            absence_rules: absence,
            resource_masks,
            reads_objects,
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            late_hits: self.reorder.late,
            forced_releases: self.reorder.forced,
            ..self.stats.clone()
        }
    }

    /// Per-rule counters, in rule order.
    pub fn rule_stats(&self) -> impl Iterator<Item = (&Rule, RuleStats)> {
        self.rules.rules.iter().zip(&self.states).map(|(r, s)| {
            let mut stats = s.stats.clone();
            stats.evicted_keys = s.window.as_ref().map_or(0, |w| w.evicted)
                + s.throttle.as_ref().map_or(0, |t| t.evicted);
            (r, stats)
        })
    }

    /// Keys held in windows, over all rules.
    pub fn window_keys(&self) -> usize {
        self.states
            .iter()
            .filter_map(|s| s.window.as_ref())
            .map(|w| w.key_count())
            .sum()
    }

    /// Takes the script errors collected since the last call.
    pub fn take_script_errors(&mut self) -> Vec<ScriptError> {
        std::mem::take(&mut self.diagnostics)
    }

    /// Replaces the rule set. Window and throttle state of rules whose name and definition are
    /// unchanged carries over; new and changed rules start empty.
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        let mut old: HashMap<(Arc<str>, RuleId), RuleState> = self
            .rules
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.id))
            .zip(self.states.drain(..))
            .collect();
        self.states = rules
            .rules
            .iter()
            .map(|r| {
                old.remove(&(r.name.clone(), r.id))
                    .unwrap_or_else(|| RuleState::new(r, &self.opts))
            })
            .collect();
        let (by_verb, any_verb) = index_by_verb(&rules);
        self.by_verb = by_verb;
        self.any_verb = any_verb;
        self.absence_rules = absence_rules(&rules);
        self.resource_masks = resource_masks(&rules);
        self.conditions = ConditionRunner::new(&rules, self.opts.condition_timeout);
        self.reads_objects = reads_objects(&rules);
        // Pending hits keep waiting for the watermark, renumbered to the new rule set; those
        // of removed or changed rules go with their window.
        let positions: HashMap<(Arc<str>, RuleId), usize> = rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.name.clone(), r.id), i))
            .collect();
        let old_ids: Vec<(Arc<str>, RuleId)> = self
            .rules
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.id))
            .collect();
        self.reorder
            .remap(|old| old_ids.get(old).and_then(|id| positions.get(id).copied()));
        self.rules = rules;
    }

    /// The state to persist, in canonical order; see [`EngineSnapshot`].
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut snap = self.capture();
        snap.canonicalize();
        snap
    }

    /// The state to persist as a quick copy: [`EngineSnapshot::canonicalize`] must run before
    /// it is written or restored. The daemon captures on the engine thread and sorts on the
    /// snapshot writer's.
    pub fn capture(&self) -> EngineSnapshot {
        EngineSnapshot {
            rules: self
                .rules
                .rules
                .iter()
                .zip(&self.states)
                .map(|(rule, state)| RuleSnapshot {
                    name: rule.name.to_string(),
                    fingerprint: rule.legacy_fingerprint,
                    id: rule.id.hex(),
                    window: state.window.as_ref().map(RuleWindow::snapshot),
                    throttle: state
                        .throttle
                        .as_ref()
                        .map(Throttle::snapshot)
                        .unwrap_or_default(),
                })
                .collect(),
            reorder: self.reorder.snapshot(),
            dedup: self.dedup.snapshot(),
            last_expiry: self.last_expiry,
        }
    }

    /// Restores a snapshot into a fresh engine. Returns how many of the snapshot's rules were
    /// restored (the others no longer exist or changed).
    pub fn restore(&mut self, snap: EngineSnapshot) -> usize {
        // By name and id; a snapshot from before rule ids, by name and legacy fingerprint.
        let by_id: HashMap<(&str, String), usize> = self
            .rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| ((&*r.name, r.id.hex()), i))
            .collect();
        let by_fingerprint: HashMap<(&str, u64), usize> = self
            .rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| ((&*r.name, r.legacy_fingerprint), i))
            .collect();
        let map: Vec<Option<usize>> = snap
            .rules
            .iter()
            .map(|r| {
                if r.id.is_empty() {
                    by_fingerprint
                        .get(&(r.name.as_str(), r.fingerprint))
                        .copied()
                } else {
                    by_id.get(&(r.name.as_str(), r.id.clone())).copied()
                }
            })
            .collect();
        let mut restored = 0;
        for (snapshot, target) in snap.rules.into_iter().zip(&map) {
            let Some(i) = *target else { continue };
            let rule = &self.rules.rules[i];
            let state = &mut self.states[i];
            if let (Some(spec), Some(w)) = (&rule.window, snapshot.window) {
                state.window = Some(RuleWindow::restore(
                    spec.clone(),
                    self.opts.max_keys_per_rule,
                    w,
                ));
            }
            if let Some(period) = rule.throttle {
                state.throttle = Some(Throttle::restore(
                    period,
                    self.opts.max_keys_per_rule,
                    snapshot.throttle,
                ));
            }
            restored += 1;
        }
        self.reorder
            .restore(snap.reorder, |r| map.get(r).copied().flatten());
        self.dedup.restore(snap.dedup, |r| {
            map.get(r as usize).copied().flatten().map(|i| i as u32)
        });
        self.last_expiry = self.last_expiry.max(snap.last_expiry);
        restored
    }

    /// Evaluates one event; alerts go to `out`.
    pub fn process(&mut self, ev: &AuditEvent<'_>, out: &mut Vec<Alert>) {
        self.stats.events += 1;
        let time = match ev.time {
            Some(t) => {
                let before = self.reorder.watermark();
                self.reorder.observe(t);
                // Silences that ended before this event's watermark fire first, before the
                // event itself counts as a sign of life.
                if self.reorder.watermark() > before {
                    self.fire_absences(self.reorder.watermark(), out);
                }
                t
            }
            None => {
                self.stats.events_without_time += 1;
                self.reorder.newest().max(EventTime(0))
            }
        };
        let rules = Arc::clone(&self.rules);
        let verb = ev.verb.as_str();
        let class = code_class(ev);
        let candidates: &[u32] = match self.by_verb.iter().find(|(v, _)| &**v == verb) {
            Some((_, by_code)) => &by_code[class],
            None => &self.any_verb[class],
        };
        let objects = ObjectCache::new(rules.object_paths());
        self.conditions.begin_event();
        let resource = resource_bit(&ev.object_ref().resource);
        for &idx in candidates {
            if self.resource_masks[idx as usize] & resource == 0 {
                continue;
            }
            let rule = &rules.rules[idx as usize];
            let matched = rule.matcher.matches(ev, &objects);
            let state = &mut self.states[idx as usize];
            if !matched {
                if self.reads_objects[idx as usize] && objects.too_deep() {
                    state.stats.objects_too_deep += 1;
                }
                continue;
            }
            state.stats.prefiltered += 1;
            if let Some(cond) = &rule.condition {
                if !state.within_budget(self.opts.rule_time_budget) {
                    state.stats.budget_skipped += 1;
                    continue;
                }
                state.stats.evaluated += 1;
                let started = std::time::Instant::now();
                let result = self.conditions.run(cond, ev);
                let took = started.elapsed();
                state.stats.condition_nanos += took.as_nanos() as u64;
                state.budget.1 += took;
                match result {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        state.stats.script_errors += 1;
                        if matches!(e, ConditionError::TimedOut(_)) {
                            state.stats.condition_timeouts += 1;
                        }
                        if self.diagnostics.len() < self.opts.max_diagnostics {
                            self.diagnostics.push(ScriptError {
                                rule: rule.name.clone(),
                                audit_id: ev.audit_id.to_string(),
                                message: e.to_string(),
                            });
                        }
                        continue;
                    }
                }
            }
            if self.reads_objects[idx as usize]
                && (objects.too_deep() || self.conditions.objects_cut())
            {
                // Matched on objects whose deepest parts were cut: said, not silent.
                state.stats.objects_too_deep += 1;
            }
            // Any record is a sign of life for an absence rule: no need to remember requests.
            let is_absence = matches!(rule.window, Some(WindowSpec::Absence { .. }));
            if !is_absence && !self.dedup.first_match(&ev.audit_id, idx, time) {
                state.stats.deduplicated += 1;
                continue;
            }
            state.stats.matched += 1;
            let key = group_key(rule, ev, &self.empty_key);
            let captured = rule
                .summary
                .as_ref()
                .map(|s| s.capture(ev))
                .unwrap_or_default();
            match &rule.window {
                None => {
                    let Some(swallowed) = state.admit(&key, time) else {
                        continue;
                    };
                    let summary = match &rule.summary {
                        Some(_) => None,
                        None => Some(default_summary(ev)),
                    };
                    let firing = Firing {
                        key,
                        count: 1,
                        first_seen: time,
                        last_seen: time,
                        events: vec![EventRef::of(ev, time)],
                        captured,
                    };
                    let severity = rule
                        .severity_when
                        .iter()
                        .find(|(_, m)| m.matches(ev, &objects))
                        .map_or(rule.severity, |(s, _)| *s);
                    out.push(build_alert(
                        rule,
                        &rules,
                        (AlertKind::Event, severity),
                        firing,
                        swallowed,
                        summary,
                    ));
                }
                Some(WindowSpec::Absence { .. }) => {
                    // Absence keeps only the newest time per key (a max: arrival order does not
                    // matter), so it skips the reorder buffer.
                    if let Some(window) = state.window.as_mut() {
                        window.on_alive(key, time, &ev.audit_id, captured, &mut self.firings);
                    }
                    for (at, firing) in self.firings.drain(..) {
                        emit(rule, &rules, state, AlertKind::Absence, at, firing, out);
                    }
                }
                Some(spec) => {
                    let distinct = match spec {
                        WindowSpec::Distinct { field, .. } => {
                            Some(field.resolve(ev).to_key_string().into_boxed_str())
                        }
                        _ => None,
                    };
                    let steps = match spec {
                        WindowSpec::Sequence { .. } => rule
                            .steps
                            .iter()
                            .enumerate()
                            .filter(|(_, m)| m.matches(ev, &objects))
                            .fold(0u64, |mask, (i, _)| mask | 1 << i),
                        _ => 0,
                    };
                    let hit = Hit {
                        time,
                        key,
                        event: EventRef::of(ev, time),
                        distinct,
                        steps,
                        captured,
                    };
                    if !self.reorder.push(idx as usize, hit) {
                        state.stats.late += 1;
                    }
                }
            }
        }
        self.release(out);
    }

    /// Moves event time forward without an event (a live source's clock tick), so windows
    /// close and absence rules fire while the stream is quiet.
    pub fn advance_watermark(&mut self, to: EventTime, out: &mut Vec<Alert>) {
        self.reorder.advance_to(to);
        self.release(out);
        let watermark = self.reorder.watermark();
        self.fire_absences(watermark, out);
    }

    /// End of input: releases every pending hit and fires what is due at the newest event time.
    /// Absence rules do not fire for the silence after the end of a file.
    pub fn finish(&mut self, out: &mut Vec<Alert>) {
        self.drain_pending(out);
        let newest = self.reorder.newest();
        self.fire_absences(newest, out);
    }

    fn drain_pending(&mut self, out: &mut Vec<Alert>) {
        while let Some((rule, hit)) = self.reorder.pop_any() {
            self.apply_hit(rule, hit, out);
        }
    }

    fn release(&mut self, out: &mut Vec<Alert>) {
        while let Some((rule, hit)) = self.reorder.pop_ready() {
            let time = hit.time;
            // Absence deadlines that passed before this hit fire first, in time order.
            self.fire_absences(time, out);
            self.apply_hit(rule, hit, out);
        }
        // Deadlines up to the watermark itself: `process` fires them before applying its
        // event, `advance_watermark` after releasing.
        self.housekeeping(self.reorder.watermark());
    }

    fn apply_hit(&mut self, idx: usize, hit: Hit, out: &mut Vec<Alert>) {
        let rules = Arc::clone(&self.rules);
        let (Some(rule), Some(state)) = (rules.rules.get(idx), self.states.get_mut(idx)) else {
            return;
        };
        let Some(window) = state.window.as_mut() else {
            return;
        };
        if let Some(firing) = window.on_hit(hit) {
            let kind = match window.spec() {
                WindowSpec::Distinct { .. } => AlertKind::Distinct,
                WindowSpec::Sequence { .. } => AlertKind::Sequence,
                _ => AlertKind::Count,
            };
            emit(rule, &rules, state, kind, firing.last_seen, firing, out);
        }
    }

    fn fire_absences(&mut self, watermark: EventTime, out: &mut Vec<Alert>) {
        if self.absence_rules.is_empty() {
            return;
        }
        let rules = Arc::clone(&self.rules);
        for &i in &self.absence_rules {
            let (Some(rule), Some(state)) = (rules.rules.get(i), self.states.get_mut(i)) else {
                continue;
            };
            let Some(window) = state.window.as_mut() else {
                continue;
            };
            window.on_watermark(watermark, &mut self.firings);
            for (at, firing) in self.firings.drain(..) {
                emit(rule, &rules, state, AlertKind::Absence, at, firing, out);
            }
        }
    }

    /// Expires idle window keys, throttles and dedup entries, at most once per minute of
    /// event time.
    fn housekeeping(&mut self, watermark: EventTime) {
        if watermark == EventTime::MIN
            || watermark.0.saturating_sub(self.last_expiry.0) < 60_000_000_000
        {
            return;
        }
        self.last_expiry = watermark;
        for state in &mut self.states {
            if let Some(w) = state.window.as_mut() {
                w.expire(watermark);
            }
            if let Some(t) = state.throttle.as_mut() {
                t.expire(watermark);
            }
        }
        self.dedup.expire(self.reorder.newest());
    }
}

fn emit(
    rule: &Rule,
    rules: &RuleSet,
    state: &mut RuleState,
    kind: AlertKind,
    at: EventTime,
    firing: Firing,
    out: &mut Vec<Alert>,
) {
    if let Some(swallowed) = state.admit(&firing.key, at) {
        out.push(build_alert(
            rule,
            rules,
            (kind, rule.severity),
            firing,
            swallowed,
            None,
        ));
    }
}

/// Per rule: whether its match block or condition reads `requestObject`/`responseObject`
/// (a cut in them counts against it).
fn reads_objects(rules: &RuleSet) -> Vec<bool> {
    rules
        .rules
        .iter()
        .map(|r| {
            let mut paths = crate::rules::fields::ObjectPaths::default();
            r.matcher.collect_object_paths(&mut paths);
            for step in &r.steps {
                step.collect_object_paths(&mut paths);
            }
            paths.needs() != (false, false)
                || r.condition
                    .as_ref()
                    .is_some_and(|c| c.needs.request_object || c.needs.response_object)
        })
        .collect()
}

fn absence_rules(rules: &RuleSet) -> Vec<usize> {
    rules
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.window, Some(WindowSpec::Absence { .. })))
        .map(|(i, _)| i)
        .collect()
}

fn index_by_verb(rules: &RuleSet) -> (VerbIndex, ByCode) {
    let mut any: ByCode = Default::default();
    let mut by_verb: HashMap<Box<str>, ByCode> = HashMap::new();
    let mut verb_rules: Vec<(u32, Vec<&str>)> = Vec::new();
    for (i, rule) in rules.rules.iter().enumerate() {
        if !rule.enabled {
            continue;
        }
        let classes = rule_classes(rule);
        match rule.matcher.verbs.as_ref().and_then(|v| v.exact_values()) {
            Some(verbs) => {
                for v in &verbs {
                    by_verb.entry((*v).into()).or_default();
                }
                verb_rules.push((i as u32, verbs));
            }
            None => {
                for (c, list) in any.iter_mut().enumerate() {
                    if classes[c] {
                        list.push(i as u32);
                    }
                }
            }
        }
    }
    // Each verb's lists hold its own rules and the any-verb rules, in rule order.
    for (verb, by_code) in by_verb.iter_mut() {
        for (c, list) in by_code.iter_mut().enumerate() {
            list.extend(&any[c]);
            for (i, verbs) in &verb_rules {
                if verbs.contains(&&**verb) && rule_classes(&rules.rules[*i as usize])[c] {
                    list.push(*i);
                }
            }
            list.sort_unstable();
            list.dedup();
        }
    }
    // Most frequent verbs first.
    let rank = |v: &str| {
        [
            "get", "list", "watch", "update", "patch", "create", "delete",
        ]
        .iter()
        .position(|x| *x == v)
        .unwrap_or(usize::MAX)
    };
    let mut index: VerbIndex = by_verb.into_iter().collect();
    index.sort_by_key(|(v, _)| (rank(v), v.clone()));
    (index, any)
}

fn group_key(rule: &Rule, ev: &AuditEvent<'_>, empty: &GroupKey) -> GroupKey {
    match rule.group_by.as_slice() {
        [] => Arc::clone(empty),
        [one] => Arc::from(one.resolve(ev).to_key_string()),
        many => {
            let mut key = String::new();
            for (i, f) in many.iter().enumerate() {
                if i > 0 {
                    key.push(KEY_SEPARATOR);
                }
                key.push_str(&f.resolve(ev).to_key_string());
            }
            Arc::from(key)
        }
    }
}

#[cfg(test)]
mod tests;
