//! When and how long to wait before trying a failed request again.
//!
//! Exponential backoff with jitter (backon), bounded by
//! `llm.max_retries`; a provider's `Retry-After` (seconds or HTTP date) or
//! `retry-after-ms` replaces the backoff delay, capped so a provider cannot
//! park an agent for an hour. Which errors are retryable is
//! [`LlmError::is_retryable`]. This module only computes delays: the loop
//! lives in the client, which owns the attempt.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::header::HeaderMap;

use super::LlmError;
use crate::config::LlmSpec;

/// The retry settings of one client.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `max_retries + 1` requests).
    pub max_retries: u32,
    /// The first backoff delay; later ones double, plus up to 100 % jitter.
    pub min_delay: Duration,
    /// The largest backoff delay (before jitter).
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; longer requests wait this long.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    pub fn from_spec(spec: &LlmSpec) -> RetryPolicy {
        RetryPolicy {
            max_retries: spec.max_retries,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }

    /// The backoff delays, one per allowed retry.
    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_retries as usize)
            .build()
    }

    /// The wait before the next attempt after `err`: what the provider
    /// asked for (capped) or else the backoff delay.
    pub(crate) fn delay_after(&self, err: &LlmError, backoff: Duration) -> Duration {
        match err {
            LlmError::Http {
                retry_after: Some(asked),
                ..
            } => (*asked).min(self.max_retry_after),
            _ => backoff,
        }
    }
}

/// The delay a response asks for: `retry-after-ms` (OpenAI, Azure) or
/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return secs_f64(ms / 1000.0);
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return secs_f64(secs);
    }
    // An HTTP date (RFC 9110 IMF-fixdate is RFC 2822 compatible); a date
    // in the past means "now".
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Non-negative, finite seconds; anything else is ignored.
fn secs_f64(secs: f64) -> Option<Duration> {
    if secs.is_finite() && secs >= 0.0 {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_seconds_ms_and_dates() {
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "1.5")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after-ms", "250"), ("retry-after", "9")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let d = parse_retry_after(&headers(&[("retry-after", &later)])).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "-3")])), None);
        assert_eq!(parse_retry_after(&headers(&[])), None);
    }

    #[test]
    fn retry_after_is_capped_and_backoff_is_bounded() {
        let policy = RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(60),
        };
        let err = LlmError::Http {
            status: 429,
            message: String::new(),
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            policy.delay_after(&err, Duration::from_millis(5)),
            Duration::from_secs(60)
        );
        let delays: Vec<Duration> = policy.backoff().collect();
        assert_eq!(delays.len(), 3);
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_millis(600))
        );
    }
}
