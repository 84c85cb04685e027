//! This supervisor as one member of a fleet sharing a PostgreSQL ledger.
//!
//! Every member knows every configured agent, but runs only those whose
//! lease it holds ([`crate::ledger::fleet`] keeps leases and fences their
//! writes). Each tick (a third of the lease TTL by default) it renews its
//! heartbeat and leases, stops at once any agent whose lease another
//! member took, and compares what it holds with what placement wants:
//!
//! - placement is decided by [`crate::placement::place`], a pure function: rendezvous
//!   hashing of the agent's name over the live, non-draining members its
//!   `placement:` allows, so every member computes the same answer, agents
//!   spread evenly, and a member joining or leaving moves only its share;
//! - an agent placed here whose lease is free or expired is taken (its
//!   previous holder's running tasks re-queued with "host X lost") and
//!   started;
//! - an agent held here but placed elsewhere (a new member took its
//!   share, or this host is draining) is stopped once it is idle (running
//!   tasks finish first) and its lease given up, so the other member takes
//!   it at its next tick.
//!
//! Between ticks, `LISTEN/NOTIFY` wakes the member when another queued a
//! task for one of its agents; each tick also dispatches, as the fallback.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Supervisor;
use super::slot::{AfterExit, Lifecycle};
use crate::config::FleetSpec;
use crate::ledger::{LedgerError, Member};
use crate::placement::place;

/// This member's view of the fleet.
pub(super) struct Fleet {
    pub spec: FleetSpec,
    /// Agents whose lease this member holds.
    pub held: BTreeSet<String>,
    /// The members as last read (for status and placement).
    pub members: Vec<Member>,
    /// `agentd drain` was asked of this member.
    pub draining: bool,
}

impl Fleet {
    pub fn new(spec: FleetSpec) -> Fleet {
        Fleet {
            spec,
            held: BTreeSet::new(),
            members: Vec::new(),
            draining: false,
        }
    }

    fn ttl_ms(&self) -> i64 {
        self.spec.lease_ttl.as_millis() as i64
    }

    pub fn tick_every(&self) -> Duration {
        self.spec.heartbeat()
    }
}

