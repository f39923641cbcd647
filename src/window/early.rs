//! Count, distinct-count and sequence windows that fire on the requests in hand ("early
//! firing").
//!
//! **What a key's alerts are.** Take the key's matching requests in (event time, auditID)
//! order and walk them (the *time-ordered run*): a request before the end of a throttle
//! mute is suppressed; any other joins the group in progress, which lets go of what is more
//! than `over` older than it; when the group qualifies (`threshold` requests, or distinct
//! values, or a chain of the sequence's steps), the window fires at that request, the group
//! empties ("restart"), and with a throttle the key is muted for the throttle period from that
//! request's time.
//!
//! **Why it can fire early.** The number of firings of that run never decreases when a request
//! is added: it is the largest number of qualifying groups that follow one another, each with
//! its mute after it, and closing each group as early as possible (what the run does) finds
//! that largest number (interval scheduling: earliest end first). So the window need not wait
//! for the watermark: whenever the requests in hand give one more firing than alerts already
//! sent, one alert leaves at once, describing the group the new request completed. Once every
//! request is in, the number of alerts per key is the time-ordered run's, whatever the arrival
//! order, as long as no request is later than the lateness. An alert lists the group as it
//! stood when the alert left; a request that arrives later and is older may regroup the run,
//! but never takes an alert back.
//!
//! **What is kept.** No request can arrive before the watermark (it would be late), so the run
//! up to the watermark is settled: of it only what can still join a group is kept, with the
//! mute then in force. Requests after the watermark are kept (an older one still to come may
//! regroup them): that is what the lateness costs in memory, except for requests that every
//! possible run mutes, which are only counted.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::HashMap;
use crate::alert::EventRef;
use crate::event::{EventTime, Span};
use crate::rules::Captured;

/// One matching request held by an early window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Held {
    pub event: EventRef,
    /// The `distinct` field's value (distinct-count windows).
    pub distinct: Option<Box<str>>,
    /// Bit `i` set: the request matched step `i` (sequence windows).
    #[serde(default)]
    pub steps: u64,
    pub captured: Captured,
}

impl Held {
    fn time(&self) -> EventTime {
        self.event.time
    }

    fn value(&self) -> &str {
        self.distinct.as_deref().unwrap_or("")
    }

    fn order(&self) -> (EventTime, &str) {
        (self.event.time, self.event.audit_id())
    }
}

/// What qualifies a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// `threshold` requests.
    Count,
    /// `threshold` distinct values.
    Distinct,
    /// Hits of every step in step order (`ordered`), or of `threshold` different steps.
    Sequence { steps: usize, ordered: bool },
}

/// What the run does: the window's spec and the rule's throttle.
#[derive(Debug, Clone, Copy)]
pub(super) struct Params {
    pub over: Span,
    pub threshold: u64,
    pub shape: Shape,
    /// The throttle period: after a firing the key is muted this long.
    pub mute: Option<Span>,
}

/// A group the run closed: its requests lie in `hits[first..=last]` (all of them for count
/// and distinct windows; `members` for a sequence), and how many requests were muted between
/// the previous firing and this one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Closed {
    first: usize,
    last: usize,
    suppressed: u64,
    members: Vec<usize>,
}

/// Where the run stands.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The next request to walk.
    next: usize,
    /// Requests before this one can no longer join the group in progress.
    group_start: usize,
    muted_until: EventTime,
    /// Requests muted since the last firing.
    suppressed: u64,
}

impl Cursor {
    fn start() -> Cursor {
        Cursor {
            next: 0,
            group_start: 0,
            muted_until: EventTime::MIN,
            suppressed: 0,
        }
    }
}

/// The group in progress beyond its bounds: distinct values and their counts, or the partial
/// matches of a sequence (per step, the chain of request indices that completed it; ordered:
/// the one that started latest, unordered: the step's newest request).
#[derive(Debug, Clone, Default)]
struct Group {
    values: HashMap<Box<str>, u32>,
    slots: Vec<Option<Vec<usize>>>,
}

