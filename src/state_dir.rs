//! The state directory's layout, in one place:
//!
//! ```text
//! STATE_DIR/ledger.sqlite        tasks, steps, snapshots (ledger/)
//! STATE_DIR/agentd.sock          control socket, mode 0600 (control/)
//! STATE_DIR/agentd.lock          held by the running supervisor
//! STATE_DIR/agents/NAME/work/    each agent's working directory
//! ```

use std::path::{Path, PathBuf};

pub fn ledger(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::ledger::FILE_NAME)
}

pub fn socket(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::control::SOCKET_NAME)
}

pub fn workdir(state_dir: &Path, agent: &str) -> PathBuf {
    state_dir.join("agents").join(agent).join("work")
}

/// Takes the supervisor's lock: one agentd per state dir, and offline tools
/// (`agentd snapshot restore` with no agentd running) use it to make sure
/// none is.
pub fn lock(state_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = state_dir.join("agentd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another agentd is already running with state dir {} ({e})",
            state_dir.display()
        )
    })
}
