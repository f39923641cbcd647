//! Start-up recovery: read what the previous process left in the state directory, say plainly
//! what is damaged or missing, and never start silently on less state than there was.
//!
//! - A damaged newest snapshot: the previous snapshot is used (the journal still holds what
//!   came after it) and the damaged file is set aside.
//! - A damaged journal segment: start is refused with its place, unless `--skip-corrupt`, which
//!   keeps the segment's readable records and sets the file aside.
//! - Missing state that other state says existed (no snapshot but a compacted journal or an
//!   alert journal; a snapshot covering journal records that are gone; an alert journal
//!   shorter than the snapshot saw): a WARN naming what is lost, and a metric.
//!
//! Every finding counts in `auditwatch_state_problems_total{what, problem}`.

use anyhow::bail;

use crate::metrics::Metrics;
use crate::state::{Journal, JournalConfig, JournalError, StateDir, StateSnapshot, journal};

/// Every (what, problem) this module counts, for priming the metric.
pub const PROBLEMS: [(&str, &str); 6] = [
    ("snapshot", "corrupt"),
    ("snapshot", "missing"),
    ("journal", "corrupt"),
    ("journal", "missing"),
    ("journal", "gap"),
    ("alert_journal", "missing"),
];

/// What start-up found.
pub struct Recovered {
    pub snapshot: Option<StateSnapshot>,
    pub journal: Journal,
    /// Journal records the snapshot or the archive does not cover yet, in order.
    pub pending: Vec<(u64, Vec<u8>)>,
}

fn problem(metrics: &Metrics, what: &str, problem: &str) {
    metrics.state_problem(what, problem);
}

/// Reads the snapshot and the journal; see the module docs.
pub fn recover(
    state: &StateDir,
    journal_cfg: &JournalConfig,
    alert_journal_len: u64,
    skip_corrupt: bool,
    archived: Option<u64>,
    metrics: &Metrics,
) -> anyhow::Result<Recovered> {
    let snapshot = load_snapshot(state, metrics);
    let mut journal = open_journal(state, journal_cfg, skip_corrupt, metrics)?;
    match &snapshot {
        None if journal.first_seq() > 1 || alert_journal_len > 0 => {
            problem(metrics, "snapshot", "missing");
            tracing::warn!(
                state_dir = %state.root.display(),
                journal_first_record = journal.first_seq(),
                alert_journal_bytes = alert_journal_len,
                "no state snapshot, although the journal was compacted or alerts were journaled: a snapshot existed and is gone. Window state (counts in progress) starts empty; alerts already in the alert journal may be sent again"
            );
        }
        None => {}
        Some(snap) => {
            if journal.next_seq() <= snap.journal_seq {
                problem(metrics, "journal", "missing");
                tracing::warn!(
                    snapshot_covers = snap.journal_seq,
                    journal_next = journal.next_seq(),
                    "the ingest journal is missing or shorter than the snapshot says it was; what it held is reflected in the snapshot, new records are numbered after it"
                );
                journal.ensure_next_seq(snap.journal_seq + 1);
            } else if journal.first_seq() > snap.journal_seq + 1 {
                problem(metrics, "journal", "gap");
                tracing::warn!(
                    snapshot_covers = snap.journal_seq,
                    journal_first_record = journal.first_seq(),
                    "journal records between the snapshot and the oldest segment are gone: those batches were acknowledged and are lost"
                );
            }
            if alert_journal_len < snap.alert_journal_len {
                problem(metrics, "alert_journal", "missing");
                tracing::warn!(
                    bytes = alert_journal_len,
                    snapshot_saw = snap.alert_journal_len,
                    "the alert journal is shorter than when the snapshot was taken: alerts since then may be sent again"
                );
            }
        }
    }
    // From the older of the snapshot's and the archive's position: records the engine
    // evaluated but the archive did not seal are archived again.
    let after = snapshot
        .as_ref()
        .map_or(0, |s| s.journal_seq)
        .min(archived.unwrap_or(u64::MAX));
    let pending = loop {
        match journal.read_after(after) {
            Ok(p) => break p,
            Err(e @ JournalError::Corrupt { .. }) => {
                salvage_or_refuse(e, skip_corrupt, metrics)?;
                journal = open_journal(state, journal_cfg, skip_corrupt, metrics)?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(Recovered {
        snapshot,
        journal,
        pending,
    })
}

fn load_snapshot(state: &StateDir, metrics: &Metrics) -> Option<StateSnapshot> {
    let loaded = match state.load_snapshot() {
        Ok(l) => l,
        Err(e) => {
            problem(metrics, "snapshot", "corrupt");
            tracing::error!(error = %e, "no readable state snapshot (newest and previous): window state starts empty; the journal is replayed from its start");
            return None;
        }
    };
    if let Some(e) = &loaded.newest_problem {
        problem(metrics, "snapshot", "corrupt");
        let aside = state.set_aside_newest_snapshot();
        tracing::error!(
            error = %e,
            set_aside = ?aside.ok(),
            fallback = if loaded.snapshot.is_some() { "the previous snapshot, and the journal from there" } else { "none: window state starts empty" },
            "the newest state snapshot is damaged"
        );
    }
    loaded.snapshot
}

fn open_journal(
    state: &StateDir,
    cfg: &JournalConfig,
    skip_corrupt: bool,
    metrics: &Metrics,
) -> anyhow::Result<Journal> {
    loop {
        match Journal::open(&state.journal_dir(), cfg.segment_size.0, cfg.fsync) {
            Ok(j) => return Ok(j),
            Err(e @ JournalError::Corrupt { .. }) => salvage_or_refuse(e, skip_corrupt, metrics)?,
            Err(e) => return Err(e.into()),
        }
    }
}

fn salvage_or_refuse(e: JournalError, skip_corrupt: bool, metrics: &Metrics) -> anyhow::Result<()> {
    let JournalError::Corrupt { path, offset, why } = &e else {
        return Err(e.into());
    };
    problem(metrics, "journal", "corrupt");
    if !skip_corrupt {
        bail!(
            "{e}. The records from there to the end of that segment cannot be read. To start anyway, run with --skip-corrupt: the segment's records before byte {offset} are replayed, the damaged file is kept beside it (*.corrupt-<time>), and the batches after the damage are lost"
        );
    }
    let aside = journal::salvage(path, *offset)?;
    tracing::error!(
        segment = %path.display(),
        byte = offset,
        why,
        set_aside = %aside.display(),
        "--skip-corrupt: journal segment damaged; its records before the damage are kept, the batches after it are lost"
    );
    Ok(())
}
