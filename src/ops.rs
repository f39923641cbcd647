//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz` (the process is
//! up), `/readyz` (state restored, sources started, and the engine keeping up: ready to
//! receive audit events) and the silences API (`/api/v1/silences`, used by
//! `auditwatch silence`).
//!
//! Metrics and health are open to anyone who can connect. The API changes what on-call hears,
//! so everything under `/api/` passes [`guard`] first: the `Host` must be an address, localhost
//! or a configured name (a DNS-rebinding page names its own domain); a browser request must
//! come from the same origin (no cross-site forms, no foreign `Origin`); the caller must
//! authenticate when `auth` is configured; a body must be `application/json` (which a plain
//! HTML form cannot send). A non-loopback listener without `auth` is refused at start unless
//! `insecure: true`. Who changed which silence goes to the alert journal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use crate::console::{Console, ConsoleOptions};
use crate::metrics::Metrics;
use crate::net::auth::{AuthConfig, AuthError, Authenticator, Principal};
use crate::net::origin::{host_allowed, same_origin};
use crate::net::serve::{ConnEvents, ConnectionLimits, PeerAddr};
use crate::net::tls::TlsConfig;
use crate::notify::silence::{NewSilence, SilenceDesk, SilenceError};
use crate::source::Backlog;

/// `http:` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/metrics`, `/healthz`, `/readyz` and the silences API. `null` disables it.
    pub listen: Option<SocketAddr>,
    /// Serve over TLS (recommended with basic auth off loopback).
    pub tls: Option<TlsConfig>,
    /// Who may use the API. Metrics and health stay open.
    pub auth: AuthConfig,
    /// Allow the API on a non-loopback address without `auth`.
    pub insecure: bool,
    /// Host names requests may carry in `Host` besides IP addresses and `localhost`
    /// (the Service's DNS names). Others are refused, against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    pub connections: ConnectionLimits,
    /// Serve the on-call console (`/alerts`, `/silences`, `/rules`, `/sources`).
    pub console: bool,
    /// The URL people reach this listener at (behind a proxy or a Service), for links in
    /// notifications (Alertmanager's `generatorURL`). Default: `http(s)://<listen>`.
    pub external_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9095))),
            tls: None,
            auth: AuthConfig::default(),
            insecure: false,
            allowed_hosts: Vec::new(),
            connections: ConnectionLimits {
                max: 64,
                ..ConnectionLimits::default()
            },
            console: true,
            external_url: None,
        }
    }
}

impl HttpConfig {
    /// What serde cannot check: `(key, message)` for the config's positioned error.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
            && !self.auth.is_configured()
            && !self.insecure
        {
            return Err((
                "http.listen".into(),
                format!(
                    "{addr} is not a loopback address and http.auth is not set: anyone who can reach it could silence alerts. Set http.auth (bearer_token_file or basic_auth_users), or http.insecure: true to accept that"
                ),
            ));
        }
        self.auth
            .validate()
            .map_err(|(key, msg)| (format!("http.auth.{key}"), msg))?;
        if let Some(url) = &self.external_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err((
                "http.external_url".into(),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            if host.is_empty() || host.contains(['/', ' ', ':']) {
                return Err((
                    format!("http.allowed_hosts.{i}"),
                    format!("{host:?} is not a host name (no port, no scheme)"),
                ));
            }
        }
        Ok(())
    }

    /// Where the console is reached: `external_url`, or the listen address.
    pub fn console_url(&self) -> Option<String> {
        if !self.console {
            return None;
        }
        if let Some(url) = &self.external_url {
            return Some(url.trim_end_matches('/').to_owned());
        }
        let addr = self.listen?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Some(format!("{scheme}://{addr}"))
    }

    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = self.auth.paths_mut();
        if let Some(tls) = &mut self.tls {
            paths.extend(tls.paths_mut());
        }
        paths
    }
}

/// What the endpoints read.
#[derive(Clone)]
pub struct Ops {
    pub metrics: Arc<Metrics>,
    /// Set once state is restored and the sources run; cleared at shutdown.
    pub ready: Arc<AtomicBool>,
    /// The silences, and where changes to them are recorded with who made them.
    pub desk: SilenceDesk,
    pub backlog: Backlog,
    /// `/readyz` fails while the engine's backlog is older than this.
    pub max_lag: std::time::Duration,
}

