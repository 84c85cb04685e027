//! Agent processes' lives: start (with the agent's user and directories),
//! stop (shutdown, then SIGTERM and SIGKILL after the grace period), the
//! heartbeat's verdict, and what an exit means (release the task, restart
//! by policy with backoff, stay down, or fail past the start limit). Every
//! transition is a move between [`Lifecycle`] variants.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::degraded::Deferred;
use super::restart::{Decision, Exit};
use super::slot::{AfterExit, Claim, Lifecycle, Live};
use super::{Event, KILL_AFTER_TERM, Supervisor, TERM_AFTER_GRACE, heartbeat, systemd, trim};
use crate::domain::Conversation;
use crate::ledger::{LedgerError, SnapshotKind};
use crate::protocol::{PROTOCOL_VERSION, ToChild};
use crate::state_dir::AgentDirs;

/// Agents started as one batch (see [`Supervisor::start_agents`]).
const START_BATCH: usize = 100;

/// An agent's user (when agentd is root) and its prepared directories.
type Prepared = (Option<(u32, u32)>, AgentDirs);

impl Supervisor {
    pub(super) async fn start_agent(&mut self, name: &str) {
        self.start_agents(&[name]).await;
    }

    /// Starts `names` a batch at a time: one ledger query reads a batch's
    /// saved conversations, and the next batch's directories are made on a
    /// blocking thread while this batch's processes start (on a fresh state
    /// dir, making them is most of an agent's start).
    pub(super) async fn start_agents(&mut self, names: &[&str]) {
        // In a fleet, only the member holding the agent's lease runs it.
        let wanted: Vec<String> = names
            .iter()
            .filter(|n| self.may_run_here(n))
            .map(|n| (*n).to_owned())
            .collect();
        let batches: Vec<&[String]> = wanted.chunks(START_BATCH).collect();
        let mut next = batches.first().map(|b| self.prepare_dirs(b));
        for (i, batch) in batches.iter().enumerate() {
            // A job that died (it panicked) fails its batch, said per
            // agent, rather than leaving the agents unstarted unsaid.
            let prepared = match next.take() {
                Some(job) => job.await.unwrap_or_else(|e| {
                    let why = format!("preparing its user and directories failed: {e}");
                    batch.iter().map(|_| Err(why.clone())).collect()
                }),
                None => Vec::new(),
            };
            next = batches.get(i + 1).map(|b| self.prepare_dirs(b));
            let mut saved = self.saved_conversations(batch).await;
            for (name, dirs) in batch.iter().zip(prepared) {
                match dirs {
                    Ok((user, dirs)) => {
                        let conversation = saved.remove(name.as_str()).flatten();
                        self.launch(name, user, dirs, conversation);
                    }
                    Err(why) => self.fail_to_start(name, why),
                }
            }
        }
    }

