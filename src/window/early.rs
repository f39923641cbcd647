//! Count and distinct-count windows that fire on the requests in hand ("early firing").
//!
//! **What a key's alerts are.** Take the key's matching requests in (event time, auditID)
//! order and walk them (the *time-ordered run*): a request before the end of a throttle
//! mute is suppressed; any other joins the group, which lets go of requests more than `over`
//! older than it; when the group holds `threshold` requests (or distinct values), the window
//! fires at that request, the group empties ("restart"), and with a throttle the key is muted
//! for the throttle period from that request's time.
//!
//! **Why it can fire early.** The number of firings of that run never decreases when a request
//! is added: it is the largest number of qualifying groups that follow one another, each with
//! its mute after it, and closing each group as early as possible (what the run does) finds
//! that largest number. So the window need not wait for the watermark: whenever the requests
//! in hand give one more firing than alerts already sent, one alert leaves at once, describing
//! the group the new request completed. Once every request is in, the number of alerts per key
//! is the time-ordered run's, whatever the arrival order, as long as no request is later than
//! the lateness. An alert lists the group as it stood when the alert left; a request that
//! arrives later and is older may regroup the run, but never takes an alert back.
//!
//! **What is kept.** No request can arrive before the watermark (it would be late), so the run
//! up to the watermark is settled: of it only the group in progress at the watermark is kept,
//! with the mute then in force. Requests after the watermark are all kept (they may be
//! regrouped by an older one still to come): that is what the lateness costs in memory.

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
    pub captured: Captured,
}

impl Held {
    fn time(&self) -> EventTime {
        self.event.time
    }

    fn value(&self) -> &str {
        self.distinct.as_deref().unwrap_or("")
    }
}

/// What the run does: the window's spec and the rule's throttle.
#[derive(Debug, Clone, Copy)]
pub(super) struct Params {
    pub over: Span,
    pub threshold: u64,
    /// Count distinct values instead of requests.
    pub distinct: bool,
    /// The throttle period: after a firing the key is muted this long.
    pub mute: Option<Span>,
}

/// A group the run closed: `hits[first..=last]`, and how many requests were muted between
/// the previous firing and this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Closed {
    first: usize,
    last: usize,
    suppressed: u64,
}

/// Where the run stands.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The next request to walk.
    next: usize,
    /// The group in progress is `hits[group_start..next]`.
    group_start: usize,
    muted_until: EventTime,
    /// Requests muted since the last firing.
    suppressed: u64,
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
    /// From the settled point on, in (time, auditID, arrival) order: the group in progress at
    /// the watermark, then every request after it.
    hits: VecDeque<Held>,
    /// At the settled point: the mute in force, and the requests muted since the last firing.
    base_muted_until: EventTime,
    base_suppressed: u64,
    /// Derived from the above (rebuilt after a restore): the run's firings over `hits`, its
    /// position after the last request, and the distinct values of its group in progress.
    #[serde(skip)]
    closed: Vec<Closed>,
    #[serde(skip, default = "Cursor::start")]
    tail: Cursor,
    #[serde(skip)]
    values: HashMap<Box<str>, u32>,
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

impl Default for EarlyState {
    fn default() -> Self {
        EarlyState {
            hits: VecDeque::new(),
            base_muted_until: EventTime::MIN,
            base_suppressed: 0,
            closed: Vec::new(),
            tail: Cursor::start(),
            values: HashMap::default(),
        }
    }
}

/// Cap on the requests an alert lists.
const MAX_IDS: usize = crate::alert::MAX_AUDIT_IDS;

