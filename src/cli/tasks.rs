//! `agentd tasks` and `agentd show`: read the ledger.

use std::process::ExitCode;

use clap::Args;

use super::{Global, LedgerArgs};
use crate::domain::{TaskId, TaskState};
use crate::ledger::{Ledger, Task, TaskFilter};

#[derive(Debug, Args)]
pub struct TasksArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Only this agent's tasks.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only tasks in this state.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<TaskState>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The task id (from `agentd tasks`).
    pub task: TaskId,
    /// Print JSON ({"task": …, "steps": […]}).
    #[arg(long)]
    pub json: bool,
}

fn parse_state(s: &str) -> Result<TaskState, String> {
    TaskState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = TaskState::ALL.iter().map(|t| t.as_str()).collect();
        format!("unknown state {s:?}; expected one of {}", names.join(", "))
    })
}

fn open(global: &Global, args: &LedgerArgs) -> anyhow::Result<Ledger> {
    super::open_reader(global, args)
}

pub fn list(global: &Global, args: &TasksArgs) -> anyhow::Result<ExitCode> {
    let ledger = open(global, &args.ledger)?;
    let filter = TaskFilter {
        agent: args.agent.clone(),
        state: args.state,
        limit: Some(args.limit),
        before: None,
    };
    let tasks = ledger.list_tasks(&filter)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&tasks)?);
    } else {
        out!("{}", table(&tasks));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(global: &Global, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let ledger = open(global, &args.ledger)?;
    let task = ledger.task(args.task)?;
    let steps = ledger.steps(args.task)?;
    if args.json {
        let v = serde_json::json!({ "task": task, "steps": steps });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("task {} ({})", task.id, task.agent);
    outln!("  state:    {} (attempt {})", task.state, task.attempts);
    if let Some(h) = &task.host {
        outln!("  host:     {h}");
    }
    outln!(
        "  trigger:  {} {}",
        task.trigger_kind,
        task.trigger().map(|t| t.summary()).unwrap_or_default()
    );
    outln!("  created:  {}", time(task.created_at));
    if let Some(t) = task.started_at {
        outln!("  started:  {}", time(t));
    }
    if let Some(t) = task.finished_at {
        outln!("  finished: {}", time(t));
    }
    outln!("  tokens:   {} in, {} out", task.input_tokens, task.output_tokens);
    if let Some(e) = &task.error {
        outln!("  error:    {e}");
    }
    if let Some(r) = &task.result {
        outln!("  result:   {}", indent(r));
    }
    for s in &steps {
        let latency = s.latency_ms.map(|ms| format!(", {ms} ms")).unwrap_or_default();
        let tokens = if s.input_tokens + s.output_tokens > 0 {
            format!(", {}+{} tokens", s.input_tokens, s.output_tokens)
        } else {
            String::new()
        };
        outln!("step {} [{}] attempt {}{latency}{tokens}", s.seq, s.kind, s.attempt);
        let body = match &s.payload {
            serde_json::Value::String(text) => text.clone(),
            v => serde_json::to_string_pretty(v).unwrap_or_default(),
        };
        outln!("  {}", indent(&body));
    }
    Ok(ExitCode::SUCCESS)
}

fn indent(s: &str) -> String {
    s.trim_end().replace('\n', "\n  ")
}

pub(super) fn time(ms: i64) -> String {
    crate::ledger::format_ms(ms)
}

/// A fixed-width table of tasks.
pub fn table(tasks: &[Task]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    // A fleet's tasks name the member that ran them; a single host's do not.
    let fleet = tasks.iter().any(|t| t.host.is_some());
    let host_col = |h: &str| if fleet { format!("{h:<12} ") } else { String::new() };
    let _ = writeln!(
        s,
        "{:>6}  {:<16} {}{:<10} {:>3}  {:<23}  TRIGGER",
        "ID",
        "AGENT",
        host_col("HOST"),
        "STATE",
        "TRY",
        "CREATED"
    );
    for t in tasks {
        let mut what = format!(
            "{} {}",
            t.trigger_kind,
            t.trigger().map(|tr| tr.summary()).unwrap_or_default()
        );
        if let Some(e) = &t.error {
            what.push_str(&format!(" — {}", e.lines().next().unwrap_or("")));
        }
        let what: String = what.chars().take(100).collect();
        let _ = writeln!(
            s,
            "{:>6}  {:<16} {}{:<10} {:>3}  {:<23}  {what}",
            t.id,
            t.agent,
            host_col(t.host.as_deref().unwrap_or("-")),
            t.state.as_str(),
            t.attempts,
            time(t.created_at)
        );
    }
    s
}
