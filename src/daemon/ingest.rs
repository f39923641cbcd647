//! The journal writer thread: makes webhook batches durable, then hands them to the engine.
//!
//! Requests that arrive together are written together and share one fsync (group commit), so
//! durability costs one disk flush per burst, not per batch. Each request carries an engine
//! queue slot its handler reserved before journaling, so handing the batch on never blocks and
//! batches reach the engine in journal order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::pipeline::{Batch, Input, Progress, Shape};
use crate::metrics::Metrics;
use crate::state::Journal;
use crate::state::journal::{Removal, remove_segments};

pub struct AppendRequest {
    pub source: Arc<str>,
    pub body: Vec<u8>,
    pub slot: mpsc::OwnedPermit<Input>,
    pub ack: oneshot::Sender<Result<(), String>>,
    pub received: Instant,
}

pub enum JournalMsg {
    Append(AppendRequest),
    /// A snapshot covers records up to this sequence number: old segments may go.
    Compact(u64),
}

/// Most requests written under one fsync.
const GROUP: usize = 256;

/// Encodes a journal payload: the source name, a newline, the body.
pub fn encode_payload(source: &str, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(source.len() + 1 + body.len());
    p.extend_from_slice(source.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(body);
    p
}

/// Splits a payload back into (source, body).
pub fn decode_payload(payload: &[u8]) -> (&str, &[u8]) {
    match payload.iter().position(|&b| b == b'\n') {
        Some(i) => (
            std::str::from_utf8(&payload[..i]).unwrap_or("webhook"),
            &payload[i + 1..],
        ),
        None => ("webhook", payload),
    }
}

/// Runs until every sender is gone.
pub fn run(
    mut journal: Journal,
    mut rx: mpsc::Receiver<JournalMsg>,
    size: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
) {
    size.store(journal.size(), Ordering::Relaxed);
    // Old segments are deleted on their own thread, paced (see `Removal`): deleting hundreds
    // of MiB at once stalls the filesystem for a few hundred ms, delaying acknowledgements.
    let (remove_tx, remove_rx) = std::sync::mpsc::channel::<Vec<std::path::PathBuf>>();
    let dir = journal.dir().to_owned();
    let remover = std::thread::Builder::new()
        .name("journal-compact".into())
        .spawn(move || {
            for paths in remove_rx {
                match remove_segments(&dir, &paths, Removal::DAEMON) {
                    Ok(()) => tracing::debug!(segments = paths.len(), "journal compacted"),
                    Err(e) => tracing::error!(error = %e, "journal compaction failed"),
                }
            }
        });
    let mut group: Vec<AppendRequest> = Vec::with_capacity(GROUP);
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(GROUP);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                JournalMsg::Append(req) => group.push(req),
                JournalMsg::Compact(upto) => {
                    let paths = journal.detach(upto);
                    let sent = !paths.is_empty() && remover.is_ok() && {
                        let _ = remove_tx.send(paths.clone());
                        true
                    };
                    if !sent
                        && let Err(e) = remove_segments(journal.dir(), &paths, Removal::Immediate)
                    {
                        tracing::error!(error = %e, "journal compaction failed");
                    }
                }
            }
            if group.len() < GROUP {
                next = rx.try_recv().ok();
            }
        }
        if group.is_empty() {
            size.store(journal.size(), Ordering::Relaxed);
            continue;
        }
        payloads.clear();
        payloads.extend(group.iter().map(|r| encode_payload(&r.source, &r.body)));
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let started = Instant::now();
        let result = journal.append(&refs);
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(50) {
            tracing::debug!(?took, requests = refs.len(), "slow journal append");
        }
        size.store(journal.size(), Ordering::Relaxed);
        metrics.journal_bytes.set(journal.size() as i64);
        match result {
            Ok(seqs) => {
                for (req, seq) in group.drain(..).zip(seqs) {
                    req.slot.send(Input::Batch(Batch {
                        source: req.source,
                        data: req.body,
                        shape: Shape::Document,
                        progress: Progress::Journal(seq),
                        received: req.received,
                    }));
                    let _ = req.ack.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the ingest journal; refusing batches");
                for req in group.drain(..) {
                    let _ = req.ack.send(Err(e.to_string()));
                }
            }
        }
    }
    // Not joined: paced deletion of a large backlog takes seconds, and shutdown need not wait
    // for it. A segment whose deletion is cut short is finished on the next start (see
    // `Journal::open`), or, if it was not renamed yet, is simply compacted again.
    drop(remove_tx);
}
