//! The ingest journal: webhook batches are appended here (and, by policy, fsynced) before the
//! sender gets its 2xx, so an accepted batch survives a kill -9.
//!
//! Layout: `journal/<first seq, 20 digits>.seg` files, each a run of records
//! `[len: u32 LE][crc32: u32 LE][seq: u64 LE][payload: len bytes]`, the CRC covering the
//! sequence number and the payload. A segment is closed when it exceeds the segment size.
//! On open, a torn record at the end of the newest segment (a crash mid-write: a record cut
//! short, or a tail of zeros) is cut off. A bad record anywhere else is corruption: it is
//! reported with its segment and byte offset and the daemon refuses to start, unless told to
//! [`salvage`] the segment (`auditwatch run --skip-corrupt`): its readable records are kept and
//! the damaged file is set aside for inspection.
//! Segments whose records are all covered by a state snapshot are deleted ([`Journal::compact`],
//! or [`Journal::detach`] + [`remove_segments`] off the append path).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::state::FsyncPolicy;

const HEADER: usize = 16;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal {path}: corrupt record at byte {offset}: {why}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    len: u64,
}

pub struct Journal {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The newest segment, open for appending.
    file: Option<File>,
    next_seq: u64,
    segment_size: u64,
    fsync: FsyncPolicy,
}

