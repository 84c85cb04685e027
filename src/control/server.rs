//! Accepts control connections and forwards requests to the supervisor.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

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
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let peer = stream.peer_cred().ok().and_then(|c| c.pid());
            let requests = requests.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
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

async fn write_response(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into());
    line.push('\n');
    w.write_all(line.as_bytes()).await
}
