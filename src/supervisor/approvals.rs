//! Approvals between the child that asks and the operators who answer.
//!
//! A request from a child holding the task's claim is recorded (the task
//! turns `waiting`, the request and a journal step are written in one
//! transaction) and a timer is set for its timeout; the agent keeps its
//! claim, so it starts no other task while it waits, while other agents
//! run on. Answers come only from operators (control socket: `Approve`,
//! `Deny`; the REPL: `/approve`, `/deny`) or the timeout, never from a
//! child: the protocol has no message for it, so nothing a model writes or
//! a tool returns can approve itself.
//!
//! What may be asked is the agent's policy's to say: `approve:` for tool
//! calls and code blocks, `network.ask` for the egress proxy's hosts
//! ([`Supervisor::terms`]); a request no policy covers is refused. An
//! egress approval may be remembered for the task or always; the ledger
//! then answers later asks for the same host itself.
//!
//! An answer reaches the child that waits for it; if that child is gone
//! (it, or agentd, restarted meanwhile) the task goes back to the queue
//! and its next run, reaching the same call, is given the recorded answer.

use std::time::Duration;

use super::{Event, Supervisor};
use crate::domain::{ApprovalAnswer, ApprovalSubject, Lease, Remember, TaskId};
use crate::ledger::{Approval, Asked, LedgerError, now_ms};
use crate::protocol::ToChild;