impl Group {
    fn clear(&mut self) {
        self.values.clear();
        for slot in &mut self.slots {
            *slot = None;
        }
    }

    fn shift(&mut self, by: usize) {
        for chain in self.slots.iter_mut().flatten() {
            chain.retain(|i| *i >= by);
            for i in chain.iter_mut() {
                *i -= by;
            }
        }
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(Vec::is_empty) {
                *slot = None;
            }
        }
    }
}

/// A firing of an early window, for the alert.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Fired {
    pub count: u64,
    pub first_seen: EventTime,
    pub last_seen: EventTime,
    pub events: Vec<EventRef>,
    pub captured: Captured,
    pub suppressed: u64,
}

/// One key of an early window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EarlyState {
    /// From the settled point on, in (time, auditID, arrival) order: what of the settled run
    /// can still join a group, then every request after the watermark.
    hits: VecDeque<Held>,
    /// At the settled point: the mute in force, and the requests muted since the last firing.
    base_muted_until: EventTime,
    base_suppressed: u64,
    /// Derived from the above (rebuilt after a restore): the run's firings over `hits`, its
    /// position after the last request, and its group in progress there.
    #[serde(skip)]
    closed: Vec<Closed>,
    #[serde(skip, default = "Cursor::start")]
    tail: Cursor,
    #[serde(skip)]
    group: Group,
}

impl Default for EarlyState {
    fn default() -> Self {
        EarlyState {
            hits: VecDeque::new(),
            base_muted_until: EventTime::MIN,
            base_suppressed: 0,
            closed: Vec::new(),
            tail: Cursor::start(),
            group: Group::default(),
        }
    }
}

/// Cap on the requests an alert lists.
const MAX_IDS: usize = crate::alert::MAX_AUDIT_IDS;

impl EarlyState {
    /// A key holding `events` as what can still join a group (a key of a snapshot written
    /// before early firing).
    pub fn from_group(p: &Params, events: impl IntoIterator<Item = Held>) -> EarlyState {
        let mut state = EarlyState {
            hits: events.into_iter().collect(),
            ..EarlyState::default()
        };
        state
            .hits
            .make_contiguous()
            .sort_by(|a, b| a.order().cmp(&b.order()));
        state.rebuild(p);
        state
    }

    /// Requests held.
    pub fn len(&self) -> usize {
        self.hits.len()
    }

    /// The newest request's time.
    pub fn newest(&self) -> Option<EventTime> {
        self.hits.back().map(Held::time)
    }

    /// Whether a request at `time` would be muted by the settled throttle (for requests too
    /// late to take part in the run: see the engine).
    pub fn settled_mute_covers(&self, p: &Params, time: EventTime) -> bool {
        p.mute.is_some_and(|m| {
            time < self.base_muted_until && time >= self.base_muted_until.saturating_sub(m)
        })
    }

    /// Sets the settled mute (at least until `until`).
    pub fn mute(&mut self, p: &Params, until: EventTime, suppressed: u64) {
        self.base_muted_until = self.base_muted_until.max(until);
        self.base_suppressed += suppressed;
        self.rebuild(p);
    }

    /// Requests muted at the settled point since the key's last alert.
    pub fn settled_suppressed(&self) -> u64 {
        self.base_suppressed
    }

    /// Recomputes the derived fields from `hits` and the settled point.
    pub fn rebuild(&mut self, p: &Params) {
        self.closed.clear();
        self.rerun(p, 0);
    }

