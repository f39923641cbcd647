//! The engine thread: the one place events are evaluated. Sources hand it batches through a
//! bounded channel (that bound is the daemon's backpressure); it decodes, evaluates, emits
//! alerts, remembers how far each source got, and writes state snapshots.
//!
//! It is a plain thread, not a task: evaluation is CPU work and must not stall the runtime
//! that serves the webhook. Snapshots are captured here (a consistent copy of the state) but
//! serialised and fsynced by a writer thread, so writing one never stalls evaluation.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::alert::Alert;
use crate::alert::storm::StormGuard;
use crate::config::StdoutFormat;
use crate::daemon::archiver::{ArchiveJob, Archiver};
use crate::engine::Engine;
use crate::event::{EventTime, Position, decode_each};
use crate::log_gate::LogGate;
use crate::metrics::{Metrics, RuleDeltas};
use crate::source::{Backlog, Batch, Encoding, Input, Progress, Shape};
use crate::state::{FileCheckpoint, SNAPSHOT_VERSION, SharedAlertJournal, StateDir, StateSnapshot};

/// What the engine thread tells the rest of the daemon.
pub enum Feedback {
    /// Both snapshots kept on disk cover journal records up to this sequence number: the
    /// journal may compact up to it.
    Snapshotted { journal_seq: u64 },
    /// The archive sealed every journal record up to this sequence number.
    Archived { journal_seq: u64 },
}

pub struct PipelineOptions {
    pub stdout: StdoutFormat,
    /// The per-rule firing rate limit.
    pub storm: crate::alert::storm::StormConfig,
    pub snapshot_every: Duration,
    /// Wall time after which a quiet sender stops holding event time back, and after which a
    /// quiet stream moves event time on by itself.
    pub idle_after: Duration,
    /// The ingest journal's size; past half of `journal_max` snapshots come every second
    /// so the journal can compact before the webhook has to refuse batches.
    pub journal_size: Arc<AtomicU64>,
    pub journal_max: u64,
    /// Alert delivery; alerts go there once they are in the alert journal.
    pub notify: Option<crate::notify::Submitter>,
    /// Each source's input format and lateness, by source name.
    pub sources: std::collections::HashMap<String, SourceTiming>,
    /// Names of the labels sources carry (`sources[].labels`), for the per-label alert metric.
    pub source_label_keys: Vec<String>,
    /// Stamped with the work in hand, for `/metrics` and `/readyz`.
    pub backlog: Backlog,
    /// Where every evaluated batch goes to be kept (none: archiving is off).
    pub archiver: Option<Archiver>,
    /// A second, shared copy of the alert journal (cluster mode). With one, alerts go to it
    /// instead of to `notify`: it hands them to delivery once it holds them.
    pub replica: Option<Box<dyn AlertReplica>>,
}

/// Keeps a copy of each alert written to the alert journal somewhere other processes read,
/// and hands them to delivery once they are kept.
pub trait AlertReplica: Send {
    /// Alerts just written to the alert journal at `offsets`; `end` is its length after them.
    /// Blocks only while the replica is far behind.
    fn replicate(&mut self, alerts: &[Alert], offsets: &[u64], end: u64);
}

/// How a source's events are read, how late they may arrive, and the labels its alerts carry.
#[derive(Debug, Clone)]
pub struct SourceTiming {
    pub format: crate::event::InputFormat,
    pub lateness: crate::event::Span,
    /// The source's labels as a group-key suffix ([`crate::window::source_tag`]).
    pub tag: Arc<str>,
}

