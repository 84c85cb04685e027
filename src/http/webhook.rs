//! `POST /api/v1/agents/{name}/webhook`: signed deliveries in (GitHub's
//! convention). Everything about a delivery is hostile until its signature
//! checks out, so the order is fixed: the agent must take webhooks (else
//! 404), the declared size must fit `webhook.max_body` before a byte is
//! read and the read stops there (413), the signature in
//! `X-Hub-Signature-256` must be the HMAC-SHA256 of the body with the
//! secret in `webhook.secret_env` (401, and nothing is recorded: not the
//! body, not the delivery key). Only then does the supervisor record it as
//! a task with trigger `webhook`, once per delivery key: a redelivery
//! answers with the task the first delivery became.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::oneshot;

use super::api::error;
use super::{App, Delivery, signature};
use crate::domain::Trigger;

/// Longest delivery key kept, and longest copied header value.
const MAX_KEY: usize = 200;
const MAX_HEADER: usize = 1024;

pub(super) async fn deliver(
    State(app): State<Arc<App>>,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let spec = app.links.webhooks.borrow().get(&agent).cloned();
    let Some(spec) = spec else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no agent named {agent:?} takes webhooks"),
        );
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > spec.max_body) {
        return too_large(spec.max_body);
    }
    let Ok(body) = axum::body::to_bytes(body, spec.max_body as usize).await else {
        return too_large(spec.max_body);
    };
    let Some(secret) = std::env::var_os(&spec.secret_env).filter(|s| !s.is_empty()) else {
        tracing::error!(
            agent,
            "webhook refused: {} (webhook.secret_env) is not set in agentd's environment",
            spec.secret_env
        );
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent's webhook secret is not configured",
        );
    };
    let given = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    use std::os::unix::ffi::OsStrExt;
    if !signature::verify(secret.as_bytes(), &body, given) {
        tracing::warn!(agent, "webhook refused: bad or missing X-Hub-Signature-256");
        return error(StatusCode::UNAUTHORIZED, "bad or missing X-Hub-Signature-256");
    }
    let text = |v: &axum::http::HeaderValue, max: usize| -> String {
        String::from_utf8_lossy(v.as_bytes()).chars().take(max).collect()
    };
    let key = spec
        .dedupe_header
        .as_deref()
        .and_then(|h| headers.get(h))
        .map(|v| text(v, MAX_KEY))
        .filter(|k| !k.is_empty());
    let picked: BTreeMap<String, String> = spec
        .headers
        .iter()
        .filter_map(|h| headers.get(h).map(|v| (h.clone(), text(v, MAX_HEADER))))
        .collect();
    let trigger = Trigger::Webhook {
        delivery: key.clone(),
        headers: picked,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (tx, rx) = oneshot::channel();
    let d = Delivery {
        agent,
        key,
        trigger,
        reply: tx,
    };
    if app.links.deliveries.send(d).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "agentd is shutting down");
    }
    match rx.await {
        Ok(Ok((task, duplicate))) => (
            StatusCode::ACCEPTED,
            Json(json!({"task": task, "duplicate": duplicate})),
        )
            .into_response(),
        Ok(Err(e)) if e.starts_with("no agent named") => error(StatusCode::NOT_FOUND, e),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "agentd is shutting down"),
    }
}

fn too_large(max: u64) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than this agent's webhook.max_body ({max} bytes)"),
    )
}
