//! agentd: a supervisor for long-running, reactive LLM agents.
//!
//! See README.md for the user's view and the ARCHITECTURE section there for
//! the map of modules and their invariants.
//!
//! `pub` marks what is used from outside the crate: the binary's entry
//! (`cli`, `sandbox::helper`), and the parts the integration tests and
//! benches drive directly (the ledger, the domain types, config loading,
//! the sandbox, the fence parser, MCP, the LLM client, the control
//! protocol). The supervisor, the REPL, schedules and the state dir's
//! layout are reached only through the `agentd` command.

pub mod agent;
mod beneath;
pub mod budget;
pub mod cli;
pub mod config;
pub mod control;
pub mod domain;
pub mod feed;
pub mod fence;
pub mod http;
pub mod ledger;
pub mod llm;
mod log_limit;
mod logging;
pub mod mcp;
pub mod metrics;
mod nofile;
pub mod notify;
pub mod placement;
pub mod protocol;
mod repl;
pub mod sandbox;
mod schedule;
pub mod skills;
pub mod snapshots;
mod state_dir;
mod supervisor;
pub mod telemetry;
mod yaml;
pub mod zygote;
