//! agentd's domain vocabulary: the words every layer uses for tasks and
//! their journals, owned by none of them. The agent child builds
//! [`NewStep`]s and holds a [`Lease`] without knowing how the ledger stores
//! them; the supervisor and the readers (`agentd show`, the REPL) match
//! [`StepKind`] variants, not strings.

use serde::{Deserialize, Serialize};

/// A task's number in the ledger (its row id). A newtype so a task id is
/// never passed where a step sequence, a snapshot id or a count is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub i64);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TaskId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<TaskId, Self::Err> {
        s.parse().map(TaskId)
    }
}

impl rusqlite::ToSql for TaskId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for TaskId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<TaskId> {
        i64::column_result(v).map(TaskId)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Running,
    /// Running, but stopped at a tool call or code block until an operator
    /// approves or denies it (or its timeout answers).
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Waiting,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Waiting => "waiting",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What woke the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// A subscribed resource changed (or a polled tool's result did);
    /// `contents` is what it says now.
    Resource {
        uri: String,
        server: String,
        subscription: String,
        contents: String,
    },
    /// A cron schedule fired.
    Schedule {
        cron: String,
        prompt: String,
        scheduled_for: String,
    },
    /// A person wrote to the agent (REPL or `agentd send`).
    Message { text: String, from: String },
    /// A signed HTTP delivery (`POST /api/v1/agents/NAME/webhook`): the
    /// headers the agent's `webhook.headers` selects, and the body (as
    /// text; invalid UTF-8 is replaced, as the model reads text).
    Webhook {
        delivery: Option<String>,
        headers: std::collections::BTreeMap<String, String>,
        body: String,
    },
}

impl Trigger {
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Resource { .. } => "resource",
            Trigger::Schedule { .. } => "schedule",
            Trigger::Message { .. } => "message",
            Trigger::Webhook { .. } => "webhook",
        }
    }

    /// One line for listings.
    pub fn summary(&self) -> String {
        match self {
            Trigger::Resource { uri, .. } => uri.clone(),
            Trigger::Schedule { cron, .. } => format!("cron {cron}"),
            Trigger::Message { text, .. } => text.lines().next().unwrap_or("").to_owned(),
            Trigger::Webhook { delivery, .. } => match delivery {
                Some(d) => format!("webhook delivery {d}"),
                None => "webhook delivery".to_owned(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewStep {
    pub kind: StepKind,
    pub payload: serde_json::Value,
    #[serde(default)]
    pub input_tokens: i64,
    #[serde(default)]
    pub output_tokens: i64,
    #[serde(default)]
    pub latency_ms: Option<i64>,
}

/// What a journal step records. Stored as its snake_case name; a name this
/// build does not know (a newer agentd wrote it) reads as `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// A model reply (with the request's summary, tokens, latency).
    Llm,
    /// A model request that failed.
    LlmError,
    /// An MCP tool call the model asked for, and its result.
    Tool,
    /// Tool calls beyond `limits.max_tool_calls`, answered "not run".
    ToolCallsCapped,
    /// A code block run in the sandbox (or a `:create`), and its result.
    Fence,
    /// A tool call from sandboxed code through the tool bridge.
    Bridge,
    /// A connection attempt from sandboxed code through the egress proxy.
    Egress,
    /// The task was cancelled: by whom and why.
    Cancel,
    /// The task asked for an operator's approval (what would run, when).
    Approval,
    /// The approval's answer: approved or denied, by whom, with what note.
    ApprovalAnswer,
    /// A notification about the task sent to a `notify:` receiver (or an
    /// attempt that failed), written after the task ended.
    Notify,
    Other(String),
}

impl StepKind {
    pub fn as_str(&self) -> &str {
        match self {
            StepKind::Llm => "llm",
            StepKind::LlmError => "llm_error",
            StepKind::Tool => "tool",
            StepKind::ToolCallsCapped => "tool_calls_capped",
            StepKind::Fence => "fence",
            StepKind::Bridge => "bridge",
            StepKind::Egress => "egress",
            StepKind::Cancel => "cancel",
            StepKind::Approval => "approval",
            StepKind::ApprovalAnswer => "approval_answer",
            StepKind::Notify => "notify",
            StepKind::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> StepKind {
        match s {
            "llm" => StepKind::Llm,
            "llm_error" => StepKind::LlmError,
            "tool" => StepKind::Tool,
            "tool_calls_capped" => StepKind::ToolCallsCapped,
            "fence" => StepKind::Fence,
            "bridge" => StepKind::Bridge,
            "egress" => StepKind::Egress,
            "cancel" => StepKind::Cancel,
            "approval" => StepKind::Approval,
            "approval_answer" => StepKind::ApprovalAnswer,
            "notify" => StepKind::Notify,
            other => StepKind::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for StepKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for StepKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StepKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StepKind, D::Error> {
        Ok(StepKind::parse(&String::deserialize(d)?))
    }
}

/// What a task asks an operator to approve before it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalSubject {
    /// An MCP tool call, with its arguments.
    Tool { name: String, arguments: serde_json::Value },
    /// A code block (`bash:execute`, `notes.md:create`, …) and its code.
    Code { block: String, code: String },
    /// A connection from sandboxed code to a host an egress `ask` rule
    /// names.
    Egress { host: String, port: u16 },
}

impl ApprovalSubject {
    /// One line for listings.
    pub fn summary(&self) -> String {
        let one_line = |s: &str| {
            let line: String = s.lines().next().unwrap_or("").chars().take(120).collect();
            if s.len() > line.len() {
                format!("{line}…")
            } else {
                line
            }
        };
        match self {
            ApprovalSubject::Tool { name, arguments } => format!("tool {name} {}", one_line(&arguments.to_string())),
            ApprovalSubject::Code { block, code } => format!("{block}: {}", one_line(code)),
            ApprovalSubject::Egress { host, port } if host.contains(':') => format!("connect to [{host}]:{port}"),
            ApprovalSubject::Egress { host, port } => format!("connect to {host}:{port}"),
        }
    }
}

/// An operator's (or the timeout's) answer to an approval request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalAnswer {
    pub approved: bool,
    /// `uid 1000`, `repl`, `timeout`.
    pub by: String,
    /// The note of an approval, the reason of a denial.
    pub note: Option<String>,
    /// How long an approval holds (egress asks; tool calls and code
    /// blocks are always asked again).
    #[serde(default)]
    pub remember: Remember,
}

/// How long an approved egress ask holds: this connection, the rest of the
/// task, or every later task of the agent (until revoked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remember {
    #[default]
    Once,
    Task,
    Always,
}

impl Remember {
    pub const NAMES: &[&str] = &["once", "task", "always"];

    pub fn as_str(self) -> &'static str {
        match self {
            Remember::Once => "once",
            Remember::Task => "task",
            Remember::Always => "always",
        }
    }
}

impl std::str::FromStr for Remember {
    type Err = String;
    fn from_str(s: &str) -> Result<Remember, String> {
        match s {
            "once" => Ok(Remember::Once),
            "task" => Ok(Remember::Task),
            "always" => Ok(Remember::Always),
            other => Err(format!("{other:?}: an approval holds once, for the task, or always")),
        }
    }
}

impl std::fmt::Display for Remember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ApprovalAnswer {
    /// What the model reads for a denied call.
    pub fn denial(&self) -> String {
        match &self.note {
            Some(r) => format!("denied by {}: {r}", self.by),
            None => format!("denied by {}", self.by),
        }
    }
}

/// Why an agent is paused. Kept in the ledger with the pause, so an agent
/// paused before a restart of agentd starts paused, and status says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// Someone paused it (`agentd pause`, `/pause`, the control socket).
    Operator,
    /// Its spending budget is used up for the window; it resumes by itself
    /// when the window frees room.
    Budget,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Operator => "operator",
            PauseReason::Budget => "budget",
        }
    }

    /// A reason this build does not know (a newer agentd wrote it) reads as
    /// `Operator`: the agent stays paused until someone resumes it.
    pub fn parse(s: &str) -> PauseReason {
        match s {
            "budget" => PauseReason::Budget,
            _ => PauseReason::Operator,
        }
    }
}

