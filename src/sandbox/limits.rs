//! What happens in the forked child between `fork` and `exec`.
//!
//! Everything a sandboxed process is denied is decided here, in the parent,
//! and packed into a [`ChildSetup`] whose [`ChildSetup::apply`] runs inside
//! `pre_exec`. After `fork` only async-signal-safe system calls are allowed
//! (another thread of the parent may have held the allocator lock at fork
//! time), so `apply` never allocates: every value, path and BPF program is
//! prepared before the fork, and errors are raw `errno` values.
//!
//! This module must never apply any of this to the calling process itself.

use std::io;

use landlock::{RulesetCreated, RulesetStatus};

use super::SandboxError;
use super::policy::ResourceLimits;
use super::seccomp;

/// One `setrlimit` call, prepared before the fork.
#[derive(Debug, Clone, Copy)]
struct Rlimit {
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
}

/// Who the sandboxed process runs as. Never uid 0: there is no variant
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// agentd runs unprivileged: code keeps agentd's uid (it cannot take
    /// another), and the sandbox's namespaces, Landlock and seccomp keep it
    /// away from agentd's files and sockets.
    Inherit,
    /// agentd runs as root: code runs as this unprivileged user, the agent's
    /// own, which owns the agent's workdir and nothing else. The kernel then
    /// enforces the process limit (never for uid 0) and no capability of
    /// root is ever in reach.
    Switch { uid: u32, gid: u32 },
}

impl Identity {
    /// Decides who runs sandboxed code for a caller with `euid`: the given
    /// `user` when agentd is root, else the workdir's owner when that is not
    /// root. Root with neither is refused: sandboxed code never runs as uid 0.
    pub fn for_run(euid: u32, user: Option<(u32, u32)>, workdir_owner: (u32, u32)) -> Result<Identity, SandboxError> {
        if euid != 0 {
            return Ok(Identity::Inherit);
        }
        match user.unwrap_or(workdir_owner) {
            (uid, gid) if uid != 0 && gid != 0 => Ok(Identity::Switch { uid, gid }),
            (uid, gid) => Err(SandboxError::RootIdentity { uid, gid }),
        }
    }
}

/// The prepared child-side setup. Built in the parent, applied after fork.
#[derive(Debug)]
pub struct ChildSetup {
    parent_pid: libc::pid_t,
    rlimits: Vec<Rlimit>,
    identity: Identity,
    /// Empty the capability bounding set before switching users (not for
    /// bwrap, which builds its namespaces from a user namespace of its own).
    drop_bounding: bool,
    cap_last: libc::c_ulong,
    /// Installed here for backends without bwrap; bwrap loads it itself.
    seccomp: Option<&'static seccomp::Policy>,
    /// Descriptors the command inherits (the tool bridge, bwrap's seccomp
    /// programs): their close-on-exec flag is cleared after fork, so no
    /// other child of agentd ever inherits them.
    inherit: Vec<libc::c_int>,
    landlock: Option<RulesetCreated>,
    best_effort: bool,
}

impl ChildSetup {
    pub fn new(limits: &ResourceLimits, identity: Identity) -> ChildSetup {
        let mut rlimits = Vec::with_capacity(6);
        let mut push = |resource, value: Option<u64>| {
            if let Some(v) = value {
                rlimits.push(Rlimit {
                    resource,
                    soft: v,
                    hard: v,
                });
            }
        };
        push(libc::RLIMIT_AS, limits.memory_bytes);
        push(libc::RLIMIT_NPROC, limits.processes);
        push(libc::RLIMIT_FSIZE, limits.file_size_bytes);
        push(libc::RLIMIT_NOFILE, limits.open_files);
        push(libc::RLIMIT_CORE, Some(0));
        if let Some(cpu) = limits.cpu_seconds {
            // SIGXCPU at the soft limit gives a program a chance to say why
            // it died; the hard limit one second later is SIGKILL.
            rlimits.push(Rlimit {
                resource: libc::RLIMIT_CPU,
                soft: cpu,
                hard: cpu.saturating_add(1),
            });
        }
        ChildSetup {
            parent_pid: std::process::id() as libc::pid_t,
            rlimits,
            identity,
            drop_bounding: true,
            cap_last: cap_last_cap(),
            seccomp: None,
            inherit: Vec::new(),
            landlock: None,
            best_effort: false,
        }
    }

