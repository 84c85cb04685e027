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

use super::cgroup::Join;
use super::policy::ResourceLimits;

/// One `setrlimit` call, prepared before the fork.
#[derive(Debug, Clone, Copy)]
struct Rlimit {
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
}

/// Who the sandboxed process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Keep the caller's identity (agentd runs unprivileged).
    Inherit,
    /// agentd runs as root and the workdir belongs to an ordinary user: run
    /// as that user, so that the kernel enforces the process limit (it never
    /// does for uid 0) and no root capability is ever in reach.
    Switch { uid: u32, gid: u32 },
    /// agentd runs as root and the workdir belongs to root: stay uid 0 but
    /// drop every capability (bounding, ambient, permitted, effective,
    /// inheritable) so root cannot load modules, open raw sockets or
    /// override file permissions. The process limit cannot be enforced.
    RootWithoutCapabilities,
}

impl Identity {
    /// Decides who runs sandboxed code in `workdir` for a caller with `euid`.
    pub fn for_workdir(euid: u32, owner_uid: u32, owner_gid: u32) -> Identity {
        if euid != 0 {
            Identity::Inherit
        } else if owner_uid != 0 {
            Identity::Switch {
                uid: owner_uid,
                gid: owner_gid,
            }
        } else {
            Identity::RootWithoutCapabilities
        }
    }

    /// Whether `RLIMIT_NPROC` means anything for this identity.
    pub fn process_limit_enforced(self) -> bool {
        !matches!(self, Identity::RootWithoutCapabilities)
    }
}

/// The prepared child-side setup. Built in the parent, applied after fork.
#[derive(Debug)]
pub struct ChildSetup {
    parent_pid: libc::pid_t,
    rlimits: Vec<Rlimit>,
    identity: Identity,
    /// Drop capabilities inside the child (not when exec'ing bwrap as root:
    /// bwrap needs them to build namespaces and drops them itself).
    drop_capabilities: bool,
    cap_last: libc::c_ulong,
    seccomp: Option<Vec<libc::sock_filter>>,
    landlock: Option<RulesetCreated>,
    best_effort: bool,
    cgroup: Join,
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
            drop_capabilities: identity == Identity::RootWithoutCapabilities,
            cap_last: cap_last_cap(),
            seccomp: None,
            landlock: None,
            best_effort: false,
            cgroup: Join::default(),
        }
    }

    /// The run's cgroup, joined first thing after fork.
    pub fn with_cgroup(&mut self, join: Join) {
        self.cgroup = join;
    }

    /// bwrap drops capabilities itself and needs them to set up namespaces.
    pub fn keep_capabilities_for_bwrap(&mut self) {
        self.drop_capabilities = false;
    }

    pub fn with_seccomp(&mut self, program: Vec<libc::sock_filter>) {
        self.seccomp = Some(program);
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
        // Into the run's cgroup before anything else, while still
        // privileged, so every process the run starts is counted and killed.
        self.cgroup.apply()?;
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
                Identity::Inherit | Identity::RootWithoutCapabilities => {}
                Identity::Switch { uid, gid } => {
                    if libc::setgroups(0, std::ptr::null()) < 0
                        || libc::setresgid(gid, gid, gid) < 0
                        || libc::setresuid(uid, uid, uid) < 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            if self.drop_capabilities {
                drop_all_capabilities(self.cap_last)?;
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(program) = &self.seccomp {
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

/// Empties the bounding and ambient sets, then permitted, effective and
/// inheritable, so that neither this process nor anything it execs (even
/// a setuid-root binary, which no_new_privs neutralises anyway) holds a
/// capability.
unsafe fn drop_all_capabilities(cap_last: libc::c_ulong) -> io::Result<()> {
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
        for cap in 0..=cap_last {
            // EINVAL for capabilities this kernel does not know is fine.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && *libc::__errno_location() != libc::EINVAL {
                return Err(io::Error::last_os_error());
            }
        }
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
        let data = [
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
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
