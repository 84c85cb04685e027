//! Sandboxes for code the model writes: landlock, bubblewrap, or none.
//!
//! This module owns the policy type (decoded from `sandbox/*.yaml` profiles
//! or inline agent config by [`crate::config`]) and, in its submodules, the
//! backends that enforce it. [`run`] is the one entry point: it runs one
//! command under a policy and returns what happened, in two steps: a
//! per-backend *prepare* (everything decided and opened in the parent:
//! identity, environment, Landlock ruleset, seccomp programs, bwrap's
//! command line) and one *supervise* (spawn, capture, timeout, kill).
//!
//! It must never restrict the daemon itself: every restriction is built in
//! the parent and applied in the forked child just before `exec`. Whatever
//! the backend, every run gets a cleared environment with an explicit
//! minimal one, rlimits, `no_new_privs`, the one seccomp policy, its own
//! session (the timeout kills the whole process group), capped output, and
//! never runs as uid 0: with agentd as root it runs as the agent's own
//! unprivileged user ([`Identity`]), and a run with no such user is refused.
//!
//! Where things live: [`landlock`] builds rulesets, [`bwrap`] builds
//! bubblewrap command lines, [`helper`] is bwrap+landlock's inner half,
//! [`seccomp`] is the system-call policy of every backend, `limits` is
//! everything between fork and exec, [`output`] caps captured output,
//! [`egress`] is domain-rule networking (a per-run proxy started in
//! `prepare`, finished after the run, its records in [`RunOutcome`]);
//! `agentd sandbox run` is [`crate::cli::sandbox`] and workdir archives are
//! [`crate::snapshots::archive`]. Containment: [`cgroup`] gives each run a
//! cgroup, [`contain`] ties runs to their agent and state dir and cleans
//! what dead ones left, [`quota`] watches the workdir quota.

pub mod bwrap;
pub mod cgroup;
pub mod contain;
pub(crate) mod dialer;
pub mod egress;
pub mod helper;
pub mod landlock;
mod limits;
pub mod output;
mod policy;
pub mod quota;
pub mod seccomp;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use contain::Containment;
pub use limits::Identity;
pub use policy::*;

use limits::ChildSetup;
use output::Capture;

/// What one sandboxed run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The exit code, when the process exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did (SIGKILL after a timeout).
    pub signal: Option<i32>,
    /// Captured stdout, at most `limits.output_bytes` of it: head and tail
    /// with a note of what was cut in between.
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    pub timed_out: bool,
    /// Whether stdout or stderr was cut.
    pub truncated: bool,
    /// Why agentd stopped the run (or flagged it after it ended), when it
    /// did for a reason other than the timeout: the workdir quota.
    #[serde(default)]
    pub stopped: Option<String>,
    /// Every connection attempt through the egress proxy (domain rules
    /// only), in the order they ended.
    #[serde(default)]
    pub egress: Vec<egress::Connection>,
}

impl RunOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("nothing to run: the command is empty")]
    EmptyCommand,
    #[error("workdir {path}: {source}")]
    Workdir { path: PathBuf, source: std::io::Error },
    #[error("sandbox path {path} must be absolute")]
    RelativePath { path: PathBuf },
    #[error("sandbox path {path}: {source}")]
    Path { path: PathBuf, source: std::io::Error },
    #[error(
        "this kernel ({kernel}, Landlock ABI {abi}) cannot enforce the policy: it lacks {missing}; \
         refusing to run. Use a bwrap profile (e.g. strict), a newer kernel, or set best_effort: true \
         to run with whatever the kernel enforces"
    )]
    LandlockUnsupported { abi: i32, kernel: String, missing: String },
    #[error("building the landlock ruleset: {0}")]
    Landlock(#[from] ::landlock::RulesetError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(
        "bubblewrap (bwrap) is not installed: install it (apt-get install bubblewrap) or use \
         backend landlock"
    )]
    BwrapMissing,
    #[error(
        "agentd runs as root, and sandboxed code never does: this run has no unprivileged user \
         (uid {uid}, gid {gid}); give the workdir to an ordinary user or name one (--uid)"
    )]
    RootIdentity { uid: u32, gid: u32 },
    #[error("the run's cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("private /tmp: {0}")]
    PrivateTmp(std::io::Error),
    #[error("seccomp program for bwrap: {0}")]
    SeccompFd(std::io::Error),
    #[error(
        "network domain rules need a network namespace: use backend bwrap or bwrap+landlock \
         (backend {0} cannot keep code from the network around the proxy)"
    )]
    EgressNeedsNamespace(&'static str),
    #[error("the egress proxy: {0}")]
    Egress(std::io::Error),
    #[error("starting {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("waiting for {program}: {source}")]
    Wait { program: String, source: std::io::Error },
}

