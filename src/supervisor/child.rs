//! Spawning one agent child and pumping its JSON lines.
//!
//! The child is this executable re-run as `agentd agent`. It gets
//! `PR_SET_PDEATHSIG` (so it dies with the supervisor) and its own process
//! group (so a terminal's Ctrl-C reaches only the supervisor, which then
//! stops children in order, and so anything a dead child left behind can be
//! killed as a group).
//!
//! Children must be spawned from the supervisor's main thread: PDEATHSIG
//! fires when the *thread* that forked exits, and the main thread lives as
//! long as the process.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::Event;
use super::heartbeat::Ticker;
use super::restart::Exit;
use crate::protocol::{self, FromChild, ToChild};

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

pub fn spawn(
    agent: &str,
    generation: u64,
    start: &ToChild,
    heartbeat: std::time::Duration,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<ChildHandle> {
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
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
    // between fork and exec; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
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
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _ = tx.send(protocol::encode(start));

    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            // Dropping stdin closes it: the child reads EOF and exits.
        });
    }

    let ticker = Ticker::start(agent, generation, heartbeat, events.clone());
    let stdout = child.stdout.take();
    let name = agent.to_owned();
    tokio::spawn(async move {
        if let Some(stdout) = stdout {
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
        }
        // Reading to EOF before waiting keeps the child's last messages
        // ahead of its exit in the event queue.
        let exit = match child.wait().await {
            Ok(status) => Exit::from_status(status),
            Err(_) => Exit::Code(-1),
        };
        let _ = events.send(Event::Exited {
            agent: name,
            generation,
            exit,
        });
    });

    Ok(ChildHandle {
        pid,
        generation,
        tx,
        _heartbeat: ticker,
    })
}
