//! The command line: parsing (clap) and dispatch. Each subcommand's output
//! formatting lives in its own module; this one only wires them up.

#[macro_use]
mod out;
mod check;
mod control;
mod dashboard;
mod drain;
pub mod sandbox;
mod snapshot;
mod spend;
mod tasks;
mod tool;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "agentd",
    version,
    about = "A supervisor for long-running, reactive LLM agents",
    long_about = "agentd CONFIG runs the agents defined in CONFIG, each as a managed child process, \
                  and keeps them alive. The subcommands inspect and control a running agentd.",
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// State directory (ledger, sockets, workdirs); overrides the config's state_dir.
    #[arg(long, global = true, env = "AGENTD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The config file to run.
    #[arg(value_name = "CONFIG", required = true)]
    pub config: Option<PathBuf>,
    /// Record every model reply into DIR/AGENT.cassette.json, for `model: replay:PATH`.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Read REPL lines from stdin even when it is not a terminal (the
    /// default is a REPL only on a terminal).
    #[arg(long, conflicts_with = "no_repl")]
    pub repl: bool,
    /// No REPL, even on a terminal.
    #[arg(long)]
    pub no_repl: bool,
}

impl RunArgs {
    /// On with `--repl`, off with `--no-repl`, else on when stdin is a
    /// terminal (so never under systemd, whose stdin is /dev/null).
    pub fn repl_mode(&self) -> Option<crate::repl::Mode> {
        use std::io::IsTerminal;
        let terminal = std::io::stdin().is_terminal();
        if self.no_repl || !(self.repl || (terminal && !in_background())) {
            return None;
        }
        Some(if terminal {
            crate::repl::Mode::Terminal
        } else {
            crate::repl::Mode::Plain
        })
    }
}

