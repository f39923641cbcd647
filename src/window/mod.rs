//! Keyed sliding windows in event time.
//!
//! Count and distinct-count windows fire on the requests in hand, as soon as they reach the
//! threshold ([`early`] says why that is safe and what it guarantees). Sequence windows need
//! their requests in time order: the engine hands their matching requests ("hits") to a
//! [`ReorderBuffer`], which releases them once the watermark (event time minus the allowed
//! lateness) has passed them. Absence windows only keep the newest time per key (any order).
//! A hit older than the watermark when it arrives is late: it is counted and left out.
//!
//! Semantics, per group key (the rule's `group_by` values):
//! - **count**: fire when `threshold` hits lie within `over` (first to last, inclusive). The
//!   window then restarts, so a burst of 10 with threshold 5 gives two firings.
//! - **distinct**: fire when `threshold` distinct values of a field lie within `over`; restart.
//! - **absence**: fire once when a key seen before gets no hit for `absent_for`; re-armed by
//!   its next hit.
//! - **sequence**: each hit carries the steps its request matched. Unordered, fire when
//!   `threshold` different steps have a hit within `over` (the newest hit of each step counts).
//!   Ordered, fire when hits of every step follow each other in step order within `over`
//!   (equal times count in release order); one request advances at most one step of a partial
//!   match. The window then restarts.
//! - **throttle**: after an alert the key is muted for the period: its requests in that time
//!   neither alert nor count towards the next alert; the next alert reports how many there
//!   were. (Absence rules, which fire on silence, are throttled by [`Throttle`]: at most one
//!   alert per key per period.)
//!
//! State is bounded: at most `max_keys` keys per rule (the least recently updated key is
//! evicted and counted, in amortised constant time: see [`evict`]), and at most `max_held`
//! requests held by a rule's early windows (past it, the key at hand is settled at once and
//! counted as forced).

mod clock;
mod early;
mod evict;
mod reorder;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use clock::{EventClock, MAX_SOURCES};
use early::{EarlyState, Held, Params};
use evict::OldestKeys;
pub use reorder::{Hit, ReorderBuffer, ReorderSnapshot};

use crate::alert::EventRef;
use crate::event::{EventTime, Span};
use crate::rules::{Captured, WindowSpec};

/// Hash maps on the hot path: foldhash, randomly seeded (keys come from event data).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A group key: the rule's `group_by` values joined with U+001F.
pub type GroupKey = Arc<str>;

pub const KEY_SEPARATOR: char = '\u{1f}';

/// A window that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub key: GroupKey,
    pub count: u64,
    pub first_seen: EventTime,
    pub last_seen: EventTime,
    /// The contributing requests, oldest first (at most the alert's cap are kept).
    pub events: Vec<EventRef>,
    pub captured: Captured,
    /// Requests muted by the throttle since the key's previous alert.
    pub suppressed: u64,
}

impl Firing {
    /// A window completed by the hit of `key` at `last_seen`.
    fn closing(
        (key, last_seen, captured): (GroupKey, EventTime, Captured),
        count: u64,
        first_seen: EventTime,
        events: Vec<EventRef>,
    ) -> Firing {
        Firing {
            key,
            count,
            first_seen,
            last_seen,
            events,
            captured,
            suppressed: 0,
        }
    }
}

/// A count window's key before early firing (read from older snapshots).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CountState {
    hits: VecDeque<EventRef>,
}

/// A distinct window's key before early firing (read from older snapshots).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DistinctState {
    /// Hits in time order (value, request); may hold stale entries for values seen again later.
    hits: VecDeque<(Box<str>, EventRef)>,
    /// Value → time of its newest hit in the window.
    latest: HashMap<Box<str>, EventTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AbsenceState {
    last: EventTime,
    fired: bool,
    /// Whether the key has an entry in the deadline heap.
    armed: bool,
    captured: Captured,
    /// auditID of the newest event (a reused buffer: this runs for every event).
    audit_id: String,
}

