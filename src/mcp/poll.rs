//! `tool://` subscriptions: poll a tool and fire when its result changes.
//!
//! This is what the Python `mcp-subscribe` proxy does, without a proxy
//! process: any tool becomes a trigger. A poller belongs to one connection
//! and is aborted when that connection ends; the last result it saw outlives
//! the connection, so a reconnect does not fire unless the result changed
//! during the outage.
//!
//! The first result ever seen is the baseline and does not fire. An error
//! result (`isError`) or a failed call does not fire either: a flaky tool
//! must not wake the agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ResourceEvent;
use super::subscribe::{MAX_EVENT_CONTENTS, truncate};
use super::tools::render_result;

/// The last rendered result per `tool://` subscription URI, per server.
pub(crate) type LastResults = Arc<Mutex<HashMap<String, String>>>;

pub(crate) struct Poll {
    pub server: String,
    pub subscription: String,
    pub tool: String,
    pub arguments: serde_json::Map<String, serde_json::Value>,
    pub interval: std::time::Duration,
}

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
            let mut params = CallToolRequestParams::new(poll.tool.clone());
            params.arguments = Some(poll.arguments.clone());
            let result = match peer.call_tool(params).await {
                Ok(result) => result,
                Err(e) => {
                    tracing::warn!(server = %poll.server, tool = %poll.tool, "tool:// poll failed: {e}");
                    continue;
                }
            };
            if result.is_error == Some(true) {
                tracing::warn!(server = %poll.server, tool = %poll.tool, "tool:// poll returned an error result");
                continue;
            }
            let text = render_result(&serde_json::to_value(&result).unwrap_or_default());
            let changed = {
                let Ok(mut last) = last.lock() else { return };
                match last.insert(poll.subscription.clone(), text.clone()) {
                    None => false, // the baseline
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
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
    })
}
