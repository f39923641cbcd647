//! The daemon's network edge, shared by the webhook source and the operations listener:
//! bounded connection handling ([`serve`]), TLS ([`tls`]), who may call state-changing
//! endpoints ([`auth`]), and secrets and certificates that follow their files ([`reload`]).
//!
//! Everything an outsider can reach goes through here, so everything here is bounded and
//! counted: connections, handshakes, header time, idle time, password checks, log lines.

pub mod auth;
pub mod origin;
pub mod reload;
pub mod serve;
pub mod tls;

/// Whether a request says its body is JSON (`application/json`, parameters allowed). The
/// webhook and the API take nothing else: an HTML form cannot send it, and a sender that does
/// not say what it sends is refused (415).
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}
