//! The one error shape of the HTTP API, `{"error": {"code", "type", "message"}}`, and the single
//! place that maps errors to status codes and stable `type` strings.

use hyper::header::{HeaderValue, ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::auth::AuthFailure;
use super::body::{json, ResBody};
use crate::engine::EngineError;
use crate::request::RequestError;

/// Largest request header section (hyper answers 431 above it).
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most headers in a request (hyper answers 431 above it).
pub const MAX_HEADERS: usize = 100;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    Invalid(RequestError),
    TooLarge {
        limit: usize,
    },
    /// The request head exceeded the header limit (answered for hyper).
    HeadTooLarge,
    /// The request target exceeded hyper's limit.
    UriTooLong,
    /// hyper could not parse the request head (request line, a header, Content-Length).
    MalformedHead,
    /// The body did not arrive within the limit.
    BodyTimeout {
        secs: u64,
    },
    /// Too many open connections.
    Overloaded {
        limit: usize,
    },
    /// Too many open connections from the client's address.
    PeerOverloaded {
        limit: usize,
    },
    /// An HTTP/1.1 request without a `Host` header (RFC 9112 §3.2).
    MissingHost,
    /// The model's output was not finite (broken weights): a fault of the model, not the server.
    NonFinite(String),
    NotFound(String),
    /// An inference route without the API key.
    Unauthorized(AuthFailure),
    /// The `Host` header (shown) is not in `--allowed-hosts`.
    HostNotAllowed(String),
    /// The `Origin` header (shown) is not in `--cors-allow-origin`.
    OriginNotAllowed(String),
    /// A JSON route's body is labelled with this content type (shown), or none.
    NotJson(Option<String>),
    MethodNotAllowed {
        allow: &'static str,
    },
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
            ApiError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::MalformedHead => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } | ApiError::PeerOverloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::MissingHost => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::HostNotAllowed(_) | ApiError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::NotJson(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Loading | ApiError::LoadFailed(_) | ApiError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) | ApiError::NonFinite(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable type.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_request",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::HeadTooLarge => "headers_too_large",
            ApiError::UriTooLong => "uri_too_long",
            ApiError::MalformedHead => "invalid_request",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::Overloaded { .. } | ApiError::PeerOverloaded { .. } => "overloaded",
            ApiError::MissingHost => "invalid_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized(_) => "invalid_api_key",
            ApiError::HostNotAllowed(_) => "host_not_allowed",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::NotJson(_) => "unsupported_media_type",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::QueueFull => "queue_full",
            ApiError::Loading => "loading",
            ApiError::LoadFailed(_) => "model_load_failed",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Internal(_) => "internal",
            ApiError::NonFinite(_) => "non_finite_logits",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Invalid(e) => e.message.clone(),
            ApiError::TooLarge { limit } => {
                format!("request body exceeds the limit of {limit} bytes")
            }
            ApiError::HeadTooLarge => format!(
                "the request's header section exceeds {} bytes (or {} headers)",
                MAX_HEAD_BYTES, MAX_HEADERS
            ),
            ApiError::UriTooLong => "the request target is too long".into(),
            ApiError::MalformedHead => {
                "malformed request head: the request line, a header or Content-Length is invalid"
                    .into()
            }
            ApiError::BodyTimeout { secs } => {
                format!("the request body did not arrive within {secs} s")
            }
            ApiError::Overloaded { limit } => {
                format!("the server holds its limit of {limit} connections; retry later")
            }
            ApiError::PeerOverloaded { limit } => format!(
                "this client address holds its limit of {limit} open connections \
                 (--max-connections-per-peer); close some or retry later"
            ),
            ApiError::MissingHost => "an HTTP/1.1 request must carry a Host header".into(),
            ApiError::NotFound(path) => format!("no route for {path}"),
            ApiError::Unauthorized(AuthFailure::Missing) => {
                "an API key is required: send the header `Authorization: Bearer <key>`".into()
            }
            ApiError::Unauthorized(AuthFailure::Wrong) => "incorrect API key provided".into(),
            ApiError::HostNotAllowed(host) => format!(
                "host '{host}' is not allowed; the server answers the hosts of --allowed-hosts"
            ),
            ApiError::OriginNotAllowed(origin) => format!(
                "origin '{origin}' is not allowed; the server answers the origins of --cors-allow-origin"
            ),
            ApiError::NotJson(got) => format!(
                "the Content-Type header must be application/json; got {}",
                got.as_deref().unwrap_or("none")
            ),
            ApiError::MethodNotAllowed { allow } => format!("method not allowed; use {allow}"),
            ApiError::QueueFull => "the request queue is full; retry later".into(),
            ApiError::Loading => "the model is loading; retry later".into(),
            ApiError::LoadFailed(m) => format!("model loading failed: {m}"),
            ApiError::ShuttingDown => "the server is shutting down".into(),
            // Details stay in the log (`response` writes them there), never in a body.
            ApiError::Internal(_) => "internal error; the server log has the details".into(),
            ApiError::NonFinite(m) => m.clone(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut e =
            json!({"code": self.status().as_u16(), "type": self.kind(), "message": self.message()});
        match self {
            ApiError::Invalid(r) => e["param"] = json!(r.field),
            ApiError::MalformedHead | ApiError::HeadTooLarge => e["param"] = json!("headers"),
            ApiError::TooLarge { .. } | ApiError::BodyTimeout { .. } => e["param"] = json!("body"),
            ApiError::HostNotAllowed(_) | ApiError::MissingHost => e["param"] = json!("Host"),
            ApiError::OriginNotAllowed(_) => e["param"] = json!("Origin"),
            ApiError::NotJson(_) => e["param"] = json!("Content-Type"),
            _ => {}
        }
        json!({ "error": e })
    }

    /// The error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` (`code` is
    /// this API's stable type string).
    pub fn openai_body(&self) -> serde_json::Value {
        let kind = match self.status().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        let param = match self.body()["error"].get("param") {
            Some(p) => p.clone(),
            None => serde_json::Value::Null,
        };
        json!({"error": {"message": self.message(), "type": kind, "param": param, "code": self.kind()}})
    }

    /// `response` with the OpenAI-shaped body.
    pub fn openai_response(&self) -> Response<ResBody> {
        let mut r = self.response();
        let body = json(self.status(), &self.openai_body());
        *r.body_mut() = body.into_body();
        r
    }

    pub fn response(&self) -> Response<ResBody> {
        if let ApiError::Internal(details) = self {
            tracing::error!("internal error answered with 500: {details}");
        }
        let mut r = json(self.status(), &self.body());
        let h = r.headers_mut();
        match self {
            ApiError::QueueFull
            | ApiError::Loading
            | ApiError::Overloaded { .. }
            | ApiError::PeerOverloaded { .. } => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::LoadFailed(_) | ApiError::ShuttingDown => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("30"));
            }
            ApiError::MethodNotAllowed { allow } => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthorized(_) => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
            EngineError::NonFinite => ApiError::NonFinite(e.to_string()),
            EngineError::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn a_500_body_carries_no_internal_details() {
        let e = ApiError::Internal("index out of bounds: the len is 0 but the index is 0".into());
        let body = e.body().to_string();
        assert!(!body.contains("index out of bounds"), "{body}");
        assert!(!e.openai_body().to_string().contains("index out of bounds"));
        assert_eq!(e.body()["error"]["type"], "internal");
    }
}
