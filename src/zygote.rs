//! The zygote: the small single-threaded process agent processes are forked
//! from (as Android and Chromium start theirs).
//!
//! Why: a child `exec`'d from agentd's position-independent executable
//! loads, links and relocates it anew, and relocation rewrites 1.5 MiB of
//! `.data.rel.ro` that then stays private to every agent. A child forked
//! from the zygote shares all of that with it (copy-on-write) and pays only
//! for what it writes itself; it also skips the exec, the dynamic linking
//! and the relocation, which is most of the time an agent takes to start.
//!
//! Shape: the supervisor starts `agentd __zygote` (exec'd, so its layout is
//! randomised anew at every supervisor start and differs from the
//! supervisor's), from its main thread, with `PR_SET_PDEATHSIG` = SIGKILL.
//! The zygote never starts a thread and never logs; what it sets up before
//! forking is what every agent would set up the same way (its logging), so
//! agents share those pages. It holds no RNG state; the one hash seed it
//! draws (std's, for the log filter's tables) is then shared by its agents'
//! maps, as after any fork: random per zygote, never shown outside. A request is one
//! `SOCK_SEQPACKET` datagram on fd 3: the agent's name, with the child's
//! stdin, stdout and stderr passed by `SCM_RIGHTS`; the answer is the new
//! pid (or `-errno`).
//!
//! The zygote forks with `clone(CLONE_PARENT)`: the agent is the
//! *supervisor's* child, not the zygote's, exactly as an exec'd one. So the
//! supervisor waits for it (SIGCHLD, `waitpid`), its `PR_SET_PDEATHSIG`
//! fires when the supervisor's main thread dies (the thread that started
//! the zygote is the parent the kernel records), and a dead zygote leaves
//! every running agent alone. No subreaper is needed (one would also adopt
//! every orphan of every MCP server). The child then sets what an exec'd
//! child gets from `Command` in [`crate::supervisor`]: the death signal
//! (checked against an already-dead supervisor), its own process group,
//! the three descriptors on 0/1/2 and every other descriptor closed, an
//! empty signal mask; environment, working directory, rlimits, cgroup and
//! uid are the zygote's, which are the supervisor's at the zygote's start
//! (minus systemd's variables, as for exec'd children). Its command line
//! is made `agentd agent --name NAME`, as an exec'd agent's reads (see
//! [`Title`]). Then it runs the same `agentd agent` entry an exec'd child
//! runs.
//!
//! Nothing near model code comes from here: sandbox runs keep exec'ing
//! (bwrap, `agentd __sandbox-…`), so each gets a fresh layout.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The hidden subcommand that runs the zygote.
pub const SUBCOMMAND: &str = "__zygote";

/// The zygote's end of its socket.
const SOCKET_FD: RawFd = 3;

/// Longest agent name (the config allows 64 bytes).
const MAX_NAME: usize = 64;

