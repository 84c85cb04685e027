//! The child's side of approvals: a task that reaches a tool call or code
//! block its `approve:` policy names asks the supervisor and waits for the
//! answer, which arrives through the child's main loop (the task's future
//! is busy waiting). One question at a time: a task runs its steps in
//! order. The time spent waiting does not count against
//! `limits.task_timeout` ([`Approvals::waited`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Outbox;
use crate::domain::{ApprovalAnswer, ApprovalSubject, Lease, TaskId};
use crate::protocol::FromChild;

#[derive(Clone, Default)]
pub struct Approvals(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    waiting: Option<oneshot::Sender<ApprovalAnswer>>,
    since: Option<Instant>,
    total: Duration,
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new task: no wait in progress, none counted.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }

    /// Asks for `subject` and waits for the answer.
    pub async fn ask(&self, outbox: &Outbox, task: TaskId, lease: &Lease, subject: ApprovalSubject) -> ApprovalAnswer {
        let (tx, rx) = oneshot::channel();
        {
            let mut i = self.lock();
            i.waiting = Some(tx);
            i.since = Some(Instant::now());
        }
        outbox.send(FromChild::ApprovalRequest {
            task,
            lease: lease.clone(),
            subject,
        });
        let answer = rx.await.unwrap_or(ApprovalAnswer {
            approved: false,
            by: "agentd".into(),
            note: Some("no answer came (the agent is stopping)".into()),
            remember: crate::domain::Remember::Once,
        });
        let mut i = self.lock();
        if let Some(since) = i.since.take() {
            i.total += since.elapsed();
        }
        answer
    }

    /// Hands an answer to the waiting task; false when none waits.
    pub fn deliver(&self, answer: ApprovalAnswer) -> bool {
        self.lock().waiting.take().is_some_and(|tx| tx.send(answer).is_ok())
    }

    pub fn is_waiting(&self) -> bool {
        self.lock().since.is_some()
    }

    /// Time this task spent waiting for answers, a wait in progress included.
    pub fn waited(&self) -> Duration {
        let i = self.lock();
        i.total + i.since.map(|s| s.elapsed()).unwrap_or_default()
    }
}
