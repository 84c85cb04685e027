//! What operators use to bound agents, as the ledger keeps it: pauses
//! (with their reason, so a restarted agentd starts a paused agent paused),
//! cancellations (the task's end and a journal step saying who and why),
//! and the model calls' token counts that budgets and `agentd spend` sum.
//!
//! Spend is never stored apart from the journal: it is read back from the
//! `llm` steps (tokens, model, time), so it survives restarts and cannot
//! drift from what was recorded. The step's model and cached tokens are
//! also columns, with a partial index over model calls by time, so a
//! budget check sums an index instead of parsing every payload.

use serde::{Deserialize, Serialize};

use super::db::{DbResult, Row, args};
use super::{Ledger, LedgerError, Result, now_ms};
use crate::domain::{PauseReason, TaskId, TaskState};

/// A paused agent, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    pub agent: String,
    pub reason: PauseReason,
    /// Who paused it (`uid 1000`, `repl`, `budget`).
    pub by: String,
    pub note: Option<String>,
    /// Milliseconds since the epoch.
    pub since: i64,
}

/// What a cancellation found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub task: TaskId,
    pub agent: String,
    /// The task's state before: queued or running.
    pub was: TaskState,
}

/// Model calls' tokens, read from their `llm` journal steps: one call, or
/// (from [`Ledger::llm_usage_by_model`]) all calls of one model summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmUsage {
    pub agent: String,
    /// How many calls this counts.
    pub calls: i64,
    /// The model the step names; steps written before agentd recorded it
    /// have none.
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Part of `input_tokens` the provider served from its cache.
    pub cached_tokens: i64,
    /// Milliseconds since the epoch (of the latest call, when summed).
    pub at: i64,
}

impl Ledger {
    /// Records `agent` as paused (replacing an earlier pause's reason).
    pub fn set_pause(&mut self, pause: &Pause) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO pauses (agent, reason, by, note, since) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (agent) DO UPDATE SET reason = ?2, by = ?3, note = ?4, since = ?5",
                args![
                    pause.agent.as_str(),
                    pause.reason.as_str(),
                    pause.by.as_str(),
                    pause.note.as_deref(),
                    pause.since
                ],
            )
            .map_err(|e| self.err(e))?;
        // In a fleet, the member running the agent hears of it at once.
        self.wake(&pause.agent);
        Ok(())
    }

    pub fn clear_pause(&mut self, agent: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM pauses WHERE agent = ?1", args![agent])
            .map_err(|e| self.err(e))?;
        self.wake(agent);
        Ok(())
    }

    /// Every paused agent (removed agents' pauses included: they apply if
    /// the agent comes back).
    pub fn pauses(&self) -> Result<Vec<Pause>> {
        let rows = self
            .conn
            .query("SELECT agent, reason, by, note, since FROM pauses ORDER BY agent", &[])
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(Pause {
                    agent: r.get(0)?,
                    reason: PauseReason::parse(&r.get::<String>(1)?),
                    by: r.get(2)?,
                    note: r.get(3)?,
                    since: r.get(4)?,
                })
            })
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Cancels a queued or running task, whoever holds it: the task ends
    /// `cancelled` (its lease cleared, so whatever its runner still sends
    /// about it is refused as stale) and its journal gets a `cancel` step
    /// with who and why. A task that already ended is left alone.
    pub fn cancel(&mut self, task: TaskId, by: &str, reason: Option<&str>) -> Result<Cancelled> {
        self.tx(|c| {
            let found = c
                .query_opt("SELECT state, attempts, agent FROM tasks WHERE id = ?1", args![task])
                .and_then(|r| {
                    r.map(|r| Ok::<_, super::db::DbError>((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<String>(2)?)))
                        .transpose()
                })
                .map_err(|e| self.err(e))?;
            let (state, attempts, agent) = found.ok_or(LedgerError::NoSuchTask(task))?;
            let was = TaskState::parse(&state).unwrap_or(TaskState::Failed);
            if was.is_final() {
                return Err(LedgerError::AlreadyEnded { task, state: was });
            }
            let error = match reason {
                Some(r) => format!("cancelled by {by}: {r}"),
                None => format!("cancelled by {by}"),
            };
            let now = now_ms();
            c.execute(
                "UPDATE tasks SET state = 'cancelled', error = ?2, finished_at = ?3, lease = NULL, dedupe_key = NULL
                 WHERE id = ?1",
                args![task, error, now],
            )
            .map_err(|e| self.err(e))?;
            // Its open questions are closed with it.
            c.execute(
                "UPDATE approvals SET state = 'denied', answered_at = ?2, answered_by = ?3, note = 'the task was cancelled'
                 WHERE task_id = ?1 AND state = 'pending'",
                args![task, now, by],
            )
            .map_err(|e| self.err(e))?;
            let payload = serde_json::json!({"by": by, "reason": reason, "was": was.as_str()});
            super::tasks::plain_step(c, task, attempts, "cancel", &payload, None, now).map_err(|e| self.err(e))?;
            Ok(Cancelled { task, agent, was })
        })
        .inspect(|c| self.wake(&c.agent))
    }

    /// Model calls since `since` (ms) summed per agent and model: what a
    /// budget check needs unless the budget is used up (then
    /// [`Ledger::llm_usage`] tells when the window has room again).
    pub fn llm_usage_by_model(&self, agent: Option<&str>, since: i64) -> Result<Vec<LlmUsage>> {
        // Sums are cast back to integers: PostgreSQL sums BIGINTs as NUMERIC.
        let rows = self
            .conn
            .query(
                "SELECT t.agent, s.model, count(*), CAST(sum(s.input_tokens) AS BIGINT), CAST(sum(s.output_tokens) AS BIGINT),
                        CAST(sum(s.cached_tokens) AS BIGINT), max(s.created_at)
                 FROM steps s JOIN tasks t ON t.id = s.task_id
                 WHERE s.kind = 'llm' AND s.created_at >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR t.agent = ?2)
                 GROUP BY t.agent, s.model ORDER BY t.agent, s.model",
                args![since, agent],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(LlmUsage {
                    agent: r.get(0)?,
                    model: r.get(1)?,
                    calls: r.get(2)?,
                    input_tokens: r.get(3)?,
                    output_tokens: r.get(4)?,
                    cached_tokens: r.get(5)?,
                    at: r.get(6)?,
                })
            })
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Model calls since `since` (ms), of one agent or all, oldest first.
    pub fn llm_usage(&self, agent: Option<&str>, since: i64) -> Result<Vec<LlmUsage>> {
        let rows = self
            .conn
            .query(
                "SELECT t.agent, s.model, s.input_tokens, s.output_tokens, s.cached_tokens, s.created_at
                 FROM steps s JOIN tasks t ON t.id = s.task_id
                 WHERE s.kind = 'llm' AND s.created_at >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR t.agent = ?2)
                 ORDER BY s.created_at, s.id",
                args![since, agent],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r: &Row| {
                Ok(LlmUsage {
                    agent: r.get(0)?,
                    calls: 1,
                    model: r.get(1)?,
                    input_tokens: r.get(2)?,
                    output_tokens: r.get(3)?,
                    cached_tokens: r.get(4)?,
                    at: r.get(5)?,
                })
            })
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}
