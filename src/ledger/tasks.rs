//! Tasks and their step journal.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Ledger, LedgerError, Result, now_ms};
use crate::domain::{Lease, NewStep, StepKind, TaskId, TaskState, Trigger};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub agent: String,
    pub trigger_kind: String,
    /// The trigger as stored; `Trigger` when written by this version.
    pub trigger: serde_json::Value,
    pub dedupe_key: Option<String>,
    pub state: TaskState,
    pub attempts: i64,
    pub lease: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub error: Option<String>,
    pub result: Option<String>,
}

impl Task {
    pub fn trigger(&self) -> Option<Trigger> {
        serde_json::from_value(self.trigger.clone()).ok()
    }

    fn from_row(r: &Row) -> rusqlite::Result<Task> {
        let payload: String = r.get("trigger_payload")?;
        let state: String = r.get("state")?;
        Ok(Task {
            id: r.get("id")?,
            agent: r.get("agent")?,
            trigger_kind: r.get("trigger_kind")?,
            trigger: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
            dedupe_key: r.get("dedupe_key")?,
            // The CHECK constraint keeps other strings out of the column.
            state: TaskState::parse(&state).unwrap_or(TaskState::Failed),
            attempts: r.get("attempts")?,
            lease: r.get("lease")?,
            created_at: r.get("created_at")?,
            started_at: r.get("started_at")?,
            finished_at: r.get("finished_at")?,
            input_tokens: r.get("input_tokens")?,
            output_tokens: r.get("output_tokens")?,
            error: r.get("error")?,
            result: r.get("result")?,
        })
    }
}

/// One journal entry: an LLM request/reply, a tool call/result, a fence run…
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub task_id: TaskId,
    pub seq: i64,
    pub attempt: i64,
    pub kind: StepKind,
    pub payload: serde_json::Value,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub latency_ms: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New(TaskId),
    /// An equal trigger was already queued; it now carries the new payload.
    Coalesced(TaskId),
}