impl Supervisor {
    pub(super) async fn on_approval_request(
        &mut self,
        name: &str,
        task: TaskId,
        lease: Lease,
        subject: ApprovalSubject,
    ) {
        let claim = self.agents.get(name).and_then(|a| a.life.claim().cloned());
        if !claim.is_some_and(|c| c.is(task, &lease)) {
            tracing::warn!(
                agent = name,
                "ignoring an approval request for task {task} from a stale lease"
            );
            return;
        }
        let (timeout, on_timeout) = match self.terms(name, &subject) {
            Ok(t) => t,
            Err(why) => {
                // The child asks only under a policy that says to; a
                // question no policy asks is refused, not recorded.
                self.refuse(name, task, &lease, why);
                return;
            }
        };
        let timeout_ms = timeout.as_millis() as i64;
        let (l2, s2) = (lease.clone(), subject.clone());
        match self
            .ledger
            .call(move |l| l.ask_approval(task, &l2, &s2, timeout_ms, on_timeout))
            .await
        {
            Ok(Asked::Pending(a)) => {
                tracing::info!(
                    agent = name,
                    "task {task} waits for approval {}: {} (agentd approve {} | agentd deny {}; {} after {})",
                    a.id,
                    subject.summary(),
                    a.id,
                    a.id,
                    on_timeout,
                    humantime::format_duration(timeout)
                );
                self.say(format!(
                    "approval {} asked by {name} (task {task}): {}  (/approve {} or /deny {})",
                    a.id,
                    subject.summary(),
                    a.id,
                    a.id
                ));
                self.arm_approval_timeout(&a);
                self.announce_waiting(name, &a);
            }
            Ok(Asked::Answered(a, answer)) => {
                tracing::info!(
                    agent = name,
                    "task {task} meets approval {} again: {} by {}",
                    a.id,
                    if answer.approved { "approved" } else { "denied" },
                    answer.by
                );
                self.send_answer(name, task, &lease, answer);
            }
            Err(e) => {
                tracing::error!(agent = name, "cannot record an approval request of task {task}: {e}");
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                }
                // Unrecorded, it cannot be answered: deny it rather than
                // leave the task waiting forever.
                self.refuse(
                    name,
                    task,
                    &lease,
                    format!("the request could not be recorded: {}", e.short()),
                );
            }
        }
    }

    /// How long a request waits and what its timeout answers, from the
    /// agent's policy: `approve:` for tool calls and code blocks, the
    /// sandbox's `network.ask` rules for egress (whose timeout denies).
    fn terms(&self, name: &str, subject: &ApprovalSubject) -> Result<(Duration, &'static str), String> {
        let spec = &self.agents.get(name).ok_or("no such agent")?.spec;
        match subject {
            ApprovalSubject::Egress { host, port } => match &spec.sandbox.network {
                crate::sandbox::Network::Domains(rules) if rules.ask_rule(host, *port).is_some() => {
                    Ok((rules.ask_timeout, "deny"))
                }
                _ => Err(format!(
                    "no network.ask rule of this agent covers {}",
                    subject.summary()
                )),
            },
            ApprovalSubject::Tool { .. } | ApprovalSubject::Code { .. } => match &spec.approve {
                Some(p) => Ok((p.timeout, p.on_timeout())),
                None => Err("this agent has no approve: policy".into()),
            },
        }
    }

    /// Denies a request agentd itself cannot put to an operator.
    fn refuse(&self, name: &str, task: TaskId, lease: &Lease, why: String) {
        let answer = ApprovalAnswer {
            approved: false,
            by: "agentd".into(),
            note: Some(why),
            remember: Remember::Once,
        };
        self.send_answer(name, task, lease, answer);
    }

    fn send_answer(&self, name: &str, task: TaskId, lease: &Lease, answer: ApprovalAnswer) {
        if let Some(c) = self.agents.get(name).and_then(|a| a.life.child()) {
            c.send(&ToChild::ApprovalAnswer {
                task,
                lease: lease.clone(),
                answer,
            });
        }
    }

    fn arm_approval_timeout(&self, a: &Approval) {
        let wait = Duration::from_millis((a.timeout_at - now_ms()).max(0) as u64);
        let (events, id) = (self.events.clone(), a.id);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = events.send(Event::ApprovalTimeout { id });
        });
    }

    /// At start: pending approvals' timeouts run on from where they were.
    pub(super) async fn arm_pending_approvals(&mut self) {
        match self.ledger.call(|l| l.pending_approvals(None)).await {
            Ok(pending) => {
                for a in &pending {
                    tracing::info!(
                        agent = a.agent,
                        "task {} still waits for approval {}: {}",
                        a.task,
                        a.id,
                        a.subject.summary()
                    );
                    self.arm_approval_timeout(a);
                }
            }
            Err(e) => tracing::error!("cannot read pending approvals: {e}"),
        }
    }

    pub(super) async fn on_approval_timeout(&mut self, id: i64) {
        let Ok(a) = self.ledger.call(move |l| l.approval(id)).await else {
            return;
        };
        if a.state != "pending" {
            return;
        }
        let answer = ApprovalAnswer {
            approved: a.on_timeout == "approve",
            by: "timeout".into(),
            note: Some(format!("no answer by {}", crate::ledger::format_ms(a.timeout_at))),
            remember: Remember::Once,
        };
        if let Err(e) = self.answer_approval(id, answer).await {
            tracing::warn!("approval {id} timed out but could not be answered: {e}");
        }
    }

    /// Answers approval `id` (see the module doc for where the answer goes).
    pub(super) async fn answer_approval(&mut self, id: i64, answer: ApprovalAnswer) -> Result<Approval, String> {
        let pending = self
            .ledger
            .call(move |l| l.approval(id))
            .await
            .map_err(|e| e.to_string())?;
        // The child that asked still waits when it holds the task's claim.
        let live = self
            .agents
            .get(&pending.agent)
            .and_then(|a| a.life.claim())
            .filter(|c| c.task == pending.task)
            .map(|c| c.lease.clone());
        let (a2, l2) = (answer.clone(), live.clone());
        let done = match self.ledger.call(move |l| l.answer_approval(id, &a2, l2.as_ref())).await {
            Ok(d) => d,
            Err(e @ (LedgerError::NoSuchApproval(_) | LedgerError::ApprovalAnswered { .. })) => {
                return Err(e.to_string());
            }
            Err(e) => {
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                }
                return Err(format!("cannot record the answer: {e}"));
            }
        };
        let note = answer.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
        tracing::info!(
            agent = done.agent,
            "approval {id} of task {} {} by {}{note}",
            done.task,
            done.state,
            answer.by
        );
        match live {
            Some(lease) => self.send_answer(&done.agent, done.task, &lease, answer),
            None => {
                let agent = done.agent.clone();
                self.dispatch(&agent).await;
            }
        }
        Ok(done)
    }

    /// The agent's pending approvals, for status (none without a policy
    /// that asks: no ledger read for most agents).
    pub(super) async fn waiting_for(&self, name: &str) -> Vec<Approval> {
        let asks = |spec: &crate::config::AgentSpec| {
            spec.approve.is_some()
                || matches!(&spec.sandbox.network, crate::sandbox::Network::Domains(r) if !r.ask.is_empty())
        };
        if !self.agents.get(name).is_some_and(|a| asks(&a.spec)) {
            return Vec::new();
        }
        let n = name.to_owned();
        self.ledger
            .call(move |l| l.pending_approvals(Some(&n)))
            .await
            .unwrap_or_default()
    }

    pub(super) async fn approvals_list(&self) -> Result<Vec<Approval>, String> {
        self.ledger
            .call(|l| l.pending_approvals(None))
            .await
            .map_err(|e| e.to_string())
    }
}
