//! The event archive: every accepted event kept as Apache Parquet segments, so the history can
//! be queried (by `auditwatch query` and by DuckDB, Trino, Athena or Spark as it is) long after
//! the windows have slid past it.
//!
//! Each field of the event model is a typed column; `requestObject`, `responseObject` and the
//! annotations are kept as raw JSON text. A segment is written as `*.parquet.partial`, and
//! sealed (closed, fsynced, renamed to `segment-SEQ.parquet`, directory fsynced) when it
//! reaches its size, event count or age: a sealed segment is never modified, which is what
//! write-once storage (S3 Object Lock) needs. A `.partial` left by a crash is not a segment:
//! it is reported and removed when the archive opens, and its events are written again from
//! the source (the ingest journal, or the replayed files).
//!
//! Parquet through the Arrow project's crates: the format every engine reads, column
//! statistics for pruning by time, zstd and dictionary encoding for size.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{Int32Builder, ListBuilder, StringBuilder, TimestampNanosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::event::AuditEvent;

pub mod config;
pub mod manifest;
pub mod read;

pub use config::ArchiveConfig;

/// Why the archive could not write.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("archive columns: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("{0}")]
    Manifest(String),
}

/// When a segment is sealed.
#[derive(Debug, Clone)]
pub struct SegmentLimits {
    pub max_events: u64,
    /// Raw JSON bytes of the events in it.
    pub max_raw_bytes: u64,
    /// Wall time since its first event.
    pub max_age: std::time::Duration,
}

impl Default for SegmentLimits {
    fn default() -> Self {
        SegmentLimits {
            max_events: 2_000_000,
            max_raw_bytes: 2 << 30,
            max_age: std::time::Duration::from_secs(600),
        }
    }
}

/// Rows buffered before they are handed to the Parquet writer as one batch.
const BATCH_ROWS: usize = 8192;

/// The archive's columns, in order.
pub fn schema() -> SchemaRef {
    let utf8 = |name: &str| Field::new(name, DataType::Utf8, true);
    // Repetitive strings too are plain strings: Parquet dictionary-encodes every column
    // itself, and building Arrow dictionaries first cost the interning twice.
    let dict = utf8;
    let list = |name: &str| {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            true,
        ),
        utf8("auditID"),
        dict("stage"),
        dict("level"),
        dict("verb"),
        utf8("requestURI"),
        dict("user.username"),
        utf8("user.uid"),
        list("user.groups"),
        dict("impersonatedUser.username"),
        list("impersonatedUser.groups"),
        list("sourceIPs"),
        dict("userAgent"),
        dict("objectRef.resource"),
        dict("objectRef.subresource"),
        dict("objectRef.namespace"),
        utf8("objectRef.name"),
        dict("objectRef.apiGroup"),
        dict("objectRef.apiVersion"),
        Field::new("responseStatus.code", DataType::Int32, true),
        dict("responseStatus.status"),
        dict("responseStatus.reason"),
        utf8("responseStatus.message"),
        utf8("requestReceivedTimestamp"),
        utf8("stageTimestamp"),
        utf8("annotations"),
        utf8("requestObject"),
        utf8("responseObject"),
        dict("source"),
    ]))
}

/// An empty string as a null.
fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Column builders: events in, an Arrow batch of the archive's schema out. The daemon fills
/// one on its engine thread, from the events it has decoded anyway, and hands the batches to
/// the archive writer's thread ([`Archive::append_batch`]).
pub struct Rows {
    schema: SchemaRef,
    time: TimestampNanosecondBuilder,
    audit_id: StringBuilder,
    dicts: Vec<StringBuilder>,
    texts: Vec<StringBuilder>,
    lists: Vec<ListBuilder<StringBuilder>>,
    code: Int32Builder,
    source: StringBuilder,
    len: usize,
}

/// Columns of repetitive strings (verbs, users, resources), in `finish` order.
const DICTS: usize = 13;
/// Plain text columns after `auditID`, in schema order.
const TEXTS: usize = 9;

impl Default for Rows {
    fn default() -> Self {
        Rows::new()
    }
}

