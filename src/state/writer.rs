//! The ingest journal's writer thread, and the [`JournalHandle`] the webhook and the daemon use
//! to reach it.
//!
//! Requests that arrive together are written together and share one fsync (group commit), so
//! durability costs one disk flush per burst, not per batch. Once a request's record is durable
//! its `durable` callback runs (the webhook hands the batch to the engine there, through a
//! queue slot it reserved before, so that batches reach the engine in journal order), and then
//! the caller's `append` returns. Compaction requests come through the same queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::journal::{Journal, Removal, remove_segments};
use crate::metrics::Metrics;

/// What to do once a record is durable, given its sequence number.
pub type OnDurable = Box<dyn FnOnce(u64) + Send>;

struct Append {
    payload: Vec<u8>,
    durable: OnDurable,
    ack: oneshot::Sender<Result<(), String>>,
}

enum Msg {
    Append(Append),
    /// A snapshot covers records up to this sequence number: old segments may go.
    Compact(u64),
}

/// Why an append did not become durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("the journal is closed (shutting down)")]
    Closed,
    #[error("cannot write the ingest journal: {0}")]
    Write(String),
}

/// The way to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Msg>,
    size: Arc<AtomicU64>,
    max: u64,
}

impl JournalHandle {
    /// Bytes held in the journal (not yet compacted).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Whether the journal has reached `journal.max_size` (the webhook then answers 503).
    pub fn is_full(&self) -> bool {
        self.size() >= self.max
    }

    /// The shared size gauge (for the engine's "snapshot more often under pressure").
    pub fn size_gauge(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.size)
    }

    /// Appends `payload`; once it is durable, `durable(seq)` runs on the writer thread, then
    /// this returns.
    pub async fn append(
        &self,
        payload: Vec<u8>,
        durable: impl FnOnce(u64) + Send + 'static,
    ) -> Result<(), AppendError> {
        let (ack, acked) = oneshot::channel();
        let msg = Msg::Append(Append {
            payload,
            durable: Box::new(durable),
            ack,
        });
        self.tx.send(msg).await.map_err(|_| AppendError::Closed)?;
        match acked.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AppendError::Write(e)),
            Err(_) => Err(AppendError::Closed),
        }
    }

    /// Lets segments wholly at or before `upto` go (a snapshot covers them).
    pub async fn compact(&self, upto: u64) {
        let _ = self.tx.send(Msg::Compact(upto)).await;
    }
}

/// Most requests written under one fsync.
const GROUP: usize = 256;

/// Starts the writer thread on `journal`. It ends when every handle is dropped.
pub fn start(
    journal: Journal,
    max: u64,
    metrics: Arc<Metrics>,
) -> std::io::Result<(JournalHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(1024);
    let size = Arc::new(AtomicU64::new(journal.size()));
    let handle = JournalHandle {
        tx,
        size: Arc::clone(&size),
        max,
    };
    let thread = std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || run(journal, rx, size, metrics))?;
    Ok((handle, thread))
}

fn run(
    mut journal: Journal,
    mut rx: mpsc::Receiver<Msg>,
    size: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
) {
    // Old segments are deleted on their own thread, paced (see `Removal`): deleting hundreds
    // of MiB at once stalls the filesystem for a few hundred ms, delaying acknowledgements.
    let (remove_tx, remove_rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
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
    let mut group: Vec<Append> = Vec::with_capacity(GROUP);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Append(req) => group.push(req),
                Msg::Compact(upto) => {
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
        let refs: Vec<&[u8]> = group.iter().map(|r| r.payload.as_slice()).collect();
        let started = Instant::now();
        let result = journal.append(&refs);
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(50) {
            tracing::debug!(?took, requests = refs.len(), "slow journal append");
        }
        size.store(journal.size(), Ordering::Relaxed);
        metrics.set_journal_bytes(journal.size());
        match result {
            Ok(seqs) => {
                for (req, seq) in group.drain(..).zip(seqs) {
                    (req.durable)(seq);
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
