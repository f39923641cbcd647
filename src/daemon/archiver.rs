//! The archive writer: a thread of its own that writes every batch the engine thread has
//! evaluated into the archive's Parquet segments, so archiving never delays detection.
//!
//! No event is lost between the archive and a crash. Each sealed segment stores, in its
//! footer, where the sources stood after its last batch (an [`ArchivePosition`]: the ingest
//! journal's sequence number and each log file's offset). The ingest journal is compacted
//! only up to that position (see [`Archiver::start`]'s `on_sealed`), and a restart reads the
//! journal and the files again from there: what the engine had already evaluated goes to the
//! archive only.
//!
//! A write that fails (a full disk) stops archiving with an error log and
//! `auditwatch_archive_up 0`. Detection goes on: the journal keeps every batch since the last
//! sealed segment, and once it is full the webhook answers 503. After the cause is fixed, a
//! restart archives what the journal and the files hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archive::{Archive, ArchiveConfig, Retention};
use crate::metrics::Metrics;
use crate::source::Progress;
use crate::state::FileCheckpoint;

/// Where the sources stood after the newest archived batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchivePosition {
    /// Ingest journal records up to and including this one are archived.
    pub journal_seq: u64,
    /// Per file source (by source name): archived up to the checkpoint's offset.
    pub files: BTreeMap<String, FileCheckpoint>,
}

impl ArchivePosition {
    /// Reads the position an archive stored, if any. A position that does not parse is
    /// treated as none (and said so): the archive then starts from the snapshot's position.
    pub fn of(archive: &Archive) -> Option<ArchivePosition> {
        let text = archive.sealed_position()?;
        match serde_json::from_str(text) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(archive = %archive.dir().display(), error = %e, "the newest segment's source position does not parse; archiving resumes from the snapshot's position");
                None
            }
        }
    }
}

/// One evaluated batch, handed over to be archived: its events as rows, and where the
/// source stands after it.
pub struct ArchiveJob {
    pub source: Arc<str>,
    /// `None`: no event in the batch (it still moves the position on).
    pub rows: Option<arrow_array::RecordBatch>,
    /// The JSON the events came from.
    pub raw_bytes: u64,
    pub progress: Progress,
}

enum Msg {
    Job(ArchiveJob),
    /// Seal what is in progress and stop.
    Stop,
}

/// The way to the archive writer thread.
pub struct Archiver {
    tx: SyncSender<Msg>,
    thread: std::thread::JoinHandle<()>,
}

/// Batches queued for the archive writer; when it falls behind, the engine thread waits
/// (and the webhook's queue fills, then answers 429): archiving is not skipped.
const QUEUE: usize = 64;

/// How often retention runs.
const RETAIN_EVERY: Duration = Duration::from_secs(60);

/// Opens the configured archive (under the state directory unless set), signing with the
/// configured key. Partial segments a crash left are removed and logged.
/// Where the archive lives: `archive.dir`, else `STATE_DIR/archive`.
pub fn archive_dir(config: &ArchiveConfig, state_dir: &std::path::Path) -> std::path::PathBuf {
    config
        .dir
        .clone()
        .unwrap_or_else(|| state_dir.join("archive"))
}

pub fn open(config: &ArchiveConfig, state_dir: &std::path::Path) -> anyhow::Result<Archive> {
    use anyhow::Context as _;
    let dir = archive_dir(config, state_dir);
    let (mut archive, removed) = Archive::open(&dir, config.limits())
        .with_context(|| format!("opening the archive {}", dir.display()))?;
    for path in removed {
        tracing::info!(path = %path.display(), "removed an unsealed archive segment from before a restart; its events are archived again from the journal and the files");
    }
    if let Some(key) = &config.sign_key {
        let signer =
            crate::archive::manifest::Signer::from_file(key).map_err(anyhow::Error::msg)?;
        tracing::info!(key_id = signer.id(), "archive manifest entries are signed");
        archive.sign_with(signer);
    }
    Ok(archive)
}

impl Archiver {
    /// Starts the writer thread. `on_sealed(journal_seq)` is called after each sealed
    /// segment: journal records up to `journal_seq` are archived and may be compacted.
    ///
    /// The journal can only shed what is sealed, so past half of `journal.max_size` (the
    /// `journal` gauge and limit) the segment in progress is sealed early, at most once a
    /// second: a busy stream must not fill the journal while it waits for a segment's age.
    pub fn start(
        archive: Archive,
        position: ArchivePosition,
        retention: Retention,
        metrics: Arc<Metrics>,
        journal: (Arc<std::sync::atomic::AtomicU64>, u64),
        on_sealed: Box<dyn FnMut(u64) + Send>,
    ) -> std::io::Result<Archiver> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let mut writer = Writer {
            archive,
            position,
            retention,
            metrics,
            on_sealed,
            journal,
            last_seal: Instant::now(),
            seal_next: false,
            failed: false,
            pending_events: 0,
            last_retention: None,
        };
        let thread = std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Archiver { tx, thread })
    }

    /// Hands a batch over; waits while the writer's queue is full.
    pub fn submit(&self, job: ArchiveJob) {
        if self.tx.send(Msg::Job(job)).is_err() {
            tracing::error!(
                "the archive writer stopped; this batch is not archived (it is archived from the journal after a restart)"
            );
        }
    }

    /// Seals the segment in progress and waits for the writer to end.
    pub fn stop(self) {
        let _ = self.tx.send(Msg::Stop);
        drop(self.tx);
        let _ = self.thread.join();
    }
}