impl Journal {
    /// Opens (creating) the journal in `dir`, repairing a torn tail.
    pub fn open(
        dir: &Path,
        segment_size: u64,
        fsync: FsyncPolicy,
    ) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(TRASH_SUFFIX)) {
                // Left over from a compaction interrupted by a crash: already covered.
                delete_file(&entry.path(), Removal::Immediate).map_err(io_err(&entry.path()))?;
                continue;
            }
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry.metadata().map_err(io_err(&entry.path()))?.len();
            segments.push(Segment {
                first_seq: first,
                path: entry.path(),
                len,
            });
        }
        segments.sort_by_key(|s| s.first_seq);
        let mut journal = Journal {
            dir: dir.to_owned(),
            segments,
            file: None,
            next_seq: 1,
            segment_size: segment_size.max(4096),
            fsync,
        };
        if let Some(last) = journal.segments.last_mut() {
            // Find the end of the last whole record; cut a torn tail.
            let mut reader = SegmentReader::open(&last.path)?;
            let mut last_seq = last.first_seq.saturating_sub(1);
            let mut good_end = 0;
            let mut torn_seq = None;
            loop {
                match reader.next_record() {
                    Ok(Some((seq, _))) => {
                        last_seq = seq;
                        good_end = reader.offset;
                    }
                    Ok(None) => break,
                    Err(e @ JournalError::Corrupt { .. }) => {
                        if !reader.rest_is_torn()? {
                            return Err(e);
                        }
                        torn_seq = reader.header_seq;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if good_end < last.len {
                let acknowledged = match fsync {
                    FsyncPolicy::Always => {
                        "with journal.fsync: always a batch is acknowledged only after its record is on disk, so this one was not, unless the file was cut after the fact (then an acknowledged batch is lost)"
                    }
                    FsyncPolicy::Never => {
                        "with journal.fsync: never it may have been acknowledged before the crash: that batch is lost"
                    }
                };
                tracing::warn!(
                    segment = %last.path.display(),
                    kept = good_end,
                    dropped = last.len - good_end,
                    record = ?torn_seq,
                    "journal: cutting an incomplete record at the end, left by a write cut short; {acknowledged}"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(io_err(&last.path))?;
                f.set_len(good_end).map_err(io_err(&last.path))?;
                f.sync_all().map_err(io_err(&last.path))?;
                last.len = good_end;
            }
            journal.next_seq = last_seq + 1;
        }
        Ok(journal)
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence number of the oldest record held (the next one when empty).
    pub fn first_seq(&self) -> u64 {
        self.segments.first().map_or(self.next_seq, |s| s.first_seq)
    }

    /// Numbers new records above `min`: a snapshot may cover sequence numbers of a journal
    /// that was lost or set aside, and a reused number would be skipped by the next replay.
    pub fn ensure_next_seq(&mut self, min: u64) {
        // Segments are named after their first record; later ones in a segment may jump.
        self.next_seq = self.next_seq.max(min);
    }

    /// Bytes held in all segments.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Appends records and makes them durable according to the fsync policy (one fsync for
    /// the whole group). Returns the sequence number of each.
    pub fn append(&mut self, payloads: &[&[u8]]) -> Result<Vec<u64>, JournalError> {
        let mut seqs = Vec::with_capacity(payloads.len());
        for payload in payloads {
            if self.file.is_none()
                || self
                    .segments
                    .last()
                    .is_some_and(|s| s.len >= self.segment_size)
            {
                self.roll()?;
            }
            let seq = self.next_seq;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&seq.to_le_bytes());
            crc.update(payload);
            let mut record = Vec::with_capacity(HEADER + payload.len());
            record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            record.extend_from_slice(&crc.finalize().to_le_bytes());
            record.extend_from_slice(&seq.to_le_bytes());
            record.extend_from_slice(payload);
            let segment = self.segments.last_mut().ok_or_else(|| JournalError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no open segment"),
            })?;
            let file = self.file.as_mut().ok_or_else(|| JournalError::Io {
                path: segment.path.clone(),
                source: io::Error::other("no open segment"),
            })?;
            file.write_all(&record).map_err(io_err(&segment.path))?;
            segment.len += record.len() as u64;
            self.next_seq += 1;
            seqs.push(seq);
        }
        if self.fsync == FsyncPolicy::Always
            && let (Some(file), Some(segment)) = (&self.file, self.segments.last())
        {
            file.sync_data().map_err(io_err(&segment.path))?;
        }
        Ok(seqs)
    }

    /// Starts a new segment (on open, and when the current one is full).
    fn roll(&mut self) -> Result<(), JournalError> {
        if let (Some(file), Some(segment)) = (&self.file, self.segments.last()) {
            file.sync_all().map_err(io_err(&segment.path))?;
        }
        // Reuse an empty newest segment (e.g. after opening) instead of making another.
        let reuse = self.file.is_none()
            && self
                .segments
                .last()
                .is_some_and(|s| s.len < self.segment_size);
        let path = if reuse {
            self.segments.last().map(|s| s.path.clone())
        } else {
            None
        };
        let path = match path {
            Some(p) => p,
            None => {
                let p = self.dir.join(format!("{:020}.seg", self.next_seq));
                self.segments.push(Segment {
                    first_seq: self.next_seq,
                    path: p.clone(),
                    len: 0,
                });
                p
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if !reuse {
            sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        self.file = Some(file);
        Ok(())
    }

    /// Reads every record with a sequence number above `after`, in order.
    pub fn read_after(&self, after: u64) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let mut out = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            let next_first = self.segments.get(i + 1).map(|s| s.first_seq);
            if next_first.is_some_and(|n| n <= after + 1) {
                continue;
            }
            let mut reader = SegmentReader::open(&segment.path)?;
            while let Some((seq, payload)) = reader.next_record()? {
                if seq > after {
                    out.push((seq, payload));
                }
            }
        }
        Ok(out)
    }

    /// Deletes segments whose records all have sequence numbers ≤ `upto` (covered by a
    /// snapshot). The newest segment stays.
    pub fn compact(&mut self, upto: u64) -> Result<usize, JournalError> {
        let paths = self.detach(upto);
        let n = paths.len();
        remove_segments(&self.dir, &paths, Removal::Immediate)?;
        Ok(n)
    }

    /// Forgets the segments wholly at or before `upto` and returns their paths, for
    /// [`remove_segments`] to delete elsewhere: unlinking large files can take long enough
    /// to stall appends. Until they are removed they are harmless: reading starts after the
    /// snapshot's sequence number anyway.
    pub fn detach(&mut self, upto: u64) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        while self.segments.len() > 1 && self.segments[1].first_seq <= upto + 1 {
            paths.push(self.segments.remove(0).path);
        }
        paths
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Sets a damaged segment aside (renamed with `.corrupt-<unix time>`, kept for inspection)
/// and writes its records before the damage back under its name, so that they are replayed.
/// Returns where the damaged file went. The records after the damage are lost.
pub fn salvage(path: &Path, good_bytes: u64) -> Result<PathBuf, JournalError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{secs}"));
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside).map_err(io_err(path))?;
    let mut good = vec![0u8; good_bytes as usize];
    File::open(&aside)
        .and_then(|mut f| f.read_exact(&mut good))
        .map_err(io_err(&aside))?;
    let mut out = File::create(path).map_err(io_err(path))?;
    out.write_all(&good).map_err(io_err(path))?;
    out.sync_all().map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(aside)
}

/// A webhook batch as a journal record: the source name, U+001F and the sender (when
/// known), a newline, the body.
pub fn encode_batch(source: &str, origin: Option<&str>, body: &[u8]) -> Vec<u8> {
    let origin_len = origin.map_or(0, |o| o.len() + 1);
    let mut p = Vec::with_capacity(source.len() + origin_len + 1 + body.len());
    p.extend_from_slice(source.as_bytes());
    if let Some(origin) = origin {
        p.push(ORIGIN_SEPARATOR);
        p.extend_from_slice(origin.as_bytes());
    }
    p.push(b'\n');
    p.extend_from_slice(body);
    p
}

const ORIGIN_SEPARATOR: u8 = 0x1f;

/// A journal record's parts, as [`encode_batch`] wrote them.
#[derive(Debug, PartialEq, Eq)]
pub struct JournaledBatch<'a> {
    pub source: &'a str,
    pub origin: Option<&'a str>,
    pub body: &'a [u8],
}

