//! Who may use the HTTP API: whoever holds the token in
//! `STATE_DIR/http.token` (0600, agentd's own user's; sandboxed code, which
//! can reach loopback TCP when its network is on, cannot read it).
//!
//! - Programs send `Authorization: Bearer TOKEN`.
//! - Browsers log in once through a login link (`agentd dashboard` prints
//!   it): `/login?code=EXPIRY.MAC`, a code that expires within minutes,
//!   derived from the token so the token itself never sits in a URL, a
//!   page, a browser's history or a log. The answer sets an `HttpOnly`,
//!   `SameSite=Strict` cookie holding a value derived from the token (so
//!   it stays valid across restarts of agentd and dies with the token).
//! - A request that changes state and comes with the cookie must also
//!   show it comes from the dashboard's own origin (`Sec-Fetch-Site:
//!   same-origin`, or an `Origin` equal to the host it was sent to):
//!   SameSite=Strict already keeps the cookie off cross-site requests in
//!   today's browsers; this check does not rely on that. The bearer header
//!   needs no such check: a browser never adds it by itself.
//!
//! Every comparison of a secret runs in constant time. This module never
//! logs a token, a code or a cookie.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use http::{HeaderMap, Method};

use super::signature;

/// The session cookie's name.
pub const COOKIE: &str = "agentd_session";
/// How long a login code is valid at most (the CLI makes them for less).
pub const LOGIN_MAX_AGE_S: i64 = 600;

/// The API token, as read from (or created in) the state dir.
pub struct Token(String);

impl Token {
    /// Reads `path`, or creates it with a fresh random token (0600; agentd
    /// runs with umask 077). A file that is not the owner's alone is
    /// refused: anyone who can read it controls agentd.
    pub fn load_or_create(path: &Path) -> std::io::Result<Token> {
        match Token::load(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = random_hex(32)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
                Ok(Token(token))
            }
            other => other,
        }
    }

    /// Reads an existing token file (for `agentd dashboard`).
    pub fn load(path: &Path) -> std::io::Result<Token> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(path) {
            Ok(m) => {
                if !m.file_type().is_file() || m.mode() & 0o077 != 0 {
                    return Err(std::io::Error::other(format!(
                        "{} must be a regular file only its owner can read (chmod 600)",
                        path.display()
                    )));
                }
                let text = std::fs::read_to_string(path)?;
                let t = text.trim();
                if t.len() < 32 {
                    return Err(std::io::Error::other(format!(
                        "{} holds no usable token (at least 32 characters); delete it to make a new one",
                        path.display()
                    )));
                }
                Ok(Token(t.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    pub fn from_string(s: String) -> Token {
        Token(s)
    }

    /// The cookie value a logged-in browser holds.
    pub fn session(&self) -> String {
        signature::hex(&signature::hmac(self.0.as_bytes(), b"agentd session v1"))
    }

    /// A login code valid until `expiry` (Unix seconds).
    pub fn login_code(&self, expiry: i64) -> String {
        let mac = signature::hmac(self.0.as_bytes(), format!("agentd login v1 {expiry}").as_bytes());
        format!("{expiry}.{}", signature::hex(&mac))
    }

    /// Whether `code` is a login code made with this token that has not
    /// expired (and does not claim to live longer than a code may).
    pub fn check_login(&self, code: &str, now: i64) -> bool {
        let Some((exp, _)) = code.split_once('.') else {
            return false;
        };
        let Ok(expiry) = exp.parse::<i64>() else {
            return false;
        };
        if expiry < now || expiry > now + LOGIN_MAX_AGE_S {
            return false;
        }
        signature::equal(self.login_code(expiry).as_bytes(), code.as_bytes())
    }

    fn is(&self, presented: &str) -> bool {
        signature::equal(self.0.as_bytes(), presented.as_bytes())
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or wrong ones: 401.
    Unauthenticated,
    /// A logged-in browser's state-changing request from another origin: 403.
    CrossSite,
}

/// How a request proved who it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Caller {
    Bearer,
    Cookie,
}

/// Decides whether a request may go on.
pub fn check(token: &Token, method: &Method, headers: &HeaderMap) -> Result<Caller, Refusal> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let presented = v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")).unwrap_or("");
        // A wrong bearer token is refused even with a good cookie: the
        // caller meant the header.
        return if token.is(presented.trim()) {
            Ok(Caller::Bearer)
        } else {
            Err(Refusal::Unauthenticated)
        };
    }
    let session = token.session();
    let has_session = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && signature::equal(v.as_bytes(), session.as_bytes()));
    if !has_session {
        return Err(Refusal::Unauthenticated);
    }
    if matches!(*method, Method::GET | Method::HEAD) || same_origin(headers) {
        Ok(Caller::Cookie)
    } else {
        Err(Refusal::CrossSite)
    }
}

