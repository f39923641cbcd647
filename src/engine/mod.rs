//! The engine: one event in, alerts out. Plain synchronous code, so it is easy to test, to
//! benchmark, and to drive from a replay or a live daemon alike.
//!
//! Per event: look up the rules that can match its verb (an index built at load), run each
//! rule's match block, then its Rhai condition (the event is converted for Rhai at most once),
//! then apply "one request, one match". Plain rules alert at once; count, distinct and
//! sequence windows as soon as the requests in hand complete them (a throttle mutes a key after
//! an alert); absence windows fire as the watermark passes their deadlines.

mod build;
mod config;
mod dedup;
mod index;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use config::EngineConfig;
pub use dedup::{RequestDedup, audit_key};

use crate::alert::{Alert, AlertKind, EventRef};
use crate::event::{AuditEvent, EventTime, Span};
use crate::rules::fields::ObjectCache;
use crate::rules::script::{ConditionError, ConditionRunner};
use crate::rules::{Rule, RuleId, RuleSet, WindowSpec, default_summary, needs};
use crate::window::{
    EventClock, Firing, GroupKey, Hit, KEY_SEPARATOR, Limits, ReorderSnapshot, RuleWindow,
    SOURCE_MARK, Throttle, WindowSnapshot,
};
use build::build_alert;
use index::RuleIndex;

/// Response code classes: 0 = no response yet, 1-5 = 1xx-5xx, 6 = anything else.
/// The default lateness of a live source of native audit events (see
/// [`crate::event::InputFormat::lateness`]): one minute.
pub const LIVE_LATENESS: Span = crate::event::InputFormat::Native.lateness();

/// The default lateness of a replay: it has no latency budget, so it covers every input
/// format's ([`crate::event::InputFormat::lateness`]).
pub const REPLAY_LATENESS: Span = Span::from_secs(15 * 60);

/// Tuning knobs; the defaults suit a live stream of native events.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How far behind its source's newest event an event may arrive and still count in
    /// windows (the default source's; [`Engine::select_source`] sets each source's own).
    pub lateness: Span,
    /// Keys per windowed rule before the least recently updated is evicted.
    pub max_keys_per_rule: usize,
    /// How long "one request, one match" remembers a request.
    pub dedup_horizon: Span,
    /// How many (request, rule) matches it remembers at most.
    pub dedup_capacity: usize,
    /// Sequence hits waiting for the watermark, at most; and, per rule, requests held by
    /// count and distinct windows for requests still to come within the lateness.
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
            lateness: LIVE_LATENESS,
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
    /// Requests older than the watermark on arrival, left out of the rule's window.
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
    /// Time spent on this rule (match block, condition, window, alert) over the sampled
    /// events, one in [`PROFILE_EVERY`], nanoseconds.
    pub sampled_nanos: u64,
}

/// Engine-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub events: u64,
    pub events_without_time: u64,
    /// Events older than the watermark on arrival (whether a window wanted them or not).
    pub late_events: u64,
    /// Requests of windowed rules left out as late (over all rules).
    pub late_hits: u64,
    /// Requests released or settled before the watermark because a bound was reached.
    pub forced_releases: u64,
}

/// An event that arrived older than the watermark: for a log line naming it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateEvent {
    pub audit_id: String,
    pub time: EventTime,
    pub watermark: EventTime,
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
    /// The rule's window; also a throttled plain rule's (a count of one, which carries the
    /// throttle's mute).
    window: Option<RuleWindow>,
    /// An absence rule's throttle (absence alerts come in time order, from the watermark).
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

    /// Passes an absence alert for `key` at `time` through the throttle. `Some(swallowed)` if
    /// it may go out; `None` (counted) if throttled.
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
        let limits = Limits {
            max_keys: opts.max_keys_per_rule,
            max_held: opts.max_pending,
        };
        let window = match (&rule.window, rule.throttle) {
            (Some(spec), throttle) => Some(RuleWindow::new(spec.clone(), throttle, limits)),
            (None, Some(period)) => Some(RuleWindow::new(ONE_REQUEST, Some(period), limits)),
            (None, None) => None,
        };
        let is_absence = matches!(rule.window, Some(WindowSpec::Absence { .. }));
        RuleState {
            window,
            throttle: rule
                .throttle
                .filter(|_| is_absence)
                .map(|period| Throttle::new(period, opts.max_keys_per_rule)),
            stats: RuleStats::default(),
            budget: (std::time::Instant::now(), std::time::Duration::ZERO),
        }
    }
}