/// Splits a record back into its parts (records written before senders were recorded have
/// no origin).
pub fn decode_batch(payload: &[u8]) -> JournaledBatch<'_> {
    let (header, body) = match payload.iter().position(|&b| b == b'\n') {
        Some(i) => (&payload[..i], &payload[i + 1..]),
        None => (&b"webhook"[..], payload),
    };
    let header = std::str::from_utf8(header).unwrap_or("webhook");
    let (source, origin) = match header.split_once(char::from(ORIGIN_SEPARATOR)) {
        Some((source, origin)) => (source, Some(origin)),
        None => (header, None),
    };
    JournaledBatch {
        source,
        origin,
        body,
    }
}

/// Suffix of a compacted segment waiting to be deleted; [`Journal::open`] ignores and removes
/// such files.
const TRASH_SUFFIX: &str = ".seg.trash";

/// How compacted segments are deleted.
#[derive(Debug, Clone, Copy)]
pub enum Removal {
    /// Unlink at once.
    Immediate,
    /// Shrink each file `step` bytes at a time with `pause` in between, then unlink it.
    /// Unlinking a large file frees all its extents in one filesystem transaction, which
    /// stalls every concurrent fsync (measured: 8 × 64 MiB took 370 ms on ext4, and webhook
    /// acks waited behind it); shrinking in steps spreads that work out.
    Paced {
        step: u64,
        pause: std::time::Duration,
    },
}

impl Removal {
    /// What the daemon uses: 8 MiB every 20 ms, i.e. up to 400 MiB/s, far ahead of any
    /// plausible ingest rate.
    pub const DAEMON: Removal = Removal::Paced {
        step: 8 << 20,
        pause: std::time::Duration::from_millis(20),
    };
}

