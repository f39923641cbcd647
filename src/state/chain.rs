//! The alert journal's hash chain: one line in `alerts.jsonl.chain` per journal record (an
//! alert or a change), holding the record's offset, length and SHA-256, chained to the line
//! before it. Editing, removing, reordering or inserting a record, or cutting the journal
//! short, breaks a link that `auditwatch verify` names by record; the newest hash (the head)
//! can be published elsewhere, like the archive's, to catch a rewrite of both files.
//!
//! The journal's own format is unchanged (readers and receivers see the same lines): the
//! chain is beside it, so a journal written before the chain existed is chained from its
//! first record when the daemon next opens it.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The `prev` of the first link.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain file of a journal: `alerts.jsonl` → `alerts.jsonl.chain`.
pub fn chain_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".chain");
    PathBuf::from(name)
}

/// One link: a journal record and the hash that chains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// 1-based record number (the journal's line number).
    pub n: u64,
    pub offset: u64,
    /// The record's length, its newline included.
    pub bytes: u64,
    pub sha256: String,
    pub prev: String,
    pub hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Link {
    fn new(n: u64, offset: u64, record: &[u8], prev: &str) -> Link {
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, record).as_ref());
        let mut link = Link {
            n,
            offset,
            bytes: record.len() as u64,
            sha256,
            prev: prev.to_owned(),
            hash: String::new(),
        };
        link.hash = link.expected_hash();
        link
    }

    /// The hash this link must carry: over its other fields, each length-prefixed.
    pub fn expected_hash(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let (n, offset, bytes) = (
            self.n.to_le_bytes(),
            self.offset.to_le_bytes(),
            self.bytes.to_le_bytes(),
        );
        for part in [
            b"auditwatch-alerts-v1".as_slice(),
            &n,
            &offset,
            &bytes,
            self.sha256.as_bytes(),
            self.prev.as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        hex(ctx.finish().as_ref())
    }
}

/// Appends links as the journal grows.
pub struct ChainWriter {
    file: File,
    head: String,
    next_n: u64,
    /// The journal offset the chain covers up to.
    covered: u64,
    line: Vec<u8>,
}

fn read_links(path: &Path) -> io::Result<Vec<Link>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut links = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let link: Link = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), i + 1),
            )
        })?;
        links.push(link);
    }
    Ok(links)
}

impl ChainWriter {
    /// Opens the chain of `journal` (whose complete lines end at `journal_len`) and chains
    /// the records it does not cover yet: a journal from before the chain, or a crash between
    /// a journal write and its link. A partial last link is cut.
    pub fn open(journal: &Path, journal_len: u64) -> io::Result<ChainWriter> {
        let path = chain_path(journal);
        if let Ok(text) = std::fs::read(&path)
            && !text.is_empty()
            && !text.ends_with(b"\n")
        {
            let good = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(good as u64)?;
        }
        let links = read_links(&path)?;
        let (head, next_n, covered) = links.last().map_or((GENESIS.to_owned(), 1, 0), |l| {
            (l.hash.clone(), l.n + 1, l.offset + l.bytes)
        });
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut writer = ChainWriter {
            file,
            head,
            next_n,
            covered,
            line: Vec::new(),
        };
        if covered < journal_len {
            let mut j = File::open(journal)?;
            j.seek(SeekFrom::Start(covered))?;
            let mut rest = Vec::new();
            j.take(journal_len - covered).read_to_end(&mut rest)?;
            let mut at = covered;
            for record in rest.split_inclusive(|&b| b == b'\n') {
                writer.push(at, record)?;
                at += record.len() as u64;
            }
            writer.file.sync_data()?;
        }
        Ok(writer)
    }

    /// Chains the record written at `offset` (its bytes, newline included).
    pub fn push(&mut self, offset: u64, record: &[u8]) -> io::Result<()> {
        let link = Link::new(self.next_n, offset, record, &self.head);
        self.line.clear();
        serde_json::to_writer(&mut self.line, &link).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.file.write_all(&self.line)?;
        self.head = link.hash;
        self.next_n += 1;
        self.covered = offset + record.len() as u64;
        Ok(())
    }

    /// Chains every line of `records` (one write), written at `offset`.
    pub fn push_all(&mut self, offset: u64, records: &[u8]) -> io::Result<()> {
        let mut at = offset;
        for record in records.split_inclusive(|&b| b == b'\n') {
            self.push(at, record)?;
            at += record.len() as u64;
        }
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The newest hash.
    pub fn head(&self) -> &str {
        &self.head
    }
}

/// What verifying an alert journal found: the head and the number of records, or the
/// first broken link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    Intact { head: String, records: u64 },
    Tampered { at: String, reason: String },
    Unreadable(String),
}

