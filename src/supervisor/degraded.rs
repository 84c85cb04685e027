//! The ledger cannot be written (its disk is full, or failing): agentd is
//! *degraded*, says so, and keeps the truth in memory until it can write.
//!
//! - Writes that must not be lost (a trigger from an agent, a journal step,
//!   the end of a task, the release of a task whose child died) are kept
//!   here, in order, and replayed once the ledger takes writes again. A
//!   task's final state is never left as `running` for good.
//! - Requests from people (`send`, REPL lines) are refused with the cause,
//!   by the supervisor, not kept: the caller hears it at once.
//! - While degraded the supervisor retries every [`RETRY`]; the first
//!   replay that gets everything written ends the degraded state.
//!
//! This module owns the queue and the wording of the cause. It never talks
//! to children or callers; the supervisor decides what is kept.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ledger::{Ledger, LedgerError, NewStep, SnapshotKind, TaskState, Trigger};

/// How often writes are retried while degraded.
pub const RETRY: Duration = Duration::from_millis(500);
/// The most writes kept in memory; past it, journal steps are dropped
/// (counted) so triggers and task ends still fit.
pub const MAX_KEPT: usize = 10_000;

/// A ledger write kept for later.
#[derive(Debug)]
pub enum Deferred {
    Trigger {
        agent: String,
        trigger: Trigger,
        dedupe_key: Option<String>,
    },
    Step {
        task: i64,
        lease: String,
        step: NewStep,
    },
    Finish {
        agent: String,
        task: i64,
        lease: String,
        state: TaskState,
        result: Option<String>,
        error: Option<String>,
        conversation: Option<Vec<u8>>,
    },
    Release {
        task: i64,
        cause: String,
        max_attempts: u32,
    },
}

impl Deferred {
    /// Writes it. Takes `&self` so a failed write stays queued. Returns
    /// the number of what it made: a trigger's task id, a step's sequence
    /// number (for the event feed).
    pub fn apply(&self, l: &mut Ledger) -> Result<Option<i64>, LedgerError> {
        match self {
            Deferred::Trigger {
                agent,
                trigger,
                dedupe_key,
            } => l.enqueue(agent, trigger, dedupe_key.as_deref()).map(|e| Some(e.id())),
            Deferred::Step { task, lease, step } => l.append_step(*task, lease, step).map(Some),
            Deferred::Finish {
                agent,
                task,
                lease,
                state,
                result,
                error,
                conversation,
            } => {
                l.finish(*task, lease, *state, result.as_deref(), error.as_deref())?;
                if let Some(data) = conversation {
                    l.put_snapshot(agent, SnapshotKind::Conversation, None, Some(*task), data)?;
                }
                Ok(None)
            }
            Deferred::Release {
                task,
                cause,
                max_attempts,
            } => l.release(*task, cause, *max_attempts).map(|_| None),
        }
    }
}

/// Whether agentd is degraded, why, and what it still has to write.
#[derive(Default)]
pub struct Degraded {
    cause: Option<(String, Instant)>,
    pub kept: VecDeque<Deferred>,
    pub dropped_steps: u64,
}

impl Degraded {
    /// The cause, when degraded.
    pub fn cause(&self) -> Option<String> {
        self.cause.as_ref().map(|(c, since)| {
            let pending = if self.kept.is_empty() {
                String::new()
            } else {
                format!("; {} writes kept in memory", self.kept.len())
            };
            format!(
                "the ledger cannot be written ({c}) for {}{pending}",
                humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
            )
        })
    }

    pub fn is_degraded(&self) -> bool {
        self.cause.is_some()
    }

    /// Enters (or stays in) the degraded state; true when it is new.
    pub fn enter(&mut self, e: &LedgerError) -> bool {
        if self.cause.is_some() {
            return false;
        }
        self.cause = Some((e.short(), Instant::now()));
        true
    }

    /// Keeps a write; a trigger with the same dedupe key as one already
    /// kept replaces it (the newer one carries the fresher contents).
    pub fn keep(&mut self, d: Deferred) {
        if let Deferred::Trigger {
            agent,
            dedupe_key: Some(key),
            ..
        } = &d
            && let Some(slot) = self.kept.iter_mut().find(
                |k| matches!(k, Deferred::Trigger { agent: a, dedupe_key: Some(k2), .. } if a == agent && k2 == key),
            )
        {
            *slot = d;
            return;
        }
        if self.kept.len() >= MAX_KEPT && matches!(d, Deferred::Step { .. }) {
            self.dropped_steps += 1;
            return;
        }
        self.kept.push_back(d);
    }

    /// Writes are possible again: leaves the degraded state.
    pub fn recovered(&mut self) -> Option<Duration> {
        self.cause.take().map(|(_, since)| since.elapsed())
    }
}
