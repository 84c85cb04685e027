//! Spawning one agent child and pumping its JSON lines.
//!
//! The child is forked by the zygote ([`crate::zygote`]): no exec, so it
//! shares the zygote's relocated image instead of relocating its own. When
//! no zygote can be had (it cannot start, or died and its replacement
//! cannot start either), the child is this executable re-run as
//! `agentd agent`, said once in the log. Either way it gets
//! `PR_SET_PDEATHSIG` (so it dies with the supervisor), its own process
//! group (so a terminal's Ctrl-C reaches only the supervisor, which then
//! stops children in order, and so anything a dead child left behind can be
//! killed as a group), stdin and stdout piped to the supervisor and its
//! stderr, and it is the supervisor's own child, waited for here.
//!
//! Children must be spawned from the supervisor's main thread: PDEATHSIG
//! fires when the *thread* that forked exits (for zygote children: the
//! thread that started the zygote), and the main thread lives as long as
//! the process.

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::Event;
use super::heartbeat::Ticker;
use super::restart::Exit;
use crate::protocol::{self, FromChild, ToChild};
use crate::zygote::{Zygote, ZygoteError};

/// The supervisor's handle on a running child.
pub struct ChildHandle {
    pub pid: u32,
    pub generation: u64,
    tx: mpsc::UnboundedSender<String>,
    /// Asks for heartbeat checks while the child lives; stops with it.
    _heartbeat: Ticker,
}

impl ChildHandle {
    /// Queues a line for the child's stdin. Fails silently when the child is
    /// gone: its exit event follows and is handled there.
    pub fn send(&self, msg: &ToChild) {
        let _ = self.tx.send(protocol::encode(msg));
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
    }