/// Checks `journal` against its chain: every record's bytes, order and links, that no record
/// is missing or added, and (when given) that the chain reaches the head published elsewhere.
pub fn verify(journal: &Path, expect_head: Option<&str>) -> ChainVerdict {
    let name = journal.file_name().map_or_else(
        || journal.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let chain = chain_path(journal);
    let links = match read_links(&chain) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return ChainVerdict::Tampered {
                at: format!("{name}.chain"),
                reason: format!("a line that is not a link: {e}"),
            };
        }
        Err(e) => return ChainVerdict::Unreadable(format!("{}: {e}", chain.display())),
    };
    let data = match std::fs::read(journal) {
        Ok(d) => d,
        Err(e) => return ChainVerdict::Unreadable(format!("{}: {e}", journal.display())),
    };
    let tampered = |at: String, reason: &str| ChainVerdict::Tampered {
        at,
        reason: reason.to_owned(),
    };
    let mut prev = GENESIS.to_owned();
    let mut offset = 0u64;
    let mut seen_head = expect_head.is_none();
    for (i, link) in links.iter().enumerate() {
        let n = i as u64 + 1;
        let at = format!("{name} record {n} (line {n})");
        if link.n != n || link.offset != offset {
            return tampered(
                at,
                "the chain skips or repeats a record: removed or reordered",
            );
        }
        if link.prev != prev || link.hash != link.expected_hash() {
            return tampered(
                format!("{name}.chain line {n}"),
                "the link does not chain to the one before it, or was edited",
            );
        }
        let end = offset.saturating_add(link.bytes);
        let Some(record) = data.get(offset as usize..end as usize) else {
            return tampered(at, "the journal ends before this record: truncated");
        };
        let sha = hex(ring::digest::digest(&ring::digest::SHA256, record).as_ref());
        if sha != link.sha256 || !record.ends_with(b"\n") {
            return tampered(at, "its SHA-256 is not the chain's: the record was edited");
        }
        if expect_head == Some(link.hash.as_str()) {
            seen_head = true;
        }
        prev = link.hash.clone();
        offset = end;
    }
    if (offset as usize) < data.len() {
        let n = links.len() + 1;
        return tampered(
            format!("{name} record {n} (line {n})"),
            "a record the chain does not cover: inserted or appended by something other than auditwatch",
        );
    }
    if !seen_head {
        return tampered(
            format!("{name}.chain"),
            "the published head is not in the chain: rolled back or rewritten",
        );
    }
    ChainVerdict::Intact {
        head: prev,
        records: links.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path, lines: &[&str]) -> PathBuf {
        let path = dir.join("alerts.jsonl");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let _ = std::fs::remove_file(chain_path(&path));
        ChainWriter::open(&path, text.len() as u64).unwrap();
        path
    }

    #[test]
    fn every_edit_of_the_journal_breaks_a_link_named_by_record() {
        let dir = std::env::temp_dir().join(format!("aw-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines = ["{\"id\":\"a\"}", "{\"id\":\"b\"}", "{\"id\":\"c\"}"];
        let path = journal(&dir, &lines);
        let ChainVerdict::Intact { head, records } = verify(&path, None) else {
            panic!("{:?}", verify(&path, None));
        };
        assert_eq!(records, 3);
        assert!(matches!(
            verify(&path, Some(&head)),
            ChainVerdict::Intact { .. }
        ));

        let at = |v: ChainVerdict| match v {
            ChainVerdict::Tampered { at, .. } => at,
            other => panic!("{other:?}"),
        };
        let chained = std::fs::read_to_string(chain_path(&path)).unwrap();
        // Edited.
        std::fs::write(&path, "{\"id\":\"a\"}\n{\"id\":\"B\"}\n{\"id\":\"c\"}\n").unwrap();
        assert_eq!(at(verify(&path, None)), "alerts.jsonl record 2 (line 2)");
        // Removed.
        std::fs::write(&path, "{\"id\":\"a\"}\n{\"id\":\"c\"}\n").unwrap();
        assert_eq!(at(verify(&path, None)), "alerts.jsonl record 2 (line 2)");
        // Reordered.
        std::fs::write(&path, "{\"id\":\"b\"}\n{\"id\":\"a\"}\n{\"id\":\"c\"}\n").unwrap();
        assert_eq!(at(verify(&path, None)), "alerts.jsonl record 1 (line 1)");
        // Appended behind the daemon's back.
        std::fs::write(
            &path,
            "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n",
        )
        .unwrap();
        assert_eq!(at(verify(&path, None)), "alerts.jsonl record 4 (line 4)");
        // Truncated.
        std::fs::write(&path, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n").unwrap();
        assert_eq!(at(verify(&path, None)), "alerts.jsonl record 3 (line 3)");
        // Both files rewritten consistently: only the published head catches it.
        let path = journal(&dir, &["{\"id\":\"a\"}", "{\"id\":\"x\"}"]);
        assert!(matches!(verify(&path, None), ChainVerdict::Intact { .. }));
        assert_eq!(at(verify(&path, Some(&head))), "alerts.jsonl.chain");
        drop(chained);
        std::fs::remove_dir_all(&dir).ok();
    }
}
