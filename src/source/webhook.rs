//! The webhook source: the endpoint kube-apiserver's audit webhook backend POSTs `EventList`
//! batches to (`--audit-webhook-config-file`).
//!
//! A request is answered 200 only once its batch is in the ingest journal (durable by the
//! fsync policy) and has a slot in the engine queue. Everything else is refused before any of
//! it is processed, with a status the apiserver's backend understands: 401/403 for a missing
//! or wrong token (a wrong client certificate fails the TLS handshake), 413 for a body over
//! the limit, 400 for malformed JSON (with the reason), 408 for a client too slow to send its
//! body, and 429/503 when the pipeline or the journal is full, so the apiserver retries with
//! backoff instead of auditwatch buffering without bound or dropping silently. A body without
//! a single audit event in it is refused with 400, and one that does not say it is JSON with
//! 415. Connections are bounded and timed by [`crate::net::serve`]; the token file, the
//! certificate and the client CA reload when they change ([`crate::net::reload`]).
//!
//! In cluster mode ([`Handoff::Forward`]) the journal and the engine are elsewhere: a batch is
//! answered 200 only once the forwarder says it is stored (JetStream's publish
//! acknowledgement), and 503 with `Retry-After` while it cannot say so.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, Encoding, Input, Progress, Shape};
use crate::event::{DecodeErrorKind, InputFormat, Span};
use crate::metrics::Metrics;
use crate::net::auth::same;
use crate::net::reload::{Reloadable, Reloading, secret_file};
use crate::net::serve::{ConnEvents, ConnectionLimits};
use crate::net::tls::{ReloadingTls, TlsConfig};
use crate::state::{AppendError, JournalHandle};
use crate::units::{ByteSize, Duration as ConfigDuration};

/// A webhook source in the config (`sources: [- webhook: {...}]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub name: String,
    /// Labels every alert from this source carries (`cluster: prod-eu`).
    pub labels: super::batch::SourceLabels,
    pub listen: SocketAddr,
    /// Path the apiserver POSTs to (any path is accepted when empty).
    pub path: String,
    pub tls: Option<TlsConfig>,
    /// File holding the bearer token senders must present (`Authorization: Bearer ...`).
    pub bearer_token_file: Option<PathBuf>,
    /// Largest request body accepted, after gzip decompression as well.
    pub max_body: ByteSize,
    /// Time allowed to receive a request's body once its headers are in; slower clients
    /// get 408.
    pub read_timeout: ConfigDuration,
    /// Connection cap and timeouts (see docs/daemon.md, "Security").
    pub connections: ConnectionLimits,
    /// `auto` (default), `native`, `eks`, `aks` or `gke`: see docs/inputs.md.
    pub input_format: InputFormat,
    /// How far out of event-time order this source's events may arrive (default: the
    /// input format's, at least `engine.lateness`). Each sender (apiserver) keeps its own
    /// event-time clock.
    pub lateness: Option<ConfigDuration>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            name: "webhook".into(),
            labels: Default::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            path: String::new(),
            tls: None,
            bearer_token_file: None,
            max_body: ByteSize(32 << 20),
            read_timeout: ConfigDuration(Span::from_secs(30)),
            connections: ConnectionLimits::default(),
            input_format: InputFormat::Auto,
            lateness: None,
        }
    }
}

impl WebhookConfig {
    /// Every path in the config, for making them relative to the config file.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut paths: Vec<&mut PathBuf> = self.bearer_token_file.iter_mut().collect();
        if let Some(tls) = &mut self.tls {
            paths.extend(tls.paths_mut());
        }
        paths
    }
}

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error("webhook {name}: {why}")]
    Credentials { name: String, why: String },
    #[error("webhook {name}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every request handler shares.
struct Shared {
    name: Arc<str>,
    path: String,
    token: Option<Arc<Reloading<Vec<u8>>>>,
    max_body: u64,
    read_timeout: Duration,
    handoff: Handoff,
    metrics: Arc<Metrics>,
    format: crate::event::InputFormat,
}

