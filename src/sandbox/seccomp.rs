//! The one seccomp policy every sandbox backend installs.
//!
//! The policy is data: a table of system calls and the argument patterns
//! that make them forbidden, compiled to BPF by `seccompiler` (rust-vmm's
//! filter compiler, the one Firecracker uses). Everything not listed is
//! allowed: this is a deny-list of the kernel's riskiest surfaces, in the
//! spirit of Docker's and Flatpak's defaults, not an allow-list of what a
//! program may do (an allow-list breaks interpreters in ways that are hard
//! to foresee and buys little once landlock or namespaces hold the
//! filesystem). What is denied and why:
//!
//! - **kernel attack surface that sandboxed code never needs:** io_uring
//!   (it also creates sockets without `socket(2)`), bpf, perf_event_open,
//!   userfaultfd, keyrings (keyctl, add_key, request_key: root's keyrings
//!   were readable when code ran as uid 0), kexec, module loading, reboot,
//!   swap, quotactl, acct, open_by_handle_at, iopl/ioperm, unusual
//!   personalities;
//! - **leaving the sandbox's view of the system:** new namespaces of any kind
//!   (`unshare`, `clone` with `CLONE_NEW*`, `setns`; nested user namespaces
//!   give "root" that unlocks netfilter, mounts and more), the mount API
//!   old and new, pivot_root, chroot;
//! - **looking into or steering other processes:** ptrace,
//!   process_vm_readv/writev, pidfd_getfd, kcmp, and `kill(-1, …)`;
//! - **leaving the process group:** setsid, setpgid (the timeout kills the
//!   group; cgroups, where present, catch the rest);
//! - **setuid and setgid files:** chmod-family calls, and file creation
//!   (`open`/`openat` with `O_CREAT` or `O_TMPFILE`, `mknod`), whose mode
//!   carries `S_ISUID` or `S_ISGID`; openat2 answers ENOSYS (its mode sits
//!   in a struct a filter cannot read, and libc falls back to openat);
//! - **sockets:** `socket(2)` never creates a Unix socket (so no pathname or
//!   abstract socket of the host is reachable, whatever Landlock's ABI), nor
//!   a packet, raw, netlink or vsock one; with network off it creates
//!   nothing at all and `connect(2)` is refused. `socketpair(2)` stays: the
//!   tool bridge is reached by handing one end of a fresh pair over the run's
//!   inherited bridge descriptor;
//! - **clone3** answers ENOSYS (its flags sit in a struct too), so libc
//!   falls back to `clone`, whose flags the filter can see.
//!
//! The table is kept short on purpose: the kernel emulates an installed
//! filter once for every system call number (to cache what is always
//! allowed), so a run pays for the program's length when it starts.
//!
//! The compiled programs are built once per process and network setting;
//! [`super::limits::ChildSetup`] installs them after fork (landlock), and
//! bwrap loads them from inherited descriptors (`--add-seccomp-fd`) just
//! before it execs the command.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The compiled policy: two programs, because one seccompiler filter has
/// one on-match action and two calls must fail with ENOSYS, not EPERM.
#[derive(Debug)]
pub struct Policy {
    /// Matches fail with EPERM.
    pub deny: BpfProgram,
    /// Matches fail with ENOSYS (callers fall back to an older call).
    pub absent: BpfProgram,
}

impl Policy {
    pub fn programs(&self) -> [&BpfProgram; 2] {
        [&self.deny, &self.absent]
    }
}

#[derive(Debug, thiserror::Error)]
#[error("compiling the seccomp policy: {0}")]
pub struct SeccompError(String);

/// The policy for a run with or without network, compiled once.
pub fn policy(network: bool) -> Result<&'static Policy, SeccompError> {
    static WITH_NET: OnceLock<Result<Policy, String>> = OnceLock::new();
    static WITHOUT_NET: OnceLock<Result<Policy, String>> = OnceLock::new();
    let cell = if network { &WITH_NET } else { &WITHOUT_NET };
    cell.get_or_init(|| compile(network).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| SeccompError(e.clone()))
}

