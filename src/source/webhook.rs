//! The webhook source: the endpoint kube-apiserver's audit webhook backend POSTs `EventList`
//! batches to (`--audit-webhook-config-file`).
//!
//! A request is answered 200 only once its batch is in the ingest journal (durable by the
//! fsync policy) and has a slot in the engine queue. Everything else is refused before any of
//! it is processed, with a status the apiserver's backend understands: 401/403 for a missing
//! or wrong token (a wrong client certificate fails the TLS handshake), 413 for a body over
//! the limit, 400 for malformed JSON (with the reason), 408 for a client too slow to send its
//! body, and 429/503 when the pipeline or the journal is full, so the apiserver retries with
//! backoff instead of auditwatch buffering without bound or dropping silently.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{TlsConfig, WebhookConfig};
use crate::daemon::ingest::{AppendRequest, JournalMsg};
use crate::daemon::pipeline::Input;
use crate::event::DecodeErrorKind;
use crate::metrics::Metrics;

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error("webhook {name}: {path}: {why}")]
    Tls {
        name: String,
        path: String,
        why: String,
    },
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
    token: Option<Vec<u8>>,
    max_body: u64,
    read_timeout: Duration,
    engine: mpsc::Sender<Input>,
    journal: mpsc::Sender<JournalMsg>,
    journal_size: Arc<AtomicU64>,
    journal_max: u64,
    metrics: Arc<Metrics>,
    format: crate::event::InputFormat,
}

