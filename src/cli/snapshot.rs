//! `agentd snapshot list|show|create|restore AGENT`.
//!
//! Reads go straight to the ledger. Writes go through the running agentd
//! (the only writer of its ledger); with none running, the command takes
//! the state dir's lock and calls [`crate::snapshots`] itself. What a
//! workspace archive holds is [`crate::snapshots::archive::list`]'s to say.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Global, LedgerArgs, state_dir};
use crate::control::{Request, client};
use crate::ledger::{Ledger, SnapshotKind, SnapshotMeta};
use crate::{snapshots, state_dir as layout};

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List an agent's snapshots, newest first.
    List {
        #[command(flatten)]
        ledger: LedgerArgs,
        agent: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot: a conversation's messages, or a workspace's files.
    Show {
        #[command(flatten)]
        ledger: LedgerArgs,
        agent: String,
        /// Snapshot id or label.
        snapshot: String,
        #[arg(long)]
        json: bool,
    },
    /// Archive the agent's workdir into the ledger.
    Create(CreateArgs),
    /// Put a snapshot back: a conversation becomes the agent's memory again, a
    /// workspace replaces the workdir exactly. A running agent restarts.
    Restore {
        #[command(flatten)]
        ledger: LedgerArgs,
        agent: String,
        /// Snapshot id or label.
        snapshot: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    pub agent: String,
    /// A label to restore it by.
    #[arg(long)]
    pub label: Option<String>,
}

pub fn run(global: &Global, cmd: &SnapshotCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCommand::List { ledger, agent, json } => {
            let l = super::open_reader(global, ledger)?;
            let list = l.list_snapshots(agent, None)?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                outln!("{:>6}  {:<13} {:>10}  {:<23}  LABEL", "ID", "KIND", "BYTES", "CREATED");
                for m in list {
                    outln!(
                        "{:>6}  {:<13} {:>10}  {:<23}  {}",
                        m.id,
                        m.kind.as_str(),
                        m.size,
                        super::tasks::time(m.created_at),
                        m.label.unwrap_or_default()
                    );
                }
            }
        }
        SnapshotCommand::Show {
            ledger,
            agent,
            snapshot,
            json,
        } => {
            let l = super::open_reader(global, ledger)?;
            let snap = l.snapshot(agent, snapshot)?;
            match snap.meta.kind {
                SnapshotKind::Conversation => {
                    let messages: serde_json::Value = serde_json::from_slice(&snap.data)?;
                    if *json {
                        outln!("{}", serde_json::to_string_pretty(&messages)?);
                    } else {
                        for m in messages.as_array().into_iter().flatten() {
                            let role = m["role"].as_str().unwrap_or("?");
                            let text = m["content"].as_str().unwrap_or("");
                            outln!("{role}: {}", text.trim_end().replace('\n', "\n  "));
                            for c in m["tool_calls"].as_array().into_iter().flatten() {
                                outln!(
                                    "  → {}({})",
                                    c["function"]["name"].as_str().unwrap_or("?"),
                                    c["function"]["arguments"].as_str().unwrap_or("")
                                );
                            }
                        }
                    }
                }
                SnapshotKind::Workspace => {
                    let files = snapshots::archive::list(&snap.data)?;
                    if *json {
                        outln!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({"meta": snap.meta, "files": files}))?
                        );
                    } else {
                        for (path, size) in files {
                            outln!("{size:>10}  {path}");
                        }
                    }
                }
            }
        }
        SnapshotCommand::Create(args) => {
            let req = Request::SnapshotCreate {
                agent: args.agent.clone(),
                label: args.label.clone(),
            };
            let meta = write(global, &args.ledger, &args.agent, &req, |l, workdir| {
                snapshots::create(l, &args.agent, workdir, args.label.as_deref())
            })?;
            outln!("snapshot {} of {}: workspace, {} bytes", meta.id, meta.agent, meta.size);
        }
        SnapshotCommand::Restore {
            ledger,
            agent,
            snapshot,
        } => {
            let req = Request::SnapshotRestore {
                agent: agent.clone(),
                snapshot: snapshot.clone(),
            };
            let meta = write(global, ledger, agent, &req, |l, workdir| {
                snapshots::restore(l, agent, workdir, snapshot)
            })?;
            outln!("restored {} snapshot {} of {}", meta.kind.as_str(), meta.id, meta.agent);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the running agentd, or, with none running, does it here under the lock.
fn write(
    global: &Global,
    args: &LedgerArgs,
    agent: &str,
    req: &Request,
    offline: impl FnOnce(&mut Ledger, &std::path::Path) -> Result<SnapshotMeta, snapshots::SnapshotError>,
) -> anyhow::Result<SnapshotMeta> {
    let dir = state_dir(global, args)?;
    match client::request(&layout::socket(&dir), req, Duration::from_secs(60)) {
        Ok(resp) if resp.ok => Ok(serde_json::from_value(resp.result.unwrap_or_default())?),
        Ok(resp) => anyhow::bail!("{}", resp.error.unwrap_or_else(|| "request failed".into())),
        Err(client::ClientError::Connect { .. }) => {
            let _lock = layout::lock(&dir)?;
            let mut ledger = Ledger::open_at(&super::ledger_location(global, args)?)?;
            Ok(offline(&mut ledger, &layout::workdir(&dir, agent))?)
        }
        Err(e) => Err(e.into()),
    }
}
