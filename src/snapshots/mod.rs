//! Labelled snapshots of an agent, one owner in three parts:
//!
//! - storage is the ledger's ([`crate::ledger`]'s `snapshots` table:
//!   [`SnapshotMeta`], put, list, find by id or label);
//! - the workdir archive format is [`archive`] (archive, restore, list),
//!   the only code that reads or writes those bytes;
//! - this module is what a snapshot *does*: [`create`] archives a workdir
//!   into the ledger, [`restore`] puts either kind back (a conversation
//!   becomes the agent's newest one; a workspace archive is put back into
//!   the workdir exactly);
//! - `agentd snapshot …` is [`crate::cli::snapshot`], which calls these
//!   through the running agentd or, with none, itself.
//!
//! Callers hold the right to write: the supervisor (which archives and
//! unpacks off its ledger thread and stores through it), or the CLI when no
//! agentd runs (it holds the state dir's lock). The agent must not be
//! running while its workspace is restored.

pub mod archive;

use std::path::Path;

use crate::ledger::{Ledger, Snapshot, SnapshotKind, SnapshotMeta};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The blocking task that archived or unpacked ended without an
    /// answer (it panicked, or the runtime is shutting down).
    #[error("the archive worker stopped: {0}")]
    Worker(String),
}

/// Archives `workdir` as a workspace snapshot of `agent`: [`archive_workdir`]
/// then [`store_workspace`], for a caller that holds the ledger itself (the
/// CLI with no agentd running).
pub fn create(
    ledger: &mut Ledger,
    agent: &str,
    workdir: &Path,
    label: Option<&str>,
) -> Result<SnapshotMeta, SnapshotError> {
    let data = archive_workdir(workdir)?;
    store_workspace(ledger, agent, label, &data)
}

/// Archives `workdir` (creating it when missing). Reads the whole tree:
/// the supervisor runs it off its event loop and off the ledger thread.
pub fn archive_workdir(workdir: &Path) -> Result<Vec<u8>, SnapshotError> {
    std::fs::create_dir_all(workdir).map_err(|source| archive::ArchiveError::Archive {
        path: workdir.to_owned(),
        source,
    })?;
    Ok(archive::archive(workdir)?)
}

/// Stores an archive made by [`archive_workdir`] as a workspace snapshot.
pub fn store_workspace(
    ledger: &mut Ledger,
    agent: &str,
    label: Option<&str>,
    data: &[u8],
) -> Result<SnapshotMeta, SnapshotError> {
    let id = ledger.put_snapshot(agent, SnapshotKind::Workspace, label, None, data)?;
    Ok(ledger.snapshot_meta(id)?)
}

/// Restores snapshot `which` (id or label) of `agent`; returns what it was.
pub fn restore(ledger: &mut Ledger, agent: &str, workdir: &Path, which: &str) -> Result<SnapshotMeta, SnapshotError> {
    let snap = ledger.snapshot(agent, which)?;
    match snap.meta.kind {
        SnapshotKind::Conversation => restore_conversation(ledger, agent, &snap)?,
        // `archive::restore` makes the workdir when it is missing.
        SnapshotKind::Workspace => archive::restore(workdir, &snap.data)?,
    }
    Ok(snap.meta)
}

/// A restored conversation becomes the agent's newest one.
pub fn restore_conversation(ledger: &mut Ledger, agent: &str, snap: &Snapshot) -> Result<(), SnapshotError> {
    let label = format!("restored from snapshot {}", snap.meta.id);
    ledger.put_snapshot(agent, SnapshotKind::Conversation, Some(&label), None, &snap.data)?;
    Ok(())
}
