//! A *dialer*: a `SOCK_SEQPACKET` socket pair whose one end a sandbox run
//! inherits. Sandboxed code cannot create Unix sockets (see the seccomp
//! policy), so it reaches agentd by sending a connection's descriptor
//! through the dialer with `SCM_RIGHTS`; agentd receives it on the other
//! end. The tool bridge and the egress proxy both take connections so.

use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// A new dialer: the end agentd keeps (registered with tokio) and the end
/// the run inherits. Both are close-on-exec; the run's pre-exec clears it
/// on its copy only.
pub fn pair() -> std::io::Result<(AsyncFd<OwnedFd>, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // SAFETY: `ours` was just made here; the AsyncFd owns it and closes it
    // only when dropped.
    let ours = unsafe { AsyncFd::register(ours) }.map_err(|e| e.into_parts().1)?;
    Ok((ours, theirs))
}

/// The next descriptors sent through the dialer, or `None` once every
/// sender is gone.
pub async fn receive(dialer: &AsyncFd<OwnedFd>) -> std::io::Result<Option<Vec<OwnedFd>>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    loop {
        let mut guard = dialer.readable().await?;
        let got = guard.try_io(|fd| {
            let mut byte = [0u8; 1];
            let mut iov = [std::io::IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let msg = recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these descriptors
                    // in this process; nothing else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
                    );
                }
            }
            Ok((msg.bytes, fds))
        });
        match got {
            Ok(Ok((0, fds))) if fds.is_empty() => return Ok(None),
            Ok(Ok((_, fds))) => return Ok(Some(fds)),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}
