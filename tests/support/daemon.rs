//! A real `agentd CONFIG` process for tests: started with its own state
//! dir, observed through its control socket, and always cleaned up.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use agentd::control::{self, AgentStatus, Request, Response};

use super::{agentd_cmd, alive, wait_for};

pub struct Daemon {
    pub child: Child,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    /// Child pids seen, so Drop can make sure none outlives the test.
    seen: std::cell::RefCell<Vec<u32>>,
}

impl Daemon {
    /// Starts agentd on `config` with `state_dir`; waits until its control
    /// socket answers.
    pub fn start(config: &Path, state_dir: &Path, envs: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_args(config, state_dir, envs, &[])
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.state_dir.join(control::SOCKET_NAME)
    }

    pub fn try_request(&self, req: &Request) -> Result<Response, control::client::ClientError> {
        control::client::request(&self.socket(), req, Duration::from_secs(10))
    }

    pub fn request(&self, req: &Request) -> Response {
        self.try_request(req)
            .unwrap_or_else(|e| panic!("control request failed: {e}; log:\n{}", self.log_text()))
    }

    pub fn status(&self) -> Vec<AgentStatus> {
        let r = self.request(&Request::Status);
        let agents: Vec<AgentStatus> =
            serde_json::from_value(r.result.unwrap_or_default()["agents"].clone()).expect("status shape");
        self.seen.borrow_mut().extend(agents.iter().filter_map(|a| a.pid));
        agents
    }

    pub fn agent(&self, name: &str) -> Option<AgentStatus> {
        self.status().into_iter().find(|a| a.name == name)
    }

    /// Waits until `name` is running (ready) and returns its pid.
    pub fn running_pid(&self, name: &str) -> u32 {
        let pid = wait_for(Duration::from_secs(20), || {
            // Degraded (an MCP server down) is running too.
            self.agent(name)
                .filter(|a| a.state == "running" || a.state == "degraded")
                .and_then(|a| a.pid)
        });
        pid.unwrap_or_else(|| {
            panic!(
                "agent {name} never ran; status {:?}; log:\n{}",
                self.status(),
                self.log_text()
            )
        })
    }

    /// Waits until `pred` holds for the status list.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&[AgentStatus]) -> bool) -> Vec<AgentStatus> {
        wait_for(Duration::from_secs(20), || {
            let s = self.status();
            pred(&s).then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}; status {:?}; log:\n{}",
                self.status(),
                self.log_text()
            )
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("signal agentd");
    }

    /// Waits for agentd to exit (bounded) and returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = wait_for(timeout, || self.child.try_wait().ok().flatten());
        status.unwrap_or_else(|| panic!("agentd did not exit within {timeout:?}; log:\n{}", self.log_text()))
    }

    pub fn seen_pids(&self) -> Vec<u32> {
        self.seen.borrow().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Sandbox runs of a killed agentd: their processes and cgroups.
        agentd::sandbox::contain::at_supervisor_stop(&self.state_dir);
        for pid in self.seen.borrow().iter() {
            if alive(*pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Daemon {
    /// Like [`Daemon::start`] with extra arguments before the config path.
    pub fn start_with_args(config: &Path, state_dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> Daemon {
        Daemon::start_with_stdio(config, state_dir, envs, args, Stdio::null(), Stdio::null())
    }

    /// Like [`Daemon::start`], with agentd running as the unprivileged
    /// `uid` (gid the same, no other groups), as under systemd's
    /// `DynamicUser=`. The state dir is created and given to that user.
    pub fn start_as(uid: u32, config: &Path, state_dir: &Path, envs: &[(&str, &str)]) -> Daemon {
        std::fs::create_dir_all(state_dir).expect("state dir");
        std::os::unix::fs::chown(state_dir, Some(uid), Some(uid)).expect("chown state dir");
        Daemon::spawn(
            Some(uid),
            None,
            config,
            state_dir,
            envs,
            &[],
            Stdio::null(),
            Stdio::null(),
        )
    }

    /// Like [`Daemon::start_with_args`], with agentd's stdin and stdout
    /// given (a pipe or a pseudo-terminal, for the REPL).
    pub fn start_with_stdio(
        config: &Path,
        state_dir: &Path,
        envs: &[(&str, &str)],
        args: &[&str],
        stdin: Stdio,
        stdout: Stdio,
    ) -> Daemon {
        Daemon::spawn(None, None, config, state_dir, envs, args, stdin, stdout)
    }

    /// Like [`Daemon::start`], with agentd started under the open
    /// descriptor limits `nofile` (soft, hard).
    pub fn start_with_nofile(config: &Path, state_dir: &Path, nofile: (u64, u64)) -> Daemon {
        Daemon::spawn(
            None,
            Some(nofile),
            config,
            state_dir,
            &[],
            &[],
            Stdio::null(),
            Stdio::null(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        uid: Option<u32>,
        nofile: Option<(u64, u64)>,
        config: &Path,
        state_dir: &Path,
        envs: &[(&str, &str)],
        args: &[&str],
        stdin: Stdio,
        stdout: Stdio,
    ) -> Daemon {
        let log = state_dir.with_extension("log");
        std::fs::create_dir_all(state_dir).expect("state dir");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut all = vec!["--state-dir", state_dir.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        all.push(config.to_str().unwrap_or_default());
        let mut cmd = match uid {
            None => agentd_cmd(&all),
            Some(uid) => {
                let mut c = super::as_user(uid, &[]);
                c.arg(super::agentd_bin())
                    .args(&all)
                    .env_remove("AGENTD_STATE_DIR")
                    .env_remove("AGENTD_HOME")
                    .env_remove("NOTIFY_SOCKET");
                c
            }
        };
        cmd.env("RUST_LOG", "info").stdin(stdin).stdout(stdout).stderr(log_file);
        for (k, v) in envs {
            // An empty value removes the variable (RUST_LOG: the default filter).
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe and reads only `lim`.
            unsafe {
                cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &lim) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        }
        let child = cmd.spawn().expect("spawn agentd");
        drop(cmd);
        let d = Daemon {
            child,
            state_dir: state_dir.to_owned(),
            log,
            seen: Default::default(),
        };
        let up = wait_for(Duration::from_secs(20), || d.try_request(&Request::Health).ok());
        assert!(up.is_some(), "agentd did not come up; log:\n{}", d.log_text());
        d
    }
}

/// The ledger of a state dir, opened read-only (agentd may be writing it).
pub fn ledger(state: &Path) -> agentd::ledger::Ledger {
    agentd::ledger::Ledger::open_read_only(&state.join(agentd::ledger::FILE_NAME)).expect("ledger")
}

/// Every task in a state dir's ledger.
pub fn tasks(state: &Path) -> Vec<agentd::ledger::Task> {
    ledger(state)
        .list_tasks(&agentd::ledger::TaskFilter::default())
        .unwrap_or_default()
}

/// A task's journal.
pub fn steps(state: &Path, task: agentd::domain::TaskId) -> Vec<agentd::ledger::Step> {
    ledger(state).steps(task).unwrap_or_default()
}
