//! The fleet, as the shared PostgreSQL ledger keeps it: which hosts are
//! members (a heartbeat each), which member runs each agent (a lease with
//! a TTL and a *fencing epoch*), and which schedule occurrences have fired.
//!
//! Fencing: a member that joined holds a [`Fence`], the epochs of the
//! agents whose leases it took. Every write of an agent's task (claim,
//! journal step, end, approval request, re-queue) checks, in the same
//! transaction, that the lease row still names this host with that epoch
//! (`FOR SHARE`, so a takeover waits for the write to commit, or the write
//! sees the takeover). A member that was paused or cut off past its TTL
//! finds the lease taken by another host with a higher epoch when it
//! wakes, and every write it tries is refused as [`LedgerError::StaleEpoch`].
//!
//! Times that decide leases are the database's clock, never a host's, so
//! hosts' clock skew cannot make two of them think they hold one agent.
//!
//! This module never decides placement or starts anything: that is the
//! supervisor's (`supervisor::fleet`); it only keeps the rows honest.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::db::{Backend, Conn, DbResult, args};
use super::{Ledger, LedgerError, Result};
use crate::domain::TaskState;

/// The database's clock in milliseconds since the epoch.
pub(super) const DB_NOW: &str = "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)";

/// The channel members LISTEN on: a payload names an agent with new work
/// (a task queued), an answered approval ([`APPROVAL_WAKE`]) whose runner
/// waits on another member, or is empty (membership changed).
pub const WAKE_CHANNEL: &str = "agentd_wake";

/// A wake-up payload's prefix for an approval answered on one member
/// whose runner waits on another (`approval:ID`).
pub const APPROVAL_WAKE: &str = "approval:";

/// A wake-up payload's prefix for a task that ended (`ended:ID`): a member
/// that took the message may have someone waiting for its answer.
pub const ENDED_WAKE: &str = "ended:";

/// The agents whose leases this member holds, with their epochs.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    pub host: String,
    held: HashMap<String, i64>,
}

impl Fence {
    pub fn epoch(&self, agent: &str) -> Option<i64> {
        self.held.get(agent).copied()
    }

    pub fn held(&self) -> impl Iterator<Item = (&str, i64)> {
        self.held.iter().map(|(a, e)| (a.as_str(), *e))
    }
}

/// A member as the ledger sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub host: String,
    pub labels: Vec<String>,
    /// Milliseconds since the epoch, by the database's clock.
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// Whether its heartbeat is younger than the TTL asked with.
    pub alive: bool,
    /// `agentd drain` asked it to give its agents away.
    pub draining: bool,
    /// The agents it holds (unexpired leases).
    pub agents: Vec<String>,
}

/// An agent's lease row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentLease {
    pub agent: String,
    pub host: String,
    pub epoch: i64,
    pub expires_at: i64,
    pub expired: bool,
}

/// What taking an agent's lease found.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquired {
    pub epoch: i64,
    /// The host that held it before, when another one (it was lost).
    pub previous: Option<String>,
    /// Tasks that host left running, re-queued (or failed past their
    /// attempts) with the cause "host X lost".
    pub requeued: Vec<(crate::domain::TaskId, TaskState)>,
}

