//! The operator surface's sections: `http` (where the HTTP API listens),
//! `notify` (signed notifications out, top level) and an agent's `webhook`
//! (signed deliveries in).
//!
//! Secrets are referenced by the *name* of an environment variable and
//! read when used, never stored in the config. This module must never act
//! on what it decodes: [`crate::http`] and [`crate::notify`] do.

use std::path::Path;
use std::time::Duration;

use marked_yaml::Node;

use super::load::resolve_path;
use super::types::{Listen, NotifySpec, WebhookSpec};
use crate::domain::TaskState;
use crate::yaml::{Cx, Map, is_null};

const HTTP_KEYS: &[&str] = &["listen"];
const NOTIFY_KEYS: &[&str] = &["url", "on", "secret_env", "retries", "backoff", "timeout"];
const WEBHOOK_KEYS: &[&str] = &["secret_env", "dedupe_header", "headers", "max_body"];

/// Where the API listens unless the config says otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// `http: false` turns the API off; `http: {listen: ADDR}` with ADDR
/// `HOST:PORT` or `unix:PATH`. Absent: on, at [`DEFAULT_LISTEN`].
pub(super) fn decode_http(cx: &mut Cx, node: Option<&Node>, dir: &Path) -> Option<Option<Listen>> {
    let Some(node) = node.filter(|n| !is_null(n)) else {
        return Some(Some(default_listen()));
    };
    if let Node::Scalar(_) = node {
        return match cx.bool(node, "http")? {
            true => Some(Some(default_listen())),
            false => Some(None),
        };
    }
    let map = Map::open(cx, node, "http", HTTP_KEYS)?;
    let Some(n) = map.get("listen") else {
        return Some(Some(default_listen()));
    };
    let s = cx.non_empty_string(n, &map.field("listen"))?;
    let listen = match s.strip_prefix("unix:") {
        Some(path) => Ok(Listen::Unix(resolve_path(path, dir, cx.env))),
        None => s.parse().map(Listen::Tcp).map_err(|_| {
            format!("{s:?} is not an address to listen on: write HOST:PORT (e.g. {DEFAULT_LISTEN}) or unix:PATH")
        }),
    };
    cx.check(n, &map.field("listen"), listen).map(Some)
}

fn default_listen() -> Listen {
    Listen::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 7700)))
}

/// `notify: [{url, on: [succeeded, failed, cancelled], secret_env, retries, backoff, timeout}]`.
pub(super) fn decode_notify(cx: &mut Cx, node: &Node) -> Vec<NotifySpec> {
    let mut out = Vec::new();
    for (item, p) in cx.list(node, "notify", false) {
        if let Some(n) = decode_one_notify(cx, item, &p) {
            out.push(n);
        }
    }
    out
}

fn decode_one_notify(cx: &mut Cx, node: &Node, path: &str) -> Option<NotifySpec> {
    let map = Map::open(cx, node, path, NOTIFY_KEYS)?;
    let before = cx.errors.len();
    let url = map.require(cx, "url").and_then(|n| {
        let s = cx.non_empty_string(n, &map.field("url"))?;
        let ok = url::Url::parse(&s)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(|_| s.clone());
        cx.check(n, &map.field("url"), ok.ok_or(format!("{s:?} is not an http(s) URL")))
    });
    let on = match map.get("on") {
        None => vec![TaskState::Succeeded, TaskState::Failed, TaskState::Cancelled],
        Some(n) => {
            let mut on = Vec::new();
            for (item, p) in cx.list(n, &map.field("on"), true) {
                let Some(s) = cx.string(item, &p) else { continue };
                match TaskState::parse(&s).filter(|s| s.is_final() || *s == TaskState::Waiting) {
                    Some(state) => on.push(state),
                    None => cx.error_at_node(
                        item,
                        &p,
                        format!("unknown event {s:?}; expected succeeded, failed, cancelled or waiting"),
                    ),
                }
            }
            on
        }
    };
    let secret_env = map
        .get("secret_env")
        .and_then(|n| cx.non_empty_string(n, &map.field("secret_env")));
    let retries = map.number::<u32>(cx, "retries", "a whole number").unwrap_or(5);
    let backoff = map.duration(cx, "backoff").unwrap_or(Duration::from_secs(1));
    let timeout = map.duration(cx, "timeout").unwrap_or(Duration::from_secs(10));
    if timeout.is_zero() {
        cx.error_at(&map.start(), &map.field("timeout"), "timeout must be more than 0");
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(NotifySpec {
        url: url?,
        on,
        secret_env,
        retries,
        backoff,
        timeout,
    })
}

/// An agent's `webhook: {secret_env, dedupe_header, headers, max_body}`.
pub(super) fn decode_webhook(cx: &mut Cx, node: &Node, path: &str) -> Option<WebhookSpec> {
    let map = Map::open(cx, node, path, WEBHOOK_KEYS)?;
    let before = cx.errors.len();
    let secret_env = map
        .require(cx, "secret_env")
        .and_then(|n| cx.non_empty_string(n, &map.field("secret_env")));
    let header_name = |cx: &mut Cx, n: &Node, p: &str| {
        let s = cx.non_empty_string(n, p)?;
        let ok = http::HeaderName::from_bytes(s.as_bytes())
            .map(|h| h.as_str().to_owned())
            .map_err(|_| format!("{s:?} is not an HTTP header name"));
        cx.check(n, p, ok)
    };
    let dedupe_header = map
        .get("dedupe_header")
        .and_then(|n| header_name(cx, n, &map.field("dedupe_header")));
    let mut headers = Vec::new();
    if let Some(n) = map.get("headers") {
        for (item, p) in cx.list(n, &map.field("headers"), true) {
            if let Some(h) = header_name(cx, item, &p) {
                headers.push(h);
            }
        }
    }
    let max_body = map.size(cx, "max_body").unwrap_or(1024 * 1024);
    if max_body == 0 || max_body > 64 * 1024 * 1024 {
        cx.error_at(
            &map.start(),
            &map.field("max_body"),
            "max_body must be more than 0 and at most 64MiB",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(WebhookSpec {
        secret_env: secret_env?,
        dedupe_header,
        headers,
        max_body,
    })
}