/// The window of a throttled plain rule: every matching request is a firing, so the window
/// only carries the throttle.
const ONE_REQUEST: WindowSpec = WindowSpec::Count {
    over: Span(0),
    threshold: 1,
};

pub struct Engine {
    rules: Arc<RuleSet>,
    opts: EngineOptions,
    /// Which rules each event is offered to.
    index: RuleIndex,
    /// The candidate list of an event whose verb is not lower case.
    scratch_candidates: Vec<u32>,
    states: Vec<RuleState>,
    dedup: RequestDedup,
    /// Event time per source, and the watermark.
    clock: EventClock,
    conditions: ConditionRunner,
    stats: EngineStats,
    diagnostics: Vec<ScriptError>,
    /// Event time of the last housekeeping pass.
    last_expiry: EventTime,
    firings: Vec<(EventTime, Firing)>,
    /// The group key of rules without `group_by`, shared to avoid an allocation per hit.
    empty_key: GroupKey,
    /// The current source's labels as a key suffix (empty without labels).
    source_tag: Arc<str>,
    /// Indices of the absence rules, the only ones the watermark alone can fire.
    absence_rules: Vec<usize>,
    /// Per rule: whether its match block or condition reads the event's objects.
    reads_objects: Vec<bool>,
    /// Late events since the last [`Engine::take_late`]: how many, and the first few.
    late: (u64, Vec<LateEvent>),
    /// Alerts that restoring a snapshot produced, for the next call that takes alerts.
    restored: Vec<Alert>,
}

/// Late events kept for [`Engine::take_late`] between two calls (all are counted).
const LATE_SAMPLES: usize = 8;

/// One event in this many has each candidate rule's work timed, for the per-rule cost.
pub const PROFILE_EVERY: u64 = 32;

