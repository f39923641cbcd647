//! "One request, one match": remembers which (request, rule) pairs already matched.
//!
//! The apiserver writes up to four records per request (RequestReceived, ResponseStarted,
//! ResponseComplete, Panic) with one auditID. A rule must count the request once, at the first
//! record that satisfies it. Only matches are stored (not every record), keyed by the auditID
//! packed into 128 bits, and bounded both by age (`horizon` of event time) and by count.

use std::collections::VecDeque;

use crate::event::{EventTime, Span};

/// foldhash, randomly seeded: auditIDs come from event data.
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

pub struct RequestDedup {
    seen: HashSet<(u128, u32)>,
    order: VecDeque<(EventTime, u128, u32)>,
    horizon: Span,
    capacity: usize,
    /// Entries dropped because of the capacity bound (not age).
    pub evicted: u64,
}

/// Packs an auditID (normally a UUID) into 128 bits: the UUID itself, else the first 128 bits
/// of its SHA-256 (persisted in snapshots, so specified and stable across toolchains).
pub fn audit_key(id: &str) -> u128 {
    if id.len() == 36 {
        let mut v: u128 = 0;
        let mut ok = true;
        for (i, b) in id.bytes().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                ok &= b == b'-';
                continue;
            }
            match (b as char).to_digit(16) {
                Some(d) => v = (v << 4) | u128::from(d),
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return v;
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

impl RequestDedup {
    pub fn new(horizon: Span, capacity: usize) -> RequestDedup {
        RequestDedup {
            seen: HashSet::default(),
            order: VecDeque::new(),
            horizon,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// True the first time `(audit_id, rule)` is offered; false for later records of the same
    /// request. Records without an auditID are always new.
    pub fn first_match(&mut self, audit_id: &str, rule: u32, time: EventTime) -> bool {
        if audit_id.is_empty() {
            return true;
        }
        let key = audit_key(audit_id);
        if !self.seen.insert((key, rule)) {
            return false;
        }
        self.order.push_back((time, key, rule));
        while self.order.len() > self.capacity {
            if let Some((_, k, r)) = self.order.pop_front() {
                self.seen.remove(&(k, r));
                self.evicted += 1;
            }
        }
        true
    }

    /// Forgets matches older than the horizon.
    pub fn expire(&mut self, newest: EventTime) {
        let cutoff = newest.saturating_sub(self.horizon);
        while let Some((t, k, r)) = self.order.front().copied() {
            if t >= cutoff {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&(k, r));
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// The remembered matches, oldest first: (time, auditID key as two halves, rule index).
    pub fn snapshot(&self) -> Vec<(EventTime, [u64; 2], u32)> {
        self.order
            .iter()
            .map(|&(t, k, r)| (t, [(k >> 64) as u64, k as u64], r))
            .collect()
    }

    /// Adds remembered matches from a snapshot; `rule_map` translates rule indices (`None`
    /// drops the entry).
    pub fn restore(
        &mut self,
        entries: Vec<(EventTime, [u64; 2], u32)>,
        rule_map: impl Fn(u32) -> Option<u32>,
    ) {
        for (t, [hi, lo], rule) in entries {
            let Some(rule) = rule_map(rule) else { continue };
            let key = (u128::from(hi) << 64) | u128::from(lo);
            if self.seen.insert((key, rule)) {
                self.order.push_back((t, key, rule));
            }
        }
        while self.order.len() > self.capacity {
            if let Some((_, k, r)) = self.order.pop_front() {
                self.seen.remove(&(k, r));
                self.evicted += 1;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_keys_are_exact_and_others_hash() {
        assert_eq!(
            audit_key("033d17af-082d-4b24-aa22-627752e83d71"),
            0x033d17af_082d_4b24_aa22_627752e83d71
        );
        assert_ne!(audit_key("a"), audit_key("b"));
        // Snapshots keep these keys: pinned to the first half of the SHA-256
        // (`printf not-a-uuid | sha256sum`).
        assert_eq!(audit_key("not-a-uuid"), 0x2184a32a3bae6ad756d745ec8678ad6a);
    }

    #[test]
    fn one_match_per_request_and_rule() {
        let mut d = RequestDedup::new(Span::from_secs(60), 10);
        let t = EventTime::from_secs(0);
        assert!(d.first_match("r1", 0, t));
        assert!(!d.first_match("r1", 0, t));
        assert!(d.first_match("r1", 1, t), "other rules are independent");
        assert!(d.first_match("", 0, t) && d.first_match("", 0, t));
        d.expire(EventTime::from_secs(61));
        assert!(
            d.first_match("r1", 0, EventTime::from_secs(61)),
            "forgotten after the horizon"
        );
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let mut d = RequestDedup::new(Span::from_secs(3600), 3);
        for i in 0..10 {
            d.first_match(&format!("id{i}"), 0, EventTime::from_secs(i));
        }
        assert_eq!((d.len(), d.evicted), (3, 7));
    }
}
