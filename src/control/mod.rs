//! The control socket: a Unix socket (mode 0600) in the state dir speaking
//! JSON lines, one request and one response per line. The CLI subcommands
//! (`status`, `start`, `reload`, `send`, …) are its clients.
//!
//! The server side only parses and forwards: every request becomes a
//! message to the supervisor's event loop, which alone changes state. A bad
//! request gets an error object; the connection and the daemon carry on.

mod admission;
pub mod client;
mod server;

use serde::{Deserialize, Serialize};

use crate::domain::TaskId;

pub use server::{Operators, serve};

/// Bumped when a request or response changes shape.
pub const INTERFACE_VERSION: u32 = 2;

pub const SOCKET_NAME: &str = "agentd.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "PascalCase", deny_unknown_fields)]
pub enum Request {
    DescribeInterface,
    Health,
    Status,
    /// The Prometheus metrics, in the OpenMetrics text format.
    Metrics,
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
    /// A message to an agent: queued as a task like any other trigger.
    Send {
        agent: String,
        text: String,
        /// Answer when the task has finished, with its result or error.
        #[serde(default)]
        wait: bool,
    },
    Pause {
        agent: String,
    },
    Resume {
        agent: String,
    },
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
                "Metrics": {"params": {}, "result": {"content_type": "string", "text": "the metrics in the OpenMetrics text format (what GET /metrics serves)"}},
                "Status": {"params": {}, "result": {"agents": "[{name, state, paused, pid, restarts, uptime_s, last_exit, last_error, queued, running_task, schedules: [{cron, timezone, prompt, next_run}]}]"}},
                "Start": {"params": {"agent": "name"}, "result": "the agent's status; also clears a failed state"},
                "Stop": {"params": {"agent": "name"}, "result": "the agent's status; it stays down until started"},
                "Restart": {"params": {"agent": "name"}, "result": "the agent's status"},
                "Reload": {"params": {}, "result": {"added": "[name]", "removed": "[name]", "restarted": "[name]", "unchanged": "[name]"}},
                "Send": {
                    "params": {"agent": "name", "text": "the message", "wait": "bool, default false"},
                    "result": "without wait, at once: {task, agent, state: queued, paused}; with wait, when the task ends: {task, agent, state, result, error}",
                },
                "Pause": {"params": {"agent": "name"}, "result": "the agent's status; its triggers queue (coalesced) but do not run"},
                "Resume": {"params": {"agent": "name"}, "result": "the agent's status; what is queued runs"},
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
    pub running_task: Option<TaskId>,
    /// Paused: triggers queue up but are not run until resumed.
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub schedules: Vec<ScheduleStatus>,
}

/// One cron schedule in an agent's `Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    pub cron: String,
    pub timezone: String,
    pub prompt: String,
    /// RFC 3339 in the schedule's timezone; `None` if it never fires again.
    pub next_run: Option<String>,
}

/// What `Send` answers: the task, and once it has ended, how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendResult {
    pub task: TaskId,
    pub agent: String,
    /// queued | succeeded | failed | cancelled
    pub state: String,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The status table shared by `agentd status` and the REPL's `/status`:
/// one line per agent, then one indented line per schedule.
pub fn status_lines(agents: &[AgentStatus]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<16} {:<9} {:>8} {:>8} {:>10} {:>6}  LAST",
        "AGENT", "STATE", "PID", "RESTARTS", "UPTIME", "QUEUED"
    )];
    for a in agents {
        let pid = a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let up = a
            .uptime_s
            .map(|s| humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string())
            .unwrap_or_else(|| "-".into());
        let last = a.last_error.clone().or_else(|| a.last_exit.clone()).unwrap_or_default();
        // A paused agent's process runs on; what matters is that its tasks do not.
        let state = match (a.paused, a.state.as_str()) {
            (false, s) => s.to_owned(),
            (true, "running") => "paused".to_owned(),
            (true, s) => format!("{s},paused"),
        };
        out.push(format!(
            "{:<16} {:<9} {:>8} {:>8} {:>10} {:>6}  {last}",
            a.name, state, pid, a.restarts, up, a.queued
        ));
        for s in &a.schedules {
            let next = s.next_run.as_deref().unwrap_or("never");
            out.push(format!("  schedule {:?} ({}): next run {next}", s.cron, s.timezone));
        }
    }
    out
}
