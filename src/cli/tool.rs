//! `agentd tool call NAME --json ARGS`: calls one of the agent's MCP tools
//! from inside its sandbox, through the tool bridge. The bridge's dialer
//! descriptor and the task's token come from the sandbox's environment
//! (`AGENTD_BRIDGE_FD`, `AGENTD_BRIDGE_TOKEN`); outside a sandbox there is
//! nothing to call.

use std::os::fd::BorrowedFd;
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
    let (Some(fd), Some(token)) = (
        std::env::var(bridge::ENV_FD).ok(),
        std::env::var(bridge::ENV_TOKEN).ok(),
    ) else {
        bail!(
            "{} and {} are not set: `agentd tool call` works inside an agent's sandbox (a code block the agent runs)",
            bridge::ENV_FD,
            bridge::ENV_TOKEN
        );
    };
    let fd: i32 = fd
        .parse()
        .with_context(|| format!("{} is not a descriptor number: {fd:?}", bridge::ENV_FD))?;
    // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("{} names descriptor {fd}, which is not open here", bridge::ENV_FD);
    }
    // SAFETY: checked open above; borrowed for this call only, never closed.
    let dialer = unsafe { BorrowedFd::borrow_raw(fd) };
    let arguments = match serde_json::from_str::<Value>(&args.json).context("--json is not valid JSON")? {
        Value::Object(m) => m,
        other => bail!("--json must be a JSON object, not {other}"),
    };
    let reply = client::call(dialer, &token, &args.name, arguments)?;
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
