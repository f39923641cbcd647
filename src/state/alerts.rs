//! The alert journal: every alert that fired, one JSON line each, in `alerts.jsonl` of the
//! state dir. It is the record on-call can search (`auditwatch alerts`), and after a restart
//! the part written since the last snapshot tells which replayed alerts already went out.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::state::FsyncPolicy;

/// The alert journal, shared by the engine thread (alerts) and the API (changes).
pub type SharedAlertJournal = std::sync::Arc<std::sync::Mutex<AlertJournal>>;

/// A line of the alert journal that is not an alert: a change made through the API, such as
/// a silence created or expired, with who made it. Written with `record` first, so readers
/// tell it from an alert by the line's first bytes ([`CHANGE_PREFIX`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// What changed: `silence`.
    pub record: String,
    /// `create` or `expire`.
    pub action: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The authenticated principal (`anonymous` where no authentication is configured).
    pub by: String,
    /// The client's address.
    #[serde(default)]
    pub peer: Option<String>,
    /// The object after the change.
    pub object: serde_json::Value,
}

/// How every [`ChangeRecord`] line starts.
pub const CHANGE_PREFIX: &str = "{\"record\":";

pub struct AlertJournal {
    path: PathBuf,
    file: File,
    len: u64,
    fsync: FsyncPolicy,
    buf: Vec<u8>,
    /// The hash chain beside it (`alerts.jsonl.chain`).
    chain: super::chain::ChainWriter,
}

impl AlertJournal {
    /// Opens (creating) the journal; a partial last line (a crash mid-write) is cut off.
    pub fn open(path: &Path, fsync: FsyncPolicy) -> io::Result<AlertJournal> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut good = len;
        if len > 0 {
            // Find the last newline from the end, in 64 KiB steps.
            let mut end = len;
            let mut found = None;
            let mut chunk = vec![0u8; 1 << 16];
            while end > 0 && found.is_none() {
                let start = end.saturating_sub(chunk.len() as u64);
                let n = (end - start) as usize;
                file.seek(SeekFrom::Start(start))?;
                io::Read::read_exact(&mut file, &mut chunk[..n])?;
                found = chunk[..n]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map(|i| start + i as u64 + 1);
                end = start;
            }
            good = found.unwrap_or(0);
            if good < len {
                tracing::warn!(path = %path.display(), dropped = len - good, "alert journal: cutting a partial last line");
                file.set_len(good)?;
                file.sync_all()?;
            }
        }
        let chain = super::chain::ChainWriter::open(path, good)?;
        Ok(AlertJournal {
            path: path.to_owned(),
            file,
            len: good,
            fsync,
            buf: Vec::new(),
            chain,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far (a position to resume reading from).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends alerts in one write, then fsyncs by policy. Returns the offset of each line.
    pub fn append(&mut self, alerts: &[Alert]) -> io::Result<Vec<u64>> {
        if alerts.is_empty() {
            return Ok(Vec::new());
        }
        self.buf.clear();
        let mut offsets = Vec::with_capacity(alerts.len());
        for a in alerts {
            offsets.push(self.len + self.buf.len() as u64);
            serde_json::to_writer(&mut self.buf, a).map_err(io::Error::other)?;
            self.buf.push(b'\n');
        }
        self.write_buf()?;
        Ok(offsets)
    }

    /// Appends a change record (not an alert), then fsyncs by policy.
    pub fn append_change(&mut self, change: &ChangeRecord) -> io::Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, change).map_err(io::Error::other)?;
        self.buf.push(b'\n');
        self.write_buf()
    }

    /// Writes the buffered records, then their links, fsyncing both by policy.
    fn write_buf(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        let at = self.len;
        self.len += self.buf.len() as u64;
        self.chain.push_all(at, &self.buf)?;
        if self.fsync == FsyncPolicy::Always {
            self.file.sync_data()?;
            self.chain.sync()?;
        }
        Ok(())
    }

    /// The alert chain's newest hash (publish it to catch a rewrite of journal and chain).
    pub fn chain_head(&self) -> &str {
        self.chain.head()
    }

    /// IDs of the alerts written at or after byte `from`.
    pub fn ids_since(&self, from: u64) -> io::Result<HashSet<String>> {
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: String,
        }
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(from.min(self.len)))?;
        let mut ids = HashSet::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            if let Ok(a) = serde_json::from_str::<IdOnly>(&line) {
                ids.insert(a.id);
            }
        }
        Ok(ids)
    }
}

/// Reads the alerts in the last `max_bytes` of an alert journal (from the first line that
/// starts there), for pages that show recent alerts without reading a long journal whole.
pub fn read_recent_alerts(
    path: &Path,
    max_bytes: u64,
    each: impl FnMut(u64, Alert),
) -> io::Result<()> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut from = len.saturating_sub(max_bytes);
    if from > 0 {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(from - 1))?;
        let mut skipped = Vec::new();
        BufReader::new(file).read_until(b'\n', &mut skipped)?;
        from += skipped.len() as u64 - 1;
    }
    read_alerts(path, from, None, each)
}

/// Reads the alerts of an alert journal from byte `from` (a line start) up to `until`,
/// calling `each(offset, alert)`. A line that does not parse is reported and skipped.
pub fn read_alerts(
    path: &Path,
    from: u64,
    until: Option<u64>,
    mut each: impl FnMut(u64, Alert),
) -> io::Result<()> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file);
    let mut offset = from;
    let mut line = String::new();
    loop {
        if until.is_some_and(|u| offset >= u) {
            break;
        }
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        if line.starts_with(CHANGE_PREFIX) {
            offset += n as u64;
            continue;
        }
        match serde_json::from_str::<Alert>(&line) {
            Ok(a) => each(offset, a),
            Err(e) => {
                tracing::warn!(path = %path.display(), offset, error = %e, "alert journal: skipping a line that is not an alert");
            }
        }
        offset += n as u64;
    }
    Ok(())
}
