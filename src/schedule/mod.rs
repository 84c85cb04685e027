//! Cron schedules: when each schedule fires next, and what to do about the
//! runs missed while agentd was down.
//!
//! This module is pure arithmetic on times. Every function takes the clock
//! as an argument, so the rules are unit-tested with fixed clocks. It never
//! sleeps, never reads the ledger and never enqueues anything: the
//! supervisor owns the timer, asks here *when* and *what*, and records the
//! resulting task itself.
//!
//! The rules:
//! - Cron expressions are evaluated in the schedule's timezone (default
//!   UTC), so `0 9 * * *` in `Europe/Berlin` is 09:00 Berlin time in winter
//!   and in summer alike.
//! - A schedule fires once per wake-up even if the timer woke late and
//!   several occurrences passed: the task names the latest one.
//! - After downtime, the missed occurrences since the last recorded run
//!   become exactly one catch-up task, never a flood.
//! - Each schedule has a stable dedupe key, so a schedule task that is
//!   still queued (agent busy or paused) absorbs the next firing instead of
//!   queueing a second one.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::config::ScheduleSpec;
use crate::domain::Trigger;

/// At most this many missed occurrences are counted for the log line; an
/// every-second schedule down for a week would otherwise count for a while.
const MISSED_COUNT_CAP: usize = 1000;

/// One schedule of one agent, parsed and ready to answer questions.
#[derive(Debug, Clone)]
pub struct Schedule {
    spec: ScheduleSpec,
    cron: cron::Schedule,
    tz: Tz,
    key: String,
}

/// Occurrences that passed without a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The newest missed occurrence: the one the catch-up task is for.
    pub latest: DateTime<Utc>,
    /// How many were missed, capped at 1000 (then "1000 or more").
    pub count: usize,
}

impl Schedule {
    pub fn new(spec: &ScheduleSpec) -> Result<Schedule, String> {
        let cron = spec.schedule()?;
        let tz = spec.tz()?;
        Ok(Schedule {
            key: dedupe_key(spec),
            spec: spec.clone(),
            cron,
            tz,
        })
    }

    pub fn spec(&self) -> &ScheduleSpec {
        &self.spec
    }

    /// Same for the same cron, timezone and prompt, across restarts.
    pub fn dedupe_key(&self) -> &str {
        &self.key
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The newest occurrence at or before `now`.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The cron crate walks backwards from a point, exclusive; occurrences
        // fall on whole seconds, so a millisecond later includes `now`.
        let from = (now + TimeDelta::milliseconds(1)).with_timezone(&self.tz);
        self.cron.after(&from).next_back().map(|d| d.with_timezone(&Utc))
    }

