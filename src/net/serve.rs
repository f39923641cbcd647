//! The accept loop and connection handling shared by the webhook and the operations listener.
//!
//! Bounded everywhere, because whoever can open a TCP connection can otherwise spend the
//! daemon's memory and file descriptors:
//! - at most `max_connections` connections are open; beyond that new ones wait in the
//!   kernel's accept queue (as in mini-redis) instead of taking a descriptor each;
//! - the cap never exceeds what the process's descriptor limit leaves after a reserve for
//!   state files and rule reloads, so a flood cannot make the daemon fail to open its own files;
//! - a TLS handshake must finish within `handshake_timeout`;
//! - once a request's first byte has arrived, its headers must follow within `header_timeout`,
//!   else the client gets `408 Request Timeout` and the connection closes;
//! - a kept-alive connection with no request for `idle_timeout` is closed.
//!
//! Per-connection failures (handshakes, timeouts, accept errors) are counted through
//! [`ConnEvents`] and logged a few per minute ([`crate::log_gate`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::tls::ReloadingTls;
use crate::event::Span;
use crate::log_gate::LogGate;
use crate::units::Duration as ConfigDuration;

/// `connections:` of a listener in the config.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the kernel's accept queue. Lowered at start to
    /// fit the process's open-files limit.
    pub max: usize,
    /// Time for a TLS handshake.
    pub handshake_timeout: ConfigDuration,
    /// Time from a request's first byte to the end of its headers; slower clients get 408.
    pub header_timeout: ConfigDuration,
    /// A kept-alive connection without a request for this long is closed.
    pub idle_timeout: ConfigDuration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: 256,
            handshake_timeout: ConfigDuration(Span::from_secs(10)),
            header_timeout: ConfigDuration(Span::from_secs(10)),
            idle_timeout: ConfigDuration(Span::from_secs(120)),
        }
    }
}

impl ConnectionLimits {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max.max(1),
            handshake_timeout: self.handshake_timeout.std(),
            header_timeout: self.header_timeout.std(),
            idle_timeout: self.idle_timeout.std(),
        }
    }
}

/// Connection limits of one listener, as the accept loop uses them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What a listener reports about its connections (metrics live with the caller).
pub trait ConnEvents: Send + Sync + 'static {
    /// A connection was refused or cut: `tls`, `timeout` (handshake or headers), `accept`.
    fn refused(&self, reason: &'static str);
    /// Connections now open.
    fn open(&self, open: usize);
}

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Descriptors kept free for everything but connections: journal segments, snapshots, rule
/// files on reload, notifier sockets.
const FD_RESERVE: u64 = 256;

/// The open-files soft limit of this process (Linux `/proc/self/limits`), if known.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return None;
    }
    soft.parse().ok()
}

/// `wanted` connections per listener, lowered so that `listeners` listeners at their cap
/// still leave [`FD_RESERVE`] descriptors free.
pub fn connection_cap(wanted: usize, listeners: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return wanted.max(1);
    };
    let share = limit.saturating_sub(FD_RESERVE) / listeners.max(1) as u64;
    wanted.min(share as usize).max(1)
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish (up to `grace`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    app: Router,
    limits: Limits,
    events: Arc<dyn ConnEvents>,
    stop: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open = Arc::new(AtomicUsize::new(0));
    let logs = Arc::new(ConnLogs::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    events.refused("accept");
                    if let Some(held_back) = logs.accept.admit() {
                        tracing::warn!(error = %e, held_back, "accept failed");
                    }
                    // Out of descriptors or memory: give what is open time to finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, events, stop, open, logs) = (
            app.clone(),
            tls.clone(),
            Arc::clone(&events),
            stop.clone(),
            Arc::clone(&open),
            Arc::clone(&logs),
        );
        connections.spawn(async move {
            let _slot = slot;
            events.open(open.fetch_add(1, Ordering::Relaxed) + 1);
            match tls {
                Some(tls) => {
                    let acceptor = tls.get();
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, limits, &*events, stop).await
                        }
                        Ok(Err(e)) => {
                            events.refused("tls");
                            if let Some(held_back) = logs.tls.admit() {
                                tracing::warn!(%peer, error = %e, held_back, "TLS handshake refused");
                            }
                        }
                        Err(_) => events.refused("timeout"),
                    }
                }
                None => serve_connection(stream, peer, app, limits, &*events, stop).await,
            }
            events.open(open.fetch_sub(1, Ordering::Relaxed).saturating_sub(1));
        });
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

