//! Accepts control connections and forwards requests to the supervisor.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::admission::{self, Admission};
use super::{Request, Response};

/// A request, the caller's pid (from `SO_PEERCRED`, when the kernel gives
/// it), and the channel its response goes back on.
pub type Envelope = (Request, Option<i32>, oneshot::Sender<Response>);

/// Longest request line accepted; anything longer is a protocol error.
const MAX_LINE: u64 = 64 * 1024;

/// Binds `path` (mode 0600) and serves until the process ends.
pub fn serve(path: &Path, requests: mpsc::UnboundedSender<Envelope>) -> std::io::Result<()> {
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let admission = Admission::new();
    tokio::spawn(async move {
        loop {
            // Backs off on EMFILE and the like instead of spinning.
            let stream = admission::accept(&listener).await;
            // At the cap the longest-idle connection makes room; with every
            // connection busy, the newcomer is told and closed.
            let Some(ticket) = admission.admit() else {
                let (_, mut write) = stream.into_split();
                let busy = Response::error("too many control connections are busy; try again");
                let _ = tokio::time::timeout(Duration::from_secs(1), write_response(&mut write, &busy)).await;
                continue;
            };
            let peer = stream.peer_cred().ok().and_then(|c| c.pid());
            let requests = requests.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let mut line = String::new();
                    ticket.set_busy(false);
                    let mut limited = (&mut reader).take(MAX_LINE);
                    let read = tokio::select! {
                        r = tokio::time::timeout(admission::IDLE_TIMEOUT, limited.read_line(&mut line)) => r,
                        // A newer connection took this idle one's place.
                        () = ticket.evicted.notified() => break,
                    };
                    let Ok(read) = read else {
                        // Idle for too long: close.
                        break;
                    };
                    ticket.set_busy(true);
                    let n = match read {
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
                            if requests.send((req, peer, tx)).is_err() {
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

/// Writes one response line; a caller that stops reading is dropped after
/// the idle timeout rather than holding its connection forever.
async fn write_response(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into());
    line.push('\n');
    match tokio::time::timeout(admission::IDLE_TIMEOUT, w.write_all(line.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