/// Where a reader finds the ledger: `--config` or the global `--state-dir`.
#[derive(Debug, Args, Clone)]
pub struct LedgerArgs {
    /// Read the state dir from this config file.
    #[arg(long, value_name = "CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file and print a summary (exit 0 valid, 1 invalid).
    Check {
        #[arg(value_name = "CONFIG")]
        config: PathBuf,
    },
    /// List tasks from the ledger, newest first.
    Tasks(tasks::TasksArgs),
    /// Show one task with its journal of steps.
    Show(tasks::ShowArgs),
    /// Show each agent's state, pid, restarts, uptime and last error.
    Status(control::StatusArgs),
    /// Print the running agentd's Prometheus metrics (OpenMetrics text) to stdout.
    Metrics(control::MetricsArgs),
    /// Start a stopped or failed agent (clears its start limit).
    Start(control::AgentArgs),
    /// Stop an agent; it stays down until started again.
    Stop(control::AgentArgs),
    /// Restart an agent.
    Restart(control::AgentArgs),
    /// Re-read the config and apply the differences (like SIGHUP).
    Reload(control::ReloadArgs),
    /// Send a message to an agent (queued as a task); --wait prints the reply.
    Send(control::SendArgs),
    /// Pause an agent: its triggers queue up (coalesced) but do not run.
    Pause(control::AgentArgs),
    /// Resume a paused agent: what is queued runs.
    Resume(control::AgentArgs),
    /// Cancel a queued or running task: it ends `cancelled`, a running one
    /// at once (its model request, tool calls and code are dropped).
    Cancel(control::CancelArgs),
    /// Pending approval requests (tool calls and code waiting for an answer).
    Approvals(control::StatusArgs),
    /// Approve a waiting tool call or code block: it runs.
    Approve(control::ApproveArgs),
    /// Deny it: the model gets the reason as the tool's error.
    Deny(control::DenyArgs),
    /// Standing egress grants (hosts approved with --remember always).
    Grants(control::GrantsArgs),
    /// Revoke a standing egress grant: the host is asked about again.
    Revoke(control::RevokeArgs),
    /// Model spend per agent and model, from the ledger.
    Spend(spend::SpendArgs),
    /// Print a link that logs a browser into the dashboard (valid for minutes).
    Dashboard(dashboard::DashboardArgs),
    /// Move a fleet member's agents to the others (running tasks finish first).
    Drain(drain::DrainArgs),
    /// Conversation and workspace snapshots of an agent.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Try sandbox policies: run a command under a profile.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// A built-in stdio MCP server: DIR's files as file:// resources with
    /// subscriptions, plus list/read/write tools confined to DIR.
    McpWatch {
        /// The directory to serve.
        dir: PathBuf,
        /// Quiet time before a change is announced, in milliseconds.
        #[arg(long, value_name = "MS")]
        debounce_ms: Option<u64>,
    },
    /// Call the agent's MCP tools from code in its sandbox.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Internal: one agent's child process (started by the supervisor).
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ToolCommand {
    /// Call tool NAME through the tool bridge and print its text result
    /// (exit status 1 when the call fails or the tool reports an error).
    Call(tool::CallArgs),
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run CMD under PROFILE (a name from sandbox/ or a built-in one).
    Run(crate::cli::sandbox::SandboxRunArgs),
}

/// Parses the command line and runs it; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // clap: 0 for --help/--version, 2 for usage errors.
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    // An agent's process sets itself up as the zygote's children do.
    if let Some(Command::Agent { name }) = &cli.command {
        return ExitCode::from(agent_process(name, AgentLogging::SetUp).clamp(0, 255) as u8);
    }
    // rmcp narrates every message at info and logs transport hiccups (each
    // HTTP reconnect) as ERROR; agentd reports connection loss, retries and
    // recovery itself, so rmcp is off unless RUST_LOG asks for it.
    // Traces are exported by the supervisor and the agent processes only.
    let traced = cli.command.is_none();
    let (traces, trace_error) = match traced.then(crate::telemetry::from_env).transpose() {
        Ok(t) => (t.flatten(), None),
        Err(e) => (None, Some(e)),
    };
    let (_traces, layer) = match traces {
        Some((t, l)) => (Some(t), Some(l)),
        None => (None, None),
    };
    logging::init(cli.global.log_format, "info,rmcp=off", layer);
    if let Some(e) = trace_error {
        tracing::warn!("traces are not exported: {e}");
    }
    // A terminal REPL shares the screen with the logs. agentd's own go
    // through the REPL's printer; the agent processes write to the terminal
    // directly, so they keep to warnings unless RUST_LOG asks for more.
    let terminal_repl = cli.command.is_none() && cli.run.repl_mode() == Some(crate::repl::Mode::Terminal);
    if terminal_repl && std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: still single-threaded (no runtime yet); the children inherit it.
        unsafe { std::env::set_var("RUST_LOG", "warn,rmcp=off") };
    }
    let result = match cli.command {
        Some(Command::Check { config }) => check::run(&config),
        Some(Command::Tasks(args)) => tasks::list(&cli.global, &args),
        Some(Command::Show(args)) => tasks::show(&cli.global, &args),
        Some(Command::Status(args)) => control::status(&cli.global, &args),
        Some(Command::Metrics(args)) => control::metrics(&cli.global, &args),
        Some(Command::Start(args)) => control::agent_request(&cli.global, &args, control::Verb::Start),
        Some(Command::Stop(args)) => control::agent_request(&cli.global, &args, control::Verb::Stop),
        Some(Command::Restart(args)) => control::agent_request(&cli.global, &args, control::Verb::Restart),
        Some(Command::Reload(args)) => control::reload(&cli.global, &args),
        Some(Command::Send(args)) => control::send(&cli.global, &args),
        Some(Command::Pause(args)) => control::agent_request(&cli.global, &args, control::Verb::Pause),
        Some(Command::Resume(args)) => control::agent_request(&cli.global, &args, control::Verb::Resume),
        Some(Command::Cancel(args)) => control::cancel(&cli.global, &args),
        Some(Command::Spend(args)) => spend::run(&cli.global, &args),
        Some(Command::Approvals(args)) => control::approvals(&cli.global, &args),
        Some(Command::Grants(args)) => control::grants(&cli.global, &args),
        Some(Command::Revoke(args)) => control::revoke(&cli.global, &args),
        Some(Command::Approve(args)) => args
            .remember
            .parse()
            .map_err(anyhow::Error::msg)
            .and_then(|r| control::answer(&cli.global, &args.ledger, args.id, Some(r), args.note.clone())),
        Some(Command::Deny(args)) => control::answer(&cli.global, &args.ledger, args.id, None, args.reason.clone()),
        Some(Command::Agent { .. }) => Ok(ExitCode::SUCCESS), // handled above
        Some(Command::Snapshot(cmd)) => snapshot::run(&cli.global, &cmd),
        Some(Command::Dashboard(args)) => dashboard::run(&cli.global, &args),
        Some(Command::Drain(args)) => drain::run(&cli.global, &args),
        Some(Command::Sandbox(SandboxCommand::Run(args))) => {
            crate::cli::sandbox::run(&args).map(|code| ExitCode::from(code.clamp(0, 255) as u8))
        }
        Some(Command::Tool(ToolCommand::Call(args))) => tool::call(&args),
        Some(Command::McpWatch { dir, debounce_ms }) => mcp_watch(&dir, debounce_ms),
        None => match cli.run.config.clone() {
            Some(config) => run_daemon(&cli.global, &config, &cli.run),
            None => Err(anyhow::anyhow!("no config file given; usage: agentd CONFIG")),
        },
    };
    match result {
        Ok(code) => code,
        // The reader went away (`agentd show 7 | head`): nothing is wrong.
        Err(e) if out::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter of agent processes when `RUST_LOG` is unset.
pub(crate) const AGENT_LOG_FILTER: &str = "info,rmcp=off";

/// Whether an agent process still has to set its logging up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentLogging {
    SetUp,
    /// Forked from a zygote that set it up already (and shares its pages).
    Inherited,
}

