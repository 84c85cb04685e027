//! The ledger's integrity check at start: `PRAGMA quick_check`, bounded in
//! time, before the supervisor trusts a single row.
//!
//! A damaged ledger is refused with what SQLite found and the way out (see
//! the README, "A damaged ledger"); agentd never runs half on it. A check
//! that runs out of time on a very large ledger is reported and the start
//! goes on: only a finished check can prove damage.
//!
//! This module reads only; it never repairs or rewrites the file.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Ledger, LedgerError, Result};

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    Ok {
        took: Duration,
    },
    /// The budget ran out first.
    Unfinished {
        budget: Duration,
    },
}

/// How to get going again, for every damage report.
pub const RECOVERY: &str = "stop here and recover: keep a copy of the file, then either \
     `sqlite3 ledger.sqlite .recover | sqlite3 recovered.sqlite` and put recovered.sqlite in its \
     place, or move ledger.sqlite (and its -wal/-shm files) aside to start with an empty ledger \
     (README: \"A damaged ledger\")";

impl Ledger {
    /// Runs `PRAGMA quick_check` for at most `budget`. PostgreSQL checks
    /// its own pages (and a fleet's database is not this host's to
    /// judge): nothing to do there.
    pub fn check_integrity(&self, budget: Duration) -> Result<Integrity> {
        let started = Instant::now();
        let Some(conn) = self.conn.sqlite() else {
            return Ok(Integrity::Ok {
                took: started.elapsed(),
            });
        };
        let interrupt = conn.get_interrupt_handle();
        let (done, wait) = mpsc::channel::<()>();
        let timer = std::thread::Builder::new()
            .name("ledger-check".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(budget) {
                    interrupt.interrupt();
                }
            })
            .map_err(|source| LedgerError::CreateDir {
                path: self.path.clone(),
                source,
            })?;
        let result = quick_check(conn);
        let _ = done.send(());
        let _ = timer.join();
        match result {
            Ok(problems) if problems.is_empty() => Ok(Integrity::Ok {
                took: started.elapsed(),
            }),
            Ok(problems) => Err(damaged(&self.path, problems)),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::OperationInterrupted => {
                Ok(Integrity::Unfinished { budget })
            }
            Err(e) if is_damage(&e) => Err(damaged(&self.path, vec![e.to_string()])),
            Err(e) => Err(super::sqlite(&self.path, e)),
        }
    }
}

/// The problems `quick_check` lists (none when it says "ok").
fn quick_check(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check(20)")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let line = row?;
        if line != "ok" {
            out.push(line);
        }
    }
    Ok(out)
}

/// Whether SQLite's error means the file itself is damaged.
pub fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

pub fn damaged(path: &Path, problems: Vec<String>) -> LedgerError {
    LedgerError::Damaged {
        path: path.to_owned(),
        problems: problems.join("; "),
    }
}
