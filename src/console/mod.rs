//! The on-call console: what fired and why, what is silenced, how each rule and source is
//! doing. Pages are rendered on the server from templates compiled into the binary, with one
//! stylesheet and no JavaScript, so they read the same in any browser, behind any proxy, with
//! scripts off, and nothing is fetched from elsewhere.
//!
//! It shares the daemon's HTTP listener, and its protections: a `Host` this daemon answers
//! to, same-origin form posts, the configured authentication (a login page for it, or an
//! `Authorization` header), a CSRF token in every form ([`session`]), and headers that keep
//! pages out of frames and forbid inline scripts. Everything shown from an event (user names,
//! objects, summaries) is escaped by the templates.

pub mod session;
mod view;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use minijinja::Environment;
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::net::auth::{AuthError, Authenticator};
use crate::net::origin::{host_allowed, same_origin};
use crate::net::serve::PeerAddr;
use crate::notify::recent::SharedDeliveries;
use crate::notify::silence::{MatcherSpec, NewSilence, SilenceDesk};
use crate::rules::SharedRules;
use session::{Sessions, Viewer};

/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// What the console reads and where.
pub struct ConsoleOptions {
    pub metrics: Arc<Metrics>,
    pub desk: SilenceDesk,
    pub deliveries: SharedDeliveries,
    pub rules: SharedRules,
    /// `STATE_DIR/alerts.jsonl`.
    pub alerts_path: PathBuf,
    /// The archive directory, when archiving is on (full records on an alert's page).
    pub archive_dir: Option<PathBuf>,
    /// Labels of each source (`sources[].labels`), by source name.
    pub source_labels: Vec<(String, std::collections::BTreeMap<String, String>)>,
    pub auth: Option<Arc<Authenticator>>,
    pub allowed_hosts: Vec<String>,
    /// The listener speaks TLS: cookies are `Secure`.
    pub tls: bool,
}

/// The console, ready to be merged into the listener's router.
#[derive(Clone)]
pub struct Console(Arc<Inner>);

struct Inner {
    opts: ConsoleOptions,
    sessions: Sessions,
    templates: Environment<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console template {0}: {1}")]
    Template(&'static str, minijinja::Error),
    #[error("{0}")]
    Setup(String),
}

const TEMPLATES: [(&str, &str); 8] = [
    ("base.html", include_str!("templates/base.html")),
    ("alerts.html", include_str!("templates/alerts.html")),
    ("alert.html", include_str!("templates/alert.html")),
    ("silences.html", include_str!("templates/silences.html")),
    (
        "silence_new.html",
        include_str!("templates/silence_new.html"),
    ),
    ("rules.html", include_str!("templates/rules.html")),
    ("sources.html", include_str!("templates/sources.html")),
    ("login.html", include_str!("templates/login.html")),
];

const STYLESHEET: &str = include_str!("static/console.css");

impl Console {
    pub fn new(opts: ConsoleOptions) -> Result<Console, ConsoleError> {
        let mut templates = Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, source) in TEMPLATES {
            templates
                .add_template(name, source)
                .map_err(|e| ConsoleError::Template(name, e))?;
        }
        Ok(Console(Arc::new(Inner {
            opts,
            sessions: Sessions::new().map_err(ConsoleError::Setup)?,
            templates,
        })))
    }

    /// The console's routes, behind its guard.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to("/alerts") }))
            .route("/alerts", get(alerts_page))
            .route("/alerts/{id}", get(alert_page))
            .route("/silences", get(silences_page))
            .route("/silences/new", get(new_silence_page).post(new_silence))
            .route("/silences/{id}/expire", post(expire_silence))
            .route("/rules", get(rules_page))
            .route("/sources", get(sources_page))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/static/console.css", get(stylesheet))
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self)
    }

    fn render(&self, name: &str, viewer: &Viewer, page: &str, ctx: minijinja::Value) -> Response {
        let base = minijinja::context! {
            page,
            csrf => &viewer.csrf,
            who => viewer.principal.as_deref(),
            logged_in => self.0.opts.auth.is_some() && viewer.principal.is_some(),
        };
        let merged = minijinja::context! { ..ctx, ..base };
        let rendered = self
            .0
            .templates
            .get_template(name)
            .and_then(|t| t.render(merged));
        match rendered {
            Ok(html) => {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
            }
            Err(e) => {
                tracing::error!(template = name, error = %e, "console: cannot render a page");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot render this page\n",
                )
                    .into_response()
            }
        }
    }
}

