//! Routing after the access checks, and the small handlers: `/live`, `/health`, `/ready`,
//! `/load-progress`. Errors on the OpenAI routes (`/v1/…`) take OpenAI's shape.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ORIGIN, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::access::{self, Verdict};
use super::access_log::Exchange;
use super::body::{json, sse, sse_event, ResBody};
use super::error::ApiError;
use super::state::AppState;
use super::{cors, generate, openai_api};
use crate::load::progress::LoadState;
use crate::openai::Route;

/// Check who may ask, answer, and add the CORS headers for the request's origin.
pub async fn route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    ex: &Exchange,
) -> Response<ResBody> {
    let path = req.uri().path().to_string();
    let origin = req.headers().get(ORIGIN).cloned();
    let result = match access::check(&state.access, &req) {
        Ok(Verdict::Preflight) => Ok(cors::preflight()),
        Ok(Verdict::Pass) => dispatch(state.clone(), req, &path, ex).await,
        Err(e) => Err(e),
    };
    if let (Err(e), true) = (&result, access::is_generation(&path)) {
        // After submission the engine counts how the request ended.
        if ex.refused_before_engine() {
            state.outcomes.refused(e.kind());
        }
    }
    let mut r = result.unwrap_or_else(|e| match path.starts_with("/v1/") {
        true => e.openai_response(),
        false => e.response(),
    });
    state.access.origins.decorate(origin.as_ref(), &mut r);
    r
}

/// The handler for a path and method.
async fn dispatch(
    state: Arc<AppState>,
    req: Request<Incoming>,
    path: &str,
    ex: &Exchange,
) -> Result<Response<ResBody>, ApiError> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/live" if get => Ok(live(&state)),
        "/health" | "/ready" if get => Ok(health(&state)),
        "/load-progress" if get => Ok(load_progress(&state, &req)),
        "/generate" if req.method() == Method::POST => generate::handle(state, req, ex).await,
        "/v1/models" if get => Ok(openai_api::models(&state)),
        "/metrics" if get => metrics(&state),
        "/metrics" => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        "/v1/chat/completions" if req.method() == Method::POST => {
            openai_api::completions(state, req, Route::Chat, ex).await
        }
        "/v1/completions" if req.method() == Method::POST => {
            openai_api::completions(state, req, Route::Completions, ex).await
        }
        "/v1/models" => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        "/v1/chat/completions" | "/v1/completions" => {
            Err(ApiError::MethodNotAllowed { allow: "POST" })
        }
        "/live" | "/health" | "/ready" | "/load-progress" => {
            Err(ApiError::MethodNotAllowed { allow: "GET" })
        }
        "/generate" => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        _ => Err(ApiError::NotFound(path.to_string())),
    }
}

/// `GET /live`: 200 while the process serves, 503 once the load failed (so a liveness probe
/// restarts a worker that can never become ready).
fn live(state: &AppState) -> Response<ResBody> {
    match state.progress.state() {
        LoadState::Failed => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "failed", "error": state.progress.snapshot().error}),
        ),
        _ => json(StatusCode::OK, &json!({"status": "live"})),
    }
}

/// `GET /metrics`: Prometheus text format.
fn metrics(state: &AppState) -> Result<Response<ResBody>, ApiError> {
    let handle = state
        .metrics
        .get()
        .ok_or_else(|| ApiError::NotFound("/metrics (no recorder installed)".into()))?;
    let engine = state.runtime.get().map(|rt| rt.engine.stats.snapshot());
    let counts = state.outcomes.snapshot();
    let text = crate::metrics::render(handle, engine.as_ref(), &counts, &state.progress.snapshot());
    let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from(text)).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

fn health(state: &AppState) -> Response<ResBody> {
    let s = state.progress.snapshot();
    let (status, code) = match s.state {
        LoadState::Ready | LoadState::Resident => ("ready", StatusCode::OK),
        LoadState::Loading => ("loading", StatusCode::SERVICE_UNAVAILABLE),
        LoadState::Failed => ("failed", StatusCode::SERVICE_UNAVAILABLE),
    };
    let engine = state.runtime.get().map(|rt| rt.engine.stats.snapshot());
    let body = json!({
        "status": status,
        "state": s.state,
        "units_resident": s.units_resident,
        "units_total": s.units_total,
        "ready_ms": s.ready_ms,
        "resident_ms": s.resident_ms,
        "error": s.error,
        "engine": engine,
    });
    let mut r = json(code, &body);
    if code != StatusCode::OK {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn wants_stream(req: &Request<Incoming>) -> bool {
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let query = req.uri().query().unwrap_or("");
    accept.contains("text/event-stream")
        || query
            .split('&')
            .any(|kv| kv == "stream=true" || kv == "stream=1")
}

fn load_progress(state: &Arc<AppState>, req: &Request<Incoming>) -> Response<ResBody> {
    if !wants_stream(req) {
        return json(StatusCode::OK, &json!(state.progress.snapshot()));
    }
    let (tx, resp) = sse();
    let state = state.clone();
    tokio::spawn(async move {
        let mut changes = state.progress.subscribe();
        let mut stopping = state.stopping.clone();
        loop {
            let snap = state.progress.snapshot();
            let done = matches!(snap.state, LoadState::Resident | LoadState::Failed);
            if tx.send(sse_event("progress", &json!(snap))).await.is_err() || done {
                break;
            }
            // Coalesce bursts of updates (at most ~20 events per second); end on shutdown.
            let next = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                changes.changed().await
            };
            tokio::select! {
                changed = next => if changed.is_err() { break },
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
    });
    resp
}
