//! Telling the outside what happened: events on the [`Feed`] (the HTTP
//! API's SSE stream and the dashboard) and `notify:` receivers when a task
//! ends.
//!
//! Called where the supervisor already knows: after the ledger took a
//! trigger or a step, when a task is handed to a child or ends, and after
//! every event of the loop for agents' states (compared with what was
//! last announced, so each change is said once, whichever of the many
//! lifecycle transitions made it). It never decides anything and never
//! waits: publishing is a push into a ring, a notification a spawned task.
//!
//! [`Feed`]: crate::feed::Feed

use std::collections::BTreeMap;

use serde_json::json;

use super::{Event, Supervisor};
use crate::domain::{NewStep, TaskId, TaskState, Trigger};

impl Supervisor {
    pub(super) fn announce_queued(&self, agent: &str, task: TaskId, trigger: &Trigger) {
        self.feed.publish(
            "task",
            json!({
                "agent": agent, "task": task, "state": TaskState::Queued,
                "trigger_kind": trigger.kind(), "summary": trigger.summary(),
            }),
        );
    }

    pub(super) fn announce_running(&self, agent: &str, task: TaskId, attempt: i64) {
        self.feed.publish(
            "task",
            json!({"agent": agent, "task": task, "state": TaskState::Running, "attempt": attempt}),
        );
    }

    pub(super) fn announce_step(&self, agent: &str, task: TaskId, seq: i64, step: &NewStep) {
        self.feed.publish("step", step_event(agent, task, seq, step));
    }

    /// Streamed model text, as it comes (not in the ledger: the step that
    /// ends the turn has it all).
    pub(super) fn announce_output(&self, agent: &str, task: TaskId, text: &str) {
        self.feed
            .publish("output", json!({"agent": agent, "task": task, "text": text}));
    }