impl Ledger {
    /// Whether this ledger can hold a fleet (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.conn.backend() == Backend::Postgres
    }

    /// This member's fence, once it joined.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Refuses the write unless this member holds `agent`'s lease with the
    /// epoch it took (a no-op outside a fleet).
    pub(super) fn check_fence(&self, c: &Conn, agent: &str) -> Result<()> {
        let Some(f) = &self.fence else {
            return Ok(());
        };
        let epoch = f.epoch(agent).unwrap_or(0);
        let holds = c
            .query_opt(
                "SELECT epoch FROM agent_leases WHERE agent = ?1 AND host = ?2 AND epoch = ?3 FOR SHARE",
                args![agent, f.host.as_str(), epoch],
            )
            .map_err(|e| self.err(e))?;
        match holds {
            Some(_) => Ok(()),
            None => Err(LedgerError::StaleEpoch {
                agent: agent.to_owned(),
                host: f.host.clone(),
                epoch,
            }),
        }
    }

    /// Tells every member that `agent` has new work (a no-op with SQLite,
    /// where the only member already knows). Best effort: members poll too.
    pub(super) fn wake(&self, agent: &str) {
        if self.is_shared()
            && let Err(e) = self
                .conn
                .execute(&format!("SELECT pg_notify('{WAKE_CHANNEL}', ?1)"), args![agent])
        {
            tracing::debug!("cannot notify members: {e}");
        }
    }

    /// Joins the fleet as `host` (or comes back after a restart): the
    /// member row is written with a fresh heartbeat, and from now on every
    /// write of an agent's task is fenced. Leases this host held before a
    /// restart are not trusted: they are taken again (with a new epoch).
    pub fn join_fleet(&mut self, host: &str, labels: &[String]) -> Result<()> {
        if !self.is_shared() {
            return Ok(());
        }
        let labels = serde_json::to_string(labels).unwrap_or_else(|_| "[]".into());
        self.conn
            .execute(
                &format!(
                    "INSERT INTO members (host, labels, started_at, heartbeat_at, draining) VALUES (?1, ?2, {DB_NOW}, {DB_NOW}, 0)
                     ON CONFLICT (host) DO UPDATE SET labels = ?2, started_at = {DB_NOW}, heartbeat_at = {DB_NOW}, draining = 0"
                ),
                args![host, labels],
            )
            .map_err(|e| self.err(e))?;
        self.fence = Some(Fence {
            host: host.to_owned(),
            held: HashMap::new(),
        });
        self.wake("");
        Ok(())
    }

    /// Renews this member's heartbeat and every lease it holds by `ttl_ms`.
    /// Returns the agents whose lease it lost (another member took it over
    /// while this one could not renew): they must stop here at once.
    pub fn heartbeat(&mut self, ttl_ms: i64, status: Option<&str>) -> Result<Vec<String>> {
        let Some(host) = self.fence.as_ref().map(|f| f.host.clone()) else {
            return Ok(Vec::new());
        };
        let renewed = self.tx(|c| {
            c.execute(
                &format!("UPDATE members SET heartbeat_at = {DB_NOW}, status = coalesce(?2, status) WHERE host = ?1"),
                args![host.as_str(), status],
            )
            .map_err(|e| self.err(e))?;
            let rows = c
                .query(
                    &format!(
                        "UPDATE agent_leases SET expires_at = {DB_NOW} + ?2 WHERE host = ?1 RETURNING agent, epoch"
                    ),
                    args![host.as_str(), ttl_ms],
                )
                .map_err(|e| self.err(e))?;
            rows.iter()
                .map(|r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)))
                .collect::<DbResult<HashMap<String, i64>>>()
                .map_err(|e| self.err(e))
        })?;
        let Some(fence) = self.fence.as_mut() else {
            return Ok(Vec::new());
        };
        let lost: Vec<String> = fence
            .held
            .iter()
            .filter(|(a, e)| renewed.get(a.as_str()) != Some(e))
            .map(|(a, _)| a.clone())
            .collect();
        for a in &lost {
            fence.held.remove(a);
        }
        Ok(lost)
    }

    /// Takes `agent`'s lease for this member if it is free, expired, or
    /// was this host's before a restart: the epoch goes up by one. Tasks
    /// the previous holder left running are released in the same
    /// transaction (their runner is gone with it). None when another live
    /// member holds it.
    pub fn acquire_agent(&mut self, agent: &str, ttl_ms: i64, max_attempts: u32) -> Result<Option<Acquired>> {
        let Some(host) = self.fence.as_ref().map(|f| f.host.clone()) else {
            return Ok(None);
        };
        let got = self.tx(|c| {
            let err = |e| self.err(e);
            let prev = c
                .query_opt(
                    &format!(
                        "SELECT host, epoch, expires_at < {DB_NOW} FROM agent_leases WHERE agent = ?1 FOR UPDATE"
                    ),
                    args![agent],
                )
                .map_err(err)?;
            let (epoch, previous) = match prev {
                None => {
                    // Members starting together may both find no row: the
                    // first insert wins, the other finds it taken.
                    let n = c
                        .execute(
                            &format!(
                                "INSERT INTO agent_leases (agent, host, epoch, expires_at) VALUES (?1, ?2, 1, {DB_NOW} + ?3)
                                 ON CONFLICT (agent) DO NOTHING"
                            ),
                            args![agent, host.as_str(), ttl_ms],
                        )
                        .map_err(err)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    (1, None)
                }
                Some(r) => {
                    let (holder, epoch, expired): (String, i64, i64) =
                        (r.get(0).map_err(err)?, r.get(1).map_err(err)?, r.get::<i64>(2).map_err(err)?);
                    if holder != host && expired == 0 {
                        return Ok(None);
                    }
                    c.execute(
                        &format!(
                            "UPDATE agent_leases SET host = ?2, epoch = ?3, expires_at = {DB_NOW} + ?4 WHERE agent = ?1"
                        ),
                        args![agent, host.as_str(), epoch + 1, ttl_ms],
                    )
                    .map_err(err)?;
                    (epoch + 1, Some(holder))
                }
            };
            // Whatever ran before this epoch has no runner now.
            let cause = match &previous {
                Some(h) if *h != host => format!("host {h} lost"),
                _ => "agentd restarted".to_owned(),
            };
            let running = c
                .query(
                    "SELECT id FROM tasks WHERE agent = ?1 AND state IN ('running', 'waiting') ORDER BY id",
                    args![agent],
                )
                .map_err(err)?;
            let mut requeued = Vec::new();
            for r in running {
                let id = r.get(0).map_err(err)?;
                match super::tasks::release_in(c, id, &cause, max_attempts) {
                    Ok(state) => requeued.push((id, state)),
                    Err(super::tasks::Released::Db(e)) => return Err(self.err(e)),
                    Err(super::tasks::Released::NotRunning) => {}
                }
            }
            Ok(Some(Acquired {
                epoch,
                previous: previous.filter(|h| *h != host),
                requeued,
            }))
        })?;
        if let (Some(a), Some(f)) = (&got, self.fence.as_mut()) {
            f.held.insert(agent.to_owned(), a.epoch);
        }
        Ok(got)
    }

    /// Gives `agent`'s lease up (the agent stopped here: drained, moved,
    /// removed from the config), so another member may take it at once.
    pub fn release_agent(&mut self, agent: &str) -> Result<()> {
        let Some(f) = self.fence.as_mut() else {
            return Ok(());
        };
        let Some(epoch) = f.held.remove(agent) else {
            return Ok(());
        };
        let host = f.host.clone();
        self.conn
            .execute(
                "DELETE FROM agent_leases WHERE agent = ?1 AND host = ?2 AND epoch = ?3",
                args![agent, host.as_str(), epoch],
            )
            .map_err(|e| self.err(e))?;
        self.wake("");
        Ok(())
    }

    /// Forgets a lease this member lost (the heartbeat said so) without
    /// touching the row, which is another member's now.
    pub fn forget_agent(&mut self, agent: &str) {
        if let Some(f) = self.fence.as_mut() {
            f.held.remove(agent);
        }
    }

    /// Every member, with whether its heartbeat is younger than `ttl_ms`
    /// and which agents it holds.
    pub fn members(&self, ttl_ms: i64) -> Result<Vec<Member>> {
        if !self.is_shared() {
            return Ok(Vec::new());
        }
        let leases = self.agent_leases()?;
        let rows = self
            .conn
            .query(
                &format!(
                    "SELECT host, labels, started_at, heartbeat_at, heartbeat_at > {DB_NOW} - ?1, draining
                     FROM members ORDER BY host"
                ),
                args![ttl_ms],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                let host: String = r.get(0)?;
                let labels: String = r.get(1)?;
                let agents = leases
                    .iter()
                    .filter(|l| l.host == host && !l.expired)
                    .map(|l| l.agent.clone())
                    .collect();
                Ok(Member {
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    started_at: r.get(2)?,
                    heartbeat_at: r.get(3)?,
                    alive: r.get::<i64>(4)? != 0,
                    draining: r.get::<i64>(5)? != 0,
                    agents,
                    host,
                })
            })
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Every agent's lease.
    pub fn agent_leases(&self) -> Result<Vec<AgentLease>> {
        if !self.is_shared() {
            return Ok(Vec::new());
        }
        let rows = self
            .conn
            .query(
                &format!(
                    "SELECT agent, host, epoch, expires_at, expires_at < {DB_NOW} FROM agent_leases ORDER BY agent"
                ),
                &[],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(AgentLease {
                    agent: r.get(0)?,
                    host: r.get(1)?,
                    epoch: r.get(2)?,
                    expires_at: r.get(3)?,
                    expired: r.get::<i64>(4)? != 0,
                })
            })
            .collect::<DbResult<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Marks `host` as draining (it gives its agents away as their tasks
    /// end); false when no such member exists.
    pub fn drain_host(&mut self, host: &str, draining: bool) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE members SET draining = ?2 WHERE host = ?1",
                args![host, draining],
            )
            .map_err(|e| self.err(e))?;
        self.wake("");
        Ok(n > 0)
    }
}
