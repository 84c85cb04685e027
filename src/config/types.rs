//! The resolved configuration types. Every value here has been validated;
//! the agent child receives its [`AgentSpec`] as JSON, so everything is serde.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sandbox::SandboxPolicy;

/// The whole resolved configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The main config file, absolute.
    pub path: PathBuf,
    /// Every file read while loading (main file, includes, prompt files,
    /// sandbox profiles), absolute: what the reload watcher watches.
    pub files: Vec<PathBuf>,
    /// Absolute include glob patterns: a file appearing under one adds an agent.
    pub include_globs: Vec<String>,
    pub state_dir: PathBuf,
    /// How long running tasks may finish on shutdown before children are stopped.
    pub shutdown_grace: Duration,
    /// When agentd runs as root, each agent's sandboxed code runs as its own
    /// uid (gid the same) from this range (`agent_uids: FIRST-LAST`).
    pub agent_uids: std::ops::RangeInclusive<u32>,
    /// Members of this group (a gid) may use the control socket too
    /// (`control_group: NAME|GID`).
    pub control_group: Option<u32>,
    /// USD per million tokens by model (`prices:` over the built-in table).
    pub prices: crate::budget::Prices,
    /// Where the HTTP API listens (`http:`); `None` when `http: false`.
    pub http: Option<Listen>,
    /// Signed notifications of tasks' ends (`notify:`).
    pub notify: Vec<NotifySpec>,
    /// Where the ledger lives (`ledger:`, `$AGENTD_LEDGER`; default the
    /// state dir's SQLite file).
    pub ledger: crate::ledger::Location,
    /// This host among a shared ledger's members (`fleet:`).
    pub fleet: Box<FleetSpec>,
    pub agents: Vec<AgentSpec>,
}

/// `fleet: {host, labels, lease_ttl, heartbeat}`: meaningful with a
/// PostgreSQL ledger only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSpec {
    /// This member's name (default: the hostname).
    pub host: String,
    /// Labels agents' `placement.labels` match.
    pub labels: Vec<String>,
    /// How long an agent's lease outlives its holder's last heartbeat.
    pub lease_ttl: Duration,
    /// How often leases are renewed (default: a third of the TTL).
    pub heartbeat: Option<Duration>,
}

impl FleetSpec {
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat.unwrap_or(self.lease_ttl / 3)
    }
}

/// An address the HTTP API listens on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One `notify:` receiver: a signed JSON POST when a task ends in one of
/// the `on` states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifySpec {
    pub url: String,
    pub on: Vec<crate::domain::TaskState>,
    /// The variable holding the HMAC-SHA256 key; unsigned without one.
    pub secret_env: Option<String>,
    /// Attempts after the first.
    pub retries: u32,
    /// Delay before the first retry; doubled each time.
    pub backoff: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
}

/// An agent's `webhook:`: deliveries to `POST /api/v1/agents/NAME/webhook`
/// signed with the key in `secret_env` become tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSpec {
    pub secret_env: String,
    /// The header whose value names a delivery (e.g. `x-github-delivery`):
    /// a redelivery with the same value is the same task. Lower case.
    pub dedupe_header: Option<String>,
    /// Headers copied into the task's trigger. Lower case.
    pub headers: Vec<String>,
    /// The largest body accepted, in bytes.
    pub max_body: u64,
}

impl Config {
    pub fn agent(&self, name: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| a.name.as_str() == name)
    }
}

/// An agent name: `[a-z0-9_-]+`, unique within a config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok =
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if ok {
            Ok(AgentName(s))
        } else {
            Err(format!(
                "invalid agent name {s:?}: use 1 to 64 characters from [a-z0-9_-]"
            ))
        }
    }
}

impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One agent, fully resolved (defaults merged, files read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: AgentName,
    /// The file that defines this agent (main config or an include).
    pub source: PathBuf,
    /// A model name for the provider, or `replay:PATH` for a recorded cassette.
    pub model: String,
    pub llm: LlmSpec,
    pub system_prompt: String,
    pub mcp_servers: Vec<McpServerSpec>,
    pub subscriptions: Vec<SubscriptionSpec>,
    pub schedules: Vec<ScheduleSpec>,
    /// The name of the profile the policy came from, or `inline`.
    pub sandbox_profile: String,
    pub sandbox: SandboxPolicy,
    /// Local skill directories, validated at load (see [`crate::skills`]).
    pub skills: Vec<SkillSpec>,
    /// Limits of the tool bridge that sandboxed code calls MCP tools through.
    pub bridge: BridgeSpec,
    pub restart: RestartSpec,
    /// How the supervisor tells a hung child from a busy one.
    pub heartbeat: HeartbeatSpec,
    pub limits: Limits,
    /// Spending limits over a rolling window (`budget:`).
    pub budget: Option<crate::budget::BudgetSpec>,
    /// Tool calls and code blocks that wait for an operator (`approve:`).
    pub approve: Option<ApprovalPolicy>,
    /// Signed deliveries in over HTTP (`webhook:`); none when absent.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// Which fleet members may run it (`placement:`); anywhere by default.
    #[serde(default)]
    pub placement: Placement,
}

/// `placement: {hosts: [a, b], labels: [gpu]}`: the members that may run an
/// agent (named, and carrying every label); empty lists allow any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub hosts: Vec<String>,
    pub labels: Vec<String>,
}

impl Placement {
    pub fn allows(&self, host: &str, labels: &[String]) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h == host))
            && self.labels.iter().all(|l| labels.contains(l))
    }
}

/// How to reach the model provider. The API key is referenced by the name of
/// an environment variable and read only when a request is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmSpec {
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub temperature: Option<f32>,
    /// Per-request timeout: a hung provider fails the request after this.
    pub request_timeout: Duration,
    /// How often a failed request (429, 5xx, connection error) is retried.
    pub max_retries: u32,
    /// `llm.stream: false` sends plain requests only (some servers support
    /// tools only unstreamed).
    pub stream: bool,
}