/// After the main process is gone (or killed), how long stragglers holding
/// the output pipes get before the capture stops waiting for them.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// What a caller adds to a policy for one run: read-only paths (skill
/// directories, the agentd binary), environment variables (the bridge's
/// descriptor number and token), descriptors the command inherits (the
/// bridge), and, when agentd runs as root, the unprivileged user the code
/// runs as. Later entries in `env` replace earlier ones and the minimal
/// environment's of the same name, so `PATH` can be extended.
#[derive(Debug, Clone, Default)]
pub struct Exposed {
    pub read_only: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    /// Inherited by the command at the same descriptor numbers, and by no
    /// other process agentd starts.
    pub inherit: Vec<Arc<OwnedFd>>,
    /// `(uid, gid)` to run as when agentd is root; without it, the
    /// workdir's owner (refused when that is root).
    pub user: Option<(u32, u32)>,
    /// The agent's cgroup scope, tmp naming and workdir quota.
    pub containment: Containment,
    /// Who answers the egress proxy's asks and journals its connections.
    pub egress: Option<egress::Hooks>,
}

/// Runs `argv` in `workdir` under `policy` and waits for it (or for the
/// timeout). `extra` adds read-only paths, environment, inherited
/// descriptors and the user to run as.
///
/// Safe to call from a `current_thread` runtime: the child is spawned from
/// the calling thread and nothing is handed to blocking-pool threads.
pub async fn run(
    policy: &SandboxPolicy,
    workdir: &Path,
    argv: &[String],
    extra: &Exposed,
) -> Result<RunOutcome, SandboxError> {
    let prepared = prepare(policy, workdir, argv, extra)?;
    supervise(prepared, policy).await
}

/// A run ready to spawn: the command with its pre-exec setup, and what must
/// live until it ends.
struct Prepared {
    cmd: tokio::process::Command,
    program: String,
    /// Removed when the run ends (landlock and none only).
    private_tmp: Option<PrivateTmp>,
    /// The run's own cgroup: killed when the run ends, removed when dropped.
    run_cgroup: cgroup::RunCgroup,
    /// The agent's workdir quota, watched during and checked after the run.
    quota: Option<quota::Quota>,
    workdir: PathBuf,
    /// Descriptors that must stay open until the spawn (bwrap's seccomp
    /// programs, the egress dialer).
    _keep: Vec<OwnedFd>,
    /// The run's egress proxy (domain rules only).
    proxy: Option<egress::Proxy>,
}