    /// Occurrences in `(last_run, now]`: what a catch-up task stands for.
    /// `None` when nothing was missed, or when there is no previous run to
    /// measure from (a new schedule starts fresh instead of inventing one).
    pub fn missed(&self, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Missed> {
        let last_run = last_run?;
        let latest = self.latest_at_or_before(now)?;
        if latest <= last_run {
            return None;
        }
        let count = self
            .cron
            .after(&last_run.with_timezone(&self.tz))
            .take_while(|d| d.with_timezone(&Utc) <= now)
            .take(MISSED_COUNT_CAP)
            .count();
        Some(Missed { latest, count })
    }

    /// The occurrence a timer wake-up at `now` fires for, given the one it
    /// was armed for: the newest that has passed (a late wake-up fires
    /// once), or `None` if it woke early.
    pub fn due(&self, armed_for: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if now < armed_for {
            return None;
        }
        Some(self.latest_at_or_before(now).unwrap_or(armed_for).max(armed_for))
    }

    /// `t` as written into tasks and status: RFC 3339 in the schedule's
    /// timezone, so a person reads the local time it was meant for.
    pub fn format(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// The trigger for the occurrence at `at`.
    pub fn trigger(&self, at: DateTime<Utc>) -> Trigger {
        Trigger::Schedule {
            cron: self.spec.cron.clone(),
            prompt: self.spec.prompt.clone(),
            scheduled_for: self.format(at),
        }
    }
}

/// Reads `scheduled_for` back from a task (any offset).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&Utc))
}

/// `schedule:CRON@TZ#HASH`: readable in `agentd tasks`, and the prompt's
/// hash keeps two schedules with the same cron apart.
fn dedupe_key(spec: &ScheduleSpec) -> String {
    format!(
        "schedule:{}@{}#{:016x}",
        spec.cron,
        spec.timezone,
        fnv1a(spec.prompt.as_bytes())
    )
}

/// FNV-1a: tiny and stable across Rust versions and builds, unlike
/// `DefaultHasher`, so keys written by one agentd match the next one's.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn sched(cron: &str, tz: &str) -> Schedule {
        Schedule::new(&ScheduleSpec {
            cron: cron.into(),
            prompt: "do it".into(),
            timezone: tz.into(),
        })
        .unwrap()
    }

    #[test]
    fn five_field_cron_fires_at_the_next_minute_boundary() {
        let s = sched("*/5 * * * *", "UTC");
        assert_eq!(
            s.next_after(at("2026-11-21T10:02:30Z")),
            Some(at("2026-11-21T10:05:00Z"))
        );
        // Strictly after: an occurrence is not its own successor.
        assert_eq!(
            s.next_after(at("2026-11-21T10:05:00Z")),
            Some(at("2026-11-21T10:10:00Z"))
        );
    }

    #[test]
    fn six_field_cron_has_seconds() {
        let s = sched("* * * * * *", "UTC");
        assert_eq!(
            s.next_after(at("2026-11-21T10:00:00.400Z")),
            Some(at("2026-11-21T10:00:01Z"))
        );
        let s = sched("*/10 * * * * * *", "UTC");
        assert_eq!(
            s.next_after(at("2026-11-21T10:00:01Z")),
            Some(at("2026-11-21T10:00:10Z"))
        );
    }

    #[test]
    fn timezone_moves_the_utc_instant_and_follows_daylight_saving() {
        let s = sched("0 9 * * *", "Europe/Berlin");
        // Winter: CET is UTC+1.
        assert_eq!(
            s.next_after(at("2026-11-21T00:00:00Z")),
            Some(at("2026-11-21T08:00:00Z"))
        );
        // Summer: CEST is UTC+2; same wall-clock time.
        assert_eq!(
            s.next_after(at("2026-07-01T00:00:00Z")),
            Some(at("2026-07-01T07:00:00Z"))
        );
        assert_eq!(s.format(at("2026-11-21T08:00:00Z")), "2026-11-21T09:00:00+01:00");
    }

    #[test]
    fn missed_runs_after_downtime_coalesce_into_the_latest_one() {
        let s = sched("0 * * * *", "UTC");
        let m = s
            .missed(Some(at("2026-11-20T00:00:00Z")), at("2026-11-21T12:30:00Z"))
            .unwrap();
        assert_eq!(m.latest, at("2026-11-21T12:00:00Z"));
        assert_eq!(m.count, 36);
    }

    #[test]
    fn nothing_is_missed_when_the_last_run_is_the_latest_occurrence() {
        let s = sched("0 * * * *", "UTC");
        assert_eq!(
            s.missed(Some(at("2026-11-21T12:00:00Z")), at("2026-11-21T12:59:59Z")),
            None
        );
        // An occurrence exactly at `now` counts as passed.
        assert_eq!(
            s.missed(Some(at("2026-11-21T12:00:00Z")), at("2026-11-21T13:00:00Z"))
                .map(|m| (m.latest, m.count)),
            Some((at("2026-11-21T13:00:00Z"), 1))
        );
    }

    #[test]
    fn a_schedule_without_a_previous_run_does_not_catch_up() {
        let s = sched("0 * * * *", "UTC");
        assert_eq!(s.missed(None, at("2026-11-21T12:30:00Z")), None);
    }

    #[test]
    fn counting_missed_runs_is_bounded() {
        let s = sched("* * * * * *", "UTC");
        let m = s
            .missed(Some(at("2020-01-01T00:00:00Z")), at("2026-11-21T12:30:00Z"))
            .unwrap();
        assert_eq!(m.count, MISSED_COUNT_CAP);
        assert_eq!(m.latest, at("2026-11-21T12:30:00Z"));
    }

    #[test]
    fn a_late_wake_up_fires_once_for_the_newest_passed_occurrence() {
        let s = sched("* * * * * *", "UTC");
        let armed = at("2026-11-21T10:00:01Z");
        assert_eq!(s.due(armed, at("2026-11-21T10:00:00.990Z")), None, "woke early");
        assert_eq!(s.due(armed, at("2026-11-21T10:00:01.003Z")), Some(armed));
        assert_eq!(
            s.due(armed, at("2026-11-21T10:00:04.500Z")),
            Some(at("2026-11-21T10:00:04Z"))
        );
    }

    #[test]
    fn dedupe_keys_are_stable_and_tell_prompts_apart() {
        let a = sched("*/5 * * * *", "UTC");
        let mut spec = a.spec().clone();
        assert_eq!(Schedule::new(&spec).unwrap().dedupe_key(), a.dedupe_key());
        spec.prompt = "something else".into();
        assert_ne!(Schedule::new(&spec).unwrap().dedupe_key(), a.dedupe_key());
        assert!(a.dedupe_key().starts_with("schedule:*/5 * * * *@UTC#"));
        // FNV-1a of "a" per the reference vectors: stable across builds.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn trigger_carries_the_local_due_time() {
        let s = sched("0 9 * * *", "Europe/Berlin");
        match s.trigger(at("2026-11-21T08:00:00Z")) {
            Trigger::Schedule {
                cron,
                prompt,
                scheduled_for,
            } => {
                assert_eq!(cron, "0 9 * * *");
                assert_eq!(prompt, "do it");
                assert_eq!(parse_time(&scheduled_for), Some(at("2026-11-21T08:00:00Z")));
            }
            other => panic!("{other:?}"),
        }
    }
}
