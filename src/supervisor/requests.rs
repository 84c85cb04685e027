//! Control requests, each answered by a handler of its own, all in this
//! one place (mini-redis's `cmd/` is the model): [`Supervisor::on_control`]
//! checks what every request needs (the agent exists, agentd is not
//! stopping) and hands the request to its handler. Most handlers answer at
//! once; `Send` with `wait` answers when its task ends and `Reload` once
//! the new config has been parsed off the event loop, so handlers take the
//! reply channel rather than return a response.

use serde_json::json;
use tokio::sync::oneshot;

use super::slot::{AfterExit, Lifecycle};
use super::talk::send_result;
use super::{ReloadBy, Supervisor};
use crate::control::{AgentStatus, Request, Response, SendResult};
use crate::domain::TaskState;
use crate::ledger::SnapshotKind;
use crate::snapshots;

type Reply = oneshot::Sender<Response>;

fn answer(reply: Reply, response: Response) {
    // The caller may have gone; nothing to do then.
    let _ = reply.send(response);
}

impl Supervisor {
    /// Every control request enters here.
    pub(super) async fn on_control(&mut self, req: Request, reply: Reply) {
        let agent = match &req {
            Request::Start { agent }
            | Request::Stop { agent }
            | Request::Restart { agent }
            | Request::Pause { agent }
            | Request::Resume { agent }
            | Request::SnapshotCreate { agent, .. }
            | Request::SnapshotRestore { agent, .. } => Some(agent.as_str()),
            // `send_message` says so itself for an unknown agent.
            Request::Send { .. }
            | Request::DescribeInterface
            | Request::Health
            | Request::Status
            | Request::Metrics
            | Request::Reload => None,
        };
        if let Some(agent) = agent.filter(|a| !self.agents.contains_key(*a)) {
            return answer(reply, Response::error(format!("no agent named {agent:?}")));
        }
        let changes_state = !matches!(
            req,
            Request::DescribeInterface | Request::Health | Request::Status | Request::Metrics | Request::Send { .. }
        );
        if changes_state && self.stop_deadline.is_some() {
            return answer(reply, Response::error("agentd is shutting down"));
        }
        match req {
            Request::DescribeInterface => answer(reply, Response::ok(Request::describe())),
            Request::Health => answer(reply, self.health()),
            Request::Status => answer(reply, self.status().await),
            Request::Metrics => answer(reply, self.metrics_text().await),
            Request::Start { agent } => answer(reply, self.start_by_hand(&agent).await),
            Request::Stop { agent } => answer(reply, self.stop_by_hand(&agent).await),
            Request::Restart { agent } => answer(reply, self.restart_by_hand(&agent).await),
            Request::Pause { agent } => {
                let r = match self.pause(&agent) {
                    Ok(()) => Response::ok(json!(self.agent_status(&agent).await)),
                    Err(e) => Response::error(e),
                };
                answer(reply, r)
            }
            Request::Resume { agent } => {
                let r = match self.resume(&agent).await {
                    Ok(()) => Response::ok(json!(self.agent_status(&agent).await)),
                    Err(e) => Response::error(e),
                };
                answer(reply, r)
            }
            Request::SnapshotCreate { agent, label } => self.snapshot_create(agent, label, reply),
            Request::SnapshotRestore { agent, snapshot } => answer(reply, self.snapshot_restore(agent, snapshot).await),
            Request::Send { agent, text, wait } => self.send_by_request(agent, text, wait, reply).await,
            Request::Reload => self.begin_reload(ReloadBy::Control(reply)),
        }
    }

    fn health(&self) -> Response {
        Response::ok(json!({
            "ok": self.stop_deadline.is_none() && !self.degraded.is_degraded(),
            "degraded": self.degraded.cause(),
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "agents": self.agents.len(),
            "failed": self.agents.values().filter(|a| a.life.is_failed()).count(),
        }))
    }

    async fn status(&self) -> Response {
        let mut out = Vec::new();
        for name in self.agents.keys() {
            out.push(self.agent_status(name).await);
        }
        Response::ok(json!({ "agents": out, "degraded": self.degraded.cause() }))
    }

    /// The metrics, with the gauges of what the supervisor holds (agent
    /// states, queue depths) brought up to date first.
    pub(super) async fn metrics_text(&self) -> Response {
        let mut agents = Vec::new();
        for (name, a) in &self.agents {
            let owned = name.clone();
            let queued = self.ledger.call(move |l| l.queued_count(&owned)).await.unwrap_or(0);
            agents.push((name.as_str(), a.life.name(), queued));
        }
        self.metrics.refresh(&Lifecycle::NAMES, &agents);
        self.metrics
            .trace_spans_dropped
            .inc_by(crate::telemetry::take_dropped());
        Response::ok(json!({
            "content_type": crate::metrics::CONTENT_TYPE,
            "text": self.metrics.render(),
        }))
    }

    async fn start_by_hand(&mut self, agent: &str) -> Response {
        if let Some(a) = self.agents.get_mut(agent)
            && a.life.child().is_none()
        {
            a.restarts.reset();
            a.last_error = None;
            self.start_agent(agent).await;
        }
        Response::ok(json!(self.agent_status(agent).await))
    }

    async fn stop_by_hand(&mut self, agent: &str) -> Response {
        if self.stop_agent(agent, AfterExit::StayDown, self.cfg.shutdown_grace)
            && let Some(a) = self.agents.get_mut(agent)
        {
            a.life = Lifecycle::Stopped;
        }
        Response::ok(json!(self.agent_status(agent).await))
    }