    /// Adds a request (at or after `watermark`). Returns the alert to send if the requests in
    /// hand now give one more firing than before.
    pub fn add(&mut self, p: &Params, held: Held, watermark: EventTime) -> Option<Fired> {
        // What the watermark has passed no longer changes: settle it first, so that a hot key
        // muted by a settled firing keeps nothing of its muted requests (below).
        if self
            .closed
            .first()
            .is_some_and(|c| self.hits[c.last].time() < watermark)
        {
            self.settle(p, watermark);
        }
        if self.muted_in_every_run(p, &held, watermark) {
            return None;
        }
        let key = held.order();
        // After requests that order equal: equal ones keep their arrival order.
        let pos = self.hits.partition_point(|h| h.order() <= key);
        if pos == self.hits.len() {
            self.hits.push_back(held);
            let mut cursor = self.tail;
            let closed = self.step(p, &mut cursor);
            self.tail = cursor;
            let closed = closed?;
            let fired = self.describe(p, &closed);
            self.closed.push(closed);
            return Some(fired);
        }
        self.hits.insert(pos, held);
        let before = self.closed.len();
        // Firings closed before `pos` are untouched by it: rerun from the last of them.
        let keep = self.closed.partition_point(|c| c.last < pos);
        self.rerun(p, keep);
        if self.closed.len() <= before {
            return None;
        }
        let closed = self.closed[keep..]
            .iter()
            .find(|c| c.first <= pos && pos <= c.last)
            .or(self.closed.last())?;
        Some(self.describe(p, closed))
    }

    /// Whether every run the requests still to come can give mutes `held`: then it is only
    /// counted. Two cases: a settled firing's mute covers it (no firing can come first: its
    /// requests would be muted too); or it comes after the run's first firing and before the
    /// watermark plus the throttle period (any run's first firing is at or after the
    /// watermark, and no later than the current one's: the earliest-ending first group can
    /// only end earlier when requests are added).
    fn muted_in_every_run(&mut self, p: &Params, held: &Held, watermark: EventTime) -> bool {
        if held.time() < self.base_muted_until {
            self.base_suppressed += 1;
            match self.closed.first_mut() {
                Some(first) => first.suppressed += 1,
                None => self.tail.suppressed += 1,
            }
            return true;
        }
        let (Some(period), Some(first)) = (p.mute, self.closed.first()) else {
            return false;
        };
        let after_first = held.order() > self.hits[first.last].order();
        if !after_first || held.time() >= watermark.saturating_add(period) {
            return false;
        }
        // (A rerun from before the first firing recounts muted requests from `hits` and no
        // longer counts this one: `suppressed` is what the run saw, at least.)
        match self.closed.get_mut(1) {
            Some(second) => second.suppressed += 1,
            None => self.tail.suppressed += 1,
        }
        true
    }

    /// Settles the run before `watermark`: drops what no later request can join, and the
    /// firings already sent there. Returns how many requests were dropped.
    pub fn settle(&mut self, p: &Params, watermark: EventTime) -> usize {
        let settled = self
            .closed
            .partition_point(|c| self.hits[c.last].time() < watermark);
        let mut cursor = match settled {
            0 => self.base(),
            k => self.after(p, &self.closed[k - 1]),
        };
        // No firing closes before the watermark past the settled ones: walk to it, by time
        // alone (what a later request can still join).
        while cursor.next < self.hits.len() && self.hits[cursor.next].time() < watermark {
            self.advance(p, &mut cursor);
        }
        let drop = cursor.group_start;
        if drop > 0 || settled > 0 {
            self.base_muted_until = cursor.muted_until;
            self.base_suppressed = cursor.suppressed;
            self.hits.drain(..drop);
            self.closed.drain(..settled);
            for c in &mut self.closed {
                c.first -= drop;
                c.last -= drop;
                for m in &mut c.members {
                    *m -= drop;
                }
            }
            self.tail.next -= drop;
            self.tail.group_start = self.tail.group_start.saturating_sub(drop);
            self.group.shift(drop);
        }
        let mut dropped = drop;
        if p.shape == Shape::Distinct {
            dropped += self.compact_settled(p, watermark);
        }
        dropped
    }

    /// A distinct window's settled group may hold one value many times; only its newest
    /// request matters to any later group. Past a small bound, keep only those.
    fn compact_settled(&mut self, p: &Params, watermark: EventTime) -> usize {
        let settled = self.hits.partition_point(|h| h.time() < watermark);
        if settled <= 2 * p.threshold as usize + 16 {
            return 0;
        }
        let mut newest: HashMap<&str, usize> = HashMap::default();
        for (i, h) in self.hits.range(..settled).enumerate() {
            newest.insert(h.value(), i);
        }
        let keep: Vec<bool> = (0..settled)
            .map(|i| newest.get(self.hits[i].value()) == Some(&i))
            .collect();
        drop(newest);
        let before = self.hits.len();
        let mut i = 0;
        self.hits.retain(|_| {
            let kept = keep.get(i).copied().unwrap_or(true);
            i += 1;
            kept
        });
        self.rebuild(p);
        before - self.hits.len()
    }

