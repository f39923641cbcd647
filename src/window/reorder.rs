//! The reorder buffer: holds the hits of sequence windows until the watermark passes them, then
//! releases them in (event time, auditID, arrival) order.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use super::GroupKey;
use crate::alert::EventRef;
use crate::event::EventTime;
use crate::rules::Captured;

/// One matching request of a windowed rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub time: EventTime,
    pub key: GroupKey,
    /// The request (its auditID orders hits of equal time).
    pub event: EventRef,
    /// The `distinct` field's value, for distinct-count windows.
    pub distinct: Option<Box<str>>,
    /// Bit `i` set: the request matched step `i` of a sequence window.
    #[serde(default)]
    pub steps: u64,
    /// Event values the rule's summary template reads.
    pub captured: Captured,
}

struct Pending {
    hit: Hit,
    rule: usize,
    seq: u64,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.hit.time, self.hit.event.audit_id(), self.seq).cmp(&(
            other.hit.time,
            other.hit.event.audit_id(),
            other.seq,
        ))
    }
}

/// A [`ReorderBuffer`]'s state in a serializable form, with the engine's event time (the
/// buffer held it before there was a clock per source).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReorderSnapshot {
    pub newest: EventTime,
    pub watermark: EventTime,
    pub late: u64,
    pub forced: u64,
    /// (rule index, hit) in release order (once [`ReorderSnapshot::canonicalize`]d).
    pub pending: Vec<(usize, Hit)>,
    /// Arrival order of `pending` as captured, for `canonicalize`; empty once sorted.
    #[serde(skip)]
    arrival: Vec<u64>,
}

impl ReorderSnapshot {
    /// Puts the pending hits in release order, which restoring relies on to break ties of
    /// (time, auditID) the way the live buffer would. Kept out of
    /// [`ReorderBuffer::snapshot`] so the engine's pause for a snapshot stays short.
    pub fn canonicalize(&mut self) {
        if self.arrival.len() != self.pending.len() {
            return;
        }
        let mut order: Vec<usize> = (0..self.pending.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            let (x, y) = (&self.pending[a].1, &self.pending[b].1);
            (x.time, x.event.audit_id(), self.arrival[a]).cmp(&(
                y.time,
                y.event.audit_id(),
                self.arrival[b],
            ))
        });
        let mut slots: Vec<Option<(usize, Hit)>> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(Some)
            .collect();
        self.pending = order.into_iter().filter_map(|i| slots[i].take()).collect();
        self.arrival.clear();
    }
}

/// Orders hits by event time; the engine's clock says when they are ready.
pub struct ReorderBuffer {
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    max_pending: usize,
    /// Hits released early because the buffer was full.
    pub forced: u64,
}

impl ReorderBuffer {
    pub fn new(max_pending: usize) -> ReorderBuffer {
        ReorderBuffer {
            heap: BinaryHeap::new(),
            seq: 0,
            max_pending: max_pending.max(1),
            forced: 0,
        }
    }

    pub fn pending(&self) -> usize {
        self.heap.len()
    }

    /// Queues a hit of rule `rule` (the engine has checked it is not late).
    pub fn push(&mut self, rule: usize, hit: Hit) {
        self.seq += 1;
        self.heap.push(Reverse(Pending {
            hit,
            rule,
            seq: self.seq,
        }));
    }

    /// Pops the next hit that `watermark` has passed (or any hit, if over capacity).
    pub fn pop_ready(&mut self, watermark: EventTime) -> Option<(usize, Hit)> {
        let over_capacity = self.heap.len() > self.max_pending;
        let ready = self
            .heap
            .peek()
            .is_some_and(|Reverse(p)| p.hit.time < watermark || over_capacity);
        if !ready {
            return None;
        }
        if over_capacity {
            self.forced += 1;
        }
        self.heap.pop().map(|Reverse(p)| (p.rule, p.hit))
    }

    /// Takes out the pending hits of the rules `take` picks (in no particular order).
    pub fn take_rules(&mut self, take: impl Fn(usize) -> bool) -> Vec<(usize, Hit)> {
        let heap = std::mem::take(&mut self.heap);
        let (taken, kept): (Vec<_>, Vec<_>) = heap
            .into_vec()
            .into_iter()
            .partition(|Reverse(p)| take(p.rule));
        self.heap = kept.into();
        taken
            .into_iter()
            .map(|Reverse(p)| (p.rule, p.hit))
            .collect()
    }

    /// The buffer's state, with pending hits in heap order: call
    /// [`ReorderSnapshot::canonicalize`] before writing it.
    pub fn snapshot(
        &self,
        (newest, watermark): (EventTime, EventTime),
        late: u64,
    ) -> ReorderSnapshot {
        let (pending, arrival) = self
            .heap
            .iter()
            .map(|Reverse(p)| ((p.rule, p.hit.clone()), p.seq))
            .unzip();
        ReorderSnapshot {
            newest,
            watermark,
            late,
            forced: self.forced,
            pending,
            arrival,
        }
    }

    /// Restores a snapshot's pending hits (its times are the engine's to restore); `rule_map`
    /// translates the snapshot's rule indices to current ones (`None` drops the hits of rules
    /// that no longer exist).
    pub fn restore(&mut self, snap: ReorderSnapshot, rule_map: impl Fn(usize) -> Option<usize>) {
        self.forced += snap.forced;
        for (rule, hit) in snap.pending {
            if let Some(rule) = rule_map(rule) {
                self.seq += 1;
                self.heap.push(Reverse(Pending {
                    hit,
                    rule,
                    seq: self.seq,
                }));
            }
        }
    }

    /// Renumbers the rules of pending hits (after a reload); hits of rules mapped to `None`
    /// are dropped.
    pub fn remap(&mut self, rule_map: impl Fn(usize) -> Option<usize>) {
        let heap = std::mem::take(&mut self.heap);
        self.heap = heap
            .into_iter()
            .filter_map(|Reverse(mut p)| {
                p.rule = rule_map(p.rule)?;
                Some(Reverse(p))
            })
            .collect();
    }

    /// Pops the next hit regardless of the watermark (end of input).
    pub fn pop_any(&mut self) -> Option<(usize, Hit)> {
        let Reverse(p) = self.heap.pop()?;
        Some((p.rule, p.hit))
    }
}
