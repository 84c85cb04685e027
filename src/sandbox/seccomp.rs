//! A tiny seccomp filter for the landlock backend (bwrap has namespaces).
//!
//! It closes two holes landlock leaves open:
//! - the network: landlock (up to ABI 7) governs only TCP bind/connect, so
//!   UDP, raw and packet sockets, vsock and friends pass. When a policy
//!   says "no network", `socket(2)` may only create `AF_UNIX` sockets, and
//!   `io_uring_setup` is refused (io_uring creates sockets without the
//!   `socket` system call);
//! - leaving the process group: `setsid`/`setpgid` are refused, so the
//!   timeout's `kill(-pgid)` reaches every process the command started.
//!
//! Every other system call is allowed: this is not a general syscall
//! sandbox. The program is built in the parent and installed in the child
//! by [`super::limits::ChildSetup::apply`], after the child's own `setsid`.

use libc::sock_filter;

// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// On x86_64, system calls with this bit are the x32 ABI: a second door to
/// `socket` that must be shut too.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// What a matched system call gets.
#[derive(Clone, Copy)]
enum Verdict {
    Eperm,
    Eacces,
    /// Look at `socket`'s domain.
    SocketDomain,
}

/// The filter program. Foreign-architecture system calls (e.g. the i386
/// entry on x86_64) kill the process: their numbers mean other calls.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn program(network: bool) -> Vec<sock_filter> {
    let mut checks: Vec<(u16, u32, Verdict)> = vec![
        (JGE_K, X32_SYSCALL_BIT, Verdict::Eacces),
        (JEQ_K, libc::SYS_setsid as u32, Verdict::Eperm),
        (JEQ_K, libc::SYS_setpgid as u32, Verdict::Eperm),
    ];
    if !network {
        checks.push((JEQ_K, libc::SYS_io_uring_setup as u32, Verdict::Eacces));
        checks.push((JEQ_K, libc::SYS_socket as u32, Verdict::SocketDomain));
    }
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);

    // Layout: header, one jump per check, then
    //   allow | [ld domain, jeq AF_UNIX, allow] | EPERM | EACCES
    let first_check = 4;
    let allow = first_check + checks.len();
    let socket = allow + 1;
    let eperm = if network { socket } else { socket + 3 };
    let eacces = eperm + 1;
    let offset = |from: usize, to: usize| u8::try_from(to - from - 1).unwrap_or(u8::MAX);

    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
    ];
    for (i, (code, k, verdict)) in checks.iter().enumerate() {
        let at = first_check + i;
        let to = match verdict {
            Verdict::Eperm => eperm,
            Verdict::Eacces => eacces,
            Verdict::SocketDomain => socket,
        };
        p.push(jump(*code, *k, offset(at, to), 0));
    }
    p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    if !network {
        p.push(stmt(LD_W_ABS, OFF_ARG0_LOW));
        p.push(jump(JEQ_K, libc::AF_UNIX as u32, 0, 1));
        p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    }
    p.push(stmt(RET_K, errno(libc::EPERM)));
    p.push(stmt(RET_K, errno(libc::EACCES)));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        for network in [false, true] {
            let p = program(network);
            for (i, ins) in p.iter().enumerate() {
                if ins.code & 0x07 == libc::BPF_JMP as u16 {
                    assert!(i + 1 + (ins.jt as usize) < p.len(), "{i}");
                    assert!(i + 1 + (ins.jf as usize) < p.len(), "{i}");
                }
            }
            assert_eq!(p.last().map(|i| i.code), Some(RET_K));
        }
    }
}