pub struct Pipeline {
    engine: Engine,
    /// The tag of a source without labels.
    no_tag: Arc<str>,
    /// Folds each rule's alerts past its rate limit into one summary.
    storm: StormGuard,
    alerts: SharedAlertJournal,
    metrics: Arc<Metrics>,
    opts: PipelineOptions,
    journal_seq: u64,
    files: BTreeMap<String, FileCheckpoint>,
    /// IDs of alerts already in the alert journal that a replay after restart may produce
    /// again; each is suppressed once.
    already_sent: HashSet<String>,
    /// Per-rule counts last published to the metrics (see `publish_rule_stats`).
    published: std::collections::HashMap<Arc<str>, [u64; 9]>,
    /// Rules seen over their time budget since the last report, and the gate of that report.
    over_budget: std::collections::BTreeSet<Arc<str>>,
    budget_log: LogGate,
    /// The audited stream by verb and code class, flushed to the metrics per batch.
    tally: crate::metrics::StreamTally,
    last_snapshot: Instant,
    /// Wall time and event time of the newest event, to move event time on when idle.
    newest: Option<(Instant, EventTime)>,
    out: Vec<Alert>,
    writer: Option<SnapshotWriter>,
    snapshot_after_batch: bool,
    /// Rejected records and script errors are counted in full, logged a few a minute.
    rejected_log: LogGate,
    /// Inflates compressed batches (cluster mode) into a buffer kept between batches.
    inflater: crate::cluster::Inflater,
    script_error_log: LogGate,
    late_log: LogGate,
    /// Each sender's event-time clock (a source, or a source and the sender's address): when
    /// its last batch came, and whether the engine was told it is idle.
    senders: std::collections::HashMap<Arc<str>, (Instant, bool)>,
    /// Per file source, after a restart that resumed the file at the archive's (earlier)
    /// position: lines before this checkpoint were evaluated already and go to the archive
    /// only.
    archive_only: BTreeMap<String, FileCheckpoint>,
    /// The archive's rows of the batch in hand (archiving on), built from the events the
    /// engine decodes anyway: the archive writer only encodes and compresses them.
    rows: Option<crate::archive::Rows>,
    /// The alert chain head last published (metric and log), and when.
    published_head: (String, Option<Instant>),
}

/// How far ahead of this host's clock an event's time may move event time (clock skew
/// between the apiservers and this host). Later times are evaluated as they are but move no
/// clock further: one bad or hostile timestamp must not make every other event late.
pub const MAX_CLOCK_SKEW: std::time::Duration = Duration::from_secs(10);

fn wall_clock_ceiling() -> EventTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        + MAX_CLOCK_SKEW;
    EventTime(i64::try_from(now.as_nanos()).unwrap_or(i64::MAX))
}

/// Senders tracked apart, at most (the engine's bound); past it, a source's new senders
/// share the source's clock.
const MAX_SENDERS: usize = crate::window::MAX_SOURCES / 2;

/// Serialises and writes snapshots on its own thread, one at a time.
struct SnapshotWriter {
    tx: std::sync::mpsc::SyncSender<StateSnapshot>,
    /// Set when a snapshot is handed over, cleared when it is written.
    busy: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl SnapshotWriter {
    /// `on_disk` is the journal sequence number the snapshot already on disk covers: the
    /// journal is compacted only up to the older of the two snapshots kept, so that the
    /// previous one plus the journal can stand in for a damaged newest one.
    fn start(
        state: StateDir,
        metrics: Arc<Metrics>,
        feedback: mpsc::UnboundedSender<Feedback>,
        on_disk: u64,
    ) -> std::io::Result<SnapshotWriter> {
        // At most one snapshot in flight (see `busy`): capturing another while one is being
        // written would only produce one that is overtaken.
        let (tx, rx) = std::sync::mpsc::sync_channel::<StateSnapshot>(1);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::clone(&busy);
        let thread = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let mut previous = on_disk;
                for mut snap in rx {
                    let started = Instant::now();
                    snap.engine.canonicalize();
                    match state.save_snapshot(&snap) {
                        Ok(bytes) => {
                            metrics.snapshot_written(true, started.elapsed().as_secs_f64());
                            tracing::debug!(bytes, journal_seq = snap.journal_seq, took = ?started.elapsed(), "snapshot written");
                            let _ = feedback.send(Feedback::Snapshotted {
                                journal_seq: previous.min(snap.journal_seq),
                            });
                            previous = snap.journal_seq;
                        }
                        Err(e) => {
                            metrics.snapshot_written(false, started.elapsed().as_secs_f64());
                            tracing::error!(error = %e, "cannot write the state snapshot; the journal keeps growing until it can");
                        }
                    }
                    done.store(false, Ordering::Release);
                }
            })?;
        Ok(SnapshotWriter { tx, busy, thread })
    }
}

