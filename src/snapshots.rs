//! Labelled snapshots of an agent: its workdir archived into the ledger, and
//! restoring either kind (a conversation becomes the agent's newest one; a
//! workspace archive is put back into the workdir exactly).
//!
//! Callers hold the right to write: the supervisor on its ledger thread, or
//! the CLI when no agentd runs (it holds the state dir's lock). The agent
//! must not be running while its workspace is restored.

use std::path::Path;

use crate::ledger::{Ledger, SnapshotKind, SnapshotMeta};
use crate::sandbox::workspace;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Workspace(#[from] workspace::WorkspaceError),
}

/// Archives `workdir` as a workspace snapshot of `agent`.
pub fn create(
    ledger: &mut Ledger,
    agent: &str,
    workdir: &Path,
    label: Option<&str>,
) -> Result<SnapshotMeta, SnapshotError> {
    std::fs::create_dir_all(workdir).map_err(|source| workspace::WorkspaceError::Archive {
        path: workdir.to_owned(),
        source,
    })?;
    let data = workspace::archive(workdir)?;
    let id = ledger.put_snapshot(agent, SnapshotKind::Workspace, label, None, &data)?;
    let meta = ledger
        .list_snapshots(agent, Some(SnapshotKind::Workspace))?
        .into_iter()
        .find(|m| m.id == id);
    meta.ok_or_else(|| crate::ledger::LedgerError::NoSuchSnapshot(id.to_string()).into())
}

/// Restores snapshot `which` (id or label) of `agent`; returns what it was.
pub fn restore(ledger: &mut Ledger, agent: &str, workdir: &Path, which: &str) -> Result<SnapshotMeta, SnapshotError> {
    let snap = ledger.snapshot(agent, which)?;
    match snap.meta.kind {
        SnapshotKind::Conversation => {
            let label = format!("restored from snapshot {}", snap.meta.id);
            ledger.put_snapshot(agent, SnapshotKind::Conversation, Some(&label), None, &snap.data)?;
        }
        SnapshotKind::Workspace => {
            std::fs::create_dir_all(workdir).map_err(|source| workspace::WorkspaceError::Restore {
                path: workdir.to_owned(),
                source,
            })?;
            workspace::restore(workdir, &snap.data)?;
        }
    }
    Ok(snap.meta)
}