impl EarlyState {
    /// A key holding `events` as its group in progress (a snapshot from before early firing,
    /// whose count windows kept fewer than `threshold` requests per key).
    pub fn from_group(p: &Params, events: impl IntoIterator<Item = Held>) -> EarlyState {
        let mut state = EarlyState {
            hits: events.into_iter().collect(),
            ..EarlyState::default()
        };
        state
            .hits
            .make_contiguous()
            .sort_by(|a, b| (a.time(), a.event.audit_id()).cmp(&(b.time(), b.event.audit_id())));
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

    /// Adds a request (at or after the watermark). Returns the alert to send if the requests in
    /// hand now give one more firing than before.
    pub fn add(&mut self, p: &Params, held: Held) -> Option<Fired> {
        let key = (held.time(), held.event.audit_id());
        // After requests that order equal: equal ones keep their arrival order.
        let pos = self
            .hits
            .partition_point(|h| (h.time(), h.event.audit_id()) <= key);
        if pos == self.hits.len() {
            self.hits.push_back(held);
            let mut cursor = self.tail;
            let closed = self.step(p, &mut cursor, true);
            self.tail = cursor;
            let closed = closed?;
            self.closed.push(closed);
            return Some(self.describe(p, closed));
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
            .or(self.closed.last())
            .copied()?;
        Some(self.describe(p, closed))
    }

    /// Settles the run before `watermark`: drops what no later request can join, and the
    /// firings already sent there. Returns how many requests were dropped.
    pub fn settle(&mut self, p: &Params, watermark: EventTime) -> usize {
        let settled = self
            .closed
            .partition_point(|c| self.hits[c.last].time() < watermark);
        let mut cursor = match settled {
            0 => self.base(),
            k => self.after(p, self.closed[k - 1]),
        };
        // No firing closes before the watermark past the settled ones: walk to it.
        let mut scratch = HashMap::default();
        while cursor.next < self.hits.len() && self.hits[cursor.next].time() < watermark {
            let closed = self.walk(p, &mut cursor, &mut scratch, false);
            debug_assert!(
                closed.is_none(),
                "a firing before the watermark was not settled"
            );
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
            }
            self.tail.next -= drop;
            self.tail.group_start -= drop;
        }
        let mut dropped = drop;
        if p.distinct {
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

    fn after(&self, p: &Params, c: Closed) -> Cursor {
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
            k => self.after(p, self.closed[k - 1]),
        };
        self.values.clear();
        while cursor.next < self.hits.len() {
            if let Some(c) = self.step(p, &mut cursor, true) {
                self.closed.push(c);
            }
        }
        self.tail = cursor;
    }

    /// One step of the run with the window's own distinct-value counts.
    fn step(&mut self, p: &Params, cursor: &mut Cursor, count_values: bool) -> Option<Closed> {
        let mut values = std::mem::take(&mut self.values);
        let closed = self.walk(p, cursor, &mut values, count_values);
        self.values = values;
        closed
    }

    /// Walks the request at `cursor.next`. `values` counts the group's distinct values
    /// (kept only when `count_values`; the settling walk needs times alone).
    fn walk(
        &self,
        p: &Params,
        cursor: &mut Cursor,
        values: &mut HashMap<Box<str>, u32>,
        count_values: bool,
    ) -> Option<Closed> {
        let i = cursor.next;
        cursor.next += 1;
        let t = self.hits[i].time();
        if t < cursor.muted_until {
            cursor.suppressed += 1;
            cursor.group_start = i + 1;
            return None;
        }
        let track = p.distinct && count_values;
        while cursor.group_start < i
            && t.0.saturating_sub(self.hits[cursor.group_start].time().0) > p.over.0
        {
            if track {
                forget(values, self.hits[cursor.group_start].value());
            }
            cursor.group_start += 1;
        }
        let size = if p.distinct {
            if !track {
                return None;
            }
            match values.get_mut(self.hits[i].value()) {
                Some(n) => *n += 1,
                None => {
                    values.insert(self.hits[i].value().into(), 1);
                }
            }
            values.len()
        } else {
            i + 1 - cursor.group_start
        };
        if (size as u64) < p.threshold {
            return None;
        }
        let closed = Closed {
            first: cursor.group_start,
            last: i,
            suppressed: cursor.suppressed,
        };
        cursor.group_start = i + 1;
        cursor.suppressed = 0;
        cursor.muted_until = mute_after(p, t);
        values.clear();
        Some(closed)
    }

    /// The alert of a closed group.
    fn describe(&self, p: &Params, c: Closed) -> Fired {
        let group = self.hits.range(c.first..=c.last);
        let last = &self.hits[c.last];
        let (count, events): (u64, Vec<EventRef>) = if p.distinct {
            // The newest request of each value, oldest first.
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
        } else {
            let count = (c.last + 1 - c.first) as u64;
            (
                count,
                group.take(MAX_IDS).map(|h| h.event.clone()).collect(),
            )
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
            captured: Captured::default(),
        }
    }

    fn count(over: i64, threshold: u64, mute: Option<i64>) -> Params {
        Params {
            over: Span::from_secs(over),
            threshold,
            distinct: false,
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
            assert!(s.add(&p, held(t, id, "")).is_none());
        }
        fired.extend(s.add(&p, held(50, "e", "")));
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
        assert!(s.add(&p, held(5, "b", "")).is_none());
        // 5 and 12 fire...
        assert!(s.add(&p, held(12, "c", "")).is_some());
        // ...then 0 regroups the run as (0, 5) and leaves 12 alone: still one firing.
        assert!(s.add(&p, held(0, "a", "")).is_none());
        // 11 makes (11, 12) the second.
        let second = s.add(&p, held(11, "x", "")).map(|f| f.count);
        assert_eq!(second, Some(2));
    }

    #[test]
    fn throttle_mutes_requests_and_reports_them() {
        let p = count(60, 1, Some(100));
        let mut s = EarlyState::default();
        assert!(s.add(&p, held(100, "a", "")).is_some());
        assert!(s.add(&p, held(150, "b", "")).is_none());
        // An older request opens a mute earlier: it alerts; the run is now 30 (alert), 100
        // (muted), 150 (alert: the one already sent stands for it).
        let first = s.add(&p, held(30, "c", "")).expect("a new firing");
        assert_eq!(first.last_seen, EventTime::from_secs(30));
        // 150 mutes until 250.
        assert!(s.add(&p, held(199, "d", "")).is_none());
        let next = s.add(&p, held(250, "e", "")).expect("past the mute");
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
            s.add(&p, held(t, id, ""));
        }
        // Fired at 2 (muted to 52: d is muted); e and f are the group in progress.
        assert_eq!(s.settle(&p, EventTime::from_secs(90)), 4);
        assert_eq!(s.len(), 2);
        assert!(s.add(&p, held(95, "g", "")).is_some());
        assert!(s.settled_mute_covers(&p, EventTime::from_secs(20)));
    }

    #[test]
    fn distinct_settled_repeats_are_compacted() {
        let p = Params {
            over: Span::from_secs(10_000),
            threshold: 3,
            distinct: true,
            mute: None,
        };
        let mut s = EarlyState::default();
        for i in 0..100 {
            assert!(
                s.add(&p, held(i, &format!("id{i}"), ["x", "y"][i as usize % 2]))
                    .is_none()
            );
        }
        s.settle(&p, EventTime::from_secs(1000));
        assert_eq!(s.len(), 2);
        let fired = s.add(&p, held(1001, "z1", "z")).expect("third value");
        assert_eq!(fired.count, 3);
        let ids: Vec<&str> = fired.events.iter().map(|e| e.audit_id()).collect();
        assert_eq!(ids, ["id98", "id99", "z1"]);
    }
}
