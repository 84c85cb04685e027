//! The tool bridge: a Unix socket the agent child serves so that code in
//! its sandbox can call the agent's MCP tools (generated Python bindings,
//! `agentd tool call`).
//!
//! Protocol: one JSON line per connection, `{"token", "tool",
//! "arguments"}`, answered by one JSON line, `{"ok": true, "text",
//! "is_error", "structured"}` or `{"ok": false, "error"}`, then the bridge
//! closes the connection.
//!
//! Who may call: the socket is reachable by name from the host (bwrap
//! binds it into the sandbox, landlock grants it), so the bridge checks
//! two things before it looks at a request:
//! - the peer (`SO_PEERCRED`, pid translated into our PID namespace by the
//!   kernel, bwrap's or not) must be a descendant of this agent child:
//!   sandbox runs are, other agents, the supervisor and users' shells are
//!   not;
//! - the request must carry the running task's token: 128 random bits
//!   made when the task starts, passed only in the sandbox's environment
//!   (`AGENTD_BRIDGE_TOKEN`) and dropped when the task ends. This shuts
//!   out the agent's own MCP servers (descendants, but without the token)
//!   and leftovers of an earlier task.
//!
//! Only the agent's own tools are callable (its [`McpHub`]); requests and
//! replies are capped and each call has a timeout (`bridge:` in the agent's
//! config). Every authenticated call, refused or not, is journaled as a
//! `bridge` step of the running task through the supervisor, with the
//! task's lease.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::Outbox;
use super::runner::clip;
use crate::config::BridgeSpec;
use crate::ledger::NewStep;
use crate::mcp::McpHub;
use crate::protocol::FromChild;

/// Environment variable with the socket's path, inside the sandbox.
pub const ENV_SOCKET: &str = "AGENTD_BRIDGE";
/// Environment variable with the running task's token, inside the sandbox.
pub const ENV_TOKEN: &str = "AGENTD_BRIDGE_TOKEN";

/// How long a caller may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub token: String,
    pub tool: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    fn refused(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            text: None,
            is_error: false,
            structured: None,
            error: Some(error.into()),
        }
    }
}

/// The running task the bridge is working for.
#[derive(Debug, Clone)]
struct Current {
    task: i64,
    lease: String,
    token: String,
}

/// The bridge of one agent child. Stops serving and removes its socket
/// when dropped.
pub struct Bridge {
    socket: PathBuf,
    current: Arc<Mutex<Option<Current>>>,
    server: JoinHandle<()>,
}

