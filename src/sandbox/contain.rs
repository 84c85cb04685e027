//! What ties sandbox runs to their agent and state dir, so that nothing a
//! run started outlives it, its agent's process, or agentd.
//!
//! This module owns the naming of what runs leave on the host (cgroups
//! `agentd/<tag>/<agent>/run-…`, private tmp dirs
//! `agentd-sandbox-<tag>.<agent>.…`, where `<tag>` is a hash of the state
//! dir's canonical path), the clean-up of leftovers (at supervisor start
//! and whenever an agent's process exited, so none is left when the next
//! one starts), and [`Containment`], what one agent hands each of its runs (its cgroup
//! scope, tmp naming, workdir quota).
//!
//! It must never clean what another state dir's agentd owns (every name
//! carries the tag), and never clean a running agent's runs: a state dir's
//! leftovers only by the supervisor that holds its lock before it starts
//! agents, an agent's only when that agent's process is gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cgroup::{self, AgentScope, CgroupError, Hierarchy, RunCgroup};
use super::policy::ResourceLimits;
use super::quota::Quota;

/// The start of every private tmp dir's name.
pub const TMP_PREFIX: &str = "agentd-sandbox-";

/// What one agent's runs are contained by. The default (no cgroup, plain
/// tmp names, no quota) is what `agentd sandbox run` and direct callers get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Containment {
    cgroups: Option<Arc<AgentScope>>,
    tmp_prefix: Option<String>,
    quota: Option<Quota>,
}

impl Containment {
    /// An agent's containment, as its process starts. What the agent's
    /// earlier processes left behind (runs' cgroups, processes, private tmp
    /// dirs) is gone already: the supervisor cleans it before any process
    /// of the agent starts, at its own start ([`at_supervisor_start`], the
    /// whole state dir) and after every exit of one ([`after_agent_exit`]).
    /// Not again here: a thousand agents starting would each scan the temp
    /// dir and the cgroup tree for nothing.
    pub fn for_agent(state_dir: &Path, agent: &str, quota: Option<Quota>) -> Containment {
        Containment::with_hierarchy(Hierarchy::detected(), state_dir, agent, quota)
    }

    /// The same with the hierarchy given (tests use it to run under a
    /// cgroup without a state dir's supervisor).
    pub fn with_hierarchy(hierarchy: Hierarchy, state_dir: &Path, agent: &str, quota: Option<Quota>) -> Containment {
        let tag = state_tag(state_dir);
        Containment {
            cgroups: match hierarchy {
                Hierarchy::Unavailable { .. } => None,
                h => Some(Arc::new(AgentScope::new(h, &tag, agent))),
            },
            tmp_prefix: Some(agent_tmp_prefix(&tag, agent)),
            quota,
        }
    }

    /// Kills and removes this agent's leftover cgroups and private tmp dirs.
    /// Returns how many processes were killed.
    pub fn clean_leftovers(&self) -> usize {
        let killed = self.cgroups.as_ref().map_or(0, |s| s.clean_leftovers());
        if let Some(prefix) = &self.tmp_prefix {
            remove_tmp_dirs(prefix);
        }
        killed
    }

    /// A cgroup for one run (limited by `limits`), or a no-op one when the
    /// host has none.
    pub fn run_cgroup(&self, limits: &ResourceLimits) -> Result<RunCgroup, CgroupError> {
        match &self.cgroups {
            Some(scope) => scope.create_run(limits),
            None => Ok(RunCgroup::none()),
        }
    }

    /// How a run's private tmp dir is named: `agentd-sandbox-<tag>.<agent>.`
    /// for an agent's runs, `agentd-sandbox-` otherwise.
    pub fn tmp_prefix(&self) -> &str {
        self.tmp_prefix.as_deref().unwrap_or(TMP_PREFIX)
    }

    pub fn quota(&self) -> Option<Quota> {
        self.quota
    }
}