struct Writer {
    archive: Archive,
    position: ArchivePosition,
    retention: Retention,
    metrics: Arc<Metrics>,
    on_sealed: Box<dyn FnMut(u64) + Send>,
    journal: (Arc<std::sync::atomic::AtomicU64>, u64),
    last_seal: Instant,
    /// Seal after the batch in hand (see `write`).
    seal_next: bool,
    /// A write failed: nothing more is written until a restart.
    failed: bool,
    /// Events appended since the metric was last moved.
    pending_events: u64,
    last_retention: Option<Instant>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) {
        self.metrics.archive_ready(true);
        let (segments, bytes) = self.archive.sealed();
        self.metrics
            .archive_sealed(self.archive.head(), segments, bytes);
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Msg::Job(job)) => self.write(job),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.seal(false);
            self.retain();
        }
        self.seal(true);
        if !self.failed {
            tracing::info!(head = self.archive.head(), "archive sealed at shutdown");
        }
    }

    fn fail(&mut self, what: &str, e: &crate::archive::ArchiveError) {
        self.failed = true;
        self.metrics.archive_failed();
        tracing::error!(error = %e, journal_seq = self.position.journal_seq, "{what}: archiving stopped (auditwatch_archive_up 0). Detection goes on; the ingest journal keeps every batch since the last sealed segment and the webhook answers 503 once it is full. Fix the cause (free disk space) and restart: the restart archives what the journal and the files hold");
    }

    fn write(&mut self, job: ArchiveJob) {
        if self.failed {
            return;
        }
        let events = job.rows.as_ref().map_or(0, |r| r.num_rows() as u64);
        if let Some(rows) = &job.rows
            && let Err(e) = self.archive.append_batch(rows, job.raw_bytes)
        {
            self.fail("cannot write the archive segment", &e);
            return;
        }
        self.pending_events += events;
        match job.progress {
            Progress::Journal(seq) => {
                self.position.journal_seq = self.position.journal_seq.max(seq);
            }
            Progress::File(cp) => {
                let previous = self.position.files.insert(job.source.to_string(), cp);
                // A file seen for the first time, or the next file after a rotation: seal at
                // once, so a restart finds a position in the file it was in (the follower
                // finds a rotated file by its inode) rather than in a later one.
                if previous.is_none_or(|p| (p.dev, p.ino) != (cp.dev, cp.ino)) {
                    self.seal_next = true;
                }
            }
            Progress::None => {}
        }
    }

    /// Seals the segment in progress when it is due (or `now`), with the position.
    fn seal(&mut self, now: bool) {
        if self.pending_events > 0 {
            self.metrics
                .archived(std::mem::take(&mut self.pending_events));
        }
        let journal_pressure = self.archive.in_progress() > 0
            && self.last_seal.elapsed() >= Duration::from_secs(1)
            && self.journal.0.load(std::sync::atomic::Ordering::Relaxed) > self.journal.1 / 2;
        let now = now || std::mem::take(&mut self.seal_next);
        if self.failed || !(now || journal_pressure || self.archive.is_due()) {
            return;
        }
        self.last_seal = Instant::now();
        match serde_json::to_string(&self.position) {
            Ok(text) => self.archive.set_position(text),
            Err(e) => tracing::error!(error = %e, "cannot encode the archive position"),
        }
        match self.archive.seal() {
            Ok(Some(sealed)) => {
                let (segments, bytes) = self.archive.sealed();
                self.metrics
                    .archive_sealed(self.archive.head(), segments, bytes);
                // The anchor: the chain head in the log (and in the metrics above), outside
                // the archive directory, for `auditwatch verify --expect-head`.
                tracing::info!(
                    segment = %sealed.path.display(),
                    events = sealed.events,
                    bytes = sealed.bytes,
                    head = self.archive.head(),
                    "archive segment sealed"
                );
                (self.on_sealed)(self.position.journal_seq);
            }
            Ok(None) => {}
            Err(e) => self.fail("cannot seal the archive segment", &e),
        }
    }

    fn retain(&mut self) {
        if self.failed
            || self
                .last_retention
                .is_some_and(|t| t.elapsed() < RETAIN_EVERY)
        {
            return;
        }
        self.last_retention = Some(Instant::now());
        match self.archive.retire(self.retention) {
            Ok(removed) if !removed.is_empty() => {
                let (_, bytes) = self.archive.sealed();
                self.metrics.archive_retired(removed.len() as u64, bytes);
                tracing::info!(
                    segments = removed.len(),
                    head = self.archive.head(),
                    "archive retention removed the oldest segments (recorded in the manifest)"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "archive retention failed; it is tried again in a minute")
            }
        }
    }
}