impl Bridge {
    /// Binds `socket` (replacing a stale one) and serves it.
    pub fn start(socket: PathBuf, hub: Arc<McpHub>, limits: BridgeSpec, outbox: Outbox) -> std::io::Result<Bridge> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&socket)?;
        // Sandboxed code may run as another user (the workdir's owner when
        // agentd is root): access is decided by the peer and token checks,
        // not by the file mode.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        let current: Arc<Mutex<Option<Current>>> = Arc::default();
        let shared = Arc::new(Shared {
            hub,
            limits,
            outbox,
            current: current.clone(),
            own_pid: std::process::id() as i32,
        });
        let server = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        tokio::spawn(shared.clone().serve(conn));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tool bridge: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Bridge {
            socket,
            current,
            server,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens the bridge for a task; returns the token its sandbox gets.
    pub fn begin(&self, task: i64, lease: &str) -> std::io::Result<String> {
        let token = random_token()?;
        if let Ok(mut c) = self.current.lock() {
            *c = Some(Current {
                task,
                lease: lease.to_owned(),
                token: token.clone(),
            });
        }
        Ok(token)
    }

    /// Closes the bridge to the finished task's token.
    pub fn end(&self) {
        if let Ok(mut c) = self.current.lock() {
            *c = None;
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct Shared {
    hub: Arc<McpHub>,
    limits: BridgeSpec,
    outbox: Outbox,
    current: Arc<Mutex<Option<Current>>>,
    own_pid: i32,
}

impl Shared {
    async fn serve(self: Arc<Self>, mut conn: UnixStream) {
        let reply = self.handle(&mut conn).await;
        let mut line = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        if line.len() as u64 > self.limits.max_reply {
            line = serde_json::to_string(&Reply::refused(format!(
                "the reply is {} bytes, more than the bridge allows ({} bytes, bridge.max_reply)",
                line.len(),
                self.limits.max_reply
            )))
            .unwrap_or_default();
        }
        line.push('\n');
        if let Err(e) = conn.write_all(line.as_bytes()).await {
            tracing::debug!(error = %e, "tool bridge: caller left before the reply");
        }
        let _ = conn.shutdown().await;
    }

    async fn handle(&self, conn: &mut UnixStream) -> Reply {
        let pid = conn.peer_cred().ok().and_then(|c| c.pid());
        let line = read_line(conn, self.limits.max_request).await;
        // Whatever the verdict, take the rest of the caller's input first:
        // closing on unread data resets the connection and the caller
        // would never read why it was refused.
        drain(conn).await;
        let Some(pid) = pid else {
            return Reply::refused("refused: the caller's process is unknown");
        };
        if !crate::procfs::is_descendant(pid, self.own_pid) {
            tracing::warn!(pid, "tool bridge: refused a call from outside the agent's sandbox");
            return Reply::refused("refused: calls are only accepted from this agent's sandbox");
        }
        let line = match line {
            Ok(l) => l,
            Err(msg) => return Reply::refused(msg),
        };
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                return Reply::refused(format!(
                    "unreadable request ({e}); send one JSON line {{\"token\", \"tool\", \"arguments\"}}"
                ));
            }
        };
        let current = self.current.lock().ok().and_then(|c| c.clone());
        let Some(current) = current else {
            return Reply::refused("refused: no task is running");
        };
        if !constant_time_eq(req.token.as_bytes(), current.token.as_bytes()) {
            tracing::warn!(pid, "tool bridge: refused a call with a wrong token");
            return Reply::refused("refused: wrong or expired token");
        }
        let started = Instant::now();
        let args_text = clip(&Value::Object(req.arguments.clone()).to_string());
        let reply = self.call(&req).await;
        let mut payload = json!({"name": req.tool, "arguments": args_text, "pid": pid});
        match (&reply.error, &reply.text) {
            (Some(e), _) => payload["error"] = json!(e),
            (None, Some(t)) => {
                payload["result"] = json!(clip(t));
                payload["is_error"] = json!(reply.is_error);
            }
            (None, None) => {}
        }
        self.outbox.send(FromChild::Step {
            task: current.task,
            lease: current.lease,
            step: NewStep {
                kind: "bridge".into(),
                payload,
                input_tokens: 0,
                output_tokens: 0,
                latency_ms: Some(started.elapsed().as_millis() as i64),
            },
        });
        reply
    }

    async fn call(&self, req: &Request) -> Reply {
        // Only this agent's tools: the hub knows no others.
        let tools = self.hub.tools();
        if !tools.iter().any(|t| t.name == req.tool) {
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            return Reply::refused(format!(
                "unknown tool {:?}; this agent's tools are: {}",
                req.tool,
                names.join(", ")
            ));
        }
        let timeout = self.limits.call_timeout;
        match tokio::time::timeout(timeout, self.hub.call_tool(&req.tool, req.arguments.clone())).await {
            Ok(Ok(out)) => Reply {
                ok: true,
                text: Some(out.text),
                is_error: out.is_error,
                structured: out.raw.get("structuredContent").cloned().filter(|v| !v.is_null()),
                error: None,
            },
            Ok(Err(e)) => Reply::refused(e.to_string()),
            Err(_) => Reply::refused(format!(
                "tool {} timed out after {} (bridge.call_timeout)",
                req.tool,
                humantime::format_duration(timeout)
            )),
        }
    }
}

/// Reads one request line of at most `max` bytes.
async fn read_line(conn: &mut UnixStream, max: u64) -> Result<Vec<u8>, String> {
    let mut reader = BufReader::new(conn).take(max + 1);
    let mut line = Vec::new();
    match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(format!("no request line within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.len() as u64 > max {
        return Err(format!(
            "refused: the request is larger than the bridge allows ({max} bytes, bridge.max_request)"
        ));
    }
    Ok(line)
}

/// Reads and drops what the caller still sends, until it shuts its side
/// (the clients do after the request) or a second passes.
async fn drain(conn: &mut UnixStream) {
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

fn random_token() -> std::io::Result<String> {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `len - filled` bytes into `buf` from `filled`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without an early exit, so timing says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client side, for `agentd tool call` (and the benchmark): one call,
/// blocking.
pub mod client {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    use serde_json::{Map, Value};

    use super::{Reply, Request};

    #[derive(Debug, thiserror::Error)]
    pub enum ClientError {
        #[error("cannot reach the tool bridge at {path}: {source}")]
        Connect { path: String, source: std::io::Error },
        #[error("talking to the tool bridge: {0}")]
        Io(#[from] std::io::Error),
        #[error("unreadable reply from the tool bridge: {0}")]
        Reply(#[from] serde_json::Error),
    }

    pub fn call(socket: &Path, token: &str, tool: &str, arguments: Map<String, Value>) -> Result<Reply, ClientError> {
        let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        let mut line = serde_json::to_vec(&Request {
            token: token.to_owned(),
            tool: tool.to_owned(),
            arguments,
        })?;
        line.push(b'\n');
        s.write_all(&line)?;
        // The bridge reads until our end is shut, then answers.
        s.shutdown(std::net::Shutdown::Write)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(serde_json::from_slice(&buf)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_descends_from_itself_but_not_from_a_child() {
        let me = std::process::id() as i32;
        assert!(crate::procfs::is_descendant(me, me));
        assert!(!crate::procfs::is_descendant(1, me));
        assert!(!crate::procfs::is_descendant(me, i32::MAX));
    }

    #[test]
    fn tokens_are_random_and_compare_exactly() {
        let a = random_token().expect("token");
        let b = random_token().expect("token");
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), &a.as_bytes()[1..]));
    }
}