impl Supervisor {
    /// Whether this member may run `name` now (always, outside a fleet).
    pub(super) fn may_run_here(&self, name: &str) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.held.contains(name))
    }

    /// One round of membership: heartbeat, lost leases, placement.
    pub(super) async fn fleet_tick(&mut self) {
        let Some(f) = &self.fleet else { return };
        let ttl = f.ttl_ms();
        let status = self.status_line();
        let read = self
            .ledger
            .call(move |l| -> Result<_, LedgerError> {
                let lost = l.heartbeat(ttl, Some(&status))?;
                let members = l.members(ttl)?;
                Ok((lost, members))
            })
            .await;
        let (lost, members) = match read {
            Ok(r) => r,
            Err(LedgerError::Closed) => return,
            Err(e) => {
                // Leases run out while this lasts; the fence keeps this
                // member's late writes out if another one takes over.
                tracing::warn!("fleet heartbeat failed: {e}");
                return;
            }
        };
        for agent in lost {
            tracing::warn!(
                agent,
                "another host took this agent's lease (this host missed its renewals); stopping it here"
            );
            if let Some(f) = self.fleet.as_mut() {
                f.held.remove(&agent);
            }
            self.stop_agent(&agent, AfterExit::StayDown, Duration::ZERO);
            self.kill_now(&agent);
        }
        let Some(f) = self.fleet.as_mut() else { return };
        let me = f.spec.host.clone();
        f.draining = members.iter().any(|m| m.host == me && m.draining);
        f.members = members;
        if self.stop_deadline.is_some() {
            return;
        }
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for name in names {
            self.place_one(&name, &me).await;
        }
        if !self.waiters.is_empty() || !self.watched.is_empty() {
            self.answer_remote_waiters(&[]).await;
        }
        self.sync_governance(None).await;
    }

    /// Pauses and cancellations are written to the shared ledger by
    /// whichever member an operator asked: bring this member's view of
    /// `only` (or every agent) in line, stopping a cancelled run it holds.
    async fn sync_governance(&mut self, only: Option<&str>) {
        let Ok(pauses) = self.ledger.call(|l| l.pauses()).await else {
            return;
        };
        let names: Vec<String> = match only {
            Some(a) => vec![a.to_owned()],
            None => self.agents.keys().cloned().collect(),
        };
        for name in names {
            let Some(a) = self.agents.get_mut(&name) else { continue };
            let recorded = pauses.iter().find(|p| p.agent == name).cloned();
            let resumed = a.pause.is_some() && recorded.is_none();
            if a.pause.is_none()
                && let Some(p) = &recorded
            {
                tracing::info!(agent = name, "paused ({}) by {} (on another member)", p.reason, p.by);
            }
            a.pause = recorded;
            let claim = a.life.claim().map(|c| c.task);
            if let Some(task) = claim {
                if let Ok(t) = self.ledger.call(move |l| l.task(task)).await
                    && t.state == crate::domain::TaskState::Cancelled
                {
                    let error = t.error.unwrap_or_else(|| "cancelled".into());
                    tracing::info!(agent = name, "task {task} was cancelled on another member");
                    self.drop_cancelled(&name, task, &error).await;
                }
            } else if resumed {
                self.dispatch(&name).await;
            }
        }
    }

    /// Takes, keeps or gives away one agent as placement says.
    async fn place_one(&mut self, name: &str, me: &str) {
        let (Some(f), Some(a)) = (&self.fleet, self.agents.get(name)) else {
            return;
        };
        let want = place(name, &a.spec.placement, &f.members).map(str::to_owned);
        let held = f.held.contains(name);
        let here = want.as_deref() == Some(me) && !f.draining;
        if held && !here {
            // Placed elsewhere: leave once idle, then give the lease up.
            match &a.life {
                Lifecycle::Stopped | Lifecycle::Failed | Lifecycle::Backoff { .. } => {
                    self.give_up(name, want.as_deref()).await;
                }
                Lifecycle::Running { claim: None, .. } | Lifecycle::Starting { .. } => {
                    tracing::info!(
                        agent = name,
                        "moving to host {}: stopping here",
                        want.as_deref().unwrap_or("(none)")
                    );
                    self.stop_agent(name, AfterExit::StayDown, self.cfg.shutdown_grace);
                }
                // A running task finishes first; stopping ones are on their way.
                Lifecycle::Running { .. } | Lifecycle::Stopping { .. } => {}
            }
            return;
        }
        if held {
            // The polling fallback for work queued by other members.
            self.dispatch(name).await;
            return;
        }
        if !here {
            return;
        }
        let (agent, ttl, max) = (name.to_owned(), f.ttl_ms(), a.spec.limits.max_attempts);
        let got = self.ledger.call(move |l| l.acquire_agent(&agent, ttl, max)).await;
        let acquired = match got {
            Ok(Some(a)) => a,
            Ok(None) | Err(LedgerError::Closed) => return,
            Err(e) => {
                tracing::warn!(agent = name, "cannot take this agent's lease: {e}");
                return;
            }
        };
        if let Some(f) = self.fleet.as_mut() {
            f.held.insert(name.to_owned());
        }
        match &acquired.previous {
            Some(prev) => tracing::warn!(
                agent = name,
                "took over from host {prev} (epoch {}); its workspace stays on {prev} and is not restored here (agentd snapshot restore puts a saved one back); the conversation is restored from the ledger",
                acquired.epoch
            ),
            None => tracing::info!(agent = name, "runs on this host (lease epoch {})", acquired.epoch),
        }
        for (id, state) in &acquired.requeued {
            tracing::warn!(agent = name, "task {id} had no runner left; now {state}");
        }
        if let Some(a) = self.agents.get(name)
            && matches!(a.life, Lifecycle::Stopped | Lifecycle::Failed)
        {
            self.start_agent(name).await;
        }
    }

    /// Gives up an agent's lease (it stopped here to move elsewhere).
    async fn give_up(&mut self, name: &str, to: Option<&str>) {
        let agent = name.to_owned();
        match self.ledger.call(move |l| l.release_agent(&agent)).await {
            Ok(()) => {
                if let Some(f) = self.fleet.as_mut() {
                    f.held.remove(name);
                }
                tracing::info!(agent = name, "lease given up; host {} takes it", to.unwrap_or("(none)"));
            }
            Err(e) => tracing::warn!(agent = name, "cannot give this agent's lease up: {e}"),
        }
    }

    /// Kills a child at once (its lease is gone: nothing it does counts).
    fn kill_now(&self, name: &str) {
        if let Some(c) = self.agents.get(name).and_then(|a| a.life.child()) {
            c.signal(nix::sys::signal::Signal::SIGKILL);
            c.kill_group();
        }
    }

    /// A member said an agent has new work (or, with no agent, that the
    /// fleet changed).
    pub(super) async fn on_wake(&mut self, agent: String) {
        if agent.is_empty() {
            self.fleet_tick().await;
        } else if let Some(id) = agent.strip_prefix(crate::ledger::fleet::APPROVAL_WAKE) {
            if let Ok(id) = id.parse() {
                self.deliver_remote_answer(id).await;
            }
        } else if let Some(id) = agent.strip_prefix(crate::ledger::fleet::ENDED_WAKE) {
            if let Ok(id) = id.parse() {
                self.answer_remote_waiters(&[crate::domain::TaskId(id)]).await;
            }
        } else if self.fleet.as_ref().is_some_and(|f| f.held.contains(&agent)) {
            self.sync_governance(Some(&agent)).await;
            self.dispatch(&agent).await;
        }
    }

    /// Tasks this member recorded for someone waiting (`send --wait`, the
    /// REPL) that another member ran: once ended in the ledger, their
    /// waiters get the answer here. Ticks look at all of them (the
    /// fallback for a lost wake-up).
    pub(super) async fn answer_remote_waiters(&mut self, only: &[crate::domain::TaskId]) {
        let mut ids: Vec<crate::domain::TaskId> = self.waiters.keys().chain(self.watched.keys()).copied().collect();
        if !only.is_empty() {
            ids.retain(|t| only.contains(t));
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            let Ok(t) = self.ledger.call(move |l| l.task(id)).await else {
                continue;
            };
            // A task this member runs ends through its own child.
            if !t.state.is_final() || self.fleet.as_ref().is_some_and(|f| f.held.contains(&t.agent)) {
                continue;
            }
            self.on_task_end(&t.agent, id, t.state, t.result.as_deref(), t.error.as_deref());
        }
    }

    /// Another member answered approval `id`: if its runner waits here,
    /// the answer goes to it (the ledger already has the task running).
    async fn deliver_remote_answer(&mut self, id: i64) {
        let Ok(a) = self.ledger.call(move |l| l.approval(id)).await else {
            return;
        };
        let Some(answer) = a.answer() else { return };
        let Some(agent) = self.agents.get(&a.agent) else {
            return;
        };
        let (Some(claim), Some(child)) = (agent.life.claim(), agent.life.child()) else {
            return;
        };
        if claim.task != a.task || !self.may_run_here(&a.agent) {
            return;
        }
        tracing::info!(
            agent = a.agent,
            "approval {id} of task {} {} by {} (answered on another member)",
            a.task,
            a.state,
            answer.by
        );
        child.send(&crate::protocol::ToChild::ApprovalAnswer {
            task: a.task,
            lease: claim.lease.clone(),
            answer,
        });
    }

    /// On a clean stop: every lease is given up so other members take the
    /// agents at once instead of after the TTL.
    pub(super) async fn leave_fleet(&mut self) {
        let Some(f) = &self.fleet else { return };
        let held: Vec<String> = f.held.iter().cloned().collect();
        let _ = self
            .ledger
            .call(move |l| -> Result<(), LedgerError> {
                for a in held {
                    l.release_agent(&a)?;
                }
                Ok(())
            })
            .await;
    }
}