/// How long the supervisor waits for an answer before it gives the zygote up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The zygote's `main`: serves fork requests until the supervisor closes
/// its end (or dies: then the death signal ends the zygote first).
pub fn main() -> i32 {
    // SAFETY: getppid cannot fail.
    let supervisor = unsafe { libc::getppid() };
    // SAFETY: fd 3 was set up by the supervisor; a zygote started any other
    // way finds no socket there and refuses to run.
    let sock = unsafe { BorrowedFd::borrow_raw(SOCKET_FD) };
    if !matches!(
        nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::SockType),
        Ok(nix::sys::socket::SockType::SeqPacket)
    ) {
        eprintln!("agentd: {SUBCOMMAND} is started by the supervisor only");
        return 2;
    }
    // Logging as every agent sets it up, once here: its tables (the span
    // registry's 4,096-slot shard array alone is 32 KiB) are then shared by
    // every agent instead of written anew in each. Not when traces are
    // exported: their exporter starts threads, which the zygote never has;
    // each agent then sets its logging up itself.
    let logging = if crate::telemetry::configured() {
        crate::cli::AgentLogging::SetUp
    } else {
        crate::logging::init(crate::logging::LogFormat::Text, crate::cli::AGENT_LOG_FILTER, None);
        crate::cli::AgentLogging::Inherited
    };
    // The cgroup hierarchy is the supervisor's (the zygote sits in its
    // cgroup): found once here instead of in every agent.
    let _ = crate::sandbox::cgroup::Hierarchy::detected();
    let title = Title::of_this_process();
    loop {
        let (name, fds) = match receive(sock) {
            Ok(Some(req)) => req,
            Ok(None) => return 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        let answer: i32 = match (std::str::from_utf8(&name), <[OwnedFd; 3]>::try_from(fds)) {
            (Ok(name), Ok(fds)) if valid_name(name) => {
                // Built before the fork: the child only reads it.
                let text = title.as_ref().map(|t| t.text(name));
                fork_agent(name, &fds, supervisor, logging, title.as_ref().zip(text.as_deref()))
            }
            _ => -libc::EINVAL,
        };
        // The descriptors were dropped (closed) here; the child has its copies.
        if nix::sys::socket::send(
            SOCKET_FD,
            &answer.to_ne_bytes(),
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
        .is_err()
        {
            return 1;
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One request: the name and the descriptors; `None` at end of stream.
fn receive(sock: BorrowedFd<'_>) -> nix::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; MAX_NAME + 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors here;
            // nothing else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let (len, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC));
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Ok(Some((Vec::new(), fds)));
    }
    Ok(Some((buf[..len].to_vec(), fds)))
}

/// Forks one agent; its pid, or `-errno`.
fn fork_agent(
    name: &str,
    fds: &[OwnedFd; 3],
    supervisor: libc::pid_t,
    logging: crate::cli::AgentLogging,
    title: Option<(&Title, &[u8])>,
) -> i32 {
    // SAFETY: a fork-like clone (no new stack, no shared memory) of a
    // single-threaded process: the child owns a copy of everything and
    // continues below. CLONE_PARENT makes the supervisor its parent.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_PARENT | libc::SIGCHLD, 0, 0, 0, 0) };
    match pid {
        0 => agent_child(name, fds, supervisor, logging, title),
        p if p > 0 => p as i32,
        _ => -std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EAGAIN),
    }
}

/// In the new process: becomes what an exec'd agent child is, then runs
/// the agent. Never returns.
fn agent_child(
    name: &str,
    fds: &[OwnedFd; 3],
    supervisor: libc::pid_t,
    logging: crate::cli::AgentLogging,
    title: Option<(&Title, &[u8])>,
) -> ! {
    // SAFETY: plain system calls on this process's own state; the zygote
    // is single-threaded, so nothing here can be half-held by another thread.
    unsafe {
        // Dies with the supervisor's main thread (this process's parent).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
            libc::_exit(1);
        }
        // The supervisor may have died before prctl: then nobody would
        // ever signal us.
        if libc::getppid() != supervisor {
            libc::_exit(1);
        }
        if libc::setpgid(0, 0) != 0 {
            libc::_exit(1);
        }
        // Received descriptors are numbered above 2 (the zygote keeps 0-2
        // open), so dup2 always makes a new, inheritable copy.
        for (target, fd) in fds.iter().enumerate() {
            if libc::dup2(fd.as_raw_fd(), target as RawFd) < 0 {
                libc::_exit(1);
            }
        }
        // Everything else (the zygote's socket, the received originals) is
        // not the agent's.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            libc::_exit(1);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // `ps` and `top` name the process by the agent (comm: 15 bytes).
        let mut comm = [0u8; 16];
        for (dst, src) in comm.iter_mut().zip(b"agentd:".iter().chain(name.as_bytes()).take(15)) {
            *dst = *src;
        }
        libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    // `ps -f`, `pgrep -f` and /proc/PID/cmdline show what an exec'd agent
    // showed, not the zygote's command line.
    if let Some((title, text)) = title {
        title.set(text);
    }
    // `fds` are closed already; exit below returns to no frame that would
    // drop them again.
    let code = crate::cli::agent_process(name, logging);
    std::process::exit(code)
}

/// `struct prctl_mm_map` of `<linux/prctl.h>` (the libc crate has none).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

const PR_SET_MM: libc::c_int = 35;
const PR_SET_MM_MAP: libc::c_ulong = 14;

/// Points an agent's command line (what /proc/PID/cmdline, `ps -f` and
/// `pgrep -f` read) at its own `agentd agent --name NAME`, instead of
/// the zygote's. Not by writing over the inherited argv strings, as
/// `setproctitle` does: that page is shared with the zygote until written,
/// and writing it cost every agent 4–8 KiB. The title is built in the
/// zygote before the fork (a page the child only reads), and the child
/// moves `arg_start`/`arg_end` to it with `PR_SET_MM_MAP`, which needs no
/// privilege (unlike the single-field `PR_SET_MM` options).
#[derive(Debug)]
struct Title {
    /// The zygote's map, from /proc/self/stat (fields 26–28 and 45–51).
    map: MmMap,
    /// The zygote's `argv[0]`, kept as the agents' own.
    argv0: Vec<u8>,
}

impl Title {
    fn of_this_process() -> Option<Title> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        // Fields are numbered from 1; these start at field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Title {
            map: MmMap {
                start_code: field(26)?,
                end_code: field(27)?,
                start_stack: field(28)?,
                start_data: field(45)?,
                end_data: field(46)?,
                start_brk: field(47)?,
                brk: 0,
                arg_start: field(48)?,
                arg_end: field(49)?,
                env_start: field(50)?,
                env_end: field(51)?,
                auxv: 0,
                auxv_size: 0,
                exe_fd: u32::MAX,
            },
            argv0: std::os::unix::ffi::OsStrExt::as_bytes(std::env::args_os().next()?.as_os_str()).to_vec(),
        })
    }

    /// `ARGV0 agent --name NAME`, NUL-separated and terminated.
    fn text(&self, name: &str) -> Vec<u8> {
        let mut t = self.argv0.clone();
        t.push(0);
        t.extend_from_slice(b"agent\0--name\0");
        t.extend_from_slice(name.as_bytes());
        t.push(0);
        t
    }

    /// In the forked child, before it allocates: makes `text` (alive for
    /// the rest of the process) its command line. Left as it was if the
    /// kernel refuses.
    fn set(&self, text: &[u8]) {
        let mut map = self.map;
        map.arg_start = text.as_ptr() as u64;
        map.arg_end = map.arg_start + text.len() as u64;
        // SAFETY: sbrk(0) only reads the current break; prctl reads `map`,
        // which lives across the call; `text` outlives the process (the
        // caller never frees it before exiting).
        unsafe {
            map.brk = libc::sbrk(0) as u64;
            libc::prctl(
                PR_SET_MM,
                PR_SET_MM_MAP,
                &map as *const MmMap as libc::c_ulong,
                std::mem::size_of::<MmMap>() as libc::c_ulong,
                0,
            );
        }
    }
}

