//! The trigger rate limit of subscriptions (`min_interval`).
//!
//! A resource fires at once, then at most once per its subscription's
//! `min_interval`: updates inside the interval coalesce into one trigger at
//! its end, carrying the freshest contents, so the last change is never
//! lost and a chatty server costs at most one task per interval per
//! resource.
//!
//! This module owns the timing decisions only (pure: the caller passes the
//! clock); it never sends anything itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::mcp::ResourceEvent;

#[derive(Default)]
pub struct Throttle {
    /// `min_interval` by subscription (its URI as configured).
    intervals: HashMap<String, Duration>,
    /// When each resource last fired.
    last: HashMap<String, Instant>,
    /// Updates held back, the latest per resource.
    held: HashMap<String, ResourceEvent>,
    /// How many updates were folded into held ones (for the log).
    pub coalesced: u64,
}

impl Throttle {
    pub fn new(intervals: impl IntoIterator<Item = (String, Duration)>) -> Throttle {
        Throttle {
            intervals: intervals.into_iter().collect(),
            ..Throttle::default()
        }
    }

    fn interval(&self, ev: &ResourceEvent) -> Duration {
        self.intervals.get(&ev.subscription).copied().unwrap_or_default()
    }

    /// An update arrived: the event to fire now, if any.
    pub fn offer(&mut self, ev: ResourceEvent, now: Instant) -> Option<ResourceEvent> {
        let due = self
            .last
            .get(&ev.uri)
            .is_none_or(|t| now.saturating_duration_since(*t) >= self.interval(&ev));
        if due && !self.held.contains_key(&ev.uri) {
            self.last.insert(ev.uri.clone(), now);
            return Some(ev);
        }
        if self.held.insert(ev.uri.clone(), ev).is_some() {
            self.coalesced += 1;
        }
        None
    }

    /// When the next held update is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held
            .values()
            .filter_map(|ev| self.last.get(&ev.uri).map(|t| *t + self.interval(ev)))
            .min()
    }

    /// Held updates whose interval has ended, to fire now.
    pub fn take_due(&mut self, now: Instant) -> Vec<ResourceEvent> {
        let due: Vec<String> = self
            .held
            .values()
            .filter(|ev| self.last.get(&ev.uri).is_none_or(|t| *t + self.interval(ev) <= now))
            .map(|ev| ev.uri.clone())
            .collect();
        let mut out = Vec::new();
        for uri in due {
            if let Some(ev) = self.held.remove(&uri) {
                self.last.insert(uri, now);
                out.push(ev);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(uri: &str, contents: &str) -> ResourceEvent {
        ResourceEvent {
            uri: uri.into(),
            server: "s".into(),
            subscription: "sub".into(),
            contents: contents.into(),
        }
    }

    #[test]
    fn a_flood_fires_once_now_and_once_at_the_end_with_the_last_contents() {
        let mut t = Throttle::new([("sub".to_owned(), Duration::from_secs(10))]);
        let t0 = Instant::now();
        assert!(t.offer(ev("a", "0"), t0).is_some());
        for i in 1..100_000 {
            assert!(
                t.offer(ev("a", &i.to_string()), t0 + Duration::from_micros(i))
                    .is_none()
            );
        }
        // Another resource is not held back by the first.
        assert!(t.offer(ev("b", "x"), t0).is_some());
        assert_eq!(t.next_due(), Some(t0 + Duration::from_secs(10)));
        assert!(t.take_due(t0 + Duration::from_secs(9)).is_empty());
        let fired = t.take_due(t0 + Duration::from_secs(10));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].contents, "99999");
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn zero_interval_passes_everything() {
        let mut t = Throttle::new([("sub".to_owned(), Duration::ZERO)]);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(t.offer(ev("a", &i.to_string()), t0).is_some());
        }
    }
}