    fn base(&self) -> Cursor {
        Cursor {
            next: 0,
            group_start: 0,
            muted_until: self.base_muted_until,
            suppressed: self.base_suppressed,
        }
    }

    fn after(&self, p: &Params, c: &Closed) -> Cursor {
        Cursor {
            next: c.last + 1,
            group_start: c.last + 1,
            muted_until: mute_after(p, self.hits[c.last].time()),
            suppressed: 0,
        }
    }

    /// Reruns from after the `keep`th firing to the end (dropping the firings after it).
    fn rerun(&mut self, p: &Params, keep: usize) {
        self.closed.truncate(keep);
        let mut cursor = match keep {
            0 => self.base(),
            k => self.after(p, &self.closed[k - 1]),
        };
        self.group.clear();
        while cursor.next < self.hits.len() {
            if let Some(c) = self.step(p, &mut cursor) {
                self.closed.push(c);
            }
        }
        self.tail = cursor;
    }

    /// Walks the request at `cursor.next` by time alone: the mute, and what falls out of the
    /// group in progress (for settling, where no firing can close).
    fn advance(&self, p: &Params, cursor: &mut Cursor) {
        let i = cursor.next;
        cursor.next += 1;
        let t = self.hits[i].time();
        if t < cursor.muted_until {
            cursor.suppressed += 1;
            cursor.group_start = i + 1;
            return;
        }
        while cursor.group_start < i
            && t.0.saturating_sub(self.hits[cursor.group_start].time().0) > p.over.0
        {
            cursor.group_start += 1;
        }
    }

    /// One step of the run: walks the request at `cursor.next` with the group in progress.
    /// Returns the group it closed, if any.
    fn step(&mut self, p: &Params, cursor: &mut Cursor) -> Option<Closed> {
        let i = cursor.next;
        let t = self.hits[i].time();
        if t < cursor.muted_until {
            self.advance(p, cursor);
            return None;
        }
        // Values of requests falling out of a distinct window's group.
        if p.shape == Shape::Distinct {
            let mut start = cursor.group_start;
            while start < i && t.0.saturating_sub(self.hits[start].time().0) > p.over.0 {
                forget(&mut self.group.values, self.hits[start].value());
                start += 1;
            }
        }
        self.advance(p, cursor);
        let members = match p.shape {
            Shape::Count => ((i + 1 - cursor.group_start) as u64 >= p.threshold).then(Vec::new),
            Shape::Distinct => {
                let value = self.hits[i].value();
                match self.group.values.get_mut(value) {
                    Some(n) => *n += 1,
                    None => {
                        self.group.values.insert(value.into(), 1);
                    }
                }
                (self.group.values.len() as u64 >= p.threshold).then(Vec::new)
            }
            Shape::Sequence { steps, ordered } => self.sequence_step(p, i, steps, ordered),
        }?;
        let first = match p.shape {
            Shape::Sequence { .. } => members.first().copied().unwrap_or(i),
            Shape::Count | Shape::Distinct => cursor.group_start,
        };
        let closed = Closed {
            first,
            last: i,
            suppressed: cursor.suppressed,
            members,
        };
        cursor.group_start = i + 1;
        cursor.suppressed = 0;
        cursor.muted_until = mute_after(p, t);
        self.group.clear();
        Some(closed)
    }

