//! Versioned migrations. In SQLite, `user_version` holds the schema
//! version and `application_id` marks the file as ours, so a foreign SQLite
//! file (or a ledger from a newer agentd) is recognised and refused
//! untouched. PostgreSQL has its own list (it started later, at what
//! SQLite's version 6 holds, plus the fleet's tables) and keeps the version
//! in the `agentd_meta` table, which also marks a database as ours.

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
    // 6: which host ran a task (in a fleet; NULL on a single host).
    "ALTER TABLE tasks ADD COLUMN host TEXT;",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// PostgreSQL's migrations, with the same rules: append only. Types are
/// chosen so both engines' queries read the same values: BIGINT for every
/// number (the ledger's times are milliseconds), BYTEA for archives.
const PG_MIGRATIONS: &[&str] = &[
    // 1: everything SQLite's version 6 holds, and the fleet: its members
    // (heartbeats), agents' leases with their fencing epochs, schedule
    // occurrences fired once fleet-wide.
    "CREATE TABLE tasks (
        id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent           TEXT NOT NULL,
        trigger_kind    TEXT NOT NULL,
        trigger_payload TEXT NOT NULL,
        dedupe_key      TEXT,
        state           TEXT NOT NULL
                        CHECK (state IN ('queued','running','waiting','succeeded','failed','cancelled')),
        attempts        BIGINT NOT NULL DEFAULT 0,
        lease           TEXT,
        created_at      BIGINT NOT NULL,
        started_at      BIGINT,
        finished_at     BIGINT,
        input_tokens    BIGINT NOT NULL DEFAULT 0,
        output_tokens   BIGINT NOT NULL DEFAULT 0,
        error           TEXT,
        result          TEXT,
        host            TEXT
    );
    CREATE INDEX tasks_by_agent_state ON tasks (agent, state, id);
    CREATE UNIQUE INDEX tasks_queued_dedupe ON tasks (agent, dedupe_key)
        WHERE state = 'queued' AND dedupe_key IS NOT NULL;
    CREATE INDEX tasks_by_agent ON tasks (agent, id);
    CREATE INDEX tasks_by_state ON tasks (state, id);
    CREATE TABLE steps (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        task_id       BIGINT NOT NULL REFERENCES tasks (id),
        seq           BIGINT NOT NULL,
        attempt       BIGINT NOT NULL,
        kind          TEXT NOT NULL,
        payload       TEXT NOT NULL,
        input_tokens  BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        latency_ms    BIGINT,
        created_at    BIGINT NOT NULL,
        model         TEXT,
        cached_tokens BIGINT NOT NULL DEFAULT 0,
        UNIQUE (task_id, seq)
    );
    CREATE INDEX steps_llm_by_time ON steps (created_at, task_id, model, input_tokens, output_tokens, cached_tokens, kind)
        WHERE kind = 'llm';
    CREATE TABLE snapshots (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent      TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('conversation','workspace')),
        label      TEXT,
        task_id    BIGINT REFERENCES tasks (id),
        data       BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX snapshots_by_agent ON snapshots (agent, kind, id);
    CREATE TABLE approvals (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        task_id     BIGINT NOT NULL REFERENCES tasks (id),
        agent       TEXT NOT NULL,
        subject     TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('pending','approved','denied')),
        asked_at    BIGINT NOT NULL,
        timeout_at  BIGINT NOT NULL,
        on_timeout  TEXT NOT NULL,
        answered_at BIGINT,
        answered_by TEXT,
        note        TEXT,
        used        BIGINT NOT NULL DEFAULT 0,
        remember    TEXT
    );
    CREATE INDEX approvals_by_state ON approvals (state, id);
    CREATE INDEX approvals_by_task ON approvals (task_id, id);
    CREATE INDEX approvals_grants ON approvals (agent, remember, state) WHERE remember IN ('task', 'always');
    CREATE TABLE pauses (
        agent  TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        by     TEXT NOT NULL,
        note   TEXT,
        since  BIGINT NOT NULL
    );
    CREATE TABLE deliveries (
        agent      TEXT NOT NULL,
        key        TEXT NOT NULL,
        task_id    BIGINT NOT NULL REFERENCES tasks (id),
        created_at BIGINT NOT NULL,
        PRIMARY KEY (agent, key)
    );
    CREATE TABLE members (
        host         TEXT PRIMARY KEY,
        labels       TEXT NOT NULL,
        started_at   BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL,
        draining     BIGINT NOT NULL DEFAULT 0,
        status       TEXT
    );
    CREATE TABLE agent_leases (
        agent      TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        epoch      BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE schedule_firings (
        agent    TEXT NOT NULL,
        schedule TEXT NOT NULL,
        fire_at  TEXT NOT NULL,
        host     TEXT NOT NULL,
        task_id  BIGINT REFERENCES tasks (id),
        PRIMARY KEY (agent, schedule, fire_at)
    );",
];