/// Decides everything about a run in the parent: who runs it, what it
/// sees, and the backend's command.
fn prepare(policy: &SandboxPolicy, workdir: &Path, argv: &[String], extra: &Exposed) -> Result<Prepared, SandboxError> {
    let Some(program) = argv.first() else {
        return Err(SandboxError::EmptyCommand);
    };
    let workdir = std::fs::canonicalize(workdir).map_err(|source| SandboxError::Workdir {
        path: workdir.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(&workdir).map_err(|source| SandboxError::Workdir {
        path: workdir.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SandboxError::Workdir {
            path: workdir,
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let read_only: Vec<PathBuf> = policy.read_only.iter().chain(&extra.read_only).cloned().collect();
    for p in read_only.iter().chain(&policy.writable) {
        if !p.is_absolute() {
            return Err(SandboxError::RelativePath { path: p.clone() });
        }
    }

    if let Network::Domains(_) = policy.network
        && matches!(policy.backend, Backend::Landlock | Backend::None)
    {
        return Err(SandboxError::EgressNeedsNamespace(policy.backend.name()));
    }
    // SAFETY: geteuid cannot fail.
    let identity = Identity::for_run(unsafe { libc::geteuid() }, extra.user, (meta.uid(), meta.gid()))?;
    if policy.backend == Backend::None {
        tracing::warn!(workdir = %workdir.display(), "sandbox backend none: running WITHOUT isolation");
    }

    let private_tmp = match policy.backend {
        Backend::Bwrap | Backend::BwrapLandlock => None,
        Backend::Landlock | Backend::None => Some(PrivateTmp::create(identity, extra.containment.tmp_prefix())?),
    };
    let tmpdir = private_tmp
        .as_ref()
        .map(|t| t.path.clone())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let mut env = minimal_env(&workdir, &tmpdir);
    if let Network::Domains(_) = policy.network {
        env.extend(egress::proxy_env());
    }
    for (k, v) in &extra.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    let writable = || {
        let mut w = policy.writable.clone();
        w.push(workdir.clone());
        w.push(tmpdir.clone());
        w
    };

    // containment: the run's own cgroup, joined in pre_exec; its pids.max
    // replaces RLIMIT_NPROC, which counts every process of the uid.
    let run_cgroup = extra.containment.run_cgroup(&policy.limits)?;
    let mut limits = policy.limits.clone();
    if run_cgroup.limits_processes() {
        limits.processes = None;
    }
    let mut setup = ChildSetup::new(&limits, identity);
    setup.with_cgroup(run_cgroup.join());
    for fd in &extra.inherit {
        setup.inherit(fd.as_raw_fd());
    }
    let mut keep = Vec::new();
    let mut proxy = None;
    let mut cmd = match policy.backend {
        Backend::None => command(program, &argv[1..]),
        Backend::Landlock => {
            let allowed = landlock::Allowed {
                read_only,
                writable: writable(),
            };
            let rules = landlock::Requirements::landlock_only(policy.network.sockets());
            setup.with_landlock(
                landlock::build(&allowed, &rules, policy.best_effort)?,
                policy.best_effort,
            );
            setup.with_seccomp(seccomp::policy(policy.network.sockets())?);
            command(program, &argv[1..])
        }
        Backend::Bwrap | Backend::BwrapLandlock => {
            let bwrap = bwrap::find()?;
            setup.for_bwrap();
            let mut bound = read_only;
            // Domain rules: the relay goes in front of the command (after
            // the landlock helper, so it is restricted too).
            let argv = match &policy.network {
                Network::Domains(rules) => {
                    let (p, dialer) =
                        egress::Proxy::start(rules.clone(), extra.egress.clone()).map_err(SandboxError::Egress)?;
                    let helper = helper::helper_exe()?;
                    bound.push(helper.clone());
                    setup.inherit(dialer.as_raw_fd());
                    let a = egress::relay::argv(&helper, dialer.as_raw_fd(), argv);
                    keep.push(dialer);
                    proxy = Some(p);
                    a
                }
                Network::Off | Network::On => argv.to_vec(),
            };
            let argv = argv.as_slice();
            let inner = if policy.backend == Backend::BwrapLandlock {
                // Inside bwrap, the helper restricts itself and execs argv.
                let helper = helper::helper_exe()?;
                let allowed = landlock::Allowed {
                    read_only: bound.clone(),
                    writable: writable(),
                };
                bound.push(helper.clone());
                helper::argv(&helper, &allowed, policy.network.sockets(), policy.best_effort, argv)
            } else {
                argv.to_vec()
            };
            let mut seccomp_fds = Vec::new();
            for program in seccomp::policy(policy.network.sockets())?.programs() {
                let fd = program_fd(program)?;
                setup.inherit(fd.as_raw_fd());
                seccomp_fds.push(fd.as_raw_fd());
                keep.push(fd);
            }
            let layout = bwrap::Layout {
                read_only: &bound,
                writable: &policy.writable,
                workdir: &workdir,
                network: policy.network.shares_host(),
                seccomp_fds: &seccomp_fds,
            };
            let mut c = tokio::process::Command::new(bwrap);
            c.args(bwrap::args(&layout, &inner)?);
            c
        }
    };
    // bwrap passes its own environment on: the variables (the bridge's
    // token among them) never appear on a command line.
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: `apply` only makes async-signal-safe system calls on values
    // prepared above, as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    Ok(Prepared {
        cmd,
        program: program.clone(),
        private_tmp,
        run_cgroup,
        quota: extra.containment.quota(),
        workdir,
        _keep: keep,
        proxy,
    })
}

fn command(program: &str, args: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    c.args(args);
    c
}

/// A seccomp program in a sealed-size memory file bwrap reads it from.
fn program_fd(program: &seccompiler::BpfProgram) -> Result<OwnedFd, SandboxError> {
    use std::io::{Seek, Write};
    let fd = nix::sys::memfd::memfd_create(c"agentd-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| SandboxError::SeccompFd(e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&seccomp::to_bytes(program))
        .and_then(|()| file.rewind())
        .map_err(SandboxError::SeccompFd)?;
    Ok(file.into())
}

/// Spawns the prepared command and watches it: output capture, timeout,
/// the workdir quota, and the kill of its whole process group and cgroup
/// when it ends or is dropped.
async fn supervise(prepared: Prepared, policy: &SandboxPolicy) -> Result<RunOutcome, SandboxError> {
    let Prepared {
        mut cmd,
        program,
        private_tmp,
        run_cgroup,
        quota,
        workdir,
        _keep,
        proxy,
    } = prepared;
    let mut quota = match quota {
        Some(q) => {
            Some(quota::Watch::start(quota::dirs(&workdir, private_tmp.as_ref().map(|t| t.path.as_path())), q).await)
        }
        None => None,
    };
    let mut stopped = None;
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| spawn_error(policy, &program, source))?;
    drop(_keep);
    let pgid = child.id().map(|p| p as libc::pid_t);
    // If this future is dropped mid-run (the agent's task was cancelled),
    // the whole group dies with it, not just the direct child.
    let mut group = GroupGuard(pgid);
    let mut out = Capture::new(policy.limits.output_bytes);
    let mut err = Capture::new(policy.limits.output_bytes);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();

    let mut status = None;
    let mut timed_out = false;
    {
        let reading = async {
            if let (Some(o), Some(e)) = (stdout.as_mut(), stderr.as_mut()) {
                tokio::join!(out.fill(o), err.fill(e));
            }
        };
        tokio::pin!(reading);
        let deadline = tokio::time::sleep(policy.timeout);
        tokio::pin!(deadline);
        let mut read_done = false;
        let mut draining = false;
        let mut counted = Duration::ZERO;
        loop {
            tokio::select! {
                st = child.wait(), if status.is_none() => {
                    status = Some(st);
                    // Background processes die with their parent: a fence
                    // leaves nothing running behind it.
                    kill_group(pgid);
                    run_cgroup.kill();
                    if read_done { break; }
                    draining = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                }
                _ = &mut reading, if !read_done => {
                    read_done = true;
                    if status.is_some() { break; }
                }
                reason = quota::exceeded(&mut quota), if status.is_none() && stopped.is_none() => {
                    stopped = Some(reason);
                    kill_group(pgid);
                    run_cgroup.kill();
                }
                _ = &mut deadline => {
                    if draining { break; }
                    // Time an operator took to answer an egress ask is not
                    // the code's: the deadline moves by it.
                    let waited = proxy.as_ref().map(egress::Proxy::waited).unwrap_or_default();
                    if waited > counted {
                        counted = waited;
                        deadline.as_mut().reset((started + policy.timeout + waited).into());
                        continue;
                    }
                    timed_out = true;
                    kill_group(pgid);
                    run_cgroup.kill();
                    draining = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                }
            }
            if read_done && status.is_some() {
                break;
            }
        }
    }
    let status = match status {
        Some(st) => st,
        None => {
            kill_group(pgid);
            child.wait().await
        }
    }
    .map_err(|source| SandboxError::Wait {
        program: program.clone(),
        source,
    })?;
    let duration = started.elapsed();
    drop(run_cgroup);
    if let (None, Some(q)) = (&stopped, quota.as_mut()) {
        stopped = q.check().await;
    }
    // Reaped and its group killed above: disarm so a recycled pgid is
    // never signalled.
    group.0 = None;
    drop(private_tmp);
    let egress = match proxy {
        Some(p) => p.finish().await,
        None => Vec::new(),
    };

    let (stdout, cut_out) = out.into_text();
    let (stderr, cut_err) = err.into_text();
    Ok(RunOutcome {
        exit_code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        duration,
        timed_out,
        truncated: cut_out || cut_err,
        stopped,
        egress,
    })
}

/// The sandbox's PATH: system directories only.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The whole environment a sandboxed process gets: nothing of the daemon's
/// (API keys live there).
fn minimal_env(workdir: &Path, tmpdir: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), workdir.display().to_string()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TMPDIR".into(), tmpdir.display().to_string()),
    ]
}

fn kill_group(pgid: Option<libc::pid_t>) {
    if let Some(pgid) = pgid.filter(|p| *p > 0) {
        // SAFETY: signalling our own child's process group (the child called
        // setsid, so pgid == its pid); ESRCH when it is already gone.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Kills the sandbox's process group when dropped.
struct GroupGuard(Option<libc::pid_t>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn spawn_error(policy: &SandboxPolicy, program: &str, source: std::io::Error) -> SandboxError {
    if policy.backend == Backend::Landlock && source.raw_os_error() == Some(libc::ENOTSUP) {
        return SandboxError::LandlockUnsupported {
            abi: landlock::kernel_abi(),
            kernel: landlock::kernel_release(),
            missing: "Landlock enforcement (the ruleset was not applied)".into(),
        };
    }
    SandboxError::Spawn {
        program: program.to_string(),
        source,
    }
}

/// A private temporary directory for backends without a mount namespace,
/// removed when dropped.
struct PrivateTmp {
    path: PathBuf,
}

impl PrivateTmp {
    fn create(identity: Identity, prefix: &str) -> Result<PrivateTmp, SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last_err = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{prefix}{}-{n}-{nanos:x}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    if let Identity::Switch { uid, gid } = identity {
                        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(SandboxError::PrivateTmp)?;
                    }
                    return Ok(PrivateTmp { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(SandboxError::PrivateTmp(e)),
            }
        }
        Err(SandboxError::PrivateTmp(last_err.unwrap_or_else(|| {
            std::io::Error::other("no free name for a private tmp directory")
        })))
    }
}

impl Drop for PrivateTmp {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "removing private tmp");
        }
    }
}