impl Default for LlmSpec {
    fn default() -> Self {
        LlmSpec {
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            temperature: None,
            request_timeout: Duration::from_secs(120),
            max_retries: 5,
            stream: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServerSpec {
    /// Unique within the agent; prefixes tool names when two servers share one.
    pub name: String,
    pub transport: McpTransport,
    /// When set, only these tools (glob patterns) are offered to the model.
    pub tool_filter: Option<Vec<String>>,
    /// Directories offered to the server as MCP roots (`roots/list`),
    /// absolute. Empty: the client does not offer roots at all, so a
    /// server keeps the directories its command line names (server-filesystem
    /// replaces them with any roots it is given).
    #[serde(default)]
    pub roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum McpTransport {
    Stdio {
        command: String,
        args: Vec<String>,
        /// Declared environment; the server gets only this plus the
        /// documented passthrough (PATH, HOME, …).
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

/// What a subscription watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SubscriptionTarget {
    /// One resource URI, via `resources/subscribe`.
    Resource { uri: String },
    /// A glob over resource URIs (`file:///srv/inbox/*.md`); matching
    /// resources are subscribed as they appear.
    Glob { pattern: String },
    /// `tool://NAME?arg=v`: poll a tool and fire when its result changes.
    Tool {
        tool: String,
        arguments: serde_json::Map<String, serde_json::Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    /// As written in the config (after interpolation).
    pub uri: String,
    pub target: SubscriptionTarget,
    /// Restrict to one server; otherwise every server is asked.
    pub server: Option<String>,
    /// Quiet time before an update fires; bursts inside it coalesce.
    pub debounce: Duration,
    /// For `tool://` subscriptions: how often the tool is polled.
    pub interval: Duration,
    /// The least time between two triggers from one resource of this
    /// subscription; updates inside it coalesce into one trigger at its
    /// end, with the freshest contents.
    pub min_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// As written (5, 6 or 7 fields).
    pub cron: String,
    pub prompt: String,
    /// IANA timezone name, validated.
    pub timezone: String,
}

impl ScheduleSpec {
    /// The parsed schedule. Validated at load, so this cannot fail for a
    /// spec that came from [`load`](super::load).
    pub fn schedule(&self) -> Result<cron::Schedule, String> {
        super::schedule::parse_cron(&self.cron)
    }

    pub fn tz(&self) -> Result<chrono_tz::Tz, String> {
        self.timezone
            .parse()
            .map_err(|_| format!("unknown timezone {:?}", self.timezone))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// At most `burst` starts within `interval`, then the agent is failed.
    pub burst: u32,
    pub interval: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::OnFailure,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            burst: 5,
            interval: Duration::from_secs(10),
        }
    }
}

/// The supervisor pings each child every `interval`; a child that has not
/// answered for `timeout` (stopped, deadlocked, its event loop blocked) is
/// killed and restarted, and its task re-queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatSpec {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        HeartbeatSpec {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_turns: u32,
    /// Tool calls run from one model reply; the rest are answered "not run".
    pub max_tool_calls: u32,
    /// Token budget of one task (prompt + completion, summed over turns).
    pub max_tokens: u64,
    pub task_timeout: Duration,
    /// How often a task is tried before it is failed.
    pub max_attempts: u32,
    /// Conversation window kept between tasks.
    pub history_messages: u32,
    pub history_tokens: u64,
    /// What the agent's workdir may hold (checked during and after each
    /// sandbox run): bytes of disk, and files.
    pub workdir_size: u64,
    pub workdir_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_turns: 20,
            max_tool_calls: 32,
            max_tokens: 200_000,
            task_timeout: Duration::from_secs(600),
            max_attempts: 3,
            history_messages: 40,
            history_tokens: 32_000,
            workdir_size: crate::sandbox::quota::Quota::default().max_bytes,
            workdir_files: crate::sandbox::quota::Quota::default().max_files,
        }
    }
}

/// One local skill: a directory with a valid `SKILL.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkillSpec {
    /// Absolute path of the skill directory.
    pub dir: PathBuf,
    pub name: String,
    pub description: String,
}

/// The tool bridge's limits (`bridge:` in an agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeSpec {
    /// Largest request line accepted from sandboxed code.
    pub max_request: u64,
    /// Largest reply sent back; a bigger tool result is an error.
    pub max_reply: u64,
    /// How long one bridged tool call may take.
    pub call_timeout: Duration,
}

impl Default for BridgeSpec {
    fn default() -> Self {
        BridgeSpec {
            max_request: 1 << 20,
            max_reply: 4 << 20,
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// `approve:`: which tool calls and code blocks wait for an operator's
/// answer before they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    /// Tool names (globs: `delete_*`) whose calls need approval.
    pub tools: Vec<String>,
    /// Code block kinds that need approval: `bash`, `sh`, `python`, `create`.
    pub fences: Vec<String>,
    /// How long a request waits for an answer.
    pub timeout: Duration,
    /// What the timeout answers.
    pub on_timeout_approve: bool,
}

/// The code block kinds `approve.fences` names.
pub const FENCE_KINDS: &[&str] = &["bash", "sh", "python", "create"];

impl ApprovalPolicy {
    pub fn tool(&self, name: &str) -> bool {
        self.tools
            .iter()
            .any(|p| glob::Pattern::new(p).is_ok_and(|g| g.matches(name)))
    }

    /// `kind`: one of [`FENCE_KINDS`].
    pub fn fence(&self, kind: &str) -> bool {
        self.fences.iter().any(|f| f == kind)
    }

    pub fn on_timeout(&self) -> &'static str {
        if self.on_timeout_approve { "approve" } else { "deny" }
    }
}
