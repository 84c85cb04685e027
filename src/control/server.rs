//! Accepts control connections and forwards requests to the supervisor.
//!
//! Who may send requests is decided by credentials: the caller's
//! `SO_PEERCRED` uid must be agentd's own or root, or the caller must be in
//! the operators' group (`control_group:`, checked with `SO_PEERCRED`'s gid
//! and `SO_PEERGROUPS`; the socket is then 0660 and that group's).
//! Sandboxed code never has any of these (with agentd as root it runs as its agent's own uid; with agentd
//! unprivileged its seccomp policy refuses `socket(2)` for Unix sockets and
//! bwrap does not even show it the state dir), so no decision here looks at
//! process ancestry, which proves nothing: orphans reparent to pid 1 and
//! pids are recycled.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::admission::{self, Admission};
use super::{Request, Response};

/// A request from an authorized caller, and the channel its response goes
/// back on.
pub type Envelope = (Request, oneshot::Sender<Response>);

/// Who may control agentd: its own uid, root, and the operators' group.
#[derive(Debug, Clone, Copy)]
pub struct Operators {
    pub own_uid: u32,
    pub group: Option<u32>,
}

impl Operators {
    /// Whether a caller with `uid`, primary `gid` and supplementary
    /// `groups` may send requests.
    pub fn admit(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == self.own_uid || uid == 0 || self.group.is_some_and(|g| gid == g || groups.contains(&g))
    }

    fn describe(&self) -> String {
        match self.group {
            Some(g) => format!("uid {}, root and group {g}", self.own_uid),
            None => format!("uid {} and root", self.own_uid),
        }
    }
}

/// The caller's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+); empty
/// when the kernel does not say.
fn peer_groups(stream: &tokio::net::UnixStream) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let mut groups = vec![0u32; 256];
    let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `groups` and
    // updates `len` to what it wrote.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<u32>());
    groups
}

/// Longest request line accepted; anything longer is a protocol error.
const MAX_LINE: u64 = 64 * 1024;

/// Binds `path` (mode 0600, or 0660 and the operators' group's) and serves
/// until the process ends.
pub fn serve(path: &Path, operators: Operators, requests: mpsc::UnboundedSender<Envelope>) -> std::io::Result<()> {
    let listener = UnixListener::bind(path)?;
    if let Some(g) = operators.group {
        std::os::unix::fs::chown(path, None, Some(g))?;
    }
    let mode = if operators.group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
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
            let cred = stream.peer_cred().ok();
            let groups = peer_groups(&stream);
            let requests = requests.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let refusal = match cred {
                    None => Some("refused: the caller's credentials are unknown".to_string()),
                    Some(c) if !operators.admit(c.uid(), c.gid(), &groups) => {
                        tracing::warn!(
                            uid = c.uid(),
                            pid = c.pid(),
                            "refused a control connection from another user"
                        );
                        Some(format!(
                            "refused: uid {} may not control this agentd (only {})",
                            c.uid(),
                            operators.describe()
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
                            // Admitted above, so the credentials are known.
                            let who = cred.map(|c| format!("uid {}", c.uid())).unwrap_or_default();
                            let req = req.with_caller(who);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agentds_uid_root_and_the_operators_group_are_admitted() {
        let alone = Operators {
            own_uid: 990,
            group: None,
        };
        assert!(alone.admit(990, 990, &[]));
        assert!(alone.admit(0, 0, &[]));
        assert!(!alone.admit(1000, 1000, &[990]));
        let with_group = Operators {
            own_uid: 990,
            group: Some(4242),
        };
        assert!(with_group.admit(1000, 4242, &[]));
        assert!(with_group.admit(1000, 1000, &[27, 4242]));
        assert!(!with_group.admit(1000, 1000, &[27]));
    }
}
