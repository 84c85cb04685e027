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

pub use server::{Envelope, Operators, serve};

/// Bumped when a request or response changes shape.
pub const INTERFACE_VERSION: u32 = 3;

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
    /// Cancel a queued or running task.
    Cancel {
        task: crate::domain::TaskId,
        #[serde(default)]
        reason: Option<String>,
        /// Who asks: filled in by the transport from the caller's
        /// credentials (`uid 1000`), never by the caller, so the journal's
        /// "cancelled by" cannot be forged.
        #[serde(skip)]
        caller: Option<String>,
    },
    /// Pending approval requests, oldest first.
    Approvals,
    /// Let a waiting tool call or code block run.
    Approve {
        id: i64,
        #[serde(default)]
        note: Option<String>,
        /// How long it holds (egress asks only): once, task, always.
        #[serde(default)]
        remember: crate::domain::Remember,
        /// Filled in by the transport, like `Cancel`'s.
        #[serde(skip)]
        caller: Option<String>,
    },
    /// Refuse it: the model reads the reason as the tool's error.
    Deny {
        id: i64,
        #[serde(default)]
        reason: Option<String>,
        #[serde(skip)]
        caller: Option<String>,
    },
    /// Standing egress grants (approved with remember: always).
    Grants {
        #[serde(default)]
        agent: Option<String>,
    },
    /// End a standing egress grant: the host is asked about again.
    Revoke {
        id: i64,
        #[serde(skip)]
        caller: Option<String>,
    },
    /// Model spend of each agent over its budget window (or `per`).
    Spend {
        #[serde(default)]
        agent: Option<String>,
        /// A window such as `1d` or `90m`; default: each agent's budget
        /// window, or one day.
        #[serde(default)]
        per: Option<String>,
    },
}

impl Request {
    /// The request with its caller recorded, for requests that journal who
    /// asked.
    pub fn with_caller(mut self, who: String) -> Request {
        if let Request::Cancel { caller, .. }
        | Request::Approve { caller, .. }
        | Request::Deny { caller, .. }
        | Request::Revoke { caller, .. } = &mut self
        {
            *caller = Some(who);
        }
        self
    }
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
                "Status": {"params": {}, "result": {"agents": "[{name, state, paused, pause: {reason, by, note, since}, spend: {per, tokens, cost_usd, left_tokens, left_cost_usd}, waiting: [pending approvals], pid, restarts, uptime_s, last_exit, last_error, queued, running_task, schedules: [{cron, timezone, prompt, next_run}]}]"}},
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
                "Cancel": {"params": {"task": "id", "reason": "optional text"}, "result": {"task": "id", "agent": "name", "was": "queued | running", "state": "cancelled"}},
                "Approvals": {"params": {}, "result": {"approvals": "[{id, task, agent, subject: {kind: tool, name, arguments} | {kind: code, block, code}, state, asked_at, timeout_at, on_timeout}]"}},
                "Grants": {"params": {"agent": "optional agent name"}, "result": {"grants": "[approval records with remember: always]"}},
                "Revoke": {"params": {"id": "approval id of a grant"}, "result": "the grant, remember: revoked"},
                "Approve": {"params": {"id": "approval id", "note": "optional text", "remember": "once | task | always (egress asks)"}, "result": "the answered approval"},
                "Deny": {"params": {"id": "approval id", "reason": "optional text, given to the model"}, "result": "the answered approval"},
                "Spend": {"params": {"agent": "optional name", "per": "optional window, e.g. 1d"}, "result": {"agents": "[{agent, per, since, tokens, cost_usd, models: [{model, calls, input_tokens, output_tokens, cached_tokens, cost_usd}], budget: {tokens, cost_usd, on_exceed}, left: {tokens, cost_usd}}]"}},
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
    /// Why it is paused, by whom and since when.
    #[serde(default)]
    pub pause: Option<crate::ledger::Pause>,
    /// Model spend in the agent's budget window, when it has a budget.
    #[serde(default)]
    pub spend: Option<SpendStatus>,
    /// The approvals its waiting task asks for (at most one at a time).
    #[serde(default)]
    pub waiting: Vec<crate::ledger::Approval>,
    #[serde(default)]
    pub schedules: Vec<ScheduleStatus>,
    /// In a fleet: the member running it (none when no member holds it).
    #[serde(default)]
    pub host: Option<String>,
}

impl AgentStatus {
    /// An agent with no process of this agentd's behind it (removed, or
    /// run by another fleet member): nothing but its name, state and queue.
    pub fn without_process(name: &str, state: &str, queued: i64) -> AgentStatus {
        AgentStatus {
            name: name.to_owned(),
            state: state.to_owned(),
            pid: None,
            restarts: 0,
            uptime_s: None,
            last_exit: None,
            last_error: None,
            queued,
            running_task: None,
            paused: false,
            pause: None,
            spend: None,
            waiting: Vec::new(),
            schedules: Vec::new(),
            host: None,
        }
    }
}

