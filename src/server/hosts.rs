//! `--allowed-hosts`: which `Host` headers are answered, so that a page whose domain was rebound
//! to a loopback address (DNS rebinding) cannot read the API through the user's browser. A server
//! bound to loopback answers only loopback names unless told otherwise.

use std::net::{IpAddr, SocketAddr};

/// One `--allowed-hosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEntry {
    /// `*`: every host.
    Any,
    /// A name or address; without a port it matches every port.
    Host(Authority),
}

/// A host (lower case; an IPv6 address in brackets) and an optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    name: String,
    port: Option<u16>,
}

impl HostEntry {
    /// Parse one entry (`*`, `example.com`, `example.com:8080`, `[::1]`).
    pub fn parse(s: &str) -> Result<HostEntry, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(HostEntry::Any);
        }
        Authority::parse(s).map(HostEntry::Host).ok_or_else(|| {
            format!("'{s}' is not a host name or address (optionally with :port), or '*'")
        })
    }
}

impl Authority {
    /// `host[:port]` as a `Host` header carries it; `None` when malformed.
    fn parse(s: &str) -> Option<Authority> {
        let s = s.to_ascii_lowercase();
        let (name, port) = if s.starts_with('[') {
            let end = s.find(']')?;
            let port = s[end + 1..].strip_prefix(':');
            if port.is_none() && end + 1 != s.len() {
                return None;
            }
            (s[..=end].to_string(), port)
        } else if s.matches(':').count() > 1 {
            (format!("[{s}]"), None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((name, port)) => (name.to_string(), Some(port)),
                None => (s.clone(), None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None => None,
        };
        let name = name.strip_suffix('.').unwrap_or(&name).to_string();
        let ok = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
        (!name.is_empty() && name.chars().all(ok)).then_some(Authority { name, port })
    }

    fn matches(&self, host: &Authority) -> bool {
        self.name == host.name && self.port.is_none_or(|p| host.port == Some(p))
    }
}

/// The hosts a server answers.
#[derive(Clone, Debug)]
pub enum AllowedHosts {
    Any,
    Listed(Vec<Authority>),
}

impl AllowedHosts {
    /// The flag's entries; without any, loopback names when `bound` is a loopback address and
    /// every host otherwise (a server on a public address is reached by names it cannot know).
    pub fn new(entries: &[HostEntry], bound: SocketAddr) -> AllowedHosts {
        if entries.contains(&HostEntry::Any) {
            return AllowedHosts::Any;
        }
        if !entries.is_empty() {
            let listed = entries.iter().filter_map(|e| match e {
                HostEntry::Host(a) => Some(a.clone()),
                HostEntry::Any => None,
            });
            return AllowedHosts::Listed(listed.collect());
        }
        if !bound.ip().is_loopback() {
            return AllowedHosts::Any;
        }
        let own = match bound.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let names = ["localhost", "127.0.0.1", "[::1]", own.as_str()];
        AllowedHosts::Listed(
            names
                .iter()
                .map(|n| Authority {
                    name: n.to_string(),
                    port: None,
                })
                .collect(),
        )
    }

    /// Whether a request with this `Host` header is answered.
    pub fn allows(&self, host: &[u8]) -> bool {
        let AllowedHosts::Listed(list) = self else {
            return true;
        };
        let parsed = std::str::from_utf8(host).ok().and_then(Authority::parse);
        parsed.is_some_and(|h| list.iter().any(|a| a.matches(&h)))
    }
}

impl std::fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AllowedHosts::Listed(list) = self else {
            return f.write_str("*");
        };
        for (i, a) in list.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            match a.port {
                Some(p) => write!(f, "{sep}{}:{p}", a.name)?,
                None => write!(f, "{sep}{}", a.name)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{AllowedHosts, HostEntry};

    fn hosts(entries: &[&str], bound: &str) -> AllowedHosts {
        let entries: Vec<HostEntry> = entries
            .iter()
            .map(|e| HostEntry::parse(e).unwrap())
            .collect();
        AllowedHosts::new(&entries, bound.parse().unwrap())
    }

    #[test]
    fn loopback_binds_answer_loopback_names_on_any_port() {
        let h = hosts(&[], "127.0.0.1:8080");
        for ok in [
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "LOCALHOST",
            "localhost.",
        ] {
            assert!(h.allows(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "",
        ] {
            assert!(!h.allows(bad.as_bytes()), "{bad}");
        }
        assert!(hosts(&[], "[::1]:80").allows(b"[::1]:80"));
    }

    #[test]
    fn public_binds_answer_every_host_unless_listed() {
        assert!(hosts(&[], "0.0.0.0:80").allows(b"anything.example"));
        let h = hosts(&["api.example", "other.example:9000"], "0.0.0.0:80");
        assert!(h.allows(b"api.example:1234"));
        assert!(h.allows(b"other.example:9000"));
        assert!(!h.allows(b"other.example:9001"));
        assert!(!h.allows(b"localhost"));
        assert!(hosts(&["*"], "127.0.0.1:80").allows(b"attacker.example"));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in ["", "a b", "host:port", "[::1", "http://x"] {
            assert!(HostEntry::parse(bad).is_err(), "{bad}");
        }
    }
}