impl AbsenceState {
    /// The last request seen, as the alert's only event (auditID and time: absence rules run
    /// on every record, so they keep no more than that).
    fn last_event(&self) -> Vec<EventRef> {
        if self.audit_id.is_empty() {
            Vec::new()
        } else {
            vec![EventRef::new(self.last, 0, &self.audit_id, "", "", "", "")]
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SequenceState {
    /// Per step. Unordered: the step's newest hit. Ordered: the partial match that completed
    /// this step and started latest (so it expires last), as its hits oldest first.
    slots: Vec<Option<Vec<EventRef>>>,
    /// The throttle's mute after the last firing, and the requests it muted.
    #[serde(default = "no_mute")]
    muted_until: EventTime,
    #[serde(default)]
    suppressed: u64,
}

fn no_mute() -> EventTime {
    EventTime::MIN
}

impl SequenceState {
    /// The latest start of any partial match held (its first hit's time).
    fn newest_start(&self) -> Option<EventTime> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|chain| chain.first().map(|h| h.time))
            .max()
    }

    /// Applies a hit of the steps in `mask`; returns the contributing hits if the sequence
    /// is complete (and restarts it).
    fn on_hit(
        &mut self,
        (over, threshold, ordered): (Span, u64, bool),
        mask: u64,
        event: &EventRef,
    ) -> Option<Vec<EventRef>> {
        let now = event.time;
        for slot in &mut self.slots {
            if slot
                .as_ref()
                .and_then(|c| c.first())
                .is_some_and(|h| now.0.saturating_sub(h.time.0) > over.0)
            {
                *slot = None;
            }
        }
        let n = self.slots.len();
        let done = if ordered {
            // Highest step first, so this request extends only matches older requests began.
            for i in (0..n).rev() {
                if mask & (1 << i) == 0 {
                    continue;
                }
                if i == 0 {
                    self.slots[0] = Some(vec![event.clone()]);
                    continue;
                }
                let start =
                    |s: &Option<Vec<EventRef>>| s.as_ref().and_then(|c| c.first()).map(|h| h.time);
                let (before, after) = self.slots.split_at_mut(i);
                if let Some(prev) = &before[i - 1]
                    && start(&after[0]) < start(&before[i - 1])
                {
                    let mut chain = prev.clone();
                    chain.push(event.clone());
                    after[0] = Some(chain);
                }
            }
            self.slots.last().is_some_and(Option::is_some)
        } else {
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *slot = Some(vec![event.clone()]);
                }
            }
            self.slots.iter().flatten().count() as u64 >= threshold
        };
        if !done {
            return None;
        }
        let mut events: Vec<EventRef> = if ordered {
            self.slots
                .last_mut()
                .and_then(Option::take)
                .unwrap_or_default()
        } else {
            self.slots
                .iter_mut()
                .filter_map(Option::take)
                .flatten()
                .collect()
        };
        for slot in &mut self.slots {
            *slot = None;
        }
        // One request may have completed several steps (unordered): list it once.
        events.sort_by(|a, b| (a.time, a.audit_id()).cmp(&(b.time, b.audit_id())));
        events.dedup_by(|a, b| a.time == b.time && a.audit_id() == b.audit_id());
        Some(events)
    }
}

/// A key's state. `Count` and `Distinct` are how snapshots written before early firing hold
/// those windows; they are read, and turned into `Early` on restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum KeyState {
    Count(CountState),
    Distinct(DistinctState),
    Absence(AbsenceState),
    Sequence(SequenceState),
    Early(EarlyState),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    state: KeyState,
    updated: EventTime,
}

/// Bounds on one rule's window state.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Keys; beyond it the least recently updated key is evicted.
    pub max_keys: usize,
    /// Requests held by early windows over all keys; beyond it the key at hand is settled.
    pub max_held: usize,
}

/// One rule's window state over all its keys.
#[derive(Debug)]
pub struct RuleWindow {
    spec: WindowSpec,
    /// The rule's throttle period.
    mute: Option<Span>,
    /// How an early window runs (count and distinct windows, and throttled plain rules).
    early: Option<Params>,
    keys: HashMap<GroupKey, Entry>,
    limits: Limits,
    /// Absence deadlines (deadline, key), at most one per key; a popped deadline that the key
    /// has moved past since is pushed again with the key's current deadline.
    deadlines: BinaryHeap<Reverse<(EventTime, GroupKey)>>,
    /// Which key goes next when `max_keys` is reached.
    oldest: OldestKeys,
    /// Requests held by early windows.
    held: usize,
    pub evicted: u64,
    /// Keys settled before the watermark because `max_held` was reached.
    pub forced: u64,
}