    /// A sequence's step for request `i`: returns the requests of the completed sequence
    /// (sorted, each once) when it completes.
    fn sequence_step(
        &mut self,
        p: &Params,
        i: usize,
        steps: usize,
        ordered: bool,
    ) -> Option<Vec<usize>> {
        let hits = &self.hits;
        let slots = &mut self.group.slots;
        slots.resize(steps, None);
        let now = hits[i].time();
        let start = |chain: &Option<Vec<usize>>| {
            chain
                .as_ref()
                .and_then(|c| c.first())
                .map(|&j| hits[j].time())
        };
        for slot in slots.iter_mut() {
            if start(slot).is_some_and(|s| now.0.saturating_sub(s.0) > p.over.0) {
                *slot = None;
            }
        }
        let mask = hits[i].steps;
        let done = if ordered {
            // Highest step first, so this request extends only matches older requests began.
            for s in (0..steps).rev() {
                if mask & (1 << s) == 0 {
                    continue;
                }
                if s == 0 {
                    slots[0] = Some(vec![i]);
                    continue;
                }
                if slots[s - 1].is_some() && start(&slots[s]) < start(&slots[s - 1]) {
                    let mut chain = slots[s - 1].clone().unwrap_or_default();
                    chain.push(i);
                    slots[s] = Some(chain);
                }
            }
            slots.last().is_some_and(Option::is_some)
        } else {
            for (s, slot) in slots.iter_mut().enumerate() {
                if mask & (1 << s) != 0 {
                    *slot = Some(vec![i]);
                }
            }
            slots.iter().flatten().count() as u64 >= p.threshold
        };
        if !done {
            return None;
        }
        let mut members: Vec<usize> = if ordered {
            slots.last_mut().and_then(Option::take).unwrap_or_default()
        } else {
            slots
                .iter_mut()
                .filter_map(Option::take)
                .flatten()
                .collect()
        };
        members.sort_unstable();
        members.dedup();
        Some(members)
    }

    /// The alert of a closed group.
    fn describe(&self, p: &Params, c: &Closed) -> Fired {
        let last = &self.hits[c.last];
        let (count, events): (u64, Vec<EventRef>) = match p.shape {
            Shape::Distinct => {
                // The newest request of each value, oldest first.
                let group = self.hits.range(c.first..=c.last);
                let mut newest: HashMap<&str, usize> = HashMap::default();
                for (i, h) in group.clone().enumerate() {
                    newest.insert(h.value(), i);
                }
                let count = newest.len() as u64;
                let events = group
                    .enumerate()
                    .filter(|(i, h)| newest.get(h.value()) == Some(i))
                    .take(MAX_IDS)
                    .map(|(_, h)| h.event.clone())
                    .collect();
                (count, events)
            }
            Shape::Count => {
                let count = (c.last + 1 - c.first) as u64;
                let group = self.hits.range(c.first..=c.last);
                (
                    count,
                    group.take(MAX_IDS).map(|h| h.event.clone()).collect(),
                )
            }
            Shape::Sequence { .. } => (
                c.members.len() as u64,
                c.members
                    .iter()
                    .take(MAX_IDS)
                    .map(|&i| self.hits[i].event.clone())
                    .collect(),
            ),
        };
        Fired {
            count,
            first_seen: events.first().map_or(last.time(), |e| e.time),
            last_seen: last.time(),
            events,
            captured: last.captured.clone(),
            suppressed: c.suppressed,
        }
    }
}

fn mute_after(p: &Params, t: EventTime) -> EventTime {
    p.mute.map_or(EventTime::MIN, |m| t.saturating_add(m))
}

