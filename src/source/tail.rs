//! Following the apiserver's audit log file like `tail -F`, with a checkpoint to resume from.
//!
//! The apiserver (`--audit-log-path`, rotated by `--audit-log-maxsize`/`--audit-log-maxbackup`)
//! rotates by renaming the file to a timestamped backup in the same directory and creating a
//! new one. The follower reads the open file to its end, then notices that the path now names
//! another file (device, inode) and switches to it from byte 0. A missing file is waited for.
//! Only whole lines are handed on; a partial last line waits for its newline.
//!
//! Truncation (logrotate's `copytruncate`) keeps the inode, and the file may have grown past
//! the old offset again by the next poll, so size alone does not tell. The follower also
//! remembers a checksum of the file's first KiB and checks it after every read and every idle
//! poll: different leading bytes mean new content. It then reads the copy that `copytruncate`
//! made (a file beside it with the same leading bytes) from the old offset to its end, so the
//! lines written just before the truncation are not lost, and restarts the file at byte 0.
//! Each truncation is counted.
//!
//! Each batch carries a [`FileCheckpoint`] (device, inode, offset after its last line). On
//! restart, a checkpoint of the current file resumes at its offset; a checkpoint of a file
//! that was rotated away meanwhile is found again by inode among the directory's files, read
//! to its end, and then the current file is read from the start.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::batch::{Batch, Encoding, Input, Progress, Shape, Sink};
use crate::state::FileCheckpoint;

/// Largest batch handed to the engine at once.
const CHUNK: usize = 1 << 20;

/// The longest batch read back to a recorded end (see [`Follower::first_batch_ends_at`]): one
/// read plus the rest of a long line; a cluster worker refuses batches beyond this anyway.
pub const CUT_BOUND: u64 = 32 << 20;

/// Where to start when there is no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// Read the existing content (replays history on a first start).
    Beginning,
    /// Only what is written from now on (like `tail -F`).
    End,
}

pub struct Follower {
    name: Arc<str>,
    path: PathBuf,
    poll: Duration,
    /// Counts truncations noticed (`auditwatch_file_truncations_total{source}`).
    truncations: Option<prometheus::IntCounter>,
    /// False while reading the copy of a truncated file (which is not checked again).
    check_head: bool,
    file: Option<Open>,
    /// Where a batch handed on before a restart ended, if it may not have been recorded as
    /// done (see [`Follower::first_batch_ends_at`]).
    cut: Option<FileCheckpoint>,
    /// Bytes after the last newline, waiting for the rest of their line.
    partial: Vec<u8>,
    buf: Vec<u8>,
}

struct Open {
    file: File,
    dev: u64,
    ino: u64,
    /// Offset of the first byte not yet read.
    read_at: u64,
    /// Checkpoint after the last whole line handed on (with the head checksum).
    done: FileCheckpoint,
}

/// Leading bytes whose checksum identifies a file's content.
const HEAD: usize = 1024;

