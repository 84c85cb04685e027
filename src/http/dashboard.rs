//! The dashboard: one hand-written page (HTML, CSS and JavaScript, no
//! framework, no build step) embedded in the binary and served at `/`. It
//! uses only the JSON API and the event stream, with the session cookie
//! `/login` set: nothing it shows is rendered here, and the page never
//! holds the token.
//!
//! Pages are sent with a strict Content-Security-Policy (scripts and styles
//! from this origin only, no inline script, no framing), so text an agent
//! or a webhook wrote cannot run as script even if it slipped past the
//! page's escaping.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(status: StatusCode, content_type: &'static str, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub(super) async fn page() -> Response {
    asset(StatusCode::OK, "text/html; charset=utf-8", PAGE)
}

pub(super) async fn script() -> Response {
    asset(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    asset(StatusCode::OK, "text/css; charset=utf-8", STYLE)
}

const LOGGED_OUT: &str = "<!doctype html><meta charset=utf-8><title>agentd</title>\
<meta name=viewport content=\"width=device-width\"><h1>agentd</h1>\
<p>Not logged in. Run <code>agentd dashboard</code> on the host and open the link it prints.</p>";

const LOGIN_REFUSED: &str = "<!doctype html><meta charset=utf-8><title>agentd</title>\
<meta name=viewport content=\"width=device-width\"><h1>agentd</h1>\
<p>This login link is invalid or has expired. Run <code>agentd dashboard</code> again for a new one.</p>";

/// `/` without a session: how to get one.
pub(super) fn logged_out() -> Response {
    asset(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", LOGGED_OUT)
}

pub(super) fn login_refused() -> Response {
    asset(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", LOGIN_REFUSED)
}