impl Pipeline {
    /// The rule set the engine starts with.
    pub fn rules(&self) -> Arc<crate::rules::RuleSet> {
        Arc::clone(self.engine.rules())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        state: StateDir,
        alerts: SharedAlertJournal,
        metrics: Arc<Metrics>,
        opts: PipelineOptions,
        restored: Option<&StateSnapshot>,
        feedback: mpsc::UnboundedSender<Feedback>,
    ) -> std::io::Result<Pipeline> {
        let (journal_seq, files, already_sent) = {
            let alerts = alerts
                .lock()
                .map_err(|_| std::io::Error::other("alert journal lock poisoned"))?;
            match restored {
                Some(s) => (
                    s.journal_seq,
                    s.files.clone(),
                    alerts.ids_since(s.alert_journal_len)?,
                ),
                // No snapshot: every alert in the journal may come again from a full replay.
                None => (0, BTreeMap::new(), alerts.ids_since(0)?),
            }
        };
        metrics.set_rules_loaded(engine.rules().rules.len());
        let (state_for_writer, metrics_for_writer) = (state.clone(), Arc::clone(&metrics));
        Ok(Pipeline {
            no_tag: Arc::from(""),
            storm: StormGuard::new(&opts.storm),
            engine,
            alerts,
            metrics,
            journal_seq,
            files,
            already_sent,
            published: Default::default(),
            over_budget: Default::default(),
            budget_log: LogGate::per_minute(),
            tally: Default::default(),
            last_snapshot: Instant::now(),
            newest: None,
            out: Vec::new(),
            writer: Some(SnapshotWriter::start(
                state_for_writer,
                metrics_for_writer,
                feedback,
                journal_seq,
            )?),
            snapshot_after_batch: false,
            rejected_log: LogGate::per_minute(),
            inflater: Default::default(),
            script_error_log: LogGate::per_minute(),
            late_log: LogGate::per_minute(),
            senders: Default::default(),
            archive_only: BTreeMap::new(),
            rows: opts.archiver.is_some().then(crate::archive::Rows::new),
            published_head: (String::new(), None),
            opts,
        })
    }

    /// Where each file source resumes: the snapshot's checkpoint, or the archive's when the
    /// archive is behind (lines in between go to the archive only). A file the archive has
    /// no position in is archived from its start. `None`: archiving is off.
    pub fn resume_from(
        &mut self,
        archived: Option<&BTreeMap<String, FileCheckpoint>>,
    ) -> BTreeMap<String, FileCheckpoint> {
        let mut resume = self.files.clone();
        let Some(archived) = archived else {
            return resume;
        };
        for (name, evaluated) in &self.files {
            let from_start = FileCheckpoint {
                dev: evaluated.dev,
                ino: evaluated.ino,
                ..FileCheckpoint::default()
            };
            let kept = archived.get(name).unwrap_or(&from_start);
            // Behind in the same file, or still in a file rotated away since (the follower
            // finds it by its inode; everything in it was evaluated).
            let same_file = (kept.dev, kept.ino) == (evaluated.dev, evaluated.ino);
            if !same_file || kept.offset < evaluated.offset {
                resume.insert(name.clone(), *kept);
                self.archive_only.insert(name.clone(), *evaluated);
            }
        }
        resume
    }

