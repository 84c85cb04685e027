//! The egress relay: `agentd __sandbox-relay`, the one piece of egress
//! that runs inside the sandbox's network namespace.
//!
//! bwrap's fresh network namespace has only `lo`, and the seccomp policy
//! refuses `socket(AF_UNIX)`, so code cannot dial a Unix socket to the
//! proxy. The relay listens on `127.0.0.1:PORT` inside the namespace
//! (before the command starts, so the port is never free for the code to
//! take first), forks, and the parent execs the command. The child
//! accepts connections and hands each accepted TCP socket, unread, to the
//! proxy outside through the inherited dialer (`SCM_RIGHTS`). It never
//! reads or writes a byte itself: the proxy speaks directly on the
//! socket.
//!
//! The relay runs as the sandbox's user and the code can kill it, or send
//! its own descriptors through the dialer. Neither gains anything: the
//! dialer leads only to the proxy, which applies the policy to whatever
//! arrives, and the namespace has no other way out.
//!
//! Command line: `agentd __sandbox-relay DIALER_FD PORT -- CMD [ARG]...`.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The hidden subcommand the agentd binary dispatches to [`main`].
pub const SUBCOMMAND: &str = "__sandbox-relay";

/// The proxy's port inside the namespace.
pub const PORT: u16 = 3128;

const EXIT_SETUP_FAILED: i32 = 126;

/// The relay's command line in front of `command`.
pub fn argv(helper: &std::path::Path, dialer: RawFd, command: &[String]) -> Vec<String> {
    let mut a = vec![
        helper.display().to_string(),
        SUBCOMMAND.to_string(),
        dialer.to_string(),
        PORT.to_string(),
        "--".into(),
    ];
    a.extend(command.iter().cloned());
    a
}

/// Runs the relay with the arguments after the subcommand. Only returns
/// (with an exit status) when something failed; on success it execs.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    match listen_fork_exec(args) {
        Ok(never) => match never {},
        Err(msg) => {
            eprintln!("agentd egress relay: {msg}");
            EXIT_SETUP_FAILED
        }
    }
}

enum Never {}

fn listen_fork_exec(args: impl IntoIterator<Item = OsString>) -> Result<Never, String> {
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let [fd, port, dashes, command @ ..] = args.as_slice() else {
        return Err("usage: __sandbox-relay DIALER_FD PORT -- CMD [ARG]...".into());
    };
    let fd: RawFd = fd.parse().map_err(|_| format!("bad descriptor {fd:?}"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let Some((program, rest)) = command.split_first().filter(|_| dashes == "--") else {
        return Err("no command after --".into());
    };
    // SAFETY: the parent passed this descriptor for the relay; nothing
    // else in this process owns it.
    let dialer = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("listen on 127.0.0.1:{port}: {e}"))?;
    // SAFETY: this process is single-threaded here (nothing but argument
    // parsing ran), so the child may do anything.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            // The run's output pipes are the command's: the relay holds
            // none of them open.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
            }
            serve(&listener, &dialer);
            std::process::exit(0)
        }
        nix::unistd::ForkResult::Parent { .. } => {
            // The command gets neither the listener nor the dialer.
            drop(listener);
            drop(dialer);
            let err = std::process::Command::new(program).args(rest).exec();
            Err(format!("exec {program}: {err}"))
        }
    }
}

/// Hands every accepted connection to the proxy until the proxy is gone.
fn serve(listener: &std::net::TcpListener, dialer: &OwnedFd) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let fds = [conn.as_raw_fd()];
        let iov = [std::io::IoSlice::new(&[0u8])];
        let sent = sendmsg::<()>(
            dialer.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
        if sent.is_err() {
            return;
        }
    }
}
