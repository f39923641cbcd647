//! The daemon's network edge, shared by the webhook source and the operations listener:
//! bounded connection handling ([`serve`]), TLS ([`tls`]), who may call state-changing
//! endpoints ([`auth`]), and secrets and certificates that follow their files ([`reload`]).
//!
//! Everything an outsider can reach goes through here, so everything here is bounded and
//! counted: connections, handshakes, header time, idle time, password checks, log lines.

pub mod auth;
pub mod reload;
pub mod serve;
pub mod tls;
