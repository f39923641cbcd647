//! Sources: where records come from. For now, files and stdin read to the end (replay);
//! the live daemon adds followed files and the webhook behind the same record interface.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Unknown,
    Lines,
    Document,
    Done,
}

/// Reads records from a file or stdin, remembering where each one starts.
pub struct RecordReader {
    name: Arc<str>,
    reader: Box<dyn BufRead + Send>,
    buf: String,
    /// Raw bytes of the current line, reused across lines.
    bytes: Vec<u8>,
    shape: Shape,
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

impl RecordReader {
    /// Opens `path`, or stdin for `-`.
    pub fn open(path: &Path) -> io::Result<RecordReader> {
        if path.as_os_str() == "-" {
            return Ok(RecordReader::new("<stdin>", Box::new(BufReader::new(io::stdin()))));
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
            buf: String::new(),
            bytes: Vec::new(),
            shape: Shape::Unknown,
            next_line: 1,
            next_offset: 0,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The record returned by the last `next_record` call, again.
    pub fn current(&self) -> (&Position, &str) {
        let text = match self.shape {
            Shape::Done | Shape::Document => self.buf.as_str(),
            _ => self.buf.trim_end_matches(['\n', '\r']),
        };
        (&self.current, text)
    }

    /// The next record, or `None` at the end of the input. Blank lines are skipped.
    /// Invalid UTF-8 is reported as an `InvalidData` error for that line; reading can go on.
    pub fn next_record(&mut self) -> io::Result<Option<RawRecord<'_>>> {
        loop {
            match self.shape {
                Shape::Done => return Ok(None),
                Shape::Document => {
                    self.shape = Shape::Done;
                    return Ok(Some(RawRecord {
                        position: &self.current,
                        text: &self.buf,
                    }));
                }
                Shape::Unknown | Shape::Lines => {}
            }
            self.buf.clear();
            let line_start = self.next_offset;
            let line_no = self.next_line;
            self.bytes.clear();
            let n = self.reader.read_until(b'\n', &mut self.bytes)?;
            if n == 0 {
                self.shape = Shape::Done;
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
            match std::str::from_utf8(&self.bytes) {
                Ok(s) => self.buf.push_str(s),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: invalid UTF-8", self.current),
                    ));
                }
            }
            let trimmed = self.buf.trim();
            if trimmed.is_empty() {
                continue;
            }
            if self.shape == Shape::Unknown {
                self.shape = Shape::Lines;
                if let Err(e) = serde_json::from_str::<IgnoredAny>(trimmed)
                    && e.is_eof()
                {
                    // The first value spans lines: read the rest as one document.
                    self.reader.read_to_string(&mut self.buf)?;
                    self.shape = Shape::Document;
                    continue;
                }
            }
            let text = self.buf.trim_end_matches(['\n', '\r']);
            return Ok(Some(RawRecord {
                position: &self.current,
                text,
            }));
        }
    }
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
            Box::new(io::Cursor::new(b"{\"a\":1}\n\xff\xfe\n{\"b\":2}\n".to_vec())),
        );
        assert!(r.next_record().unwrap().is_some());
        let err = r.next_record().err().unwrap();
        assert_eq!(err.to_string(), "t:2: invalid UTF-8");
        assert_eq!(r.next_record().unwrap().unwrap().text, "{\"b\":2}");
    }
}
