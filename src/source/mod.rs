//! Sources: where records come from. This module reads files and stdin to the end (replay);
//! [`tail`] follows a live log file with checkpoints and [`webhook`] is the apiserver's audit
//! webhook endpoint (both used by the daemon).
//!
//! A record is one unit for the decoder: a line of a JSON-lines file, or the whole input when it
//! is one pretty-printed document (a single `Event`, an `EventList`, or an array). The shape is
//! sniffed from the first non-blank line: if that line is not a complete JSON value by itself,
//! the input is read as one document.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use serde::de::IgnoredAny;

use crate::event::Position;

pub mod batch;
pub mod config;
pub mod stdin;
pub mod tail;
pub mod webhook;

pub use batch::{Backlog, Batch, Encoding, Input, Progress, Shape, Sink};
pub use config::{FileConfig, SourceConfig, StdinConfig};

/// How a file being replayed is laid out (sniffed from its first line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Unknown,
    Lines,
    Document,
    Done,
}

/// Reads records from a file or stdin, remembering where each one starts.
///
/// A line that lies wholly inside the reader's buffer is handed out in place (no copy); only a
/// line that straddles a buffer refill is assembled in `spill`.
pub struct RecordReader {
    name: Arc<str>,
    reader: Box<dyn BufRead + Send>,
    /// The whole input, in document mode.
    doc: String,
    /// A line assembled across buffer refills.
    spill: Vec<u8>,
    /// Where the current line is: in the reader's buffer (`Some(len)`) or in `spill`.
    in_buffer: Option<usize>,
    /// Bytes of the reader's buffer to consume before reading on.
    pending_consume: usize,
    shape: Layout,
    /// 1-based number of the next line to read.
    next_line: u64,
    /// Byte offset of the next line to read.
    next_offset: u64,
    current: Position,
}

/// One record's text and where it starts.
pub struct RawRecord<'a> {
    pub position: &'a Position,
    pub text: &'a str,
}

fn line_text(bytes: &[u8]) -> Option<&str> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    // SIMD validation: every line passes here, and the std check was ~3% of replay CPU.
    simdutf8::basic::from_utf8(bytes).ok()
}

impl RecordReader {
    /// Opens `path`, or stdin for `-`.
    pub fn open(path: &Path) -> io::Result<RecordReader> {
        if path.as_os_str() == "-" {
            return Ok(RecordReader::new(
                "<stdin>",
                Box::new(BufReader::new(io::stdin())),
            ));
        }
        let file = File::open(path)?;
        Ok(RecordReader::new(
            &path.display().to_string(),
            Box::new(BufReader::with_capacity(256 * 1024, file)),
        ))
    }

    pub fn new(name: &str, reader: Box<dyn BufRead + Send>) -> RecordReader {
        let name: Arc<str> = Arc::from(name);
        RecordReader {
            current: Position {
                source: name.clone(),
                line: 0,
                offset: 0,
                item: None,
            },
            name,
            reader,
            doc: String::new(),
            spill: Vec::new(),
            in_buffer: None,
            pending_consume: 0,
            shape: Layout::Unknown,
            next_line: 1,
            next_offset: 0,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Reads the next physical line (with its newline) into place; returns its length, 0 at
    /// the end of the input.
    fn read_line(&mut self) -> io::Result<usize> {
        self.reader
            .consume(std::mem::take(&mut self.pending_consume));
        self.in_buffer = None;
        self.spill.clear();
        let buf = self.reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(i) = memchr_newline(buf) {
            self.in_buffer = Some(i + 1);
            self.pending_consume = i + 1;
            return Ok(i + 1);
        }
        // The line continues past the buffer: assemble it.
        self.reader.read_until(b'\n', &mut self.spill)
    }

    fn line_bytes(&mut self) -> &[u8] {
        line_in(&mut self.reader, &self.spill, self.in_buffer)
    }

    /// The record returned by the last `next_record` call, again.
    pub fn current(&mut self) -> (&Position, &str) {
        if self.shape == Layout::Document || !self.doc.is_empty() {
            return (&self.current, &self.doc);
        }
        let text = match self.in_buffer {
            Some(len) => match self.reader.fill_buf() {
                Ok(buf) => line_text(&buf[..len.min(buf.len())]).unwrap_or(""),
                Err(_) => "",
            },
            None => line_text(&self.spill).unwrap_or(""),
        };
        (&self.current, text)
    }

    /// The next record, or `None` at the end of the input. Blank lines are skipped.
    /// Invalid UTF-8 is reported as an `InvalidData` error for that line; reading can go on.
    pub fn next_record(&mut self) -> io::Result<Option<RawRecord<'_>>> {
        loop {
            match self.shape {
                Layout::Done => return Ok(None),
                Layout::Document => {
                    self.shape = Layout::Done;
                    return Ok(Some(RawRecord {
                        position: &self.current,
                        text: &self.doc,
                    }));
                }
                Layout::Unknown | Layout::Lines => {}
            }
            let line_start = self.next_offset;
            let line_no = self.next_line;
            let n = self.read_line()?;
            if n == 0 {
                self.shape = Layout::Done;
                return Ok(None);
            }
            self.next_offset += n as u64;
            self.next_line += 1;
            self.current = Position {
                source: self.name.clone(),
                line: line_no,
                offset: line_start,
                item: None,
            };
            if self.line_bytes().trim_ascii().is_empty() {
                continue;
            }
            if self.shape == Layout::Unknown {
                self.shape = Layout::Lines;
                if self.sniff_document()? {
                    continue;
                }
            }
            break;
        }
        // One UTF-8 validation per line, and the line is handed out in place.
        let bytes = line_in(&mut self.reader, &self.spill, self.in_buffer);
        match line_text(bytes) {
            Some(text) => Ok(Some(RawRecord {
                position: &self.current,
                text,
            })),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: invalid UTF-8", self.current),
            )),
        }
    }

    /// On the first non-blank line: if it is not a complete JSON value by itself, reads the
    /// whole input as one document and returns true.
    fn sniff_document(&mut self) -> io::Result<bool> {
        let start = {
            let Some(text) = line_text(self.line_bytes()) else {
                return Ok(false);
            };
            match serde_json::from_str::<IgnoredAny>(text.trim()) {
                Err(e) if e.is_eof() => text.to_owned(),
                _ => return Ok(false),
            }
        };
        let mut doc = start;
        doc.push('\n');
        self.reader
            .consume(std::mem::take(&mut self.pending_consume));
        self.in_buffer = None;
        self.reader.read_to_string(&mut doc)?;
        self.doc = doc;
        self.shape = Layout::Document;
        Ok(true)
    }
}

