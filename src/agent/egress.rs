//! The agent's side of its sandbox's egress proxy ([`crate::sandbox::egress`]):
//! a host only an `ask` rule covers becomes an approval request of the
//! running task, and every connection attempt is journaled as it ends,
//! while the code still runs.
//!
//! One per task. Asks go one at a time (the task has one approval slot);
//! an answer remembered for the task or always, and every denial, is kept
//! here for the rest of the task, so a host is asked about at most once
//! per task (code that retries a refused host does not ask again). Across
//! tasks and restarts, the ledger remembers ([`crate::ledger`]'s grants):
//! the supervisor answers a granted ask without an operator.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::Outbox;
use super::approval::Approvals;
use crate::domain::{ApprovalSubject, Lease, NewStep, Remember, StepKind, TaskId};
use crate::protocol::FromChild;
use crate::sandbox::egress::{Connection, Decision, Owner};

pub struct TaskEgress {
    outbox: Outbox,
    task: TaskId,
    lease: Lease,
    approvals: Approvals,
    block: AtomicUsize,
    /// `host:port` decided for the rest of the task: approved with
    /// remember task or always, or denied.
    decided: Mutex<HashMap<(String, u16), Decision>>,
    /// One ask at a time.
    turn: tokio::sync::Mutex<()>,
}

impl TaskEgress {
    pub fn new(outbox: Outbox, task: TaskId, lease: Lease, approvals: Approvals) -> Arc<TaskEgress> {
        Arc::new(TaskEgress {
            outbox,
            task,
            lease,
            approvals,
            block: AtomicUsize::new(0),
            decided: Mutex::new(HashMap::new()),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    fn decided(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), Decision>> {
        self.decided.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn decide(self: Arc<Self>, host: String, port: u16, rule: String) -> Decision {
        let _turn = self.turn.lock().await;
        // Perhaps decided while this connection waited its turn.
        if let Some(d) = self.decided().get(&(host.clone(), port)) {
            return d.clone();
        }
        let subject = ApprovalSubject::Egress {
            host: host.clone(),
            port,
        };
        let answer = self.approvals.ask(&self.outbox, self.task, &self.lease, subject).await;
        let decision = if answer.approved {
            Decision::Allowed {
                rule: format!("{rule}: approved ({}) by {}", answer.remember, answer.by),
            }
        } else {
            Decision::Denied {
                reason: format!("{rule}: {}", answer.denial()),
            }
        };
        if !answer.approved || answer.remember != Remember::Once {
            self.decided().insert((host, port), decision.clone());
        }
        decision
    }
}

impl Owner for TaskEgress {
    fn ask(self: Arc<Self>, host: String, port: u16, rule: String) -> Pin<Box<dyn Future<Output = Decision> + Send>> {
        Box::pin(self.decide(host, port, rule))
    }

    fn ended(&self, c: &Connection) {
        self.outbox.send(FromChild::Step {
            task: self.task,
            lease: self.lease.clone(),
            step: NewStep {
                kind: StepKind::Egress,
                payload: payload(self.block.load(Ordering::Relaxed), c),
                input_tokens: 0,
                output_tokens: 0,
                latency_ms: Some(c.duration.as_millis() as i64),
            },
        });
    }

    fn block(&self, index: usize) {
        self.block.store(index, Ordering::Relaxed);
    }
}

/// The journal payload of one egress connection attempt.
pub fn payload(block: usize, c: &Connection) -> Value {
    let (decision, rule) = match &c.decision {
        Decision::Allowed { rule } => ("allowed", rule.as_str()),
        Decision::Denied { reason } => ("denied", reason.as_str()),
    };
    json!({
        "block": block,
        "host": c.host,
        "port": c.port,
        "method": c.method,
        "decision": decision,
        "rule": rule,
        "sent": c.sent,
        "received": c.received,
        "duration_ms": c.duration.as_millis() as u64,
        "error": c.error,
    })
}
