//! Stopping the daemon as a designed step (as mini-redis does it): one [`Shutdown`] signal that
//! every task and thread watches, and an order of teardown that loses nothing accepted.
//!
//! Order, on SIGTERM or SIGINT: `/readyz` turns 503; the listeners stop accepting and let
//! requests in flight finish; file followers stop at a line boundary; the journal writer
//! drains; the engine evaluates everything queued and writes a final snapshot; delivery gets
//! a moment to send what is in flight (the rest goes out after the next start).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// The stop signal. Cheap to clone; every clone sees the same signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    /// For plain threads, which poll instead of awaiting.
    begun: Arc<AtomicBool>,
}

impl Shutdown {
    /// Signals every watcher to finish what it accepted and stop.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// The signal for tasks (`token.cancelled().await`).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The signal for threads that poll.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.begun)
    }

    pub async fn wait(&self) {
        self.token.cancelled().await
    }
}

/// Waits for SIGTERM (what Kubernetes and `docker stop` send) or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
