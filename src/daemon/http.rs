//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz` (the process is
//! up), `/readyz` (state restored, sources started, and the engine keeping up: ready to
//! receive audit events) and the silences API (`/api/v1/silences`, used by
//! `auditwatch silence`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};

use super::pipeline::Backlog;
use crate::metrics::Metrics;
use crate::notify::silence::{NewSilence, SilenceError, Silences};

/// What the endpoints read.
#[derive(Clone)]
pub struct Ops {
    pub metrics: Arc<Metrics>,
    /// Set once state is restored and the sources run; cleared at shutdown.
    pub ready: Arc<AtomicBool>,
    pub silences: Arc<Mutex<Silences>>,
    pub backlog: Backlog,
    /// `/readyz` fails while the engine's backlog is older than this.
    pub max_lag: std::time::Duration,
}

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/silences", get(list_silences).post(add_silence))
        .route("/api/v1/silences/{id}", delete(expire_silence))
        .with_state(ops)
}

fn silence_error(e: SilenceError) -> Response {
    let status = match e {
        SilenceError::Invalid(_) => StatusCode::BAD_REQUEST,
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

async fn add_silence(State(ops): State<Ops>, body: axum::body::Bytes) -> Response {
    let new: NewSilence = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return silence_error(SilenceError::Invalid(format!("request body: {e}"))),
    };
    let Ok(mut s) = ops.silences.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match s.add(new, chrono::Utc::now()) {
        Ok(created) => {
            tracing::info!(silence = %created.id, matchers = ?created.matchers.iter().map(ToString::to_string).collect::<Vec<_>>(), ends_at = %created.ends_at, by = %created.created_by, "silence added");
            (StatusCode::CREATED, Json(created)).into_response()
        }
        Err(e) => silence_error(e),
    }
}

async fn expire_silence(State(ops): State<Ops>, Path(id): Path<String>) -> Response {
    let Ok(mut s) = ops.silences.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match s.expire(&id, chrono::Utc::now()) {
        Ok(expired) => {
            tracing::info!(silence = %expired.id, "silence expired");
            Json(expired).into_response()
        }
        Err(e) => silence_error(e),
    }
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    ops.metrics
        .engine_backlog_age
        .set(ops.backlog.age().as_secs_f64());
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
