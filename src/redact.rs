//! URLs as logs and error messages show them: credentials a URL may carry — the userinfo
//! (`user:password@`), every query value (`?token=…`) and the fragment — replaced by `***`, so
//! a secret in `--callback-url` never reaches a log line.

use std::fmt;

/// `url` with its secrets masked; shown as `Display`.
pub struct Url<'a>(pub &'a str);

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url(self.0))
    }
}

/// `url` with its userinfo, query values and fragment masked (text that is no URL is masked
/// the same way, as far as it has those parts).
pub fn url(url: &str) -> String {
    let (rest, fragment) = match url.split_once('#') {
        Some((r, _)) => (r, "#***"),
        None => (url, ""),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (scheme, rest) = match rest.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), rest),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}{authority}{path}");
    if let Some(q) = query {
        out.push('?');
        let pairs = q.split('&').map(|kv| match kv.split_once('=') {
            Some((k, _)) => format!("{k}=***"),
            None if kv.is_empty() => String::new(),
            None => "***".into(),
        });
        out.push_str(&pairs.collect::<Vec<_>>().join("&"));
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn credentials_are_masked_and_the_rest_kept() {
        assert_eq!(
            url("http://user:pa%40ss@hooks.example:8080/ready?token=s3cret&x=1#frag"),
            "http://***@hooks.example:8080/ready?token=***&x=***#***"
        );
        assert_eq!(
            url("http://hooks.example/ready"),
            "http://hooks.example/ready"
        );
        assert_eq!(url("http://h/p?apikey"), "http://h/p?***");
        assert_eq!(url("http://a:b@h"), "http://***@h");
        assert_eq!(url("a:b@h/x?k=v"), "***@h/x?k=***");
        let shown = super::Url("http://u:secret@h/?t=secret").to_string();
        assert!(!shown.contains("secret"), "{shown}");
    }
}
