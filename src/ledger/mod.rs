//! The ledger: every task, step and snapshot, in one SQLite file by
//! default, or in a PostgreSQL database a fleet of agentd hosts shares.
//!
//! On one host the supervisor is the only writer (children send their
//! writes to it); any number of processes may read concurrently (WAL). In a
//! fleet every member writes the shared database, each only for the agents
//! whose lease it holds (see [`fleet`]). Opening a ledger runs the
//! versioned migrations in [`schema`]; a ledger written by a newer agentd,
//! or a file or database that is not an agentd ledger, is refused before
//! anything in it is touched.
//!
//! Every query is written once; [`db`] is the connection both backends
//! share and the small dialect shim between them.
//!
//! Tasks move `queued → running → succeeded | failed | cancelled`. A running
//! task carries a *lease* naming the child instance that runs it; writes
//! from any other instance are rejected, so a stale child (one the
//! supervisor already gave up on) cannot corrupt a re-queued task.

mod approvals;
pub mod db;
pub mod fleet;
mod governance;
mod integrity;
mod location;
mod schema;
mod snapshots;
mod tasks;
pub mod wake;

use std::path::{Path, PathBuf};

use crate::domain::TaskId;
use db::{Conn, DbError};
use rusqlite::{Connection, OpenFlags};

pub use crate::domain::PauseReason;
pub use approvals::{Approval, Asked};
pub use db::Backend;
pub use fleet::{Fence, Member};
pub use governance::{Cancelled, LlmUsage, Pause};
pub use integrity::{Integrity, RECOVERY};
pub use location::{Location, LocationError, PASSWORD_ENV, PgTarget, URL_ENV};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION, create_at_version};
pub use snapshots::{Snapshot, SnapshotKind, SnapshotMeta};
pub use tasks::{Enqueued, Step, Task, TaskFilter};

/// The ledger's file name inside the state dir.
pub const FILE_NAME: &str = "ledger.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database said no, or could not be reached. `at` is the file,
    /// or the PostgreSQL URL (which never holds the password).
    #[error("{at}: {source}")]
    Backend {
        at: String,
        #[source]
        source: DbError,
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
    /// A fleet member wrote for an agent whose lease it no longer holds
    /// (another member took it over while this one was paused or cut off).
    #[error(
        "agent {agent}: this host ({host}) no longer holds its lease (epoch {epoch} is stale); the write was refused"
    )]
    StaleEpoch { agent: String, host: String, epoch: i64 },
    #[error("approval {0} is a tool call or code block: those are answered once (remember is for egress asks)")]
    NotRememberable(i64),
    #[error("approval {0} is not a standing egress grant (approved with remember: task or always)")]
    NotAGrant(i64),
}

impl LedgerError {
    /// Whether the file cannot take writes now (disk full, I/O failing):
    /// a condition that may pass, unlike a rejected write.
    pub fn is_unwritable(&self) -> bool {
        matches!(self, LedgerError::Backend { source, .. } if source.is_unwritable())
    }

