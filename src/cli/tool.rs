//! `agentd tool call NAME --json ARGS`: calls one of the agent's MCP tools
//! from inside its sandbox, through the tool bridge. The socket and the
//! task's token come from the sandbox's environment (`AGENTD_BRIDGE`,
//! `AGENTD_BRIDGE_TOKEN`); outside a sandbox there is nothing to call.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::agent::bridge::{self, client};

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The tool's name, as the model sees it (e.g. `get-sum`).
    pub name: String,
    /// The arguments: a JSON object.
    #[arg(long = "json", value_name = "ARGS", default_value = "{}")]
    pub json: String,
    /// Print the whole reply as JSON (text, is_error, structured content).
    #[arg(long)]
    pub raw: bool,
}

pub fn call(args: &CallArgs) -> anyhow::Result<ExitCode> {
    let (Some(socket), Some(token)) = (
        std::env::var_os(bridge::ENV_SOCKET),
        std::env::var(bridge::ENV_TOKEN).ok(),
    ) else {
        bail!(
            "{} and {} are not set: `agentd tool call` works inside an agent's sandbox (a code block the agent runs)",
            bridge::ENV_SOCKET,
            bridge::ENV_TOKEN
        );
    };
    let arguments = match serde_json::from_str::<Value>(&args.json).context("--json is not valid JSON")? {
        Value::Object(m) => m,
        other => bail!("--json must be a JSON object, not {other}"),
    };
    let reply = client::call(&PathBuf::from(socket), &token, &args.name, arguments)?;
    if args.raw {
        outln!("{}", serde_json::to_string(&reply)?);
    } else if let Some(text) = &reply.text {
        outln!("{text}");
    }
    if let Some(e) = &reply.error {
        eprintln!("agentd tool call: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if reply.is_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
