//! Who may use which route, checked before a route runs: the `Host` on every route (DNS
//! rebinding), CORS preflights, and on the inference routes the `Origin` (cross-site pages), the
//! API key and a JSON content type (a cross-site form cannot send one without a preflight).

use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, Request, Version};

use super::auth::ApiKey;
use super::cors::{self, Origins};
use super::error::ApiError;
use super::hosts::AllowedHosts;

/// The access settings of a server.
#[derive(Clone, Debug)]
pub struct AccessPolicy {
    pub api_key: Option<ApiKey>,
    pub hosts: AllowedHosts,
    pub origins: Origins,
}

impl std::fmt::Display for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match self.api_key {
            Some(_) => "required",
            None => "not required",
        };
        write!(
            f,
            "API key {key}; CORS origins: {}; hosts answered: {}",
            self.origins, self.hosts
        )
    }
}

/// The routes that run the model (and list it): the only ones behind the key and the
/// Origin check. Health, progress and metrics stay open to probes and scrapers.
pub fn is_inference(path: &str) -> bool {
    matches!(
        path,
        "/generate" | "/v1/models" | "/v1/chat/completions" | "/v1/completions"
    )
}

/// The routes that generate (their POST body is JSON).
pub fn is_generation(path: &str) -> bool {
    matches!(
        path,
        "/generate" | "/v1/chat/completions" | "/v1/completions"
    )
}

/// What the checks decided for a request that passed them.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Route it.
    Pass,
    /// A CORS preflight from an allowed origin: answer it without routing.
    Preflight,
}

/// The checks, in order: Host, preflight, then (inference routes) Origin, key, content type.
pub fn check<B>(policy: &AccessPolicy, req: &Request<B>) -> Result<Verdict, ApiError> {
    let (method, path, headers) = (req.method(), req.uri().path(), req.headers());
    check_host(policy, req)?;
    let origin = headers.get(ORIGIN);
    let origin_ok = origin.is_none_or(|o| policy.origins.allows(o));
    if cors::is_preflight(method, headers) {
        return match origin_ok {
            true => Ok(Verdict::Preflight),
            false => Err(ApiError::OriginNotAllowed(shown(origin))),
        };
    }
    if !is_inference(path) {
        return Ok(Verdict::Pass);
    }
    if !origin_ok {
        return Err(ApiError::OriginNotAllowed(shown(origin)));
    }
    if let Some(key) = &policy.api_key {
        key.verify(headers).map_err(ApiError::Unauthorized)?;
    }
    if method == Method::POST && is_generation(path) && !is_json(headers.get(CONTENT_TYPE)) {
        return Err(ApiError::NotJson(
            headers.get(CONTENT_TYPE).map(|v| shown(Some(v))),
        ));
    }
    Ok(Verdict::Pass)
}

/// Every `Host` header, and the authority of an absolute-form target (`GET http://h/ HTTP/1.1`,
/// which a server must prefer to the header), must be an allowed host; HTTP/1.1 requires a
/// `Host` header (HTTP/1.0 clients may leave it out).
fn check_host<B>(policy: &AccessPolicy, req: &Request<B>) -> Result<(), ApiError> {
    let headers = req.headers();
    if !headers.contains_key(HOST) && req.version() == Version::HTTP_11 {
        return Err(ApiError::MissingHost);
    }
    let mut hosts = headers.get_all(HOST).iter();
    if let Some(bad) = hosts.find(|h| !policy.hosts.allows(h.as_bytes())) {
        return Err(ApiError::HostNotAllowed(shown(Some(bad))));
    }
    if let Some(authority) = req.uri().authority() {
        // Userinfo (`user@host`) is not a host: only what follows the last '@' is checked.
        let host = authority.as_str().rsplit('@').next().unwrap_or("");
        if !policy.hosts.allows(host.as_bytes()) {
            return Err(ApiError::HostNotAllowed(shown_str(authority.as_str())));
        }
    }
    Ok(())
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(Ok(v)) = content_type.map(HeaderValue::to_str) else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A header's value as an error message shows it: text, at most 100 characters.
fn shown(v: Option<&HeaderValue>) -> String {
    let Some(v) = v else {
        return "(none)".into();
    };
    shown_str(&String::from_utf8_lossy(v.as_bytes()))
}

/// At most 100 characters of `text`.
fn shown_str(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;
    use hyper::header::HeaderValue;

    #[test]
    fn json_content_types_may_carry_parameters() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
        ] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }
}
