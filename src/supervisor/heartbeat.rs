//! Telling a hung child from a busy one.
//!
//! Every `heartbeat.interval` the supervisor sends each running child a
//! [`ToChild::Ping`](crate::protocol::ToChild::Ping); the child answers from
//! its main loop, which keeps reading its stdin while a task runs. A child
//! that has not answered for `heartbeat.timeout` (stopped by SIGSTOP,
//! deadlocked, its event loop blocked) is hung: the supervisor kills its
//! process group, and the exit handling restarts it and re-queues its task
//! with the cause this module words.
//!
//! This module owns the ticker and the verdict. It never kills or writes
//! anything itself: the supervisor's event loop acts on the verdict.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Event;
use crate::config::HeartbeatSpec;

/// The ticker of one child: it asks the event loop for a heartbeat check
/// every interval, and stops when dropped (with the child's handle).
pub struct Ticker(JoinHandle<()>);

impl Ticker {
    pub fn start(agent: &str, generation: u64, interval: Duration, events: mpsc::UnboundedSender<Event>) -> Ticker {
        let agent = agent.to_owned();
        Ticker(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let ev = Event::Heartbeat {
                    agent: agent.clone(),
                    generation,
                };
                if events.send(ev).is_err() {
                    break;
                }
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the last answer says about the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answered recently enough: ping it again.
    Alive,
    /// Silent for longer than the timeout: the cause to record.
    Hung(String),
}

/// Judges a child whose last answer (or start) was at `last`.
pub fn verdict(spec: &HeartbeatSpec, last: Instant, now: Instant) -> Verdict {
    let silent = now.saturating_duration_since(last);
    if silent > spec.timeout {
        Verdict::Hung(format!(
            "agent process hung: no answer to the heartbeat for {} (timeout {}); killed",
            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64)),
            humantime::format_duration(spec.timeout)
        ))
    } else {
        Verdict::Alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_past_the_timeout_is_hung() {
        let spec = HeartbeatSpec {
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        assert_eq!(verdict(&spec, t0, t0 + Duration::from_millis(999)), Verdict::Alive);
        match verdict(&spec, t0, t0 + Duration::from_millis(1500)) {
            Verdict::Hung(why) => assert!(why.contains("no answer to the heartbeat for 1s 500ms"), "{why}"),
            v => panic!("{v:?}"),
        }
    }
}
