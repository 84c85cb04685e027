//! Configuration: the one place that turns YAML into runtime values.
//!
//! `load` reads the main file and every included file, interpolates `${VAR}`
//! references, decodes every field and reports *all* problems at once, each
//! with its file, line, column and field path (see [`error`]). The result is
//! a fully resolved [`Config`]: system prompts read, sandbox profiles looked
//! up, defaults merged, cron expressions and URIs parsed. Nothing downstream
//! re-validates or re-reads a config file.
//!
//! The YAML layer is `marked-yaml`, not `serde_yaml`: serde_yaml stops at the
//! first error and its values carry no positions, and we promise every error
//! with its position.

pub(crate) mod decode;
pub mod error;
mod interp;
mod load;
mod types;
pub mod units;

pub use error::{ConfigError, ConfigErrors};
pub use load::{load, load_sandbox_profile_str, load_with_env, parse_subscription_uri, resolve_sandbox_profile};
pub use types::*;
