//! systemd integration: `Type=notify` readiness, reload and stop
//! notifications, the watchdog, and STATUS lines. Every call is a no-op when
//! `NOTIFY_SOCKET` is unset, so agentd behaves the same outside systemd.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// Sends without ever waiting: a service manager that stops reading
/// (systemd's queue full, a test harness gone) must not freeze the
/// supervisor's event loop. A notification that does not fit is dropped;
/// the first failure is said, later ones only at debug.
fn send(states: &[NotifyState]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    if let Err(e) = send_now(&path, msg.as_bytes()) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if SAID.swap(true, Ordering::Relaxed) {
            tracing::debug!("sd_notify failed: {e}");
        } else {
            tracing::warn!("sd_notify failed: {e} (said once; later failures are logged at debug)");
        }
    }
}

fn send_now(path: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            sock.connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)?
        }
        None => sock.connect(path)?,
    }
    let sent = sock.send(msg)?;
    if sent != msg.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "incomplete write"));
    }
    Ok(())
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// For `Type=notify-reload`: RELOADING=1 with the monotonic timestamp.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A STATUS= line, unless it is the one sent last (a thousand agents
/// changing state would otherwise send as many identical lines).
pub fn status(status: &str) {
    static LAST: Mutex<String> = Mutex::new(String::new());
    if let Ok(mut last) = LAST.lock() {
        if *last == status {
            return;
        }
        status.clone_into(&mut last);
    }
    send(&[NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half of `WATCHDOG_USEC`, when systemd asked for a watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2).filter(|d| !d.is_zero())
}