    /// A task ended (or went back to the queue): the feed hears of it, and
    /// every `notify:` receiver that listens for the state is sent it.
    pub(super) fn announce_end(
        &self,
        agent: &str,
        task: TaskId,
        state: TaskState,
        result: Option<&str>,
        error: Option<&str>,
    ) {
        self.feed.publish(
            "task",
            json!({"agent": agent, "task": task, "state": state, "result": result, "error": error}),
        );
        if !state.is_final() {
            return;
        }
        let event = json!({
            "event": format!("task.{state}"),
            "agent": agent,
            "task": task,
            "state": state,
            "result": result.map(|r| clip(r, 4096)),
            "error": error.map(|e| clip(e, 4096)),
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        self.notify(agent, task, state, format!("{task}-{state}"), event);
    }

    /// A task waits for an operator's approval: the feed hears of it, and
    /// `notify:` receivers that listen for `waiting` hear what it asks and
    /// how to answer.
    pub(super) fn announce_waiting(&self, agent: &str, approval: &crate::ledger::Approval) {
        let task = approval.task;
        self.feed.publish(
            "task",
            json!({"agent": agent, "task": task, "state": TaskState::Waiting, "approval": approval.id}),
        );
        let event = json!({
            "event": "task.waiting",
            "agent": agent,
            "task": task,
            "state": TaskState::Waiting,
            "approval": {
                "id": approval.id,
                "asks": clip(&approval.subject.summary(), 4096),
                "timeout_at": approval.timeout_at,
                "on_timeout": approval.on_timeout,
            },
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let delivery = format!("{task}-waiting-{}", approval.id);
        self.notify(agent, task, TaskState::Waiting, delivery, event);
    }

    /// Sends `event` to every receiver listening for `state`, each
    /// attempt journaled on the task.
    fn notify(&self, agent: &str, task: TaskId, state: TaskState, delivery: String, event: serde_json::Value) {
        for spec in self.cfg.notify.iter().filter(|n| n.on.contains(&state)) {
            let events = self.events.clone();
            let agent = agent.to_owned();
            crate::notify::spawn(spec.clone(), delivery.clone(), event.clone(), move |step| {
                let _ = events.send(Event::Noted {
                    agent: agent.clone(),
                    task,
                    step,
                });
            });
        }
    }

    /// A notification attempt, journaled on its (ended) task.
    pub(super) async fn on_noted(&mut self, agent: String, task: TaskId, step: NewStep) {
        let s2 = step.clone();
        match self.ledger.call(move |l| l.append_note(task, &s2)).await {
            Ok(seq) => self.announce_step(&agent, task, seq, &step),
            Err(e) => tracing::warn!(agent, "cannot journal a notification of task {task}: {e}"),
        }
    }

    /// Announces every agent whose state, pid, restarts, pause or error
    /// changed since it was last announced, and every agent that is gone.
    /// Runs after every event (with 1,000 agents: 200 heartbeats a second
    /// while idle), so the common case, the same agents as last time, is one
    /// walk of both maps in step that allocates nothing.
    pub(super) fn announce_agents(&mut self) {
        if self.agents.len() == self.announced_agents.len() {
            let mut in_step = true;
            for ((name, a), (seen_name, seen)) in self.agents.iter().zip(self.announced_agents.iter_mut()) {
                if name != seen_name {
                    in_step = false;
                    break;
                }
                if !seen.is(a) {
                    *seen = AgentView::of(a);
                    self.feed.publish("agent", seen.json(name));
                }
            }
            if in_step {
                return;
            }
        }
        let mut now = BTreeMap::new();
        for (name, a) in &self.agents {
            let view = AgentView::of(a);
            if self.announced_agents.get(name) != Some(&view) {
                self.feed.publish("agent", view.json(name));
            }
            now.insert(name.clone(), view);
        }
        for name in self.announced_agents.keys() {
            if !now.contains_key(name) {
                self.feed.publish("agent", json!({"agent": name, "state": "removed"}));
            }
        }
        self.announced_agents = now;
    }
}

/// What the feed last said about an agent.
#[derive(Debug, PartialEq)]
pub(super) struct AgentView {
    state: &'static str,
    pid: Option<u32>,
    restarts: u32,
    paused: bool,
    last_error: Option<String>,
    running_task: Option<TaskId>,
}

impl AgentView {
    fn of(a: &super::slot::Agent) -> AgentView {
        let degraded = a.degraded.as_ref().filter(|_| a.life.is_running());
        AgentView {
            state: if degraded.is_some() { "degraded" } else { a.life.name() },
            pid: a.life.child().map(|c| c.pid),
            restarts: a.restart_count,
            paused: a.is_paused(),
            last_error: degraded.or(a.last_error.as_ref()).cloned(),
            running_task: a.life.claim().map(|c| c.task),
        }
    }

    /// Whether `a` would be announced as this, without building its view.
    fn is(&self, a: &super::slot::Agent) -> bool {
        let degraded = a.degraded.as_ref().filter(|_| a.life.is_running());
        self.state == (if degraded.is_some() { "degraded" } else { a.life.name() })
            && self.pid == a.life.child().map(|c| c.pid)
            && self.restarts == a.restart_count
            && self.paused == a.is_paused()
            && self.last_error.as_ref() == degraded.or(a.last_error.as_ref())
            && self.running_task == a.life.claim().map(|c| c.task)
    }

    fn json(&self, name: &str) -> serde_json::Value {
        json!({
            "agent": name, "state": self.state, "pid": self.pid, "restarts": self.restarts,
            "paused": self.paused, "last_error": self.last_error, "running_task": self.running_task,
        })
    }
}

/// A journal step as the feed says it; published right after the write
/// (by the ledger thread for steps sent without waiting).
pub(super) fn step_event(agent: &str, task: TaskId, seq: i64, step: &NewStep) -> serde_json::Value {
    json!({
        "agent": agent, "task": task, "seq": seq, "kind": step.kind,
        "payload": step.payload, "input_tokens": step.input_tokens,
        "output_tokens": step.output_tokens, "latency_ms": step.latency_ms,
        // When the ledger had it: how late a watcher hears of it.
        "written_at_us": chrono::Utc::now().timestamp_micros(),
    })
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
