//! Shared test support: real peers, process helpers, bounded waits.

#![allow(dead_code)]

pub mod mcp;

/// Logs to the test's captured output; `RUST_LOG` picks the level.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}
