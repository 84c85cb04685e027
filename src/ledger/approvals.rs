//! Approval requests and their answers. A request is written with the task
//! turned `waiting` in one transaction, so a restart of the child or of
//! agentd finds the task still waiting with what it asked; an answer is
//! written with its journal step, and is kept for the task until a run of
//! it uses it (a task whose runner died while it waited runs again, and
//! meets the same question answered).

use serde::{Deserialize, Serialize};

use super::db::{Conn, DbResult, Row, args};
use super::{Ledger, LedgerError, Result, now_ms};
use crate::domain::{ApprovalAnswer, ApprovalSubject, Lease, Remember, TaskId};

/// One approval request as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: i64,
    pub task: TaskId,
    pub agent: String,
    pub subject: ApprovalSubject,
    /// pending | approved | denied
    pub state: String,
    /// Milliseconds since the epoch.
    pub asked_at: i64,
    pub timeout_at: i64,
    /// approve | deny: what the timeout answers.
    pub on_timeout: String,
    pub answered_at: Option<i64>,
    pub answered_by: Option<String>,
    pub note: Option<String>,
    /// How long an approval holds: once | task | always | revoked (egress
    /// asks; `None` for everything else).
    #[serde(default)]
    pub remember: Option<String>,
}

impl Approval {
    /// A row of [`COLUMNS`], in that order.
    fn from_row(r: &Row) -> DbResult<Approval> {
        let subject: String = r.get(3)?;
        Ok(Approval {
            id: r.get(0)?,
            task: r.get(1)?,
            agent: r.get(2)?,
            subject: serde_json::from_str(&subject).unwrap_or(ApprovalSubject::Code {
                block: "unreadable".into(),
                code: subject,
            }),
            state: r.get(4)?,
            asked_at: r.get(5)?,
            timeout_at: r.get(6)?,
            on_timeout: r.get(7)?,
            answered_at: r.get(8)?,
            answered_by: r.get(9)?,
            note: r.get(10)?,
            remember: r.get(11)?,
        })
    }

    pub fn answer(&self) -> Option<ApprovalAnswer> {
        let approved = match self.state.as_str() {
            "approved" => true,
            "denied" => false,
            _ => return None,
        };
        Some(ApprovalAnswer {
            approved,
            by: self.answered_by.clone().unwrap_or_default(),
            note: self.note.clone(),
            remember: self
                .remember
                .as_deref()
                .and_then(|r| r.parse().ok())
                .unwrap_or_default(),
        })
    }
}

const COLUMNS: &str =
    "id, task_id, agent, subject, state, asked_at, timeout_at, on_timeout, answered_at, answered_by, note, remember";

/// What asking found.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    /// A new request; the task now waits.
    Pending(Approval),
    /// This task's earlier run asked the same and was answered: the answer
    /// applies (once) and the task runs on.
    Answered(Approval, ApprovalAnswer),
}