/// "agtd": the advisory lock members take while they migrate.
const PG_MIGRATION_LOCK: i64 = APPLICATION_ID;

/// Creates or migrates a PostgreSQL ledger in one transaction, under an
/// advisory lock (members starting together migrate once). A database
/// with tables but no `agentd_meta` is someone else's and is refused.
pub fn migrate_pg(ledger: &super::Ledger) -> Result<()> {
    ledger.tx(|c| {
        let err = |e| ledger.err(e);
        c.execute(&format!("SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})"), &[])
            .map_err(err)?;
        let found = pg_version(ledger, c)?;
        let from = match found {
            Some(v) => v,
            None => {
                c.batch("CREATE TABLE agentd_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);")
                    .map_err(err)?;
                c.execute(
                    "INSERT INTO agentd_meta (key, value) VALUES ('application_id', ?1), ('schema_version', 0)",
                    super::db::args![APPLICATION_ID],
                )
                .map_err(err)?;
                0
            }
        };
        for sql in PG_MIGRATIONS.iter().skip(from as usize) {
            c.batch(sql).map_err(err)?;
        }
        if (from as usize) < PG_MIGRATIONS.len() {
            c.execute(
                "UPDATE agentd_meta SET value = ?1 WHERE key = 'schema_version'",
                super::db::args![PG_MIGRATIONS.len() as i64],
            )
            .map_err(err)?;
        }
        Ok(())
    })
}

/// Refuses a PostgreSQL database that is not an agentd ledger, or one
/// newer than this agentd, for readers.
pub fn check_pg_readable(ledger: &super::Ledger) -> Result<()> {
    match pg_version(ledger, &ledger.conn)? {
        Some(_) => Ok(()),
        None => Err(LedgerError::Missing {
            path: ledger.path.clone(),
        }),
    }
}

/// The schema version of a PostgreSQL ledger; None for an empty database;
/// an error for someone else's, or a newer one.
fn pg_version(ledger: &super::Ledger, c: &super::db::Conn) -> Result<Option<i64>> {
    use super::db::args;
    let err = |e| ledger.err(e);
    let ours: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'agentd_meta'",
            &[],
        )
        .and_then(|r| r.get(0))
        .map_err(err)?;
    if ours == 0 {
        let tables: i64 = c
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
                &[],
            )
            .and_then(|r| r.get(0))
            .map_err(err)?;
        if tables > 0 {
            return Err(LedgerError::Foreign {
                path: ledger.path.clone(),
                why: format!("its schema holds {tables} tables but no agentd_meta"),
            });
        }
        return Ok(None);
    }
    let app: Option<i64> = c
        .query_opt("SELECT value FROM agentd_meta WHERE key = ?1", args!["application_id"])
        .and_then(|r| r.map(|r| r.get(0)).transpose())
        .map_err(err)?;
    if app != Some(APPLICATION_ID) {
        return Err(LedgerError::Foreign {
            path: ledger.path.clone(),
            why: "its agentd_meta does not carry agentd's application id".into(),
        });
    }
    let version: i64 = c
        .query_opt("SELECT value FROM agentd_meta WHERE key = ?1", args!["schema_version"])
        .and_then(|r| r.map(|r| r.get(0)).transpose())
        .map_err(err)?
        .unwrap_or(0);
    if version > PG_MIGRATIONS.len() as i64 {
        return Err(LedgerError::TooNew {
            path: ledger.path.clone(),
            found: version,
            supported: PG_MIGRATIONS.len() as i64,
        });
    }
    Ok(Some(version))
}

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