fn forget(values: &mut HashMap<Box<str>, u32>, value: &str) {
    if let Some(n) = values.get_mut(value) {
        *n -= 1;
        if *n == 0 {
            values.remove(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(secs: i64, id: &str, value: &str) -> Held {
        Held {
            event: EventRef::new(EventTime::from_secs(secs), 403, id, "u", "get", "", ""),
            distinct: Some(value.into()),
            steps: 0,
            captured: Captured::default(),
        }
    }

    fn count(over: i64, threshold: u64, mute: Option<i64>) -> Params {
        Params {
            over: Span::from_secs(over),
            threshold,
            shape: Shape::Count,
            mute: mute.map(Span::from_secs),
        }
    }

    #[test]
    fn fires_on_the_request_that_reaches_the_threshold_in_any_order() {
        let p = count(90, 5, None);
        // Five 403s within 90 s, arriving shuffled by up to 15 s.
        let mut s = EarlyState::default();
        let mut fired = Vec::new();
        for (t, id) in [(20, "c"), (0, "a"), (35, "d"), (10, "b")] {
            assert!(s.add(&p, held(t, id, ""), EventTime::MIN).is_none());
        }
        fired.extend(s.add(&p, held(50, "e", ""), EventTime::MIN));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].count, 5);
        assert_eq!(fired[0].first_seen, EventTime::from_secs(0));
        let ids: Vec<&str> = fired[0].events.iter().map(|e| e.audit_id()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn an_older_request_never_takes_an_alert_back() {
        let p = count(10, 2, None);
        let mut s = EarlyState::default();
        assert!(s.add(&p, held(5, "b", ""), EventTime::MIN).is_none());
        // 5 and 12 fire...
        assert!(s.add(&p, held(12, "c", ""), EventTime::MIN).is_some());
        // ...then 0 regroups the run as (0, 5) and leaves 12 alone: still one firing.
        assert!(s.add(&p, held(0, "a", ""), EventTime::MIN).is_none());
        // 11 makes (11, 12) the second.
        let second = s
            .add(&p, held(11, "x", ""), EventTime::MIN)
            .map(|f| f.count);
        assert_eq!(second, Some(2));
    }

    #[test]
    fn throttle_mutes_requests_and_reports_them() {
        let p = count(60, 1, Some(100));
        let mut s = EarlyState::default();
        assert!(s.add(&p, held(100, "a", ""), EventTime::MIN).is_some());
        assert!(s.add(&p, held(150, "b", ""), EventTime::MIN).is_none());
        // An older request opens a mute earlier: it alerts; the run is now 30 (alert), 100
        // (muted), 150 (alert: the one already sent stands for it).
        let first = s
            .add(&p, held(30, "c", ""), EventTime::MIN)
            .expect("a new firing");
        assert_eq!(first.last_seen, EventTime::from_secs(30));
        // 150 mutes until 250.
        assert!(s.add(&p, held(199, "d", ""), EventTime::MIN).is_none());
        let next = s
            .add(&p, held(250, "e", ""), EventTime::MIN)
            .expect("past the mute");
        assert_eq!(next.suppressed, 1);
    }

    #[test]
    fn settling_keeps_the_group_in_progress_and_the_mute() {
        let p = count(100, 3, Some(50));
        let mut s = EarlyState::default();
        for (t, id) in [
            (0, "a"),
            (1, "b"),
            (2, "c"),
            (10, "d"),
            (70, "e"),
            (80, "f"),
        ] {
            s.add(&p, held(t, id, ""), EventTime::MIN);
        }
        // Fired at 2 (muted to 52: d is muted); e and f are the group in progress.
        assert_eq!(s.settle(&p, EventTime::from_secs(90)), 4);
        assert_eq!(s.len(), 2);
        assert!(s.add(&p, held(95, "g", ""), EventTime::MIN).is_some());
        assert!(s.settled_mute_covers(&p, EventTime::from_secs(20)));
    }

    #[test]
    fn distinct_settled_repeats_are_compacted() {
        let p = Params {
            over: Span::from_secs(10_000),
            threshold: 3,
            shape: Shape::Distinct,
            mute: None,
        };
        let mut s = EarlyState::default();
        for i in 0..100 {
            assert!(
                s.add(
                    &p,
                    held(i, &format!("id{i}"), ["x", "y"][i as usize % 2]),
                    EventTime::MIN
                )
                .is_none()
            );
        }
        s.settle(&p, EventTime::from_secs(1000));
        assert_eq!(s.len(), 2);
        let fired = s
            .add(&p, held(1001, "z1", "z"), EventTime::MIN)
            .expect("third value");
        assert_eq!(fired.count, 3);
        let ids: Vec<&str> = fired.events.iter().map(|e| e.audit_id()).collect();
        assert_eq!(ids, ["id98", "id99", "z1"]);
    }
}
