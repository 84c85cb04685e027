//! People talking to agents: REPL lines, `agentd send`, pause and resume,
//! and the agents' streamed replies going back to whoever asked.
//!
//! A message becomes a queued task like any trigger (ledger, journal,
//! snapshot, same conversation), so nothing here runs anything itself. The
//! REPL only sees the tasks it started: their text streams in line by line,
//! each line labelled with the agent's name. A `send --wait` client gets
//! one answer when its task ends.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::Supervisor;
use crate::control::{self, Response, SendResult};
use crate::domain::{PauseReason, TaskId, TaskState, Trigger};
use crate::ledger::TaskFilter;
use crate::repl::{self, Answer, Command, Input, LineBuffer, Repl, labelled};

/// The REPL as the supervisor sees it.
pub(super) struct Console {
    pub repl: Repl,
    /// Where plain lines go.
    pub current: Option<String>,
}

/// A REPL task whose reply is being streamed.
pub(super) struct Watched {
    agent: String,
    buf: LineBuffer,
    /// Whether any of its text was shown (else the result is, at the end).
    shown: bool,
}

/// `send --wait` clients, by task.
pub(super) type Waiters = HashMap<TaskId, Vec<oneshot::Sender<Response>>>;

impl Supervisor {
    pub(super) async fn on_repl(&mut self, input: Input) {
        match input {
            Input::Closed => {
                tracing::info!("REPL input ended: the REPL is closed, agentd keeps running");
                // On a terminal the logs are quiet; say it where the person looks.
                if self.console.as_ref().is_some_and(|c| c.repl.is_terminal()) {
                    self.say("REPL closed; agentd keeps running (Ctrl-C or SIGTERM stops it)".into());
                }
            }
            Input::Line { text, answer } => {
                let quit = self.repl_line(&text).await;
                let _ = answer.send(Answer {
                    prompt: self.prompt(),
                    quit,
                });
            }
        }
    }

    pub(super) fn prompt(&self) -> String {
        prompt_for(self.console.as_ref().and_then(|c| c.current.as_deref()))
    }

    pub(super) fn say(&self, line: String) {
        if let Some(c) = &self.console {
            c.repl.print(line);
        }
    }

    pub(super) fn say_error(&self, e: impl std::fmt::Display) {
        self.say(format!("error: {e}"));
    }

