//! Cancelling a task. The ledger records it first (state `cancelled`, the
//! lease cleared, a `cancel` step with who and why), so whatever happens
//! next (the child dies, agentd restarts) the task stays cancelled: a
//! cleared lease makes every later write from its runner stale, and
//! recovery only ever looks at `running` tasks.
//!
//! A running task is then dropped by its child ([`ToChild::Cancel`]): its
//! model request and MCP calls are abandoned and its sandbox run's whole
//! process tree is killed (the run's process group and cgroup). The agent
//! is free at once and takes its next task.

use super::Supervisor;
use super::slot::{Claim, Lifecycle};
use crate::domain::{TaskId, TaskState};
use crate::ledger::LedgerError;
use crate::protocol::ToChild;

impl Supervisor {
    /// Cancels `task`; returns the agent and the state it was in.
    pub(super) async fn cancel_task(
        &mut self,
        task: TaskId,
        by: &str,
        reason: Option<String>,
    ) -> Result<(String, TaskState), String> {
        let (b, r) = (by.to_owned(), reason.clone());
        let done = match self.ledger.call(move |l| l.cancel(task, &b, r.as_deref())).await {
            Ok(d) => d,
            Err(e @ (LedgerError::NoSuchTask(_) | LedgerError::AlreadyEnded { .. })) => return Err(e.to_string()),
            Err(e) => {
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                }
                return Err(format!("cannot record the cancellation: {e}"));
            }
        };
        let agent = done.agent.clone();
        let why = reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        tracing::info!(agent, "task {task} cancelled by {by}{why} (it was {})", done.was);
        self.drop_cancelled(&agent, task, &format!("cancelled by {by}{why}"))
            .await;
        Ok((agent, done.was))
    }

    /// The ledger has `task` cancelled (here, or on another fleet member):
    /// the child holding it drops it, and the slot is free for the next task.
    pub(super) async fn drop_cancelled(&mut self, agent: &str, task: TaskId, error: &str) {
        let mut ended = None;
        if let Some(a) = self.agents.get_mut(agent)
            && let Lifecycle::Running { child, claim } | Lifecycle::Stopping { child, claim, .. } = &mut a.life
            && let Some(Claim {
                task: t,
                lease,
                trigger,
                since,
            }) = claim.clone()
            && t == task
        {
            child.handle.send(&ToChild::Cancel { task, lease });
            *claim = None;
            ended = Some((trigger, since));
        }
        if let Some((trigger, since)) = ended {
            self.metrics
                .task_ended(agent, trigger, TaskState::Cancelled.as_str(), since.elapsed());
        }
        self.end_task_span(task, TaskState::Cancelled);
        self.on_task_end(agent, task, TaskState::Cancelled, None, Some(error));
        self.dispatch(agent).await;
    }

    /// The task `agent` is running now, if any (for `/cancel` without an id).
    pub(super) fn running_task(&self, agent: &str) -> Option<TaskId> {
        self.agents.get(agent).and_then(|a| a.life.claim()).map(|c| c.task)
    }
}
