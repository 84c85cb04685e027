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
use crate::domain::{ApprovalAnswer, PauseReason, Remember, TaskState};
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
            | Request::Reload
            | Request::Metrics
            | Request::Cancel { .. }
            | Request::Approvals
            | Request::Approve { .. }
            | Request::Deny { .. }
            | Request::Grants { .. }
            | Request::Revoke { .. }
            | Request::Spend { .. } => None,
        };
        if let Some(agent) = agent.filter(|a| !self.agents.contains_key(*a)) {
            return answer(reply, Response::error(format!("no agent named {agent:?}")));
        }
        let changes_state = !matches!(
            req,
            Request::DescribeInterface
                | Request::Health
                | Request::Status
                | Request::Metrics
                | Request::Send { .. }
                | Request::Spend { .. }
                | Request::Approvals
                | Request::Grants { .. }
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
                let r = match self.pause(&agent, PauseReason::Operator, "control", None).await {
                    Ok(()) => Response::ok(json!(self.agent_status(&agent).await)),
                    Err(e) => Response::error(e),
                };
                answer(reply, r)
            }
            Request::Resume { agent } => {
                let r = match self.resume(&agent, "control").await {
                    Ok(()) => Response::ok(json!(self.agent_status(&agent).await)),
                    Err(e) => Response::error(e),
                };
                answer(reply, r)
            }
            Request::SnapshotCreate { agent, label } => self.snapshot_create(agent, label, reply),
            Request::SnapshotRestore { agent, snapshot } => answer(reply, self.snapshot_restore(agent, snapshot).await),
            Request::Send { agent, text, wait } => self.send_by_request(agent, text, wait, reply).await,
            Request::Reload => self.begin_reload(ReloadBy::Control(reply)),
            Request::Cancel { task, reason, caller } => {
                let by = caller.unwrap_or_else(|| "control".into());
                let r = match self.cancel_task(task, &by, reason).await {
                    Ok((agent, was)) => Response::ok(json!({
                        "task": task, "agent": agent, "was": was.as_str(), "state": TaskState::Cancelled.as_str(),
                    })),
                    Err(e) => Response::error(e),
                };
                answer(reply, r)
            }
            Request::Spend { agent, per } => answer(reply, self.spend(agent, per).await),
            Request::Approvals => {
                let r = match self.approvals_list().await {
                    Ok(list) => Response::ok(json!({ "approvals": list })),
                    Err(e) => Response::error(e),
                };
                answer(reply, r)
            }
            Request::Approve {
                id,
                note,
                remember,
                caller,
            } => {
                let by = caller.unwrap_or_else(|| "control".into());
                let a = ApprovalAnswer {
                    approved: true,
                    by,
                    note,
                    remember,
                };
                answer(reply, self.answer_by_request(id, a).await)
            }
            Request::Grants { agent } => {
                let r = match self.ledger.call(move |l| l.grants(agent.as_deref())).await {
                    Ok(list) => Response::ok(json!({ "grants": list })),
                    Err(e) => Response::error(e.to_string()),
                };
                answer(reply, r)
            }
            Request::Revoke { id, caller } => {
                let by = caller.unwrap_or_else(|| "control".into());
                let r = match self.ledger.call(move |l| l.revoke_grant(id, &by)).await {
                    Ok(a) => {
                        tracing::info!(agent = a.agent, "egress grant {id} revoked: {}", a.subject.summary());
                        Response::ok(json!(a))
                    }
                    Err(e) => Response::error(e.to_string()),
                };
                answer(reply, r)
            }
            Request::Deny { id, reason, caller } => {
                let by = caller.unwrap_or_else(|| "control".into());
                let a = ApprovalAnswer {
                    approved: false,
                    by,
                    note: reason,
                    remember: Remember::Once,
                };
                answer(reply, self.answer_by_request(id, a).await)
            }
        }
    }

    async fn answer_by_request(&mut self, id: i64, a: ApprovalAnswer) -> Response {
        match self.answer_approval(id, a).await {
            Ok(done) => Response::ok(json!(done)),
            Err(e) => Response::error(e),
        }
    }

    /// Spend per agent and model over each agent's budget window, or `per`.
    async fn spend(&self, agent: Option<String>, per: Option<String>) -> Response {
        let per = match per.as_deref().map(crate::yaml::parse_duration).transpose() {
            Ok(p) => p,
            Err(e) => return Response::error(format!("per: {e}")),
        };
        if let Some(a) = &agent
            && !self.agents.contains_key(a)
        {
            return Response::error(format!("no agent named {a:?}"));
        }
        let mut out = Vec::new();
        for (name, a) in self
            .agents
            .iter()
            .filter(|(n, _)| agent.as_ref().is_none_or(|a| a == *n))
        {
            let window = per
                .or(a.spec.budget.as_ref().map(|b| b.per))
                .unwrap_or(crate::budget::DEFAULT_WINDOW);
            let since = crate::ledger::now_ms() - window.as_millis() as i64;
            let n = name.clone();
            let usage = match self.ledger.call(move |l| l.llm_usage_by_model(Some(&n), since)).await {
                Ok(u) => u,
                Err(e) => return Response::error(e.to_string()),
            };
            out.push(crate::budget::report(
                name,
                window,
                since,
                &usage,
                &self.cfg.prices,
                a.spec.budget.as_ref(),
            ));
        }
        Response::ok(json!({ "agents": out }))
    }

    fn health(&self) -> Response {
        Response::ok(json!({
            "ok": self.stop_deadline.is_none() && !self.degraded.is_degraded(),
            "degraded": self.degraded.cause(),
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "agents": self.agents.len(),
            "failed": self.agents.values().filter(|a| a.life.is_failed()).count(),
            // Every agent has started (or failed trying): READY=1 was sent.
            "ready": self.ready_sent,
        }))
    }

    /// A webhook delivery whose signature the HTTP server checked: recorded
    /// as a task once per delivery key (a redelivery answers with the task
    /// the first became), then handed to the agent if it is free.
    pub(super) async fn on_delivery(&mut self, d: crate::http::Delivery) {
        let crate::http::Delivery {
            agent,
            key,
            trigger,
            reply,
        } = d;
        if let Err(e) = self.known(&agent) {
            let _ = reply.send(Err(e));
            return;
        }
        if self.stop_deadline.is_some() {
            let _ = reply.send(Err("agentd is shutting down".into()));
            return;
        }
        let (name, t2) = (agent.clone(), trigger.clone());
        let r = self
            .ledger
            .call(move |l| match &key {
                Some(k) => l.enqueue_delivery(&name, k, &t2),
                None => l.enqueue(&name, &t2, None),
            })
            .await;
        match r {
            Ok(crate::ledger::Enqueued::New(task)) => {
                tracing::info!(agent, "webhook delivery queued as task {task}");
                self.announce_queued(&agent, task, &trigger);
                let _ = reply.send(Ok((task, false)));
                self.dispatch(&agent).await;
            }
            Ok(crate::ledger::Enqueued::Coalesced(task)) => {
                tracing::info!(agent, "webhook redelivery of task {task}: nothing new recorded");
                let _ = reply.send(Ok((task, true)));
            }
            Err(e) => {
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                }
                let _ = reply.send(Err(format!("cannot record the delivery: {e}")));
            }
        }
    }

    async fn status(&self) -> Response {
        let out = self.all_agents_status().await;
        let fleet = match &self.fleet {
            Some(f) => {
                let ttl = f.spec.lease_ttl.as_millis() as i64;
                let members = self.ledger.call(move |l| l.members(ttl)).await.unwrap_or_default();
                Some(json!({"host": f.spec.host, "members": members}))
            }
            None => None,
        };
        Response::ok(json!({ "agents": out, "degraded": self.degraded.cause(), "fleet": fleet }))
    }

    /// The metrics, with the gauges of what the supervisor holds (agent
    /// states, queue depths) brought up to date first.
    pub(super) async fn metrics_text(&self) -> Response {
        let queued = self.queued_counts().await;
        let agents: Vec<_> = self
            .agents
            .iter()
            .map(|(name, a)| (name.as_str(), a.life.name(), queued.get(name).copied().unwrap_or(0)))
            .collect();
        self.metrics.refresh(&Lifecycle::NAMES, &agents);
        let mut pending = std::collections::BTreeMap::new();
        for a in self
            .ledger
            .call(|l| l.pending_approvals(None))
            .await
            .unwrap_or_default()
        {
            *pending.entry(a.agent).or_insert(0) += 1;
        }
        let names: Vec<&str> = self.agents.keys().map(String::as_str).collect();
        self.metrics.refresh_approvals(&names, &pending);
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
        let paused = self.agents.get(&agent).is_some_and(|a| a.is_paused());
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
        self.agent_status_with(name, queued).await
    }

    /// Every agent's status, with one ledger query for all their queues
    /// (not one per agent: a status of 1,000 agents is one round trip).
    pub(super) async fn all_agents_status(&self) -> Vec<AgentStatus> {
        let queued = self.queued_counts().await;
        let mut out = Vec::with_capacity(self.agents.len());
        for name in self.agents.keys() {
            out.push(
                self.agent_status_with(name, queued.get(name).copied().unwrap_or(0))
                    .await,
            );
        }
        out
    }

    async fn queued_counts(&self) -> std::collections::HashMap<String, i64> {
        self.ledger.call(|l| l.queued_counts()).await.unwrap_or_default()
    }

    async fn agent_status_with(&self, name: &str, queued: i64) -> AgentStatus {
        let Some(a) = self.agents.get(name) else {
            return AgentStatus::without_process(name, "removed", queued);
        };
        // In a fleet, an agent another member runs is shown as that
        // member's (its process and state live there).
        if let Some(f) = &self.fleet
            && !f.held.contains(name)
        {
            // Read now, not at the last tick: a move shows at once.
            let ttl = f.spec.lease_ttl.as_millis() as i64;
            let members = self.ledger.call(move |l| l.members(ttl)).await.unwrap_or_default();
            let holder = members
                .iter()
                .find(|m| m.alive && m.agents.iter().any(|x| x == name))
                .map(|m| m.host.clone());
            let state = if holder.is_some() { "running" } else { "unplaced" };
            return AgentStatus {
                paused: a.is_paused(),
                pause: a.pause.clone(),
                spend: self.spend_status(name).await,
                waiting: self.waiting_for(name).await,
                schedules: self.schedule_status(name),
                host: holder,
                ..AgentStatus::without_process(name, state, queued)
            };
        }
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
            paused: a.is_paused(),
            pause: a.pause.clone(),
            spend: self.spend_status(name).await,
            waiting: self.waiting_for(name).await,
            schedules: self.schedule_status(name),
            host: self.fleet.as_ref().map(|f| f.spec.host.clone()),
        }
    }
}
