//! Every integration test, compiled into one binary (see STYLE.md).

mod suite;
mod support;