/// Host and origin, session, authentication and the CSRF token of every form, then security
/// headers on the answer.
async fn guard(State(console): State<Console>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let metrics = &console.0.opts.metrics;
    if !host_allowed(headers, &console.0.opts.allowed_hosts) {
        metrics.http_refused("host");
        return plain(
            StatusCode::FORBIDDEN,
            "unexpected Host header (add the name to http.allowed_hosts)",
        );
    }
    let posting = request.method() == Method::POST;
    if posting && !same_origin(headers) {
        metrics.http_refused("cross_origin");
        return plain(StatusCode::FORBIDDEN, "cross-origin form posts are refused");
    }
    if request.uri().path() == "/static/console.css" {
        return secure_headers(next.run(request).await);
    }
    let sessions = &console.0.sessions;
    let found = session::session_cookie(headers).and_then(|id| sessions.find(id));
    let auth = console.0.opts.auth.clone();
    let mut viewer = match (found, &auth) {
        (Some(v), _) => v,
        (None, None) => match sessions.start(Some("anonymous".into())) {
            Some(v) => v,
            None => return plain(StatusCode::SERVICE_UNAVAILABLE, "no session available"),
        },
        (None, Some(_)) if posting && request.uri().path() != "/login" => {
            metrics.http_refused("unauthenticated");
            return plain(
                StatusCode::FORBIDDEN,
                "no session: load the page again and resubmit",
            );
        }
        (None, Some(_)) => match sessions.start(None) {
            Some(v) => v,
            None => return plain(StatusCode::SERVICE_UNAVAILABLE, "no session available"),
        },
    };
    // A script or curl may present the API's credentials instead of logging in (GET only:
    // forms need a session's CSRF token).
    if viewer.principal.is_none()
        && let Some(auth) = &auth
        && headers.contains_key(header::AUTHORIZATION)
    {
        match auth.check(headers).await {
            Ok(p) => viewer.principal = Some(p.to_string()),
            Err(AuthError::Throttled) => {
                metrics.http_refused("throttled");
                return plain(StatusCode::TOO_MANY_REQUESTS, "too many failed logins");
            }
            Err(_) => {
                metrics.http_refused("unauthenticated");
                return plain(StatusCode::UNAUTHORIZED, "invalid credentials");
            }
        }
    }
    let path = request.uri().path().to_owned();
    if viewer.principal.is_none() && path != "/login" {
        let next_path = request
            .uri()
            .path_and_query()
            .map_or("/alerts", |p| p.as_str());
        let to = format!("/login?next={}", urlencode(next_path));
        return with_cookie(Redirect::to(&to).into_response(), &viewer, &console);
    }
    let request = if posting {
        match check_form(&console, &viewer, request).await {
            Ok(r) => r,
            Err(refused) => return secure_headers(refused),
        }
    } else {
        request
    };
    let mut request = request;
    request.extensions_mut().insert(viewer.clone());
    let response = next.run(request).await;
    secure_headers(with_cookie(response, &viewer, &console))
}