impl Rows {
    pub fn new() -> Rows {
        Rows {
            schema: schema(),
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            audit_id: StringBuilder::new(),
            dicts: (0..DICTS).map(|_| StringBuilder::new()).collect(),
            texts: (0..TEXTS).map(|_| StringBuilder::new()).collect(),
            lists: (0..3)
                .map(|_| ListBuilder::new(StringBuilder::new()))
                .collect(),
            code: Int32Builder::new(),
            source: StringBuilder::new(),
            len: 0,
        }
    }

    /// Events pushed since the last batch was taken.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The events pushed so far as one batch (`None` when there are none); the builders
    /// start again empty.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>, ArchiveError> {
        if self.len == 0 {
            return Ok(None);
        }
        let schema = Arc::clone(&self.schema);
        self.finish(&schema).map(Some)
    }

    pub fn push(&mut self, ev: &AuditEvent<'_>, source: &str) {
        self.time.append_option(ev.time.map(|t| t.0));
        self.audit_id.append_value(&*ev.audit_id);
        let r = ev.object_ref();
        let status = ev.response_status.as_ref();
        let imp = ev.impersonated_user.as_ref();
        let dict_values: [Option<&str>; DICTS] = [
            Some(ev.stage.as_str()),
            Some(ev.level.as_str()),
            opt(&ev.verb),
            Some(&ev.user.username),
            imp.map(|u| &*u.username),
            opt(&ev.user_agent),
            opt(&r.resource),
            opt(&r.subresource),
            opt(&r.namespace),
            opt(&r.api_group),
            opt(&r.api_version),
            status.and_then(|s| opt(&s.status)),
            status.and_then(|s| opt(&s.reason)),
        ];
        // In the order `finish` takes them back out.
        for (builder, value) in self.dicts.iter_mut().zip(dict_values) {
            builder.append_option(value);
        }
        let text_values: [Option<&str>; TEXTS] = [
            Some(&ev.request_uri),
            opt(&ev.user.uid),
            opt(&r.name),
            status.and_then(|s| opt(&s.message)),
            ev.request_received_timestamp.as_deref(),
            ev.stage_timestamp.as_deref(),
            ev.annotations.map(|a| a.get()),
            ev.request_object.map(|o| o.get()),
            ev.response_object.map(|o| o.get()),
        ];
        for (builder, value) in self.texts.iter_mut().zip(text_values) {
            builder.append_option(value);
        }
        let lists: [Option<&[crate::event::Text<'_>]>; 3] = [
            Some(&ev.user.groups),
            imp.map(|u| u.groups.as_slice()),
            Some(&ev.source_ips),
        ];
        for (builder, items) in self.lists.iter_mut().zip(lists) {
            match items {
                Some(items) => {
                    for i in items {
                        builder.values().append_value(&**i);
                    }
                    builder.append(true);
                }
                None => builder.append(false),
            }
        }
        self.code.append_option(status.map(|s| s.code));
        self.source.append_value(source);
        self.len += 1;
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArchiveError> {
        let d: Vec<ArrayRef> = self
            .dicts
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let t: Vec<ArrayRef> = self
            .texts
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let l: Vec<ArrayRef> = self
            .lists
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        // Schema order, from the builders' orders (see `push`): dicts d0..d12 are stage,
        // level, verb, user.username, impersonatedUser.username, userAgent, resource,
        // subresource, namespace, apiGroup, apiVersion, status, reason; texts t0..t8 are
        // requestURI, user.uid, name, message, requestReceivedTimestamp, stageTimestamp,
        // annotations, requestObject, responseObject; lists are the two groups and sourceIPs.
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.audit_id.finish()),
            d[0].clone(),
            d[1].clone(),
            d[2].clone(),
            t[0].clone(),
            d[3].clone(),
            t[1].clone(),
            l[0].clone(),
            d[4].clone(),
            l[1].clone(),
            l[2].clone(),
            d[5].clone(),
            d[6].clone(),
            d[7].clone(),
            d[8].clone(),
            t[2].clone(),
            d[9].clone(),
            d[10].clone(),
            Arc::new(self.code.finish()),
            d[11].clone(),
            d[12].clone(),
            t[3].clone(),
            t[4].clone(),
            t[5].clone(),
            t[6].clone(),
            t[7].clone(),
            t[8].clone(),
            Arc::new(self.source.finish()),
        ];
        self.len = 0;
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

/// A sealed segment still on disk.
#[derive(Debug, Clone)]
struct Kept {
    seq: u64,
    bytes: u64,
    sealed_at: std::time::SystemTime,
}

/// How long sealed segments are kept: by age and by the archive's total size. The oldest
/// go first; each removal is recorded (chained, signed) in the manifest, so `verify` can
/// tell retention from deletion.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub max_age: Option<std::time::Duration>,
    pub max_bytes: Option<u64>,
}

