//! Rate-limited logging for errors an outsider can cause at will: rejected records, refused
//! connections, failed handshakes, script errors.
//!
//! One WARN per bad item let a single 2 MB body of a million numbers write 224 MB of stderr,
//! and 16k failed handshakes wrote 16k lines: the log became the attack's amplifier and buried
//! what mattered. A [`LogGate`] lets the first few messages of a kind through in each period,
//! then only counts; the next message it lets through says how many were held back. Every
//! occurrence is still counted in the metrics by the caller, so nothing is lost from view.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admits at most `burst` log lines per `period` for one kind of message.
#[derive(Debug)]
pub struct LogGate {
    period: Duration,
    burst: u32,
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    period_start: Option<Instant>,
    admitted: u32,
    /// Messages held back since the last one admitted.
    held_back: u64,
}

impl LogGate {
    pub const fn new(burst: u32, period: Duration) -> LogGate {
        LogGate {
            period,
            burst,
            state: Mutex::new(GateState {
                period_start: None,
                admitted: 0,
                held_back: 0,
            }),
        }
    }

    /// Ten lines a minute: the default for per-item and per-connection errors.
    pub const fn per_minute() -> LogGate {
        LogGate::new(10, Duration::from_secs(60))
    }

    /// `Some(held_back)` when this message may be logged (with the number of messages of its
    /// kind held back since the previous one logged); `None` when it must be dropped.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let Ok(mut s) = self.state.lock() else {
            return Some(0);
        };
        if s.period_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.period)
        {
            s.period_start = Some(now);
            s.admitted = 0;
        }
        if s.admitted < self.burst {
            s.admitted += 1;
            Some(std::mem::take(&mut s.held_back))
        } else {
            s.held_back += 1;
            None
        }
    }

    /// Messages held back and not reported yet (for a summary line when the stream stops).
    pub fn take_held_back(&self) -> u64 {
        self.state
            .lock()
            .map(|mut s| std::mem::take(&mut s.held_back))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_period_then_counts() {
        let gate = LogGate::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let first: Vec<_> = (0..1000).map(|_| gate.admit_at(t0)).collect();
        assert_eq!(first.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(first[0], Some(0));
        // The next period's first line reports what was held back.
        assert_eq!(gate.admit_at(t0 + Duration::from_secs(61)), Some(997));
        assert_eq!(gate.admit_at(t0 + Duration::from_secs(62)), Some(0));
        for _ in 0..5 {
            gate.admit_at(t0 + Duration::from_secs(63));
        }
        assert_eq!(gate.take_held_back(), 4);
        assert_eq!(gate.take_held_back(), 0);
    }
}
