//! CLI clients of the control socket: status, start/stop/restart, reload.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{Global, LedgerArgs, state_dir};
use crate::control::{self, AgentStatus, Request, Response, client};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Print the raw JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The agent's name.
    pub agent: String,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

fn socket(global: &Global, args: &LedgerArgs) -> anyhow::Result<PathBuf> {
    Ok(state_dir(global, args)?.join(control::SOCKET_NAME))
}

fn call(global: &Global, args: &LedgerArgs, req: &Request, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let resp: Response = client::request(&socket(global, args)?, req, timeout)?;
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()))
    }
}

pub fn status(global: &Global, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let v = call(global, &args.ledger, &Request::Status, Duration::from_secs(10))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let agents: Vec<AgentStatus> = serde_json::from_value(v["agents"].clone())?;
    println!(
        "{:<16} {:<9} {:>8} {:>8} {:>10} {:>6}  LAST",
        "AGENT", "STATE", "PID", "RESTARTS", "UPTIME", "QUEUED"
    );
    for a in agents {
        let pid = a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let up = a
            .uptime_s
            .map(|s| humantime::format_duration(Duration::from_secs(s as u64)).to_string())
            .unwrap_or_else(|| "-".into());
        let last = a.last_error.or(a.last_exit).unwrap_or_default();
        println!(
            "{:<16} {:<9} {:>8} {:>8} {:>10} {:>6}  {last}",
            a.name, a.state, pid, a.restarts, up, a.queued
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn agent_request(global: &Global, args: &AgentArgs, verb: Verb) -> anyhow::Result<ExitCode> {
    let agent = args.agent.clone();
    let req = match verb {
        Verb::Start => Request::Start { agent },
        Verb::Stop => Request::Stop { agent },
        Verb::Restart => Request::Restart { agent },
    };
    let v = call(global, &args.ledger, &req, Duration::from_secs(30))?;
    let a: AgentStatus = serde_json::from_value(v)?;
    let pid = a.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    println!("{}: {}{pid}", a.name, a.state);
    Ok(ExitCode::SUCCESS)
}

pub fn reload(global: &Global, args: &ReloadArgs) -> anyhow::Result<ExitCode> {
    let v = call(global, &args.ledger, &Request::Reload, Duration::from_secs(30))?;
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    println!(
        "reloaded: added [{}], removed [{}], restarted [{}], unchanged [{}]",
        list("added"),
        list("removed"),
        list("restarted"),
        list("unchanged")
    );
    Ok(ExitCode::SUCCESS)
}
