//! Restart policy: whether and when an exited agent starts again.
//!
//! systemd/OTP style: `always | on-failure | never`, exponential backoff with
//! jitter between `backoff_min` and `backoff_max`, and a start limit (at most
//! `burst` starts within `interval`) past which the agent is failed and left
//! down until its config changes or someone starts it by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::config::{RestartPolicy, RestartSpec};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn from_status(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Restart(Duration),
    /// Stays down by policy (e.g. a clean exit under on-failure).
    Stop,
    /// The start limit was hit: the agent is failed.
    Fail(String),
}

pub struct Restarts {
    spec: RestartSpec,
    starts: VecDeque<Instant>,
    backoff: ExponentialBackoff,
}

impl Restarts {
    pub fn new(spec: RestartSpec) -> Restarts {
        let backoff = builder(&spec).build();
        Restarts {
            spec,
            starts: VecDeque::new(),
            backoff,
        }
    }

    /// Records a start at `now`.
    pub fn started(&mut self, now: Instant) {
        self.starts.push_back(now);
        while self.starts.len() > self.spec.burst as usize + 1 {
            self.starts.pop_front();
        }
    }

    /// A child that stayed up for `interval` has recovered: forget its
    /// backoff so the next crash restarts quickly again.
    pub fn ran_for(&mut self, uptime: Duration) {
        if uptime >= self.spec.interval {
            self.backoff = builder(&self.spec).build();
        }
    }

    /// Starts by hand reset the limit, like `systemctl reset-failed`.
    pub fn reset(&mut self) {
        self.starts.clear();
        self.backoff = builder(&self.spec).build();
    }

    pub fn decide(&mut self, exit: Exit, now: Instant) -> Decision {
        let wanted = match self.spec.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        };
        if !wanted {
            return Decision::Stop;
        }
        let window = self.spec.interval;
        let recent = self.starts.iter().filter(|t| now.duration_since(**t) < window).count();
        if recent >= self.spec.burst as usize {
            return Decision::Fail(format!(
                "start limit hit: {recent} starts within {}; last exit: {exit}",
                humantime::format_duration(window)
            ));
        }
        Decision::Restart(self.backoff.next().unwrap_or(self.spec.backoff_max))
    }
}

fn builder(spec: &RestartSpec) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(spec.backoff_min)
        .with_max_delay(spec.backoff_max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: RestartPolicy) -> RestartSpec {
        RestartSpec {
            policy,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            burst: 3,
            interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn policies_decide_by_exit() {
        let now = Instant::now();
        let mut never = Restarts::new(spec(RestartPolicy::Never));
        assert_eq!(never.decide(Exit::Signal(9), now), Decision::Stop);
        let mut on_failure = Restarts::new(spec(RestartPolicy::OnFailure));
        assert_eq!(on_failure.decide(Exit::Code(0), now), Decision::Stop);
        assert!(matches!(on_failure.decide(Exit::Code(3), now), Decision::Restart(_)));
        let mut always = Restarts::new(spec(RestartPolicy::Always));
        assert!(matches!(always.decide(Exit::Code(0), now), Decision::Restart(_)));
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        let now = Instant::now();
        let mut r = Restarts::new(spec(RestartPolicy::Always));
        let delays: Vec<Duration> = (0..8)
            .map(|_| match r.decide(Exit::Signal(9), now) {
                Decision::Restart(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        // Jitter adds up to one more base delay; the cap still holds.
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(4)),
            "{delays:?}"
        );
        assert!(delays[4] > delays[0], "{delays:?}");
    }

    #[test]
    fn start_limit_fails_the_agent_and_expires_with_the_window() {
        let t0 = Instant::now();
        let mut r = Restarts::new(spec(RestartPolicy::Always));
        for i in 0..3 {
            r.started(t0 + Duration::from_millis(i));
        }
        let d = r.decide(Exit::Signal(9), t0 + Duration::from_millis(5));
        assert!(
            matches!(d, Decision::Fail(ref m) if m.contains("start limit hit: 3 starts within 10s")),
            "{d:?}"
        );
        assert!(matches!(
            r.decide(Exit::Signal(9), t0 + Duration::from_secs(11)),
            Decision::Restart(_)
        ));
        r.reset();
        assert!(matches!(r.decide(Exit::Signal(9), t0), Decision::Restart(_)));
    }
}
