//! agentd: a supervisor for long-running, reactive LLM agents.
//!
//! See README.md for the user's view and the ARCHITECTURE section there for
//! the map of modules and their invariants.

pub mod agent;
pub mod beneath;
pub mod cli;
pub mod config;
pub mod control;
pub mod domain;
pub mod feed;
pub mod fence;
pub mod http;
pub mod ledger;
pub mod llm;
pub mod log_limit;
pub mod logging;
pub mod mcp;
pub mod notify;
pub mod protocol;
pub mod repl;
pub mod sandbox;
pub mod schedule;
pub mod skills;
pub mod snapshots;
pub mod state_dir;
pub mod supervisor;
pub mod yaml;
