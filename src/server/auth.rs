//! The API key: held only as its SHA-256 digest (so it cannot reach a log or a `Debug` print),
//! and a presented `Authorization: Bearer` token compared with it in constant time.

use std::path::Path;

use hyper::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key callers must present. Digests have one length, so comparing them leaks neither the
/// key's length nor where a guess first differs.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Why a request's credentials were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header, or not a `Bearer` one.
    Missing,
    /// A bearer token that is not the key.
    Wrong,
}

impl ApiKey {
    /// `--api-key`: a key a client can send, so one that `Authorization: Bearer <key>` carries
    /// unchanged: not empty, no whitespace (a header's value is trimmed, and a space or a line
    /// break cannot be part of a bearer token) and no control characters.
    pub fn parse(s: &str) -> Result<ApiKey, String> {
        usable(s)?;
        Ok(ApiKey::new(s.as_bytes()))
    }

    /// `--api-key-file`: the file's one line, without its line ending.
    pub fn from_file(path: &Path) -> Result<ApiKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = text.strip_suffix('\n').unwrap_or(&text);
        let key = key.strip_suffix('\r').unwrap_or(key);
        if key.is_empty() {
            return Err(format!("{} holds no key (it is empty)", path.display()));
        }
        if key.contains('\n') {
            return Err(format!(
                "{} holds more than one line; it must hold the key alone",
                path.display()
            ));
        }
        usable(key).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ApiKey::new(key.as_bytes()))
    }

    fn new(key: &[u8]) -> ApiKey {
        ApiKey {
            digest: Sha256::digest(key).into(),
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <this key>`.
    pub fn verify(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .ok_or(AuthFailure::Missing)?;
        let presented: [u8; 32] = Sha256::digest(token).into();
        match bool::from(presented.ct_eq(&self.digest)) {
            true => Ok(()),
            false => Err(AuthFailure::Wrong),
        }
    }
}

/// Why `key` could never be presented, if so.
fn usable(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the API key is empty".into());
    }
    if key.trim().is_empty() {
        return Err("the API key is only whitespace".into());
    }
    if let Some(c) = key.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the API key holds {c:?}: a key is sent as `Authorization: Bearer <key>` and cannot \
             contain whitespace or control characters"
        ));
    }
    Ok(())
}

/// The token of a `Bearer <token>` credential (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::{ApiKey, AuthFailure};
    use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};

    fn with_auth(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn only_the_bearer_key_passes() {
        let key = ApiKey::parse("sk-test").unwrap();
        assert_eq!(key.verify(&with_auth("Bearer sk-test")), Ok(()));
        assert_eq!(key.verify(&with_auth("bearer  sk-test ")), Ok(()));
        assert_eq!(
            key.verify(&with_auth("Bearer sk-tes")),
            Err(AuthFailure::Wrong)
        );
        assert_eq!(
            key.verify(&with_auth("Basic sk-test")),
            Err(AuthFailure::Missing)
        );
        assert_eq!(key.verify(&with_auth("Bearer")), Err(AuthFailure::Missing));
        assert_eq!(key.verify(&HeaderMap::new()), Err(AuthFailure::Missing));
    }

    #[test]
    fn the_key_never_appears_in_debug_output() {
        let key = ApiKey::parse("sk-secret-value").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        assert!(ApiKey::parse("").is_err());
    }
}