/// Log gates shared by one listener's connections.
struct ConnLogs {
    accept: LogGate,
    tls: LogGate,
}

impl Default for ConnLogs {
    fn default() -> Self {
        ConnLogs {
            accept: LogGate::per_minute(),
            tls: LogGate::per_minute(),
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    app: Router,
    limits: Limits,
    events: &dyn ConnEvents,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let phase = Arc::new(Phase::default());
    let io = Deadline::new(stream, Arc::clone(&phase), limits);
    let timed_out = Arc::clone(&io.timed_out);
    let service = {
        let phase = Arc::clone(&phase);
        tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            let (app, phase) = (app.clone(), Arc::clone(&phase));
            phase.serving.store(true, Ordering::Release);
            request.extensions_mut().insert(PeerAddr(peer));
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                phase.serving.store(false, Ordering::Release);
                phase.served.fetch_add(1, Ordering::AcqRel);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // A backstop only: [`Deadline`] answers slow headers with a 408 before this fires.
        .header_read_timeout(limits.header_timeout * 2 + Duration::from_secs(1));
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    if timed_out.load(Ordering::Acquire) {
        events.refused("timeout");
    }
}

/// Whether the connection's service is handling a request, and how many it has handled.
#[derive(Default)]
struct Phase {
    serving: AtomicBool,
    served: AtomicU64,
}

const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 36\r\n\r\nrequest headers not received in time\n";

/// The connection's IO with the header and idle deadlines. Between requests it times the
/// wait: no byte for `idle_timeout` ends the connection quietly (end of stream to hyper); a
/// request whose first byte came but whose headers are not complete after `header_timeout`
/// gets a 408 written here, then end of stream. While the service handles a request there is
/// no deadline (the handler times the body itself).
struct Deadline<S> {
    inner: S,
    phase: Arc<Phase>,
    limits: Limits,
    /// `served` when the current wait for a request began; `None` while serving.
    waiting: Option<u64>,
    /// Bytes of the awaited request have arrived.
    started: bool,
    timer: Pin<Box<Sleep>>,
    /// Bytes of the 408 written so far, while writing it.
    reply: Option<usize>,
    ended: bool,
    timed_out: Arc<AtomicBool>,
}

impl<S> Deadline<S> {
    fn new(inner: S, phase: Arc<Phase>, limits: Limits) -> Deadline<S> {
        Deadline {
            inner,
            phase,
            limits,
            waiting: None,
            started: false,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            reply: None,
            ended: false,
            timed_out: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<S: AsyncWrite + Unpin> Deadline<S> {
    /// Writes the 408, then reports end of stream.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(written) = self.reply {
            if written < REQUEST_TIMEOUT.len() {
                match ready!(Pin::new(&mut self.inner).poll_write(cx, &REQUEST_TIMEOUT[written..]))
                {
                    Ok(0) | Err(_) => self.reply = None,
                    Ok(n) => self.reply = Some(written + n),
                }
            } else {
                let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
                self.reply = None;
            }
        }
        self.ended = true;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        if this.reply.is_some() {
            return this.poll_reply(cx);
        }
        if this.phase.serving.load(Ordering::Acquire) {
            this.waiting = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let served = this.phase.served.load(Ordering::Acquire);
        if this.waiting != Some(served) {
            this.waiting = Some(served);
            this.started = false;
            let deadline = Instant::now() + this.limits.idle_timeout;
            this.timer.as_mut().reset(deadline);
        }
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            if r.is_ok() && buf.filled().len() > before && !this.started {
                this.started = true;
                let deadline = Instant::now() + this.limits.header_timeout;
                this.timer.as_mut().reset(deadline);
            }
            return Poll::Ready(r);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            if this.started {
                this.timed_out.store(true, Ordering::Release);
                this.reply = Some(0);
                return this.poll_reply(cx);
            }
            // Idle: end of stream, and hyper closes the connection.
            this.ended = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_state_files() {
        assert_eq!(connection_cap(1024, 2, Some(1024)), 384);
        assert_eq!(connection_cap(100, 2, Some(65536)), 100);
        assert_eq!(connection_cap(100, 2, None), 100);
        assert_eq!(connection_cap(100, 2, Some(10)), 1);
    }

    #[test]
    fn reads_this_process_limit() {
        // Linux only, as the daemon: the limit is a number or unlimited.
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        if !limits.contains("Max open files            unlimited") {
            assert!(fd_limit().is_some_and(|n| n > 0));
        }
    }
}