fn compile(network: bool) -> Result<Policy, seccompiler::Error> {
    let arch = target_arch()?;
    let deny = SeccompFilter::new(
        with_x32_aliases(denied(network)?),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let absent = SeccompFilter::new(
        with_x32_aliases(
            [(libc::SYS_clone3, vec![]), (libc::SYS_openat2, vec![])]
                .into_iter()
                .collect(),
        ),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(Policy {
        deny: deny.try_into()?,
        absent: absent.try_into()?,
    })
}

fn target_arch() -> Result<TargetArch, seccompiler::Error> {
    std::env::consts::ARCH.try_into().map_err(seccompiler::Error::Backend)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// A condition on the low 32 bits of argument `arg` (ints, flags, modes).
fn arg32(arg: u8, op: Op, value: u64) -> Result<Cond, seccompiler::Error> {
    Ok(Cond::new(arg, Len::Dword, op, value)?)
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, seccompiler::Error> {
    Ok(SeccompRule::new(conds)?)
}

/// "Bit `bit` is set in argument `arg`".
fn has(arg: u8, bit: u64) -> Result<Cond, seccompiler::Error> {
    arg32(arg, Op::MaskedEq(bit), bit)
}

/// Rules matching a mode argument with setuid or setgid bits.
fn special_mode(mode_arg: u8) -> Result<Vec<SeccompRule>, seccompiler::Error> {
    Ok(vec![
        rule(vec![has(mode_arg, libc::S_ISUID as u64)?])?,
        rule(vec![has(mode_arg, libc::S_ISGID as u64)?])?,
    ])
}

/// Rules matching file creation (`O_CREAT` or `O_TMPFILE` in `flags_arg`)
/// with setuid or setgid bits in `mode_arg`.
fn creating_special(flags_arg: u8, mode_arg: u8) -> Result<Vec<SeccompRule>, seccompiler::Error> {
    let mut rules = Vec::new();
    for creating in [libc::O_CREAT as u64, libc::O_TMPFILE as u64] {
        for bit in [libc::S_ISUID as u64, libc::S_ISGID as u64] {
            rules.push(rule(vec![has(flags_arg, creating)?, has(mode_arg, bit)?])?);
        }
    }
    Ok(rules)
}

/// The table: system call → the patterns that make it forbidden (an empty
/// list forbids it outright).
fn denied(network: bool) -> Result<Rules, seccompiler::Error> {
    let mut r: Rules = BTreeMap::new();
    let always = [
        // Kernel surfaces.
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_quotactl,
        libc::SYS_acct,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fanotify_init,
        // Namespaces and mounts.
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        // Other processes.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        // The process group the timeout kills.
        libc::SYS_setsid,
        libc::SYS_setpgid,
    ];
    for nr in always {
        r.insert(nr, vec![]);
    }
    #[cfg(target_arch = "x86_64")]
    for nr in [libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib] {
        r.insert(nr, vec![]);
    }

    // clone with any CLONE_NEW* flag (flags are the first argument on
    // x86_64 and aarch64).
    let namespaces = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
    ];
    r.insert(
        libc::SYS_clone,
        namespaces
            .iter()
            .map(|f| rule(vec![has(0, *f as u64)?]))
            .collect::<Result<_, _>>()?,
    );

    // personality: only the ordinary Linux one, with or without the flags
    // Docker also allows (address-space layout queries, 32-bit emulation).
    let allowed_personalities: [u64; 5] = [0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];
    r.insert(
        libc::SYS_personality,
        vec![rule(
            allowed_personalities
                .iter()
                .map(|p| arg32(0, Op::Ne, *p))
                .collect::<Result<_, _>>()?,
        )?],
    );

    // kill(-1, …): every process the sandbox's uid may signal.
    r.insert(libc::SYS_kill, vec![rule(vec![arg32(0, Op::Eq, u32::MAX as u64)?])?]);

    // setuid and setgid bits.
    r.insert(libc::SYS_fchmod, special_mode(1)?);
    r.insert(libc::SYS_fchmodat, special_mode(2)?);
    r.insert(libc::SYS_fchmodat2, special_mode(2)?);
    r.insert(libc::SYS_mknodat, special_mode(2)?);
    r.insert(libc::SYS_openat, creating_special(2, 3)?);
    #[cfg(target_arch = "x86_64")]
    {
        r.insert(libc::SYS_chmod, special_mode(1)?);
        r.insert(libc::SYS_mknod, special_mode(1)?);
        r.insert(libc::SYS_creat, special_mode(1)?);
        r.insert(libc::SYS_open, creating_special(1, 2)?);
    }

    // Sockets. socketpair only ever makes AF_UNIX pairs; say so anyway.
    r.insert(
        libc::SYS_socketpair,
        vec![rule(vec![arg32(0, Op::Ne, libc::AF_UNIX as u64)?])?],
    );
    if network {
        // Only IPv4 and IPv6, and neither raw nor packet sockets.
        const TYPE_MASK: u64 = 0xf;
        r.insert(
            libc::SYS_socket,
            vec![
                rule(vec![
                    arg32(0, Op::Ne, libc::AF_INET as u64)?,
                    arg32(0, Op::Ne, libc::AF_INET6 as u64)?,
                ])?,
                rule(vec![arg32(1, Op::MaskedEq(TYPE_MASK), libc::SOCK_RAW as u64)?])?,
                // SOCK_PACKET (10), the obsolete packet socket type.
                rule(vec![arg32(1, Op::MaskedEq(TYPE_MASK), 10)?])?,
            ],
        );
    } else {
        r.insert(libc::SYS_socket, vec![]);
        r.insert(libc::SYS_connect, vec![]);
    }
    Ok(r)
}

/// On x86_64 the x32 ABI is a second entry to every call (numbers with bit
/// 30 set, same architecture token). On a kernel that serves x32 calls each
/// rule is repeated for it and the x32-only numbers are denied outright; a
/// kernel without x32 (most distributions: `CONFIG_X86_X32_ABI` off, or
/// `syscall.x32=n`) answers every such number with ENOSYS itself, so the
/// aliases would only lengthen the program. Length matters: the kernel
/// emulates the filter for every system call number when it is installed
/// (to cache what is always allowed), once per sandbox run.
#[cfg(target_arch = "x86_64")]
fn with_x32_aliases(mut rules: Rules) -> Rules {
    const X32_SYSCALL_BIT: i64 = 0x4000_0000;
    if !kernel_serves_x32() {
        return rules;
    }
    let aliases: Vec<(i64, Vec<SeccompRule>)> = rules
        .iter()
        .map(|(nr, rs)| (nr | X32_SYSCALL_BIT, rs.clone()))
        .collect();
    rules.extend(aliases);
    // x32-only entries (512–547): compat versions of ioctl, readv, execve, …
    for nr in 512..=547 {
        rules.insert(nr | X32_SYSCALL_BIT, vec![]);
    }
    rules
}

/// Whether this kernel answers x32 system calls: the x32 `getpid` either
/// returns our pid or fails with ENOSYS.
#[cfg(target_arch = "x86_64")]
fn kernel_serves_x32() -> bool {
    static SERVES: OnceLock<bool> = OnceLock::new();
    *SERVES.get_or_init(|| {
        // SAFETY: getpid through the x32 entry takes no arguments and has
        // no effect; without x32 the kernel returns ENOSYS.
        unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) >= 0 }
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn with_x32_aliases(rules: Rules) -> Rules {
    rules
}

/// The raw bytes of a program, as bwrap reads it from a descriptor.
pub fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for ins in program {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_policies_compile_and_differ_by_network() {
        let off = policy(false).expect("no network");
        let on = policy(true).expect("network");
        assert!(!off.deny.is_empty() && !off.absent.is_empty());
        assert_ne!(off.deny, on.deny);
        assert_eq!(to_bytes(&off.deny).len(), off.deny.len() * 8);
    }
}
