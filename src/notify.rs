//! Notifications out (`notify:`): when a task ends in a state a receiver
//! listens for, a JSON event is POSTed to it, signed like GitHub's webhooks
//! (`X-Agentd-Signature-256: sha256=HMAC` of the body with the secret in
//! `secret_env`), with an id the receiver can deduplicate by
//! (`X-Agentd-Delivery`).
//!
//! Each notification runs as a task of its own on the supervisor's
//! runtime: a dead or slow receiver costs a pending timer, never an
//! agent's progress. A failed attempt (no answer within `timeout`, or a
//! status other than 2xx) is retried `retries` times, `backoff` doubled
//! each time (at most 5 minutes apart). Every attempt is reported through
//! `journal` (the supervisor appends it to the task's journal as a
//! `notify` step) with the receiver's URL stripped of credentials and
//! query, so no secret ends up in the ledger or a log. Redirects are not
//! followed.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::NotifySpec;
use crate::domain::{NewStep, StepKind};
use crate::http::signature;

const MAX_BACKOFF: Duration = Duration::from_secs(300);

fn client() -> Option<reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| tracing::error!("notifications are off: cannot set up the HTTP client: {e}"))
                .ok()
        })
        .clone()
}

/// The receiver's URL as it may be written down: scheme, host, port, path.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(invalid URL)".into(),
    }
}

/// Sends `event` to the receiver in the background; `journal` hears of
/// every attempt.
pub fn spawn(spec: NotifySpec, delivery: String, event: Value, journal: impl Fn(NewStep) + Send + 'static) {
    tokio::spawn(async move {
        let Some(client) = client() else { return };
        let body = event.to_string();
        let signature = spec.secret_env.as_ref().and_then(|var| match std::env::var(var) {
            Ok(s) if !s.is_empty() => Some(signature::sign(s.as_bytes(), body.as_bytes())),
            _ => {
                tracing::warn!("notify: {var} (secret_env) is not set; sending unsigned");
                None
            }
        });
        let shown = shown_url(&spec.url);
        let mut delay = spec.backoff;
        for attempt in 1..=spec.retries + 1 {
            let mut req = client
                .post(&spec.url)
                .timeout(spec.timeout)
                .header("content-type", "application/json")
                .header("user-agent", concat!("agentd/", env!("CARGO_PKG_VERSION")))
                .header("x-agentd-event", event["event"].as_str().unwrap_or("task"))
                .header("x-agentd-delivery", &delivery)
                .body(body.clone());
            if let Some(s) = &signature {
                req = req.header("x-agentd-signature-256", s);
            }
            let started = Instant::now();
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
                Ok(r) => Err((Some(r.status().as_u16()), format!("answered {}", r.status()))),
                Err(e) => Err((None, chain(&e))),
            };
            let last = attempt == spec.retries + 1;
            let (payload, done) = match &outcome {
                Ok(status) => (
                    json!({"url": shown, "attempt": attempt, "status": status, "delivered": true, "event": event["event"]}),
                    true,
                ),
                Err((status, why)) => (
                    json!({
                        "url": shown, "attempt": attempt, "status": status, "delivered": false,
                        "error": why, "event": event["event"],
                        "next": if last { Value::Null } else { json!(humantime::format_duration(delay).to_string()) },
                    }),
                    false,
                ),
            };
            journal(NewStep {
                kind: StepKind::Notify,
                payload,
                input_tokens: 0,
                output_tokens: 0,
                latency_ms: Some(started.elapsed().as_millis() as i64),
            });
            if done {
                return;
            }
            if let Err((_, why)) = outcome {
                if last {
                    tracing::warn!("notify {shown}: giving up after {attempt} attempts: {why}");
                    return;
                }
                tracing::debug!("notify {shown}: attempt {attempt} failed ({why}); retrying");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    });
}

/// An error with its causes ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