/// At supervisor start (holding the state dir's lock, before any agent
/// starts): finds the cgroup hierarchy, moves agentd into its leaf on v2,
/// says once what runs will be contained by, and cleans every leftover of
/// this state dir (processes, cgroups, private tmp dirs).
pub fn at_supervisor_start(state_dir: &Path) -> Hierarchy {
    let mut hierarchy = Hierarchy::detect();
    if let Err(e) = hierarchy.prepare_supervisor() {
        tracing::warn!("cgroup v2: cannot move agentd into its supervisor leaf: {e}");
    }
    match &hierarchy {
        Hierarchy::Unavailable { reason } => tracing::warn!(
            "sandbox runs get no cgroup ({reason}): a run is contained by its process group, \
             bwrap's PID namespace when the backend has one, and per-process rlimits; background \
             processes of landlock runs can outlive a killed agent"
        ),
        h => tracing::info!("sandbox runs are contained by {}", h.describe()),
    }
    let tag = state_tag(state_dir);
    let killed = cgroup::clean_state_dir(&hierarchy, &tag);
    let removed = remove_tmp_dirs(&format!("{TMP_PREFIX}{tag}."));
    if killed > 0 || removed > 0 {
        tracing::warn!(
            "cleaned what an earlier agentd left behind: {killed} processes of sandbox runs, \
             {removed} private tmp dirs"
        );
    }
    hierarchy
}

/// When agentd stops, after its agents: whatever is left of the state
/// dir's runs is killed and its cgroups removed.
pub fn at_supervisor_stop(state_dir: &Path) {
    let killed = cgroup::clean_state_dir(&Hierarchy::detect(), &state_tag(state_dir));
    if killed > 0 {
        tracing::warn!("killed {killed} processes of sandbox runs at shutdown");
    }
}

/// After an agent's process exited (supervisor): its runs' processes,
/// cgroups and private tmp dirs go with it.
pub fn after_agent_exit(state_dir: &Path, agent: &str) {
    let killed = Containment::with_hierarchy(Hierarchy::detect(), state_dir, agent, None).clean_leftovers();
    if killed > 0 {
        tracing::warn!(
            agent,
            "killed {killed} processes of sandbox runs the agent's process left behind"
        );
    }
}

/// A short, stable name for a state dir: FNV-1a of its canonical path.
pub fn state_tag(state_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Agent names are `[a-z0-9_-]`: the dots keep one agent's prefix from
/// matching another's (`a` and `a-b`).
fn agent_tmp_prefix(tag: &str, agent: &str) -> String {
    format!("{TMP_PREFIX}{tag}.{agent}.")
}

/// The state dir of an agent's workdir (`STATE_DIR/agents/NAME/work`).
pub fn state_dir_of_workdir(workdir: &Path) -> Option<PathBuf> {
    workdir.ancestors().nth(3).map(Path::to_path_buf)
}

/// Removes the directories in the temp dir whose names start with
/// `prefix`; returns how many. Symlinks are never followed.
fn remove_tmp_dirs(prefix: &str) -> usize {
    let base = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => removed += 1,
            Err(err) => tracing::warn!(path = %e.path().display(), "cannot remove a leftover private tmp dir: {err}"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_per_state_dir_and_prefixes_per_agent() {
        let a = state_tag(Path::new("/nonexistent/a"));
        let b = state_tag(Path::new("/nonexistent/b"));
        assert_ne!(a, b);
        assert_eq!(a, state_tag(Path::new("/nonexistent/a")));
        assert_eq!(a.len(), 16);
        let p = agent_tmp_prefix(&a, "a");
        assert!(!agent_tmp_prefix(&a, "a-b").starts_with(&p));
    }

    #[test]
    fn state_dir_is_three_levels_above_the_workdir() {
        assert_eq!(
            state_dir_of_workdir(Path::new("/var/lib/agentd/agents/news/work")),
            Some(PathBuf::from("/var/lib/agentd"))
        );
    }
}