/// Reads a form body (bounded), checks its media type and CSRF token, and puts it back.
async fn check_form(
    console: &Console,
    viewer: &Viewer,
    request: Request,
) -> Result<Request, Response> {
    let form_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim() == "application/x-www-form-urlencoded");
    if !form_type {
        console.0.opts.metrics.http_refused("content_type");
        return Err(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send an HTML form (application/x-www-form-urlencoded)",
        ));
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large"));
    };
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if viewer.new || !console.0.sessions.csrf_ok(&viewer.session, &token) {
        console.0.opts.metrics.http_refused("csrf");
        return Err(plain(
            StatusCode::FORBIDDEN,
            "this form is stale or did not come from this console (CSRF token mismatch): load the page again",
        ));
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

fn plain(status: StatusCode, message: &str) -> Response {
    secure_headers((status, format!("{message}\n")).into_response())
}

fn with_cookie(mut response: Response, viewer: &Viewer, console: &Console) -> Response {
    if viewer.new
        && let Ok(v) = HeaderValue::from_str(&Sessions::cookie(viewer, console.0.opts.tls))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it Chromium sends `Origin: null` on the console's own form
    // posts, which the same-origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A template value from anything serializable.
pub(crate) fn ser<T: serde::Serialize>(value: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Runs blocking reads (the alert journal, the archive) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

async fn alerts_page(
    State(c): State<Console>,
    Extension(viewer): Extension<Viewer>,
    Query(filter): Query<view::AlertFilter>,
) -> Response {
    let inner = Arc::clone(&c.0);
    let f = filter.clone();
    let Some(listed) = blocking(move || view::list_alerts(&inner.opts, &f)).await else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read alerts");
    };
    let common = minijinja::context! {
        title => "Alerts",
        filter => ser(&filter),
        rule_names => ser(&view::rule_names(&c.0.opts)),
    };
    let ctx = match listed {
        Ok(l) => minijinja::context! {
            alerts => ser(&l.rows),
            shown => l.shown,
            matched => l.matched,
            scanned => l.scanned,
            active => l.active,
            active_for => view::ACTIVE_FOR_TEXT,
            ..common
        },
        Err(e) => minijinja::context! { error => e, ..common },
    };
    c.render("alerts.html", &viewer, "alerts", ctx)
}

async fn alert_page(
    State(c): State<Console>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let inner = Arc::clone(&c.0);
    let Some(detail) = blocking(move || view::alert_detail(&inner.opts, &id)).await else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the alert");
    };
    match detail {
        Ok(Some(ctx)) => c.render("alert.html", &viewer, "alerts", ctx),
        Ok(None) => {
            let mut r = c.render(
                "alerts.html",
                &viewer,
                "alerts",
                minijinja::context! { title => "Alert not found", error => "No alert with this ID in the alert journal." },
            );
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn silences_page(State(c): State<Console>, Extension(viewer): Extension<Viewer>) -> Response {
    silences_with(&c, &viewer, None, None)
}

fn silences_with(
    c: &Console,
    viewer: &Viewer,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let silences = view::silence_rows(&c.0.opts);
    c.render(
        "silences.html",
        viewer,
        "silences",
        minijinja::context! { title => "Silences", silences => ser(&silences), notice, error },
    )
}

/// The silence form's fields.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
struct SilenceForm {
    #[serde(default)]
    matchers: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    confirm_match_all: Option<String>,
    #[serde(default)]
    action: String,
}

#[derive(Debug, Deserialize)]
struct FromAlert {
    alert: Option<String>,
}

async fn new_silence_page(
    State(c): State<Console>,
    Extension(viewer): Extension<Viewer>,
    Query(from): Query<FromAlert>,
) -> Response {
    let matchers = match from.alert {
        Some(id) => {
            let path = c.0.opts.alerts_path.clone();
            blocking(move || crate::explain::find_alert(&id, &path).ok())
                .await
                .flatten()
                .map(|a| view::matchers_for(&a))
                .unwrap_or_default()
        }
        None => String::new(),
    };
    let form = SilenceForm {
        matchers,
        duration: "2h".into(),
        created_by: viewer.principal.clone().unwrap_or_default(),
        ..SilenceForm::default()
    };
    c.render(
        "silence_new.html",
        &viewer,
        "silences",
        minijinja::context! { title => "New silence", form => ser(&form) },
    )
}

async fn new_silence(
    State(c): State<Console>,
    Extension(viewer): Extension<Viewer>,
    peer: Option<Extension<PeerAddr>>,
    axum::Form(form): axum::Form<SilenceForm>,
) -> Response {
    let by = viewer.principal.clone().unwrap_or_default();
    let new = NewSilence {
        matchers: form
            .matchers
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| MatcherSpec::Text(l.to_owned()))
            .collect(),
        starts_at: None,
        ends_at: None,
        duration: Some(form.duration.trim().to_owned()),
        created_by: form.created_by.trim().to_owned(),
        comment: form.comment.trim().to_owned(),
        confirm_match_all: form.confirm_match_all.is_some(),
    };
    if form.action == "create" {
        let desk = c.0.opts.desk.clone();
        let peer = peer.map(|p| p.0.0);
        let by2 = by.clone();
        let new2 = new.clone();
        match blocking(move || desk.add(new2, &by2, peer)).await {
            Some(Ok(created)) => {
                return silences_with(
                    &c,
                    &viewer,
                    Some(format!("Silence {} created.", created.id)),
                    None,
                );
            }
            Some(Err(e)) => return silence_form(&c, &viewer, &form, None, Some(e.to_string())),
            None => return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot save the silence"),
        }
    }
    let inner = Arc::clone(&c.0);
    let previewed = blocking(move || view::preview_silence(&inner.opts, new, &by)).await;
    match previewed {
        Some(Ok(p)) => silence_form(&c, &viewer, &form, Some(p), None),
        Some(Err(e)) => silence_form(&c, &viewer, &form, None, Some(e)),
        None => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot preview"),
    }
}

fn silence_form(
    c: &Console,
    viewer: &Viewer,
    form: &SilenceForm,
    preview: Option<view::Preview>,
    error: Option<String>,
) -> Response {
    let (muted, scanned) = preview.map(|p| (p.muted, p.scanned)).unwrap_or_default();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = c.render(
        "silence_new.html",
        viewer,
        "silences",
        minijinja::context! {
            title => "New silence",
            form => ser(form),
            preview => true,
            muted => ser(&muted),
            scanned,
            error,
        },
    );
    *r.status_mut() = status;
    r
}

async fn expire_silence(
    State(c): State<Console>,
    Extension(viewer): Extension<Viewer>,
    peer: Option<Extension<PeerAddr>>,
    Path(id): Path<String>,
) -> Response {
    let by = viewer.principal.clone().unwrap_or_default();
    let desk = c.0.opts.desk.clone();
    let peer = peer.map(|p| p.0.0);
    match blocking(move || desk.expire(&id, &by, peer)).await {
        Some(Ok(s)) => silences_with(
            &c,
            &viewer,
            Some(format!("Silence {} expired.", s.id)),
            None,
        ),
        Some(Err(e)) => silences_with(&c, &viewer, None, Some(e.to_string())),
        None => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot expire the silence",
        ),
    }
}

async fn rules_page(State(c): State<Console>, Extension(viewer): Extension<Viewer>) -> Response {
    let inner = Arc::clone(&c.0);
    let rules = blocking(move || view::rule_rows(&inner.opts))
        .await
        .unwrap_or_default();
    c.render(
        "rules.html",
        &viewer,
        "rules",
        minijinja::context! { title => "Rules", rules => ser(&rules) },
    )
}

async fn sources_page(State(c): State<Console>, Extension(viewer): Extension<Viewer>) -> Response {
    let (sources, clocks) = view::source_rows(&c.0.opts);
    c.render(
        "sources.html",
        &viewer,
        "sources",
        minijinja::context! { title => "Sources", sources => ser(&sources), clocks => ser(&clocks) },
    )
}

#[derive(Debug, Deserialize)]
struct Next_ {
    next: Option<String>,
}

/// Only paths on this console (no `//host` or scheme): an attacker's login link cannot send
/// the user elsewhere afterwards.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/alerts".to_owned(),
    }
}