impl std::fmt::Display for PauseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
/// What an agent remembers between tasks: the messages of its past
/// conversation (without the system prompt). It crosses from the child to
/// the supervisor after each task and back at start as this type, so a
/// conversation that does not decode is an error someone sees, never a
/// silently empty memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Conversation(pub Vec<crate::llm::ChatMessage>);

/// Who may write about a running task: one agent process of one
/// generation. Every write the child sends carries it, and the ledger
/// refuses one whose lease is not the task's (a stale child's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub agent: String,
    pub pid: u32,
    pub generation: u64,
}

impl std::fmt::Display for Lease {
    /// `agent:pid:generation`, as stored in the ledger's `lease` column.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.agent, self.pid, self.generation)
    }
}

impl rusqlite::ToSql for Lease {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_kinds_round_trip_by_name_and_unknown_ones_are_kept() {
        for kind in [
            StepKind::Llm,
            StepKind::LlmError,
            StepKind::Tool,
            StepKind::ToolCallsCapped,
            StepKind::Fence,
            StepKind::Bridge,
            StepKind::Egress,
            StepKind::Cancel,
            StepKind::Approval,
            StepKind::ApprovalAnswer,
            StepKind::Notify,
        ] {
            let json = serde_json::to_string(&kind).expect("serialise");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<StepKind>(&json).expect("parse"), kind);
        }
        let future: StepKind = serde_json::from_str("\"escalation\"").expect("parse");
        assert_eq!(future, StepKind::Other("escalation".into()));
        assert_eq!(future, "escalation");
    }

    #[test]
    fn a_lease_is_written_as_agent_pid_generation() {
        let l = Lease {
            agent: "news".into(),
            pid: 42,
            generation: 7,
        };
        assert_eq!(l.to_string(), "news:42:7");
    }
}
