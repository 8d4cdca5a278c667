//! CORS, off unless `--cors-allow-origin` lists origins: preflights answered, and
//! `Access-Control-Allow-Origin` on responses to allowed origins. Written here rather than with
//! tower-http's `CorsLayer` because the same origin list also refuses requests (403 in each API's
//! error shape, after the Host check), which `CorsLayer` does not do: one list, one matcher.

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use hyper::{Method, Response, StatusCode};

use super::body::ResBody;

/// One `--cors-allow-origin` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigin {
    /// `*`: every origin.
    Any,
    /// `scheme://host[:port]`, lower case.
    Exact(String),
}

impl CorsOrigin {
    pub fn parse(s: &str) -> Result<CorsOrigin, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(CorsOrigin::Any);
        }
        let (scheme, host) = s.split_once("://").ok_or_else(|| {
            format!("'{s}' is not an origin: expected scheme://host[:port] or '*'")
        })?;
        let scheme_ok = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok || host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(format!(
                "'{s}' is not an origin: expected scheme://host[:port] (no path, no trailing /) or '*'"
            ));
        }
        Ok(CorsOrigin::Exact(s.to_ascii_lowercase()))
    }
}

/// The origins allowed; empty: CORS off, and every request with an `Origin` refused.
#[derive(Clone, Debug, Default)]
pub struct Origins(Vec<CorsOrigin>);

impl Origins {
    pub fn new(list: &[CorsOrigin]) -> Origins {
        Origins(list.to_vec())
    }

    fn any(&self) -> bool {
        self.0.contains(&CorsOrigin::Any)
    }

    /// Whether a request with this `Origin` header may be answered.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.any()
            || self
                .0
                .iter()
                .any(|o| matches!(o, CorsOrigin::Exact(e) if e.eq_ignore_ascii_case(origin)))
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match (self.any(), self.allows(origin)) {
            (true, _) => Some(HeaderValue::from_static("*")),
            (false, true) => Some(origin.clone()),
            (false, false) => None,
        }
    }

    /// Add the CORS headers for the request's `Origin` to a response.
    pub fn decorate(&self, origin: Option<&HeaderValue>, resp: &mut Response<ResBody>) {
        if self.0.is_empty() {
            return;
        }
        let h = resp.headers_mut();
        if !self.any() {
            h.append(VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(allow) = self.allow_origin(origin) {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            h.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("X-Request-Id"),
            );
        }
    }
}

impl std::fmt::Display for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self
            .0
            .iter()
            .map(|o| match o {
                CorsOrigin::Any => "*",
                CorsOrigin::Exact(e) => e,
            })
            .collect();
        f.write_str(&names.join(", "))
    }
}

/// Whether a request is a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight from an allowed origin (`decorate` adds the origin).
pub fn preflight() -> Response<ResBody> {
    let mut r = Response::new(ResBody::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    let set = [
        (ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"),
        (ACCESS_CONTROL_ALLOW_HEADERS, "Authorization, Content-Type"),
        (ACCESS_CONTROL_MAX_AGE, "600"),
        (
            VARY,
            "Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::{CorsOrigin, Origins};
    use hyper::header::HeaderValue;

    #[test]
    fn origins_are_scheme_host_port_or_star() {
        assert_eq!(
            CorsOrigin::parse("https://App.example:8443"),
            Ok(CorsOrigin::Exact("https://app.example:8443".into()))
        );
        assert_eq!(CorsOrigin::parse("*"), Ok(CorsOrigin::Any));
        for bad in ["app.example", "https://app.example/", "https://", "://x"] {
            assert!(CorsOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let o = Origins::new(&[CorsOrigin::parse("http://localhost:3000").unwrap()]);
        assert!(o.allows(&HeaderValue::from_static("http://localhost:3000")));
        assert!(!o.allows(&HeaderValue::from_static("http://localhost:3001")));
        assert!(!o.allows(&HeaderValue::from_static("null")));
        assert!(!Origins::default().allows(&HeaderValue::from_static("http://localhost:3000")));
        assert!(Origins::new(&[CorsOrigin::Any]).allows(&HeaderValue::from_static("null")));
    }
}
