//! Configuration: the one place that turns YAML into runtime values.
//!
//! `load` reads the main file and every included file, interpolates `${VAR}`
//! references, decodes every field and reports *all* problems at once, each
//! with its file, line, column and field path (see [`crate::yaml`]). The
//! result is a fully resolved [`Config`]: system prompts read, sandbox
//! profiles looked up, defaults merged, cron expressions and URIs parsed.
//! Nothing downstream re-validates or re-reads a config file.
//!
//! One module per section, each with the keys it accepts beside the code
//! that reads them: [`load`](self::load) (entry points, files, error order),
//! `top` (top level, includes, agent names across files), `defaults`,
//! `agent`, `llm`, `server` (`mcp_servers`), `subscription`, `schedule`,
//! `sandbox` (inline policies and profiles), `supervision` (`restart`,
//! `heartbeat`) `limits` (`limits`, `bridge`) `operator` (`http`, `notify`, an
//! agent's `webhook`) and `fleet` (`ledger`, `ledger_password_file`, `fleet`). The decoder they share
//! is [`crate::yaml`].

mod agent;
mod approve;
mod budget;
mod defaults;
mod error;
pub mod fleet;
mod limits;
mod llm;
mod load;
mod operator;
mod sandbox;
mod schedule;
mod server;
mod subscription;
mod supervision;
mod top;
mod types;

pub use error::ConfigErrors;
pub use load::{load, load_with_env};
pub use operator::DEFAULT_LISTEN;
pub use sandbox::{load_sandbox_profile_str, resolve_sandbox_profile};
pub use subscription::parse_subscription_uri;
pub use types::*;