/// The operations listener, bound and ready to serve.
pub struct OpsServer {
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::net::tls::ReloadingTls>>,
    guard: Arc<Guard>,
    app: Router,
    limits: crate::net::serve::Limits,
}

/// Binds `addr` with `cfg`'s TLS, authentication and limits (`max_connections` already fitted
/// to the descriptor limit).
pub async fn bind(
    addr: SocketAddr,
    cfg: &HttpConfig,
    ops: Ops,
    console: Option<ConsoleOptions>,
    max_connections: usize,
) -> anyhow::Result<OpsServer> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("http.listen {addr}"))?;
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| crate::net::tls::reloading("http", t))
        .transpose()
        .map_err(|e| anyhow::anyhow!("http.tls: {e}"))?;
    let auth = Authenticator::new("http", &cfg.auth)
        .map_err(|e| anyhow::anyhow!("http.auth: {e}"))?
        .map(Arc::new);
    let mut limits = cfg.connections.limits();
    limits.max_connections = max_connections;
    ops.metrics.set_connections_max("http", max_connections);
    let serves = match console {
        Some(_) => {
            "metrics and health on /metrics, /healthz, /readyz; silences API on /api/v1/silences; console on /alerts"
        }
        None => {
            "metrics and health on /metrics, /healthz, /readyz; silences API on /api/v1/silences"
        }
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        auth = auth.is_some(),
        max_connections,
        "{serves}"
    );
    if auth.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "http.insecure: the silences API is open to anyone who can reach this address");
    }
    if auth.as_ref().is_some_and(|a| a.offers_basic()) && tls.is_none() && !addr.ip().is_loopback()
    {
        tracing::warn!(%addr, "basic auth over plain HTTP: passwords cross the network in clear; set http.tls");
    }
    let guard = Arc::new(Guard {
        auth,
        allowed_hosts: cfg.allowed_hosts.clone(),
        metrics: Arc::clone(&ops.metrics),
    });
    let mut app = router(ops, Arc::clone(&guard));
    if let Some(mut opts) = console {
        opts.auth = guard.auth.clone();
        opts.allowed_hosts = cfg.allowed_hosts.clone();
        opts.tls = tls.is_some();
        let console = Console::new(opts)?;
        app = app.merge(console.router());
    }
    Ok(OpsServer {
        listener,
        tls,
        guard,
        app,
        limits,
    })
}

impl OpsServer {
    /// The token, password and TLS files, for the daemon's reload loop.
    pub fn reloadables(&self) -> Vec<Arc<dyn crate::net::reload::Reloadable>> {
        let mut out: Vec<Arc<dyn crate::net::reload::Reloadable>> = Vec::new();
        if let Some(t) = &self.tls {
            out.push(Arc::clone(t) as Arc<dyn crate::net::reload::Reloadable>);
        }
        if let Some(a) = &self.guard.auth {
            out.extend(a.reloadables());
        }
        out
    }

    /// Serves until `stop`.
    pub async fn serve(self, stop: tokio_util::sync::CancellationToken) {
        let events: Arc<dyn ConnEvents> = self.guard;
        crate::net::serve::serve(
            self.listener,
            self.tls,
            self.app,
            self.limits,
            events,
            stop,
            std::time::Duration::from_secs(5),
        )
        .await;
    }
}

/// Checks on every `/api/` request.
pub struct Guard {
    pub auth: Option<Arc<Authenticator>>,
    pub allowed_hosts: Vec<String>,
    pub metrics: Arc<Metrics>,
}

impl ConnEvents for Guard {
    fn refused(&self, reason: &'static str) {
        self.metrics.http_refused(reason);
    }

    fn open(&self, open: usize) {
        self.metrics.set_connections_open("http", open);
    }
}

/// Every `reason` of `auditwatch_http_refused_total` (primed at zero at start).
pub const REFUSE_REASONS: [&str; 9] = [
    "tls",
    "timeout",
    "accept",
    "host",
    "cross_origin",
    "unauthenticated",
    "throttled",
    "content_type",
    "csrf",
];

pub fn router(ops: Ops, guard: Arc<Guard>) -> Router {
    let api = Router::new()
        .route("/api/v1/silences", get(list_silences).post(add_silence))
        .route("/api/v1/silences/{id}", delete(expire_silence))
        .layer(axum::middleware::from_fn_with_state(guard, guard_api));
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(ops)
}

