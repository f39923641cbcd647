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

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::net::auth::{AuthConfig, AuthError, Authenticator, Principal};
use crate::net::serve::{ConnEvents, ConnectionLimits, PeerAddr};
use crate::net::tls::TlsConfig;
use crate::notify::silence::{NewSilence, SilenceError, Silences};
use crate::source::Backlog;
use crate::state::{ChangeRecord, SharedAlertJournal};

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
    pub silences: Arc<Mutex<Silences>>,
    /// Where silence changes are recorded, with who made them.
    pub journal: SharedAlertJournal,
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
    let auth =
        Authenticator::new("http", &cfg.auth).map_err(|e| anyhow::anyhow!("http.auth: {e}"))?;
    let mut limits = cfg.connections.limits();
    limits.max_connections = max_connections;
    ops.metrics.set_connections_max("http", max_connections);
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        auth = auth.is_some(),
        max_connections,
        "metrics and health on /metrics, /healthz, /readyz; silences API on /api/v1/silences"
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
    let app = router(ops, Arc::clone(&guard));
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
    pub auth: Option<Authenticator>,
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
pub const REFUSE_REASONS: [&str; 8] = [
    "tls",
    "timeout",
    "accept",
    "host",
    "cross_origin",
    "unauthenticated",
    "throttled",
    "content_type",
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

/// `Host` is an IP address, `localhost`, or an allowed name (any port); absent is accepted
/// (HTTP/1.0 clients; browsers always send it).
fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = host_name(host);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// The host of `host[:port]` or `[v6]:port`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A request without `Origin` (curl, the CLI) passes; with one, it must name the same host
/// and port as `Host`. `Sec-Fetch-Site` (sent by browsers) must not say another site.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| {
        if a.starts_with('[') && !a.contains("]:") || !a.starts_with('[') && !a.contains(':') {
            format!("{a}:{default_port}")
        } else {
            a.to_owned()
        }
    };
    with_port(authority).eq_ignore_ascii_case(&with_port(host))
}

fn silence_error(e: SilenceError) -> Response {
    let status = match e {
        SilenceError::Invalid(_) => StatusCode::BAD_REQUEST,
        SilenceError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SilenceError::NotFound(_) => StatusCode::NOT_FOUND,
        SilenceError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn list_silences(State(ops): State<Ops>) -> Response {
    let now = chrono::Utc::now();
    let Ok(s) = ops.silences.lock() else {
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

/// Records a change in the alert journal; a failure is logged (the change stands: it is
/// already persisted in `silences.json`).
fn record_change(
    ops: &Ops,
    action: &str,
    by: &Principal,
    peer: Option<PeerAddr>,
    object: &impl serde::Serialize,
) {
    let change = ChangeRecord {
        record: "silence".into(),
        action: action.into(),
        at: chrono::Utc::now(),
        by: by.to_string(),
        peer: peer.map(|p| p.0.to_string()),
        object: serde_json::to_value(object).unwrap_or_default(),
    };
    let written = ops
        .journal
        .lock()
        .map_err(|_| "lock poisoned".to_owned())
        .and_then(|mut j| j.append_change(&change).map_err(|e| e.to_string()));
    if let Err(e) = written {
        tracing::error!(error = %e, action, "cannot record the silence change in the alert journal");
    }
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
    let created = {
        let Ok(mut s) = ops.silences.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        match s.add(new, &by.to_string(), chrono::Utc::now()) {
            Ok(created) => created,
            Err(e) => return silence_error(e),
        }
    };
    let matchers: Vec<String> = created.matchers.iter().map(ToString::to_string).collect();
    if created.matches_everything() {
        tracing::warn!(silence = %created.id, ?matchers, ends_at = %created.ends_at, by = %by, "silence added that matches EVERY alert: no notification goes out until it ends");
    } else {
        tracing::info!(silence = %created.id, ?matchers, ends_at = %created.ends_at, by = %by, "silence added");
    }
    record_change(&ops, "create", &by, peer.map(|p| p.0), &created);
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn expire_silence(
    State(ops): State<Ops>,
    Extension(by): Extension<Principal>,
    peer: Option<Extension<PeerAddr>>,
    Path(id): Path<String>,
) -> Response {
    let expired = {
        let Ok(mut s) = ops.silences.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        match s.expire(&id, &by.to_string(), chrono::Utc::now()) {
            Ok(expired) => expired,
            Err(e) => return silence_error(e),
        }
    };
    tracing::info!(silence = %expired.id, by = %by, "silence expired");
    record_change(&ops, "expire", &by, peer.map(|p| p.0), &expired);
    Json(expired).into_response()
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hosts_that_a_rebinding_page_cannot_name() {
        let allowed = vec!["auditwatch.auditwatch.svc".to_owned()];
        for (host, ok) in [
            ("127.0.0.1:9095", true),
            ("[::1]:9095", true),
            ("10.2.3.4", true),
            ("localhost:9095", true),
            ("auditwatch.auditwatch.svc:9095", true),
            ("AUDITWATCH.auditwatch.svc", true),
            ("evil.example.com:9095", false),
            ("127.0.0.1.nip.io:9095", false),
        ] {
            assert_eq!(
                host_allowed(&headers(&[("host", host)]), &allowed),
                ok,
                "{host}"
            );
        }
    }

    #[test]
    fn only_same_origin_browser_requests() {
        for (pairs, ok) in [
            (vec![("host", "127.0.0.1:9095")], true),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("origin", "http://127.0.0.1:9095"),
                ],
                true,
            ),
            (
                vec![("host", "localhost"), ("origin", "http://localhost:80")],
                true,
            ),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("origin", "http://evil.example"),
                ],
                false,
            ),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("origin", "https://127.0.0.1:9095"),
                ],
                true,
            ),
            (vec![("host", "127.0.0.1:9095"), ("origin", "null")], false),
            (
                vec![("host", "127.0.0.1:9095"), ("sec-fetch-site", "cross-site")],
                false,
            ),
            (
                vec![
                    ("host", "127.0.0.1:9095"),
                    ("sec-fetch-site", "same-origin"),
                ],
                true,
            ),
        ] {
            assert_eq!(same_origin(&headers(&pairs)), ok, "{pairs:?}");
        }
    }

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
