//! CLI clients of the control socket: status, start/stop/restart,
//! pause/resume, reload, send.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{Global, LedgerArgs, state_dir};
use crate::control::{self, AgentStatus, Request, Response, SendResult, client};

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
pub struct SendArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The agent's name.
    pub agent: String,
    /// The message.
    pub text: String,
    /// Wait for the task to finish and print the reply (exit 1 if it failed).
    #[arg(long)]
    pub wait: bool,
    /// Print the JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --wait: give up waiting after this long (the task runs on).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::yaml::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The task's id (`agentd tasks` lists them).
    pub task: crate::domain::TaskId,
    /// Why: kept in the task's journal with who cancelled it.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The approval's id (`agentd approvals` lists them).
    pub id: i64,
    /// A note, kept in the task's journal.
    #[arg(long)]
    pub note: Option<String>,
    /// How long an egress approval holds: once (this connection), task
    /// (the rest of the task), always (every later task, until revoked).
    #[arg(long, default_value = "once", value_parser = ["once", "task", "always"])]
    pub remember: String,
}

#[derive(Debug, Args)]
pub struct GrantsArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Only this agent's.
    #[arg(long)]
    pub agent: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The grant's approval id (`agentd grants` lists them).
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The approval's id (`agentd approvals` lists them).
    pub id: i64,
    /// Why: the model reads it as the tool's error; kept in the journal.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
}

fn socket(global: &Global, args: &LedgerArgs) -> anyhow::Result<PathBuf> {
    Ok(crate::state_dir::socket(&state_dir(global, args)?))
}

fn call(global: &Global, args: &LedgerArgs, req: &Request, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let resp: Response = client::request(&socket(global, args)?, req, timeout)?;
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()))
    }
}

