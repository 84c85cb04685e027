//! Tasks and their step journal.

use serde::{Deserialize, Serialize};

use super::db::{Conn, DbResult, Row, Value, args};
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
    /// The fleet member that ran it last (none on a single host).
    #[serde(default)]
    pub host: Option<String>,
}

impl Task {
    pub fn trigger(&self) -> Option<Trigger> {
        serde_json::from_value(self.trigger.clone()).ok()
    }

    /// A row of [`TASK_COLUMNS`], in that order.
    fn from_row(r: &Row) -> DbResult<Task> {
        let payload: String = r.get(3)?;
        let state: String = r.get(5)?;
        Ok(Task {
            id: r.get(0)?,
            agent: r.get(1)?,
            trigger_kind: r.get(2)?,
            trigger: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
            dedupe_key: r.get(4)?,
            // The CHECK constraint keeps other strings out of the column.
            state: TaskState::parse(&state).unwrap_or(TaskState::Failed),
            attempts: r.get(6)?,
            lease: r.get(7)?,
            created_at: r.get(8)?,
            started_at: r.get(9)?,
            finished_at: r.get(10)?,
            input_tokens: r.get(11)?,
            output_tokens: r.get(12)?,
            error: r.get(13)?,
            result: r.get(14)?,
            host: r.get(15)?,
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

/// The listing's query: only the conditions given, so the database picks
/// the index that fits them.
fn list_query(filter: &TaskFilter) -> (String, Vec<Value>) {
    let mut conds = Vec::new();
    let mut args: Vec<Value> = Vec::new();
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
    let limit = match filter.limit {
        Some(n) => {
            args.push(Value::from(n));
            format!("LIMIT ?{}", args.len())
        }
        None => String::new(),
    };
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks {where_} ORDER BY id DESC {limit}");
    (sql, args)
}

const TASK_COLUMNS: &str = "id, agent, trigger_kind, trigger_payload, dedupe_key, state, attempts, lease, \
     created_at, started_at, finished_at, input_tokens, output_tokens, error, result, host";

impl Ledger {
    /// Records a trigger as a queued task. While a task with the same
    /// agent and `dedupe_key` is still queued, the trigger coalesces into it
    /// (its payload is replaced by the newer one).
    pub fn enqueue(&mut self, agent: &str, trigger: &Trigger, dedupe_key: Option<&str>) -> Result<Enqueued> {
        let payload = serde_json::to_string(trigger).unwrap_or_default();
        self.tx(|c| {
            // In a fleet every member fires every schedule: the first to
            // record an occurrence makes the task, the others find it.
            if let (
                true,
                Trigger::Schedule {
                    cron,
                    prompt,
                    scheduled_for,
                },
            ) = (self.is_shared(), trigger)
            {
                let host = self.fence().map(|f| f.host.clone()).unwrap_or_default();
                let schedule = format!("{cron}\n{prompt}");
                let fresh = c
                    .execute(
                        "INSERT INTO schedule_firings (agent, schedule, fire_at, host) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT DO NOTHING",
                        args![agent, schedule.as_str(), scheduled_for.as_str(), host.as_str()],
                    )
                    .map_err(|e| self.err(e))?;
                if fresh == 0 {
                    let task: Option<TaskId> = c
                        .query_opt(
                            "SELECT task_id FROM schedule_firings WHERE agent = ?1 AND schedule = ?2 AND fire_at = ?3",
                            args![agent, schedule.as_str(), scheduled_for.as_str()],
                        )
                        .and_then(|r| r.map(|r| r.get::<Option<TaskId>>(0)).transpose())
                        .map_err(|e| self.err(e))?
                        .flatten();
                    return Ok(Enqueued::Coalesced(task.unwrap_or(TaskId(0))));
                }
                let out = enqueue_in(c, agent, trigger, &payload, dedupe_key).map_err(|e| self.err(e))?;
                c.execute(
                    "UPDATE schedule_firings SET task_id = ?4 WHERE agent = ?1 AND schedule = ?2 AND fire_at = ?3",
                    args![agent, schedule.as_str(), scheduled_for.as_str(), out.id()],
                )
                .map_err(|e| self.err(e))?;
                return Ok(out);
            }
            enqueue_in(c, agent, trigger, &payload, dedupe_key).map_err(|e| self.err(e))
        })
        .inspect(|_| self.wake(agent))
    }

    /// Hands the agent's oldest queued task to `lease`, unless the agent
    /// already has one running or waiting for an approval: an agent runs
    /// one task at a time, and a waiting one starts no other.
    /// Claiming clears the dedupe key, so an update that arrives while the
    /// task runs queues a fresh task instead of vanishing into this one.
    /// In a fleet, only the member holding the agent's lease may claim.
    pub fn claim_next(&mut self, agent: &str, lease: &Lease) -> Result<Option<Task>> {
        let sql = format!(
            "UPDATE tasks SET state = 'running', lease = ?2, attempts = attempts + 1, started_at = ?3,
                              dedupe_key = NULL, host = ?4
             WHERE id = (SELECT id FROM tasks WHERE agent = ?1 AND state = 'queued' ORDER BY id LIMIT 1)
               AND NOT EXISTS (SELECT 1 FROM tasks WHERE agent = ?1 AND state IN ('running', 'waiting'))
             RETURNING {TASK_COLUMNS}"
        );
        // Most agents have nothing queued (a thousand agents starting each
        // ask once): a read says so without taking the write lock.
        let queued = self
            .conn
            .query_opt(
                "SELECT 1 FROM tasks WHERE agent = ?1 AND state = 'queued' LIMIT 1",
                args![agent],
            )
            .map_err(|e| self.err(e))?;
        if queued.is_none() {
            return Ok(None);
        }
        self.tx(|c| {
            self.check_fence(c, agent)?;
            let host = self.fence().map(|f| f.host.as_str());
            c.query_opt(&sql, args![agent, lease, now_ms(), host])
                .and_then(|r| r.as_ref().map(Task::from_row).transpose())
                .map_err(|e| self.err(e))
        })
    }

    /// The attempt of `task` if `lease` holds it (and, in a fleet, this
    /// member still holds its agent's lease).
    fn check_lease(&self, c: &Conn, task: TaskId, lease: &Lease) -> Result<i64> {
        self.check_fence(c, &lease.agent)?;
        c.query_opt(
            "SELECT attempts FROM tasks WHERE id = ?1 AND state = 'running' AND lease = ?2",
            args![task, lease],
        )
        .and_then(|r| r.map(|r| r.get(0)).transpose())
        .map_err(|e| self.err(e))?
        .ok_or_else(|| LedgerError::StaleLease {
            task,
            lease: lease.to_string(),
        })
    }

    /// Appends a step to a running task's journal; returns its sequence number.
    pub fn append_step(&mut self, task: TaskId, lease: &Lease, step: &NewStep) -> Result<i64> {
        self.tx(|c| {
            let attempt = self.check_lease(c, task, lease)?;
            let seq = next_seq(c, task).map_err(|e| self.err(e))?;
            c.execute(
                "INSERT INTO steps (task_id, seq, attempt, kind, payload, input_tokens, output_tokens, latency_ms, created_at,
                                    model, cached_tokens)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                args![
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
            .map_err(|e| self.err(e))?;
            if step.input_tokens != 0 || step.output_tokens != 0 {
                c.execute(
                    "UPDATE tasks SET input_tokens = input_tokens + ?2, output_tokens = output_tokens + ?3 WHERE id = ?1",
                    args![task, step.input_tokens, step.output_tokens],
                )
                .map_err(|e| self.err(e))?;
            }
            Ok(seq)
        })
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
        self.tx(|c| {
            self.check_fence(c, &lease.agent)?;
            let n = c
                .execute(
                    "UPDATE tasks SET state = ?3, result = ?4, error = ?5, finished_at = ?6, lease = NULL
                     WHERE id = ?1 AND state = 'running' AND lease = ?2",
                    args![task, lease, state.as_str(), result, error, now_ms()],
                )
                .map_err(|e| self.err(e))?;
            if n == 0 {
                return Err(LedgerError::StaleLease {
                    task,
                    lease: lease.to_string(),
                });
            }
            Ok(())
        })
        // Whoever waits for its answer may be on another member.
        .inspect(|_| self.wake(&format!("{}{task}", super::fleet::ENDED_WAKE)))
    }

    /// The runner of a task is gone (its child died, agentd restarted, or
    /// in a fleet the host that ran it was lost): put the task back in the
    /// queue, or fail it once `max_attempts` are spent. Returns the task's
    /// new state. In a fleet, only the member holding the agent's lease
    /// may do this.
    pub fn release(&mut self, task: TaskId, cause: &str, max_attempts: u32) -> Result<TaskState> {
        self.tx(|c| {
            let agent: String = c
                .query_opt("SELECT agent FROM tasks WHERE id = ?1", args![task])
                .and_then(|r| r.map(|r| r.get(0)).transpose())
                .map_err(|e| self.err(e))?
                .ok_or(LedgerError::NoSuchTask(task))?;
            self.check_fence(c, &agent)?;
            release_in(c, task, cause, max_attempts).map_err(|e| match e {
                Released::Db(e) => self.err(e),
                Released::NotRunning => LedgerError::NoSuchTask(task),
            })
        })
    }

    /// Tasks left `running` by a previous agentd process.
    pub fn running_tasks(&self) -> Result<Vec<Task>> {
        self.list_tasks(&TaskFilter {
            state: Some(TaskState::Running),
            ..Default::default()
        })
    }

    /// Queued tasks per agent, for every agent that has any: one query for
    /// a status or a metrics scrape of all agents.
    pub fn queued_counts(&self) -> Result<std::collections::HashMap<String, i64>> {
        let rows = self
            .conn
            .query(
                "SELECT agent, count(*) FROM tasks WHERE state = 'queued' GROUP BY agent",
                &[],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    pub fn queued_count(&self, agent: &str) -> Result<i64> {
        self.conn
            .query_one(
                "SELECT count(*) FROM tasks WHERE agent = ?1 AND state = 'queued'",
                args![agent],
            )
            .and_then(|r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The `scheduled_for` of the newest task recorded for this agent's
    /// schedule (same cron and prompt), in any state: where a catch-up after
    /// downtime measures from. Dedupe keys are cleared when a task is
    /// claimed, so the schedule is matched by its payload.
    pub fn last_scheduled_for(&self, agent: &str, cron: &str, prompt: &str) -> Result<Option<String>> {
        let j = |key| self.conn.json_text("trigger_payload", key);
        let sql = format!(
            "SELECT {} FROM tasks
             WHERE agent = ?1 AND trigger_kind = 'schedule' AND {} = ?2 AND {} = ?3
             ORDER BY id DESC LIMIT 1",
            j("scheduled_for"),
            j("cron"),
            j("prompt")
        );
        self.conn
            .query_opt(&sql, args![agent, cron, prompt])
            .and_then(|r| r.map(|r| r.get::<Option<String>>(0)).transpose())
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// Newest first. The query names only the conditions given, so SQLite
    /// walks the index that fits (`tasks_by_agent_state`, `tasks_by_agent`,
    /// `tasks_by_state`, or the table itself newest first) and stops after
    /// `limit` rows: a page costs the same at 100 tasks as at 100,000.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let (sql, args) = list_query(filter);
        let rows = self.conn.query(&sql, &args).map_err(|e| self.err(e))?;
        rows.iter()
            .map(Task::from_row)
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// SQLite's plan for [`Ledger::list_tasks`] with `filter`, one line a
    /// step: tests prove each listing walks an index. PostgreSQL's
    /// `EXPLAIN`, one line a node.
    #[doc(hidden)]
    pub fn list_tasks_plan(&self, filter: &TaskFilter) -> Result<Vec<String>> {
        let (sql, args) = list_query(filter);
        let (explain, col) = match self.conn.backend() {
            super::Backend::Sqlite => ("EXPLAIN QUERY PLAN", 3),
            super::Backend::Postgres => ("EXPLAIN", 0),
        };
        let rows = self
            .conn
            .query(&format!("{explain} {sql}"), &args)
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| r.get::<String>(col))
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Records a webhook delivery as a task, once: a delivery whose `key`
    /// this agent has seen before is the task it became (in any state),
    /// and nothing new is written.
    pub fn enqueue_delivery(&mut self, agent: &str, key: &str, trigger: &Trigger) -> Result<Enqueued> {
        let payload = serde_json::to_string(trigger).unwrap_or_default();
        self.tx(|c| {
            let seen: Option<TaskId> = c
                .query_opt(
                    "SELECT task_id FROM deliveries WHERE agent = ?1 AND key = ?2",
                    args![agent, key],
                )
                .and_then(|r| r.map(|r| r.get(0)).transpose())
                .map_err(|e| self.err(e))?;
            if let Some(id) = seen {
                return Ok(Enqueued::Coalesced(id));
            }
            let now = now_ms();
            let id: TaskId = c
                .query_one(
                    "INSERT INTO tasks (agent, trigger_kind, trigger_payload, state, created_at)
                     VALUES (?1, ?2, ?3, 'queued', ?4) RETURNING id",
                    args![agent, trigger.kind(), payload.as_str(), now],
                )
                .and_then(|r| r.get(0))
                .map_err(|e| self.err(e))?;
            c.execute(
                "INSERT INTO deliveries (agent, key, task_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                args![agent, key, id, now],
            )
            .map_err(|e| self.err(e))?;
            Ok(Enqueued::New(id))
        })
        .inspect(|_| self.wake(agent))
    }

    /// Appends a step about a task that has ended (a notification sent
    /// about it): no lease, as no agent holds the task any more. Returns
    /// its sequence number.
    pub fn append_note(&mut self, task: TaskId, step: &NewStep) -> Result<i64> {
        self.tx(|c| {
            let attempt: i64 = c
                .query_opt("SELECT attempts FROM tasks WHERE id = ?1", args![task])
                .and_then(|r| r.map(|r| r.get(0)).transpose())
                .map_err(|e| self.err(e))?
                .ok_or(LedgerError::NoSuchTask(task))?;
            plain_step(
                c,
                task,
                attempt,
                step.kind.as_str(),
                &step.payload,
                step.latency_ms,
                now_ms(),
            )
            .map_err(|e| self.err(e))
        })
    }

    pub fn task(&self, id: TaskId) -> Result<Task> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        self.conn
            .query_opt(&sql, args![id])
            .and_then(|r| r.as_ref().map(Task::from_row).transpose())
            .map_err(|e| self.err(e))?
            .ok_or(LedgerError::NoSuchTask(id))
    }

    pub fn steps(&self, task: TaskId) -> Result<Vec<Step>> {
        let rows = self
            .conn
            .query(
                "SELECT task_id, seq, attempt, kind, payload, input_tokens, output_tokens, latency_ms, created_at
                 FROM steps WHERE task_id = ?1 ORDER BY seq",
                args![task],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let payload: String = r.get(4)?;
                Ok(Step {
                    task_id: r.get(0)?,
                    seq: r.get(1)?,
                    attempt: r.get(2)?,
                    kind: StepKind::parse(&r.get::<String>(3)?),
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
                    input_tokens: r.get(5)?,
                    output_tokens: r.get(6)?,
                    latency_ms: r.get(7)?,
                    created_at: r.get(8)?,
                })
            })
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}

/// [`Ledger::enqueue`] inside the caller's transaction.
fn enqueue_in(c: &Conn, agent: &str, trigger: &Trigger, payload: &str, dedupe_key: Option<&str>) -> DbResult<Enqueued> {
    let existing: Option<TaskId> = match dedupe_key {
        Some(key) => c
            .query_opt(
                "SELECT id FROM tasks WHERE agent = ?1 AND dedupe_key = ?2 AND state = 'queued'",
                args![agent, key],
            )?
            .map(|r| r.get(0))
            .transpose()?,
        None => None,
    };
    match existing {
        Some(id) => {
            c.execute(
                "UPDATE tasks SET trigger_payload = ?1 WHERE id = ?2",
                args![payload, id],
            )?;
            Ok(Enqueued::Coalesced(id))
        }
        None => {
            let id = c
                .query_one(
                    "INSERT INTO tasks (agent, trigger_kind, trigger_payload, dedupe_key, state, created_at)
                     VALUES (?1, ?2, ?3, ?4, 'queued', ?5) RETURNING id",
                    args![agent, trigger.kind(), payload, dedupe_key, now_ms()],
                )?
                .get(0)?;
            Ok(Enqueued::New(id))
        }
    }
}

/// Why [`release_in`] did nothing.
pub(super) enum Released {
    Db(super::db::DbError),
    /// The task is not running (nor waiting).
    NotRunning,
}

/// Re-queues (or fails, past `max_attempts`) a running task whose runner
/// is gone, inside the caller's transaction; a waiting task keeps waiting
/// without a runner (the answer puts it back in the queue).
pub(super) fn release_in(c: &Conn, task: TaskId, cause: &str, max_attempts: u32) -> Result<TaskState, Released> {
    let waiting = c
        .execute(
            "UPDATE tasks SET lease = NULL WHERE id = ?1 AND state = 'waiting'",
            args![task],
        )
        .map_err(Released::Db)?;
    if waiting > 0 {
        return Ok(TaskState::Waiting);
    }
    let attempts: i64 = c
        .query_opt(
            "SELECT attempts FROM tasks WHERE id = ?1 AND state = 'running'",
            args![task],
        )
        .and_then(|r| r.map(|r| r.get(0)).transpose())
        .map_err(Released::Db)?
        .ok_or(Released::NotRunning)?;
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
    c.execute(
        "UPDATE tasks SET state = ?2, error = ?3, lease = NULL, finished_at = ?4 WHERE id = ?1",
        args![task, state.as_str(), error, finished],
    )
    .map_err(Released::Db)?;
    Ok(state)
}

/// The next sequence number of `task`'s journal, inside the transaction
/// that writes the step.
fn next_seq(c: &Conn, task: TaskId) -> DbResult<i64> {
    c.query_one(
        "SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE task_id = ?1",
        args![task],
    )?
    .get(0)
}

/// Appends a journal step written by agentd itself (no tokens, no
/// model: a cancellation, an approval, a notification) inside `tx`;
/// returns its sequence number.
pub(super) fn plain_step(
    c: &Conn,
    task: TaskId,
    attempt: i64,
    kind: &str,
    payload: &serde_json::Value,
    latency_ms: Option<i64>,
    now: i64,
) -> DbResult<i64> {
    let seq = next_seq(c, task)?;
    c.execute(
        "INSERT INTO steps (task_id, seq, attempt, kind, payload, latency_ms, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![task, seq, attempt, kind, payload.to_string(), latency_ms, now],
    )?;
    Ok(seq)
}
