//! MCP: the agent's connections to its MCP servers, and agentd's own server.
//!
//! [`McpHub`] is what the agent child holds. It connects every server of the
//! agent (stdio or streamable HTTP, through rmcp), keeps each one connected
//! (reconnect with backoff, subscriptions re-established), offers their tools
//! to the model under unique names, and turns resource updates into
//! [`ResourceEvent`]s on a channel. The agent child turns each event into a
//! ledger task; this module never touches the ledger, the LLM or the
//! supervisor protocol.
//!
//! Layout:
//! - [`connection`]: one server's task: connect, list tools, subscribe,
//!   debounce, re-read, reconnect;
//! - [`child`]: spawning stdio servers (environment, process group, stderr,
//!   stdout noise) and stopping them (stdin EOF → SIGTERM → SIGKILL);
//! - [`tools`]: model-facing tool names, `tool_filter`, result rendering;
//! - [`subscribe`]: subscription URIs, glob matching, event contents;
//! - [`poll`]: `tool://` subscriptions;
//! - [`watch_server`]: `agentd mcp-watch DIR`, a stdio MCP server exposing
//!   a directory's files as subscribable `file://` resources.
//!
//! # Environment of stdio servers
//!
//! A stdio server starts with an empty environment plus
//! - from agentd's own environment, when set: `PATH`, `HOME`, `USER`,
//!   `LOGNAME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR` ([`ENV_PASSTHROUGH`]);
//! - the server's declared `env`, which wins over the passthrough (setting
//!   `PATH` there is explicit, not silent).
//!
//! A declared `env` may not set variables that make a runtime load code the
//! command line does not show: `LD_*`, `DYLD_*`, `NODE_OPTIONS`,
//! `PYTHONSTARTUP`, `PYTHONINSPECT`, `PERL5OPT`, `RUBYOPT`,
//! `JAVA_TOOL_OPTIONS`, `BASH_ENV`, `ENV` ([`ENV_DENIED`]). Such a server is
//! not started and its error names the key ([`check_env`] lets the config
//! loader report it up front). The config names the command to run, so this
//! is not a security boundary against its author; it stops a copied snippet
//! or an interpolated value from quietly injecting code into every process
//! the server starts.
//!
//! # Subscriptions
//!
//! Servers that negotiate protocol 2026-07-28 (`server/discover`) get one
//! `subscriptions/listen` stream per connection; older ones get
//! `resources/subscribe` per URI. Either way an update opens a debounce
//! window ([`SubscriptionSpec::debounce`]) for that URI; further updates
//! inside it coalesce, and when it ends the resource is re-read and one
//! event fires with what it says *now*. Globs are matched against
//! `resources/list`, re-listed on `list_changed`; a resource that appears on
//! a glob after the first listing fires at once (a file dropped into an
//! inbox is news even if no update follows).

pub mod child;
mod connection;
pub mod poll;
pub mod subscribe;
pub mod tools;
mod traced_http;
pub mod watch_server;

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use child::{ENV_DENIED, ENV_PASSTHROUGH, check_env};
pub use connection::ServerStatus;
pub use subscribe::MAX_EVENT_CONTENTS;
pub use tools::ToolInfo;

use crate::config::{McpServerSpec, SubscriptionSpec};

/// How long [`McpHub::start`] waits for first connections before returning
/// (servers still connecting keep trying in the background).
pub const START_WAIT: Duration = Duration::from_secs(15);
/// The longest [`McpHub::shutdown`] takes: stdin EOF grace + SIGTERM grace +
/// margin.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("MCP server {server}: cannot start {command:?}: {source}")]
    Spawn {
        server: String,
        command: String,
        source: std::io::Error,
    },
    #[error(
        "MCP server {server}: env key {key:?} is not allowed (it injects code into every process the server starts)"
    )]
    DeniedEnv { server: String, key: String },
    #[error("MCP server {server}: {message}")]
    Config { server: String, message: String },
    #[error("MCP server {server}: handshake failed: {message}")]
    Connect { server: String, message: String },
    #[error("no tool named {name:?} (the model called a tool agentd did not offer)")]
    UnknownTool { name: String },
    #[error("MCP server {server} is not connected (it is being restarted); tool {tool} cannot be called right now")]
    Unavailable { server: String, tool: String },
    #[error(
        "MCP server {server} went away during a call of tool {tool} (it is being restarted); \
         the call may or may not have taken effect"
    )]
    Lost { server: String, tool: String },
    #[error("MCP server {server}: tool {tool} failed: {source}")]
    Call {
        server: String,
        tool: String,
        source: rmcp::service::ServiceError,
    },
}

/// A subscription fired: the agent has something to react to.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceEvent {
    /// The resource that changed (or the `tool://` subscription URI).
    pub uri: String,
    /// The server it lives on.
    pub server: String,
    /// The [`SubscriptionSpec::uri`] that covers it.
    pub subscription: String,
    /// The contents re-read after the update, capped at
    /// [`MAX_EVENT_CONTENTS`] bytes with a note when cut.
    pub contents: String,
}