    /// Runs one REPL line; true for `/quit`.
    async fn repl_line(&mut self, text: &str) -> bool {
        let cmd = match repl::parse(text) {
            Ok(c) => c,
            Err(e) => {
                self.say_error(e);
                return false;
            }
        };
        match cmd {
            Command::Nothing => {}
            Command::Say { agent, text } => {
                let name = match self.current_or(agent) {
                    Ok(n) => n,
                    Err(e) => {
                        self.say_error(e);
                        return false;
                    }
                };
                match self.send_message(&name, &text, "repl").await {
                    Ok(task) => {
                        self.watched.insert(
                            task,
                            Watched {
                                agent: name.clone(),
                                buf: LineBuffer::default(),
                                shown: false,
                            },
                        );
                        if let Some(why) = self.why_waiting(&name) {
                            self.say(labelled(&name, &format!("({why}: task {task} waits in the queue)")));
                        }
                    }
                    Err(e) => self.say_error(e),
                }
            }
            Command::Use(name) => match self.known(&name) {
                Ok(()) => {
                    if let Some(c) = &mut self.console {
                        c.current = Some(name);
                    }
                }
                Err(e) => self.say_error(e),
            },
            Command::Agents => {
                let current = self.console.as_ref().and_then(|c| c.current.clone());
                let lines: Vec<String> = self
                    .agents
                    .iter()
                    .map(|(name, a)| {
                        let mark = if current.as_deref() == Some(name.as_str()) {
                            '*'
                        } else {
                            ' '
                        };
                        let paused = a
                            .pause
                            .as_ref()
                            .map(|p| format!(", paused: {}", p.reason))
                            .unwrap_or_default();
                        format!("{mark} {name} ({}{paused})", a.life.name())
                    })
                    .collect();
                for l in lines {
                    self.say(l);
                }
            }
            Command::Status => {
                let all = self.all_agents_status().await;
                for l in control::status_lines(&all) {
                    self.say(l);
                }
            }
            Command::Tasks => self.show_tasks().await,
            Command::Pause(name) => {
                let r = match self.current_or(name) {
                    Ok(n) => self.pause(&n, PauseReason::Operator, "repl", None).await.map(|()| n),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(name) => self.say(format!(
                        "{name} paused: its triggers queue up; /resume {name} runs them"
                    )),
                    Err(e) => self.say_error(e),
                }
            }
            Command::Resume(name) => {
                let r = match self.current_or(name) {
                    Ok(n) => self.resume(&n, "repl").await.map(|()| n),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(name) => self.say(format!("{name} resumed")),
                    Err(e) => self.say_error(e),
                }
            }
            Command::Cancel { task, reason } => {
                let task = match task {
                    Some(t) => Ok(t),
                    None => self.current_or(None).and_then(|a| {
                        self.running_task(&a)
                            .ok_or_else(|| format!("{a} runs no task now; /cancel TASK names one"))
                    }),
                };
                let r = match task {
                    Ok(t) => self.cancel_task(t, "repl", reason).await.map(|(a, was)| (t, a, was)),
                    Err(e) => Err(e),
                };
                match r {
                    Ok((t, agent, was)) => self.say(format!("task {t} of {agent} cancelled (it was {was})")),
                    Err(e) => self.say_error(e),
                }
            }
            Command::Approvals => match self.approvals_list().await {
                Ok(list) => {
                    for l in control::approval_lines(&list) {
                        self.say(l);
                    }
                }
                Err(e) => self.say_error(e),
            },
            Command::Answer {
                id,
                approve,
                note,
                remember,
            } => {
                let answer = crate::domain::ApprovalAnswer {
                    approved: approve,
                    by: "repl".into(),
                    note,
                    remember,
                };
                match self.answer_approval(id, answer).await {
                    Ok(a) => self.say(format!("approval {id} {} (task {} of {})", a.state, a.task, a.agent)),
                    Err(e) => self.say_error(e),
                }
            }
            Command::Help => {
                for l in repl::HELP {
                    self.say((*l).to_owned());
                }
            }
            Command::Quit => {
                self.begin_stop("/quit in the REPL");
                return true;
            }
        }
        false
    }

    async fn show_tasks(&mut self) {
        let Some(agent) = self.console.as_ref().and_then(|c| c.current.clone()) else {
            self.say_error("no current agent; /use AGENT picks one");
            return;
        };
        let filter = TaskFilter {
            agent: Some(agent.clone()),
            state: None,
            limit: Some(10),
            before: None,
        };
        match self.ledger.call(move |l| l.list_tasks(&filter)).await {
            Ok(tasks) if tasks.is_empty() => self.say(format!("{agent} has no tasks yet")),
            Ok(tasks) => {
                // Newest first, as `agentd tasks` lists them.
                for t in &tasks {
                    let what = t.trigger().map(|tr| tr.summary()).unwrap_or_default();
                    self.say(format!(
                        "#{:<5} {:<9} {:<8} {what}",
                        t.id,
                        t.state.as_str(),
                        t.trigger_kind
                    ));
                }
            }
            Err(e) => self.say_error(e),
        }
    }

    /// `name`, or the current agent when none is given.
    pub(super) fn current_or(&self, name: Option<String>) -> Result<String, String> {
        name.or_else(|| self.console.as_ref().and_then(|c| c.current.clone()))
            .ok_or_else(|| "no current agent; name one, or /use AGENT".to_owned())
    }

    pub(super) fn known(&self, name: &str) -> Result<(), String> {
        if self.agents.contains_key(name) {
            Ok(())
        } else {
            let names: Vec<&str> = self.agents.keys().map(String::as_str).collect();
            Err(format!("no agent named {name:?} (agents: {})", names.join(", ")))
        }
    }

    /// Why a message to `name` will not run right away, if it will not.
    fn why_waiting(&self, name: &str) -> Option<String> {
        let a = self.agents.get(name)?;
        if let Some(p) = &a.pause {
            Some(format!("{name} is paused ({}); /resume {name} runs it", p.reason))
        } else if a.life.child().is_none() {
            Some(format!("{name} is {}", a.life.name()))
        } else {
            None
        }
    }