/// Where an accepted batch goes.
#[derive(Clone)]
pub enum Handoff {
    /// This process: the ingest journal, then the engine queue.
    Local {
        engine: mpsc::Sender<Input>,
        journal: JournalHandle,
    },
    /// Another store that acknowledges what it keeps (cluster mode).
    Forward(Arc<dyn Forward>),
}

/// A batch the webhook accepted, for a [`Forward`].
pub struct ForwardBatch {
    pub source: Arc<str>,
    /// The sender's address (its own event-time clock downstream).
    pub origin: Option<Arc<str>>,
    pub body: Vec<u8>,
}

/// Why a [`Forward`] did not keep a batch.
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("{0}")]
    Unavailable(String),
    #[error("shutting down")]
    ShuttingDown,
    /// Larger than the store takes in one message: 413, so the sender sends smaller batches.
    #[error("larger than {max} bytes")]
    TooLarge { max: usize },
}

/// Keeps accepted batches somewhere durable; resolves once they are kept.
pub trait Forward: Send + Sync {
    fn forward(
        &self,
        batch: ForwardBatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ForwardError>> + Send + '_>>;
}

impl ConnEvents for Shared {
    fn refused(&self, reason: &'static str) {
        self.metrics.webhook_refused(&self.name, reason);
    }

    fn open(&self, open: usize) {
        self.metrics.set_connections_open(&self.name, open);
    }
}

/// A bound webhook endpoint, ready to serve.
pub struct Webhook {
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    limits: crate::net::serve::Limits,
    shared: Arc<Shared>,
}

pub struct WebhookDeps {
    pub handoff: Handoff,
    pub metrics: Arc<Metrics>,
    /// Connections this listener may hold (the configured cap, lowered to fit the
    /// process's descriptor limit).
    pub max_connections: usize,
}

/// Loads the source's TLS material and token as `bind` would, without binding: for
/// `auditwatch run --check`.
pub fn check(cfg: &WebhookConfig) -> Result<(), WebhookError> {
    credentials(cfg).map(drop)
}

type Credentials = (Option<Arc<ReloadingTls>>, Option<Arc<Reloading<Vec<u8>>>>);

fn credentials(cfg: &WebhookConfig) -> Result<Credentials, WebhookError> {
    let fail = |why: String| WebhookError::Credentials {
        name: cfg.name.clone(),
        why,
    };
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| crate::net::tls::reloading(&format!("webhook {}", cfg.name), t))
        .transpose()
        .map_err(fail)?;
    let token = cfg
        .bearer_token_file
        .as_ref()
        .map(|path| secret_file(format!("webhook {} bearer token", cfg.name), path))
        .transpose()
        .map_err(fail)?;
    Ok((tls, token))
}