    async fn restart_by_hand(&mut self, agent: &str) -> Response {
        if self.stop_agent(agent, AfterExit::StartAgain, self.cfg.shutdown_grace) {
            if let Some(a) = self.agents.get_mut(agent) {
                a.restarts.reset();
            }
            self.start_agent(agent).await;
        }
        Response::ok(json!(self.agent_status(agent).await))
    }

    /// Archives the workdir in a task of its own (reading a large tree
    /// takes a while) and stores it through the ledger thread; the answer
    /// goes straight to the caller. The event loop and other agents'
    /// journals never wait for it.
    fn snapshot_create(&mut self, agent: String, label: Option<String>, reply: Reply) {
        let workdir = self.workdir(&agent);
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            let archived = tokio::task::spawn_blocking(move || snapshots::archive_workdir(&workdir)).await;
            let r = match archived {
                Ok(Ok(data)) => {
                    ledger
                        .call(move |l| snapshots::store_workspace(l, &agent, label.as_deref(), &data))
                        .await
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(snapshots::SnapshotError::Worker(e.to_string())),
            };
            answer(
                reply,
                match r {
                    Ok(meta) => Response::ok(json!(meta)),
                    Err(e) => Response::error(e.to_string()),
                },
            );
        });
    }

    async fn snapshot_restore(&mut self, agent: String, snapshot: String) -> Response {
        let a2 = agent.clone();
        let meta = match self
            .ledger
            .call(move |l| l.snapshot(&a2, &snapshot).map(|s| s.meta))
            .await
        {
            Ok(meta) => meta,
            Err(e) => return Response::error(e.to_string()),
        };
        // The child must be down while its workdir is rewritten, and must
        // restart to load a restored conversation.
        let running = self.agents.get(&agent).is_some_and(|a| a.life.child().is_some());
        if running {
            if let Some(a) = self.agents.get_mut(&agent) {
                a.pending_restore = Some(meta.id.to_string());
            }
            self.stop_agent(&agent, AfterExit::StartAgain, self.cfg.shutdown_grace);
        } else {
            self.restore_snapshot(&agent, meta.id.to_string()).await;
        }
        Response::ok(json!(meta))
    }

    /// A message from the control socket: answered with the task at once,
    /// or with its result when it ends (`wait`).
    async fn send_by_request(&mut self, agent: String, text: String, wait: bool, reply: Reply) {
        let paused = self.agents.get(&agent).is_some_and(|a| a.paused);
        match self.send_message(&agent, &text, "control").await {
            // A paused agent runs nothing until someone resumes it: waiting
            // would only end in the caller's timeout. Say so at once.
            Ok(task) if wait && !paused => self.waiters.entry(task).or_default().push(reply),
            Ok(task) => answer(
                reply,
                send_result(SendResult {
                    task,
                    agent,
                    state: TaskState::Queued.as_str().into(),
                    paused,
                    result: None,
                    error: None,
                }),
            ),
            Err(e) => answer(reply, Response::error(e)),
        }
    }

    /// Puts a snapshot back while the agent is down: the snapshot is read
    /// through the ledger thread, a workspace archive is unpacked off it.
    pub(super) async fn restore_snapshot(&mut self, agent: &str, which: String) {
        let workdir = self.workdir(agent);
        let name = agent.to_owned();
        let r = match self.ledger.call(move |l| l.snapshot(&name, &which)).await {
            Err(e) => Err(snapshots::SnapshotError::from(e)),
            Ok(snap) if snap.meta.kind == SnapshotKind::Conversation => {
                let name = agent.to_owned();
                self.ledger
                    .call(move |l| snapshots::restore_conversation(l, &name, &snap).map(|()| snap.meta))
                    .await
            }
            Ok(snap) => tokio::task::spawn_blocking(move || {
                snapshots::archive::restore(&workdir, &snap.data)
                    .map(|()| snap.meta)
                    .map_err(snapshots::SnapshotError::from)
            })
            .await
            .unwrap_or_else(|e| Err(snapshots::SnapshotError::Worker(e.to_string()))),
        };
        match r {
            Ok(meta) => tracing::info!(agent, "restored {} snapshot {}", meta.kind.as_str(), meta.id),
            Err(e) => tracing::error!(agent, "restoring a snapshot failed: {e}"),
        }
    }

    pub(super) async fn agent_status(&self, name: &str) -> AgentStatus {
        let owned = name.to_owned();
        let queued = self.ledger.call(move |l| l.queued_count(&owned)).await.unwrap_or(0);
        let Some(a) = self.agents.get(name) else {
            return AgentStatus {
                name: name.to_owned(),
                state: "removed".into(),
                pid: None,
                restarts: 0,
                uptime_s: None,
                last_exit: None,
                last_error: None,
                queued,
                running_task: None,
                paused: false,
                schedules: Vec::new(),
            };
        };
        // A running agent with an unreachable MCP server is `degraded`,
        // its server's error in `last_error`.
        let degraded = a.degraded.as_ref().filter(|_| a.life.is_running());
        AgentStatus {
            name: name.to_owned(),
            state: if degraded.is_some() { "degraded" } else { a.life.name() }.into(),
            pid: a.life.child().map(|c| c.pid),
            restarts: a.restart_count,
            uptime_s: a.life.live().map(|l| l.since.elapsed().as_secs_f64()),
            last_exit: a.last_exit.map(|e| e.to_string()),
            last_error: degraded.or(a.last_error.as_ref()).cloned(),
            queued,
            running_task: a.life.claim().map(|c| c.task),
            paused: a.paused,
            schedules: self.schedule_status(name),
        }
    }
}
