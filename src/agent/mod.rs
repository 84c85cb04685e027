//! The agent child process: `agentd agent --name NAME`, started by the
//! supervisor. It reads its spec and tasks as JSON lines on stdin and
//! answers on stdout (see [`crate::protocol`]); logs go to stderr.
//!
//! It runs a `current_thread` runtime: an idle agent should cost little
//! more than its share of the executable's pages. It never writes the
//! ledger; every record goes to the supervisor, which checks the lease.

use std::process::ExitCode;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::ledger::TaskState;
use crate::protocol::{self, FromChild, PROTOCOL_VERSION, ToChild};

/// The child's `main`.
pub fn main(name: &str) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run(name))
}

/// Sends messages to the supervisor in order, from any task.
#[derive(Clone)]
pub struct Outbox(mpsc::UnboundedSender<FromChild>);

impl Outbox {
    pub fn send(&self, msg: FromChild) {
        let _ = self.0.send(msg);
    }
}

async fn run(name: &str) -> anyhow::Result<ExitCode> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await.context("reading the start message")?;
    let Some(first) = first else {
        return Ok(ExitCode::SUCCESS);
    };
    let (spec, workdir) = match serde_json::from_str::<ToChild>(&first) {
        Ok(ToChild::Start {
            version, spec, workdir, ..
        }) if version == PROTOCOL_VERSION => (spec, workdir),
        Ok(ToChild::Start { version, .. }) => {
            anyhow::bail!("supervisor speaks protocol {version}, this agent {PROTOCOL_VERSION}")
        }
        Ok(_) => anyhow::bail!("expected a start message first"),
        Err(e) => anyhow::bail!("unreadable start message: {e}"),
    };
    std::env::set_current_dir(&workdir).with_context(|| format!("entering workdir {}", workdir.display()))?;
    tracing::debug!(agent = name, "agent process up in {}", workdir.display());

    let (tx, mut rx) = mpsc::unbounded_channel::<FromChild>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(msg) = rx.recv().await {
            if out.write_all(protocol::encode(&msg).as_bytes()).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });
    let outbox = Outbox(tx);
    outbox.send(FromChild::Ready {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    });

    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            // EOF: the supervisor is gone or wants us gone.
            Ok(None) | Err(_) => break,
        };
        match serde_json::from_str::<ToChild>(&line) {
            Ok(ToChild::Task { id, lease, .. }) => {
                outbox.send(FromChild::Finished {
                    task: id,
                    lease,
                    state: TaskState::Failed,
                    result: None,
                    error: Some(format!("agent {}: this build has no LLM task runtime yet", spec.name)),
                    conversation: None,
                });
            }
            Ok(ToChild::Shutdown { .. }) => break,
            Ok(ToChild::Start { .. }) => tracing::warn!(agent = name, "ignoring a second start message"),
            Err(e) => tracing::warn!(agent = name, "unreadable message from supervisor: {e}"),
        }
    }
    drop(outbox);
    let _ = writer.await;
    Ok(ExitCode::SUCCESS)
}
