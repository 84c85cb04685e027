//! `tool://` subscriptions: fire when a tool's result changes.
//!
//! Two ways to learn of a change. When the server serves the `tool://` URI
//! itself (the Python `mcp-subscribe` proxy does: it accepts
//! `resources/subscribe` for it and polls the tool at its own
//! `--poll-interval`), agentd subscribes and calls the tool once per
//! `resources/updated` ([`poll_once`]); otherwise agentd polls the tool
//! every `interval` itself ([`spawn_poller`]). Never both.
//!
//! A poller belongs to one connection and is aborted when that connection
//! ends; the last result it saw outlives the connection, so a reconnect does
//! not fire unless the result changed during the outage.
//!
//! The first result ever seen is the baseline and does not fire (except
//! after an update notification: the server said it changed). An error
//! result (`isError`) or a failed call does not fire either: a flaky tool
//! must not wake the agent. Its error text is logged once per change of
//! error, not at every interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ResourceEvent;
use super::subscribe::{MAX_EVENT_CONTENTS, truncate};
use super::tools::render_result;

/// Per `tool://` subscription URI: the last rendered result, and the last
/// error logged (so an unchanged error is not logged again).
#[derive(Default)]
pub(crate) struct Seen {
    results: HashMap<String, String>,
    errors: HashMap<String, String>,
}

pub(crate) type LastResults = Arc<Mutex<Seen>>;

#[derive(Clone)]
pub(crate) struct Poll {
    pub server: String,
    pub subscription: String,
    pub tool: String,
    pub arguments: serde_json::Map<String, serde_json::Value>,
    pub interval: std::time::Duration,
}

/// Polls every `interval` until aborted (or the agent is gone).
pub(crate) fn spawn_poller(
    poll: Poll,
    peer: Peer<RoleClient>,
    last: LastResults,
    events: mpsc::Sender<ResourceEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // A zero interval would spin; one millisecond is already absurdly eager.
        let period = poll.interval.max(std::time::Duration::from_millis(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !poll_once(&poll, &peer, &last, &events, false).await {
                return;
            }
        }
    })
}

/// Calls the tool once and fires if its result changed (with `notified`,
/// also when there is no baseline yet: the server announced a change).
/// Returns false once the agent no longer takes events.
pub(crate) async fn poll_once(
    poll: &Poll,
    peer: &Peer<RoleClient>,
    last: &LastResults,
    events: &mpsc::Sender<ResourceEvent>,
    notified: bool,
) -> bool {
    let mut params = CallToolRequestParams::new(poll.tool.clone());
    params.arguments = Some(poll.arguments.clone());
    let error = match peer.call_tool(params).await {
        Ok(result) if result.is_error == Some(true) => {
            Some(render_result(&serde_json::to_value(&result).unwrap_or_default()))
        }
        Ok(result) => {
            let text = render_result(&serde_json::to_value(&result).unwrap_or_default());
            let changed = {
                let Ok(mut seen) = last.lock() else { return false };
                if seen.errors.remove(&poll.subscription).is_some() {
                    tracing::info!(server = %poll.server, tool = %poll.tool, "tool:// subscription {} works again", poll.subscription);
                }
                match seen.results.insert(poll.subscription.clone(), text.clone()) {
                    None => notified,
                    Some(previous) => previous != text,
                }
            };
            if changed {
                let event = ResourceEvent {
                    uri: poll.subscription.clone(),
                    server: poll.server.clone(),
                    subscription: poll.subscription.clone(),
                    contents: truncate(text, MAX_EVENT_CONTENTS),
                };
                return events.send(event).await.is_ok();
            }
            None
        }
        Err(e) => Some(format!("the call failed: {e}")),
    };
    if let Some(error) = error {
        let Ok(mut seen) = last.lock() else { return false };
        if seen.errors.get(&poll.subscription) != Some(&error) {
            tracing::warn!(server = %poll.server, tool = %poll.tool, "tool:// subscription {}: {}", poll.subscription, error.trim());
            seen.errors.insert(poll.subscription.clone(), error);
        }
    }
    true
}

/// Whether two `tool://` URIs name the same call. Servers echo the URI back
/// normalised (the Python SDK turns `tool://fetch?url=…` into
/// `tool://fetch/?url=…`), so compare tool and arguments, not text.
pub(crate) fn same_tool_uri(a: &str, b: &str) -> bool {
    use crate::config::{SubscriptionTarget, parse_subscription_uri};
    match (parse_subscription_uri(a), parse_subscription_uri(b)) {
        (
            Ok(SubscriptionTarget::Tool {
                tool: ta,
                arguments: aa,
            }),
            Ok(SubscriptionTarget::Tool {
                tool: tb,
                arguments: ab,
            }),
        ) => ta == tb && aa == ab,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::same_tool_uri;

    #[test]
    fn tool_uris_match_as_the_python_sdk_normalises_them() {
        assert!(same_tool_uri(
            "tool://fetch?url=https://example.com/",
            "tool://fetch/?url=https://example.com/"
        ));
        assert!(same_tool_uri(
            "tool://fetch/?url=https%3A%2F%2Fexample.com%2F",
            "tool://fetch/?url=https://example.com/"
        ));
        assert!(!same_tool_uri("tool://fetch/?url=a", "tool://fetch/?url=b"));
        assert!(!same_tool_uri("tool://fetch/?url=a", "file:///a"));
    }
}
