//! All integration tests link into this one binary (one link, parallel tests).

mod suite;
mod support;