    /// Assigns each agent of `batch` its user and makes its directories,
    /// on a blocking thread; one result per agent, in order.
    fn prepare_dirs(&self, batch: &[String]) -> tokio::task::JoinHandle<Vec<Result<Prepared, String>>> {
        let names = batch.to_vec();
        let users = self.users.clone();
        let state_dir = self.cfg.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|name| {
                    let user = match &users {
                        Some(users) => match users.lock() {
                            Ok(mut u) => Some(u.assign(&name)?),
                            Err(_) => return Err("the agents' user table is unusable".to_owned()),
                        },
                        None => None,
                    };
                    crate::state_dir::prepare_agent(&state_dir, &name, user)
                        .map(|dirs| (user, dirs))
                        .map_err(|e| {
                            let work = crate::state_dir::workdir(&state_dir, &name);
                            format!("cannot prepare workdir {}: {e}", work.display())
                        })
                })
                .collect()
        })
    }

    /// The saved conversations of `agents` (absent: none saved, or
    /// unreadable; said, not hidden, and the agent starts without its
    /// memory while the snapshot stays in the ledger to be looked at).
    async fn saved_conversations(&self, agents: &[String]) -> HashMap<String, Option<Conversation>> {
        let names = agents.to_vec();
        let snapshots = match self
            .ledger
            .call(move |l| {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                l.latest_snapshots(&names, SnapshotKind::Conversation)
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot read the saved conversations ({e}); agents start with an empty memory");
                return HashMap::new();
            }
        };
        snapshots
            .into_iter()
            .map(|s| {
                let conversation = match serde_json::from_slice::<Conversation>(&s.data) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(
                            agent = s.meta.agent,
                            "snapshot {} (its conversation) does not decode ({e}); starting with an empty memory",
                            s.meta.id
                        );
                        None
                    }
                };
                (s.meta.agent, conversation)
            })
            .collect()
    }

    /// Starts the process of agent `name` with `conversation` as its memory.
    fn launch(&mut self, name: &str, user: Option<(u32, u32)>, dirs: AgentDirs, conversation: Option<Conversation>) {
        self.generation += 1;
        let generation = self.generation;
        let events = self.events.clone();
        let record_dir = self.record.clone();
        let Some(a) = self.agents.get_mut(name) else { return };
        let start = ToChild::Start {
            version: PROTOCOL_VERSION,
            spec: Box::new(a.spec.clone()),
            workdir: dirs.work,
            mcp_dir: dirs.mcp,
            sandbox_user: user,
            conversation,
            record_dir,
        };
        match self
            .spawner
            .spawn(name, generation, &start, a.spec.heartbeat.interval, events)
        {
            Ok(handle) => {
                tracing::info!(agent = name, pid = handle.pid, "agent started");
                let now = Instant::now();
                a.restarts.started(now);
                a.life = Lifecycle::Starting {
                    child: Live { handle, since: now },
                };
                a.last_pong = now;
                a.hung = None;
            }
            Err(e) => {
                a.life = Lifecycle::Failed;
                a.last_error = Some(format!("cannot start agent process: {e}"));
                tracing::error!(agent = name, "cannot start agent process: {e}");
            }
        }
        self.update_status();
    }

    pub(super) fn fail_to_start(&mut self, name: &str, why: String) {
        if let Some(a) = self.agents.get_mut(name) {
            tracing::error!(agent = name, "{why}");
            a.life = Lifecycle::Failed;
            a.last_error = Some(why);
        }
        self.update_status();
    }

    /// Asks the child to stop (finishing its task within `grace`), then
    /// escalates to SIGTERM and SIGKILL. Without a child, `after` applies now.
    pub(super) fn stop_agent(&mut self, name: &str, after: AfterExit, grace: Duration) -> bool {
        let Some(a) = self.agents.get_mut(name) else {
            return false;
        };
        let (child, claim) = match std::mem::replace(&mut a.life, Lifecycle::Stopped) {
            Lifecycle::Starting { child } => (child, None),
            Lifecycle::Running { child, claim } | Lifecycle::Stopping { child, claim, .. } => (child, claim),
            // A pending restart is called off; stopped and failed stay so.
            Lifecycle::Backoff { .. } => return true,
            down @ (Lifecycle::Stopped | Lifecycle::Failed) => {
                a.life = down;
                return true;
            }
        };
        child.handle.send(&ToChild::Shutdown {
            grace_ms: grace.as_millis() as u64,
        });
        let generation = child.handle.generation;
        a.life = Lifecycle::Stopping {
            child,
            claim,
            then: after,
        };
        let events = self.events.clone();
        let agent = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(grace + TERM_AFTER_GRACE).await;
            let _ = events.send(Event::Escalate {
                agent: agent.clone(),
                generation,
                signal: Signal::SIGTERM,
            });
            tokio::time::sleep(KILL_AFTER_TERM).await;
            let _ = events.send(Event::Escalate {
                agent,
                generation,
                signal: Signal::SIGKILL,
            });
        });
        false
    }

    pub(super) fn begin_stop(&mut self, why: &str) {
        if self.stop_deadline.is_some() {
            return;
        }
        let grace = self.cfg.shutdown_grace;
        tracing::info!(
            "{why}: stopping {} agents (grace {})",
            self.agents.len(),
            humantime::format_duration(grace)
        );
        systemd::stopping();
        self.stop_deadline = Some(tokio::time::Instant::now() + grace + TERM_AFTER_GRACE + KILL_AFTER_TERM);
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for name in names {
            self.stop_agent(&name, AfterExit::StayDown, grace);
        }
    }

    pub(super) fn kill_all(&mut self) {
        for a in self.agents.values() {
            if let Some(c) = a.life.child() {
                c.signal(Signal::SIGKILL);
                c.kill_group();
            }
        }
    }

    /// Pings a running child, or kills it when it has stopped answering
    /// (see [`heartbeat`]). Starting children are not judged: they read
    /// their stdin only once their MCP servers are up. Stopping ones have
    /// their own escalation.
    pub(super) fn on_heartbeat(&mut self, name: &str, generation: u64) {
        let Some(a) = self.agents.get_mut(name) else { return };
        let Some(child) = a.life.child_of(generation) else {
            return;
        };
        if !a.life.is_running() || a.hung.is_some() {
            return;
        }
        match heartbeat::verdict(&a.spec.heartbeat, a.last_pong, Instant::now()) {
            heartbeat::Verdict::Alive => {
                a.heartbeat_seq += 1;
                child.send(&ToChild::Ping { seq: a.heartbeat_seq });
            }
            heartbeat::Verdict::Hung(why) => {
                tracing::error!(agent = name, pid = child.pid, "{why}");
                child.signal(Signal::SIGKILL);
                child.kill_group();
                a.hung = Some(why);
            }
        }
    }

    pub(super) async fn on_exit(&mut self, name: &str, generation: u64, exit: Exit) {
        let Some(a) = self.agents.get_mut(name) else { return };
        if a.life.child_of(generation).is_none() {
            return;
        }
        let (child, running, after) = match std::mem::replace(&mut a.life, Lifecycle::Stopped) {
            Lifecycle::Starting { child } => (child, None, AfterExit::Policy),
            Lifecycle::Running { child, claim } => (child, claim, AfterExit::Policy),
            Lifecycle::Stopping { child, claim, then } => (child, claim, then),
            Lifecycle::Stopped | Lifecycle::Failed | Lifecycle::Backoff { .. } => return,
        };
        // Whatever the child started and left behind goes with it.
        child.handle.kill_group();
        crate::sandbox::contain::after_agent_exit(&self.cfg.state_dir, name);
        let uptime = child.since.elapsed();
        a.last_exit = Some(exit);
        a.degraded = None;
        let max_attempts = a.spec.limits.max_attempts;
        // Killed as hung: that, not the SIGKILL, is why it is gone.
        let cause = a.hung.take().unwrap_or_else(|| format!("agent process {exit}"));
        if !exit.success() && after == AfterExit::Policy {
            a.last_error = Some(cause.clone());
        }
        let log_exit = format!(
            "agent process {exit} after {}",
            humantime::format_duration(trim(uptime))
        );
        if after == AfterExit::Policy && !exit.success() {
            tracing::warn!(agent = name, "{log_exit}");
        } else {
            tracing::info!(agent = name, "{log_exit}");
        }

        if let Some(Claim {
            task, trigger, since, ..
        }) = running
        {
            let c2 = cause.clone();
            // Behind writes already kept (or being handed back by the
            // ledger thread), the release waits its turn too.
            let seq = self.degraded.number();
            let parked = self.degraded.parked.clone();
            let r = if self.degraded.behind() {
                None
            } else {
                self.ledger
                    .call(move |l| match parked.refusing() {
                        true => Ok(None),
                        false => l.release(task, &c2, max_attempts).map(Some),
                    })
                    .await
                    .transpose()
            };
            match r {
                Some(Ok(state)) => {
                    tracing::warn!(agent = name, "task {task} interrupted; now {state}");
                    self.metrics.task_ended(name, trigger, state.as_str(), since.elapsed());
                    self.end_task_span(task, state);
                    self.on_task_released(name, task, state, &cause);
                }
                Some(Err(LedgerError::Closed)) => {}
                Some(Err(e)) if !e.is_unwritable() => {
                    tracing::error!(agent = name, "cannot release task {task}: {e}")
                }
                unwritable_or_behind => {
                    if let Some(Err(e)) = &unwritable_or_behind {
                        self.enter_degraded(e);
                    }
                    tracing::warn!(
                        agent = name,
                        "task {task} interrupted; its release is kept until the ledger takes writes"
                    );
                    self.keep(
                        seq,
                        Deferred::Release {
                            task,
                            cause: cause.clone(),
                            max_attempts,
                        },
                    );
                }
            }
            // A release kept for later (or refused) still ends the task's span.
            if let Some(span) = self.task_spans.remove(&task) {
                span.record("otel.status_code", "ERROR");
            }
        }

        let stopping = self.stop_deadline.is_some();
        let Some(a) = self.agents.get_mut(name) else { return };
        match after {
            AfterExit::Remove => {
                self.agents.remove(name);
            }
            AfterExit::StayDown => a.life = Lifecycle::Stopped,
            AfterExit::StartAgain if !stopping => {
                a.restarts.reset();
                if let Some(which) = a.pending_restore.take() {
                    self.restore_snapshot(name, which).await;
                }
                self.start_agent(name).await;
            }
            AfterExit::StartAgain => a.life = Lifecycle::Stopped,
            AfterExit::Policy if stopping => a.life = Lifecycle::Stopped,
            AfterExit::Policy => {
                a.restarts.ran_for(uptime);
                match a.restarts.decide(exit, Instant::now()) {
                    Decision::Restart(delay) => {
                        a.restart_count += 1;
                        self.metrics.restarted(name);
                        self.generation += 1;
                        a.life = Lifecycle::Backoff {
                            generation: self.generation,
                        };
                        let (events, agent, generation) = (self.events.clone(), name.to_owned(), self.generation);
                        tracing::info!(
                            agent = name,
                            "restarting in {}",
                            humantime::format_duration(trim(delay))
                        );
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = events.send(Event::RestartDue { agent, generation });
                        });
                    }
                    Decision::Stop => a.life = Lifecycle::Stopped,
                    Decision::Fail(why) => {
                        tracing::error!(
                            agent = name,
                            "agent failed: {why}; it stays down until restarted or its config changes"
                        );
                        a.life = Lifecycle::Failed;
                        a.last_error = Some(why);
                    }
                }
            }
        }
        self.maybe_ready();
        self.update_status();
    }
}