    /// bwrap builds its sandbox from a user namespace of its own.
    pub fn for_bwrap(&mut self) {
        self.drop_bounding = false;
    }

    pub fn with_seccomp(&mut self, policy: &'static seccomp::Policy) {
        self.seccomp = Some(policy);
    }

    /// Lets the command inherit `fd` (which must stay open until spawn).
    pub fn inherit(&mut self, fd: libc::c_int) {
        self.inherit.push(fd);
    }

    pub fn with_landlock(&mut self, ruleset: RulesetCreated, best_effort: bool) {
        self.landlock = Some(ruleset);
        self.best_effort = best_effort;
    }

    /// Runs in the child after fork, before exec. Async-signal-safe only.
    ///
    /// The order matters: leave the parent's session first (so the timeout
    /// can kill the whole group), then limits and identity while we still
    /// have the privileges to set them, then no_new_privs, which seccomp
    /// and landlock require, and landlock last so nothing above is denied.
    pub fn apply(&mut self) -> io::Result<()> {
        // SAFETY (whole function): plain system calls on values prepared
        // before fork; no allocation, no locks.
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The sandbox must not outlive the process that spawned it; the
            // getppid check closes the race with a parent that died before
            // the prctl took effect.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent_pid {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            for r in &self.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: r.soft,
                    rlim_max: r.hard,
                };
                if libc::setrlimit(r.resource, &lim) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            match self.identity {
                Identity::Switch { uid, gid } => {
                    if self.drop_bounding {
                        drop_bounding_set(self.cap_last)?;
                    }
                    // From root to an ordinary user: the kernel clears the
                    // permitted, effective and ambient capability sets.
                    if libc::setgroups(0, std::ptr::null()) < 0
                        || libc::setresgid(gid, gid, gid) < 0
                        || libc::setresuid(uid, uid, uid) < 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                // An unprivileged agentd may still hold capabilities (an
                // operator's AmbientCapabilities=): none reach the code.
                Identity::Inherit => clear_capabilities()?,
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &self.inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(policy) = self.seccomp {
                for program in policy.programs() {
                    let fprog = libc::sock_fprog {
                        len: program.len() as libc::c_ushort,
                        filter: program.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                        &fprog as *const libc::sock_fprog as libc::c_ulong,
                        0,
                        0,
                    ) < 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
        }
        if let Some(ruleset) = self.landlock.take() {
            match ruleset.restrict_self() {
                Ok(status) => {
                    // Required access rights were demanded with
                    // HardRequirement when the ruleset was built, so a
                    // partial status only means an optional extra (a newer
                    // ABI's rights) is missing. Nothing at all is only
                    // acceptable when the policy says best effort.
                    if status.ruleset == RulesetStatus::NotEnforced && !self.best_effort {
                        return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
                    }
                }
                Err(_) => return Err(io::Error::from_raw_os_error(libc::EPERM)),
            }
        }
        Ok(())
    }
}

/// Empties the capability bounding set, so that nothing the process execs
/// can regain a capability (no_new_privs already neutralises setuid-root
/// binaries; this is the second lock). Needs CAP_SETPCAP: root only.
unsafe fn drop_bounding_set(cap_last: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl on plain integers; async-signal-safe.
    unsafe {
        for cap in 0..=cap_last {
            // EINVAL for capabilities this kernel does not know is fine.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && *libc::__errno_location() != libc::EINVAL {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Empties the ambient, permitted, effective and inheritable sets of an
/// unprivileged process (lowering is always allowed).
unsafe fn clear_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // SAFETY: raw capability syscalls on stack values; async-signal-safe.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let empty = || CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        };
        let data = [empty(), empty()];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The highest capability number this kernel knows; read before fork.
fn cap_last_cap() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // 63 covers every capability a future kernel could define in the
        // 64-bit sets; unknown ones fail with EINVAL, which is tolerated.
        .unwrap_or(63)
}