/// The file's first `HEAD` bytes (fewer if it is shorter).
fn read_head(file: &File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; HEAD];
    let mut got = 0;
    while got < HEAD {
        match file.read_at(&mut buf[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Whether `file` still starts with the bytes `cp` recorded; records more of them while the
/// file is shorter than `HEAD` and grows.
fn same_content(file: &File, cp: &mut FileCheckpoint) -> io::Result<bool> {
    let head = read_head(file)?;
    let known = cp.head_len as usize;
    if head.len() < known || crc32fast::hash(&head[..known]) != cp.head_crc {
        return Ok(false);
    }
    if head.len() > known {
        cp.head_len = head.len() as u32;
        cp.head_crc = crc32fast::hash(&head);
    }
    Ok(true)
}

impl Follower {
    pub fn new(name: &str, path: &Path, poll: Duration) -> Follower {
        Follower {
            name: Arc::from(name),
            path: path.to_owned(),
            poll,
            truncations: None,
            check_head: true,
            file: None,
            cut: None,
            partial: Vec::new(),
            buf: vec![0; CHUNK],
        }
    }

    /// After resuming, the first batch read from the file `end` names ends exactly at `end`'s
    /// offset: it is byte for byte the batch handed on before the restart from the same
    /// checkpoint, however much the file grew meanwhile. A publisher that recorded the batch
    /// as begun but not as done sends it again under the same message ID, which the stream
    /// stores once.
    pub fn first_batch_ends_at(mut self, end: Option<FileCheckpoint>) -> Follower {
        self.cut = end;
        self
    }

    /// Counts each truncation noticed on `counter`.
    pub fn count_truncations(mut self, counter: prometheus::IntCounter) -> Follower {
        self.truncations = Some(counter);
        self
    }

    /// Runs until `stop` is set or the engine goes away.
    pub fn run(
        mut self,
        checkpoint: Option<FileCheckpoint>,
        start: StartAt,
        sink: &mut dyn Sink,
        stop: &AtomicBool,
    ) {
        if let Err(e) = self.resume(checkpoint, start, sink) {
            tracing::warn!(source = %self.name, error = %e, "cannot resume from the checkpoint");
        }
        let mut missing_since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            match self.step(sink) {
                Ok(Step::Progress) => continue,
                Ok(Step::Idle) => missing_since = None,
                Ok(Step::Missing) => {
                    if missing_since.is_none() {
                        tracing::info!(source = %self.name, path = %self.path.display(), "waiting for the file to appear");
                        missing_since = Some(Instant::now());
                    }
                }
                Ok(Step::EngineGone) => return,
                Err(e) => {
                    tracing::warn!(source = %self.name, path = %self.path.display(), error = %e, "read failed; retrying")
                }
            }
            std::thread::sleep(self.poll);
        }
    }

    /// Positions the follower from a checkpoint (or `start` without one).
    fn resume(
        &mut self,
        checkpoint: Option<FileCheckpoint>,
        start: StartAt,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        let current = fs::metadata(&self.path).ok();
        let Some(cp) = checkpoint else {
            self.cut = None;
            if let Some(meta) = current {
                let offset = if start == StartAt::End { meta.len() } else { 0 };
                self.open_current(offset, 0)?;
                if offset > 0 {
                    tracing::info!(source = %self.name, offset, "no checkpoint: starting at the end of the file (start_at: end)");
                }
            }
            return Ok(());
        };
        if let Some(meta) = &current
            && meta.dev() == cp.dev
            && meta.ino() == cp.ino
        {
            let file = File::open(&self.path)?;
            let mut known = cp;
            if meta.len() >= cp.offset && same_content(&file, &mut known)? {
                self.check_cut(&cp, meta.len());
                self.open_current(cp.offset, cp.line)?;
                if let Some(open) = &mut self.file {
                    open.done.head_len = known.head_len;
                    open.done.head_crc = known.head_crc;
                }
            } else {
                tracing::warn!(source = %self.name, offset = cp.offset, "the file was truncated while auditwatch was down (copytruncate?)");
                self.truncated(cp, sink)?;
            }
            return Ok(());
        }
        // Rotated while we were down: finish the old file if it is still there.
        match find_by_inode(&self.path, cp.dev, cp.ino) {
            Some(old) => {
                tracing::info!(source = %self.name, rotated = %old.display(), "rotated while down: finishing the rotated file first");
                let file = File::open(&old)?;
                let meta = file.metadata()?;
                if meta.len() >= cp.offset {
                    self.check_cut(&cp, meta.len());
                    self.file = Some(Open {
                        file,
                        dev: cp.dev,
                        ino: cp.ino,
                        read_at: cp.offset,
                        done: cp,
                    });
                    self.finish_rotated(sink)?;
                }
            }
            None => tracing::warn!(
                source = %self.name,
                "the file read before the restart is gone (rotated and removed by --audit-log-maxbackup?): its unread lines are lost"
            ),
        }
        self.file = None;
        if current.is_some() {
            self.open_current(0, 0)?;
        }
        Ok(())
    }

    /// Keeps the cut only where it can be the end of a batch begun at `cp` in a file of `len`
    /// bytes: in the same file, after `cp`, within the file, and at most [`CUT_BOUND`] past
    /// `cp`. A record that fits none of this (damaged, or written by someone else) would make
    /// the follower hold the file in memory up to a place it never reaches; it is dropped and
    /// the file read as usual.
    fn check_cut(&mut self, cp: &FileCheckpoint, len: u64) {
        let Some(c) = self.cut else { return };
        let fits = (c.dev, c.ino) == (cp.dev, cp.ino)
            && c.offset > cp.offset
            && c.offset <= len
            && c.offset - cp.offset <= CUT_BOUND;
        if !fits {
            tracing::warn!(source = %self.name, from = cp.offset, to = c.offset, len, "the batch recorded as being published does not fit the file; reading on as usual (its lines may be published twice)");
            self.cut = None;
        }
    }

    fn open_current(&mut self, offset: u64, line: u64) -> io::Result<()> {
        let file = File::open(&self.path)?;
        self.partial.clear();
        self.file = Some(opened(file, offset, line)?);
        Ok(())
    }

    /// The followed file (as last checkpointed in `cp`) was truncated: reads its copy from the
    /// checkpoint to the end if `copytruncate` left one, counts the truncation, and starts the
    /// file again at byte 0.
    fn truncated(&mut self, cp: FileCheckpoint, sink: &mut dyn Sink) -> io::Result<()> {
        // The bytes the cut was measured on are gone.
        self.cut = None;
        if let Some(counter) = &self.truncations {
            counter.inc();
        }
        match find_copy(&self.path, &cp) {
            Some(copy) => {
                tracing::warn!(source = %self.name, copy = %copy.display(), offset = cp.offset, "file truncated: reading the lines before the truncation from its copy, then the file from the start");
                let file = File::open(&copy)?;
                let meta = file.metadata()?;
                self.partial.clear();
                self.file = Some(Open {
                    file,
                    dev: meta.dev(),
                    ino: meta.ino(),
                    read_at: cp.offset,
                    done: FileCheckpoint {
                        dev: meta.dev(),
                        ino: meta.ino(),
                        ..cp
                    },
                });
                self.check_head = false;
                let read = (|| {
                    while let Step::Progress = self.read_available(sink)? {}
                    Ok::<(), io::Error>(())
                })();
                self.check_head = true;
                read?;
                self.flush_partial(sink);
            }
            None if cp.head_len > 0 => {
                tracing::warn!(source = %self.name, offset = cp.offset, "file truncated, and no copy of it found beside it: lines written after the last read and before the truncation are lost; reading the file from the start");
            }
            None => {
                tracing::warn!(source = %self.name, "file truncated: reading it from the start")
            }
        }
        self.file = None;
        self.open_current(0, 0)
    }

    fn step(&mut self, sink: &mut dyn Sink) -> io::Result<Step> {
        if self.file.is_none() {
            if !self.path.exists() {
                return Ok(Step::Missing);
            }
            self.open_current(0, 0)?;
            tracing::info!(source = %self.name, path = %self.path.display(), "following");
        }
        let step = self.read_available(sink)?;
        if !matches!(step, Step::Idle) {
            return Ok(step);
        }
        // At the end of the open file: rotated, truncated, or just quiet?
        let Some(open) = &self.file else {
            return Ok(Step::Idle);
        };
        match fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == open.dev && meta.ino() == open.ino => {
                let mut known = open.done;
                if meta.len() < open.read_at || !same_content(&open.file, &mut known)? {
                    let cp = open.done;
                    self.truncated(cp, sink)?;
                    return Ok(Step::Progress);
                }
                Ok(Step::Idle)
            }
            Ok(_) => {
                // A new file under the name. The old one was read to its end above; its
                // writer has moved on, so a partial last line will not be completed.
                tracing::info!(source = %self.name, "file rotated: following the new file");
                self.finish_rotated(sink)?;
                self.open_current(0, 0)?;
                Ok(Step::Progress)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Renamed away and not yet recreated: keep the old handle until it is.
                Ok(Step::Idle)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads what is there and hands on whole lines.
    fn read_available(&mut self, sink: &mut dyn Sink) -> io::Result<Step> {
        let Some(open) = self.file.as_mut() else {
            return Ok(Step::Idle);
        };
        self.cut = self
            .cut
            .filter(|c| (c.dev, c.ino) == (open.dev, open.ino) && c.offset > open.read_at);
        let cut = self.cut;
        let want = cut.map_or(self.buf.len(), |c| {
            usize::try_from(c.offset - open.read_at)
                .map_or(self.buf.len(), |w| w.min(self.buf.len()))
        });
        open.file.seek(SeekFrom::Start(open.read_at))?;
        let n = open.file.read(&mut self.buf[..want])?;
        if n == 0 {
            return Ok(Step::Idle);
        }
        // Read, then check that the file still starts as it did: a truncation before or
        // during the read means these bytes may be new content at an old offset.
        let mut known = open.done;
        if self.check_head && !same_content(&open.file, &mut known)? {
            let cp = open.done;
            self.truncated(cp, sink)?;
            return Ok(Step::Progress);
        }
        open.done.head_len = known.head_len;
        open.done.head_crc = known.head_crc;
        open.read_at += n as u64;
        let chunk = &self.buf[..n];
        let end = match cut {
            // Up to the cut, whatever lines it holds (the batch before the restart may have
            // been longer than one read, or the unterminated end of a rotated file).
            Some(c) if open.read_at < c.offset => None,
            Some(_) => {
                self.cut = None;
                Some(n - 1)
            }
            None => memchr::memrchr(b'\n', chunk),
        };
        let Some(last) = end else {
            self.partial.extend_from_slice(chunk);
            return Ok(Step::Progress);
        };
        let mut data = std::mem::take(&mut self.partial);
        data.extend_from_slice(&chunk[..=last]);
        self.partial.extend_from_slice(&chunk[last + 1..]);
        let mut lines = memchr::memchr_iter(b'\n', &data).count() as u64;
        if data.last() != Some(&b'\n') {
            lines += 1;
        }
        let start = open.done;
        open.done.offset += data.len() as u64;
        open.done.line += lines;
        let batch = Batch {
            origin: None,
            source: Arc::clone(&self.name),
            data,
            encoding: Encoding::Plain,
            shape: Shape::Lines {
                first_line: start.line + 1,
                offset: start.offset,
            },
            progress: Progress::File(open.done),
            received: Instant::now(),
        };
        if !sink.send(Input::Batch(batch)) {
            return Ok(Step::EngineGone);
        }
        Ok(Step::Progress)
    }

    /// The open file was rotated away: reads it to its end, then every backup rotated after
    /// it (several rotations may have happened while auditwatch was down or blocked), oldest
    /// first. The caller then opens the current file.
    fn finish_rotated(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        let Some(open) = &self.file else {
            return Ok(());
        };
        let (dev, ino) = (open.dev, open.ino);
        let since = open.file.metadata()?.modified().ok();
        while let Step::Progress = self.read_available(sink)? {}
        self.flush_partial(sink);
        for backup in rotated_after(&self.path, (dev, ino), since) {
            let file = match File::open(&backup) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(source = %self.name, file = %backup.display(), error = %e, "cannot read a rotated file: its lines are lost");
                    continue;
                }
            };
            tracing::info!(source = %self.name, file = %backup.display(), "reading a file rotated meanwhile");
            self.partial.clear();
            self.file = Some(opened(file, 0, 0)?);
            while let Step::Progress = self.read_available(sink)? {}
            self.flush_partial(sink);
        }
        self.file = None;
        Ok(())
    }

    /// Hands on a last line without a newline (the end of a rotated-away file).
    fn flush_partial(&mut self, sink: &mut dyn Sink) {
        let Some(open) = self.file.as_mut() else {
            return;
        };
        if self.partial.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.partial);
        let start = open.done;
        open.done.offset += data.len() as u64;
        open.done.line += 1;
        sink.send(Input::Batch(Batch {
            origin: None,
            source: Arc::clone(&self.name),
            data,
            encoding: Encoding::Plain,
            shape: Shape::Lines {
                first_line: start.line + 1,
                offset: start.offset,
            },
            progress: Progress::File(open.done),
            received: Instant::now(),
        }));
    }
}

enum Step {
    /// Read something; read again at once.
    Progress,
    /// Nothing new.
    Idle,
    /// The file does not exist (yet).
    Missing,
    EngineGone,
}

/// Backups of `path` (same directory, named `<stem>*.<ext>` as the apiserver's rotation does:
/// `audit-2026-11-23T10-00-00.000.log`) modified at or after `since`, other than the file
/// `skip` and the current file, oldest first. Compressed backups (`--audit-log-compress`)
/// cannot be followed and are not listed.
fn rotated_after(
    path: &Path,
    skip: (u64, u64),
    since: Option<std::time::SystemTime>,
) -> Vec<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let ext = path
        .extension()
        .and_then(|s| s.to_str())
        .map(|e| format!(".{e}"));
    let current = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let is_backup = name.starts_with(stem)
                && ext.as_deref().is_none_or(|e| name.ends_with(e))
                && Some(name.as_str()) != path.file_name().and_then(|n| n.to_str());
            if !is_backup {
                return None;
            }
            let meta = entry.metadata().ok()?;
            let id = (meta.dev(), meta.ino());
            if !meta.is_file() || id == skip || Some(id) == current {
                return None;
            }
            let modified = meta.modified().ok()?;
            since
                .is_none_or(|s| modified >= s)
                .then(|| (modified, entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// An open file positioned at `offset`, with its identity and head checksum.
fn opened(file: File, offset: u64, line: u64) -> io::Result<Open> {
    let meta = file.metadata()?;
    let mut done = FileCheckpoint {
        dev: meta.dev(),
        ino: meta.ino(),
        offset,
        line,
        head_len: 0,
        head_crc: crc32fast::hash(&[]),
    };
    same_content(&file, &mut done)?;
    Ok(Open {
        file,
        dev: meta.dev(),
        ino: meta.ino(),
        read_at: offset,
        done,
    })
}

/// The copy `copytruncate` made of the followed file before truncating it: another file in
/// its directory that starts with the same bytes as the checkpoint recorded and reaches at
/// least its offset.
fn find_copy(path: &Path, cp: &FileCheckpoint) -> Option<PathBuf> {
    if cp.head_len == 0 {
        return None;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let current = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let meta = entry.metadata().ok()?;
        if !meta.is_file() || meta.len() < cp.offset || Some((meta.dev(), meta.ino())) == current {
            return None;
        }
        let file = File::open(entry.path()).ok()?;
        let head = read_head(&file).ok()?;
        let known = cp.head_len as usize;
        (head.len() >= known && crc32fast::hash(&head[..known]) == cp.head_crc)
            .then(|| entry.path())
    })
}

/// A file in `path`'s directory with this device and inode (a rotated backup of it).
fn find_by_inode(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let meta = entry.metadata().ok()?;
        (meta.is_file() && meta.dev() == dev && meta.ino() == ino).then(|| entry.path())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Collect(Vec<(Vec<u8>, FileCheckpoint)>);
    impl Sink for Collect {
        fn send(&mut self, input: Input) -> bool {
            if let Input::Batch(b) = input
                && let Progress::File(cp) = b.progress
            {
                self.0.push((b.data, cp));
            }
            true
        }
    }

    impl Collect {
        fn text(&self) -> String {
            self.0
                .iter()
                .map(|(d, _)| String::from_utf8_lossy(d).into_owned())
                .collect()
        }
        fn last(&self) -> FileCheckpoint {
            self.0.last().map(|(_, c)| *c).unwrap_or_default()
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aw-tail-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn append(path: &Path, text: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// A follower of `log` resumed from `checkpoint` (or `start`), with what it read at once.
    fn resumed(
        log: &Path,
        checkpoint: Option<FileCheckpoint>,
        start: StartAt,
        cut: Option<FileCheckpoint>,
    ) -> (Follower, Collect) {
        let mut f = Follower::new("audit", log, Duration::from_millis(1)).first_batch_ends_at(cut);
        let mut sink = Collect(Vec::new());
        f.resume(checkpoint, start, &mut sink).unwrap();
        drain(&mut f, &mut sink);
        (f, sink)
    }

    fn drain(f: &mut Follower, sink: &mut Collect) {
        for _ in 0..10 {
            f.step(sink).unwrap();
        }
    }

    #[test]
    fn partial_lines_wait_rotation_and_truncation_are_followed() {
        let d = dir("rotate");
        let log = d.join("audit.log");
        let mut f = Follower::new("audit", &log, Duration::from_millis(1));
        let mut sink = Collect(Vec::new());
        assert!(matches!(f.step(&mut sink).unwrap(), Step::Missing));
        append(&log, "a\nb\npar");
        drain(&mut f, &mut sink);
        assert_eq!(sink.text(), "a\nb\n", "the partial line waits");
        append(&log, "tial\n");
        drain(&mut f, &mut sink);
        assert_eq!(sink.text(), "a\nb\npartial\n");
        assert_eq!((sink.last().offset, sink.last().line), (12, 3));
        // Rotation: the writer adds a line to the old file, renames it, starts a new one.
        append(&log, "last-old\n");
        fs::rename(&log, d.join("audit-2026-11-23T10-00-00.000.log")).unwrap();
        append(&log, "first-new\n");
        drain(&mut f, &mut sink);
        assert_eq!(sink.text(), "a\nb\npartial\nlast-old\nfirst-new\n");
        // Truncation.
        fs::write(&log, "").unwrap();
        drain(&mut f, &mut sink);
        append(&log, "after-truncate\n");
        drain(&mut f, &mut sink);
        assert!(
            sink.text().ends_with("first-new\nafter-truncate\n"),
            "{}",
            sink.text()
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn resumes_from_a_checkpoint_across_a_rotation_while_down() {
        let d = dir("resume");
        let log = d.join("audit.log");
        append(&log, "1\n2\n");
        let (f, sink) = resumed(&log, None, StartAt::Beginning, None);
        let cp = sink.last();
        drop(f);
        // While down: more lines, a rotation, lines in the new file.
        append(&log, "3\n");
        fs::rename(&log, d.join("audit-2026-11-23T11-00-00.000.log")).unwrap();
        append(&log, "4\n5\n");
        let (_, sink) = resumed(&log, Some(cp), StartAt::End, None);
        assert_eq!(
            sink.text(),
            "3\n4\n5\n",
            "nothing skipped, nothing repeated"
        );
        // Same file resumed: only what came after.
        let cp = sink.last();
        append(&log, "6\n");
        let (_, sink) = resumed(&log, Some(cp), StartAt::Beginning, None);
        assert_eq!(sink.text(), "6\n");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_batch_begun_before_a_restart_is_read_again_byte_for_byte() {
        let d = dir("cut");
        let log = d.join("audit.log");
        append(&log, "1\n2\n");
        let (mut f, mut sink) = resumed(&log, None, StartAt::Beginning, None);
        let start = sink.last();
        // A line longer than one read: the batch is made of two reads.
        let long = "x".repeat(CHUNK + CHUNK / 2);
        append(&log, &format!("{long}\n3\n"));
        drain(&mut f, &mut sink);
        let begun = sink.0.last().cloned().unwrap();
        assert_eq!(begun.0.len(), long.len() + 3);
        drop(f);
        // Down before the batch was recorded as done; the file grows meanwhile.
        append(&log, "4\n5\n");
        let (_, sink) = resumed(&log, Some(start), StartAt::End, Some(begun.1));
        assert_eq!(sink.0[0], begun, "the same bytes and the same end");
        assert_eq!(sink.text(), format!("{long}\n3\n4\n5\n"));
        assert_eq!((sink.last().line, sink.0.len()), (6, 2));
        // Without the cut, the grown file would have been read as other batches.
        let (_, sink) = resumed(&log, Some(start), StartAt::End, None);
        assert_ne!(sink.0[0], begun);
        // A recorded end that this file cannot have (past its end, another file, before the
        // start, too far) is not waited for: the file is read as usual.
        let len = fs::metadata(&log).unwrap().len();
        for bad in [
            FileCheckpoint {
                offset: len + 1,
                ..begun.1
            },
            FileCheckpoint {
                ino: begun.1.ino + 1,
                ..begun.1
            },
            FileCheckpoint {
                offset: start.offset,
                ..begun.1
            },
        ] {
            let (_, sink) = resumed(&log, Some(start), StartAt::End, Some(bad));
            assert_eq!(sink.text(), format!("{long}\n3\n4\n5\n"), "{bad:?}");
        }
        let _ = fs::remove_dir_all(&d);
    }

    /// What logrotate's copytruncate does to the original.
    fn truncate(path: &Path) {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    fn lines(from: usize, to: usize) -> String {
        (from..to)
            .map(|i| format!("{{\"auditID\":\"id-{i:06}\",\"n\":{i}}}\n"))
            .collect()
    }

    /// logrotate's copytruncate: copy the file, truncate it, and the writer goes on writing,
    /// past the old offset before the next poll. Issue 16.5 lost 277 of 560 records this way
    /// and produced a garbage record.
    #[test]
    fn copytruncate_within_one_poll_loses_and_mangles_nothing() {
        let d = dir("copytruncate");
        let log = d.join("audit.log");
        append(&log, &lines(0, 280));
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let mut f = Follower::new("audit", &log, Duration::from_millis(1))
            .count_truncations(counter.clone());
        let mut sink = Collect(Vec::new());
        drain(&mut f, &mut sink);
        // Between two polls: more lines, the copy, the truncation, and more than the old
        // size of new lines.
        append(&log, &lines(280, 300));
        fs::copy(&log, d.join("audit.log.1")).unwrap();
        truncate(&log);
        append(&log, &lines(300, 860));
        drain(&mut f, &mut sink);
        assert_eq!(
            sink.text(),
            lines(0, 860),
            "every record once, in order, none mangled"
        );
        assert_eq!(counter.get(), 1);

        // The same without a copy: what was read stays, the new content is read from 0.
        fs::remove_file(d.join("audit.log.1")).unwrap();
        truncate(&log);
        append(&log, &lines(860, 1500));
        drain(&mut f, &mut sink);
        assert_eq!(sink.text(), lines(0, 1500));
        assert_eq!(counter.get(), 2);
        let _ = fs::remove_dir_all(&d);
    }

    /// Truncated and rewritten while auditwatch was down: the checkpoint's offset is inside
    /// the new content, which must not be read from there.
    #[test]
    fn a_truncation_while_down_is_noticed_at_resume() {
        let d = dir("truncated-down");
        let log = d.join("audit.log");
        append(&log, &lines(0, 100));
        let (f, sink) = resumed(&log, None, StartAt::Beginning, None);
        let cp = sink.last();
        assert!(cp.head_len > 0);
        drop(f);
        append(&log, &lines(100, 110));
        fs::copy(&log, d.join("audit.log.1")).unwrap();
        truncate(&log);
        append(&log, &lines(110, 400));
        let (_, sink) = resumed(&log, Some(cp), StartAt::End, None);
        assert_eq!(sink.text(), lines(100, 400));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn several_rotations_while_down_are_read_in_order() {
        let d = dir("multi");
        let log = d.join("audit.log");
        append(&log, "1\n");
        let (f, sink) = resumed(&log, None, StartAt::Beginning, None);
        let cp = sink.last();
        drop(f);
        for (i, backup) in ["audit-a.log", "audit-b.log", "audit-c.log"]
            .iter()
            .enumerate()
        {
            append(&log, &format!("{}\n", i + 2));
            std::thread::sleep(Duration::from_millis(20));
            fs::rename(&log, d.join(backup)).unwrap();
        }
        append(&log, "5\n");
        fs::write(d.join("other.log"), "not ours\n").unwrap();
        let (_, sink) = resumed(&log, Some(cp), StartAt::End, None);
        assert_eq!(sink.text(), "2\n3\n4\n5\n");
        let _ = fs::remove_dir_all(&d);
    }
}
