//! Versioned migrations. `user_version` holds the schema version and
//! `application_id` marks the file as ours, so a foreign SQLite file (or a
//! ledger from a newer agentd) is recognised and refused untouched.

use std::path::Path;

use rusqlite::Connection;

use super::{LedgerError, Result, sqlite};

/// "agtd" in ASCII: marks a SQLite file as an agentd ledger.
pub const APPLICATION_ID: i64 = 0x6167_7464;

/// Migration `i` brings the schema from version `i` to `i + 1`. Append
/// only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: tasks and their journal.
    "CREATE TABLE tasks (
        id              INTEGER PRIMARY KEY,
        agent           TEXT NOT NULL,
        trigger_kind    TEXT NOT NULL,
        trigger_payload TEXT NOT NULL,
        dedupe_key      TEXT,
        state           TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        lease           TEXT,
        created_at      INTEGER NOT NULL,
        started_at      INTEGER,
        finished_at     INTEGER,
        input_tokens    INTEGER NOT NULL DEFAULT 0,
        output_tokens   INTEGER NOT NULL DEFAULT 0,
        error           TEXT,
        result          TEXT
    );
    CREATE INDEX tasks_by_agent_state ON tasks (agent, state, id);
    CREATE UNIQUE INDEX tasks_queued_dedupe ON tasks (agent, dedupe_key)
        WHERE state = 'queued' AND dedupe_key IS NOT NULL;
    CREATE TABLE steps (
        id            INTEGER PRIMARY KEY,
        task_id       INTEGER NOT NULL REFERENCES tasks (id),
        seq           INTEGER NOT NULL,
        attempt       INTEGER NOT NULL,
        kind          TEXT NOT NULL,
        payload       TEXT NOT NULL,
        input_tokens  INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        latency_ms    INTEGER,
        created_at    INTEGER NOT NULL,
        UNIQUE (task_id, seq)
    );",
    // 2: labelled snapshots of conversations and workspaces.
    "CREATE TABLE snapshots (
        id         INTEGER PRIMARY KEY,
        agent      TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('conversation','workspace')),
        label      TEXT,
        task_id    INTEGER REFERENCES tasks (id),
        data       BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX snapshots_by_agent ON snapshots (agent, kind, id);",
    // 3: governance. An agent's pause outlives agentd; budgets sum model
    // calls' tokens over a time window; a task may be `waiting` for an
    // approval, kept with what it asks. SQLite cannot alter a CHECK, so
    // `tasks` is rebuilt (the runner turns foreign keys off around it).
    "CREATE TABLE tasks_v3 (
        id              INTEGER PRIMARY KEY,
        agent           TEXT NOT NULL,
        trigger_kind    TEXT NOT NULL,
        trigger_payload TEXT NOT NULL,
        dedupe_key      TEXT,
        state           TEXT NOT NULL
                        CHECK (state IN ('queued','running','waiting','succeeded','failed','cancelled')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        lease           TEXT,
        created_at      INTEGER NOT NULL,
        started_at      INTEGER,
        finished_at     INTEGER,
        input_tokens    INTEGER NOT NULL DEFAULT 0,
        output_tokens   INTEGER NOT NULL DEFAULT 0,
        error           TEXT,
        result          TEXT
    );
    INSERT INTO tasks_v3 (id, agent, trigger_kind, trigger_payload, dedupe_key, state, attempts, lease,
                          created_at, started_at, finished_at, input_tokens, output_tokens, error, result)
        SELECT id, agent, trigger_kind, trigger_payload, dedupe_key, state, attempts, lease,
               created_at, started_at, finished_at, input_tokens, output_tokens, error, result FROM tasks;
    DROP TABLE tasks;
    ALTER TABLE tasks_v3 RENAME TO tasks;
    CREATE INDEX tasks_by_agent_state ON tasks (agent, state, id);
    CREATE UNIQUE INDEX tasks_queued_dedupe ON tasks (agent, dedupe_key)
        WHERE state = 'queued' AND dedupe_key IS NOT NULL;
    CREATE TABLE approvals (
        id          INTEGER PRIMARY KEY,
        task_id     INTEGER NOT NULL REFERENCES tasks (id),
        agent       TEXT NOT NULL,
        subject     TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('pending','approved','denied')),
        asked_at    INTEGER NOT NULL,
        timeout_at  INTEGER NOT NULL,
        on_timeout  TEXT NOT NULL,
        answered_at INTEGER,
        answered_by TEXT,
        note        TEXT,
        used        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX approvals_by_state ON approvals (state, id);
    CREATE INDEX approvals_by_task ON approvals (task_id, id);
    CREATE TABLE pauses (
        agent  TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        by     TEXT NOT NULL,
        note   TEXT,
        since  INTEGER NOT NULL
    );
    ALTER TABLE steps ADD COLUMN model TEXT;
    ALTER TABLE steps ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    UPDATE steps SET model = json_extract(payload, '$.model'),
                     cached_tokens = coalesce(json_extract(payload, '$.cached_tokens'), 0)
        WHERE kind = 'llm';
    CREATE INDEX steps_llm_by_time ON steps (created_at, task_id, model, input_tokens, output_tokens, cached_tokens, kind)
        WHERE kind = 'llm';",
    // 4: task listings newest first by agent or by state alone use an index
    // (100,000 tasks page in milliseconds), and webhook deliveries are
    // remembered by their key so a redelivery finds its task.
    "CREATE INDEX tasks_by_agent ON tasks (agent, id);
    CREATE INDEX tasks_by_state ON tasks (state, id);
    CREATE TABLE deliveries (
        agent      TEXT NOT NULL,
        key        TEXT NOT NULL,
        task_id    INTEGER NOT NULL REFERENCES tasks (id),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (agent, key)
    ) WITHOUT ROWID;",
    // 5: an approved egress ask holds once, for its task, or always (for
    // the agent, until revoked); later asks for the same host find it.
    "ALTER TABLE approvals ADD COLUMN remember TEXT;
    CREATE INDEX approvals_grants ON approvals (agent, remember, state) WHERE remember IN ('task', 'always');",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn pragma_i64(conn: &Connection, path: &Path, name: &str) -> Result<i64> {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                LedgerError::Foreign {
                    path: path.to_owned(),
                    why: "the file is not a SQLite database".into(),
                }
            }
            e => sqlite(path, e),
        })
}

