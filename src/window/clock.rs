//! Event time: the newest time each source has reached, and the watermark derived from them.
//!
//! Each source (a log file, one apiserver sending to a webhook) moves its own clock: the newest
//! event time it delivered. Its watermark is that minus its lateness (how far out of order its
//! events may arrive). The engine's watermark is the smallest watermark among the sources
//! that are active, and never moves back. So a source that runs ahead (or sends a time far in
//! the future) does not push the others' events into lateness, and a source that goes quiet
//! is declared idle by the daemon (after `engine.idle_after` of wall time) and stops holding
//! the others back; when it speaks again it is active again, and whatever it sends older than
//! the watermark then is late (and counted against it).
//!
//! A live daemon also sets a ceiling (the wall clock plus a small skew): an event stamped in
//! the future is evaluated at its time but moves no clock past the ceiling, so one bad or
//! hostile timestamp cannot make everyone else's events late.

use std::sync::Arc;

use crate::event::{EventTime, Span};

/// Most sources tracked apart; past it, new ones share the first clock (a sender cannot grow
/// this by connecting from many addresses).
pub const MAX_SOURCES: usize = 256;

#[derive(Debug, Clone)]
struct SourceClock {
    name: Arc<str>,
    lateness: Span,
    newest: EventTime,
    idle: bool,
}

impl SourceClock {
    fn watermark(&self) -> Option<EventTime> {
        (!self.idle && self.newest != EventTime::MIN)
            .then(|| self.newest.saturating_sub(self.lateness))
    }
}

/// The engine's event time.
#[derive(Debug, Clone)]
pub struct EventClock {
    sources: Vec<SourceClock>,
    /// The source whose events are being processed.
    current: usize,
    watermark: EventTime,
    newest: EventTime,
    /// No clock moves past this (the daemon's wall clock plus skew); none in replays.
    ceiling: Option<EventTime>,
}

impl EventClock {
    /// A clock with one source (replays, tests) of `lateness`.
    pub fn new(lateness: Span) -> EventClock {
        EventClock {
            sources: vec![SourceClock {
                name: Arc::from(""),
                lateness,
                newest: EventTime::MIN,
                idle: false,
            }],
            current: 0,
            watermark: EventTime::MIN,
            newest: EventTime::MIN,
            ceiling: None,
        }
    }

    /// Clocks move no further than `ceiling` from now on (see the module docs).
    pub fn set_ceiling(&mut self, ceiling: EventTime) {
        self.ceiling = Some(ceiling);
    }

    /// The events that follow come from `name`, whose events may arrive `lateness` out of
    /// order. A source seen for the first time starts a clock of its own; an idle one is
    /// active again.
    pub fn select(&mut self, name: &str, lateness: Span) {
        let found = self.sources.iter().position(|s| &*s.name == name);
        let index = match found {
            Some(i) => i,
            None if self.sources.len() < MAX_SOURCES => {
                self.sources.push(SourceClock {
                    name: Arc::from(name),
                    lateness,
                    newest: EventTime::MIN,
                    idle: false,
                });
                self.sources.len() - 1
            }
            None => 0,
        };
        let source = &mut self.sources[index];
        source.lateness = lateness;
        source.idle = false;
        self.current = index;
    }

    /// Records that the current source reached `time`. Returns whether the watermark moved.
    pub fn observe(&mut self, time: EventTime) -> bool {
        let time = self.ceiling.map_or(time, |c| time.min(c));
        let source = &mut self.sources[self.current];
        if time <= source.newest {
            return false;
        }
        source.newest = time;
        if time > self.newest {
            self.newest = time;
        }
        self.recompute()
    }

    /// `name` has been quiet: it no longer holds the watermark back. Returns whether the
    /// watermark moved.
    pub fn set_idle(&mut self, name: &str) -> bool {
        match self.sources.iter_mut().find(|s| &*s.name == name) {
            Some(s) if !s.idle => {
                s.idle = true;
                self.recompute()
            }
            _ => false,
        }
    }

    /// Moves the watermark to at least `to` (the daemon does this when every source is quiet,
    /// so windows close and absence rules fire).
    pub fn advance_to(&mut self, to: EventTime) {
        if to > self.watermark {
            self.watermark = to;
        }
        if to > self.newest {
            self.newest = to;
        }
    }

    /// Restores the times of a snapshot (never moving back).
    pub fn restore(&mut self, newest: EventTime, watermark: EventTime) {
        self.newest = self.newest.max(newest);
        self.watermark = self.watermark.max(watermark);
    }

    /// Requests before this time are late.
    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    /// Each source's name, newest event time and watermark (`None` while idle); sources that
    /// delivered nothing yet are left out.
    pub fn sources(&self) -> impl Iterator<Item = (&str, EventTime, Option<EventTime>)> {
        self.sources
            .iter()
            .filter(|s| s.newest != EventTime::MIN)
            .map(|s| (&*s.name, s.newest, s.watermark()))
    }

    /// The newest event time any source reached.
    pub fn newest(&self) -> EventTime {
        self.newest
    }

    /// The largest lateness among the sources (how far behind the newest time the watermark
    /// is kept when the whole stream is quiet).
    pub fn max_lateness(&self) -> Span {
        self.sources
            .iter()
            .map(|s| s.lateness)
            .max_by_key(|s| s.0)
            .unwrap_or(Span(0))
    }

    fn recompute(&mut self) -> bool {
        let lowest = match self.sources.as_slice() {
            [only] => only.watermark(),
            many => many.iter().filter_map(SourceClock::watermark).min(),
        };
        match lowest {
            Some(w) if w > self.watermark => {
                self.watermark = w;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> EventTime {
        EventTime::from_secs(secs)
    }

    #[test]
    fn the_slowest_active_source_sets_the_watermark() {
        let lateness = Span::from_secs(60);
        let mut clock = EventClock::new(lateness);
        clock.select("b", lateness);
        clock.observe(at(900));
        clock.select("a", lateness);
        clock.observe(at(1000));
        assert_eq!(clock.watermark(), at(840));
        // A source running far ahead does not push the others into lateness.
        clock.select("a", lateness);
        clock.observe(at(100_000));
        assert_eq!(clock.watermark(), at(840));
        // Once b is idle it no longer holds the watermark back.
        assert!(clock.set_idle("b"));
        assert_eq!(clock.watermark(), at(100_000 - 60));
        // b speaks again: active, but the watermark does not move back.
        clock.select("b", lateness);
        clock.observe(at(950));
        assert_eq!(clock.watermark(), at(100_000 - 60));
    }

    #[test]
    fn a_time_in_the_future_moves_no_clock_past_the_ceiling() {
        let lateness = Span::from_secs(60);
        let mut clock = EventClock::new(lateness);
        clock.set_ceiling(at(1010));
        clock.observe(at(1000));
        clock.observe(at(1_000_000));
        assert_eq!((clock.newest(), clock.watermark()), (at(1010), at(950)));
    }

    #[test]
    fn sources_have_their_own_lateness_and_a_bounded_count() {
        let mut clock = EventClock::new(Span::from_secs(60));
        clock.select("eks", Span::from_secs(900));
        clock.observe(at(10_000));
        assert_eq!(clock.watermark(), at(9_100));
        for i in 0..(MAX_SOURCES * 2) {
            clock.select(
                &format!("10.0.{}.{}", i / 256, i % 256),
                Span::from_secs(60),
            );
        }
        assert_eq!(clock.sources.len(), MAX_SOURCES);
    }
}
