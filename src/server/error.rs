//! The one error shape of the HTTP API, `{"error": {"code", "type", "message"}}`, and the single
//! place that maps errors to status codes and stable `type` strings.

use hyper::header::{HeaderValue, ALLOW, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::{json, ResBody};
use crate::engine::EngineError;
use crate::request::RequestError;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    Invalid(RequestError),
    TooLarge { limit: usize },
    NotFound(String),
    MethodNotAllowed { allow: &'static str },
    QueueFull,
    Loading,
    LoadFailed(String),
    ShuttingDown,
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Loading | ApiError::LoadFailed(_) | ApiError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable type.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_request",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::QueueFull => "queue_full",
            ApiError::Loading => "loading",
            ApiError::LoadFailed(_) => "model_load_failed",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Invalid(e) => e.message.clone(),
            ApiError::TooLarge { limit } => {
                format!("request body exceeds the limit of {limit} bytes")
            }
            ApiError::NotFound(path) => format!("no route for {path}"),
            ApiError::MethodNotAllowed { allow } => format!("method not allowed; use {allow}"),
            ApiError::QueueFull => "the request queue is full; retry later".into(),
            ApiError::Loading => "the model is loading; retry later".into(),
            ApiError::LoadFailed(m) => format!("model loading failed: {m}"),
            ApiError::ShuttingDown => "the server is shutting down".into(),
            ApiError::Internal(m) => m.clone(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut e =
            json!({"code": self.status().as_u16(), "type": self.kind(), "message": self.message()});
        if let ApiError::Invalid(r) = self {
            e["param"] = json!(r.field);
        }
        json!({ "error": e })
    }

    pub fn response(&self) -> Response<ResBody> {
        let mut r = json(self.status(), &self.body());
        let h = r.headers_mut();
        match self {
            ApiError::QueueFull | ApiError::Loading => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::LoadFailed(_) | ApiError::ShuttingDown => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("30"));
            }
            ApiError::MethodNotAllowed { allow } => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        r
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::LoadFailed(m) => ApiError::LoadFailed(m),
            EngineError::ShuttingDown => ApiError::ShuttingDown,
            EngineError::TooLarge { .. } => ApiError::Invalid(RequestError {
                field: "prompt".into(),
                message: e.to_string(),
            }),
            EngineError::NonFinite | EngineError::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}
