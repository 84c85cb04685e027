//! The supervisor's open-descriptor limit (and its children's).
//!
//! Each agent holds three descriptors in the supervisor (the pipes to its
//! stdin and from its stdout, and its pidfd), so a thousand agents need
//! more than the soft limit most systems start a process with (1,024;
//! systemd's default too): past about 330 agents, starts failed with
//! EMFILE. The supervisor raises its own soft limit to the hard one at
//! start. What it starts (the zygote, so every agent, and so their MCP
//! servers and sandbox runs) gets back the soft limit agentd was started
//! with, as systemd asks of programs that raise theirs: a program that
//! still uses `select()` breaks on descriptors above 1,023.

use std::sync::OnceLock;

/// The soft and hard limits agentd was started with, once raised.
static STARTED_WITH: OnceLock<libc::rlimit> = OnceLock::new();

/// Descriptors the supervisor needs besides its agents' (ledger, control
/// socket and its connections, watcher, zygote, logs).
const OWN: u64 = 256;

/// Raises the soft limit to the hard one; says so if even the hard limit
/// is short for `agents`.
pub fn raise(agents: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let needed = OWN + 3 * agents as u64;
    if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_max < needed {
        tracing::warn!(
            "{agents} agents need about {needed} open descriptors, but the hard limit is {}: \
             agents past it fail to start (raise LimitNOFILE= in the unit, or `ulimit -Hn`)",
            lim.rlim_max
        );
    }
    if lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads only the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        let _ = STARTED_WITH.set(lim);
        tracing::debug!("open descriptor limit raised from {} to {}", lim.rlim_cur, lim.rlim_max);
    }
}

/// For a child's `pre_exec`: the limit agentd was started with, if it was
/// raised. Read it before forking; restoring it is one `setrlimit`, which
/// is async-signal-safe.
pub fn started_with() -> Option<libc::rlimit> {
    STARTED_WITH.get().copied()
}

/// In a forked child before exec: puts the limit agentd was started with
/// back. Async-signal-safe.
pub fn restore(lim: Option<libc::rlimit>) -> std::io::Result<()> {
    match lim {
        // SAFETY: setrlimit reads only the struct it is given.
        Some(l) if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    }
}