/// The current line's bytes: in the reader's buffer (`Some(len)`) or assembled in `spill`.
/// A free function so callers can borrow other fields of the reader at the same time.
fn line_in<'a>(
    reader: &'a mut Box<dyn BufRead + Send>,
    spill: &'a [u8],
    in_buffer: Option<usize>,
) -> &'a [u8] {
    match in_buffer {
        // fill_buf returns the same, unconsumed buffer again without reading.
        Some(len) => match reader.fill_buf() {
            Ok(buf) => &buf[..len.min(buf.len())],
            Err(_) => &[],
        },
        None => spill,
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(input: &str) -> Vec<(u64, u64, String)> {
        let mut r = RecordReader::new("t", Box::new(io::Cursor::new(input.as_bytes().to_vec())));
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push((rec.position.line, rec.position.offset, rec.text.to_owned()));
        }
        out
    }

    #[test]
    fn json_lines_keep_line_numbers_and_offsets() {
        let got = records("{\"a\":1}\n\n{\"b\":2}\r\nnot json\n");
        assert_eq!(
            got,
            vec![
                (1, 0, "{\"a\":1}".to_owned()),
                (3, 9, "{\"b\":2}".to_owned()),
                (4, 18, "not json".to_owned()),
            ]
        );
    }

    #[test]
    fn lines_straddling_buffer_refills_are_assembled() {
        let input = "{\"a\":1}\n\n{\"bbbbbbbb\":2}\n{}\n";
        let tiny = BufReader::with_capacity(4, io::Cursor::new(input.as_bytes().to_vec()));
        let mut r = RecordReader::new("t", Box::new(tiny));
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push((rec.position.line, rec.position.offset, rec.text.to_owned()));
        }
        assert_eq!(got, records(input));
        assert_eq!(got.len(), 3);
        let doc = "{\n  \"kind\": \"EventList\",\n  \"items\": []\n}\n";
        let tiny = BufReader::with_capacity(3, io::Cursor::new(doc.as_bytes().to_vec()));
        let mut r = RecordReader::new("t", Box::new(tiny));
        assert_eq!(r.next_record().unwrap().unwrap().text, doc);
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn a_pretty_printed_document_is_one_record() {
        let doc = "{\n  \"kind\": \"EventList\",\n  \"items\": []\n}\n";
        let got = records(doc);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 1);
        assert_eq!(got[0].2, doc);
    }

    #[test]
    fn invalid_utf8_is_an_error_for_that_line_only() {
        let mut r = RecordReader::new(
            "t",
            Box::new(io::Cursor::new(
                b"{\"a\":1}\n\xff\xfe\n{\"b\":2}\n".to_vec(),
            )),
        );
        assert!(r.next_record().unwrap().is_some());
        let err = r.next_record().err().unwrap();
        assert_eq!(err.to_string(), "t:2: invalid UTF-8");
        assert_eq!(r.next_record().unwrap().unwrap().text, "{\"b\":2}");
    }
}