/// Whether a browser says the request comes from the page's own origin.
/// `Sec-Fetch-Site` when the browser sends it; else `Origin` against
/// `Host`; neither: not proven, so no.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin";
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        _ => false,
    }
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(signature::hex(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::from_string("0123456789abcdef0123456789abcdef".into())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn login_codes_expire_and_cannot_be_stretched_or_forged() {
        let t = token();
        let now = 1_000_000;
        let code = t.login_code(now + 60);
        assert!(t.check_login(&code, now));
        assert!(!t.check_login(&code, now + 61), "expired");
        let far = t.login_code(now + LOGIN_MAX_AGE_S + 1);
        assert!(!t.check_login(&far, now), "a code may not outlive the maximum");
        let forged = format!("{}.{}", now + 60, "00".repeat(32));
        assert!(!t.check_login(&forged, now));
        let other = Token::from_string("ffffffffffffffffffffffffffffffff".into());
        assert!(!other.check_login(&code, now));
    }

    #[test]
    fn a_cookie_mutation_needs_the_same_origin_and_the_bearer_does_not() {
        let t = token();
        let cookie = format!("{COOKIE}={}", t.session());
        let ok_get = headers(&[("cookie", &cookie)]);
        assert_eq!(check(&t, &Method::GET, &ok_get), Ok(Caller::Cookie));
        // Control: the same cookie from the page's own origin may post.
        let same = headers(&[
            ("cookie", &cookie),
            ("origin", "http://127.0.0.1:7700"),
            ("host", "127.0.0.1:7700"),
        ]);
        assert_eq!(check(&t, &Method::POST, &same), Ok(Caller::Cookie));
        let cross = headers(&[
            ("cookie", &cookie),
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:7700"),
        ]);
        assert_eq!(check(&t, &Method::POST, &cross), Err(Refusal::CrossSite));
        let fetch_cross = headers(&[("cookie", &cookie), ("sec-fetch-site", "cross-site")]);
        assert_eq!(check(&t, &Method::POST, &fetch_cross), Err(Refusal::CrossSite));
        let unproven = headers(&[("cookie", &cookie)]);
        assert_eq!(check(&t, &Method::POST, &unproven), Err(Refusal::CrossSite));
        let bearer = headers(&[("authorization", "Bearer 0123456789abcdef0123456789abcdef")]);
        assert_eq!(check(&t, &Method::POST, &bearer), Ok(Caller::Bearer));
        let wrong = headers(&[
            ("authorization", "Bearer 0123456789abcdef0123456789abcdee"),
            ("cookie", &cookie),
        ]);
        assert_eq!(check(&t, &Method::GET, &wrong), Err(Refusal::Unauthenticated));
        let bad_cookie = headers(&[("cookie", &format!("{COOKIE}=0123456789abcdef0123456789abcdef"))]);
        assert_eq!(check(&t, &Method::GET, &bad_cookie), Err(Refusal::Unauthenticated));
    }
}
