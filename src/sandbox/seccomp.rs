//! A tiny seccomp filter that takes the network away from the landlock
//! backend.
//!
//! Landlock (up to ABI 7) only governs TCP bind and connect: UDP, raw and
//! packet sockets, vsock and friends pass. When a policy says "no network"
//! and there is no network namespace (bwrap) to say it, this filter lets
//! `socket(2)` create only `AF_UNIX` sockets, and refuses `io_uring_setup`
//! (io_uring can create sockets without the `socket` system call). Every
//! other system call is allowed: this is not a general syscall sandbox.
//!
//! The program is built in the parent and installed in the child by
//! [`super::limits::ChildSetup::apply`].

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

/// The "no network" program. Foreign-architecture system calls (e.g. the
/// i386 entry on x86_64) kill the process: their numbers mean other calls.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn deny_network() -> Vec<sock_filter> {
    let allow = libc::SECCOMP_RET_ALLOW;
    let deny = libc::SECCOMP_RET_ERRNO | (libc::EACCES as u32 & libc::SECCOMP_RET_DATA);
    vec![
        /* 0 */ stmt(LD_W_ABS, OFF_ARCH),
        /* 1 */ jump(JEQ_K, AUDIT_ARCH, 1, 0),
        /* 2 */ stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        /* 3 */ stmt(LD_W_ABS, OFF_NR),
        /* 4 */ jump(JGE_K, X32_SYSCALL_BIT, 6, 0),
        /* 5 */ jump(JEQ_K, libc::SYS_io_uring_setup as u32, 5, 0),
        /* 6 */ jump(JEQ_K, libc::SYS_socket as u32, 1, 0),
        /* 7 */ stmt(RET_K, allow),
        /* 8 */ stmt(LD_W_ABS, OFF_ARG0_LOW),
        /* 9 */ jump(JEQ_K, libc::AF_UNIX as u32, 0, 1),
        /* 10 */ stmt(RET_K, allow),
        /* 11 */ stmt(RET_K, deny),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = deny_network();
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(i + 1 + (ins.jt as usize) < p.len());
                assert!(i + 1 + (ins.jf as usize) < p.len());
            }
        }
        assert_eq!(p.last().map(|i| i.code), Some(RET_K));
    }
}