    /// A journal batch the engine already evaluated (the snapshot covers it) that the archive
    /// does not hold yet: decoded for the archive only.
    pub fn archive_only(&mut self, batch: Batch) {
        let Some(rows) = self.rows.as_mut() else {
            return;
        };
        let format = self
            .opts
            .sources
            .get(&*batch.source)
            .map(|t| t.format)
            .unwrap_or_default();
        let text = match std::str::from_utf8(&batch.data) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&batch.data[..e.valid_up_to()]).unwrap_or_default(),
        };
        let position = Position {
            source: batch.source.clone(),
            line: 1,
            offset: 0,
            item: None,
        };
        let source = &*batch.source;
        decode_each(format, &position, text, &mut |_| {}, &mut |ev| {
            rows.push(ev, source)
        });
        self.hand_to_archive(batch.source, batch.data.len(), batch.progress);
    }

    /// Hands the rows of the batch just decoded to the archive writer, with where the source
    /// stands after it.
    fn hand_to_archive(&mut self, source: Arc<str>, raw_bytes: usize, progress: Progress) {
        let (Some(archiver), Some(rows)) = (&self.opts.archiver, self.rows.as_mut()) else {
            return;
        };
        match rows.take_batch() {
            Ok(rows) => archiver.submit(ArchiveJob {
                source,
                rows,
                raw_bytes: raw_bytes as u64,
                progress,
            }),
            Err(e) => tracing::error!(error = %e, "cannot build the archive's rows for this batch"),
        }
    }

    pub fn journal_seq(&self) -> u64 {
        self.journal_seq
    }

    /// Runs until `Shutdown` or until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        while let Some(input) = rx.blocking_recv() {
            self.metrics.set_queue_depth("engine", rx.len());
            match &input {
                Input::Batch(batch) => self.opts.backlog.start(batch.received),
                _ => self.opts.backlog.start(Instant::now()),
            }
            match input {
                Input::Batch(batch) => self.process(batch),
                Input::Tick => self.tick(),
                Input::Reload(rules) => {
                    let n = rules.rules.len();
                    let names: Vec<(&str, &str)> = rules
                        .rules
                        .iter()
                        .map(|r| (&*r.name, r.severity.as_str()))
                        .collect();
                    self.metrics.prime_rules(&names);
                    drop(names);
                    self.engine.replace_rules(rules);
                    self.metrics.set_rules_loaded(n);
                    tracing::info!(
                        rules = n,
                        "rules reloaded; window state of unchanged rules kept"
                    );
                }
                Input::Shutdown => break,
            }
            self.opts.backlog.finish();
        }
        self.final_snapshot();
        tracing::info!(
            journal_seq = self.journal_seq,
            "engine stopped; final snapshot written"
        );
    }

    /// Processes one batch (also used to replay the journal at start-up).
    pub fn process(&mut self, batch: Batch) {
        let source = batch.source.clone();
        let counters = self.metrics.source(&source);
        let (received, decoded, rejected) =
            (&counters.received, &counters.decoded, &counters.rejected);
        let mut inflater = std::mem::take(&mut self.inflater);
        let data = match batch.encoding {
            Encoding::Plain => Ok(&batch.data[..]),
            Encoding::Zstd { max } => inflater.inflate(&batch.data, max),
        };
        let data = match data {
            Ok(d) => d,
            Err(why) => {
                // Not from a receiver of ours (they compress what they accepted, within the
                // limit): skipped whole, and the partition goes on.
                rejected.inc();
                if let Some(held_back) = self.rejected_log.admit() {
                    let sequence = match batch.progress {
                        Progress::Journal(seq) => Some(seq),
                        _ => None,
                    };
                    tracing::warn!(source = %source, sequence, why, held_back, "a batch in the events stream cannot be read; skipped");
                }
                if let Progress::Journal(seq) = batch.progress {
                    self.journal_seq = self.journal_seq.max(seq);
                }
                self.inflater = inflater;
                return;
            }
        };
        let text = match std::str::from_utf8(data) {
            Ok(t) => t,
            Err(e) => {
                // Keep the valid prefix; the rest is reported like any bad record.
                let valid = e.valid_up_to();
                if let Some(held_back) = self.rejected_log.admit() {
                    tracing::warn!(source = %source, byte = valid, held_back, "input is not UTF-8 from this byte on; skipping the rest of the batch");
                }
                rejected.inc();
                std::str::from_utf8(&data[..valid]).unwrap_or_default()
            }
        };
        let timing = self.opts.sources.get(&*source);
        let format = timing.map(|t| t.format).unwrap_or_default();
        let lateness = timing.map_or(crate::engine::LIVE_LATENESS, |t| t.lateness);
        match timing {
            Some(t) => self.engine.select_source_tag(&t.tag),
            None => self.engine.select_source_tag(&self.no_tag),
        }
        let sender = self.sender(&source, batch.origin.as_deref());
        self.engine.select_source(&sender, lateness);
        self.engine.set_time_ceiling(wall_clock_ceiling());
        let engine = &mut self.engine;
        let out = &mut self.out;
        let mut newest = None;
        let tally = &mut self.tally;
        // A document (a webhook batch) counts its items as records, a file its lines.
        let per_item = matches!(batch.shape, Shape::Document);
        // Lines before this offset were evaluated before a restart (see `resume_from`); a
        // file before the one the snapshot stopped in was evaluated whole.
        let evaluated_below = match (&batch.progress, self.archive_only.get(&*source)) {
            (Progress::File(cp), Some(done)) if (cp.dev, cp.ino) == (done.dev, done.ino) => {
                done.offset
            }
            (Progress::File(_), Some(_)) => u64::MAX,
            _ => 0,
        };
        // Off for lines evaluated before a restart: they are decoded for the archive only.
        let evaluate = std::cell::Cell::new(true);
        let rows = &mut self.rows;
        let mut on_event = |ev: &crate::event::AuditEvent<'_>| {
            if let Some(rows) = rows.as_mut() {
                rows.push(ev, &source);
            }
            if !evaluate.get() {
                return;
            }
            decoded.inc();
            if per_item {
                received.inc();
            }
            tally.count(ev);
            if let Some(t) = ev.time {
                newest = Some(newest.map_or(t, |n: EventTime| n.max(t)));
            }
            engine.process(ev, out);
        };
        let rejected_log = &self.rejected_log;
        let mut on_error = |e: crate::event::DecodeError| {
            if !evaluate.get() {
                return;
            }
            rejected.inc();
            if per_item {
                received.inc();
            }
            if let Some(held_back) = rejected_log.admit() {
                tracing::warn!(error = %e, held_back, "rejected record (counted in auditwatch_events_rejected_total; a few are logged per minute)");
            }
        };
        match batch.shape {
            Shape::Document => {
                let position = Position {
                    source: source.clone(),
                    line: 1,
                    offset: 0,
                    item: None,
                };
                decode_each(format, &position, text, &mut on_error, &mut on_event);
            }
            Shape::Lines { first_line, offset } => {
                let mut at = offset;
                for (line_no, line) in (first_line..).zip(text.split_inclusive('\n')) {
                    let record = line.trim_end_matches(['\n', '\r']);
                    evaluate.set(at >= evaluated_below);
                    if !record.trim().is_empty() {
                        if evaluate.get() {
                            received.inc();
                        }
                        let position = Position {
                            source: source.clone(),
                            line: line_no,
                            offset: at,
                            item: None,
                        };
                        decode_each(format, &position, record, &mut on_error, &mut on_event);
                    }
                    at += line.len() as u64;
                }
            }
        }
        self.metrics.record_stream(&mut self.tally);
        let (late, named) = self.engine.take_late();
        if late > 0 {
            counters.late.inc_by(late);
            if let (Some(first), Some(held_back)) = (named.first(), self.late_log.admit()) {
                tracing::warn!(source = %sender, audit_id = %first.audit_id, time = %first.time, watermark = %first.watermark, late, held_back, "events arrived later than the lateness and are left out of windows (counted in auditwatch_late_events_total; raise the source's lateness if this is how it delivers)");
            }
        }
        if let Some(t) = newest {
            self.newest = Some((Instant::now(), t.min(wall_clock_ceiling())));
            if let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
                let lag = now.as_secs_f64() - t.0 as f64 / 1e9;
                self.metrics.set_event_lag(lag);
            }
        }
        match &batch.progress {
            Progress::Journal(seq) => self.journal_seq = self.journal_seq.max(*seq),
            Progress::File(cp) if cp.offset < evaluated_below => {}
            Progress::File(cp) => {
                let cp = *cp;
                if evaluated_below > 0 && evaluated_below < u64::MAX {
                    self.archive_only.remove(&*source);
                }
                let previous = self.files.insert(source.to_string(), cp);
                // A file seen for the first time, or a new file after a rotation: persist its
                // identity at once, so that a crash before the next periodic snapshot still
                // finds the file (by inode) to resume in, even if it is rotated meanwhile.
                if previous.is_none_or(|p| (p.dev, p.ino) != (cp.dev, cp.ino)) {
                    self.snapshot_after_batch = true;
                }
            }
            Progress::None => {}
        }
        self.inflater = inflater;
        self.emit();
        if std::mem::take(&mut self.snapshot_after_batch) {
            self.snapshot();
        }
        self.metrics
            .batch_processed(&source, batch.received.elapsed().as_secs_f64());
        self.hand_to_archive(source, batch.data.len(), batch.progress);
        for e in self.engine.take_script_errors() {
            self.metrics.script_error(&e.rule);
            if let Some(held_back) = self.script_error_log.admit() {
                tracing::warn!(rule = %e.rule, audit_id = %e.audit_id, error = %e.message, held_back, "script error (counted in auditwatch_script_errors_total; a few are logged per minute)");
            }
        }
    }

    /// The event-time clock a batch of `source` from `origin` moves, marked active.
    fn sender(&mut self, source: &Arc<str>, origin: Option<&str>) -> Arc<str> {
        let own = origin.map(|o| format!("{source}@{o}"));
        let name: Arc<str> = match own {
            Some(own) if self.senders.contains_key(own.as_str()) => Arc::from(own),
            Some(own) if self.senders.len() < MAX_SENDERS => Arc::from(own),
            _ => Arc::clone(source),
        };
        self.senders
            .insert(Arc::clone(&name), (Instant::now(), false));
        name
    }

    fn tick(&mut self) {
        // A sender quiet for `idle_after` (one apiserver with nothing to say, a log nobody
        // writes) stops holding event time back for the others.
        let idle_after = self.opts.idle_after;
        for (name, (last, idle)) in &mut self.senders {
            if !*idle && last.elapsed() >= idle_after {
                *idle = true;
                self.engine.source_idle(name, &mut self.out);
            }
        }
        // A quiet stream: move event time on by the wall time that passed since the newest
        // event, so windows close and absence rules fire.
        if let Some((wall, event)) = self.newest {
            let idle = wall.elapsed();
            if idle >= self.opts.idle_after {
                let (_, lateness) = self.engine.newest();
                let to = event
                    .saturating_add(crate::event::Span(
                        idle.as_nanos().min(i64::MAX as u128) as i64
                    ))
                    .saturating_sub(lateness);
                self.engine.advance_watermark(to, &mut self.out);
            }
        }
        self.emit();
        self.metrics.set_window_keys(self.engine.window_keys());
        self.metrics.set_window_held(self.engine.held());
        self.publish_rule_stats();
        self.publish_alert_head(false);
        // Under journal pressure snapshot every second (not every batch: compaction follows
        // each write asynchronously).
        let journal_pressure = self.opts.journal_size.load(Ordering::Relaxed)
            > self.opts.journal_max / 2
            && self.last_snapshot.elapsed() >= Duration::from_secs(1);
        if self.last_snapshot.elapsed() >= self.opts.snapshot_every || journal_pressure {
            self.snapshot();
        }
    }

    /// Publishes the alert chain's head (the anchor for `verify --expect-alerts-head`) when it
    /// moved, at most once a minute (or `now`): in the metrics and in the log.
    fn publish_alert_head(&mut self, now: bool) {
        let due = now
            || self
                .published_head
                .1
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if !due {
            return;
        }
        let Ok(journal) = self.alerts.lock() else {
            return;
        };
        let head = journal.chain_head();
        if head != self.published_head.0 {
            self.metrics.alert_chain_head(head);
            tracing::info!(head, "alert journal chain head");
            self.published_head = (head.to_owned(), Some(Instant::now()));
        }
    }

    /// Adds what each rule counted since the last call to its metrics. A reload starts a
    /// rule's counts again; a count below the published one is taken as such a restart.
    fn publish_rule_stats(&mut self) {
        for (name, newest, watermark) in self.engine.source_clocks() {
            self.metrics.set_source_clock(
                name,
                newest.0 as f64 / 1e9,
                watermark.map(|w| w.0 as f64 / 1e9),
            );
        }
        for (rule, stats) in self.engine.rule_stats() {
            let now = [
                stats.prefiltered,
                stats.matched,
                stats.evicted_keys,
                stats.condition_timeouts,
                stats.budget_skipped,
                stats.objects_too_deep,
                stats.condition_nanos,
                stats.late,
                stats.throttled,
            ];
            let before = self.published.entry(rule.name.clone()).or_default();
            let deltas: Vec<u64> = now
                .iter()
                .zip(before.iter_mut())
                .map(|(&n, b)| {
                    let delta = if n >= *b { n - *b } else { n };
                    *b = n;
                    delta
                })
                .collect();
            self.metrics.rule_counted(
                &rule.name,
                &RuleDeltas {
                    evaluations: deltas[0],
                    matches: deltas[1],
                    evictions: deltas[2],
                    condition_timeouts: deltas[3],
                    condition_skipped: deltas[4],
                    objects_too_deep: deltas[5],
                    condition_seconds: deltas[6] as f64 / 1e9,
                    late: deltas[7],
                    throttled: deltas[8],
                },
            );
            if deltas[3] > 0 || deltas[4] > 0 {
                self.over_budget.insert(rule.name.clone());
            }
        }
        for rule in std::mem::take(&mut self.over_budget) {
            if let Some(held_back) = self.budget_log.admit() {
                tracing::warn!(rule = %rule, held_back, "rule over its time budget: conditions stopped at engine.condition_timeout or skipped past engine.rule_time_budget (see auditwatch_rule_condition_* metrics); it misses what it does not evaluate");
            }
        }
    }

    /// Writes alerts to the alert journal, then stdout; skips those a restart re-produced.
    fn emit(&mut self) {
        if self.out.is_empty() && self.storm.is_idle() {
            return;
        }
        let mut alerts = std::mem::take(&mut self.out);
        for (rule, n) in self.storm.admit(&mut alerts, self.engine.watermark()) {
            self.metrics.alerts_storm_suppressed(&rule, n);
        }
        if alerts.is_empty() {
            self.out = alerts;
            return;
        }
        if !self.already_sent.is_empty() {
            alerts.retain(|a| {
                let again = self.already_sent.remove(&a.id);
                if again {
                    self.metrics.alert_replay_suppressed();
                }
                !again
            });
        }
        let appended = match self.alerts.lock() {
            Ok(mut journal) => journal
                .append(&alerts)
                .map(|offsets| (offsets, journal.len()))
                .map_err(|e| (journal.path().display().to_string(), e.to_string())),
            Err(_) => Err(("alerts.jsonl".into(), "lock poisoned".into())),
        };
        match appended {
            Ok((offsets, end)) => {
                if let Some(replica) = self.opts.replica.as_mut() {
                    replica.replicate(&alerts, &offsets, end);
                } else if let Some(notify) = &self.opts.notify {
                    notify.submit(&alerts, &offsets, end);
                }
            }
            Err((path, e)) => {
                // Not durable, so not deliverable with the no-loss guarantee; stdout still
                // shows them below.
                tracing::error!(path, error = %e, alerts = alerts.len(), "cannot append to the alert journal; these alerts are not sent to notifiers");
            }
        }
        let stdout = std::io::stdout();
        let mut w = stdout.lock();
        for a in &alerts {
            self.metrics.alert_fired(&a.rule, a.severity.as_str());
            for key in &self.opts.source_label_keys {
                if let Some(value) = a.labels.get(key) {
                    self.metrics.alert_fired_with_source_label(
                        key,
                        value,
                        &a.rule,
                        a.severity.as_str(),
                    );
                }
            }
            let line = match self.opts.stdout {
                StdoutFormat::Json => a.to_json_line(),
                StdoutFormat::Text => a.to_text_line(),
                StdoutFormat::Off => continue,
            };
            let _ = writeln!(w, "{line}");
        }
        let _ = w.flush();
        alerts.clear();
        self.out = alerts;
    }

    fn capture(&self) -> StateSnapshot {
        StateSnapshot {
            version: SNAPSHOT_VERSION,
            journal_seq: self.journal_seq,
            files: self.files.clone(),
            alert_journal_len: self.alerts.lock().map_or(0, |j| j.len()),
            engine: self.engine.capture(),
        }
    }

    /// Captures the state and hands it to the writer; once written, the journal may compact
    /// up to its `journal_seq`. While the writer is still busy with the previous snapshot
    /// this one is skipped, and tried again at the next opportunity.
    pub fn snapshot(&mut self) {
        let Some(writer) = &self.writer else { return };
        if writer.busy.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        let snap = self.capture();
        writer.busy.store(true, Ordering::Release);
        if writer.tx.send(snap).is_err() {
            tracing::error!("the snapshot writer stopped; no more snapshots");
            self.writer = None;
        }
        let capture = started.elapsed();
        tracing::debug!(?capture, "snapshot captured");
        self.metrics.snapshot_captured(capture.as_secs_f64());
        self.last_snapshot = Instant::now();
    }

    /// The snapshot at shutdown: waits for it to be on disk, and for the archive to seal.
    fn final_snapshot(&mut self) {
        self.publish_alert_head(true);
        if let Some(archiver) = self.opts.archiver.take() {
            archiver.stop();
        }
        let snap = self.capture();
        if let Some(writer) = self.writer.take() {
            let SnapshotWriter { tx, thread, .. } = writer;
            let _ = tx.send(snap);
            drop(tx);
            let _ = thread.join();
        }
    }
}