/// One agent's process, as `agentd agent --name NAME` runs it: what the
/// zygote's children run too (see [`crate::zygote`]; their logging may be
/// set up already, by the zygote, the same way). Its exit status.
pub fn agent_process(name: &str, logging: AgentLogging) -> i32 {
    let (traces, layer, trace_error) = match crate::telemetry::from_env() {
        Ok(Some((t, l))) => (Some(t), Some(l), None),
        Ok(None) => (None, None, None),
        Err(e) => (None, None, Some(e)),
    };
    // A second set-up would be refused anyway, but only after building a
    // whole subscriber (filter, span registry) in every forked agent.
    if logging == AgentLogging::SetUp || traces.is_some() {
        logging::init(LogFormat::Text, AGENT_LOG_FILTER, layer);
    }
    if let Some(e) = trace_error {
        tracing::warn!("traces are not exported: {e}");
    }
    let code = match crate::agent::main(name) {
        Ok(code) if code == ExitCode::SUCCESS => 0,
        Ok(_) => 1,
        Err(e) => {
            eprintln!("agentd: {e:#}");
            1
        }
    };
    // Spans still queued are exported before the process ends.
    drop(traces);
    code
}

/// Started with `&` from a shell: the terminal belongs to another process
/// group, and reading it would stop agentd (SIGTTIN). A terminal that is
/// not agentd's controlling one cannot stop it, so it does not count.
fn in_background() -> bool {
    nix::unistd::tcgetpgrp(std::io::stdin()).is_ok_and(|fg| fg != nix::unistd::getpgrp())
}

fn run_daemon(global: &Global, config_path: &Path, run: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(dir) = &global.state_dir {
        cfg.state_dir = dir.clone();
    }
    let record = match run.record.as_deref() {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            Some(std::path::absolute(dir)?)
        }
        None => None,
    };
    crate::supervisor::run(cfg, record, global.state_dir.is_some(), run.repl_mode())
}

fn mcp_watch(dir: &Path, debounce_ms: Option<u64>) -> anyhow::Result<ExitCode> {
    let mut options = crate::mcp::watch_server::WatchOptions::default();
    if let Some(ms) = debounce_ms {
        options.debounce = std::time::Duration::from_millis(ms);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(crate::mcp::watch_server::serve_stdio_with(dir, options))?;
    Ok(ExitCode::SUCCESS)
}

/// The ledger for readers: the config's PostgreSQL ledger (`--config`),
/// else what the state dir says (`$AGENTD_LEDGER`, the URL its supervisor
/// runs with, or its SQLite file).
fn ledger_location(global: &Global, args: &LedgerArgs) -> anyhow::Result<crate::ledger::Location> {
    if let Some(c) = &args.config {
        let cfg = config::load(c).map_err(|e| anyhow::anyhow!("{e}"))?;
        if cfg.ledger.is_shared() {
            return Ok(cfg.ledger);
        }
    }
    let dir = state_dir(global, args)?;
    Ok(crate::ledger::Location::for_state_dir(&dir, &|k| {
        std::env::var(k).ok()
    })?)
}

/// Opens the ledger for reading (see [`ledger_location`]).
fn open_reader(global: &Global, args: &LedgerArgs) -> anyhow::Result<crate::ledger::Ledger> {
    Ok(crate::ledger::Ledger::open_read_only_at(&ledger_location(
        global, args,
    )?)?)
}

/// The state dir for readers: `--state-dir`, else the config's, else the default.
fn state_dir(global: &Global, ledger: &LedgerArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &global.state_dir {
        return Ok(d.clone());
    }
    if let Some(c) = &ledger.config {
        return match config::load(c) {
            Ok(cfg) => Ok(cfg.state_dir),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
    }
    Ok(crate::state_dir::default(&|k| std::env::var(k).ok()))
}
