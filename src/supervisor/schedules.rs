//! The supervisor's side of cron schedules: it owns the one timer (the
//! event loop sleeps until the earliest armed schedule), records each
//! firing as a queued task, and catches up once on runs missed while agentd
//! was down. When and what to fire is decided in [`crate::schedule`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Supervisor;
use crate::control::ScheduleStatus;
use crate::ledger::Enqueued;
use crate::schedule::{self, Schedule};

/// One schedule of one agent, with the occurrence its timer waits for.
pub(super) struct Armed {
    pub schedule: Schedule,
    /// `None` once the schedule has no future occurrence.
    pub next: Option<DateTime<Utc>>,
}

impl Supervisor {
    /// Arms `name`'s schedules from its spec. A schedule that was armed
    /// already (a reload that left it alone) keeps its timer; a new one
    /// first catches up on the runs it missed since the last one the ledger
    /// recorded, then waits for its next occurrence.
    pub(super) async fn arm_schedules(&mut self, name: &str) {
        let Some(a) = self.agents.get_mut(name) else { return };
        let specs = a.spec.schedules.clone();
        let mut old = std::mem::take(&mut a.schedules);
        let now = Utc::now();
        let mut armed = Vec::with_capacity(specs.len());
        for spec in specs {
            let schedule = match Schedule::new(&spec) {
                Ok(s) => s,
                // Validated when the config was loaded; say so if not.
                Err(e) => {
                    tracing::error!(agent = name, "schedule {:?} is unusable and stays off: {e}", spec.cron);
                    continue;
                }
            };
            if let Some(i) = old
                .iter()
                .position(|o| o.schedule.dedupe_key() == schedule.dedupe_key())
            {
                armed.push(old.swap_remove(i));
                continue;
            }
            self.catch_up(name, &schedule, now).await;
            armed.push(Armed {
                next: schedule.next_after(now),
                schedule,
            });
        }
        if let Some(a) = self.agents.get_mut(name) {
            a.schedules = armed;
        }
    }

    /// One task for all the occurrences missed since the last recorded run.
    async fn catch_up(&mut self, name: &str, schedule: &Schedule, now: DateTime<Utc>) {
        let (agent, cron, prompt) = (
            name.to_owned(),
            schedule.spec().cron.clone(),
            schedule.spec().prompt.clone(),
        );
        let last = match self
            .ledger
            .call(move |l| l.last_scheduled_for(&agent, &cron, &prompt))
            .await
        {
            Ok(last) => last.as_deref().and_then(schedule::parse_time),
            Err(crate::ledger::LedgerError::Closed) => return,
            Err(e) => {
                tracing::error!(agent = name, "cannot read the last run of a schedule; no catch-up: {e}");
                return;
            }
        };
        let Some(missed) = schedule.missed(last, now) else {
            return;
        };
        tracing::info!(
            agent = name,
            "schedule {:?} missed {}{} run(s) while agentd was down; one catch-up task for {}",
            schedule.spec().cron,
            missed.count,
            if missed.count >= 1000 { " or more" } else { "" },
            schedule.format(missed.latest)
        );
        self.enqueue_schedule(name, schedule, missed.latest).await;
    }

    async fn enqueue_schedule(&mut self, name: &str, schedule: &Schedule, at: DateTime<Utc>) {
        let trigger = schedule.trigger(at);
        let key = Some(schedule.dedupe_key().to_owned());
        if self.degraded.is_degraded() {
            // Kept with the other writes until the ledger takes them.
            let kept = super::Deferred::Trigger {
                agent: name.to_owned(),
                trigger,
                dedupe_key: key,
            };
            self.write_or_keep(name, kept).await;
            return;
        }
        match self.record_trigger(name, trigger.clone(), key.clone()).await {
            Ok(Enqueued::New(id)) => {
                tracing::debug!(agent = name, "schedule {:?} fired: task {id}", schedule.spec().cron)
            }
            Ok(Enqueued::Coalesced(id)) => tracing::debug!(
                agent = name,
                "schedule {:?} fired while task {id} was still queued; coalesced",
                schedule.spec().cron
            ),
            Err(_) if self.degraded.is_degraded() => {
                let kept = super::Deferred::Trigger {
                    agent: name.to_owned(),
                    trigger,
                    dedupe_key: key,
                };
                self.write_or_keep(name, kept).await;
            }
            Err(e) => tracing::error!(agent = name, "cannot record a scheduled run: {e}"),
        }
    }

    /// When the earliest armed schedule is due, for the event loop's timer.
    pub(super) fn next_schedule_at(&self) -> Option<tokio::time::Instant> {
        if self.stop_deadline.is_some() {
            return None;
        }
        let next = self
            .agents
            .values()
            .flat_map(|a| a.schedules.iter())
            .filter_map(|s| s.next)
            .min()?;
        // Schedules are wall-clock times; the timer is monotonic. A clock
        // step only makes a wake-up early (checked in `fire_schedules`) or
        // late (the late occurrence still fires, once).
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Some(tokio::time::Instant::now() + wait)
    }

    /// Fires every schedule that is due, then re-arms it after now.
    pub(super) async fn fire_schedules(&mut self) {
        let now = Utc::now();
        let mut due = Vec::new();
        for (name, a) in self.agents.iter_mut() {
            for s in a.schedules.iter_mut() {
                let Some(armed_for) = s.next else { continue };
                if let Some(at) = s.schedule.due(armed_for, now) {
                    due.push((name.clone(), s.schedule.clone(), at));
                    s.next = s.schedule.next_after(now);
                }
            }
        }
        for (name, schedule, at) in due {
            self.enqueue_schedule(&name, &schedule, at).await;
            self.dispatch(&name).await;
        }
    }

    pub(super) fn schedule_status(&self, name: &str) -> Vec<ScheduleStatus> {
        let Some(a) = self.agents.get(name) else {
            return Vec::new();
        };
        a.schedules
            .iter()
            .map(|s| ScheduleStatus {
                cron: s.schedule.spec().cron.clone(),
                timezone: s.schedule.spec().timezone.clone(),
                prompt: s.schedule.spec().prompt.clone(),
                next_run: s.next.map(|t| s.schedule.format(t)),
            })
            .collect()
    }
}
