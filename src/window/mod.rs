//! Keyed sliding windows in event time.
//!
//! Count, distinct-count and sequence windows fire on the requests in hand, as soon as they
//! complete ([`early`] says why that is safe and what it guarantees), in any arrival order.
//! Absence windows keep only the newest time per key and fire when the watermark (event time
//! minus the allowed lateness, see [`clock`]) passes the end of a silence. A hit older than the
//! watermark when it arrives is late: the engine counts it and leaves it out.
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
use early::{EarlyState, Held, Params, Shape};
use evict::OldestKeys;
pub use reorder::{Hit, ReorderSnapshot};

use crate::alert::EventRef;
use crate::event::{EventTime, Span};
use crate::rules::{Captured, WindowSpec};

/// Hash maps on the hot path: foldhash, randomly seeded (keys come from event data).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A group key: the rule's `group_by` values joined with U+001F.
pub type GroupKey = Arc<str>;

pub const KEY_SEPARATOR: char = '\u{1f}';

/// Starts a group key's source part: the labels of the source the request came from
/// (`sources[].labels`), so that two clusters' windows never mix. Written as `name=value`
/// pairs separated by this same mark; absent when the source has no labels.
pub const SOURCE_MARK: char = '\u{1e}';

/// The source part of a group key for `labels` (empty without labels).
pub fn source_tag<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut tag = String::new();
    for (k, v) in labels {
        tag.push(SOURCE_MARK);
        tag.push_str(k);
        tag.push('=');
        tag.push_str(v);
    }
    tag
}

/// A group key's own part and its source's labels.
pub fn split_source(key: &str) -> (&str, Vec<(String, String)>) {
    match key.split_once(SOURCE_MARK) {
        None => (key, Vec::new()),
        Some((group, tag)) => (
            group,
            tag.split(SOURCE_MARK)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ),
    }
}

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

/// A sequence window's key before early firing (read from older snapshots).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SequenceState {
    /// Per step. Unordered: the step's newest hit. Ordered: the partial match that completed
    /// this step and started latest (so it expires last), as its hits oldest first.
    slots: Vec<Option<Vec<EventRef>>>,
}

impl SequenceState {
    /// The requests of the partial matches, each with the steps it took in them.
    fn partial_matches(self, ordered: bool) -> Vec<Held> {
        let mut held: Vec<Held> = Vec::new();
        for (slot, chain) in self.slots.into_iter().enumerate() {
            for (position, event) in chain.into_iter().flatten().enumerate() {
                // Ordered: the chain's n-th request took step n. Unordered: the slot's step.
                let step = if ordered { position } else { slot };
                match held.iter_mut().find(|h| h.event == event) {
                    Some(h) => h.steps |= 1 << step,
                    None => held.push(Held {
                        event,
                        distinct: None,
                        steps: 1 << step,
                        captured: Captured::default(),
                    }),
                }
            }
        }
        held
    }
}

/// A key's state. `Count`, `Distinct` and `Sequence` are how snapshots written before early
/// firing hold those windows; they are read, and turned into `Early` on restore.
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

impl RuleWindow {
    /// A window for `spec`, muted for `throttle` after each alert. A plain rule with a throttle
    /// gets one too: a count of one (`WindowSpec::Count` with threshold 1), so its throttle
    /// has the same semantics under any arrival order.
    pub fn new(spec: WindowSpec, throttle: Option<Span>, limits: Limits) -> RuleWindow {
        let params = |over: Span, threshold: u64, shape| Params {
            over,
            threshold: threshold.max(1),
            shape,
            mute: throttle,
        };
        let early = match &spec {
            WindowSpec::Count { over, threshold } => Some(params(*over, *threshold, Shape::Count)),
            WindowSpec::Distinct {
                over, threshold, ..
            } => Some(params(*over, *threshold, Shape::Distinct)),
            WindowSpec::Sequence {
                over,
                steps,
                threshold,
                ordered,
            } => Some(params(
                *over,
                *threshold,
                Shape::Sequence {
                    steps: steps.len(),
                    ordered: *ordered,
                },
            )),
            WindowSpec::Absence { .. } => None,
        };
        RuleWindow {
            spec,
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
                            steps: 0,
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
                                steps: 0,
                                captured: Captured::default(),
                            }),
                    )))
                }
                (WindowSpec::Sequence { steps, ordered, .. }, Some(p), KeyState::Sequence(st))
                    if st.slots.len() == steps.len() =>
                {
                    Some(KeyState::Early(EarlyState::from_group(
                        &p,
                        st.partial_matches(*ordered),
                    )))
                }
                (WindowSpec::Absence { .. }, _, st @ KeyState::Absence(_)) => Some(st),
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
        self.on_hit_at(hit, EventTime::MIN)
    }

    /// [`RuleWindow::on_hit`] at `watermark` (early windows settle what it has passed).
    pub fn on_hit_at(&mut self, hit: Hit, watermark: EventTime) -> Option<Firing> {
        if self.keys.len() >= self.limits.max_keys && !self.keys.contains_key(&hit.key) {
            self.evict_oldest();
        }
        // Borrowed, not cloned: this runs for every hit (a distinct spec holds a String).
        let spec = &self.spec;
        let early = self.early;
        let entry = self.keys.entry(hit.key.clone()).or_insert_with(|| Entry {
            state: match spec {
                WindowSpec::Absence { .. } => KeyState::Absence(AbsenceState {
                    last: hit.time,
                    fired: false,
                    armed: false,
                    captured: Captured::default(),
                    audit_id: String::new(),
                }),
                // Count, distinct and sequence windows fire early.
                _ => KeyState::Early(EarlyState::default()),
            },
            updated: hit.time,
        });
        entry.updated = entry.updated.max(hit.time);
        match (spec, &mut entry.state) {
            (_, KeyState::Early(st)) => {
                let p = early?;
                let before = st.len();
                let fired = st.add(
                    &p,
                    Held {
                        event: hit.event,
                        distinct: hit.distinct,
                        steps: hit.steps,
                        captured: hit.captured,
                    },
                    watermark,
                );
                self.held = self.held + st.len() - before;
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