/// `agentd metrics`: the running agentd's metrics on stdout, as `GET
/// /metrics` serves them (for hosts without the HTTP listener).
pub fn metrics(global: &Global, args: &MetricsArgs) -> anyhow::Result<ExitCode> {
    let v = call(global, &args.ledger, &Request::Metrics, Duration::from_secs(10))?;
    let Some(text) = v["text"].as_str() else {
        anyhow::bail!("agentd answered Metrics without a text: {v}");
    };
    use std::io::Write;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(global: &Global, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let v = call(global, &args.ledger, &Request::Status, Duration::from_secs(10))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let agents: Vec<AgentStatus> = serde_json::from_value(v["agents"].clone())?;
    if let Some(cause) = v["degraded"].as_str() {
        outln!("agentd: DEGRADED: {cause}");
    }
    if let Ok(members) = serde_json::from_value::<Vec<crate::ledger::Member>>(v["fleet"]["members"].clone()) {
        let me = v["fleet"]["host"].as_str().unwrap_or_default();
        outln!("{}", crate::control::fleet_line(me, &members));
    }
    for line in control::status_lines(&agents) {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn agent_request(global: &Global, args: &AgentArgs, verb: Verb) -> anyhow::Result<ExitCode> {
    let agent = args.agent.clone();
    let req = match verb {
        Verb::Start => Request::Start { agent },
        Verb::Stop => Request::Stop { agent },
        Verb::Restart => Request::Restart { agent },
        Verb::Pause => Request::Pause { agent },
        Verb::Resume => Request::Resume { agent },
    };
    let v = call(global, &args.ledger, &req, Duration::from_secs(30))?;
    let a: AgentStatus = serde_json::from_value(v)?;
    let pid = a.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let paused = if a.paused { ", paused" } else { "" };
    outln!("{}: {}{paused}{pid}", a.name, a.state);
    Ok(ExitCode::SUCCESS)
}

pub fn send(global: &Global, args: &SendArgs) -> anyhow::Result<ExitCode> {
    let req = Request::Send {
        agent: args.agent.clone(),
        text: args.text.clone(),
        wait: args.wait,
    };
    let timeout = if args.wait {
        args.timeout
    } else {
        Duration::from_secs(30)
    };
    let v = call(global, &args.ledger, &req, timeout).map_err(|e| match e.downcast_ref::<client::ClientError>() {
        Some(client::ClientError::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock || io.kind() == std::io::ErrorKind::TimedOut =>
        {
            anyhow::anyhow!(
                "no reply within {}; the task keeps running (agentd tasks shows it)",
                humantime::format_duration(timeout)
            )
        }
        _ => e,
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    }
    let r: SendResult = serde_json::from_value(v)?;
    // `--wait` with no reply: the agent is paused and agentd did not wait.
    let unanswered = args.wait && r.state == "queued";
    if args.json {
        return Ok(if r.state == "failed" || r.state == "cancelled" || unanswered {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    match r.state.as_str() {
        "queued" if unanswered => {
            eprintln!(
                "task {} queued for {}, not waiting: the agent is paused (agentd resume {} runs it)",
                r.task, r.agent, r.agent
            );
            Ok(ExitCode::FAILURE)
        }
        "queued" => {
            let paused = if r.paused {
                " (the agent is paused: it runs on resume)"
            } else {
                ""
            };
            outln!("task {} queued for {}{paused}", r.task, r.agent);
            Ok(ExitCode::SUCCESS)
        }
        "succeeded" => {
            outln!("{}", r.result.unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        state => {
            eprintln!(
                "task {} {state}: {}",
                r.task,
                r.error.unwrap_or_else(|| "no reason given".into())
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn cancel(global: &Global, args: &CancelArgs) -> anyhow::Result<ExitCode> {
    let req = Request::Cancel {
        task: args.task,
        reason: args.reason.clone(),
        caller: None,
    };
    let v = call(global, &args.ledger, &req, Duration::from_secs(30))?;
    outln!(
        "task {} of {} cancelled (it was {})",
        args.task,
        v["agent"].as_str().unwrap_or("?"),
        v["was"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn approvals(global: &Global, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let v = call(global, &args.ledger, &Request::Approvals, Duration::from_secs(10))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&v["approvals"])?);
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<crate::ledger::Approval> = serde_json::from_value(v["approvals"].clone())?;
    for line in control::approval_lines(&list) {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn grants(global: &Global, args: &GrantsArgs) -> anyhow::Result<ExitCode> {
    let req = Request::Grants {
        agent: args.agent.clone(),
    };
    let v = call(global, &args.ledger, &req, Duration::from_secs(10))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&v["grants"])?);
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<crate::ledger::Approval> = serde_json::from_value(v["grants"].clone())?;
    for line in control::grant_lines(&list) {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(global: &Global, args: &RevokeArgs) -> anyhow::Result<ExitCode> {
    let req = Request::Revoke {
        id: args.id,
        caller: None,
    };
    let v = call(global, &args.ledger, &req, Duration::from_secs(10))?;
    let a: crate::ledger::Approval = serde_json::from_value(v)?;
    outln!(
        "grant {} revoked: {} of {} asks again",
        a.id,
        a.subject.summary(),
        a.agent
    );
    Ok(ExitCode::SUCCESS)
}

pub fn answer(
    global: &Global,
    ledger: &LedgerArgs,
    id: i64,
    approve: Option<crate::domain::Remember>,
    note: Option<String>,
) -> anyhow::Result<ExitCode> {
    let req = if let Some(remember) = approve {
        Request::Approve {
            id,
            note,
            remember,
            caller: None,
        }
    } else {
        Request::Deny {
            id,
            reason: note,
            caller: None,
        }
    };
    let v = call(global, ledger, &req, Duration::from_secs(30))?;
    outln!(
        "approval {id} {} (task {} of {})",
        v["state"].as_str().unwrap_or("?"),
        v["task"],
        v["agent"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn reload(global: &Global, args: &ReloadArgs) -> anyhow::Result<ExitCode> {
    let v = call(global, &args.ledger, &Request::Reload, Duration::from_secs(30))?;
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    outln!(
        "reloaded: added [{}], removed [{}], restarted [{}], unchanged [{}]",
        list("added"),
        list("removed"),
        list("restarted"),
        list("unchanged")
    );
    Ok(ExitCode::SUCCESS)
}