/// The supervisor's handle on a running zygote.
#[derive(Debug)]
pub struct Zygote {
    sock: OwnedFd,
    process: std::process::Child,
}

/// Why a fork through the zygote did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// The zygote is gone or does not answer: start another one.
    #[error("the zygote (pid {pid}) is gone: {source}")]
    Gone { pid: u32, source: std::io::Error },
    /// The zygote answered, but the fork itself failed (e.g. EAGAIN at a
    /// process limit): an exec would fail the same way.
    #[error("fork failed: {0}")]
    Fork(std::io::Error),
}

impl Zygote {
    /// Starts `agentd __zygote`. Call it from the supervisor's main thread:
    /// the agents it forks take the thread that started it as their parent.
    pub fn start() -> std::io::Result<Zygote> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg(SUBCOMMAND)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            // Only the supervisor talks to systemd; agents inherit this env.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            // A terminal's Ctrl-C is the supervisor's to handle.
            .process_group(0);
        let theirs_fd = theirs.as_raw_fd();
        let parent = std::process::id() as libc::pid_t;
        let nofile = crate::nofile::started_with();
        // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl, getppid,
        // setrlimit, _exit) run between fork and exec; nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                // Agents (and what they start) get agentd's original limit.
                crate::nofile::restore(nofile)?;
                if theirs_fd == SOCKET_FD {
                    if libc::fcntl(SOCKET_FD, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let process = cmd.spawn()?;
        drop(theirs);
        nix::sys::socket::setsockopt(
            &ours,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as libc::time_t, 0),
        )?;
        Ok(Zygote { sock: ours, process })
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Forks agent `name` with `stdio` as its stdin, stdout and stderr; its pid.
    pub fn fork(&mut self, name: &str, stdio: [BorrowedFd<'_>; 3]) -> Result<u32, ZygoteError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
        let pid = self.pid();
        let gone = |source: std::io::Error| ZygoteError::Gone { pid, source };
        let raw = stdio.map(|fd| fd.as_raw_fd());
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(name.as_bytes())],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| gone(e.into()))?;
        let mut answer = [0u8; 4];
        let n = loop {
            match recv(self.sock.as_raw_fd(), &mut answer, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(|e| gone(e.into()))?,
            }
        };
        if n != answer.len() {
            return Err(gone(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "it closed its socket",
            )));
        }
        match i32::from_ne_bytes(answer) {
            p if p > 0 => Ok(p as u32),
            e => Err(ZygoteError::Fork(std::io::Error::from_raw_os_error(-e))),
        }
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Reaped here, so a replaced zygote leaves no zombie.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