impl Ledger {
    /// Records that the running task held by `lease` asks to run `subject`.
    pub fn ask_approval(
        &mut self,
        task: TaskId,
        lease: &Lease,
        subject: &ApprovalSubject,
        timeout_ms: i64,
        on_timeout: &str,
    ) -> Result<Asked> {
        let json = serde_json::to_string(subject).unwrap_or_default();
        self.tx(|c| {
            self.check_fence(c, &lease.agent)?;
            let found = c
                .query_opt(
                    "SELECT agent, attempts FROM tasks WHERE id = ?1 AND state = 'running' AND lease = ?2",
                    args![task, lease],
                )
                .and_then(|r| {
                    r.map(|r| Ok::<_, super::db::DbError>((r.get::<String>(0)?, r.get::<i64>(1)?)))
                        .transpose()
                })
                .map_err(|e| self.err(e))?;
            let Some((agent, attempts)) = found else {
                return Err(LedgerError::StaleLease {
                    task,
                    lease: lease.to_string(),
                });
            };
            // A grant (an egress approval remembered for this task, or
            // always for this agent) answers without asking and is not used up.
            let granted: Option<Approval> = c
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM approvals WHERE subject = ?3 AND state = 'approved'
                           AND ((remember = 'task' AND task_id = ?1) OR (remember = 'always' AND agent = ?2))
                         ORDER BY id DESC LIMIT 1"
                    ),
                    args![task, agent.as_str(), json.as_str()],
                )
                .and_then(|r| r.as_ref().map(Approval::from_row).transpose())
                .map_err(|e| self.err(e))?;
            let reusable: Option<Approval> = match granted {
                Some(g) => Some(g),
                None => c
                    .query_opt(
                        &format!(
                            "SELECT {COLUMNS} FROM approvals WHERE task_id = ?1 AND subject = ?2 AND used = 0
                               AND state IN ('approved','denied') ORDER BY id LIMIT 1"
                        ),
                        args![task, json.as_str()],
                    )
                    .and_then(|r| r.as_ref().map(Approval::from_row).transpose())
                    .map_err(|e| self.err(e))?,
            };
            let now = now_ms();
            match reusable {
                Some(a) => {
                    if a.remember.as_deref().is_none_or(|r| r == "once") {
                        c.execute("UPDATE approvals SET used = 1 WHERE id = ?1", args![a.id])
                            .map_err(|e| self.err(e))?;
                    }
                    let answer = a.answer().unwrap_or(ApprovalAnswer {
                        approved: false,
                        by: "agentd".into(),
                        note: None,
                        remember: Remember::Once,
                    });
                    journal(
                        c,
                        task,
                        attempts,
                        "approval",
                        serde_json::json!({"id": a.id, "subject": subject, "reused": true, "approved": answer.approved, "remember": a.remember}),
                        now,
                    )
                    .map_err(|e| self.err(e))?;
                    Ok(Asked::Answered(a, answer))
                }
                None => {
                    let a = c
                        .query_one(
                            &format!(
                                "INSERT INTO approvals (task_id, agent, subject, state, asked_at, timeout_at, on_timeout)
                                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6) RETURNING {COLUMNS}"
                            ),
                            args![task, agent, json.as_str(), now, now + timeout_ms, on_timeout],
                        )
                        .and_then(|r| Approval::from_row(&r))
                        .map_err(|e| self.err(e))?;
                    c.execute("UPDATE tasks SET state = 'waiting' WHERE id = ?1", args![task])
                        .map_err(|e| self.err(e))?;
                    journal(
                        c,
                        task,
                        attempts,
                        "approval",
                        serde_json::json!({"id": a.id, "subject": subject, "timeout_at": now + timeout_ms, "on_timeout": on_timeout}),
                        now,
                    )
                    .map_err(|e| self.err(e))?;
                    Ok(Asked::Pending(a))
                }
            }
        })
    }

    /// Answers a pending approval and journals it. The task goes on: back
    /// to `running` under `live_lease` when its runner still waits for the
    /// answer (the answer is then used), else back to `queued` to run again
    /// (the answer kept for that run).
    pub fn answer_approval(
        &mut self,
        id: i64,
        answer: &ApprovalAnswer,
        live_lease: Option<&Lease>,
    ) -> Result<Approval> {
        let now = now_ms();
        let state = if answer.approved { "approved" } else { "denied" };
        let a = self.tx(|c| {
            let a = fetch(c, id)
                .map_err(|e| self.err(e))?
                .ok_or(LedgerError::NoSuchApproval(id))?;
            if a.state != "pending" {
                return Err(LedgerError::ApprovalAnswered {
                    id,
                    state: a.state.clone(),
                });
            }
            let egress = matches!(a.subject, ApprovalSubject::Egress { .. });
            if !egress && answer.remember != Remember::Once {
                return Err(LedgerError::NotRememberable(id));
            }
            let remember = (egress && answer.approved).then(|| answer.remember.as_str());
            let used = i64::from(live_lease.is_some());
            c.execute(
                "UPDATE approvals SET state = ?2, answered_at = ?3, answered_by = ?4, note = ?5, used = ?6, remember = ?7
                 WHERE id = ?1",
                args![id, state, now, answer.by.as_str(), answer.note.as_deref(), used, remember],
            )
            .map_err(|e| self.err(e))?;
            journal_answer(
                c,
                a.task,
                serde_json::json!({"id": id, "approved": answer.approved, "by": answer.by, "note": answer.note, "remember": remember}),
                now,
            )
            .map_err(|e| self.err(e))?;
            // In a fleet the runner that waits may live on another member:
            // while the task keeps its runner's lease and the agent's lease
            // is live, the answer goes to that runner (woken below).
            let remote = live_lease.is_none()
                && self.is_shared()
                && c.query_opt(
                    &format!(
                        "SELECT 1 FROM tasks t JOIN agent_leases l ON l.agent = t.agent
                         WHERE t.id = ?1 AND t.state = 'waiting' AND t.lease IS NOT NULL
                           AND l.expires_at > {}",
                        super::fleet::DB_NOW
                    ),
                    args![a.task],
                )
                .map_err(|e| self.err(e))?
                .is_some();
            match (live_lease, remote) {
                (Some(lease), _) => c.execute(
                    "UPDATE tasks SET state = 'running' WHERE id = ?1 AND state = 'waiting' AND lease = ?2",
                    args![a.task, lease],
                ),
                (None, true) => c
                    .execute("UPDATE approvals SET used = 1 WHERE id = ?1", args![id])
                    .and_then(|_| {
                        c.execute(
                            "UPDATE tasks SET state = 'running' WHERE id = ?1 AND state = 'waiting'",
                            args![a.task],
                        )
                    }),
                (None, false) => c.execute(
                    "UPDATE tasks SET state = 'queued', lease = NULL WHERE id = ?1 AND state = 'waiting'",
                    args![a.task],
                ),
            }
            .map_err(|e| self.err(e))?;
            Ok((a, remember.map(str::to_owned), remote))
        })?;
        let (a, remember, remote) = a;
        // The member running the agent learns of the answer at once: the
        // answer itself when its runner waits there, else new work.
        if remote {
            self.wake(&format!("{}{id}", super::fleet::APPROVAL_WAKE));
        } else {
            self.wake(&a.agent);
        }
        Ok(Approval {
            state: state.into(),
            answered_at: Some(now),
            answered_by: Some(answer.by.clone()),
            note: answer.note.clone(),
            remember,
            ..a
        })
    }

    /// Pending approvals, oldest first (of one agent, or all).
    pub fn pending_approvals(&self, agent: Option<&str>) -> Result<Vec<Approval>> {
        self.approvals_where("state = 'pending'", agent)
    }

    /// Standing egress grants (approved with remember `always`), of one
    /// agent or all, oldest first.
    pub fn grants(&self, agent: Option<&str>) -> Result<Vec<Approval>> {
        self.approvals_where("remember = 'always' AND state = 'approved'", agent)
    }

    /// Approvals matching `condition` (a constant SQL condition), of one
    /// agent or all, oldest first.
    fn approvals_where(&self, condition: &str, agent: Option<&str>) -> Result<Vec<Approval>> {
        let rows = self
            .conn
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM approvals WHERE {condition} AND (CAST(?1 AS TEXT) IS NULL OR agent = ?1) ORDER BY id"
                ),
                args![agent],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(Approval::from_row)
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Ends a standing grant (`task` or `always`): the next connection to
    /// that host asks again. Journaled in the task that asked.
    pub fn revoke_grant(&mut self, id: i64, by: &str) -> Result<Approval> {
        self.tx(|c| {
            let a = fetch(c, id)
                .map_err(|e| self.err(e))?
                .ok_or(LedgerError::NoSuchApproval(id))?;
            if a.state != "approved" || !matches!(a.remember.as_deref(), Some("task" | "always")) {
                return Err(LedgerError::NotAGrant(id));
            }
            c.execute("UPDATE approvals SET remember = 'revoked' WHERE id = ?1", args![id])
                .map_err(|e| self.err(e))?;
            journal_answer(
                c,
                a.task,
                serde_json::json!({"id": id, "revoked": a.remember, "by": by}),
                now_ms(),
            )
            .map_err(|e| self.err(e))?;
            Ok(Approval {
                remember: Some("revoked".into()),
                ..a
            })
        })
    }

    pub fn approval(&self, id: i64) -> Result<Approval> {
        fetch(&self.conn, id)
            .map_err(|e| self.err(e))?
            .ok_or(LedgerError::NoSuchApproval(id))
    }
}

/// Approval `id`, if it exists.
fn fetch(c: &Conn, id: i64) -> DbResult<Option<Approval>> {
    c.query_opt(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"), args![id])?
        .as_ref()
        .map(Approval::from_row)
        .transpose()
}

fn journal(c: &Conn, task: TaskId, attempt: i64, kind: &str, payload: serde_json::Value, now: i64) -> DbResult<()> {
    super::tasks::plain_step(c, task, attempt, kind, &payload, None, now).map(drop)
}

/// An `approval_answer` step in the task's current attempt (an operator's
/// answer or revocation comes from outside its run).
fn journal_answer(c: &Conn, task: TaskId, payload: serde_json::Value, now: i64) -> DbResult<()> {
    let attempts: i64 = c
        .query_one("SELECT attempts FROM tasks WHERE id = ?1", args![task])
        .and_then(|r| r.get(0))?;
    journal(c, task, attempts, "approval_answer", payload, now)
}