/// Cap on the number of audit IDs an alert carries.
const MAX_IDS: usize = crate::alert::MAX_AUDIT_IDS;

impl RuleWindow {
    /// A window for `spec`, muted for `throttle` after each alert. A plain rule with a throttle
    /// gets one too: a count of one (`WindowSpec::Count` with threshold 1), so its throttle
    /// has the same semantics under any arrival order.
    pub fn new(spec: WindowSpec, throttle: Option<Span>, limits: Limits) -> RuleWindow {
        let early = match &spec {
            WindowSpec::Count { over, threshold } => Some(Params {
                over: *over,
                threshold: (*threshold).max(1),
                distinct: false,
                mute: throttle,
            }),
            WindowSpec::Distinct {
                over, threshold, ..
            } => Some(Params {
                over: *over,
                threshold: (*threshold).max(1),
                distinct: true,
                mute: throttle,
            }),
            _ => None,
        };
        RuleWindow {
            spec,
            mute: throttle,
            early,
            keys: HashMap::default(),
            limits: Limits {
                max_keys: limits.max_keys.max(1),
                max_held: limits.max_held.max(1),
            },
            deadlines: BinaryHeap::new(),
            oldest: OldestKeys::default(),
            held: 0,
            evicted: 0,
            forced: 0,
        }
    }