/// An agent's spend in its budget window and what is left, in `Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendStatus {
    /// The window, e.g. `1d`.
    pub per: String,
    pub tokens: i64,
    pub cost_usd: f64,
    /// `None` when the budget sets no such limit.
    pub left_tokens: Option<i64>,
    pub left_cost_usd: Option<f64>,
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
    // A fleet's status names each agent's member; a single host's does not.
    let fleet = agents.iter().any(|a| a.host.is_some());
    let host_col = |h: &str| if fleet { format!("{h:<12} ") } else { String::new() };
    let mut out = vec![format!(
        "{:<16} {}{:<9} {:>8} {:>8} {:>10} {:>6}  LAST",
        "AGENT",
        host_col("HOST"),
        "STATE",
        "PID",
        "RESTARTS",
        "UPTIME",
        "QUEUED"
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
            "{:<16} {}{:<9} {:>8} {:>8} {:>10} {:>6}  {last}",
            a.name,
            host_col(a.host.as_deref().unwrap_or("-")),
            state,
            pid,
            a.restarts,
            up,
            a.queued
        ));
        if let Some(p) = &a.pause {
            let note = p.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
            out.push(format!("  paused ({}) by {}{note}", p.reason, p.by));
        }
        if let Some(s) = &a.spend {
            out.push(format!("  spend {}", spend_line(s)));
        }
        for w in &a.waiting {
            out.push(format!(
                "  task {} waits for approval {}: {}",
                w.task,
                w.id,
                w.subject.summary()
            ));
        }
        for s in &a.schedules {
            let next = s.next_run.as_deref().unwrap_or("never");
            out.push(format!("  schedule {:?} ({}): next run {next}", s.cron, s.timezone));
        }
    }
    out
}

/// `fleet (this host alpha): alpha 2 agents, beta 1 agent draining, gamma down`.
pub fn fleet_line(me: &str, members: &[crate::ledger::Member]) -> String {
    let each: Vec<String> = members
        .iter()
        .map(|m| {
            let n = m.agents.len();
            let mut s = format!("{} {n} agent{}", m.host, if n == 1 { "" } else { "s" });
            if m.draining {
                s.push_str(" draining");
            }
            if !m.alive {
                s = format!("{} down", m.host);
            }
            s
        })
        .collect();
    format!("fleet (this host {me}): {}", each.join(", "))
}

/// `12,345 tokens, $0.0123 in the last 1d; left: 7,655 tokens, $4.9877`.
pub fn spend_line(s: &SpendStatus) -> String {
    let mut left = Vec::new();
    if let Some(t) = s.left_tokens {
        left.push(format!("{t} tokens"));
    }
    if let Some(c) = s.left_cost_usd {
        left.push(format!("${c:.4}"));
    }
    let left = if left.is_empty() {
        String::new()
    } else {
        format!("; left: {}", left.join(", "))
    };
    format!("{} tokens, ${:.4} in the last {}{left}", s.tokens, s.cost_usd, s.per)
}

/// One line per pending approval, for `agentd approvals` and `/approvals`.
/// `agentd grants`: one line per standing egress grant.
pub fn grant_lines(grants: &[crate::ledger::Approval]) -> Vec<String> {
    if grants.is_empty() {
        return vec!["no standing egress grants".into()];
    }
    let mut out = vec![format!(
        "{:>5}  {:<16} {:<24}  {:<12}  WHAT",
        "ID", "AGENT", "GRANTED", "BY"
    )];
    for a in grants {
        out.push(format!(
            "{:>5}  {:<16} {:<24}  {:<12}  {}",
            a.id,
            a.agent,
            a.answered_at.map(crate::ledger::format_ms).unwrap_or_default(),
            a.answered_by.as_deref().unwrap_or(""),
            a.subject.summary()
        ));
    }
    out
}

pub fn approval_lines(pending: &[crate::ledger::Approval]) -> Vec<String> {
    if pending.is_empty() {
        return vec!["no approvals pending".into()];
    }
    let mut out = vec![format!(
        "{:>5}  {:<16} {:>6}  {:<24}  WHAT",
        "ID", "AGENT", "TASK", "ASKED"
    )];
    for a in pending {
        out.push(format!(
            "{:>5}  {:<16} {:>6}  {:<24}  {}",
            a.id,
            a.agent,
            a.task,
            crate::ledger::format_ms(a.asked_at),
            a.subject.summary()
        ));
    }
    out
}