    /// The cause without the path, for status lines.
    pub fn short(&self) -> String {
        match self {
            LedgerError::Backend { source, .. } => source.to_string(),
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

pub struct Ledger {
    conn: Conn,
    /// The SQLite file, or the PostgreSQL URL as a path (for messages).
    path: PathBuf,
    /// This member's fence in a fleet: set once the host joined, so every
    /// write of an agent's task checks the agent's lease (see [`fleet`]).
    fence: Option<fleet::Fence>,
}

impl Ledger {
    /// Opens (creating and migrating as needed) the SQLite ledger at
    /// `path` for writing.
    pub fn open(path: &Path) -> Result<Ledger> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| sqlite(path, source))?;
        configure_busy(&conn, path)?;
        schema::check_identity(&conn, path)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(|e| sqlite(path, e))?;
        let mut conn = conn;
        schema::migrate(&mut conn, path)?;
        Ok(Ledger {
            conn: Conn::Sqlite(conn),
            path: path.to_owned(),
            fence: None,
        })
    }

    /// Opens an existing SQLite ledger for reading only (CLI readers).
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(LedgerError::Missing { path: path.to_owned() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| sqlite(path, source))?;
        configure_busy(&conn, path)?;
        schema::check_identity(&conn, path)?;
        schema::check_readable_version(&conn, path)?;
        Ok(Ledger {
            conn: Conn::Sqlite(conn),
            path: path.to_owned(),
            fence: None,
        })
    }

    /// Opens the ledger at `location` for writing (creating and migrating
    /// a PostgreSQL schema as needed, under a lock so that members starting
    /// together migrate once).
    pub fn open_at(location: &Location) -> Result<Ledger> {
        match location {
            Location::Sqlite(path) => Ledger::open(path),
            Location::Postgres(target) => {
                let at = PathBuf::from(target.url());
                let pg = db::Pg::connect(target.config(), false).map_err(|source| LedgerError::Backend {
                    at: target.url().to_owned(),
                    source,
                })?;
                let ledger = Ledger {
                    conn: Conn::Postgres(Box::new(std::cell::RefCell::new(pg))),
                    path: at,
                    fence: None,
                };
                schema::migrate_pg(&ledger)?;
                Ok(ledger)
            }
        }
    }

    /// Opens the ledger at `location` for reading only.
    pub fn open_read_only_at(location: &Location) -> Result<Ledger> {
        match location {
            Location::Sqlite(path) => Ledger::open_read_only(path),
            Location::Postgres(target) => {
                let pg = db::Pg::connect(target.config(), true).map_err(|source| LedgerError::Backend {
                    at: target.url().to_owned(),
                    source,
                })?;
                let ledger = Ledger {
                    conn: Conn::Postgres(Box::new(std::cell::RefCell::new(pg))),
                    path: PathBuf::from(target.url()),
                    fence: None,
                };
                schema::check_pg_readable(&ledger)?;
                Ok(ledger)
            }
        }
    }

    /// The SQLite file, or the PostgreSQL URL.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// A small real write: whether the ledger takes writes again.
    pub fn probe_write(&self) -> Result<()> {
        match &self.conn {
            // The header's schema version, rewritten with its own value.
            Conn::Sqlite(c) => {
                let v: i64 = c
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(|e| self.sqlite_err(e))?;
                self.exec(&format!("PRAGMA user_version = {v};"))
            }
            Conn::Postgres(_) => self
                .conn
                .execute("UPDATE agentd_meta SET value = value WHERE key = 'schema_version'", &[])
                .map(drop)
                .map_err(|e| self.err(e)),
        }
    }

    /// Folds the WAL back into the main file (on clean stop); nothing to
    /// do for PostgreSQL.
    pub fn checkpoint(&self) -> Result<()> {
        match self.conn.backend() {
            Backend::Sqlite => self.exec("PRAGMA wal_checkpoint(TRUNCATE);"),
            Backend::Postgres => Ok(()),
        }
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.conn.batch(sql).map_err(|e| self.err(e))
    }

    fn err(&self, e: DbError) -> LedgerError {
        match e {
            DbError::Sqlite(e) => sqlite(&self.path, e),
            source => LedgerError::Backend {
                at: self.path.display().to_string(),
                source,
            },
        }
    }

    fn sqlite_err(&self, e: rusqlite::Error) -> LedgerError {
        sqlite(&self.path, e)
    }

    /// Runs `f` in one transaction of the ledger's connection.
    fn tx<T>(&self, f: impl FnOnce(&Conn) -> Result<T>) -> Result<T> {
        self.conn.transaction(|e| self.err(e), f)
    }
}

fn configure_busy(conn: &Connection, path: &Path) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| sqlite(path, e))
}

fn sqlite(path: &Path, source: rusqlite::Error) -> LedgerError {
    // A damaged file is named as such wherever it is first noticed.
    if integrity::is_damage(&source) {
        return integrity::damaged(path, vec![source.to_string()]);
    }
    LedgerError::Backend {
        at: path.display().to_string(),
        source: DbError::Sqlite(source),
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
