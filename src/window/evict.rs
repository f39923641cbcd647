//! Choosing the least recently updated key when a rule's key bound is reached, in amortised
//! constant time.
//!
//! Scanning every key for the oldest on each eviction costs O(keys) per event once the bound
//! is reached: an attacker who varies a grouped field (a source IP, a user name) past
//! `max_keys_per_rule` then turns every further event into a full scan and stalls the engine.
//! Keeping a second ordered index instead would cost every hit, at or below the bound.
//!
//! Instead, one scan picks the oldest eighth of the keys, sorted, as eviction candidates, and
//! the following evictions pop them in order. A candidate updated since the scan is stale and
//! skipped (it is no longer among the oldest). Windows receive hits in event-time order, so
//! keys created after the scan are never older than the candidates: the popped key is exactly
//! the one a full scan would have chosen, ties broken by key. One scan of n keys serves n/8
//! evictions, and every stale candidate was made stale by a hit, so the cost per event stays
//! constant however far past the bound the key count is pushed.

use super::GroupKey;
use crate::event::EventTime;

/// Eviction candidates of one key map.
#[derive(Debug, Default)]
pub struct OldestKeys {
    /// (updated, key) of the oldest keys at the last scan, newest first (so `pop` is the oldest).
    candidates: Vec<(EventTime, GroupKey)>,
    /// Entries looked at by scans and pops: the work evictions cost, for tests and benches.
    pub work: u64,
}

impl OldestKeys {
    /// The least recently updated key among `keys`, where `current(key)` gives a key's
    /// present update time (`None` once the key is gone). `keys` is only walked when no
    /// candidate of the last scan is still current.
    pub fn pop<'k, I, F>(&mut self, keys: impl Fn() -> I, current: F) -> Option<GroupKey>
    where
        I: Iterator<Item = (&'k GroupKey, EventTime)>,
        F: Fn(&GroupKey) -> Option<EventTime>,
    {
        loop {
            if self.candidates.is_empty() {
                self.refill(keys());
                if self.candidates.is_empty() {
                    return None;
                }
            }
            let (time, key) = self.candidates.pop()?;
            self.work += 1;
            if current(&key) == Some(time) {
                return Some(key);
            }
        }
    }

    fn refill<'k>(&mut self, keys: impl Iterator<Item = (&'k GroupKey, EventTime)>) {
        let mut all: Vec<(EventTime, &GroupKey)> = keys.map(|(k, t)| (t, k)).collect();
        self.work += all.len() as u64;
        if all.is_empty() {
            return;
        }
        let take = (all.len() / 8).max(1);
        if take < all.len() {
            all.select_nth_unstable(take - 1);
            all.truncate(take);
        }
        // Newest first, so the oldest is popped first.
        all.sort_unstable_by(|a, b| b.cmp(a));
        self.candidates = all.into_iter().map(|(t, k)| (t, k.clone())).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn key(i: u64) -> GroupKey {
        Arc::from(format!("k{i:06}"))
    }

    /// Keys map to their update time; the oldest is always what a full scan would pick.
    #[test]
    fn pops_what_a_full_scan_would_pick() {
        let mut keys: HashMap<GroupKey, EventTime> = HashMap::new();
        let mut oldest = OldestKeys::default();
        let bound = 100;
        let mut time = 0i64;
        for i in 0..5_000u64 {
            time += (i % 3) as i64; // equal times happen: ties go by key
            let k = key(i % 700);
            if !keys.contains_key(&k) && keys.len() >= bound {
                let expected = keys
                    .iter()
                    .min_by_key(|(k, t)| (**t, (*k).clone()))
                    .map(|(k, _)| k.clone());
                let got = oldest.pop(
                    || keys.iter().map(|(k, t)| (k, *t)),
                    |k| keys.get(k).copied(),
                );
                assert_eq!(got, expected, "event {i}");
                keys.remove(&got.unwrap());
            }
            keys.insert(k, EventTime(time));
        }
    }

    /// The property the engine relies on: past the bound, eviction work per event is a small
    /// constant, not proportional to the number of keys.
    #[test]
    fn work_per_eviction_is_constant_past_the_bound() {
        for bound in [1_000usize, 10_000] {
            let mut keys: HashMap<GroupKey, EventTime> = HashMap::new();
            let mut oldest = OldestKeys::default();
            let events = 10 * bound as u64;
            let mut evictions = 0u64;
            for i in 0..events {
                let k = key(i);
                if keys.len() >= bound {
                    let gone = oldest
                        .pop(
                            || keys.iter().map(|(k, t)| (k, *t)),
                            |k| keys.get(k).copied(),
                        )
                        .unwrap();
                    keys.remove(&gone);
                    evictions += 1;
                }
                keys.insert(k, EventTime(i as i64));
            }
            let per_eviction = oldest.work as f64 / evictions as f64;
            assert!(
                per_eviction < 12.0,
                "bound {bound}: {per_eviction} entries looked at per eviction"
            );
        }
    }
}
