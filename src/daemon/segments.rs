//! A `file` source whose path is an archive directory: each sealed segment, in sequence order,
//! read as the JSON lines of its events (another auditwatch's archive, or a copy synced from
//! object storage), then new segments as they appear.
//!
//! It lives with the daemon rather than with the other sources because it reads Parquet
//! through the archive module, which comes after the sources in the pipeline's layers.
//! Its checkpoint is a [`FileCheckpoint`] like a log file's: the segment's device and inode,
//! and how far into the segment's JSON lines the engine got; a restart resumes there.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::archive::read::EventLines;
use crate::archive::segment_seq;
use crate::source::tail::StartAt;
use crate::source::{Batch, Encoding, Input, Progress, Shape, Sink};
use crate::state::FileCheckpoint;

/// JSON handed to the engine per batch, at most (whole lines).
const CHUNK: usize = 1 << 20;

pub struct SegmentFollower {
    name: Arc<str>,
    dir: PathBuf,
    poll: Duration,
}

/// The sealed segments of `dir` by sequence number.
fn list(dir: &Path) -> std::io::Result<BTreeMap<u64, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(seq) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(segment_seq)
        {
            out.insert(seq, path);
        }
    }
    Ok(out)
}

impl SegmentFollower {
    pub fn new(name: &str, dir: &Path, poll: Duration) -> SegmentFollower {
        SegmentFollower {
            name: Arc::from(name),
            dir: dir.to_owned(),
            poll,
        }
    }

    /// Reads segments until `stop`; resumes from `checkpoint` (a segment and a position in
    /// it), else from the first segment (`beginning`) or after the newest (`end`).
    pub fn run(
        self,
        checkpoint: Option<FileCheckpoint>,
        start: StartAt,
        sink: &mut dyn Sink,
        stop: &AtomicBool,
    ) {
        // The next segment to read, and how far into it.
        let mut next: Option<(u64, FileCheckpoint)> = None;
        let mut resolved = false;
        while !stop.load(Ordering::Relaxed) {
            let segments = match list(&self.dir) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(source = %self.name, dir = %self.dir.display(), error = %e, "cannot list the archive directory; retrying");
                    std::thread::sleep(self.poll);
                    continue;
                }
            };
            if !resolved {
                resolved = true;
                next = self.resume_point(&segments, checkpoint, start);
            }
            let (seq, from) = match next {
                Some(n) => n,
                None => match segments.keys().next() {
                    Some(&first) => (first, FileCheckpoint::default()),
                    None => {
                        std::thread::sleep(self.poll);
                        continue;
                    }
                },
            };
            let Some(path) = segments.get(&seq) else {
                // Not sealed yet; or retired meanwhile, when a later one exists.
                match segments.range(seq..).next() {
                    Some((&later, _)) => next = Some((later, FileCheckpoint::default())),
                    None => std::thread::sleep(self.poll),
                }
                continue;
            };
            match self.read_segment(path, from, sink, stop) {
                Ok(true) => next = Some((seq + 1, FileCheckpoint::default())),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(source = %self.name, segment = %path.display(), error = %e, "cannot read the archive segment; skipping it");
                    next = Some((seq + 1, FileCheckpoint::default()));
                }
            }
        }
    }

    fn resume_point(
        &self,
        segments: &BTreeMap<u64, PathBuf>,
        checkpoint: Option<FileCheckpoint>,
        start: StartAt,
    ) -> Option<(u64, FileCheckpoint)> {
        if let Some(cp) = checkpoint {
            for (&seq, path) in segments {
                if let Ok(meta) = std::fs::metadata(path)
                    && (meta.dev(), meta.ino()) == (cp.dev, cp.ino)
                {
                    return Some((seq, cp));
                }
            }
            tracing::warn!(source = %self.name, "the segment the checkpoint names is gone (retired?); starting per start_at");
        }
        match start {
            StartAt::Beginning => None,
            StartAt::End => Some((
                segments.keys().next_back().map_or(0, |s| s + 1),
                FileCheckpoint::default(),
            )),
        }
    }

    /// Sends a segment's events from `from` on; `Ok(false)` when the engine is gone or the
    /// daemon stops.
    fn read_segment(
        &self,
        path: &Path,
        from: FileCheckpoint,
        sink: &mut dyn Sink,
        stop: &AtomicBool,
    ) -> std::io::Result<bool> {
        let meta = std::fs::metadata(path)?;
        let mut ignored = Vec::new();
        let mut lines = EventLines::open(path, &mut ignored)?;
        let (mut offset, mut line) = (0u64, 0u64);
        let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = false;
        while !done {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let n = lines.read(&mut buf)?;
            done = n == 0;
            pending.extend_from_slice(&buf[..n]);
            if pending.len() < CHUNK && !done {
                continue;
            }
            let whole = match pending.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => continue,
            };
            let data: Vec<u8> = pending.drain(..whole).collect();
            let start = (offset, line);
            offset += data.len() as u64;
            line += data.iter().filter(|&&b| b == b'\n').count() as u64;
            if offset <= from.offset {
                continue;
            }
            // A chunk that straddles the checkpoint: only the lines after it.
            let (data, start) = if start.0 < from.offset {
                let skip = (from.offset - start.0) as usize;
                (data[skip..].to_vec(), (from.offset, from.line))
            } else {
                (data, start)
            };
            let batch = Batch {
                source: Arc::clone(&self.name),
                origin: None,
                data,
                encoding: Encoding::Plain,
                shape: Shape::Lines {
                    first_line: start.1 + 1,
                    offset: start.0,
                },
                progress: Progress::File(FileCheckpoint {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    offset,
                    line,
                    head_len: 0,
                    head_crc: 0,
                }),
                received: Instant::now(),
            };
            if !sink.send(Input::Batch(batch)) {
                return Ok(false);
            }
        }
        tracing::debug!(source = %self.name, segment = %path.display(), events = line, "archive segment read");
        Ok(true)
    }
}
