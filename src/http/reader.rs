//! Reading the ledger for the API: read-only connections of the HTTP
//! server's own (SQLite's WAL lets them read while the supervisor writes;
//! PostgreSQL sessions are read-only),
//! used on the blocking pool so a slow query never stalls the event loop,
//! and kept for the next request instead of reopened each time.

use std::sync::{Arc, Mutex};

use crate::ledger::{Ledger, LedgerError, Location};

/// Idle connections kept at most.
const KEEP: usize = 4;

#[derive(Clone)]
pub struct Reader {
    location: Arc<Location>,
    idle: Arc<Mutex<Vec<Ledger>>>,
}

impl Reader {
    pub fn new(location: Location) -> Reader {
        Reader {
            location: Arc::new(location),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `f` on a read-only connection, off the event loop.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let taken = this.idle.lock().ok().and_then(|mut v| v.pop());
            let ledger = match taken {
                Some(l) => l,
                None => Ledger::open_read_only_at(&this.location)?,
            };
            let out = f(&ledger);
            if let Ok(mut v) = this.idle.lock()
                && v.len() < KEEP
            {
                v.push(ledger);
            }
            out
        })
        .await
        .unwrap_or(Err(LedgerError::Closed))
    }
}
