//! Rate limits for log lines that an outside party controls (an MCP
//! server's stderr, its stray stdout): a burst passes, then a steady few
//! lines per second; whatever is held back is counted, and the count is
//! logged with the next line that passes (and when the limiter is dropped),
//! so nothing disappears without a trace and a flood cannot fill the disk.
//!
//! This module owns the counting only: it never logs by itself except for
//! the final count on drop, and never decides what the lines say.

use std::time::Instant;

/// Lines let through at once before the rate applies.
pub const BURST: f64 = 50.0;
/// Lines per second after the burst.
pub const PER_SECOND: f64 = 10.0;

/// A token bucket over log lines.
pub struct LogLimit {
    what: &'static str,
    source: String,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl LogLimit {
    /// `what`: the kind of line ("stderr lines"); `source`: whose (a server name).
    pub fn new(what: &'static str, source: &str) -> LogLimit {
        LogLimit {
            what,
            source: source.to_owned(),
            tokens: BURST,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// Whether the next line may be logged: `Some(n)` with the number
    /// suppressed since the last one that passed, `None` to drop (counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// A note for a passing line: "" or " (N … suppressed before this one)".
    pub fn note(&self, suppressed: u64) -> String {
        if suppressed == 0 {
            String::new()
        } else {
            format!(" ({suppressed} more {} suppressed before this one)", self.what)
        }
    }
}

impl Drop for LogLimit {
    fn drop(&mut self) {
        if self.suppressed > 0 {
            tracing::warn!(
                source = %self.source,
                "{} {} suppressed at the end (rate limit {PER_SECOND}/s after a burst of {BURST})",
                self.suppressed,
                self.what
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_passes_the_burst_then_the_rate_and_counts_the_rest() {
        let mut l = LogLimit::new("lines", "s");
        let t0 = Instant::now();
        let passed = (0..100_000).filter(|_| l.allow(t0).is_some()).count();
        assert_eq!(passed, BURST as usize);
        // A second later, ten more pass, the first carrying the count.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(l.allow(later), Some(100_000 - BURST as u64));
        assert_eq!(l.allow(later), Some(0));
        std::mem::forget(l);
    }
}
