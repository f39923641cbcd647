//! The delivery ledger: which alert reached which notifier, so nothing is lost and nothing is
//! sent twice across restarts.
//!
//! Alerts themselves are stored once, in the alert journal (`alerts.jsonl`). The ledger
//! (`delivery/ledger.jsonl`) records each final outcome per (notifier, alert): sent, silenced,
//! failed (permanent error or retries exhausted) or dropped (backlog over its bound).
//! `delivery/cursor` holds an alert-journal offset before which every alert is settled for
//! every notifier. On start, the alerts after the cursor are routed again and whatever has no
//! outcome yet is queued again: that is the spool. Writes are appended and fsynced by policy;
//! the ledger is rewritten (atomically) without the entries before the cursor when it grows.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::FsyncPolicy;
use crate::state::sync_dir;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Sent,
    Silenced,
    Failed,
    Dropped,
    /// Folded by `fold_interval`: the same rule and group was notified shortly before.
    Deduplicated,
    /// Held by an inhibit rule: a matching source alert fired shortly before.
    Inhibited,
    /// Held by the route's `mute_time_intervals` or outside its `active_time_intervals`.
    Muted,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Sent,
        Outcome::Silenced,
        Outcome::Failed,
        Outcome::Dropped,
        Outcome::Deduplicated,
        Outcome::Inhibited,
        Outcome::Muted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Silenced => "silenced",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
            Outcome::Deduplicated => "deduplicated",
            Outcome::Inhibited => "inhibited",
            Outcome::Muted => "muted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Notifier name.
    pub n: String,
    /// Alert id.
    pub id: String,
    /// Offset of the alert in the alert journal.
    pub at: u64,
    pub o: Outcome,
}

pub struct Ledger {
    dir: PathBuf,
    file: File,
    fsync: FsyncPolicy,
    settled: HashSet<(String, String)>,
    entries: Vec<Entry>,
    cursor: u64,
}

const COMPACT_AFTER: usize = 50_000;

impl Ledger {
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> io::Result<Ledger> {
        std::fs::create_dir_all(dir)?;
        let cursor = match std::fs::read_to_string(dir.join("cursor")) {
            Ok(text) => text.trim().parse().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join("cursor").display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let path = dir.join("ledger.jsonl");
        let mut entries = Vec::new();
        let mut good = 0u64;
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<Entry>(&line) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), offset = good, error = %e, "delivery ledger: skipping a bad line");
                    }
                }
                good += n as u64;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if file.metadata()?.len() > good {
            // A torn last line from a crash: cut it.
            file.set_len(good)?;
        }
        let settled = entries
            .iter()
            .map(|e| (e.n.clone(), e.id.clone()))
            .collect();
        Ok(Ledger {
            dir: dir.to_owned(),
            file,
            fsync,
            settled,
            entries,
            cursor,
        })
    }

    /// Alert-journal offset before which everything is settled.
    /// The outcomes on record (those after the cursor, and more until compaction).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn is_settled(&self, notifier: &str, id: &str) -> bool {
        self.settled.contains(&(notifier.to_owned(), id.to_owned()))
    }

    pub fn settle(&mut self, batch: Vec<Entry>) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in &batch {
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        if self.fsync == FsyncPolicy::Always {
            self.file.sync_data()?;
        }
        for e in batch {
            self.settled.insert((e.n.clone(), e.id.clone()));
            self.entries.push(e);
        }
        Ok(())
    }

    /// Moves the cursor forward; rewrites the ledger without settled history once it is long.
    pub fn advance(&mut self, cursor: u64) -> io::Result<()> {
        if cursor <= self.cursor {
            return Ok(());
        }
        write_atomic(&self.dir.join("cursor"), cursor.to_string().as_bytes())?;
        self.cursor = cursor;
        if self.entries.len() >= COMPACT_AFTER {
            self.entries.retain(|e| e.at >= cursor);
            let mut buf = Vec::new();
            for e in &self.entries {
                serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
                buf.push(b'\n');
            }
            let path = self.dir.join("ledger.jsonl");
            write_atomic(&path, &buf)?;
            self.file = OpenOptions::new().append(true).open(&path)?;
            self.settled = self
                .entries
                .iter()
                .map(|e| (e.n.clone(), e.id.clone()))
                .collect();
        }
        Ok(())
    }

    /// Outcomes recorded for an alert (for `auditwatch alerts`).
    pub fn outcomes(&self) -> &[Entry] {
        &self.entries
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_reopen_and_a_torn_line_is_cut() {
        let dir = std::env::temp_dir().join(format!("aw-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut l = Ledger::open(&dir, FsyncPolicy::Always).unwrap();
        let e = |n: &str, id: &str, at| Entry {
            n: n.into(),
            id: id.into(),
            at,
            o: Outcome::Sent,
        };
        l.settle(vec![e("mail", "a", 0), e("hook", "a", 0)])
            .unwrap();
        l.advance(10).unwrap();
        drop(l);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("ledger.jsonl"))
            .unwrap();
        f.write_all(br#"{"n":"mail","id":"b""#).unwrap();
        let l = Ledger::open(&dir, FsyncPolicy::Always).unwrap();
        assert!(l.is_settled("mail", "a") && l.is_settled("hook", "a"));
        assert!(!l.is_settled("mail", "b"));
        assert_eq!(l.cursor(), 10);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