/// A tool call's result for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// Text blocks verbatim, other blocks described (see [`tools::render_result`]).
    pub text: String,
    /// The server said the tool failed (`isError`); `text` says why.
    pub is_error: bool,
    /// The `tools/call` result as the server sent it.
    pub raw: Value,
}

/// The agent's MCP servers. See the module docs.
pub struct McpHub {
    servers: Vec<Arc<connection::Shared>>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl McpHub {
    /// Connects every server concurrently and returns once each has
    /// connected or failed a first time (at most [`START_WAIT`]). A server
    /// that fails is retried in the background with backoff; its tools
    /// appear when it connects.
    pub async fn start(
        servers: &[McpServerSpec],
        subscriptions: &[SubscriptionSpec],
        events: mpsc::Sender<ResourceEvent>,
    ) -> McpHub {
        let (shutdown, _) = watch::channel(false);
        let mut shared = Vec::new();
        let mut tasks = Vec::new();
        for spec in servers {
            let s = connection::Shared::new(spec.clone());
            let subs = subscriptions
                .iter()
                .filter(|sub| sub.server.as_deref().is_none_or(|n| n == spec.name))
                .cloned()
                .collect();
            tasks.push(tokio::spawn(connection::run(connection::Task {
                shared: s.clone(),
                subs,
                events: events.clone(),
                shutdown: shutdown.subscribe(),
            })));
            shared.push(s);
        }
        let first = async {
            for s in &shared {
                let mut attempted = s.attempted.subscribe();
                let _ = attempted.wait_for(|a| *a).await;
            }
        };
        let _ = tokio::time::timeout(START_WAIT, first).await;
        McpHub {
            servers: shared,
            tasks,
            shutdown,
        }
    }

    /// The tools of every connected server, named uniquely, honouring each
    /// server's `tool_filter`. Tools of a disconnected server stay listed
    /// (calls fail with [`McpError::Unavailable`] until it is back), so the
    /// model's tool list does not flap during a restart.
    pub fn tools(&self) -> Vec<ToolInfo> {
        let lists: Vec<Vec<rmcp::model::Tool>> = self.servers.iter().map(|s| s.with_tools(|t| t.to_vec())).collect();
        let input: Vec<tools::ServerTools<'_>> = self
            .servers
            .iter()
            .zip(&lists)
            .map(|(s, list)| tools::ServerTools {
                server: &s.name,
                filter: s.spec.tool_filter.as_deref(),
                tools: list,
            })
            .collect();
        tools::name_tools(&input)
    }

    /// Calls a tool by its model-facing name.
    pub async fn call_tool(&self, name: &str, arguments: Map<String, Value>) -> Result<ToolOutput, McpError> {
        let Some(info) = self.tools().into_iter().find(|t| t.name == name) else {
            return Err(McpError::UnknownTool { name: name.to_owned() });
        };
        let unavailable = || McpError::Unavailable {
            server: info.server.clone(),
            tool: info.tool.clone(),
        };
        let server = self
            .servers
            .iter()
            .find(|s| s.name == info.server)
            .ok_or_else(unavailable)?;
        let peer = server.peer().ok_or_else(unavailable)?;
        let mut params = CallToolRequestParams::new(info.tool.clone());
        params.arguments = Some(arguments);
        // The tool call's span (when traces are exported) continues at the
        // server: MCP's `_meta.traceparent` (SEP-414, the 2026-07-28 spec).
        if let Some(tp) = crate::telemetry::traceparent(&tracing::Span::current()) {
            rmcp::model::RequestParamsMeta::set_traceparent(&mut params, &tp);
        }
        let result = peer.call_tool(params).await.map_err(|source| match source {
            rmcp::service::ServiceError::TransportClosed | rmcp::service::ServiceError::TransportSend(_) => {
                McpError::Lost {
                    server: info.server.clone(),
                    tool: info.tool.clone(),
                }
            }
            source => McpError::Call {
                server: info.server.clone(),
                tool: info.tool.clone(),
                source,
            },
        })?;
        let raw = serde_json::to_value(&result).unwrap_or_default();
        Ok(ToolOutput {
            text: tools::render_result(&raw),
            is_error: result.is_error == Some(true),
            raw,
        })
    }

    /// Each server's state.
    pub fn servers(&self) -> Vec<ServerStatus> {
        self.servers.iter().map(|s| s.status()).collect()
    }

    /// Stops every server: close its stdin, then SIGTERM, then SIGKILL, all
    /// servers at once, in at most [`SHUTDOWN_WAIT`].
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let mut tasks = self.tasks;
        let all = async {
            for task in &mut tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, all).await.is_err() {
            tracing::warn!("MCP servers did not stop in {SHUTDOWN_WAIT:?}; abandoning them to kill_on_drop");
            for task in &tasks {
                task.abort();
            }
        }
    }
}