/// A bound webhook endpoint, ready to serve.
pub struct Webhook {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

pub struct WebhookDeps {
    pub engine: mpsc::Sender<Input>,
    pub journal: mpsc::Sender<JournalMsg>,
    pub journal_size: Arc<AtomicU64>,
    pub journal_max: u64,
    pub metrics: Arc<Metrics>,
}

/// Loads the source's TLS material and token as `bind` would, without binding: for
/// `auditwatch run --check`.
pub fn check(cfg: &WebhookConfig) -> Result<(), WebhookError> {
    if let Some(t) = &cfg.tls {
        tls_acceptor(&cfg.name, t)?;
    }
    read_token(cfg).map(drop)
}

fn read_token(cfg: &WebhookConfig) -> Result<Option<Vec<u8>>, WebhookError> {
    let Some(path) = &cfg.bearer_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| WebhookError::Tls {
        name: cfg.name.clone(),
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    let token = text.trim().as_bytes().to_vec();
    if token.is_empty() {
        return Err(WebhookError::Tls {
            name: cfg.name.clone(),
            path: path.display().to_string(),
            why: "the bearer token file is empty".into(),
        });
    }
    Ok(Some(token))
}

impl Webhook {
    /// Loads TLS material and the token, and binds the address.
    pub async fn bind(cfg: &WebhookConfig, deps: WebhookDeps) -> Result<Webhook, WebhookError> {
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| tls_acceptor(&cfg.name, t))
            .transpose()?;
        let token = read_token(cfg)?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| WebhookError::Bind {
                    name: cfg.name.clone(),
                    addr: cfg.listen,
                    source,
                })?;
        Ok(Webhook {
            listener,
            tls,
            shared: Arc::new(Shared {
                name: Arc::from(cfg.name.as_str()),
                path: cfg.path.clone(),
                token,
                max_body: cfg.max_body.0,
                read_timeout: cfg.read_timeout.std(),
                engine: deps.engine,
                journal: deps.journal,
                journal_size: deps.journal_size,
                journal_max: deps.journal_max,
                metrics: deps.metrics,
                format: cfg.input_format,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `stop` is cancelled; then lets open requests finish (up to
    /// the read timeout) and returns.
    pub async fn serve(self, stop: CancellationToken) {
        let Webhook {
            listener,
            tls,
            shared,
        } = self;
        let app = Router::new()
            .fallback(ingest)
            .with_state(Arc::clone(&shared));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(source = %shared.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let tls = tls.clone();
            let shared = Arc::clone(&shared);
            let stop = stop.clone();
            connections.spawn(async move {
                match tls {
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(shared.read_timeout, acceptor.accept(stream)).await;
                        match handshake {
                            Ok(Ok(stream)) => serve_connection(stream, app, &shared, stop).await,
                            Ok(Err(e)) => {
                                shared.metrics.webhook_refused.with_label_values(&[&shared.name, "tls"]).inc();
                                tracing::warn!(source = %shared.name, error = %e, "TLS handshake refused");
                            }
                            Err(_) => {
                                shared.metrics.webhook_refused.with_label_values(&[&shared.name, "timeout"]).inc();
                            }
                        }
                    }
                    None => serve_connection(stream, app, &shared, stop).await,
                }
            });
            // Reap finished connections so the set stays small.
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let grace = shared.read_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.abort_all();
    }
}

async fn serve_connection<S>(stream: S, app: Router, shared: &Shared, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    shared.metrics.webhook_refused.with_label_values(&[&shared.name, "timeout"]).inc();
                }
                tracing::debug!(source = %shared.name, error = %e, "connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Every `reason` label of `auditwatch_webhook_refused_total` (primed at zero at start).
pub const REFUSE_REASONS: [&str; 11] = [
    "tls",
    "unauthenticated",
    "timeout",
    "bad_request",
    "bad_json",
    "not_events",
    "too_large",
    "saturated",
    "journal_full",
    "journal_error",
    "shutting_down",
];

fn refuse(shared: &Shared, status: StatusCode, reason: &str, message: String) -> Response {
    debug_assert!(
        REFUSE_REASONS.contains(&reason),
        "undocumented reason {reason}"
    );
    shared
        .metrics
        .webhook_refused
        .with_label_values(&[&shared.name, reason])
        .inc();
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
        .webhook_requests
        .with_label_values(&[&shared.name, status.as_str()])
        .inc();
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ingest(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let firehose_request_id = parts
        .headers
        .get("x-amz-firehose-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(token) = &shared.token {
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
            Some(p) if !same(p, token) => {
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
    if shared.journal_size.load(Ordering::Relaxed) >= shared.journal_max {
        return refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "journal_full",
            "ingest journal full until the next snapshot; retry\n".into(),
        );
    }
    let slot = match shared.engine.clone().try_reserve_owned() {
        Ok(slot) => slot,
        Err(mpsc::error::TrySendError::Full(_)) => {
            return refuse(
                &shared,
                StatusCode::TOO_MANY_REQUESTS,
                "saturated",
                "pipeline saturated; retry\n".into(),
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return refuse(
                &shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "shutting down\n".into(),
            );
        }
    };
    let (ack, acked) = oneshot::channel();
    let request = JournalMsg::Append(AppendRequest {
        source: Arc::clone(&shared.name),
        body,
        slot,
        ack,
        received,
    });
    if shared.journal.send(request).await.is_err() {
        return refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down\n".into(),
        );
    }
    match acked.await {
        Ok(Ok(())) => {
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
        Ok(Err(why)) => refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "journal_error",
            format!("cannot persist the batch: {why}\n"),
        ),
        Err(_) => refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down\n".into(),
        ),
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

fn tls_acceptor(name: &str, cfg: &TlsConfig) -> Result<TlsAcceptor, WebhookError> {
    let fail = |path: &Path, why: String| WebhookError::Tls {
        name: name.to_owned(),
        path: path.display().to_string(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| fail(&cfg.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(&cfg.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(&cfg.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| fail(&cfg.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&cfg.cert, e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| fail(ca, e.to_string()))? {
                let cert = cert.map_err(|e| fail(ca, e.to_string()))?;
                roots.add(cert).map_err(|e| fail(ca, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(fail(ca, "no CA certificate in the file".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| fail(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| fail(&cfg.key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