    /// Queues a message for `agent` and hands it over if the agent is free.
    pub(super) async fn send_message(&mut self, agent: &str, text: &str, from: &str) -> Result<TaskId, String> {
        self.known(agent)?;
        if self.stop_deadline.is_some() {
            return Err("agentd is shutting down".into());
        }
        let trigger = Trigger::Message {
            text: text.to_owned(),
            from: from.to_owned(),
        };
        let id = self
            .record_trigger(agent, trigger.clone(), None)
            .await
            .map_err(|e| format!("cannot record the message: {e}"))?
            .id();
        self.announce_queued(agent, id, &trigger);
        tracing::debug!(agent, "message from {from} queued as task {id}");
        self.dispatch(agent).await;
        Ok(id)
    }

    /// Streamed model text: on the feed, and shown line by line if the
    /// REPL asked for it.
    pub(super) fn on_output(&mut self, agent: &str, task: TaskId, text: &str) {
        self.announce_output(agent, task, text);
        let Some(w) = self.watched.get_mut(&task) else { return };
        let lines = w.buf.push(text);
        w.shown |= !lines.is_empty();
        let agent = w.agent.clone();
        for l in lines {
            self.say(labelled(&agent, &l));
        }
    }

    /// A journal step of a watched task ends the model's turn (so its last
    /// line is complete) or names a tool it called.
    pub(super) fn on_step(&mut self, task: TaskId, kind: &crate::domain::StepKind, tool: Option<&str>) {
        let Some(w) = self.watched.get_mut(&task) else { return };
        let mut lines: Vec<String> = w.buf.flush().into_iter().collect();
        if *kind == crate::domain::StepKind::Tool {
            lines.push(format!("[tool {}]", tool.unwrap_or("?")));
        }
        w.shown |= !lines.is_empty();
        let agent = w.agent.clone();
        for l in lines {
            self.say(labelled(&agent, &l));
        }
    }

    /// A task ended: finish its REPL stream and answer its waiters.
    pub(super) fn on_task_end(
        &mut self,
        agent: &str,
        task: TaskId,
        state: TaskState,
        result: Option<&str>,
        error: Option<&str>,
    ) {
        self.announce_end(agent, task, state, result, error);
        if let Some(mut w) = self.watched.remove(&task) {
            let mut lines: Vec<String> = w.buf.flush().into_iter().collect();
            // A reply that did not stream (a replayed cassette) is shown whole.
            if !w.shown && lines.is_empty() {
                lines.extend(result.unwrap_or_default().lines().map(str::to_owned));
            }
            if state != TaskState::Succeeded {
                lines.push(format!(
                    "error: task {task} {state}: {}",
                    error.unwrap_or("no reason given")
                ));
            }
            for l in lines {
                self.say(labelled(&w.agent, &l));
            }
        }
        for reply in self.waiters.remove(&task).unwrap_or_default() {
            let _ = reply.send(send_result(SendResult {
                task,
                agent: agent.to_owned(),
                state: state.as_str().into(),
                paused: false,
                result: result.map(str::to_owned),
                error: error.map(str::to_owned),
            }));
        }
    }

    /// The agent process died under a task: the ledger re-queued it or,
    /// with its attempts spent, failed it.
    pub(super) fn on_task_released(&mut self, agent: &str, task: TaskId, state: TaskState, cause: &str) {
        if state.is_final() {
            self.on_task_end(agent, task, state, None, Some(cause));
            return;
        }
        self.announce_end(agent, task, state, None, Some(cause));
        if state == TaskState::Waiting {
            self.say(labelled(
                agent,
                &format!("(interrupted: {cause}; task {task} still waits for its approval)"),
            ));
        } else if let Some(w) = self.watched.get_mut(&task) {
            w.buf = LineBuffer::default();
            self.say(labelled(
                agent,
                &format!("(interrupted: {cause}; task {task} will run again)"),
            ));
        }
    }
}

/// `news> `, or `agentd> ` when there is no agent to talk to.
pub(super) fn prompt_for(current: Option<&str>) -> String {
    format!("{}> ", current.unwrap_or("agentd"))
}

pub(super) fn send_result(r: SendResult) -> Response {
    Response::ok(serde_json::to_value(r).unwrap_or_default())
}
