//! The state directory's layout, in one place:
//!
//! ```text
//! STATE_DIR/ledger.sqlite        tasks, steps, snapshots (ledger/)
//! STATE_DIR/ledger.url           the PostgreSQL ledger's URL, in a fleet
//! STATE_DIR/agentd.sock          control socket, mode 0600 (control/)
//! STATE_DIR/agentd.lock          held by the running supervisor
//! STATE_DIR/http.token           the HTTP API's token, 0600 (http/)
//! STATE_DIR/http.url             where the HTTP API listens, for `agentd dashboard`
//! STATE_DIR/agents/NAME/          root:GID 0710 when agentd is root
//! STATE_DIR/agents/NAME/work/     the agent's workdir, its own user's, 0700
//! STATE_DIR/agents/NAME/mcp/      where its stdio MCP servers start, 0700
//! STATE_DIR/agents/NAME/skills/   generated MCP skills (read-only to code)
//! STATE_DIR/agents/NAME/bin/      `agentd` for `agentd tool call` in code
//! ```
//!
//! Every path into the state dir is made here; other modules call these
//! functions rather than joining names themselves.

use std::path::{Path, PathBuf};

pub fn ledger(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::ledger::FILE_NAME)
}

/// The PostgreSQL URL (never a password) this member's supervisor runs
/// its ledger on, for readers without a config; absent with SQLite.
pub fn ledger_url(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger.url")
}

pub fn socket(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::control::SOCKET_NAME)
}

/// The HTTP API's bearer token (0600: whoever reads it controls agentd).
pub fn http_token(state_dir: &Path) -> PathBuf {
    state_dir.join("http.token")
}

/// The URL the HTTP API was bound to (a port of 0 in the config becomes a
/// real one), written when it starts.
pub fn http_url(state_dir: &Path) -> PathBuf {
    state_dir.join("http.url")
}

/// Where agents' directories live.
pub fn agents(state_dir: &Path) -> PathBuf {
    state_dir.join("agents")
}

pub fn workdir(state_dir: &Path, agent: &str) -> PathBuf {
    agents(state_dir).join(agent).join("work")
}

/// The state dir when neither the config nor `--state-dir` names one:
/// `$AGENTD_HOME`, else `$HOME/.agentd`, else `/var/lib/agentd` (a service
/// without a home). `env` reads a variable (the config loader passes its
/// own, so tests can set one).
pub fn default(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(h) = env("AGENTD_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(h);
    }
    match env("HOME").filter(|s| !s.is_empty()) {
        Some(home) => PathBuf::from(home).join(".agentd"),
        None => PathBuf::from("/var/lib/agentd"),
    }
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

/// The state dir's own mode: 0700, or 0711 when agentd runs as root, so
/// that agents' own users can traverse it to their workdirs (they can list
/// nothing, and every file agentd keeps here is 0600).
pub fn prepare(state_dir: &Path, root: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let mode = if root { 0o711 } else { 0o700 };
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of state dir {}", state_dir.display()))?;
    if root {
        check_traversable(state_dir)?;
    }
    Ok(())
}

/// With agentd as root, each agent's code runs as its own user, which must
/// be able to walk down to its workdir.
fn check_traversable(state_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(state_dir)?;
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)?;
        if meta.mode() & 0o001 == 0 {
            anyhow::bail!(
                "agents' sandboxed code runs as their own users and must reach their workdirs under {}, \
                 but {} (mode {:o}) does not let other users through: `chmod o+x {}`, or choose a state \
                 dir below a directory others may traverse (e.g. /var/lib/agentd)",
                real.display(),
                dir.display(),
                meta.mode() & 0o7777,
                dir.display()
            );
        }
    }
    Ok(())
}

/// An agent's directories, made with the right owners and modes.
#[derive(Debug, Clone)]
pub struct AgentDirs {
    /// `agents/NAME`: generated skills and `bin/` for the sandbox.
    pub dir: PathBuf,
    /// `agents/NAME/work`: the sandbox's, owned by the agent's user.
    pub work: PathBuf,
    /// `agents/NAME/mcp`: where stdio MCP servers start; no sandbox can
    /// write it (a server that reads its cwd must never read the model's
    /// files).
    pub mcp: PathBuf,
}

/// Creates (or corrects) an agent's directories. With `user` (agentd is
/// root): `agents/` 0711, `agents/NAME` root:GID 0710, `work` USER:GID 0700
/// (its contents given to the user too, without following links, when it
/// had another owner), `mcp` root 0700. Without: everything 0700, agentd's.
pub fn prepare_agent(state_dir: &Path, agent: &str, user: Option<(u32, u32)>) -> std::io::Result<AgentDirs> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let set_mode = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    let agents = agents(state_dir);
    let dirs = AgentDirs {
        dir: agents.join(agent),
        work: workdir(state_dir, agent),
        mcp: agents.join(agent).join("mcp"),
    };
    for d in [&dirs.work, &dirs.mcp] {
        std::fs::create_dir_all(d)?;
    }
    set_mode(&dirs.mcp, 0o700)?;
    match user {
        None => {
            for d in [&agents, &dirs.dir, &dirs.work] {
                set_mode(d, 0o700)?;
            }
        }
        Some((uid, gid)) => {
            set_mode(&agents, 0o711)?;
            std::os::unix::fs::chown(&dirs.dir, Some(0), Some(gid))?;
            set_mode(&dirs.dir, 0o710)?;
            if std::fs::symlink_metadata(&dirs.work)?.uid() != uid {
                chown_tree(&dirs.work, uid, gid)?;
            }
            set_mode(&dirs.work, 0o700)?;
        }
    }
    Ok(dirs)
}

/// Gives `dir` and everything below it to `uid:gid`, never following a
/// link: each directory is opened beneath its parent with `O_NOFOLLOW`
/// ([`crate::beneath`]), and entries are changed with `AT_SYMLINK_NOFOLLOW`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let fd = crate::beneath::open_root_nofollow(dir)?;
    nix::unistd::fchown(&fd, Some(uid.into()), Some(gid.into()))?;
    chown_below(&fd, uid, gid, 0)
}

fn chown_below(dir: &std::os::fd::OwnedFd, uid: u32, gid: u32, depth: usize) -> std::io::Result<()> {
    use nix::fcntl::AtFlags;
    if depth > crate::beneath::MAX_DEPTH {
        return Err(std::io::Error::other("directory tree too deep"));
    }
    for name in crate::beneath::names(dir)? {
        nix::unistd::fchownat(
            dir,
            name.as_c_str(),
            Some(uid.into()),
            Some(gid.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        match crate::beneath::open_dir_at(dir, &name) {
            Ok(sub) => chown_below(&sub, uid, gid, depth + 1)?,
            // Not a directory, or swapped for a link meanwhile: not followed.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