async fn login_page(
    State(c): State<Console>,
    Extension(viewer): Extension<Viewer>,
    Query(next): Query<Next_>,
) -> Response {
    if viewer.principal.is_some() {
        return Redirect::to(&safe_next(next.next.as_deref())).into_response();
    }
    login_form(&c, &viewer, next.next.as_deref(), None)
}

fn login_form(c: &Console, viewer: &Viewer, next: Option<&str>, error: Option<&str>) -> Response {
    let basic = c.0.opts.auth.as_ref().is_some_and(|a| a.offers_basic());
    c.render(
        "login.html",
        viewer,
        "login",
        minijinja::context! { title => "Log in", basic, next => safe_next(next), error },
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

async fn login(
    State(c): State<Console>,
    Extension(viewer): Extension<Viewer>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let Some(auth) = c.0.opts.auth.clone() else {
        return Redirect::to("/alerts").into_response();
    };
    let credentials = if auth.offers_basic() {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", form.user, form.password))
        )
    } else {
        format!("Bearer {}", form.password)
    };
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(&credentials) else {
        return unauthorized(&c, &viewer, &form);
    };
    headers.insert(header::AUTHORIZATION, value);
    match auth.check(&headers).await {
        Ok(principal) => {
            // A new session ID at login: one planted before it is worth nothing after.
            c.0.sessions.end(&viewer.session);
            let Some(fresh) = c.0.sessions.start(Some(principal.to_string())) else {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "no session available");
            };
            tracing::info!(user = %principal, "console login");
            let to = safe_next(form.next.as_deref());
            with_cookie(Redirect::to(&to).into_response(), &fresh, &c)
        }
        Err(AuthError::Throttled) => {
            c.0.opts.metrics.http_refused("throttled");
            let mut r = login_form(
                &c,
                &viewer,
                form.next.as_deref(),
                Some("Too many failed logins; wait a few seconds."),
            );
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r
        }
        Err(_) => unauthorized(&c, &viewer, &form),
    }
}

fn unauthorized(c: &Console, viewer: &Viewer, form: &LoginForm) -> Response {
    c.0.opts.metrics.http_refused("unauthenticated");
    let mut r = login_form(
        c,
        viewer,
        form.next.as_deref(),
        Some("Wrong user name or password."),
    );
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r
}

async fn logout(State(c): State<Console>, Extension(viewer): Extension<Viewer>) -> Response {
    c.0.sessions.end(&viewer.session);
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        session::COOKIE
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_only_returns_to_this_console() {
        assert_eq!(safe_next(Some("/alerts?rule=x")), "/alerts?rule=x");
        assert_eq!(safe_next(Some("//evil.example/")), "/alerts");
        assert_eq!(safe_next(Some("https://evil.example/")), "/alerts");
        assert_eq!(safe_next(Some("/\\evil.example")), "/alerts");
        assert_eq!(safe_next(None), "/alerts");
    }

    #[test]
    fn every_template_compiles() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source).unwrap();
        }
    }
}
