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
//! - Journal steps are sent to the ledger thread without waiting (nothing
//!   the supervisor does next depends on them). Their order still holds
//!   when a write fails: the first refused write raises [`Parked`]'s flag,
//!   and every later write that reaches the ledger thread — awaited or
//!   not — is handed back untried, in arrival order, until a replay has
//!   written everything handed back. The supervisor moves what was handed
//!   back into `kept` before it keeps or writes anything else.
//!
//! This module owns the queue and the wording of the cause. It never talks
//! to children or callers; the supervisor decides what is kept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ledger::{Ledger, LedgerError, SnapshotKind};

use crate::domain::{Lease, NewStep, TaskId, TaskState, Trigger};

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
        task: TaskId,
        lease: Lease,
        step: NewStep,
    },
    Finish {
        agent: String,
        task: TaskId,
        lease: Lease,
        state: TaskState,
        result: Option<String>,
        error: Option<String>,
        conversation: Option<Vec<u8>>,
    },
    Release {
        task: TaskId,
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
            } => l.enqueue(agent, trigger, dedupe_key.as_deref()).map(|e| Some(e.id().0)),
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

/// What became of a write sent to the ledger thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// Written (with the number of what it made: a trigger's task id, a
    /// step's sequence number), or rejected and dropped (`None`).
    Done(Option<i64>),
    /// The ledger refused it; it is parked for the supervisor to keep.
    HandedBack,
}

/// A write and its place in the order the supervisor sent writes in.
pub type Numbered = (u64, Deferred);

/// Writes the ledger thread handed back, shared between it and the
/// supervisor (see the module docs for why and when).
#[derive(Default)]
pub struct Parked {
    /// Set by the ledger thread when a write is refused; cleared by the
    /// replay that wrote everything.
    refusing: AtomicBool,
    /// Handed back, with the error of the first.
    back: Mutex<(Vec<Numbered>, Option<LedgerError>)>,
    /// Wakes the supervisor when the first write is handed back, so it
    /// says at once that it is degraded.
    pub refused: tokio::sync::Notify,
}

impl Parked {
    fn back(&self) -> std::sync::MutexGuard<'_, (Vec<Numbered>, Option<LedgerError>)> {
        // A poisoned lock only means a panic elsewhere; the queue is plain data.
        self.back.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs on the ledger thread: writes `d` unless writes are being
    /// refused, in which case (or when this write is refused) it is handed
    /// back. A write the ledger rejects for another reason (a stale lease)
    /// is logged and dropped.
    pub fn write(&self, l: &mut Ledger, seq: u64, d: Deferred) -> Wrote {
        if self.refusing.load(Ordering::Acquire) {
            self.back().0.push((seq, d));
            return Wrote::HandedBack;
        }
        match d.apply(l) {
            Ok(made) => Wrote::Done(made),
            Err(e) if e.is_unwritable() => {
                self.refusing.store(true, Ordering::Release);
                let mut back = self.back();
                back.0.push((seq, d));
                back.1.get_or_insert(e);
                drop(back);
                self.refused.notify_one();
                Wrote::HandedBack
            }
            Err(e) => {
                tracing::warn!("ledger write rejected: {e}");
                Wrote::Done(None)
            }
        }
    }

    /// Whether writes are being handed back (so a direct write would jump
    /// the queue).
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Runs on the ledger thread, in a replay: merges what was handed back
    /// into `kept` (by number); when there was nothing, and `kept` is
    /// empty, writes go straight through again.
    pub fn merge_or_reopen(&self, kept: &mut VecDeque<Numbered>) -> bool {
        let mut back = self.back();
        back.1 = None;
        if back.0.is_empty() {
            if kept.is_empty() {
                self.refusing.store(false, Ordering::Release);
            }
            return false;
        }
        for (seq, d) in back.0.drain(..) {
            insert(kept, seq, d);
        }
        true
    }

    fn take(&self) -> (Vec<Numbered>, Option<LedgerError>) {
        std::mem::take(&mut *self.back())
    }
}

fn insert(kept: &mut VecDeque<Numbered>, seq: u64, d: Deferred) {
    let at = kept.partition_point(|(s, _)| *s < seq);
    kept.insert(at, (seq, d));
}

/// Whether agentd is degraded, why, and what it still has to write.
#[derive(Default)]
pub struct Degraded {
    cause: Option<(String, Instant)>,
    /// Kept writes, in the order they were sent (by number).
    pub kept: VecDeque<Numbered>,
    pub dropped_steps: u64,
    pub parked: Arc<Parked>,
    next: u64,
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

    /// The number of the next write the supervisor sends.
    pub fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Keeps write number `seq` in its place; a trigger with the same
    /// dedupe key as one already kept replaces it (the newer one carries the
    /// fresher contents). Call [`Degraded::take_back`] first, so writes the
    /// ledger thread handed back are in `kept` too.
    pub fn keep(&mut self, seq: u64, d: Deferred) {
        if let Deferred::Trigger {
            agent,
            dedupe_key: Some(key),
            ..
        } = &d
            && let Some((_, slot)) = self.kept.iter_mut().find(
                |(_, k)| matches!(k, Deferred::Trigger { agent: a, dedupe_key: Some(k2), .. } if a == agent && k2 == key),
            )
        {
            *slot = d;
            return;
        }
        if self.kept.len() >= MAX_KEPT && matches!(d, Deferred::Step { .. }) {
            self.dropped_steps += 1;
            return;
        }
        insert(&mut self.kept, seq, d);
    }

    /// Moves what the ledger thread handed back into `kept`, each in its
    /// place; returns the error that made it hand them back, if any.
    pub fn take_back(&mut self) -> Option<LedgerError> {
        let (back, error) = self.parked.take();
        for (seq, d) in back {
            self.keep(seq, d);
        }
        error
    }

    /// Whether a new write must wait behind others: some are kept, or the
    /// ledger thread is handing writes back.
    pub fn behind(&self) -> bool {
        !self.kept.is_empty() || self.parked.refusing()
    }

    /// Writes are possible again: leaves the degraded state.
    pub fn recovered(&mut self) -> Option<Duration> {
        self.cause.take().map(|(_, since)| since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(task: i64) -> Deferred {
        Deferred::Release {
            task: TaskId(task),
            cause: "test".into(),
            max_attempts: 1,
        }
    }

    fn order(kept: &VecDeque<Numbered>) -> Vec<u64> {
        kept.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn a_write_handed_back_late_takes_its_place_before_later_kept_ones() {
        let mut d = Degraded::default();
        let (one, two, three) = (d.number(), d.number(), d.number());
        // Write 1 was refused, write 2 is still on its way to the ledger
        // thread when the supervisor keeps write 3.
        d.parked.back().0.push((one, release(1)));
        d.parked.refusing.store(true, Ordering::Release);
        assert!(d.behind());
        d.take_back();
        d.keep(three, release(3));
        d.parked.back().0.push((two, release(2)));
        d.take_back();
        assert_eq!(order(&d.kept), vec![one, two, three]);
    }

    #[test]
    fn a_replay_reopens_only_when_nothing_more_was_handed_back() {
        let p = Parked::default();
        p.refusing.store(true, Ordering::Release);
        let mut kept: VecDeque<Numbered> = VecDeque::new();
        p.back().0.push((5, release(5)));
        assert!(p.merge_or_reopen(&mut kept), "merged what came back");
        assert!(p.refusing(), "still refusing while writes are left");
        assert_eq!(order(&kept), vec![5]);
        kept.clear();
        assert!(!p.merge_or_reopen(&mut kept));
        assert!(!p.refusing(), "everything written: straight through again");
    }
}