/// Refuses files that are not (empty or) ours. Reads only.
pub fn check_identity(conn: &Connection, path: &Path) -> Result<()> {
    let app = pragma_i64(conn, path, "application_id")?;
    if app == APPLICATION_ID {
        return Ok(());
    }
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| sqlite(path, e))?;
    if app == 0 && objects == 0 {
        return Ok(()); // A fresh, empty database: ours to initialise.
    }
    let why = if app == 0 {
        format!("it holds {objects} tables or indexes but no agentd application id")
    } else {
        format!("its application id is {app:#x}")
    };
    Err(LedgerError::Foreign {
        path: path.to_owned(),
        why,
    })
}

pub fn check_readable_version(conn: &Connection, path: &Path) -> Result<()> {
    let found = pragma_i64(conn, path, "user_version")?;
    if found > SCHEMA_VERSION {
        return Err(LedgerError::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies every migration past the file's version, each in its own
/// transaction together with the version bump.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    check_readable_version(conn, path)?;
    let found = pragma_i64(conn, path, "user_version")?;
    apply(conn, path, found as usize, MIGRATIONS.len())
}

/// Runs migrations `from..to`. Foreign keys are off meanwhile (SQLite's
/// way to rebuild a table others refer to, which a changed CHECK needs)
/// and each migration proves it left none dangling before it commits.
fn apply(conn: &mut Connection, path: &Path, from: usize, to: usize) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    let fk: i64 = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .map_err(|e| sqlite(path, e))?;
    conn.execute_batch("PRAGMA foreign_keys = OFF;")
        .map_err(|e| sqlite(path, e))?;
    let r = apply_each(conn, path, from, to);
    conn.execute_batch(&format!("PRAGMA foreign_keys = {fk};"))
        .map_err(|e| sqlite(path, e))?;
    r
}

fn apply_each(conn: &mut Connection, path: &Path, from: usize, to: usize) -> Result<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate().take(to).skip(from) {
        let tx = conn.transaction().map_err(|e| sqlite(path, e))?;
        tx.execute_batch(sql).map_err(|e| sqlite(path, e))?;
        let dangling: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
            .map_err(|e| sqlite(path, e))?;
        if dangling > 0 {
            return Err(LedgerError::Foreign {
                path: path.to_owned(),
                why: format!("migration {} would leave {dangling} rows referring to nothing", i + 1),
            });
        }
        tx.execute_batch(&format!(
            "PRAGMA user_version = {}; PRAGMA application_id = {APPLICATION_ID};",
            i + 1
        ))
        .map_err(|e| sqlite(path, e))?;
        tx.commit().map_err(|e| sqlite(path, e))?;
    }
    Ok(())
}

/// Creates a ledger at an older schema version (for upgrade tests).
#[doc(hidden)]
pub fn create_at_version(path: &Path, version: usize) -> Result<()> {
    let mut conn = Connection::open(path).map_err(|e| sqlite(path, e))?;
    apply(&mut conn, path, 0, version)
}
