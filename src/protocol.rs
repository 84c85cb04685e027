//! The one protocol between the supervisor and an agent child: typed JSON
//! lines over the child's stdin (supervisor → child) and stdout (child →
//! supervisor). The child's stderr carries its logs.
//!
//! Every line is one serde-tagged enum value. The first line in each
//! direction carries [`PROTOCOL_VERSION`]; a mismatch ends the child, so a
//! supervisor and child from different builds never half-understand each
//! other (both are the same executable, so this only trips when the binary
//! is replaced under a running supervisor).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::AgentSpec;
use crate::domain::{ApprovalAnswer, ApprovalSubject, Conversation, Lease, NewStep, TaskId, TaskState, Trigger};

pub const PROTOCOL_VERSION: u32 = 4;

/// Supervisor → child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToChild {
    /// Always the first line.
    Start {
        version: u32,
        spec: Box<AgentSpec>,
        workdir: PathBuf,
        /// Where stdio MCP servers start (a directory no sandbox can write).
        mcp_dir: PathBuf,
        /// `(uid, gid)` sandboxed code runs as; `None` when agentd is
        /// unprivileged (code keeps agentd's uid).
        sandbox_user: Option<(u32, u32)>,
        /// The conversation saved after the agent's last task, if any.
        conversation: Option<Conversation>,
        /// `agentd CONFIG --record DIR`: record model replies into cassettes here.
        record_dir: Option<PathBuf>,
    },
    /// Run this task; every write about it must carry `lease`.
    Task {
        id: TaskId,
        lease: Lease,
        attempt: i64,
        trigger: Trigger,
    },
    /// Drop the task now: its model request, tool calls and sandbox runs
    /// are abandoned (a run's whole process tree is killed) and nothing
    /// more is sent about it. The supervisor has already recorded it
    /// cancelled; the child goes on with its next task.
    Cancel { task: TaskId, lease: Lease },
    /// The answer to the running task's [`FromChild::ApprovalRequest`].
    ApprovalAnswer {
        task: TaskId,
        lease: Lease,
        answer: ApprovalAnswer,
    },
    /// Finish the current task (up to `grace_ms`), release resources, exit 0.
    Shutdown { grace_ms: u64 },
    /// Heartbeat: answer with [`FromChild::Pong`] carrying the same `seq`,
    /// from the child's main loop (so a blocked loop cannot answer).
    Ping { seq: u64 },
}

/// Child → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromChild {
    /// Always the first line: the child is up and can take tasks.
    Ready { version: u32, pid: u32 },
    /// Something happened that should become a task (a resource update, a
    /// polled tool's new result). Coalesced by `dedupe_key` while queued.
    Trigger {
        trigger: Trigger,
        dedupe_key: Option<String>,
    },
    /// Append to the running task's journal.
    Step { task: TaskId, lease: Lease, step: NewStep },
    /// The running task wants to run `subject` (its `approve:` policy says
    /// so) and waits for [`ToChild::ApprovalAnswer`]. The child can only
    /// ask: no message from it answers anything.
    ApprovalRequest {
        task: TaskId,
        lease: Lease,
        subject: ApprovalSubject,
    },
    /// The answer to [`ToChild::Ping`].
    Pong { seq: u64 },
    /// An MCP server of the agent cannot be reached (`degraded`: which and
    /// why), or all are fine again (`None`). Sent on change only.
    Health { degraded: Option<String> },
    /// Text the model produced for a person (streamed REPL replies).
    Output { task: TaskId, lease: Lease, text: String },
    /// The task ended; the child is free for the next one.
    Finished {
        task: TaskId,
        lease: Lease,
        state: TaskState,
        result: Option<String>,
        error: Option<String>,
        /// The conversation after this task, to snapshot.
        conversation: Option<Conversation>,
    },
}

/// One JSON line (with the newline).
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serialising these plain enums cannot fail; keep the process alive
    // with an empty object rather than panicking if it ever did.
    let mut s = serde_json::to_string(msg).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}
