//! Tasks between the ledger and the children: triggers recorded as tasks,
//! what children report about them (steps, output, results), handing the
//! next queued task to a free child, and tasks a dead agentd left running.

use std::collections::BTreeMap;
use std::time::Instant;

use super::Supervisor;
use super::degraded::Deferred;
use super::slot::{Claim, Lifecycle, Live};
use crate::domain::{TaskId, TaskState, Trigger};
use crate::ledger::{self, LedgerError};
use crate::metrics::StepFacts;
use crate::protocol::{FromChild, PROTOCOL_VERSION, ToChild};

impl Supervisor {
    /// Tasks a previous agentd left running go back in the queue (or fail
    /// once their attempts are spent): never lost, never run twice at once.
    pub(super) async fn recover_orphaned_tasks(&mut self) -> anyhow::Result<()> {
        let max: BTreeMap<String, u32> = self
            .cfg
            .agents
            .iter()
            .map(|a| (a.name.to_string(), a.limits.max_attempts))
            .collect();
        let recovered = self
            .ledger
            .call(move |l| -> Result<Vec<(TaskId, String, TaskState)>, LedgerError> {
                let mut out = Vec::new();
                for t in l.running_tasks()? {
                    let attempts = max.get(&t.agent).copied().unwrap_or(1);
                    let state = l.release(t.id, "agentd stopped while the task was running", attempts)?;
                    out.push((t.id, t.agent, state));
                }
                Ok(out)
            })
            .await;
        match recovered {
            Ok(tasks) => {
                for (id, agent, state) in tasks {
                    tracing::warn!(agent, "task {id} was running when agentd last stopped; now {state}");
                }
            }
            // Starting anyway would run on a ledger that cannot record.
            Err(e) => anyhow::bail!("recovering running tasks failed; not starting: {e}"),
        }
        Ok(())
    }

    pub(super) async fn on_child_message(&mut self, name: &str, msg: FromChild) {
        match msg {
            FromChild::Ready { version, pid } => {
                if version != PROTOCOL_VERSION {
                    tracing::error!(
                        agent = name,
                        "agent speaks protocol {version}, expected {PROTOCOL_VERSION}"
                    );
                }
                if let Some(a) = self.agents.get_mut(name)
                    && a.life.is_starting()
                    && let Lifecycle::Starting { child } = std::mem::replace(&mut a.life, Lifecycle::Stopped)
                {
                    tracing::debug!(agent = name, pid, "agent ready");
                    a.life = Lifecycle::Running { child, claim: None };
                    a.last_pong = Instant::now();
                }
                self.maybe_ready();
                self.update_status();
                // Before it takes a task: a window used up while it was
                // down pauses it; one that has room again resumes it.
                if self.has_budget_or_budget_pause(name) {
                    self.check_budget(name).await;
                }
                self.dispatch(name).await;
            }
            FromChild::Trigger { trigger, dedupe_key } => {
                if let Trigger::Resource { server, .. } = &trigger {
                    self.metrics.subscription_fired(name, server);
                }
                let kept = Deferred::Trigger {
                    agent: name.to_owned(),
                    trigger,
                    dedupe_key,
                };
                self.write_or_keep(name, kept).await;
                self.dispatch(name).await;
            }
            FromChild::Step { task, lease, step } => {
                if let Some(a) = self.agents.get(name) {
                    self.metrics.step(name, &a.spec.model, &StepFacts::of(&step));
                    if step.kind == crate::domain::StepKind::Llm
                        && let Some(price) = self.cfg.prices.get(&a.spec.model)
                    {
                        let cached = step.payload["cached_tokens"].as_i64().unwrap_or(0);
                        let usd = price.cost(step.input_tokens, step.output_tokens, cached);
                        self.metrics.model_cost(name, &a.spec.model, usd);
                    }
                }
                if self.watched.contains_key(&task) {
                    self.on_step(task, &step.kind, step.payload["name"].as_str());
                }
                let model_call = step.kind == crate::domain::StepKind::Llm;
                self.journal(name, Deferred::Step { task, lease, step });
                // The ledger thread runs its jobs in order: the check reads
                // the window with this step in it.
                if model_call && self.has_budget_or_budget_pause(name) {
                    self.check_budget(name).await;
                }
            }
            FromChild::ApprovalRequest { task, lease, subject } => {
                self.on_approval_request(name, task, lease, subject).await;
            }
            FromChild::Pong { seq } => {
                if let Some(a) = self.agents.get_mut(name)
                    && seq == a.heartbeat_seq
                {
                    a.last_pong = Instant::now();
                }
            }
            FromChild::Health { degraded } => {
                if let Some(a) = self.agents.get_mut(name) {
                    match &degraded {
                        Some(why) => tracing::warn!(agent = name, "degraded: {why}"),
                        None if a.degraded.is_some() => tracing::info!(agent = name, "MCP servers reachable again"),
                        None => {}
                    }
                    a.degraded = degraded;
                }
            }
            FromChild::McpReconnected { server, count } => self.metrics.mcp_reconnected(name, &server, count),
            FromChild::Output { task, text, .. } => {
                tracing::debug!(agent = name, "model: {text}");
                self.on_output(name, task, &text);
            }
            FromChild::Finished {
                task,
                lease,
                state,
                result,
                error,
                conversation,
                spans_dropped,
            } => {
                self.metrics.trace_spans_dropped.inc_by(spans_dropped);
                let current = self.agents.get(name).and_then(|a| a.life.claim().cloned());
                let Some(claim) = current.filter(|c| c.is(task, &lease)) else {
                    tracing::warn!(agent = name, "ignoring a result for task {task} from a stale lease");
                    return;
                };
                let agent = name.to_owned();
                let state = if state.is_final() { state } else { TaskState::Failed };
                // One line of what the model said (or what went wrong) for the log.
                let summary = result
                    .as_deref()
                    .or(error.as_deref())
                    .and_then(|t| t.lines().find(|l| !l.trim().is_empty()));
                let summary = summary.map(|l| l.chars().take(200).collect::<String>());
                // Shown and answered after the write, so whoever hears of the
                // end finds it in the ledger.
                let (shown_result, shown_error) = (result.clone(), error.clone());
                // Kept in memory when the ledger cannot take it: the task
                // is not left `running` for good.
                let end = Deferred::Finish {
                    agent,
                    task,
                    lease,
                    state,
                    result,
                    error,
                    conversation: conversation.and_then(|c| serde_json::to_vec(&c).ok()),
                };
                self.write_or_keep(name, end).await;
                let said = summary.map(|s| format!(": {s}")).unwrap_or_default();
                tracing::info!(agent = name, "task {task} {state}{said}");
                self.metrics
                    .task_ended(name, claim.trigger, state.as_str(), claim.since.elapsed());
                self.end_task_span(task, state);
                self.on_task_end(name, task, state, shown_result.as_deref(), shown_error.as_deref());
                if let Some(a) = self.agents.get_mut(name)
                    && let Lifecycle::Running { claim, .. } | Lifecycle::Stopping { claim, .. } = &mut a.life
                {
                    *claim = None;
                }
                self.dispatch(name).await;
            }
        }
    }

