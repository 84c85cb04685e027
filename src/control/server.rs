//! Accepts control connections and forwards requests to the supervisor.
//!
//! Who may send requests is decided by credentials: the caller's
//! `SO_PEERCRED` uid must be agentd's own or root. Sandboxed code never has
//! either (with agentd as root it runs as its agent's own uid; with agentd
//! unprivileged its seccomp policy refuses `socket(2)` for Unix sockets and
//! bwrap does not even show it the state dir), so no decision here looks at
//! process ancestry, which proves nothing: orphans reparent to pid 1 and
//! pids are recycled.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::{Request, Response};

/// A request from an authorized caller, and the channel its response goes
/// back on.
pub type Envelope = (Request, oneshot::Sender<Response>);

/// Whether a caller with `uid` may control agentd running as `own_uid`.
pub fn authorized(uid: u32, own_uid: u32) -> bool {
    uid == own_uid || uid == 0
}

/// Longest request line accepted; anything longer is a protocol error.
const MAX_LINE: u64 = 64 * 1024;

/// Binds `path` (mode 0600) and serves until the process ends.
pub fn serve(path: &Path, requests: mpsc::UnboundedSender<Envelope>) -> std::io::Result<()> {
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // SAFETY: geteuid cannot fail.
            let own = unsafe { libc::geteuid() };
            let cred = stream.peer_cred().ok();
            let requests = requests.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let refusal = match cred {
                    None => Some("refused: the caller's credentials are unknown".to_string()),
                    Some(c) if !authorized(c.uid(), own) => {
                        tracing::warn!(uid = c.uid(), pid = c.pid(), "refused a control connection from another user");
                        Some(format!(
                            "refused: uid {} may not control this agentd (only uid {own} and root)",
                            c.uid()
                        ))
                    }
                    Some(_) => None,
                };
                if let Some(msg) = refusal {
                    // Take the request line (bounded, briefly) before
                    // answering, so the caller reads why instead of a reset.
                    let mut line = String::new();
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        (&mut reader).take(MAX_LINE).read_line(&mut line),
                    )
                    .await;
                    let _ = write_response(&mut write, &Response::error(msg)).await;
                    return;
                }
                loop {
                    let mut line = String::new();
                    let n = match (&mut reader).take(MAX_LINE).read_line(&mut line).await {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = write_response(&mut write, &Response::error(format!("bad request: {e}"))).await;
                            break;
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    if !line.ends_with('\n') && n as u64 >= MAX_LINE {
                        let _ = write_response(&mut write, &Response::error("request line too long")).await;
                        break;
                    }
                    if line.trim().is_empty() {
                        continue;
                    }
                    let response = match serde_json::from_str::<Request>(&line) {
                        Ok(req) => {
                            let (tx, rx) = oneshot::channel();
                            if requests.send((req, tx)).is_err() {
                                Response::error("agentd is shutting down")
                            } else {
                                rx.await.unwrap_or_else(|_| Response::error("agentd is shutting down"))
                            }
                        }
                        Err(e) => Response::error(format!("bad request: {e}; send DescribeInterface for the methods")),
                    };
                    if write_response(&mut write, &response).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

async fn write_response(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into());
    line.push('\n');
    w.write_all(line.as_bytes()).await
}