impl Engine {
    pub fn new(rules: Arc<RuleSet>, opts: EngineOptions) -> Engine {
        let states = rules
            .rules
            .iter()
            .map(|r| RuleState::new(r, &opts))
            .collect();
        let index = RuleIndex::new(&rules);
        let absence = absence_rules(&rules);
        let conditions = ConditionRunner::new(&rules, opts.condition_timeout);
        let reads_objects = reads_objects(&rules);
        Engine {
            dedup: RequestDedup::new(opts.dedup_horizon, opts.dedup_capacity),
            clock: EventClock::new(opts.lateness),
            rules,
            opts,
            index,
            scratch_candidates: Vec::new(),
            states,
            conditions,
            stats: EngineStats::default(),
            diagnostics: Vec::new(),
            last_expiry: EventTime::MIN,
            firings: Vec::new(),
            empty_key: Arc::from(""),
            source_tag: Arc::from(""),
            absence_rules: absence,
            reads_objects,
            late: (0, Vec::new()),
            restored: Vec::new(),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn stats(&self) -> EngineStats {
        let windows = self.states.iter().filter_map(|s| s.window.as_ref());
        EngineStats {
            late_hits: self.states.iter().map(|s| s.stats.late).sum(),
            forced_releases: windows.map(|w| w.forced).sum::<u64>(),
            ..self.stats.clone()
        }
    }

    /// The events that follow come from `source`, whose events may arrive `lateness` out of
    /// event-time order (see [`EventClock`]).
    pub fn select_source(&mut self, source: &str, lateness: Span) {
        self.clock.select(source, lateness);
    }

    /// The events that follow come from a source with these labels (its tag, see
    /// [`crate::window::source_tag`]; empty for none): their group keys carry it, so windows
    /// are per source label set and the alerts carry the labels.
    pub fn select_source_tag(&mut self, tag: &Arc<str>) {
        if *tag != self.source_tag {
            self.source_tag = Arc::clone(tag);
            self.empty_key = Arc::clone(tag);
        }
    }

    /// No source's clock moves past `ceiling` (the daemon's wall clock plus skew), whatever
    /// times its events carry (see [`EventClock`]).
    pub fn set_time_ceiling(&mut self, ceiling: EventTime) {
        self.clock.set_ceiling(ceiling);
    }

    /// `source` has been quiet: it stops holding event time back. Windows and absences that
    /// the watermark now passes fire.
    pub fn source_idle(&mut self, source: &str, out: &mut Vec<Alert>) {
        out.append(&mut self.restored);
        if self.clock.set_idle(source) {
            self.fire_absences(self.clock.watermark(), out);
        }
    }

    /// The event time watermark: requests before it are late.
    pub fn watermark(&self) -> EventTime {
        self.clock.watermark()
    }

    /// Each event clock: its source's name, newest event time, and watermark (`None` while
    /// idle). Clocks that saw no event yet are left out.
    pub fn source_clocks(&self) -> impl Iterator<Item = (&str, EventTime, Option<EventTime>)> {
        self.clock.sources()
    }

    /// The newest event time seen, and the largest lateness of any source.
    pub fn newest(&self) -> (EventTime, Span) {
        (self.clock.newest(), self.clock.max_lateness())
    }

    /// Takes the late events since the last call: how many, and the first few of them.
    pub fn take_late(&mut self) -> (u64, Vec<LateEvent>) {
        std::mem::take(&mut self.late)
    }

    /// Requests windows hold for older ones still to come within the lateness.
    pub fn held(&self) -> usize {
        self.states
            .iter()
            .filter_map(|s| s.window.as_ref())
            .map(RuleWindow::held)
            .sum()
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
        self.index = RuleIndex::new(&rules);
        self.absence_rules = absence_rules(&rules);
        self.conditions = ConditionRunner::new(&rules, self.opts.condition_timeout);
        self.reads_objects = reads_objects(&rules);
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
            reorder: ReorderSnapshot::times(
                (self.clock.newest(), self.clock.watermark()),
                self.stats.late_events,
            ),
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
        let limits = Limits {
            max_keys: self.opts.max_keys_per_rule,
            max_held: self.opts.max_pending,
        };
        for (snapshot, target) in snap.rules.into_iter().zip(&map) {
            let Some(i) = *target else { continue };
            let rule = &self.rules.rules[i];
            let state = &mut self.states[i];
            let window_spec = match (&rule.window, rule.throttle) {
                (Some(spec), _) => Some(spec.clone()),
                (None, Some(_)) => Some(ONE_REQUEST),
                (None, None) => None,
            };
            if let (Some(spec), Some(w)) = (window_spec, snapshot.window) {
                state.window = Some(RuleWindow::restore(spec, rule.throttle, limits, w));
            }
            match (&state.throttle, &mut state.window, rule.throttle) {
                (Some(_), _, Some(period)) => {
                    state.throttle = Some(Throttle::restore(
                        period,
                        self.opts.max_keys_per_rule,
                        snapshot.throttle,
                    ));
                }
                // A snapshot from before mutes: its throttle ends become the keys' mutes.
                (None, Some(window), Some(_)) => {
                    for (key, until, swallowed) in snapshot.throttle {
                        window.mute(key, until, swallowed);
                    }
                }
                _ => {}
            }
            restored += 1;
        }
        self.clock
            .restore(snap.reorder.newest, snap.reorder.watermark);
        self.stats.late_events += snap.reorder.late;
        // Hits an older build left waiting for the watermark go to their windows now (they
        // fire early, in any order).
        let mut out = std::mem::take(&mut self.restored);
        for (rule, hit) in snap.reorder.pending {
            if let Some(rule) = map.get(rule).copied().flatten() {
                self.apply_hit(rule, hit, &mut out);
            }
        }
        self.restored = out;
        self.dedup.restore(snap.dedup, |r| {
            map.get(r as usize).copied().flatten().map(|i| i as u32)
        });
        self.last_expiry = self.last_expiry.max(snap.last_expiry);
        restored
    }

    /// Evaluates one event; alerts go to `out`.
    pub fn process(&mut self, ev: &AuditEvent<'_>, out: &mut Vec<Alert>) {
        out.append(&mut self.restored);
        self.stats.events += 1;
        let time = match ev.time {
            Some(t) => {
                if t < self.clock.watermark() {
                    self.count_late(ev, t);
                }
                // Silences that ended before this event's watermark fire first, before the
                // event itself counts as a sign of life.
                if self.clock.observe(t) {
                    self.fire_absences(self.clock.watermark(), out);
                    self.housekeeping(self.clock.watermark());
                }
                t
            }
            None => {
                self.stats.events_without_time += 1;
                self.clock.newest().max(EventTime(0))
            }
        };
        let watermark = self.clock.watermark();
        let rules = Arc::clone(&self.rules);
        let verb = ev.verb.as_str();
        let class = needs::code_class(ev.response_status.as_ref().map(|s| s.code));
        let candidates = self
            .index
            .candidates(verb, class, &mut self.scratch_candidates);
        let objects = ObjectCache::new(rules.object_paths());
        self.conditions.begin_event();
        let resource = index::event_resource_bits(&ev.object_ref().resource);
        // Every PROFILE_EVERY-th event, each candidate rule's work is timed (the replay
        // summary's cost column); timing every event would cost more than cheap rules do.
        let sample = self.stats.events.is_multiple_of(PROFILE_EVERY);
        for &idx in candidates {
            if self.index.resource_masks[idx as usize] & resource == 0 {
                continue;
            }
            let started = sample.then(std::time::Instant::now);
            'rule: {
                let rule = &rules.rules[idx as usize];
                let matched = rule.matcher.matches(ev, &objects);
                let state = &mut self.states[idx as usize];
                if !matched {
                    if self.reads_objects[idx as usize] && objects.too_deep() {
                        state.stats.objects_too_deep += 1;
                    }
                    break 'rule;
                }
                state.stats.prefiltered += 1;
                if let Some(cond) = &rule.condition {
                    if !state.within_budget(self.opts.rule_time_budget) {
                        state.stats.budget_skipped += 1;
                        break 'rule;
                    }
                    state.stats.evaluated += 1;
                    let started = std::time::Instant::now();
                    let result = self.conditions.run(cond, ev);
                    let took = started.elapsed();
                    state.stats.condition_nanos += took.as_nanos() as u64;
                    state.budget.1 += took;
                    match result {
                        Ok(true) => {}
                        Ok(false) => break 'rule,
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
                            break 'rule;
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
                    break 'rule;
                }
                state.stats.matched += 1;
                let key = group_key(rule, ev, &self.empty_key, &self.source_tag);
                let captured = rule
                    .summary
                    .as_ref()
                    .map(|s| s.capture(ev))
                    .unwrap_or_default();
                match (&rule.window, state.window.as_mut()) {
                    (None, window) => {
                        let single = |key, captured| Firing {
                            key,
                            count: 1,
                            first_seen: time,
                            last_seen: time,
                            events: vec![EventRef::of(ev, time)],
                            captured,
                            suppressed: 0,
                        };
                        let firing = match window {
                            None => Some(single(key, captured)),
                            // Too late for the throttle's run: muted if the key's settled mute
                            // covers it, else an alert (lateness is no reason to miss one).
                            Some(window) if time < watermark => {
                                if window.late_hit_muted(&key, time) {
                                    state.stats.throttled += 1;
                                    None
                                } else {
                                    Some(single(key, captured))
                                }
                            }
                            Some(window) => window.on_hit_at(
                                Hit {
                                    time,
                                    key,
                                    event: EventRef::of(ev, time),
                                    distinct: None,
                                    steps: 0,
                                    captured,
                                },
                                watermark,
                            ),
                        };
                        let Some(firing) = firing else { break 'rule };
                        state.stats.alerts += 1;
                        state.stats.throttled += firing.suppressed;
                        let summary = match &rule.summary {
                            Some(_) => None,
                            None => Some(default_summary(ev)),
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
                            summary,
                        ));
                    }
                    (Some(WindowSpec::Absence { .. }), Some(window)) => {
                        // Absence keeps only the newest time per key (a max: any arrival order).
                        window.on_alive(key, time, &ev.audit_id, captured, &mut self.firings);
                        for (at, firing) in self.firings.drain(..) {
                            emit(rule, &rules, state, AlertKind::Absence, at, firing, out);
                        }
                    }
                    (Some(spec), Some(window)) => {
                        if time < watermark {
                            state.stats.late += 1;
                            break 'rule;
                        }
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
                        if let Some(firing) = window.on_hit_at(hit, watermark) {
                            emit_fired(rule, &rules, state, window_kind(spec), firing, out);
                        }
                    }
                    (Some(_), None) => {}
                }
            }
            if let Some(started) = started {
                self.states[idx as usize].stats.sampled_nanos +=
                    started.elapsed().as_nanos() as u64;
            }
        }
    }

    /// Counts an event that arrived older than the watermark (and keeps a few to name).
    fn count_late(&mut self, ev: &AuditEvent<'_>, time: EventTime) {
        self.stats.late_events += 1;
        self.late.0 += 1;
        if self.late.1.len() < LATE_SAMPLES {
            self.late.1.push(LateEvent {
                audit_id: ev.audit_id.to_string(),
                time,
                watermark: self.clock.watermark(),
            });
        }
    }

    /// Moves event time forward without an event (a live source's clock tick), so windows
    /// close and absence rules fire while the stream is quiet.
    pub fn advance_watermark(&mut self, to: EventTime, out: &mut Vec<Alert>) {
        out.append(&mut self.restored);
        self.clock.advance_to(to);
        let watermark = self.clock.watermark();
        self.fire_absences(watermark, out);
        self.housekeeping(watermark);
    }

    /// End of input: fires the absences due at the newest event time (not for the silence
    /// after the end of a file).
    pub fn finish(&mut self, out: &mut Vec<Alert>) {
        out.append(&mut self.restored);
        let newest = self.clock.newest();
        self.fire_absences(newest, out);
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
            let kind = window_kind(window.spec());
            emit_fired(rule, &rules, state, kind, firing, out);
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
        self.dedup.expire(self.clock.newest());
    }
}

/// The alert kind of a window's firing.
fn window_kind(spec: &WindowSpec) -> AlertKind {
    match spec {
        WindowSpec::Distinct { .. } => AlertKind::Distinct,
        WindowSpec::Sequence { .. } => AlertKind::Sequence,
        WindowSpec::Absence { .. } => AlertKind::Absence,
        WindowSpec::Count { .. } => AlertKind::Count,
    }
}

/// An absence firing: through the rule's throttle.
fn emit(
    rule: &Rule,
    rules: &RuleSet,
    state: &mut RuleState,
    kind: AlertKind,
    at: EventTime,
    mut firing: Firing,
    out: &mut Vec<Alert>,
) {
    if let Some(swallowed) = state.admit(&firing.key, at) {
        firing.suppressed = swallowed;
        out.push(build_alert(
            rule,
            rules,
            (kind, rule.severity),
            firing,
            None,
        ));
    }
}

/// A count, distinct or sequence firing (its throttle was applied in the window, as a mute).
fn emit_fired(
    rule: &Rule,
    rules: &RuleSet,
    state: &mut RuleState,
    kind: AlertKind,
    firing: Firing,
    out: &mut Vec<Alert>,
) {
    state.stats.alerts += 1;
    state.stats.throttled += firing.suppressed;
    out.push(build_alert(
        rule,
        rules,
        (kind, rule.severity),
        firing,
        None,
    ));
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

/// A value from the request as part of a key: the key's own separators in it become U+FFFD,
/// so a user name holding them can neither shift the group's fields nor forge a source label.
fn key_part(value: String) -> String {
    if value.contains([KEY_SEPARATOR, SOURCE_MARK]) {
        value.replace([KEY_SEPARATOR, SOURCE_MARK], "\u{fffd}")
    } else {
        value
    }
}

/// The request's group: its `group_by` values, then the source's tag. `empty` is the key of
/// rules without `group_by` (the tag alone), shared to avoid an allocation per hit.
fn group_key(rule: &Rule, ev: &AuditEvent<'_>, empty: &GroupKey, tag: &str) -> GroupKey {
    match rule.group_by.as_slice() {
        [] => Arc::clone(empty),
        [one] if tag.is_empty() => Arc::from(key_part(one.resolve(ev).to_key_string())),
        many => {
            let mut key = String::new();
            for (i, f) in many.iter().enumerate() {
                if i > 0 {
                    key.push(KEY_SEPARATOR);
                }
                key.push_str(&key_part(f.resolve(ev).to_key_string()));
            }
            key.push_str(tag);
            Arc::from(key)
        }
    }
}

#[cfg(test)]
mod tests;