    /// Entries looked at to choose evictions so far (a cost measure for tests and benches).
    pub fn eviction_work(&self) -> u64 {
        self.oldest.work
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Whether hits go straight to the window ([`RuleWindow::on_hit`] at any time at or after
    /// the watermark) rather than through the reorder buffer.
    pub fn fires_early(&self) -> bool {
        self.early.is_some()
    }

    /// Requests held by early windows.
    pub fn held(&self) -> usize {
        self.held
    }

    /// A copy of the window's state, in no particular order: [`WindowSnapshot::canonicalize`]
    /// sorts it, which the daemon does off the engine thread.
    pub fn snapshot(&self) -> WindowSnapshot {
        let keys: Vec<(GroupKey, Entry)> = self
            .keys
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let deadlines: Vec<(EventTime, GroupKey)> =
            self.deadlines.iter().map(|Reverse(d)| d.clone()).collect();
        WindowSnapshot {
            keys,
            deadlines,
            evicted: self.evicted,
        }
    }

    /// Rebuilds a window from a snapshot taken of a window with the same spec. Keys whose
    /// state does not fit the spec are dropped; count and distinct keys written before early
    /// firing become early keys holding their group in progress.
    pub fn restore(
        spec: WindowSpec,
        throttle: Option<Span>,
        limits: Limits,
        snap: WindowSnapshot,
    ) -> RuleWindow {
        let mut w = RuleWindow::new(spec, throttle, limits);
        for (key, mut entry) in snap.keys {
            let state = match (&w.spec, w.early, entry.state) {
                (_, Some(p), KeyState::Early(mut st)) => {
                    st.rebuild(&p);
                    Some(KeyState::Early(st))
                }
                (WindowSpec::Count { .. }, Some(p), KeyState::Count(st)) => {
                    Some(KeyState::Early(EarlyState::from_group(
                        &p,
                        st.hits.into_iter().map(|event| Held {
                            event,
                            distinct: None,
                            captured: Captured::default(),
                        }),
                    )))
                }
                (WindowSpec::Distinct { .. }, Some(p), KeyState::Distinct(st)) => {
                    let latest = st.latest;
                    Some(KeyState::Early(EarlyState::from_group(
                        &p,
                        st.hits
                            .into_iter()
                            .filter(|(v, h)| latest.get(v) == Some(&h.time))
                            .map(|(value, event)| Held {
                                event,
                                distinct: Some(value),
                                captured: Captured::default(),
                            }),
                    )))
                }
                (WindowSpec::Absence { .. }, _, st @ KeyState::Absence(_)) => Some(st),
                (WindowSpec::Sequence { steps, .. }, _, KeyState::Sequence(st))
                    if st.slots.len() == steps.len() =>
                {
                    Some(KeyState::Sequence(st))
                }
                _ => None,
            };
            if let Some(state) = state
                && w.keys.len() < w.limits.max_keys
            {
                if let KeyState::Early(st) = &state {
                    w.held += st.len();
                }
                entry.state = state;
                w.keys.insert(key, entry);
            }
        }
        w.deadlines = snap
            .deadlines
            .into_iter()
            .filter(|(_, k)| w.keys.contains_key(k))
            .map(Reverse)
            .collect();
        w.evicted = snap.evicted;
        w
    }

    /// Number of keys currently held.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Applies one hit: for an early window, any hit at or after the watermark in any order;
    /// otherwise hits in event-time order. Returns a firing if the window fired.
    pub fn on_hit(&mut self, hit: Hit) -> Option<Firing> {
        if self.keys.len() >= self.limits.max_keys && !self.keys.contains_key(&hit.key) {
            self.evict_oldest();
        }
        // Borrowed, not cloned: this runs for every hit (a distinct spec holds a String).
        let spec = &self.spec;
        let early = self.early;
        let entry = self.keys.entry(hit.key.clone()).or_insert_with(|| Entry {
            state: match spec {
                _ if early.is_some() => KeyState::Early(EarlyState::default()),
                WindowSpec::Absence { .. } => KeyState::Absence(AbsenceState {
                    last: hit.time,
                    fired: false,
                    armed: false,
                    captured: Captured::default(),
                    audit_id: String::new(),
                }),
                WindowSpec::Sequence { steps, .. } => KeyState::Sequence(SequenceState {
                    slots: vec![None; steps.len()],
                    muted_until: EventTime::MIN,
                    suppressed: 0,
                }),
                // Count and distinct specs are early.
                _ => KeyState::Early(EarlyState::default()),
            },
            updated: hit.time,
        });
        entry.updated = entry.updated.max(hit.time);
        match (spec, &mut entry.state) {
            (_, KeyState::Early(st)) => {
                let p = early?;
                self.held += 1;
                let fired = st.add(
                    &p,
                    Held {
                        event: hit.event,
                        distinct: hit.distinct,
                        captured: hit.captured,
                    },
                );
                if self.held > self.limits.max_held {
                    // Over the bound: this key's run is settled up to its newest request now
                    // (an older request arriving later for it is then late).
                    if let Some(newest) = st.newest() {
                        self.held -= st.settle(&p, EventTime(newest.0.saturating_add(1)));
                        self.forced += 1;
                    }
                }
                let f = fired?;
                Some(Firing {
                    key: hit.key,
                    count: f.count,
                    first_seen: f.first_seen,
                    last_seen: f.last_seen,
                    events: f.events,
                    captured: f.captured,
                    suppressed: f.suppressed,
                })
            }
            (WindowSpec::Absence { after }, KeyState::Absence(st)) => {
                // One heap entry per key; a pending entry is re-armed lazily when popped.
                let needs_entry = !st.armed;
                st.armed = true;
                st.last = hit.time;
                st.fired = false;
                st.captured = hit.captured;
                st.audit_id.clear();
                st.audit_id.push_str(hit.event.audit_id());
                if needs_entry {
                    self.deadlines
                        .push(Reverse((hit.time.saturating_add(*after), hit.key)));
                }
                None
            }
            (
                WindowSpec::Sequence {
                    over,
                    threshold,
                    ordered,
                    ..
                },
                KeyState::Sequence(st),
            ) => {
                if hit.time < st.muted_until {
                    st.suppressed += 1;
                    return None;
                }
                let events = st.on_hit((*over, *threshold, *ordered), hit.steps, &hit.event)?;
                if let Some(m) = self.mute {
                    st.muted_until = hit.time.saturating_add(m);
                }
                let count = events.len() as u64;
                let first_seen = events.first().map_or(hit.time, |h| h.time);
                let events = events.into_iter().take(MAX_IDS).collect();
                let mut firing =
                    Firing::closing((hit.key, hit.time, hit.captured), count, first_seen, events);
                firing.suppressed = std::mem::take(&mut st.suppressed);
                Some(firing)
            }
            _ => None,
        }
    }

    /// Mutes `key` until `until`, with `suppressed` requests muted so far (a throttle entry of
    /// a snapshot written before throttles became mutes). Only early windows have mutes.
    pub fn mute(&mut self, key: GroupKey, until: EventTime, suppressed: u64) {
        let Some(p) = self.early else { return };
        if self.keys.len() >= self.limits.max_keys && !self.keys.contains_key(&key) {
            return;
        }
        let entry = self.keys.entry(key).or_insert_with(|| Entry {
            state: KeyState::Early(EarlyState::default()),
            updated: until,
        });
        if let KeyState::Early(st) = &mut entry.state {
            st.mute(&p, until, suppressed);
        }
    }

    /// Whether a request of `key` at `time`, too late to take part in the early run, falls in
    /// a mute its key's settled run has in force.
    pub fn late_hit_muted(&self, key: &GroupKey, time: EventTime) -> bool {
        match (self.early, self.keys.get(key).map(|e| &e.state)) {
            (Some(p), Some(KeyState::Early(st))) => st.settled_mute_covers(&p, time),
            _ => false,
        }
    }

    /// Records that an absence key is alive at `time` (newest time wins; any order).
    pub fn on_alive(
        &mut self,
        key: GroupKey,
        time: EventTime,
        audit_id: &str,
        captured: Captured,
        out: &mut Vec<(EventTime, Firing)>,
    ) {
        let WindowSpec::Absence { after } = self.spec else {
            return;
        };
        if let Some(entry) = self.keys.get_mut(&key) {
            if let KeyState::Absence(st) = &mut entry.state {
                if time < st.last {
                    return;
                }
                // A gap longer than `after` that the watermark has not closed yet (it lags by
                // the lateness) still was a silence.
                if !st.fired && time.0.saturating_sub(st.last.0) > after.0 {
                    out.push((
                        st.last.saturating_add(after),
                        Firing {
                            key: key.clone(),
                            count: 0,
                            first_seen: st.last,
                            last_seen: st.last,
                            events: st.last_event(),
                            captured: std::mem::take(&mut st.captured),
                            suppressed: 0,
                        },
                    ));
                }
                entry.updated = time;
                st.last = time;
                st.fired = false;
                st.audit_id.clear();
                st.audit_id.push_str(audit_id);
                st.captured = captured;
                if !st.armed {
                    st.armed = true;
                    self.deadlines
                        .push(Reverse((time.saturating_add(after), key)));
                }
            }
            return;
        }
        self.on_hit(Hit {
            time,
            key,
            event: EventRef::new(time, 0, audit_id, "", "", "", ""),
            distinct: None,
            steps: 0,
            captured,
        });
    }

    /// Fires absence windows whose silence reached `absent_for` before `watermark`.
    pub fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<(EventTime, Firing)>) {
        let WindowSpec::Absence { after } = self.spec else {
            return;
        };
        while let Some(Reverse((deadline, _))) = self.deadlines.peek() {
            if *deadline > watermark {
                break;
            }
            let Some(Reverse((deadline, key))) = self.deadlines.pop() else {
                break;
            };
            let Some(entry) = self.keys.get_mut(&key) else {
                continue;
            };
            let KeyState::Absence(st) = &mut entry.state else {
                continue;
            };
            st.armed = false;
            if st.fired {
                continue;
            }
            // The key was hit again after this deadline was scheduled: re-arm.
            let current = st.last.saturating_add(after);
            if current > deadline {
                st.armed = true;
                self.deadlines.push(Reverse((current, key)));
                continue;
            }
            st.fired = true;
            let events = st.last_event();
            out.push((
                deadline,
                Firing {
                    key,
                    count: 0,
                    first_seen: st.last,
                    last_seen: st.last,
                    events,
                    captured: st.captured.clone(),
                    suppressed: 0,
                },
            ));
        }
    }

    /// Settles early keys before `watermark` and drops keys with nothing left in their window,
    /// to keep memory flat.
    pub fn expire(&mut self, watermark: EventTime) {
        let spec = &self.spec;
        let early = self.early;
        let mut released = 0;
        self.keys.retain(|_, e| match (spec, &mut e.state) {
            (_, KeyState::Early(st)) => {
                let Some(p) = early else { return false };
                released += st.settle(&p, watermark);
                // Nothing held can still join a group, no mute is in force, and no muted
                // request waits to be reported by the key's next alert.
                let idle = st
                    .newest()
                    .is_none_or(|t| watermark.0.saturating_sub(t.0) > p.over.0);
                let keep =
                    !idle || st.settled_mute_covers(&p, watermark) || st.settled_suppressed() > 0;
                if !keep {
                    released += st.len();
                }
                keep
            }
            (WindowSpec::Sequence { over, .. }, KeyState::Sequence(st)) => {
                st.muted_until > watermark
                    || st
                        .newest_start()
                        .is_some_and(|t| watermark.0.saturating_sub(t.0) <= over.0)
            }
            // An absence key is the memory that the key exists; keep it until it fired.
            (WindowSpec::Absence { .. }, KeyState::Absence(st)) => !st.fired,
            _ => false,
        });
        self.held -= released;
    }

    fn evict_oldest(&mut self) {
        let keys = &self.keys;
        if let Some(oldest) = self.oldest.pop(
            || keys.iter().map(|(k, e)| (k, e.updated)),
            |k| keys.get(k).map(|e| e.updated),
        ) && let Some(gone) = self.keys.remove(&oldest)
        {
            if let KeyState::Early(st) = gone.state {
                self.held -= st.len();
            }
            self.evicted += 1;
        }
    }
}

/// A [`RuleWindow`]'s state in a serializable form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowSnapshot {
    keys: Vec<(GroupKey, Entry)>,
    deadlines: Vec<(EventTime, GroupKey)>,
    evicted: u64,
}