/// The key of the Parquet footer entry that holds the source position.
pub const POSITION_KEY: &str = "auditwatch.position";

/// A segment being written.
struct Segment {
    writer: ArrowWriter<File>,
    partial: PathBuf,
    seq: u64,
    events: u64,
    raw_bytes: u64,
    opened: Instant,
}

/// A sealed segment: its final path and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub path: PathBuf,
    pub seq: u64,
    pub events: u64,
    pub bytes: u64,
}

/// The archive directory and the segment in progress.
pub struct Archive {
    dir: PathBuf,
    limits: SegmentLimits,
    schema: SchemaRef,
    rows: Rows,
    current: Option<Segment>,
    next_seq: u64,
    /// The manifest's newest hash.
    head: String,
    /// Where the source stood after the newest event handed in (opaque to the archive;
    /// see [`Archive::set_position`]).
    position: Option<String>,
    /// The position stored in the newest sealed segment.
    sealed_position: Option<String>,
    /// Sealed segments still on disk, oldest first, for retention.
    kept: std::collections::VecDeque<Kept>,
    /// Signs each new manifest entry, when set.
    signer: Option<manifest::Signer>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `segment-00000042.parquet` → 42.
pub fn segment_seq(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// Columns whose values are mostly unique (ids, URIs, names, timestamps, raw JSON). A
/// dictionary would only be hashed into and abandoned, and min/max statistics of long strings
/// are comparisons nobody prunes on: both are off for them (zstd still compresses them).
pub const UNIQUE_COLUMNS: [&str; 10] = [
    "auditID",
    "requestURI",
    "user.uid",
    "objectRef.name",
    "responseStatus.message",
    "requestReceivedTimestamp",
    "stageTimestamp",
    "annotations",
    "requestObject",
    "responseObject",
];

/// How segments are written: zstd, row groups of 128 Ki rows (each with the time range
/// `query` prunes on), dictionaries for repetitive columns only.
fn writer_properties() -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        // Row-group statistics are what `query` prunes on; per-page ones cost a comparison
        // per value for nothing.
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk);
    for name in UNIQUE_COLUMNS {
        let column = parquet::schema::types::ColumnPath::from(name);
        props = props
            .set_column_dictionary_enabled(column.clone(), false)
            .set_column_statistics_enabled(
                column,
                parquet::file::properties::EnabledStatistics::None,
            );
    }
    props.build()
}

