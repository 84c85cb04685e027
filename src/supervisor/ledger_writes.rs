//! Writing to the ledger when it may refuse (a full disk): what cannot be
//! written is kept in order and retried, and agentd says it is degraded
//! (see [`super::degraded`] for the bookkeeping). What is written is
//! announced on the event feed ([`super::announce`]) once the ledger has
//! it, so a watcher never hears of a step that a reader cannot find.
//! Writes kept while degraded are written later without being announced:
//! a watcher sees them by re-reading the task.

use std::time::Duration;

use super::degraded::{Deferred, Wrote};
use super::{Supervisor, degraded};
use crate::domain::TaskId;
use crate::ledger::LedgerError;

impl Supervisor {
    /// Keeps write number `seq` (behind what the ledger thread handed back).
    pub(super) fn keep(&mut self, seq: u64, d: Deferred) {
        self.take_back();
        self.degraded.keep(seq, d);
    }

    /// The ledger thread handed writes back: keep them in their places and
    /// say agentd is degraded.
    pub(super) fn take_back(&mut self) {
        if let Some(e) = self.degraded.take_back() {
            self.enter_degraded(&e);
        }
    }

    /// Sends a journal step to the ledger without waiting: nothing the
    /// supervisor does next depends on it, and the ledger thread keeps the
    /// order (a refused step comes back through [`degraded::Parked`]). The
    /// ledger thread announces it on the feed once written, so the event
    /// follows the write and precedes the task's end.
    pub(super) fn journal(&mut self, agent: &str, d: Deferred) {
        let seq = self.degraded.number();
        if self.degraded.behind() {
            self.keep(seq, d);
            return;
        }
        let parked = self.degraded.parked.clone();
        let announce = match &d {
            Deferred::Step { task, step, .. } => Some((self.feed.clone(), agent.to_owned(), *task, step.clone())),
            _ => None,
        };
        self.ledger.submit(move |l| {
            if let (Wrote::Done(Some(n)), Some((feed, agent, task, step))) = (parked.write(l, seq, d), announce) {
                feed.publish("step", super::announce::step_event(&agent, task, n, &step));
            }
        });
    }

    /// Writes what must not be lost and waits for it, or keeps it in memory
    /// while the ledger cannot take writes (and behind writes already kept,
    /// so their order holds). See [`degraded`].
    pub(super) async fn write_or_keep(&mut self, agent: &str, d: Deferred) {
        let seq = self.degraded.number();
        if self.degraded.behind() {
            self.keep(seq, d);
            return;
        }
        // Kept for the feed, which hears of a trigger once it is a task.
        let trigger = match &d {
            Deferred::Trigger { trigger, .. } => Some(trigger.clone()),
            _ => None,
        };
        let parked = self.degraded.parked.clone();
        let Ok(wrote) = self.ledger.run(move |l| parked.write(l, seq, d)).await else {
            return;
        };
        match (wrote, trigger) {
            (Wrote::HandedBack, _) => self.take_back(),
            (Wrote::Done(Some(task)), Some(trigger)) => {
                tracing::debug!(agent, "trigger recorded");
                self.announce_queued(agent, TaskId(task), &trigger);
            }
            _ => {}
        }
    }

    pub(super) fn enter_degraded(&mut self, e: &LedgerError) {
        if self.degraded.enter(e) {
            tracing::error!(
                "agentd is degraded: the ledger cannot be written ({}); tasks' ends, journal steps and \
                 agents' triggers are kept in memory, new messages are refused, retrying every {}",
                e.short(),
                humantime::format_duration(degraded::RETRY)
            );
            self.update_status();
        }
    }

    /// While degraded: replays the kept writes in order (with any the
    /// ledger thread handed back meanwhile), then proves the ledger takes
    /// writes; on success agentd is whole again.
    pub(super) async fn retry_kept(&mut self) {
        self.take_back();
        let kept = std::mem::take(&mut self.degraded.kept);
        let parked = self.degraded.parked.clone();
        let r = self
            .ledger
            .run(move |l| {
                let mut kept = kept;
                let mut dropped = Vec::new();
                loop {
                    while let Some((_, d)) = kept.front() {
                        match d.apply(l) {
                            Ok(_) => {
                                kept.pop_front();
                            }
                            Err(e) if e.is_unwritable() => return (kept, dropped, Err(e)),
                            Err(e) => {
                                dropped.push(e.to_string());
                                kept.pop_front();
                            }
                        }
                    }
                    // Nothing else runs on this thread: once nothing more
                    // was handed back, writes may go straight through.
                    if !parked.merge_or_reopen(&mut kept) {
                        break;
                    }
                }
                let probe = l.probe_write();
                (kept, dropped, probe)
            })
            .await;
        let Ok((kept, dropped, outcome)) = r else { return };
        self.degraded.kept = kept;
        for e in dropped {
            tracing::warn!("a kept ledger write was rejected on replay: {e}");
        }
        if outcome.is_ok()
            && let Some(took) = self.degraded.recovered()
        {
            let lost = std::mem::take(&mut self.degraded.dropped_steps);
            let lost = if lost > 0 {
                format!(" ({lost} journal steps past the in-memory cap were dropped)")
            } else {
                String::new()
            };
            tracing::info!(
                "the ledger takes writes again after {}: agentd is no longer degraded{lost}",
                humantime::format_duration(Duration::from_secs(took.as_secs()))
            );
            self.update_status();
            let names: Vec<String> = self.agents.keys().cloned().collect();
            for name in names {
                self.dispatch(&name).await;
            }
        }
    }
}
