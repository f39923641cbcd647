//! Reading the archive back: its segments in order, a row as its audit event's JSON, and a
//! stream of JSON lines over a segment directory, so that anything that reads audit log files
//! (`replay`, `query`) reads the archive as well.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::manifest::MANIFEST;
use super::segment_seq;

/// Whether `path` is read as archive: a directory (of segments) or a `*.parquet` segment.
pub fn is_archive(path: &Path) -> bool {
    path.is_dir() || path.extension().is_some_and(|e| e == "parquet")
}

/// The sealed segments of an archive directory, in order. Any other file (a segment in
/// progress aside) is named in `foreign` with why it is skipped.
pub fn segments(dir: &Path, foreign: &mut Vec<(String, String)>) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if segment_seq(&name).is_some() {
            out.push(path);
        } else if name != MANIFEST && !name.ends_with(".parquet.partial") {
            foreign.push((
                path.display().to_string(),
                "not an archive segment: skipped".into(),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Row `i` as its audit event's JSON: `user.username` becomes `{"user":{"username":…}}`,
/// the raw JSON columns are parsed, nulls are left out (as the apiserver omits them).
pub fn row_json(batch: &RecordBatch, i: usize) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut event = Map::new();
    event.insert("kind".into(), "Event".into());
    event.insert("apiVersion".into(), "audit.k8s.io/v1".into());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let name = field.name().as_str();
        if matches!(name, "time" | "source") || column.is_null(i) {
            continue;
        }
        let value = match column.data_type() {
            arrow_schema::DataType::Utf8 => {
                let text = column.as_string::<i32>().value(i);
                if matches!(name, "annotations" | "requestObject" | "responseObject") {
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
                } else {
                    Value::String(text.to_owned())
                }
            }
            arrow_schema::DataType::Dictionary(..) => {
                let dict = column.as_dictionary::<Int32Type>();
                let values = dict.values().as_string::<i32>();
                Value::String(values.value(dict.keys().value(i) as usize).to_owned())
            }
            arrow_schema::DataType::Int32 => column.as_primitive::<Int32Type>().value(i).into(),
            arrow_schema::DataType::List(_) => {
                let items = column.as_list::<i32>().value(i);
                let items = items.as_string::<i32>();
                Value::Array(
                    (0..items.len())
                        .filter(|&j| items.is_valid(j))
                        .map(|j| Value::String(items.value(j).to_owned()))
                        .collect(),
                )
            }
            _ => continue,
        };
        let mut parts = name.split('.').peekable();
        let mut at = &mut event;
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                at.insert(part.to_owned(), value);
                break;
            }
            let next = at
                .entry(part.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(map) => at = map,
                _ => break,
            }
        }
    }
    // An event that carried its time only in a legacy field (v1beta1's `timestamp`) keeps
    // it as `stageTimestamp`, so its event time is what it was.
    if !event.contains_key("stageTimestamp")
        && !event.contains_key("requestReceivedTimestamp")
        && let Some(time) = batch
            .column_by_name("time")
            .and_then(|c| c.as_primitive_opt::<arrow_array::types::TimestampNanosecondType>())
            .filter(|c| c.is_valid(i))
    {
        let t = crate::event::EventTime(time.value(i));
        event.insert("stageTimestamp".into(), Value::String(t.to_string()));
    }
    Value::Object(event)
}

/// The events of an archive directory (or one segment) as JSON lines, segment after segment:
/// what a log file of the same events would hold. A segment that cannot be read ends the
/// stream with an `InvalidData` error naming it.
pub struct EventLines {
    segments: VecDeque<PathBuf>,
    reader: Option<(PathBuf, ParquetRecordBatchReader)>,
    buf: Vec<u8>,
    at: usize,
}

impl EventLines {
    /// Opens `path`; files in a directory that are not segments are named in `foreign`.
    pub fn open(path: &Path, foreign: &mut Vec<(String, String)>) -> std::io::Result<EventLines> {
        let segments = if path.is_dir() {
            segments(path, foreign)?
        } else {
            vec![path.to_owned()]
        };
        Ok(EventLines {
            segments: segments.into(),
            reader: None,
            buf: Vec::new(),
            at: 0,
        })
    }

    /// Fills `buf` with the next batch's lines; false at the end.
    fn refill(&mut self) -> std::io::Result<bool> {
        let bad = |path: &Path, e: &dyn std::fmt::Display| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a readable archive segment: {e}", path.display()),
            )
        };
        loop {
            if let Some((path, reader)) = self.reader.as_mut() {
                match reader.next() {
                    Some(Ok(batch)) => {
                        self.buf.clear();
                        self.at = 0;
                        for i in 0..batch.num_rows() {
                            serde_json::to_writer(&mut self.buf, &row_json(&batch, i))
                                .map_err(std::io::Error::other)?;
                            self.buf.push(b'\n');
                        }
                        return Ok(true);
                    }
                    Some(Err(e)) => return Err(bad(path, &e)),
                    None => self.reader = None,
                }
            }
            let Some(path) = self.segments.pop_front() else {
                return Ok(false);
            };
            let file = File::open(&path)?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.with_batch_size(8192).build())
                .map_err(|e| bad(&path, &e))?;
            self.reader = Some((path, reader));
        }
    }
}

impl std::io::Read for EventLines {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.buf.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