impl Webhook {
    /// Loads TLS material and the token, and binds the address.
    pub async fn bind(cfg: &WebhookConfig, deps: WebhookDeps) -> Result<Webhook, WebhookError> {
        let (tls, token) = credentials(cfg)?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| WebhookError::Bind {
                    name: cfg.name.clone(),
                    addr: cfg.listen,
                    source,
                })?;
        let mut limits = cfg.connections.limits();
        limits.max_connections = deps.max_connections;
        Ok(Webhook {
            listener,
            tls,
            limits,
            shared: Arc::new(Shared {
                name: Arc::from(cfg.name.as_str()),
                path: cfg.path.clone(),
                token,
                max_body: cfg.max_body.0,
                read_timeout: cfg.read_timeout.std(),
                handoff: deps.handoff,
                metrics: deps.metrics,
                format: cfg.input_format,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The token and TLS files, for the daemon's reload loop.
    pub fn reloadables(&self) -> Vec<Arc<dyn Reloadable>> {
        let mut out: Vec<Arc<dyn Reloadable>> = Vec::new();
        if let Some(t) = &self.tls {
            out.push(Arc::clone(t) as Arc<dyn Reloadable>);
        }
        if let Some(t) = &self.shared.token {
            out.push(Arc::clone(t) as Arc<dyn Reloadable>);
        }
        out
    }

    /// Accepts connections until `stop` is cancelled; then lets open requests finish (up to
    /// the read timeout) and returns.
    pub async fn serve(self, stop: CancellationToken) {
        let Webhook {
            listener,
            tls,
            limits,
            shared,
        } = self;
        let app = Router::new()
            .fallback(ingest)
            .with_state(Arc::clone(&shared));
        let grace = shared.read_timeout + Duration::from_secs(1);
        let events: Arc<dyn ConnEvents> = shared;
        crate::net::serve::serve(listener, tls, app, limits, events, stop, grace).await;
    }
}

/// Every `reason` label of `auditwatch_webhook_refused_total` (primed at zero at start).
pub const REFUSE_REASONS: [&str; 14] = [
    "tls",
    "unauthenticated",
    "timeout",
    "accept",
    "bad_request",
    "content_type",
    "bad_json",
    "not_events",
    "too_large",
    "saturated",
    "journal_full",
    "journal_error",
    "upstream_unavailable",
    "shutting_down",
];

fn refuse(shared: &Shared, status: StatusCode, reason: &str, message: String) -> Response {
    debug_assert!(
        REFUSE_REASONS.contains(&reason),
        "undocumented reason {reason}"
    );
    shared.metrics.webhook_refused(&shared.name, reason);
    count(shared, status);
    let mut response = (status, message).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

fn count(shared: &Shared, status: StatusCode) {
    shared
        .metrics
        .webhook_answered(&shared.name, status.as_str());
}

async fn ingest(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let firehose_request_id = parts
        .headers
        .get("x-amz-firehose-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(token) = shared.token.as_ref().map(|t| t.get()) {
        // Kinesis Firehose HTTP endpoints send their access key in a header of their own.
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .or_else(|| {
                parts
                    .headers
                    .get("x-amz-firehose-access-key")
                    .map(|v| v.as_bytes())
            });
        match presented {
            None => {
                return refuse(
                    &shared,
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "missing bearer token\n".into(),
                );
            }
            Some(p) if !same(p, &token) => {
                return refuse(
                    &shared,
                    StatusCode::FORBIDDEN,
                    "unauthenticated",
                    "wrong bearer token\n".into(),
                );
            }
            Some(_) => {}
        }
    }
    if !shared.path.is_empty() && parts.uri.path() != shared.path {
        return refuse(
            &shared,
            StatusCode::NOT_FOUND,
            "bad_request",
            format!("POST audit events to {}\n", shared.path),
        );
    }
    if parts.method != Method::POST {
        return refuse(
            &shared,
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "POST an audit.k8s.io EventList\n".into(),
        );
    }
    if !crate::net::is_json(&parts.headers) {
        return refuse(
            &shared,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "send Content-Type: application/json (an audit.k8s.io EventList)\n".into(),
        );
    }
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > shared.max_body
    {
        return too_large(&shared);
    }
    let body = match read_body(&shared, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Validate before accepting: a body that is not JSON, or not events, is refused whole.
    let text = std::str::from_utf8(&body).unwrap_or("\u{0}");
    let items = match crate::event::managed::count_items(shared.format, text) {
        Ok(n) => n,
        Err(e) => {
            let at = match e.location() {
                Some((line, column)) => format!(" at line {line} column {column}"),
                None => String::new(),
            };
            let kind = match e {
                DecodeErrorKind::Json(..) => "bad_json",
                _ => "not_events",
            };
            return refuse(&shared, StatusCode::BAD_REQUEST, kind, format!("{e}{at}\n"));
        }
    };
    // The sender, for its own event-time clock: its IP address (each apiserver connects from
    // its own).
    let origin: Option<Arc<str>> = parts
        .extensions
        .get::<crate::net::serve::PeerAddr>()
        .map(|p| Arc::from(p.0.ip().to_string()));
    let kept = match &shared.handoff {
        Handoff::Local { engine, journal } => {
            keep_locally(&shared, engine, journal, origin, body, received).await
        }
        Handoff::Forward(forward) => {
            let batch = ForwardBatch {
                source: Arc::clone(&shared.name),
                origin,
                body,
            };
            match forward.forward(batch).await {
                Ok(()) => Ok(()),
                Err(ForwardError::Unavailable(why)) => Err(refuse(
                    &shared,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_unavailable",
                    format!("cannot store the batch: {why}; retry\n"),
                )),
                Err(ForwardError::TooLarge { max }) => Err(refuse(
                    &shared,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                        "body larger than {max} bytes (the NATS max_payload); lower --audit-webhook-batch-max-size\n"
                    ),
                )),
                Err(ForwardError::ShuttingDown) => Err(refuse(
                    &shared,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "shutting down\n".into(),
                )),
            }
        }
    };
    if let Err(refused) = kept {
        return refused;
    }
    count(&shared, StatusCode::OK);
    tracing::trace!(source = %shared.name, items, "batch accepted");
    match firehose_request_id {
        // Firehose counts a delivery as done only with its request ID echoed back.
        Some(id) => {
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let body = serde_json::json!({ "requestId": id, "timestamp": millis });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        None => (StatusCode::OK, "{}").into_response(),
    }
}

/// The ingest journal (durable by the fsync policy), then the engine queue through a slot
/// reserved first, so batches reach the engine in journal order.
async fn keep_locally(
    shared: &Shared,
    engine: &mpsc::Sender<Input>,
    journal: &JournalHandle,
    origin: Option<Arc<str>>,
    body: Vec<u8>,
    received: Instant,
) -> Result<(), Response> {
    if journal.is_full() {
        return Err(refuse(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "journal_full",
            "ingest journal full until the next snapshot; retry\n".into(),
        ));
    }
    let slot = match engine.clone().try_reserve_owned() {
        Ok(slot) => slot,
        Err(mpsc::error::TrySendError::Full(_)) => {
            return Err(refuse(
                shared,
                StatusCode::TOO_MANY_REQUESTS,
                "saturated",
                "pipeline saturated; retry\n".into(),
            ));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return Err(refuse(
                shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "shutting down\n".into(),
            ));
        }
    };
    let payload = crate::state::journal::encode_batch(&shared.name, origin.as_deref(), &body);
    let source = Arc::clone(&shared.name);
    let appended = journal
        .append(payload, move |seq| {
            slot.send(Input::Batch(Batch {
                source,
                origin,
                data: body,
                encoding: Encoding::Plain,
                shape: Shape::Document,
                progress: Progress::Journal(seq),
                received,
            }));
        })
        .await;
    match appended {
        Ok(()) => Ok(()),
        Err(AppendError::Write(why)) => Err(refuse(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "journal_error",
            format!("cannot persist the batch: {why}\n"),
        )),
        Err(AppendError::Closed) => Err(refuse(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down\n".into(),
        )),
    }
}

fn too_large(shared: &Shared) -> Response {
    refuse(
        shared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "body larger than {} bytes (max_body); lower --audit-webhook-batch-max-size\n",
            shared.max_body
        ),
    )
}

/// Reads the body within the size and time limits, un-gzipping if needed.
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Response> {
    let limited = http_body_util::Limited::new(body, shared.max_body as usize);
    let collected = match tokio::time::timeout(shared.read_timeout, limited.collect()).await {
        Err(_) => {
            return Err(refuse(
                shared,
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "body not received in time\n".into(),
            ));
        }
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large(shared));
            }
            return Err(refuse(
                shared,
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot read body: {e}\n"),
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(collected.to_vec()),
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            let decoder = flate2::read::GzDecoder::new(&collected[..]);
            match decoder.take(shared.max_body + 1).read_to_end(&mut out) {
                Ok(_) if out.len() as u64 > shared.max_body => Err(too_large(shared)),
                Ok(_) => Ok(out),
                Err(e) => Err(refuse(
                    shared,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid gzip body: {e}\n"),
                )),
            }
        }
        other => Err(refuse(
            shared,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            format!("unsupported Content-Encoding {other:?} (identity or gzip)\n"),
        )),
    }
}
