//! All integration tests link into this one binary (one link, parallel tests).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

mod suite;
mod support;
