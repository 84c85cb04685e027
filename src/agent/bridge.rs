//! The tool bridge: how code in an agent's sandbox calls the agent's MCP
//! tools (generated Python bindings, `agentd tool call`).
//!
//! There is no socket with a name. For each sandbox run the bridge makes a
//! *dialer*: a `SOCK_SEQPACKET` socket pair whose one end the run inherits
//! as a file descriptor (its number in `AGENTD_BRIDGE_FD`), and no other
//! process agentd starts does. A caller makes a fresh stream socket pair
//! and sends one end through the dialer (`SCM_RIGHTS`); the bridge serves
//! that end. So nothing outside the run can reach the bridge: no path to
//! connect to exists, and with network off the seccomp policy refuses
//! `socket(2)` and `connect(2)` anyway, so the dialer is the only way out.
//!
//! Protocol on each connection: one JSON line `{"token", "tool",
//! "arguments"}`, answered by one JSON line, `{"ok": true, "text",
//! "is_error", "structured"}` or `{"ok": false, "error"}`, then the bridge
//! closes it.
//!
//! Before it looks at a request the bridge checks credentials, not
//! ancestry: the connection's `SO_PEERCRED` uid must be the run's (the
//! agent's own uid when agentd is root), and the request must carry the
//! running task's token: 128 random bits made when the task starts, passed
//! only in the sandbox's environment (`AGENTD_BRIDGE_TOKEN`, on no command
//! line) and dropped when the task ends, which shuts out leftovers of an
//! earlier task.
//!
//! Only the agent's own tools are callable (its [`McpHub`]); requests and
//! replies are capped and each call has a timeout (`bridge:` in the agent's
//! config). Every authenticated call, refused or not, is journaled as a
//! `bridge` step of the running task through the supervisor, with the
//! task's lease.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::Outbox;
use super::runner::clip;
use crate::config::BridgeSpec;
use crate::domain::{Lease, NewStep, StepKind, TaskId};
use crate::mcp::McpHub;
use crate::protocol::FromChild;

/// Environment variable with the dialer's descriptor number, inside the
/// sandbox.
pub const ENV_FD: &str = "AGENTD_BRIDGE_FD";
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
    task: TaskId,
    lease: Lease,
    token: String,
}

/// The bridge of one agent child.
pub struct Bridge {
    shared: Arc<Shared>,
}

impl Bridge {
    pub fn start(hub: Arc<McpHub>, limits: BridgeSpec, outbox: Outbox) -> Bridge {
        Bridge {
            shared: Arc::new(Shared {
                hub,
                limits,
                outbox,
                current: Arc::default(),
            }),
        }
    }

    /// Opens the bridge for a task; returns the token its sandbox gets.
    pub fn begin(&self, task: TaskId, lease: &Lease) -> std::io::Result<String> {
        let token = random_token()?;
        if let Ok(mut c) = self.shared.current.lock() {
            *c = Some(Current {
                task,
                lease: lease.clone(),
                token: token.clone(),
            });
        }
        Ok(token)
    }

    /// Closes the bridge to the finished task's token.
    pub fn end(&self) {
        if let Ok(mut c) = self.shared.current.lock() {
            *c = None;
        }
    }

    /// A dialer for one sandbox run whose processes run as `uid`: the end
    /// the run inherits. The bridge serves what arrives through it until
    /// every copy of that end is closed (the run is over).
    pub fn dialer(&self, uid: u32) -> std::io::Result<OwnedFd> {
        let (ours, theirs) = crate::sandbox::dialer::pair()?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                match receive(&ours).await {
                    Ok(Some(conns)) => {
                        for conn in conns {
                            tokio::spawn(shared.clone().serve(conn, uid));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "tool bridge: dialer failed");
                        break;
                    }
                }
            }
        });
        Ok(theirs)
    }
}

/// Waits for the next message on a dialer: the connections it carries, or
/// `None` at the end (every sender closed). Anything but a socket we can
/// serve is dropped here.
async fn receive(dialer: &AsyncFd<OwnedFd>) -> std::io::Result<Option<Vec<UnixStream>>> {
    let Some(fds) = crate::sandbox::dialer::receive(dialer).await? else {
        return Ok(None);
    };
    let mut conns = Vec::new();
    for fd in fds {
        let std = std::os::unix::net::UnixStream::from(fd);
        if std.set_nonblocking(true).is_ok()
            && let Ok(conn) = UnixStream::from_std(std)
        {
            conns.push(conn);
        }
    }
    Ok(Some(conns))
}

struct Shared {
    hub: Arc<McpHub>,
    limits: BridgeSpec,
    outbox: Outbox,
    current: Arc<Mutex<Option<Current>>>,
}

impl Shared {
    async fn serve(self: Arc<Self>, mut conn: UnixStream, uid: u32) {
        let reply = self.handle(&mut conn, uid).await;
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

    async fn handle(&self, conn: &mut UnixStream, uid: u32) -> Reply {
        let cred = conn.peer_cred().ok();
        let line = read_line(conn, self.limits.max_request).await;
        // Whatever the verdict, take the rest of the caller's input first:
        // closing on unread data resets the connection and the caller
        // would never read why it was refused.
        drain(conn).await;
        let Some(cred) = cred else {
            return Reply::refused("refused: the caller's credentials are unknown");
        };
        let pid = cred.pid().unwrap_or(0);
        if cred.uid() != uid {
            tracing::warn!(
                pid,
                uid = cred.uid(),
                "tool bridge: refused a connection made by another user"
            );
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
                kind: StepKind::Bridge,
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

    use serde_json::{Map, Value};

    use super::{Reply, Request};

    #[derive(Debug, thiserror::Error)]
    pub enum ClientError {
        #[error("cannot reach the tool bridge through descriptor {fd}: {source}")]
        Connect { fd: i32, source: std::io::Error },
        #[error("talking to the tool bridge: {0}")]
        Io(#[from] std::io::Error),
        #[error("unreadable reply from the tool bridge: {0}")]
        Reply(#[from] serde_json::Error),
    }

    /// One call through the dialer descriptor `dialer` (inherited from
    /// the sandbox run): a fresh socket pair, one end sent through.
    pub fn call(
        dialer: std::os::fd::BorrowedFd<'_>,
        token: &str,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<Reply, ClientError> {
        use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair};
        use std::os::fd::AsRawFd;
        let dial = |e: nix::Error| ClientError::Connect {
            fd: dialer.as_raw_fd(),
            source: e.into(),
        };
        let (mine, theirs) =
            socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).map_err(dial)?;
        let fds = [theirs.as_raw_fd()];
        sendmsg::<()>(
            dialer.as_raw_fd(),
            &[std::io::IoSlice::new(b"c")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(dial)?;
        drop(theirs);
        let mut s = UnixStream::from(mine);
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
