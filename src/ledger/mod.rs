//! The ledger: every task, step and snapshot, in one SQLite file.
//!
//! The supervisor is the only writer (children send their writes to it);
//! any number of processes may read concurrently (WAL). Opening a file runs
//! the versioned migrations in [`schema`]; a file written by a newer agentd,
//! or one that is not an agentd ledger, is refused before anything in it is
//! touched.
//!
//! Tasks move `queued → running → succeeded | failed | cancelled`. A running
//! task carries a *lease* naming the child instance that runs it; writes
//! from any other instance are rejected, so a stale child (one the
//! supervisor already gave up on) cannot corrupt a re-queued task.

mod approvals;
mod governance;
mod integrity;
mod schema;
mod snapshots;
mod tasks;

use std::path::{Path, PathBuf};

use crate::domain::TaskId;
use rusqlite::{Connection, OpenFlags};

pub use crate::domain::PauseReason;
pub use approvals::{Approval, Asked};
pub use governance::{Cancelled, LlmUsage, Pause};
pub use integrity::{Integrity, RECOVERY};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION, create_at_version};
pub use snapshots::{Snapshot, SnapshotKind, SnapshotMeta};
pub use tasks::{Enqueued, Step, Task, TaskFilter};

/// The ledger's file name inside the state dir.
pub const FILE_NAME: &str = "ledger.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: not an agentd ledger ({why}); refusing to touch it")]
    Foreign { path: PathBuf, why: String },
    #[error(
        "{path}: ledger schema version {found} is newer than this agentd understands ({supported}); upgrade agentd"
    )]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("{path}: no ledger here (agentd has not run with this state dir yet)")]
    Missing { path: PathBuf },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: the ledger is damaged ({problems}); agentd will not run on it: {}",
        integrity::RECOVERY
    )]
    Damaged { path: PathBuf, problems: String },
    #[error("task {0} does not exist")]
    NoSuchTask(TaskId),
    /// The ledger's thread is gone (agentd is stopping): nothing more is read
    /// or written.
    #[error("the ledger is closed")]
    Closed,
    #[error("task {task}: lease {lease:?} is not the current holder; the write was rejected")]
    StaleLease { task: TaskId, lease: String },
    #[error("snapshot {0} does not exist")]
    NoSuchSnapshot(String),
    #[error("task {task} already {state}; only a queued or running task can be cancelled")]
    AlreadyEnded {
        task: TaskId,
        state: crate::domain::TaskState,
    },
    #[error("approval {0} does not exist")]
    NoSuchApproval(i64),
    #[error("approval {id} was already answered ({state})")]
    ApprovalAnswered { id: i64, state: String },
    #[error("approval {0} is a tool call or code block: those are answered once (remember is for egress asks)")]
    NotRememberable(i64),
    #[error("approval {0} is not a standing egress grant (approved with remember: task or always)")]
    NotAGrant(i64),
}

impl LedgerError {
    /// Whether the file cannot take writes now (disk full, I/O failing):
    /// a condition that may pass, unlike a rejected write.
    pub fn is_unwritable(&self) -> bool {
        matches!(
            self,
            LedgerError::Sqlite { source: rusqlite::Error::SqliteFailure(f, _), .. }
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::ReadOnly
                )
        )
    }

    /// The cause without the path, for status lines.
    pub fn short(&self) -> String {
        match self {
            LedgerError::Sqlite { source, .. } => source.to_string(),
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating and migrating as needed) the ledger for writing.
    pub fn open(path: &Path) -> Result<Ledger> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| sqlite(path, source))?;
        let mut ledger = Ledger {
            conn,
            path: path.to_owned(),
        };
        ledger.configure_busy()?;
        schema::check_identity(&ledger.conn, path)?;
        ledger.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        schema::migrate(&mut ledger.conn, path)?;
        Ok(ledger)
    }

    /// Opens an existing ledger for reading only (CLI readers).
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(LedgerError::Missing { path: path.to_owned() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| sqlite(path, source))?;
        let ledger = Ledger {
            conn,
            path: path.to_owned(),
        };
        ledger.configure_busy()?;
        schema::check_identity(&ledger.conn, path)?;
        schema::check_readable_version(&ledger.conn, path)?;
        Ok(ledger)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A small real write (the header's schema version, rewritten with its
    /// own value): whether the ledger takes writes again.
    pub fn probe_write(&self) -> Result<()> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        self.exec(&format!("PRAGMA user_version = {v};"))
    }

    /// Folds the WAL back into the main file (on clean stop).
    pub fn checkpoint(&self) -> Result<()> {
        self.exec("PRAGMA wal_checkpoint(TRUNCATE);")
    }

    fn configure_busy(&self) -> Result<()> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| sqlite(&self.path, e))
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| sqlite(&self.path, e))
    }

    fn err(&self, e: rusqlite::Error) -> LedgerError {
        sqlite(&self.path, e)
    }
}

fn sqlite(path: &Path, source: rusqlite::Error) -> LedgerError {
    // A damaged file is named as such wherever it is first noticed.
    if integrity::is_damage(&source) {
        return integrity::damaged(path, vec![source.to_string()]);
    }
    LedgerError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// A ledger time for people: `2026-11-21 00:20:07.443Z`.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Milliseconds since the Unix epoch: the ledger's time unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
