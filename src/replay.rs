//! Replay: run rules over historical audit logs in event time.
//!
//! Several inputs (for example a log and its rotated backups, in any order) are merged by event
//! time, record by record, so windows see one time-ordered stream. Nothing here prints: alerts
//! and diagnostics go to the caller's sinks, and a [`ReplayReport`] sums up the run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alert::Alert;
use crate::archive::{Archive, Sealed};
use crate::engine::{Engine, EngineOptions, EngineStats, LateEvent, RuleStats, ScriptError};
use crate::event::{
    DecodeError, EventTime, InputFormat, Position, Record, decode_each, decode_event, decode_record,
};
use crate::rules::RuleSet;
use crate::source::RecordReader;

/// Something the caller should tell the user about; the replay goes on.
#[derive(Debug)]
pub enum Diagnostic {
    Decode(DecodeError),
    Io {
        source: String,
        message: String,
    },
    Script(ScriptError),
    /// An event older than the watermark when it came (windows leave it out).
    Late {
        source: String,
        event: LateEvent,
    },
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diagnostic::Decode(e) => write!(f, "{e}"),
            Diagnostic::Io { source, message } => write!(f, "{source}: {message}"),
            Diagnostic::Script(e) => write!(
                f,
                "rule {:?}: script error on auditID {:?}: {}",
                e.rule, e.audit_id, e.message
            ),
            Diagnostic::Late { source, event } => write!(
                f,
                "{source}: auditID {:?} at {} came after events newer than its time plus the lateness (watermark {}); windows leave it out (raise --lateness)",
                event.audit_id, event.time, event.watermark
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct ReplayReport {
    pub records: u64,
    pub events: u64,
    pub decode_errors: u64,
    pub io_errors: u64,
    pub alerts: u64,
    pub elapsed: Duration,
    pub engine: EngineStats,
    pub rules: Vec<(Arc<str>, RuleStats)>,
    pub first_event: Option<EventTime>,
    pub last_event: Option<EventTime>,
    /// Archive segments sealed, when replay wrote an archive.
    pub archived: Vec<Sealed>,
    /// Why archiving stopped, if it did (the replay itself went on).
    pub archive_error: Option<String>,
}

impl ReplayReport {
    pub fn events_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }
}

/// Peeks the event time of a record (its first event's), for merging inputs.
fn record_time(text: &str) -> Option<EventTime> {
    match decode_record(text).ok()? {
        Record::Event(ev) => ev.time,
        Record::Batch(items) => items
            .first()
            .and_then(|i| decode_event(i.get()).ok())
            .and_then(|e| e.time),
    }
}

struct Input {
    reader: RecordReader,
    /// Time of the record the reader is positioned on; `None` once exhausted.
    head: Option<EventTime>,
    has_record: bool,
}

/// How far a run got, for a progress display on another thread: records and their bytes.
#[derive(Debug, Default)]
pub struct Progress {
    pub records: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn record(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.records.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
}

/// Runs `rules` over `inputs` (`-` for stdin) and reports every alert to `on_alert`.
#[allow(clippy::too_many_arguments)]
pub fn replay(
    rules: Arc<RuleSet>,
    inputs: &[PathBuf],
    format: InputFormat,
    opts: EngineOptions,
    mut archive: Option<&mut Archive>,
    progress: Option<&Progress>,
    on_alert: &mut dyn FnMut(&Alert),
    on_diagnostic: &mut dyn FnMut(Diagnostic),
) -> ReplayReport {
    let started = Instant::now();
    let mut engine = Engine::new(rules, opts);
    let mut report = ReplayReport::default();
    let mut alerts: Vec<Alert> = Vec::new();
    let mut opened = Vec::new();
    for path in inputs {
        // An archive directory or segment reads as the JSON lines of its events.
        let reader = if path.as_os_str() != "-" && crate::archive::read::is_archive(path) {
            let mut foreign = Vec::new();
            let lines = crate::archive::read::EventLines::open(path, &mut foreign);
            for (name, why) in foreign {
                on_diagnostic(Diagnostic::Io {
                    source: name,
                    message: why,
                });
            }
            lines.map(|lines| {
                RecordReader::new(
                    &path.display().to_string(),
                    Box::new(std::io::BufReader::with_capacity(256 * 1024, lines)),
                )
            })
        } else {
            RecordReader::open(path)
        };
        match reader {
            Ok(reader) => opened.push(Input {
                reader,
                head: None,
                has_record: false,
            }),
            Err(e) => {
                report.io_errors += 1;
                on_diagnostic(Diagnostic::Io {
                    source: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        }
    }

    let mut step = |engine: &mut Engine,
                    report: &mut ReplayReport,
                    position: &Position,
                    text: &str,
                    on_diagnostic: &mut dyn FnMut(Diagnostic)| {
        report.records += 1;
        if let Some(p) = progress {
            p.record(text.len() as u64 + 1);
        }
        let mut on_error = |e: DecodeError| {
            report.decode_errors += 1;
            on_diagnostic(Diagnostic::Decode(e));
        };
        let mut first = report.first_event;
        let mut last = report.last_event;
        let mut archived = Vec::new();
        let mut archive_error = report.archive_error.take();
        let n = decode_each(format, position, text, &mut on_error, &mut |ev| {
            if let Some(t) = ev.time {
                first = Some(first.map_or(t, |f| f.min(t)));
                last = Some(last.map_or(t, |l| l.max(t)));
            }
            if let Some(a) = archive.as_deref_mut()
                && archive_error.is_none()
                && let Err(e) = a.append(ev, &position.source, text.len())
            {
                archive_error = Some(e.to_string());
            }
            engine.process(ev, &mut alerts);
        });
        if let Some(a) = archive.as_deref_mut()
            && archive_error.is_none()
        {
            match a.seal_if_due() {
                Ok(sealed) => archived.extend(sealed),
                Err(e) => archive_error = Some(e.to_string()),
            }
        }
        report.first_event = first;
        report.last_event = last;
        report.archived.extend(archived);
        report.archive_error = archive_error;
        report.events += n;
        for a in alerts.drain(..) {
            on_alert(&a);
            report.alerts += 1;
        }
        for e in engine.take_script_errors() {
            on_diagnostic(Diagnostic::Script(e));
        }
        for event in engine.take_late().1 {
            on_diagnostic(Diagnostic::Late {
                source: position.source.to_string(),
                event,
            });
        }
    };

    if opened.len() == 1 {
        // One input: stream it straight through, decoding each record once.
        let input = &mut opened[0];
        loop {
            match input.reader.next_record() {
                Ok(Some(rec)) => {
                    let pos = rec.position.clone();
                    step(&mut engine, &mut report, &pos, rec.text, on_diagnostic);
                }
                Ok(None) => break,
                Err(e) => {
                    report.io_errors += 1;
                    on_diagnostic(Diagnostic::Io {
                        source: input.reader.name().to_string(),
                        message: e.to_string(),
                    });
                    if e.kind() != std::io::ErrorKind::InvalidData {
                        break;
                    }
                }
            }
        }
    } else {
        // Several inputs: always take the record with the oldest event time next.
        loop {
            for input in opened.iter_mut().filter(|i| !i.has_record) {
                loop {
                    match input.reader.next_record() {
                        Ok(Some(rec)) => {
                            input.head = Some(record_time(rec.text).unwrap_or(EventTime::MIN));
                            input.has_record = true;
                        }
                        Ok(None) => input.head = None,
                        Err(e) => {
                            report.io_errors += 1;
                            on_diagnostic(Diagnostic::Io {
                                source: input.reader.name().to_string(),
                                message: e.to_string(),
                            });
                            if e.kind() == std::io::ErrorKind::InvalidData {
                                continue;
                            }
                            input.head = None;
                        }
                    }
                    break;
                }
                if input.head.is_none() {
                    input.has_record = true; // exhausted; never polled again
                }
            }
            let next = opened
                .iter()
                .enumerate()
                .filter_map(|(i, inp)| inp.head.map(|t| (t, i)))
                .min();
            let Some((_, i)) = next else { break };
            // Re-read the current record: `next_record` left it in the reader's buffer.
            let input = &mut opened[i];
            input.has_record = false;
            let (pos, text) = input.reader.current();
            let pos = pos.clone();
            step(&mut engine, &mut report, &pos, text, on_diagnostic);
        }
    }

    engine.finish(&mut alerts);
    for a in alerts.drain(..) {
        on_alert(&a);
        report.alerts += 1;
    }
    for e in engine.take_script_errors() {
        on_diagnostic(Diagnostic::Script(e));
    }
    report.engine = engine.stats();
    report.rules = engine
        .rule_stats()
        .map(|(r, s)| (r.name.clone(), s))
        .collect();
    report.elapsed = started.elapsed();
    report
}
