//! Snapshot storage: an agent's conversation after each task (so a
//! restarted child remembers), and labelled archives of its workdir. Only
//! rows: what the bytes mean and how they are made or put back is
//! [`crate::snapshots`]'.

use serde::{Deserialize, Serialize};

use super::db::{DbResult, Row, Value, args};
use super::{Ledger, LedgerError, Result, now_ms};
use crate::domain::TaskId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    Conversation,
    Workspace,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Conversation => "conversation",
            SnapshotKind::Workspace => "workspace",
        }
    }

    fn parse(s: &str) -> SnapshotKind {
        if s == "workspace" {
            SnapshotKind::Workspace
        } else {
            SnapshotKind::Conversation
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub id: i64,
    pub agent: String,
    pub kind: SnapshotKind,
    pub label: Option<String>,
    pub task_id: Option<TaskId>,
    pub size: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

const META_COLUMNS: &str = "id, agent, kind, label, task_id, length(data), created_at";

fn meta_from_row(r: &Row) -> DbResult<SnapshotMeta> {
    let kind: String = r.get(2)?;
    Ok(SnapshotMeta {
        id: r.get(0)?,
        agent: r.get(1)?,
        kind: SnapshotKind::parse(&kind),
        label: r.get(3)?,
        task_id: r.get(4)?,
        size: r.get(5)?,
        created_at: r.get(6)?,
    })
}

impl Ledger {
    pub fn put_snapshot(
        &mut self,
        agent: &str,
        kind: SnapshotKind,
        label: Option<&str>,
        task_id: Option<TaskId>,
        data: &[u8],
    ) -> Result<i64> {
        // In a fleet, only the member running the agent saves its memory or
        // workspace: a stale member's late conversation must not become
        // what the agent remembers next.
        self.tx(|c| {
            self.check_fence(c, agent)?;
            c.query_one(
                "INSERT INTO snapshots (agent, kind, label, task_id, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 RETURNING id",
                args![agent, kind.as_str(), label, task_id, data, now_ms()],
            )
            .and_then(|r| r.get(0))
            .map_err(|e| self.err(e))
        })
    }

    /// Newest first.
    pub fn list_snapshots(&self, agent: &str, kind: Option<SnapshotKind>) -> Result<Vec<SnapshotMeta>> {
        let sql = format!(
            "SELECT {META_COLUMNS} FROM snapshots WHERE agent = ?1 AND (CAST(?2 AS TEXT) IS NULL OR kind = ?2) ORDER BY id DESC"
        );
        let rows = self
            .conn
            .query(&sql, args![agent, kind.map(SnapshotKind::as_str)])
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(meta_from_row)
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// What is stored about snapshot `id`, without its data.
    pub fn snapshot_meta(&self, id: i64) -> Result<SnapshotMeta> {
        let sql = format!("SELECT {META_COLUMNS} FROM snapshots WHERE id = ?1");
        self.conn
            .query_opt(&sql, args![id])
            .and_then(|r| r.as_ref().map(meta_from_row).transpose())
            .map_err(|e| self.err(e))?
            .ok_or_else(|| LedgerError::NoSuchSnapshot(id.to_string()))
    }

    /// A snapshot of `agent` by id or label (the newest with that label).
    pub fn snapshot(&self, agent: &str, id_or_label: &str) -> Result<Snapshot> {
        let sql = format!(
            "SELECT {META_COLUMNS}, data FROM snapshots
             WHERE agent = ?1 AND (CAST(id AS TEXT) = ?2 OR label = ?2) ORDER BY id DESC LIMIT 1"
        );
        self.conn
            .query_opt(&sql, args![agent, id_or_label])
            .and_then(|r| r.as_ref().map(snapshot_from_row).transpose())
            .map_err(|e| self.err(e))?
            .ok_or_else(|| LedgerError::NoSuchSnapshot(format!("{agent}/{id_or_label}")))
    }

    pub fn latest_snapshot(&self, agent: &str, kind: SnapshotKind) -> Result<Option<Snapshot>> {
        let sql = format!(
            "SELECT {META_COLUMNS}, data FROM snapshots WHERE agent = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1"
        );
        self.conn
            .query_opt(&sql, args![agent, kind.as_str()])
            .and_then(|r| r.as_ref().map(snapshot_from_row).transpose())
            .map_err(|e| self.err(e))
    }

    /// [`latest_snapshot`](Self::latest_snapshot) of each of `agents` that
    /// has one, in one query: a thousand agents starting read their saved
    /// conversations in a few round trips, not a thousand.
    pub fn latest_snapshots(&self, agents: &[&str], kind: SnapshotKind) -> Result<Vec<Snapshot>> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = (2..agents.len() + 2).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "SELECT {META_COLUMNS}, data FROM snapshots WHERE id IN
               (SELECT max(id) FROM snapshots WHERE kind = ?1 AND agent IN ({}) GROUP BY agent)",
            names.join(", ")
        );
        let mut params = vec![Value::from(kind.as_str())];
        params.extend(agents.iter().map(|a| Value::from(*a)));
        self.conn
            .query(&sql, &params)
            .and_then(|rows| rows.iter().map(snapshot_from_row).collect())
            .map_err(|e| self.err(e))
    }
}

fn snapshot_from_row(r: &Row) -> DbResult<Snapshot> {
    Ok(Snapshot {
        meta: meta_from_row(r)?,
        data: r.get(7)?,
    })
}