impl Archive {
    /// Opens (creating) an archive directory. Partial segments a crash left are removed and
    /// returned, so the caller can say so; their events come again from the source.
    pub fn open(
        dir: &Path,
        limits: SegmentLimits,
    ) -> Result<(Archive, Vec<PathBuf>), ArchiveError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut next_seq = 0;
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".parquet.partial") {
                std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                removed.push(entry.path());
            } else if let Some(seq) = segment_seq(&name) {
                next_seq = next_seq.max(seq + 1);
            }
        }
        let entries = manifest::read(dir).map_err(ArchiveError::Manifest)?;
        let mut head = entries
            .last()
            .map_or(manifest::GENESIS.to_owned(), |e| e.hash.clone());
        let listed = entries
            .iter()
            .filter(|e| e.retired_through.is_none())
            .count() as u64;
        let retired = entries.iter().filter_map(|e| e.retired_through).max();
        // Retention may have removed every file: the sequence goes on from the manifest.
        next_seq = next_seq.max(listed).max(retired.map_or(0, |r| r + 1));
        // Segments sealed but not yet listed (a crash between the rename and the manifest
        // line): listed now, in order.
        for seq in listed..next_seq {
            let path = dir.join(format!("segment-{seq:08}.parquet"));
            let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
            let sha = manifest::file_sha256(&path).map_err(io(&path))?;
            let events = parquet::file::reader::FileReader::metadata(
                &parquet::file::serialized_reader::SerializedFileReader::new(
                    File::open(&path).map_err(io(&path))?,
                )
                .map_err(|source| ArchiveError::Parquet {
                    path: path.clone(),
                    source,
                })?,
            )
            .file_metadata()
            .num_rows() as u64;
            let entry = manifest::Entry::new(
                seq,
                format!("segment-{seq:08}.parquet"),
                bytes,
                events,
                sha,
                &head,
            );
            manifest::append(dir, &entry).map_err(io(&dir.join(manifest::MANIFEST)))?;
            head = entry.hash;
        }
        let mut kept = std::collections::VecDeque::new();
        for seq in retired.map_or(0, |r| r + 1)..next_seq {
            let path = dir.join(format!("segment-{seq:08}.parquet"));
            if let Ok(meta) = std::fs::metadata(&path) {
                kept.push_back(Kept {
                    seq,
                    bytes: meta.len(),
                    sealed_at: meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH),
                });
            }
        }
        let sealed_position = match kept.back() {
            Some(k) => read_position(&dir.join(format!("segment-{:08}.parquet", k.seq)))?,
            None => None,
        };
        Ok((
            Archive {
                dir: dir.to_owned(),
                limits,
                schema: schema(),
                rows: Rows::new(),
                current: None,
                next_seq,
                head,
                position: None,
                sealed_position,
                kept,
                signer: None,
            },
            removed,
        ))
    }

    /// Adds one event, read from `source` (its `raw_len` bytes of JSON count toward the
    /// segment's size). It never seals: call [`Archive::seal_if_due`] where the source's
    /// position is whole (after a batch), so a segment never ends inside one.
    pub fn append(
        &mut self,
        ev: &AuditEvent<'_>,
        source: &str,
        raw_len: usize,
    ) -> Result<(), ArchiveError> {
        if self.current.is_none() {
            self.start_segment()?;
        }
        self.rows.push(ev, source);
        if let Some(seg) = self.current.as_mut() {
            seg.events += 1;
            seg.raw_bytes += raw_len as u64;
        }
        if self.rows.len >= BATCH_ROWS {
            self.write_rows()?;
        }
        Ok(())
    }

    /// Adds a batch of rows built elsewhere ([`Rows`]), whose events came from `raw_bytes`
    /// of JSON. Like [`Archive::append`], it never seals.
    pub fn append_batch(
        &mut self,
        batch: &RecordBatch,
        raw_bytes: u64,
    ) -> Result<(), ArchiveError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            self.start_segment()?;
        }
        self.write_rows()?;
        if let Some(seg) = self.current.as_mut() {
            seg.events += batch.num_rows() as u64;
            seg.raw_bytes += raw_bytes;
            seg.writer
                .write(batch)
                .map_err(|source| ArchiveError::Parquet {
                    path: seg.partial.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Records where the source stands after the events handed in so far (a journal sequence
    /// number, file offsets: the caller's format). It is stored in the footer of the segment
    /// sealed next, atomically with its events, and read back by [`Archive::sealed_position`]
    /// on open: a restart re-reads the source from there, so no event is lost between the
    /// last sealed segment and a crash.
    pub fn set_position(&mut self, position: String) {
        self.position = Some(position);
    }

    /// The position stored with the newest sealed segment (see [`Archive::set_position`]).
    pub fn sealed_position(&self) -> Option<&str> {
        self.sealed_position.as_deref()
    }

    /// Sealed segments in the chain (including retired ones), and the bytes of those kept.
    pub fn sealed(&self) -> (u64, u64) {
        let bytes = self.kept.iter().map(|k| k.bytes).sum();
        let in_progress = u64::from(self.current.is_some());
        (self.next_seq - in_progress, bytes)
    }

    /// Whether the segment in progress reached its event count, size or age.
    pub fn is_due(&self) -> bool {
        self.current.as_ref().is_some_and(|seg| {
            seg.events >= self.limits.max_events
                || seg.raw_bytes >= self.limits.max_raw_bytes
                || seg.opened.elapsed() >= self.limits.max_age
        })
    }

    /// Events in the segment in progress.
    pub fn in_progress(&self) -> u64 {
        self.current.as_ref().map_or(0, |seg| seg.events)
    }

    /// The archive's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seals the segment in progress if it reached its event count, size or age.
    pub fn seal_if_due(&mut self) -> Result<Option<Sealed>, ArchiveError> {
        match &self.current {
            Some(seg)
                if seg.events >= self.limits.max_events
                    || seg.raw_bytes >= self.limits.max_raw_bytes
                    || seg.opened.elapsed() >= self.limits.max_age =>
            {
                self.seal()
            }
            _ => Ok(None),
        }
    }

    /// Removes the oldest sealed segments past the retention, recording it in the manifest
    /// first. Returns the files removed.
    pub fn retire(&mut self, retention: Retention) -> Result<Vec<PathBuf>, ArchiveError> {
        let now = std::time::SystemTime::now();
        let mut total: u64 = self.kept.iter().map(|k| k.bytes).sum();
        let mut through = None;
        for k in &self.kept {
            let too_old = retention
                .max_age
                .is_some_and(|age| now.duration_since(k.sealed_at).unwrap_or_default() > age);
            let too_big = retention.max_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            total -= k.bytes;
            through = Some(k.seq);
        }
        let Some(through) = through else {
            return Ok(Vec::new());
        };
        let mut entry = manifest::Entry::retirement(through, &self.head);
        if let Some(signer) = &self.signer {
            signer.sign(&mut entry);
        }
        manifest::append(&self.dir, &entry).map_err(io(&self.dir.join(manifest::MANIFEST)))?;
        self.head = entry.hash;
        let mut removed = Vec::new();
        while self.kept.front().is_some_and(|k| k.seq <= through) {
            let Some(k) = self.kept.pop_front() else {
                break;
            };
            let path = self.dir.join(format!("segment-{:08}.parquet", k.seq));
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArchiveError::Io { path, source: e }),
            }
        }
        Ok(removed)
    }

    /// Signs the manifest entries of the segments sealed from now on.
    pub fn sign_with(&mut self, signer: manifest::Signer) {
        self.signer = Some(signer);
    }

    /// The manifest's newest hash: publish it elsewhere (a log line, a webhook) so that a
    /// rewrite of the whole chain is detectable too.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Seals the segment in progress if it is older than its age limit (call it on a timer,
    /// so a quiet stream still gets its events into sealed segments).
    pub fn seal_if_old(&mut self) -> Result<Option<Sealed>, ArchiveError> {
        match &self.current {
            Some(seg) if seg.opened.elapsed() >= self.limits.max_age => self.seal(),
            _ => Ok(None),
        }
    }

    fn start_segment(&mut self) -> Result<(), ArchiveError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let partial = self.dir.join(format!("segment-{seq:08}.parquet.partial"));
        let file = File::create(&partial).map_err(io(&partial))?;
        let props = writer_properties();
        let writer = ArrowWriter::try_new(file, Arc::clone(&self.schema), Some(props)).map_err(
            |source| ArchiveError::Parquet {
                path: partial.clone(),
                source,
            },
        )?;
        self.current = Some(Segment {
            writer,
            partial,
            seq,
            events: 0,
            raw_bytes: 0,
            opened: Instant::now(),
        });
        Ok(())
    }

    fn write_rows(&mut self) -> Result<(), ArchiveError> {
        if self.rows.len == 0 {
            return Ok(());
        }
        let batch = self.rows.finish(&self.schema)?;
        if let Some(seg) = self.current.as_mut() {
            seg.writer
                .write(&batch)
                .map_err(|source| ArchiveError::Parquet {
                    path: seg.partial.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Seals the segment in progress: the rest of its rows, the Parquet footer, fsync, the
    /// final name, fsync of the directory. `None` when there is no segment in progress.
    pub fn seal(&mut self) -> Result<Option<Sealed>, ArchiveError> {
        self.write_rows()?;
        let Some(seg) = self.current.take() else {
            return Ok(None);
        };
        let parquet_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ArchiveError::Parquet { path, source }
        };
        let mut writer = seg.writer;
        if let Some(position) = &self.position {
            writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
                POSITION_KEY.to_owned(),
                position.clone(),
            ));
        }
        let file = writer.into_inner().map_err(parquet_err(&seg.partial))?;
        file.sync_all().map_err(io(&seg.partial))?;
        let bytes = file.metadata().map_err(io(&seg.partial))?.len();
        drop(file);
        let path = self.dir.join(format!("segment-{:08}.parquet", seg.seq));
        std::fs::rename(&seg.partial, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        let sha = manifest::file_sha256(&path).map_err(io(&path))?;
        let mut entry = manifest::Entry::new(
            seg.seq,
            format!("segment-{:08}.parquet", seg.seq),
            bytes,
            seg.events,
            sha,
            &self.head,
        );
        if let Some(signer) = &self.signer {
            signer.sign(&mut entry);
        }
        manifest::append(&self.dir, &entry).map_err(io(&self.dir.join(manifest::MANIFEST)))?;
        self.head = entry.hash;
        self.sealed_position.clone_from(&self.position);
        self.kept.push_back(Kept {
            seq: seg.seq,
            bytes,
            sealed_at: std::time::SystemTime::now(),
        });
        Ok(Some(Sealed {
            path,
            seq: seg.seq,
            events: seg.events,
            bytes,
        }))
    }
}

/// The source position stored in a sealed segment's footer.
pub fn read_position(path: &Path) -> Result<Option<String>, ArchiveError> {
    let file = File::open(path).map_err(io(path))?;
    let reader =
        parquet::file::serialized_reader::SerializedFileReader::new(file).map_err(|source| {
            ArchiveError::Parquet {
                path: path.to_owned(),
                source,
            }
        })?;
    let meta = parquet::file::reader::FileReader::metadata(&reader).file_metadata();
    Ok(meta.key_value_metadata().and_then(|kv| {
        kv.iter()
            .find(|k| k.key == POSITION_KEY)
            .and_then(|k| k.value.clone())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::{Array, Int32Array, TimestampNanosecondArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Retention removes the oldest segments, records it in the manifest (chained and
    /// signed), keeps numbering after them, and `verify` tells it from a deletion; a
    /// retention record forged without the key is tampering.
    #[test]
    fn retention_is_recorded_and_told_from_deletion() {
        use manifest::{Verdict, verify};
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"id-1","stage":"ResponseComplete","verb":"get","user":{"username":"u"},"stageTimestamp":"2025-01-01T00:00:02Z"}"#;
        let dir = std::env::temp_dir().join(format!("aw-archive-retain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = dir.with_extension("key");
        std::fs::write(&key, manifest::Signer::generate().unwrap()).unwrap();
        let signer = || manifest::Signer::from_file(&key).unwrap();
        let mut trusted = manifest::TrustedKeys::new();
        let line_of = signer().trusted_line();
        let (id, public) = line_of.split_once(' ').unwrap();
        trusted.insert(
            id.to_owned(),
            (0..public.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&public[i..i + 2], 16).unwrap())
                .collect(),
        );
        let (mut archive, _) = Archive::open(&dir, SegmentLimits::default()).unwrap();
        archive.sign_with(signer());
        let ev = crate::event::decode_event(line).unwrap();
        let mut sizes = Vec::new();
        for _ in 0..4 {
            archive.append(&ev, "s", line.len()).unwrap();
            sizes.push(archive.seal().unwrap().unwrap().bytes);
        }
        // Room for the newest two only.
        let removed = archive
            .retire(Retention {
                max_age: None,
                max_bytes: Some(sizes[2] + sizes[3]),
            })
            .unwrap();
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["segment-00000000.parquet", "segment-00000001.parquet"]
        );
        assert_eq!(archive.sealed(), (4, sizes[2] + sizes[3]));
        match verify(&dir, Some(archive.head()), Some(&trusted)) {
            Verdict::Intact { segments, .. } => assert_eq!(segments, 2),
            other => panic!("{other:?}"),
        }
        // Numbering goes on after a reopen, even with the oldest files gone.
        drop(archive);
        let (mut archive, _) = Archive::open(&dir, SegmentLimits::default()).unwrap();
        archive.sign_with(signer());
        archive.append(&ev, "s", line.len()).unwrap();
        assert_eq!(archive.seal().unwrap().unwrap().seq, 4);
        // A segment removed without a retention record is a deletion.
        std::fs::remove_file(dir.join("segment-00000002.parquet")).unwrap();
        match verify(&dir, None, Some(&trusted)) {
            Verdict::Tampered { at, reason } => {
                assert_eq!(at, "segment-00000002.parquet");
                assert!(reason.contains("deleted"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Dressing it up as retention without the key: an unsigned record.
        let prev = manifest::read(&dir).unwrap().last().unwrap().hash.clone();
        manifest::append(&dir, &manifest::Entry::retirement(2, &prev)).unwrap();
        assert!(matches!(verify(&dir, None, None), Verdict::Intact { .. }));
        match verify(&dir, None, Some(&trusted)) {
            Verdict::Tampered { reason, .. } => assert!(reason.contains("not signed"), "{reason}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_file(&key).ok();
    }

    /// Every field lands in the column named for it (the builders are kept in different
    /// orders than the schema, and a swap of two string columns would still type-check).
    #[test]
    fn every_field_lands_in_its_column() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"id-1","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/ns-1/deployments/dep-1","verb":"patch","user":{"username":"user-1","uid":"uid-1","groups":["g-1","g-2"]},"impersonatedUser":{"username":"imp-1","groups":["ig-1"]},"sourceIPs":["10.0.0.1","10.0.0.2"],"userAgent":"agent-1","objectRef":{"resource":"deployments","namespace":"ns-1","name":"dep-1","apiGroup":"apps","apiVersion":"v1","subresource":"scale"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Conflict","message":"msg-1","code":409},"requestObject":{"spec":{"replicas":3}},"responseObject":{"kind":"Status"},"requestReceivedTimestamp":"2025-01-01T00:00:01.000000Z","stageTimestamp":"2025-01-01T00:00:02.000000Z","annotations":{"a":"b"}}"#;
        let dir = std::env::temp_dir().join(format!("aw-archive-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut archive, removed) = Archive::open(&dir, SegmentLimits::default()).unwrap();
        assert!(removed.is_empty());
        let ev = crate::event::decode_event(line).unwrap();
        archive.append(&ev, "src-1", line.len()).unwrap();
        let sealed = archive.seal().unwrap().unwrap();
        assert_eq!((sealed.seq, sealed.events), (0, 1));
        let file = File::open(&sealed.path).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let text = |name: &str| -> String {
            let col = batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("{name}"));
            col.as_string::<i32>().value(0).to_owned()
        };
        let list = |name: &str| -> Vec<String> {
            let col = batch
                .column_by_name(name)
                .unwrap()
                .as_list::<i32>()
                .value(0);
            let items = col.as_string::<i32>();
            (0..items.len())
                .map(|i| items.value(i).to_owned())
                .collect()
        };
        for (column, want) in [
            ("auditID", "id-1"),
            ("stage", "ResponseComplete"),
            ("level", "RequestResponse"),
            ("verb", "patch"),
            (
                "requestURI",
                "/apis/apps/v1/namespaces/ns-1/deployments/dep-1",
            ),
            ("user.username", "user-1"),
            ("user.uid", "uid-1"),
            ("impersonatedUser.username", "imp-1"),
            ("userAgent", "agent-1"),
            ("objectRef.resource", "deployments"),
            ("objectRef.subresource", "scale"),
            ("objectRef.namespace", "ns-1"),
            ("objectRef.name", "dep-1"),
            ("objectRef.apiGroup", "apps"),
            ("objectRef.apiVersion", "v1"),
            ("responseStatus.status", "Failure"),
            ("responseStatus.reason", "Conflict"),
            ("responseStatus.message", "msg-1"),
            ("requestReceivedTimestamp", "2025-01-01T00:00:01.000000Z"),
            ("stageTimestamp", "2025-01-01T00:00:02.000000Z"),
            ("annotations", r#"{"a":"b"}"#),
            ("requestObject", r#"{"spec":{"replicas":3}}"#),
            ("responseObject", r#"{"kind":"Status"}"#),
            ("source", "src-1"),
        ] {
            assert_eq!(text(column), want, "{column}");
        }
        assert_eq!(list("user.groups"), ["g-1", "g-2"]);
        assert_eq!(list("impersonatedUser.groups"), ["ig-1"]);
        assert_eq!(list("sourceIPs"), ["10.0.0.1", "10.0.0.2"]);
        let code = batch.column_by_name("responseStatus.code").unwrap();
        assert_eq!(
            code.as_any().downcast_ref::<Int32Array>().unwrap().value(0),
            409
        );
        let time = batch.column_by_name("time").unwrap();
        let time = time
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        assert_eq!(Some(time.value(0)), ev.time.map(|t| t.0));
        assert_eq!(batch.num_columns(), schema().fields().len());
        std::fs::remove_dir_all(&dir).ok();
    }
}
