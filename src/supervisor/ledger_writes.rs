//! Writing to the ledger when it may refuse (a full disk): what cannot be
//! written is kept in order and retried, and agentd says it is degraded
//! (see [`super::degraded`] for the bookkeeping). What is written is
//! announced on the event feed ([`super::announce`]) once the ledger has
//! it, so a watcher never hears of a step that a reader cannot find.
//! Writes kept while degraded are written later without being announced:
//! a watcher sees them by re-reading the task.

use std::time::Duration;

use super::degraded::Deferred;
use super::{Supervisor, degraded};
use crate::ledger::LedgerError;

impl Supervisor {
    /// Writes what must not be lost, or keeps it in memory while the ledger
    /// cannot take writes (and behind writes already kept, so their order
    /// holds). See [`degraded`].
    pub(super) async fn write_or_keep(&mut self, agent: &str, d: Deferred) {
        if !self.degraded.kept.is_empty() {
            self.degraded.keep(d);
            return;
        }
        // `run`, not `call`: the write comes back with its outcome, so a
        // refused one can be kept.
        let Ok((back, r)) = self
            .ledger
            .run(move |l| {
                let r = d.apply(l);
                (d, r)
            })
            .await
        else {
            return;
        };
        match r {
            Ok(made) => self.announce_written(agent, &back, made),
            Err(e) if e.is_unwritable() => {
                self.enter_degraded(&e);
                self.degraded.keep(back);
            }
            Err(e) => tracing::warn!(agent, "ledger write rejected: {e}"),
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

    /// While degraded: replays the kept writes in order, then proves the
    /// ledger takes writes; on success agentd is whole again.
    pub(super) async fn retry_kept(&mut self) {
        let kept = std::mem::take(&mut self.degraded.kept);
        let r = self
            .ledger
            .run(move |l| {
                let mut kept = kept;
                let mut dropped = Vec::new();
                while let Some(d) = kept.front() {
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
