//! Egress rules: which host names (and ports) sandboxed code may reach
//! through the proxy, and what a name resolves to.
//!
//! A pattern is a host name glob (`*` matches any run of characters,
//! dots included; `*.example.org` does not match `example.org` itself)
//! with an optional `:port`. Matching is case-insensitive on the name and
//! exact on the port. Deny wins over allow, allow over ask; no match is a
//! denial. An `ask` match is put to an operator as an approval request
//! ([`Rules::ask_rule`]; the proxy's owner asks). IP literals only match a
//! rule that spells the same address (no globs), so `*` alone never opens
//! raw addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One `allow` or `deny` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    /// Lower-case host glob.
    pub host: String,
    pub port: Option<u16>,
}

impl Pattern {
    /// Parses `host[:port]`; the error is a sentence for the config file.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty host pattern".into());
        }
        // `[v6]:port` or bare v6: a colon-bearing pattern that parses as
        // an address is an address.
        if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(Pattern {
                host: ip.to_string(),
                port: None,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{s:?}: the port {p:?} is not a number from 1 to 65535"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), Some(port))
            }
            None => (s, None),
        };
        if host.is_empty() {
            return Err(format!("{s:?}: no host before the port"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Pattern {
                host: ip.to_string(),
                port,
            });
        }
        if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '_')))
        {
            return Err(format!(
                "{s:?}: {bad:?} cannot be part of a host name (letters, digits, '-', '.', '_' and the glob '*')"
            ));
        }
        if host.split('.').any(str::is_empty) {
            return Err(format!("{s:?}: empty label in the host name"));
        }
        Ok(Pattern {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if host.parse::<IpAddr>().is_ok() {
            return self.host == host;
        }
        glob(self.host.as_bytes(), host.as_bytes())
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) if self.host.contains(':') => write!(f, "[{}]:{p}", self.host),
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// `*` matches any run of characters (dots included).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.split_first().is_some_and(|(t, tr)| t == c && glob(rest, tr)),
    }
}

/// A sandbox's domain rules: `network: {allow, deny, resolve}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
    /// Names neither list decides that become approval requests.
    pub ask: Vec<Pattern>,
    /// How long an ask waits for an operator before it is denied.
    pub ask_timeout: Duration,
    /// Pinned names (like curl's `--resolve`): looked up here instead of
    /// DNS, and trusted as written (a pin to 127.0.0.1 is the policy
    /// naming loopback explicitly).
    pub resolve: BTreeMap<String, IpAddr>,
    /// Bytes (both ways, all connections) one run may move.
    pub max_bytes: Option<u64>,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Default for `network.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// Default for `network.ask_timeout`.
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(600);

/// What the rules say about `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Allowed { rule: String },
    Denied { reason: String },
}

impl Rules {
    /// Decides on a host name (or IP literal) and port. `host` must
    /// already be lower-case.
    pub fn decide(&self, host: &str, port: u16) -> Decision {
        if let Some(d) = self.deny.iter().find(|p| p.matches(host, port)) {
            return Decision::Denied {
                reason: format!("denied by rule deny {d}"),
            };
        }
        match self.allow.iter().find(|p| p.matches(host, port)) {
            Some(a) => Decision::Allowed {
                rule: format!("allow {a}"),
            },
            None if host.parse::<IpAddr>().is_ok() => Decision::Denied {
                reason: "an IP address; only a rule naming the address allows one".into(),
            },
            None => Decision::Denied {
                reason: "no allow rule names it".into(),
            },
        }
    }

    /// The `ask` rule that makes `host:port` an approval request: one
    /// matches and neither a deny nor an allow rule decides the name.
    pub fn ask_rule(&self, host: &str, port: u16) -> Option<String> {
        if self.deny.iter().chain(&self.allow).any(|p| p.matches(host, port)) {
            return None;
        }
        self.ask
            .iter()
            .find(|p| p.matches(host, port))
            .map(|p| format!("ask {p}"))
    }

    /// Whether an address reached through DNS (not a pin, not a literal a
    /// rule names) may be connected to: loopback, link-local, private,
    /// unspecified and multicast ranges are refused, so a public name
    /// cannot be pointed at the host's own services.
    pub fn public(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                !(v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_broadcast()
                    || v4.is_multicast()
                    // 100.64.0.0/10, carrier-grade NAT.
                    || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
            }
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Rules::public(IpAddr::V4(v4));
                }
                let seg0 = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (seg0 & 0xfe00) == 0xfc00
                    || (seg0 & 0xffc0) == 0xfe80)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        Rules {
            allow: allow.iter().map(|s| Pattern::parse(s).unwrap()).collect(),
            deny: deny.iter().map(|s| Pattern::parse(s).unwrap()).collect(),
            ..Rules::default()
        }
    }

    fn allowed(r: &Rules, host: &str, port: u16) -> bool {
        matches!(r.decide(host, port), Decision::Allowed { .. })
    }

    #[test]
    fn globs_ports_and_deny_wins() {
        let r = rules(
            &["pypi.org", "*.pythonhosted.org", "api.github.com:443", "*.example.com"],
            &["*.internal.example.com"],
        );
        assert!(allowed(&r, "pypi.org", 443));
        assert!(allowed(&r, "pypi.org", 80));
        assert!(!allowed(&r, "evil-pypi.org", 443), "no implicit prefix");
        assert!(allowed(&r, "files.pythonhosted.org", 443));
        assert!(!allowed(&r, "pythonhosted.org", 443), "*. needs a label");
        assert!(allowed(&r, "api.github.com", 443));
        assert!(!allowed(&r, "api.github.com", 22), "port named");
        assert!(allowed(&r, "www.example.com", 80));
        assert!(!allowed(&r, "db.internal.example.com", 80), "deny wins");
        assert!(!allowed(&r, "other.org", 80), "control: no rule");
    }

    #[test]
    fn ask_covers_only_what_allow_and_deny_leave_open() {
        let mut r = rules(&["pypi.org"], &["*.internal"]);
        r.ask = vec![Pattern::parse("*").unwrap()];
        assert_eq!(r.ask_rule("example.org", 443).as_deref(), Some("ask *"));
        assert_eq!(r.ask_rule("pypi.org", 443), None, "allow decides");
        assert_eq!(r.ask_rule("db.internal", 443), None, "deny decides");
        assert_eq!(r.ask_rule("10.0.0.1", 443), None, "a glob never covers an address");
        assert_eq!(
            rules(&["pypi.org"], &[]).ask_rule("example.org", 443),
            None,
            "control: no ask rule"
        );
    }

    #[test]
    fn ip_literals_need_a_rule_spelling_them() {
        let r = rules(&["*", "10.0.0.5"], &[]);
        assert!(allowed(&r, "anything.org", 80), "control: the glob allows names");
        assert!(!allowed(&r, "127.0.0.1", 80));
        assert!(allowed(&r, "10.0.0.5", 80));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in ["", "a b.org", "x.org:0", "x.org:http", ":80", "a..b", "http://x.org"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Pattern::parse("API.github.com:443").unwrap().to_string(),
            "api.github.com:443"
        );
        assert_eq!(Pattern::parse("::1").unwrap().host, "::1");
    }

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(!Rules::public(ip.parse().unwrap()), "{ip}");
        }
        assert!(Rules::public("151.101.0.223".parse().unwrap()));
    }
}
