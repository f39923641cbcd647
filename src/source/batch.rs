//! The contract between sources and the engine: a [`Batch`] of records with where it came from
//! and how far it brings its source, the [`Input`]s the engine thread takes, and the [`Sink`]
//! sources write to. The engine side (the daemon's pipeline) implements nothing here; it only
//! receives, so sources never import the daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rules::RuleSet;

/// A source's labels: a few `name: value` pairs that say which cluster (or environment) its
/// events come from.
pub type SourceLabels = std::collections::BTreeMap<String, String>;
use crate::state::FileCheckpoint;

/// How far a batch brings its source.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A webhook batch: its ingest journal sequence number.
    Journal(u64),
    /// Lines of a file, ending at this checkpoint.
    File(FileCheckpoint),
    /// Stdin: nothing to resume.
    None,
}

/// How a batch's bytes are encoded. Sources hand over plain bytes (the webhook inflates
/// gzip itself, to check its size limit). A cluster worker hands over the events stream's
/// zstd bodies as they are: the engine thread inflates them into one buffer it reuses, next
/// to the decoder that reads them, so that a partition runs to completion on its own thread
/// (which is what lets partitions scale with cores) and no batch-sized buffer is allocated
/// per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    /// zstd, refused if it inflates to more than `max` bytes.
    Zstd {
        max: usize,
    },
}

/// What the batch's bytes are.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// One record: an Event, an EventList or an array (a webhook body).
    Document,
    /// Newline-separated records starting at this line and byte offset.
    Lines { first_line: u64, offset: u64 },
}

pub struct Batch {
    pub source: Arc<str>,
    /// Who sent it, when a source has several senders (the webhook: the sender's IP
    /// address). Each sender keeps its own event-time clock.
    pub origin: Option<Arc<str>>,
    pub data: Vec<u8>,
    pub encoding: Encoding,
    pub shape: Shape,
    pub progress: Progress,
    /// When the batch was received, for the latency histogram.
    pub received: Instant,
}

pub enum Input {
    Batch(Batch),
    /// The wall clock moved on (sent every second).
    Tick,
    Reload(Arc<RuleSet>),
    /// Everything before this has been processed; write the final snapshot and stop.
    Shutdown,
}

/// The age of the oldest batch the engine has received and not finished: the one it is
/// evaluating (queued batches are younger: the queue is first in, first out). Zero while the
/// engine waits for work. Any stall of the engine thread, whatever its cause (a costly rule, a
/// pathological input, a bug), shows here as a growing age: `/metrics` reports it and
/// `/readyz` fails past `engine.max_lag`.
#[derive(Clone)]
pub struct Backlog(Arc<BacklogClock>);

struct BacklogClock {
    base: Instant,
    /// Nanoseconds from `base` to the oldest unfinished batch's receipt, plus one; 0 when idle.
    since: AtomicU64,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog(Arc::new(BacklogClock {
            base: Instant::now(),
            since: AtomicU64::new(0),
        }))
    }
}

impl Backlog {
    /// The engine took up work received at `received`.
    pub fn start(&self, received: Instant) {
        let nanos = received.saturating_duration_since(self.0.base).as_nanos();
        let stamp = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.0.since.store(stamp, Ordering::Release);
    }

    /// The engine finished it and waits for the next.
    pub fn finish(&self) {
        self.0.since.store(0, Ordering::Release);
    }

    /// How long the oldest unfinished work has been waiting.
    pub fn age(&self) -> Duration {
        match self.0.since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            stamp => (self.0.base + Duration::from_nanos(stamp - 1)).elapsed(),
        }
    }
}

/// Sends to the engine; `false` when the engine is gone.
pub trait Sink {
    fn send(&mut self, input: Input) -> bool;
}

impl Sink for tokio::sync::mpsc::Sender<Input> {
    fn send(&mut self, input: Input) -> bool {
        self.blocking_send(input).is_ok()
    }
}
