//! Who each agent's sandboxed code runs as, when agentd runs as root.
//!
//! Every agent gets an unprivileged uid of its own (gid the same number),
//! from `agent_uids` (default 61184–65519, systemd's range for dynamic
//! users), that owns the agent's workdir and nothing else. The record of
//! the assignment is the workdir's owner itself: at start the supervisor
//! reads the owners of `STATE/agents/*/work`, so an agent keeps its uid
//! across restarts, a removed agent's uid is not reused while its workdir
//! exists, and no second table can disagree with the files. A uid that
//! names an existing account (in the password database) is never taken.
//!
//! With agentd unprivileged there is nothing to assign: code runs as
//! agentd's uid, kept away from agentd's files by the sandbox itself.

use std::collections::{BTreeMap, HashSet};
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The uid assignments of one state dir.
#[derive(Debug)]
pub struct AgentUsers {
    range: RangeInclusive<u32>,
    by_agent: BTreeMap<String, u32>,
    /// The uids in `by_agent`.
    taken: HashSet<u32>,
    /// Where the search for a free uid starts (see [`AgentUsers::assign`]).
    next: u32,
}

impl AgentUsers {
    /// Reads the current assignments from the workdirs under `state_dir`.
    pub fn load(state_dir: &Path, range: RangeInclusive<u32>) -> AgentUsers {
        let mut by_agent = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(crate::state_dir::agents(state_dir)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Ok(meta) = std::fs::symlink_metadata(entry.path().join("work"))
                    && meta.is_dir()
                    && range.contains(&meta.uid())
                {
                    by_agent.insert(name, meta.uid());
                }
            }
        }
        AgentUsers {
            taken: by_agent.values().copied().collect(),
            next: *range.start(),
            range,
            by_agent,
        }
    }

    /// The agent's `(uid, gid)`, assigning the lowest free one if it has
    /// none yet.
    pub fn assign(&mut self, agent: &str) -> Result<(u32, u32), String> {
        if let Some(uid) = self.by_agent.get(agent) {
            return Ok((*uid, *uid));
        }
        // Uids below the last one handed out were taken or accounts when
        // it was: a thousand agents starting do not each rescan from the
        // start of the range (nor look up every account again).
        let free = (self.next.max(*self.range.start())..=*self.range.end())
            .chain(self.range.clone())
            .find(|uid| !self.taken.contains(uid) && !account_exists(*uid))
            .ok_or_else(|| {
                format!(
                    "no free uid left in agent_uids {}-{} for agent {agent}",
                    self.range.start(),
                    self.range.end()
                )
            })?;
        self.by_agent.insert(agent.to_owned(), free);
        self.taken.insert(free);
        self.next = free.saturating_add(1);
        Ok((free, free))
    }
}

/// Whether `uid` or the group `uid` names an account on this host.
fn account_exists(uid: u32) -> bool {
    matches!(nix::unistd::User::from_uid(uid.into()), Ok(Some(_)))
        || matches!(nix::unistd::Group::from_gid(uid.into()), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::chown;

    #[test]
    fn assignments_are_read_back_from_workdir_owners_and_never_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("agents/old/work");
        std::fs::create_dir_all(&work).expect("mkdir");
        // 65534 is nobody on Debian: an existing account, outside the range.
        let range = 64000..=64003;
        if nix::unistd::geteuid().is_root() {
            chown(&work, Some(64000), Some(64000)).expect("chown");
        }
        let mut users = AgentUsers::load(dir.path(), range);
        let a = users.assign("a").expect("a");
        let b = users.assign("b").expect("b");
        assert_ne!(a, b);
        assert_eq!(users.assign("a").expect("again"), a);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(users.assign("old").expect("old"), (64000, 64000));
            assert!(a.0 != 64000 && b.0 != 64000);
        }
        let mut small = AgentUsers::load(dir.path(), 64010..=64010);
        small.assign("x").expect("one");
        assert!(small.assign("y").unwrap_err().contains("no free uid"));
    }
}