impl Enqueued {
    pub fn id(self) -> TaskId {
        match self {
            Enqueued::New(id) | Enqueued::Coalesced(id) => id,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub agent: Option<String>,
    pub state: Option<TaskState>,
    pub limit: Option<u32>,
    /// Only tasks with a smaller id (the next page of a newest-first list).
    pub before: Option<i64>,
}

/// The listing's query: only the conditions given, so SQLite picks the
/// index that fits them.
fn list_query(filter: &TaskFilter) -> (String, Vec<rusqlite::types::Value>) {
    let mut conds = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(a) = &filter.agent {
        args.push(a.clone().into());
        conds.push(format!("agent = ?{}", args.len()));
    }
    if let Some(st) = filter.state {
        args.push(st.as_str().to_owned().into());
        conds.push(format!("state = ?{}", args.len()));
    }
    if let Some(b) = filter.before {
        args.push(b.into());
        conds.push(format!("id < ?{}", args.len()));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    args.push(filter.limit.map(i64::from).unwrap_or(-1).into());
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks {where_} ORDER BY id DESC LIMIT ?{}",
        args.len()
    );
    (sql, args)
}

const TASK_COLUMNS: &str = "id, agent, trigger_kind, trigger_payload, dedupe_key, state, attempts, lease, \
     created_at, started_at, finished_at, input_tokens, output_tokens, error, result";

impl Ledger {
    /// Records a trigger as a queued task. While a task with the same
    /// agent and `dedupe_key` is still queued, the trigger coalesces into it
    /// (its payload is replaced by the newer one).
    pub fn enqueue(&mut self, agent: &str, trigger: &Trigger, dedupe_key: Option<&str>) -> Result<Enqueued> {
        let payload = serde_json::to_string(trigger).unwrap_or_default();
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| super::sqlite(&path, e))?;
        let existing: Option<TaskId> = match dedupe_key {
            Some(key) => tx
                .query_row(
                    "SELECT id FROM tasks WHERE agent = ?1 AND dedupe_key = ?2 AND state = 'queued'",
                    params![agent, key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| super::sqlite(&path, e))?,
            None => None,
        };
        let out = match existing {
            Some(id) => {
                tx.execute(
                    "UPDATE tasks SET trigger_payload = ?1 WHERE id = ?2",
                    params![payload, id],
                )
                .map_err(|e| super::sqlite(&path, e))?;
                Enqueued::Coalesced(id)
            }
            None => {
                tx.execute(
                    "INSERT INTO tasks (agent, trigger_kind, trigger_payload, dedupe_key, state, created_at)
                     VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
                    params![agent, trigger.kind(), payload, dedupe_key, now_ms()],
                )
                .map_err(|e| super::sqlite(&path, e))?;
                Enqueued::New(TaskId(tx.last_insert_rowid()))
            }
        };
        tx.commit().map_err(|e| super::sqlite(&path, e))?;
        Ok(out)
    }

    /// Hands the agent's oldest queued task to `lease`, unless the agent
    /// already has one running or waiting for an approval: an agent runs
    /// one task at a time, and a waiting one starts no other.
    /// Claiming clears the dedupe key, so an update that arrives while the
    /// task runs queues a fresh task instead of vanishing into this one.
    pub fn claim_next(&mut self, agent: &str, lease: &Lease) -> Result<Option<Task>> {
        let sql = format!(
            "UPDATE tasks SET state = 'running', lease = ?2, attempts = attempts + 1, started_at = ?3,
                              dedupe_key = NULL
             WHERE id = (SELECT id FROM tasks WHERE agent = ?1 AND state = 'queued' ORDER BY id LIMIT 1)
               AND NOT EXISTS (SELECT 1 FROM tasks WHERE agent = ?1 AND state IN ('running', 'waiting'))
             RETURNING {TASK_COLUMNS}"
        );
        self.conn
            .query_row(&sql, params![agent, lease, now_ms()], Task::from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    fn check_lease(&self, task: TaskId, lease: &Lease) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT attempts FROM tasks WHERE id = ?1 AND state = 'running' AND lease = ?2",
                params![task, lease],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| LedgerError::StaleLease {
                task,
                lease: lease.to_string(),
            })
    }

    /// Appends a step to a running task's journal; returns its sequence number.
    pub fn append_step(&mut self, task: TaskId, lease: &Lease, step: &NewStep) -> Result<i64> {
        let attempt = self.check_lease(task, lease)?;
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| super::sqlite(&path, e))?;
        let seq = next_seq(&tx, task).map_err(|e| super::sqlite(&path, e))?;
        tx.execute(
            "INSERT INTO steps (task_id, seq, attempt, kind, payload, input_tokens, output_tokens, latency_ms, created_at,
                                model, cached_tokens)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                task,
                seq,
                attempt,
                step.kind.as_str(),
                step.payload.to_string(),
                step.input_tokens,
                step.output_tokens,
                step.latency_ms,
                now_ms(),
                // Model calls' price keys, in columns budgets sum without
                // parsing payloads (see governance.rs).
                step.payload.get("model").and_then(|m| m.as_str()),
                step.payload.get("cached_tokens").and_then(|c| c.as_i64()).unwrap_or(0),
            ],
        )
        .map_err(|e| super::sqlite(&path, e))?;
        if step.input_tokens != 0 || step.output_tokens != 0 {
            tx.execute(
                "UPDATE tasks SET input_tokens = input_tokens + ?2, output_tokens = output_tokens + ?3 WHERE id = ?1",
                params![task, step.input_tokens, step.output_tokens],
            )
            .map_err(|e| super::sqlite(&path, e))?;
        }
        tx.commit().map_err(|e| super::sqlite(&path, e))?;
        Ok(seq)
    }

    /// Ends a running task held by `lease`. `state` must be final.
    pub fn finish(
        &mut self,
        task: TaskId,
        lease: &Lease,
        state: TaskState,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        debug_assert!(state.is_final());
        let n = self
            .conn
            .execute(
                "UPDATE tasks SET state = ?3, result = ?4, error = ?5, finished_at = ?6, lease = NULL
                 WHERE id = ?1 AND state = 'running' AND lease = ?2",
                params![task, lease, state.as_str(), result, error, now_ms()],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(LedgerError::StaleLease {
                task,
                lease: lease.to_string(),
            });
        }
        Ok(())
    }

    /// The runner of a task is gone (its child died, or agentd restarted):
    /// put the task back in the queue, or fail it once `max_attempts` are
    /// spent. Returns the task's new state.
    pub fn release(&mut self, task: TaskId, cause: &str, max_attempts: u32) -> Result<TaskState> {
        // A task waiting for an approval keeps waiting, with no runner: the
        // answer puts it back in the queue.
        let waiting = self
            .conn
            .execute(
                "UPDATE tasks SET lease = NULL WHERE id = ?1 AND state = 'waiting'",
                [task],
            )
            .map_err(|e| self.err(e))?;
        if waiting > 0 {
            return Ok(TaskState::Waiting);
        }
        let attempts: i64 = self
            .conn
            .query_row(
                "SELECT attempts FROM tasks WHERE id = ?1 AND state = 'running'",
                [task],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or(LedgerError::NoSuchTask(task))?;
        let (state, error) = if attempts < i64::from(max_attempts) {
            (
                TaskState::Queued,
                format!("{cause} (attempt {attempts} of {max_attempts}; re-queued)"),
            )
        } else {
            (
                TaskState::Failed,
                format!("{cause} (attempt {attempts} of {max_attempts}; giving up)"),
            )
        };
        let finished = state.is_final().then(now_ms);
        self.conn
            .execute(
                "UPDATE tasks SET state = ?2, error = ?3, lease = NULL, finished_at = ?4 WHERE id = ?1",
                params![task, state.as_str(), error, finished],
            )
            .map_err(|e| self.err(e))?;
        Ok(state)
    }

    /// Tasks left `running` by a previous agentd process.
    pub fn running_tasks(&self) -> Result<Vec<Task>> {
        self.list_tasks(&TaskFilter {
            state: Some(TaskState::Running),
            ..Default::default()
        })
    }

    pub fn queued_count(&self, agent: &str) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM tasks WHERE agent = ?1 AND state = 'queued'",
                [agent],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// The `scheduled_for` of the newest task recorded for this agent's
    /// schedule (same cron and prompt), in any state: where a catch-up after
    /// downtime measures from. Dedupe keys are cleared when a task is
    /// claimed, so the schedule is matched by its payload.
    pub fn last_scheduled_for(&self, agent: &str, cron: &str, prompt: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT json_extract(trigger_payload, '$.scheduled_for') FROM tasks
                 WHERE agent = ?1 AND trigger_kind = 'schedule'
                   AND json_extract(trigger_payload, '$.cron') = ?2
                   AND json_extract(trigger_payload, '$.prompt') = ?3
                 ORDER BY id DESC LIMIT 1",
                params![agent, cron, prompt],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// Newest first. The query names only the conditions given, so SQLite
    /// walks the index that fits (`tasks_by_agent_state`, `tasks_by_agent`,
    /// `tasks_by_state`, or the table itself newest first) and stops after
    /// `limit` rows: a page costs the same at 100 tasks as at 100,000.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let (sql, args) = list_query(filter);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), Task::from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.err(e))
    }

    /// SQLite's plan for [`Ledger::list_tasks`] with `filter`, one line a
    /// step: tests prove each listing walks an index.
    #[doc(hidden)]
    pub fn list_tasks_plan(&self, filter: &TaskFilter) -> Result<Vec<String>> {
        let (sql, args) = list_query(filter);
        let mut stmt = self
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.err(e))
    }

    /// Records a webhook delivery as a task, once: a delivery whose `key`
    /// this agent has seen before is the task it became (in any state),
    /// and nothing new is written.
    pub fn enqueue_delivery(&mut self, agent: &str, key: &str, trigger: &Trigger) -> Result<Enqueued> {
        let seen: Option<i64> = self
            .conn
            .query_row(
                "SELECT task_id FROM deliveries WHERE agent = ?1 AND key = ?2",
                params![agent, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(id) = seen {
            return Ok(Enqueued::Coalesced(TaskId(id)));
        }
        let payload = serde_json::to_string(trigger).unwrap_or_default();
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| super::sqlite(&path, e))?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO tasks (agent, trigger_kind, trigger_payload, state, created_at)
             VALUES (?1, ?2, ?3, 'queued', ?4)",
            params![agent, trigger.kind(), payload, now],
        )
        .map_err(|e| super::sqlite(&path, e))?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO deliveries (agent, key, task_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![agent, key, id, now],
        )
        .map_err(|e| super::sqlite(&path, e))?;
        tx.commit().map_err(|e| super::sqlite(&path, e))?;
        Ok(Enqueued::New(TaskId(id)))
    }

    /// Appends a step about a task that has ended (a notification sent
    /// about it): no lease, as no agent holds the task any more. Returns
    /// its sequence number.
    pub fn append_note(&mut self, task: TaskId, step: &NewStep) -> Result<i64> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| super::sqlite(&path, e))?;
        let attempt: i64 = tx
            .query_row("SELECT attempts FROM tasks WHERE id = ?1", [task], |r| r.get(0))
            .optional()
            .map_err(|e| super::sqlite(&path, e))?
            .ok_or(LedgerError::NoSuchTask(task))?;
        let seq = plain_step(
            &tx,
            task,
            attempt,
            step.kind.as_str(),
            &step.payload,
            step.latency_ms,
            now_ms(),
        )
        .map_err(|e| super::sqlite(&path, e))?;
        tx.commit().map_err(|e| super::sqlite(&path, e))?;
        Ok(seq)
    }

    pub fn task(&self, id: TaskId) -> Result<Task> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        self.conn
            .query_row(&sql, [id], Task::from_row)
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or(LedgerError::NoSuchTask(id))
    }

    pub fn steps(&self, task: TaskId) -> Result<Vec<Step>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT task_id, seq, attempt, kind, payload, input_tokens, output_tokens, latency_ms, created_at
                 FROM steps WHERE task_id = ?1 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([task], |r| {
                let payload: String = r.get(4)?;
                Ok(Step {
                    task_id: r.get(0)?,
                    seq: r.get(1)?,
                    attempt: r.get(2)?,
                    kind: StepKind::parse(&r.get::<_, String>(3)?),
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
                    input_tokens: r.get(5)?,
                    output_tokens: r.get(6)?,
                    latency_ms: r.get(7)?,
                    created_at: r.get(8)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.err(e))
    }
}

/// The next sequence number of `task`'s journal, inside the transaction
/// that writes the step.
fn next_seq(tx: &rusqlite::Transaction, task: TaskId) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE task_id = ?1",
        [task],
        |r| r.get(0),
    )
}

/// Appends a journal step written by agentd itself (no tokens, no
/// model: a cancellation, an approval, a notification) inside `tx`;
/// returns its sequence number.
pub(super) fn plain_step(
    tx: &rusqlite::Transaction,
    task: TaskId,
    attempt: i64,
    kind: &str,
    payload: &serde_json::Value,
    latency_ms: Option<i64>,
    now: i64,
) -> rusqlite::Result<i64> {
    let seq = next_seq(tx, task)?;
    tx.execute(
        "INSERT INTO steps (task_id, seq, attempt, kind, payload, latency_ms, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![task, seq, attempt, kind, payload.to_string(), latency_ms, now],
    )?;
    Ok(seq)
}
