//! The one error type of the LLM layer.
//!
//! Messages are written for the person reading a failed task: they name
//! the environment variable, the cassette, the HTTP status and what the
//! provider said. They never contain the API key: the client only ever
//! puts the key into a request header, and scrubs it from any provider text
//! before that text becomes an error.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the API key variable {var} (llm.api_key_env) is not set in agentd's environment")]
    MissingApiKey { var: String },

    #[error("the API key variable {var} (llm.api_key_env) {reason}")]
    InvalidApiKey { var: String, reason: &'static str },

    #[error("invalid LLM settings: {0}")]
    Config(String),

    /// The provider answered with an error status.
    #[error("the provider answered HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        /// What `Retry-After` (or `retry-after-ms`) asked for, uncapped.
        retry_after: Option<Duration>,
    },

    #[error("no answer from the provider within {} (llm.request_timeout)", humantime::format_duration(*.after))]
    Timeout { after: Duration },

    #[error("could not talk to the provider: {0}")]
    Connection(String),

    /// A success status with a body that is not a completion.
    #[error("malformed response from the provider: {0}")]
    Malformed(String),

    /// The stream failed after it started.
    #[error("the response stream failed: {message}")]
    Stream {
        message: String,
        /// Whether text had already reached `on_text`: retrying would
        /// show it twice, so such a failure is final.
        text_delivered: bool,
    },

    /// The stream ended without a `finish_reason` (nor usage after it):
    /// the connection closed mid-answer. The partial answer is worthless
    /// as a result, so this is retried even when some text was shown.
    #[error(
        "the response stream broke off before the model finished ({received} bytes of answer received, no finish_reason)"
    )]
    BrokenOff { received: usize },

    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: Box<LlmError> },

    #[error(
        "cassette {} ran out: it has {len} recorded replies and the agent asked for reply {}",
        path.display(),
        len + 1
    )]
    ReplayExhausted { path: PathBuf, len: usize },

    #[error(
        "cassette {} does not match at reply {index}: the recording expects {expected}, but the request has {got}",
        path.display()
    )]
    ReplayMismatch {
        path: PathBuf,
        /// 1-based position of the exchange in the cassette.
        index: usize,
        expected: String,
        got: String,
    },

    #[error("cassette {}: {message}", path.display())]
    Cassette { path: PathBuf, message: String },

    #[error("recording to {}: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LlmError {
    /// Whether another attempt could succeed: rate limits, server errors,
    /// timeouts, connection failures, malformed bodies (a garbled answer
    /// from an overloaded server or proxy is usually transient), and a
    /// broken stream that has not shown any text yet.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Http { status, message, .. } => {
                // OpenAI sends 429 for an exhausted quota too; that one
                // does not get better by waiting.
                (*status == 429 && !message.contains("insufficient_quota")) || *status == 408 || *status >= 500
            }
            LlmError::Timeout { .. } | LlmError::Connection(_) | LlmError::Malformed(_) => true,
            LlmError::Stream { text_delivered, .. } => !text_delivered,
            LlmError::BrokenOff { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status, when the provider answered with an error status
    /// (looking through [`LlmError::RetriesExhausted`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::Http { status, .. } => Some(*status),
            LlmError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}
