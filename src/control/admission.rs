//! Who gets a control connection, and for how long: the control socket
//! under abuse.
//!
//! - **A cap** on open connections. At the cap, a new connection evicts the
//!   one that has been idle longest (an operator's `agentd status` is never
//!   locked out by someone holding idle connections); when every
//!   connection is busy with a request, the newcomer is refused.
//! - **An idle timeout**: a connection that sends nothing for that long is
//!   closed.
//! - **Backoff on accept errors** (EMFILE, ENFILE, ENOBUFS…): the accept loop
//!   sleeps, doubling from 10 ms to 1 s, instead of spinning on an error
//!   that only goes away when descriptors are freed.
//!
//! This module owns the admission bookkeeping only. It never reads or
//! answers requests and never decides who is *allowed* to send them (the
//! server checks the caller).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

/// The most connections open at once, whatever the descriptor limit.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The cap for a process whose soft descriptor limit is `nofile`: at most
/// a quarter of it, so agents, MCP pipes and the ledger keep theirs.
pub fn cap_for(nofile: u64) -> usize {
    let quarter = usize::try_from(nofile / 4).unwrap_or(usize::MAX);
    quarter.clamp(8, MAX_CONNECTIONS)
}

/// The cap for this process.
pub fn cap() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => cap_for(soft),
        Err(_) => MAX_CONNECTIONS,
    }
}

struct Slot {
    /// Since when it has waited for a request; `None` while one is handled.
    idle_since: Option<Instant>,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    slots: HashMap<u64, Slot>,
}

/// The open connections.
#[derive(Clone)]
pub struct Admission {
    table: Arc<Mutex<Table>>,
    /// A fixed cap, or `None` for [`cap`] (the descriptor limit now).
    cap: Option<usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct Ticket {
    id: u64,
    table: Arc<Mutex<Table>>,
    /// Notified when a newer connection needs this one's place.
    pub evicted: Arc<Notify>,
}

impl Admission {
    /// Capped by the descriptor limit, read at each admission (an
    /// operator may lower it with `prlimit` while agentd runs).
    pub fn new() -> Admission {
        Admission {
            table: Arc::default(),
            cap: None,
        }
    }

    #[cfg(test)]
    fn with_cap(cap: usize) -> Admission {
        Admission {
            table: Arc::default(),
            cap: Some(cap.max(1)),
        }
    }

    /// Admits a new connection, evicting the longest-idle one at the cap;
    /// `None` when every connection is busy.
    pub fn admit(&self) -> Option<Ticket> {
        let cap = self.cap.unwrap_or_else(cap);
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.slots.len() >= cap {
            let oldest = t
                .slots
                .iter()
                .filter_map(|(id, s)| s.idle_since.map(|since| (since, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(s) = t.slots.remove(&oldest) {
                s.evict.notify_one();
            }
        }
        t.next_id += 1;
        let id = t.next_id;
        let evict = Arc::new(Notify::new());
        t.slots.insert(
            id,
            Slot {
                idle_since: Some(Instant::now()),
                evict: evict.clone(),
            },
        );
        Some(Ticket {
            id,
            table: self.table.clone(),
            evicted: evict,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).slots.len()
    }
}

impl Ticket {
    /// A request arrived (`busy`) or was answered (not busy).
    pub fn set_busy(&self, busy: bool) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = t.slots.get_mut(&self.id) {
            s.idle_since = if busy { None } else { Some(Instant::now()) };
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.slots.remove(&self.id);
    }
}

/// Accepts the next connection. Errors (out of descriptors, above all)
/// are logged once per streak and retried after a growing pause.
pub async fn accept(listener: &UnixListener) -> UnixStream {
    let mut pause = BACKOFF_MIN;
    let mut failures: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if failures > 0 {
                    tracing::info!("control socket accepting again after {failures} failed accepts");
                }
                return stream;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!("control socket cannot accept ({e}); backing off until it can");
                }
                failures += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_descriptor_limit() {
        assert_eq!(cap_for(1024), 256);
        assert_eq!(cap_for(256), 64);
        assert_eq!(cap_for(4), 8);
        assert_eq!(cap_for(u64::MAX), MAX_CONNECTIONS);
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let a = Admission::with_cap(2);
        let first = a.admit().expect("first");
        std::thread::sleep(Duration::from_millis(2));
        let second = a.admit().expect("second");
        let third = a.admit().expect("third evicts the first");
        assert_eq!(a.open(), 2);
        // The first was told to go; its drop changes nothing more.
        drop(first);
        assert_eq!(a.open(), 2);
        // Busy connections are never evicted: with both busy, refuse.
        second.set_busy(true);
        third.set_busy(true);
        assert!(a.admit().is_none());
        third.set_busy(false);
        assert!(a.admit().is_some(), "the idle one makes room");
    }
}