impl WindowSnapshot {
    /// Sorts the contents so the same state always serialises the same way.
    pub fn canonicalize(&mut self) {
        self.keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.deadlines.sort_unstable();
    }
}

/// Per-key throttle: at most one alert per key per `period` of event time. At most
/// `max_keys` keys are remembered; beyond that the key whose throttle ends first is forgotten
/// (its next alert goes out: a bound on memory must not become a way to silence alerts).
#[derive(Debug)]
pub struct Throttle {
    period: Span,
    until: HashMap<GroupKey, (EventTime, u64)>,
    max_keys: usize,
    oldest: OldestKeys,
    pub evicted: u64,
}

impl Throttle {
    pub fn new(period: Span, max_keys: usize) -> Throttle {
        Throttle {
            period,
            until: HashMap::default(),
            max_keys: max_keys.max(1),
            oldest: OldestKeys::default(),
            evicted: 0,
        }
    }

    /// `Some(swallowed)` if an alert for `key` at `time` may go out (with the number of
    /// firings swallowed since the previous one); `None` if it is throttled.
    pub fn admit(&mut self, key: &GroupKey, time: EventTime) -> Option<u64> {
        match self.until.get_mut(key) {
            Some((until, swallowed)) if time < *until => {
                *swallowed += 1;
                None
            }
            Some((until, swallowed)) => {
                *until = time.saturating_add(self.period);
                Some(std::mem::take(swallowed))
            }
            None => {
                if self.until.len() >= self.max_keys {
                    let until = &self.until;
                    if let Some(gone) = self.oldest.pop(
                        || until.iter().map(|(k, (t, _))| (k, *t)),
                        |k| until.get(k).map(|(t, _)| *t),
                    ) {
                        self.until.remove(&gone);
                        self.evicted += 1;
                    }
                }
                self.until
                    .insert(key.clone(), (time.saturating_add(self.period), 0));
                Some(0)
            }
        }
    }

    /// Forgets keys whose throttle ended before `watermark` and swallowed nothing.
    pub fn expire(&mut self, watermark: EventTime) {
        self.until
            .retain(|_, (until, swallowed)| *until > watermark || *swallowed > 0);
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// (key, until, swallowed) for every key, in no particular order (sort by key to compare).
    pub fn snapshot(&self) -> Vec<(GroupKey, EventTime, u64)> {
        self.until
            .iter()
            .map(|(k, (t, n))| (k.clone(), *t, *n))
            .collect()
    }

    pub fn restore(
        period: Span,
        max_keys: usize,
        entries: Vec<(GroupKey, EventTime, u64)>,
    ) -> Throttle {
        let mut t = Throttle::new(period, max_keys);
        t.until = entries
            .into_iter()
            .take(t.max_keys)
            .map(|(k, u, n)| (k, (u, n)))
            .collect();
        t
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests;