/// Deletes detached segments and makes the removal durable. Each segment is first renamed
/// out of the journal (so a crash mid-way never leaves a half-shrunk segment for the
/// journal to read), then deleted as `how` says.
pub fn remove_segments(dir: &Path, paths: &[PathBuf], how: Removal) -> Result<(), JournalError> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut trash = Vec::with_capacity(paths.len());
    for path in paths {
        let mut name = path.clone().into_os_string();
        name.push(".trash");
        let to = PathBuf::from(name);
        match fs::rename(path, &to) {
            Ok(()) => trash.push(to),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    sync_dir(dir).map_err(io_err(dir))?;
    for path in &trash {
        delete_file(path, how).map_err(io_err(path))?;
    }
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(())
}

fn delete_file(path: &Path, how: Removal) -> io::Result<()> {
    if let Removal::Paced { step, pause } = how {
        let file = OpenOptions::new().write(true).open(path)?;
        let mut len = file.metadata()?.len();
        while len > step {
            len -= step;
            file.set_len(len)?;
            std::thread::sleep(pause);
        }
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// fsyncs a directory so that a created, renamed or removed entry is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct SegmentReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// Offset of the next record (after the last good one).
    offset: u64,
    len: u64,
    /// The sequence number in the last header read, for messages about a bad record.
    header_seq: Option<u64>,
}

impl SegmentReader {
    fn open(path: &Path) -> Result<SegmentReader, JournalError> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        Ok(SegmentReader {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 16, file),
            offset: 0,
            len,
            header_seq: None,
        })
    }

    /// After a bad record: whether everything from it to the end looks like a write cut short
    /// (a record running past the end of the file, or only zeros, as a crash leaves in a
    /// file extended but not yet written) rather than damage followed by good data.
    fn rest_is_torn(&mut self) -> Result<bool, JournalError> {
        let mut file = File::open(&self.path).map_err(io_err(&self.path))?;
        file.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(&self.path))?;
        let mut header = [0u8; HEADER];
        let rest = self.len - self.offset;
        if rest < HEADER as u64 {
            return Ok(true);
        }
        file.read_exact(&mut header).map_err(io_err(&self.path))?;
        let len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        if rest < HEADER as u64 + len {
            return Ok(true);
        }
        if header.iter().any(|&b| b != 0) {
            // A whole record with a bad checksum: damage, even at the very end.
            return Ok(false);
        }
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io_err(&self.path))?;
            if n == 0 {
                return Ok(true);
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
    }

    /// The next whole record; `None` at a clean end. A short or bad record is `Corrupt`.
    fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            let n = self
                .reader
                .read(&mut header[got..])
                .map_err(io_err(&self.path))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            return Ok(None);
        }
        let corrupt = |why: &str, offset| JournalError::Corrupt {
            path: self.path.clone(),
            offset,
            why: why.to_owned(),
        };
        if got < HEADER {
            return Err(corrupt("truncated header", self.offset));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[8..16]);
        let seq = u64::from_le_bytes(seq_bytes);
        self.header_seq = Some(seq);
        // A damaged length must not become a huge allocation.
        if self.offset + (HEADER + len) as u64 > self.len {
            return Err(corrupt("truncated payload", self.offset));
        }
        let mut payload = vec![0u8; len];
        self.reader
            .read_exact(&mut payload)
            .map_err(|_| corrupt("truncated payload", self.offset))?;
        let mut h = crc32fast::Hasher::new();
        h.update(&seq_bytes);
        h.update(&payload);
        if h.finalize() != crc {
            return Err(corrupt("checksum mismatch", self.offset));
        }
        self.offset += (HEADER + len) as u64;
        Ok(Some((seq, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aw-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn appends_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempdir("torn");
        let mut j = Journal::open(&dir, 4096, FsyncPolicy::Always).unwrap();
        assert_eq!(j.append(&[b"one", b"two"]).unwrap(), vec![1, 2]);
        drop(j);
        // A crash in the middle of writing record 3.
        let seg = dir.join(format!("{:020}.seg", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let mut j = Journal::open(&dir, 4096, FsyncPolicy::Always).unwrap();
        assert_eq!(j.next_seq(), 3);
        assert_eq!(j.append(&[b"three"]).unwrap(), vec![3]);
        let all = j.read_after(0).unwrap();
        let payloads: Vec<&[u8]> = all.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(j.read_after(2).unwrap().len(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 16.5: damage in the middle of the newest segment was cut off with everything
    /// after it, as if it were a torn write. It is corruption: open refuses, naming the place;
    /// salvaging keeps the records before it and sets the file aside.
    #[test]
    fn damage_before_good_records_is_corruption_not_a_torn_tail() {
        let dir = tempdir("damage");
        let mut j = Journal::open(&dir, 1 << 20, FsyncPolicy::Always).unwrap();
        j.append(&[b"one", b"two", b"three"]).unwrap();
        drop(j);
        let seg = dir.join(format!("{:020}.seg", 1));
        let mut bytes = fs::read(&seg).unwrap();
        let second = HEADER + 3;
        bytes[second + HEADER] ^= 0x20; // a bit flip in "two"
        fs::write(&seg, &bytes).unwrap();
        let e = Journal::open(&dir, 1 << 20, FsyncPolicy::Always)
            .err()
            .unwrap();
        let JournalError::Corrupt { path, offset, why } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            (*offset, why.as_str()),
            (second as u64, "checksum mismatch")
        );
        let aside = salvage(path, *offset).unwrap();
        assert!(aside.exists() && aside.to_string_lossy().contains(".corrupt-"));
        let mut j = Journal::open(&dir, 1 << 20, FsyncPolicy::Always).unwrap();
        let kept: Vec<Vec<u8>> = j.read_after(0).unwrap().into_iter().map(|r| r.1).collect();
        assert_eq!(kept, vec![b"one".to_vec()]);
        // Numbers already used by the lost records are not reused when a snapshot says so.
        j.ensure_next_seq(4);
        assert_eq!(j.append(&[b"four"]).unwrap(), vec![4]);
        let _ = fs::remove_dir_all(&dir);
    }

    /// A crash can leave a tail of zeros (the file extended, the data not written) or a
    /// record whose length runs past the end: both are torn writes, cut without a fuss, and
    /// a damaged length field never becomes a huge allocation.
    #[test]
    fn zero_tails_and_impossible_lengths_are_torn_writes() {
        let dir = tempdir("zeros");
        let mut j = Journal::open(&dir, 1 << 20, FsyncPolicy::Always).unwrap();
        j.append(&[b"one"]).unwrap();
        drop(j);
        let seg = dir.join(format!("{:020}.seg", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let j = Journal::open(&dir, 1 << 20, FsyncPolicy::Always).unwrap();
        assert_eq!(j.next_seq(), 2);
        assert_eq!(fs::metadata(&seg).unwrap().len(), (HEADER + 3) as u64);
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[
            0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 2, 0, 0, 0, 0, 0, 0, 0, 9,
        ])
        .unwrap();
        drop(f);
        let j = Journal::open(&dir, 1 << 20, FsyncPolicy::Always).unwrap();
        assert_eq!(j.read_after(0).unwrap().len(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_roll_and_compact() {
        let dir = tempdir("compact");
        let mut j = Journal::open(&dir, 4096, FsyncPolicy::Never).unwrap();
        let big = vec![b'x'; 3000];
        for _ in 0..10 {
            j.append(&[&big]).unwrap();
        }
        assert_eq!(j.segments.len(), 5, "two 3 KB records per 4 KiB segment");
        assert_eq!(j.compact(4).unwrap(), 2);
        assert_eq!(j.read_after(4).unwrap().len(), 6);
        assert_eq!(j.compact(100).unwrap(), 2, "the newest segment stays");
        drop(j);
        let j = Journal::open(&dir, 4096, FsyncPolicy::Never).unwrap();
        assert_eq!(j.next_seq(), 11);
        assert_eq!(j.read_after(8).unwrap().len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn paced_removal_deletes_detached_segments_and_open_clears_leftovers() {
        let dir = tempdir("paced");
        let mut j = Journal::open(&dir, 4096, FsyncPolicy::Never).unwrap();
        let big = vec![b'x'; 3000];
        for _ in 0..6 {
            j.append(&[&big]).unwrap();
        }
        let paths = j.detach(4);
        assert_eq!(paths.len(), 2);
        let paced = Removal::Paced {
            step: 1000,
            pause: std::time::Duration::ZERO,
        };
        remove_segments(&dir, &paths, paced).unwrap();
        assert!(paths.iter().all(|p| !p.exists()));
        // A compaction cut short by a crash leaves a renamed, half-shrunk segment behind.
        let stale = dir.join(format!("{:020}{TRASH_SUFFIX}", 1));
        fs::write(&stale, [7u8; 100]).unwrap();
        drop(j);
        let j = Journal::open(&dir, 4096, FsyncPolicy::Never).unwrap();
        assert!(!stale.exists());
        assert_eq!(j.next_seq(), 7);
        assert_eq!(j.read_after(4).unwrap().len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }
}