    /// Ends the task's trace span (exported then, when traces are on).
    pub(super) fn end_task_span(&mut self, task: TaskId, state: TaskState) {
        if let Some(span) = self.task_spans.remove(&task) {
            span.record("agentd.task.state", state.as_str());
            if state != TaskState::Succeeded {
                span.record("otel.status_code", "ERROR");
            }
        }
    }

    fn has_budget_or_budget_pause(&self, name: &str) -> bool {
        self.agents.get(name).is_some_and(|a| {
            a.spec.budget.is_some()
                || a.pause
                    .as_ref()
                    .is_some_and(|p| p.reason == crate::ledger::PauseReason::Budget)
        })
    }

    /// Records a trigger as a task (coalescing by `dedupe_key` while queued).
    pub(super) async fn record_trigger(
        &mut self,
        agent: &str,
        trigger: Trigger,
        dedupe_key: Option<String>,
    ) -> Result<ledger::Enqueued, String> {
        let agent = agent.to_owned();
        match self
            .ledger
            .call(move |l| l.enqueue(&agent, &trigger, dedupe_key.as_deref()))
            .await
        {
            Ok(e) => Ok(e),
            Err(e) => {
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                }
                Err(e.to_string())
            }
        }
    }

    /// Hands the agent its next queued task, if it is free to take one.
    pub(super) async fn dispatch(&mut self, name: &str) {
        if self.stop_deadline.is_some() {
            return;
        }
        let Some(a) = self.agents.get(name) else { return };
        let Lifecycle::Running {
            child: Live { handle: child, .. },
            claim: None,
        } = &a.life
        else {
            return;
        };
        if a.is_paused() {
            return;
        }
        let lease = crate::domain::Lease {
            agent: name.to_owned(),
            pid: child.pid,
            generation: child.generation,
        };
        let (agent, l2) = (name.to_owned(), lease.clone());
        let claimed = self.ledger.call(move |l| l.claim_next(&agent, &l2)).await;
        let task = match claimed {
            Ok(Some(t)) => t,
            Ok(None) | Err(LedgerError::Closed) => return,
            Err(e) => {
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                } else {
                    tracing::error!(agent = name, "cannot claim a task: {e}");
                }
                return;
            }
        };
        let Some(a) = self.agents.get_mut(name) else { return };
        let Some(trigger) = task.trigger() else {
            let id = task.id;
            tracing::error!(agent = name, "task {id} has an unreadable trigger; failing it");
            let _ = self
                .ledger
                .call(move |l| l.finish(id, &lease, TaskState::Failed, None, Some("unreadable trigger payload")))
                .await;
            return;
        };
        tracing::info!(
            agent = name,
            "task {} started (attempt {}): {}",
            task.id,
            task.attempts,
            trigger.summary()
        );
        // Checked above; the supervisor handles one event at a time, so the
        // lifecycle cannot have moved while the ledger answered.
        let (Lifecycle::Running { child, claim } | Lifecycle::Stopping { child, claim, .. }) = &mut a.life else {
            return;
        };
        *claim = Some(Claim {
            task: task.id,
            lease: lease.clone(),
            trigger: trigger.kind(),
            since: Instant::now(),
        });
        self.metrics.task_started(name, trigger.kind());
        // One trace per task attempt: this span ends when the task does.
        let span = tracing::info_span!(
            target: crate::telemetry::TARGET,
            parent: None,
            "task",
            otel.name = %format!("task {name}"),
            otel.status_code = tracing::field::Empty,
            agentd.agent = name,
            agentd.task.id = task.id.0,
            agentd.task.attempt = task.attempts,
            agentd.task.trigger = trigger.kind(),
            agentd.task.state = tracing::field::Empty,
            process.pid = i64::from(std::process::id()),
        );
        let traceparent = crate::telemetry::traceparent(&span);
        self.task_spans.insert(task.id, span);
        child.handle.send(&ToChild::Task {
            id: task.id,
            lease,
            attempt: task.attempts,
            trigger,
            traceparent,
        });
        self.announce_running(name, task.id, task.attempts);
    }
}