fn refuse(guard: &Guard, status: StatusCode, reason: &'static str, message: &str) -> Response {
    guard.refused(reason);
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Host, origin, authentication and media type, in that order; the principal goes into the
/// request's extensions for the handlers.
async fn guard_api(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !host_allowed(headers, &guard.allowed_hosts) {
        return refuse(
            &guard,
            StatusCode::FORBIDDEN,
            "host",
            "unexpected Host header (add the name to http.allowed_hosts)",
        );
    }
    if !same_origin(headers) {
        return refuse(
            &guard,
            StatusCode::FORBIDDEN,
            "cross_origin",
            "cross-origin requests are not accepted",
        );
    }
    let principal = match &guard.auth {
        None => Principal::Anonymous,
        Some(auth) => match auth.check(headers).await {
            Ok(p) => p,
            Err(AuthError::Throttled) => {
                let mut r = refuse(
                    &guard,
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    "too many failed logins; retry in a few seconds",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                return r;
            }
            Err(e) => {
                let message = match e {
                    AuthError::Missing => "authentication required",
                    _ => "invalid credentials",
                };
                let mut r = refuse(&guard, StatusCode::UNAUTHORIZED, "unauthenticated", message);
                let challenge = if auth.offers_basic() {
                    "Basic realm=\"auditwatch\", charset=\"UTF-8\""
                } else {
                    "Bearer realm=\"auditwatch\""
                };
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                return r;
            }
        },
    };
    let has_body = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if has_body && !crate::net::is_json(request.headers()) {
        return refuse(
            &guard,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "send Content-Type: application/json",
        );
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn silence_error(e: SilenceError) -> Response {
    let status = match e {
        SilenceError::Invalid(_) => StatusCode::BAD_REQUEST,
        SilenceError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SilenceError::NotFound(_) => StatusCode::NOT_FOUND,
        SilenceError::Io { .. } | SilenceError::Poisoned => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn list_silences(State(ops): State<Ops>) -> Response {
    let now = chrono::Utc::now();
    let Ok(s) = ops.desk.silences.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let list: Vec<serde_json::Value> = s
        .list()
        .iter()
        .map(|x| {
            let mut v = serde_json::to_value(x).unwrap_or_default();
            v["state"] = x.state(now).into();
            v
        })
        .collect();
    Json(list).into_response()
}

async fn add_silence(
    State(ops): State<Ops>,
    Extension(by): Extension<Principal>,
    peer: Option<Extension<PeerAddr>>,
    body: axum::body::Bytes,
) -> Response {
    let new: NewSilence = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return silence_error(SilenceError::Invalid(format!("request body: {e}"))),
    };
    match ops.desk.add(new, &by.to_string(), peer.map(|p| p.0.0)) {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(e) => silence_error(e),
    }
}

async fn expire_silence(
    State(ops): State<Ops>,
    Extension(by): Extension<Principal>,
    peer: Option<Extension<PeerAddr>>,
    Path(id): Path<String>,
) -> Response {
    match ops.desk.expire(&id, &by.to_string(), peer.map(|p| p.0.0)) {
        Ok(expired) => Json(expired).into_response(),
        Err(e) => silence_error(e),
    }
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    ops.metrics
        .set_engine_backlog_age(ops.backlog.age().as_secs_f64());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if !ops.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    let lag = ops.backlog.age();
    if lag > ops.max_lag {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the engine has been on its oldest batch for {:.1}s (engine.max_lag {:.0}s)\n",
                lag.as_secs_f64(),
                ops.max_lag.as_secs_f64()
            ),
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_listener_needs_auth_or_an_explicit_insecure() {
        let mut cfg = HttpConfig {
            listen: Some("0.0.0.0:9095".parse().unwrap()),
            ..HttpConfig::default()
        };
        let (key, msg) = cfg.validate().unwrap_err();
        assert_eq!(key, "http.listen");
        assert!(msg.contains("not a loopback address"), "{msg}");
        cfg.insecure = true;
        assert!(cfg.validate().is_ok());
        cfg.insecure = false;
        cfg.auth.bearer_token_file = Some("token".into());
        assert!(cfg.validate().is_ok());
    }
}