    /// Kills whatever is left in the child's process group.
    pub fn kill_group(&self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// How agent processes are made: through the zygote while there is one.
pub struct Spawner {
    zygote: Option<Zygote>,
    /// No zygote could be started: every agent is exec'd (said once).
    exec_only: bool,
}

impl Spawner {
    /// A spawner whose zygote starts with the first agent.
    pub fn new() -> Spawner {
        Spawner {
            zygote: None,
            exec_only: false,
        }
    }

    pub fn spawn(
        &mut self,
        agent: &str,
        generation: u64,
        start: &ToChild,
        heartbeat: std::time::Duration,
        events: mpsc::UnboundedSender<Event>,
    ) -> std::io::Result<ChildHandle> {
        let process = match self.fork(agent)? {
            Some(p) => p,
            None => exec(agent)?,
        };
        Ok(pump(agent, generation, start, heartbeat, events, process))
    }

    /// Forks `agent` through the zygote, starting (or restarting) it as
    /// needed; `None` when there is no zygote to be had.
    fn fork(&mut self, agent: &str) -> std::io::Result<Option<Process>> {
        if self.exec_only {
            return Ok(None);
        }
        for _ in 0..2 {
            let zygote = match &mut self.zygote {
                Some(z) => z,
                None => match Zygote::start() {
                    Ok(z) => {
                        tracing::debug!(pid = z.pid(), "zygote started");
                        self.zygote.insert(z)
                    }
                    Err(e) => {
                        tracing::warn!("cannot start the zygote ({e}); agents are started by exec from now on");
                        self.exec_only = true;
                        return Ok(None);
                    }
                },
            };
            let (stdin_r, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let (stdout_r, stdout_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let stderr = std::io::stderr();
            match zygote.fork(agent, [stdin_r.as_fd(), stdout_w.as_fd(), stderr.as_fd()]) {
                Ok(pid) => {
                    drop((stdin_r, stdout_w));
                    return Ok(Some(Process::forked(pid, stdin_w, stdout_r)?));
                }
                Err(ZygoteError::Fork(e)) => return Err(e),
                Err(e @ ZygoteError::Gone { .. }) => {
                    tracing::warn!("{e}; starting a new zygote");
                    self.zygote = None;
                }
            }
        }
        tracing::warn!("the new zygote failed too; agents are started by exec from now on");
        self.exec_only = true;
        Ok(None)
    }
}

/// A started child, whichever way: its pid, its stdin and stdout, and
/// what its exit will be.
struct Process {
    pid: u32,
    stdin: Box<dyn AsyncWrite + Send + Unpin>,
    stdout: Box<dyn AsyncRead + Send + Unpin>,
    exit: Pin<Box<dyn Future<Output = Exit> + Send>>,
}

impl Process {
    /// A child the zygote forked (our own child all the same: CLONE_PARENT).
    fn forked(pid: u32, stdin: OwnedFd, stdout: OwnedFd) -> std::io::Result<Process> {
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin)?;
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout)?;
        // A pidfd becomes readable when the process exits; being our child,
        // it stays a zombie (its pid not reused) until reaped below.
        // SAFETY: pidfd_open has no memory arguments.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) };
        // SAFETY: the pidfd was just made here; the AsyncFd owns it and
        // closes it only when dropped.
        let pidfd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let exit = Box::pin(async move {
            loop {
                let Ok(mut ready) = pidfd.readable().await else {
                    return Exit::Code(-1);
                };
                match reap(pid) {
                    Some(exit) => return exit,
                    None => ready.clear_ready(),
                }
            }
        });
        Ok(Process {
            pid,
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            exit,
        })
    }
}

/// Reaps `pid` if it has exited; `None` while it runs.
fn reap(pid: u32) -> Option<Exit> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(nix::unistd::Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(Exit::Code(code)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(Exit::Signal(sig as i32)),
        Ok(_) => None,
        Err(nix::errno::Errno::EINTR) => None,
        Err(_) => Some(Exit::Code(-1)),
    }
}

/// Starts `agentd agent --name AGENT` by exec (no zygote to fork from).
fn exec(agent: &str) -> std::io::Result<Process> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .arg("--name")
        .arg(agent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Only the supervisor talks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .process_group(0)
        .kill_on_drop(false);
    let parent = std::process::id() as libc::pid_t;
    let nofile = crate::nofile::started_with();
    // SAFETY: only async-signal-safe calls (prctl, getppid, setrlimit,
    // _exit) run between fork and exec; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            crate::nofile::restore(nofile)?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would
            // ever signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("child without pipes"));
    };
    Ok(Process {
        pid,
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        exit: Box::pin(async move {
            match child.wait().await {
                Ok(status) => Exit::from_status(status),
                Err(_) => Exit::Code(-1),
            }
        }),
    })
}

/// Feeds the child its lines and turns what it says, then its exit, into events.
fn pump(
    agent: &str,
    generation: u64,
    start: &ToChild,
    heartbeat: std::time::Duration,
    events: mpsc::UnboundedSender<Event>,
    process: Process,
) -> ChildHandle {
    let Process {
        pid,
        mut stdin,
        stdout,
        exit,
    } = process;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _ = tx.send(protocol::encode(start));

    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        // Dropping stdin closes it: the child reads EOF and exits.
    });

    let ticker = Ticker::start(agent, generation, heartbeat, events.clone());
    let name = agent.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    let ev = match serde_json::from_str::<FromChild>(&line) {
                        Ok(msg) => Event::Child {
                            agent: name.clone(),
                            generation,
                            msg,
                        },
                        Err(e) => Event::BadLine {
                            agent: name.clone(),
                            error: format!("{e}: {line}"),
                        },
                    };
                    if events.send(ev).is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Reading to EOF before waiting keeps the child's last messages
        // ahead of its exit in the event queue.
        let exit = exit.await;
        let _ = events.send(Event::Exited {
            agent: name,
            generation,
            exit,
        });
    });

    ChildHandle {
        pid,
        generation,
        tx,
        _heartbeat: ticker,
    }
}
