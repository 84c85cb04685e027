//! The control socket: a Unix socket (mode 0600) in the state dir speaking
//! JSON lines, one request and one response per line. The CLI subcommands
//! (`status`, `start`, `reload`, `send`, …) are its clients.
//!
//! The server side only parses and forwards: every request becomes a
//! message to the supervisor's event loop, which alone changes state. A bad
//! request gets an error object; the connection and the daemon carry on.

pub mod client;
mod server;

use serde::{Deserialize, Serialize};

pub use server::serve;

/// Bumped when a request or response changes shape.
pub const INTERFACE_VERSION: u32 = 1;

pub const SOCKET_NAME: &str = "agentd.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "PascalCase", deny_unknown_fields)]
pub enum Request {
    DescribeInterface,
    Health,
    Status,
    Start {
        agent: String,
    },
    Stop {
        agent: String,
    },
    Restart {
        agent: String,
    },
    Reload,
    /// Archive the agent's workdir as a workspace snapshot.
    SnapshotCreate {
        agent: String,
        label: Option<String>,
    },
    /// Restore a snapshot (id or label); the agent restarts to pick it up.
    SnapshotRestore {
        agent: String,
        snapshot: String,
    },
}

impl Request {
    /// Method names and their parameters, for `DescribeInterface`.
    pub fn describe() -> serde_json::Value {
        serde_json::json!({
            "version": INTERFACE_VERSION,
            "transport": "JSON lines over a Unix socket: one request object per line, one response object per line",
            "response": {"ok": "bool", "result": "on success", "error": "message on failure"},
            "methods": {
                "DescribeInterface": {"params": {}, "result": "this description"},
                "Health": {"params": {}, "result": {"ok": "bool", "pid": "int", "uptime_s": "float", "agents": "int", "failed": "int"}},
                "Status": {"params": {}, "result": {"agents": "[{name, state, pid, restarts, uptime_s, last_exit, last_error, queued, running_task}]"}},
                "Start": {"params": {"agent": "name"}, "result": "the agent's status; also clears a failed state"},
                "Stop": {"params": {"agent": "name"}, "result": "the agent's status; it stays down until started"},
                "Restart": {"params": {"agent": "name"}, "result": "the agent's status"},
                "Reload": {"params": {}, "result": {"added": "[name]", "removed": "[name]", "restarted": "[name]", "unchanged": "[name]"}},
                "SnapshotCreate": {"params": {"agent": "name", "label": "optional"}, "result": "the snapshot's id, kind, label, size"},
                "SnapshotRestore": {"params": {"agent": "name", "snapshot": "id or label"}, "result": "the restored snapshot; the agent restarts"},
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// One agent's line in `Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    /// starting | running | backoff | stopping | stopped | failed
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub uptime_s: Option<f64>,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    pub queued: i64,
    pub running_task: Option<i64>,
}
