//! What a task's sandbox gets besides its workdir: the local skill
//! directories, the generated MCP skills (kept in sync with the tool
//! lists), the tool bridge's dialer descriptor and token, `agentd` itself
//! on the PATH, and the user the code runs as. The paths are read-only, at
//! the same absolute paths inside and outside the sandbox, so the paths in
//! the skills index are the paths code uses.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use super::Outbox;
use super::bridge::{self, Bridge};
use crate::config::{AgentSpec, SkillSpec};
use crate::domain::{Lease, TaskId};
use crate::mcp::{McpHub, ToolInfo};
use crate::sandbox::{self, Exposed};
use crate::skills::generate::Generated;

pub struct SkillsRuntime {
    local: Vec<SkillSpec>,
    servers: Vec<String>,
    generated: Generated,
    bridge: Bridge,
    /// The agent's own directory, where `bin/agentd` is linked.
    agent_dir: PathBuf,
    /// `bin/` with the `agentd` link, and the executable it points to:
    /// made at the first sandbox run, not at start (most agents of a large
    /// fleet may never run code, and a link made at start is a directory
    /// and a link written per agent).
    bin: std::sync::OnceLock<Option<(PathBuf, PathBuf)>>,
    /// Who sandboxed code runs as when agentd is root (the agent's own
    /// user); `None` when agentd is unprivileged.
    user: Option<(u32, u32)>,
}

impl SkillsRuntime {
    /// Sets up under `agent_dir`: `skills/` for generated skills and (at
    /// the first run) `bin/agentd`. A part that cannot be set up is logged
    /// and left out; the agent still runs.
    pub fn new(
        agent_dir: &Path,
        hub: Arc<McpHub>,
        spec: &AgentSpec,
        outbox: Outbox,
        user: Option<(u32, u32)>,
    ) -> SkillsRuntime {
        SkillsRuntime {
            local: spec.skills.clone(),
            servers: spec.mcp_servers.iter().map(|s| s.name.clone()).collect(),
            generated: Generated::new(agent_dir.join("skills")),
            bridge: Bridge::start(hub, spec.bridge.clone(), outbox),
            agent_dir: agent_dir.to_owned(),
            bin: std::sync::OnceLock::new(),
            user,
        }
    }

    /// Regenerates the MCP skills whose tool lists changed.
    pub fn sync(&mut self, tools: &[ToolInfo]) {
        match self.generated.sync(&self.servers, tools) {
            Ok(true) => tracing::info!(dir = %self.generated.root().display(), "regenerated MCP tool skills"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "writing generated MCP skills"),
        }
    }

    /// The skills index for the system prompt.
    pub fn index(&self) -> String {
        crate::skills::index(&self.local, &self.generated.skills())
    }

    /// Opens the bridge for a task; its token goes into the sandbox.
    pub fn begin(&self, task: TaskId, lease: &Lease) -> Option<String> {
        match self.bridge.begin(task, lease) {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::error!(error = %e, "no random token for the tool bridge; it stays closed for this task");
                None
            }
        }
    }

    pub fn end(&self) {
        self.bridge.end();
    }

    /// What the fence runs of the current task may see: each call makes a
    /// fresh bridge dialer, so call it once per batch of runs.
    pub fn exposed(&self, token: Option<&str>) -> Exposed {
        let mut e = Exposed {
            user: self.user,
            ..Exposed::default()
        };
        e.read_only.extend(self.local.iter().map(|s| s.dir.clone()));
        let generated = self.generated.skills();
        if !generated.is_empty() {
            e.read_only.push(self.generated.root().to_path_buf());
            let dirs: Vec<String> = generated.iter().map(|s| s.dir.display().to_string()).collect();
            e.env.push(("PYTHONPATH".into(), dirs.join(":")));
        }
        if let Some(token) = token {
            // SAFETY: geteuid cannot fail.
            let uid = self
                .user
                .map(|(uid, _)| uid)
                .unwrap_or_else(|| unsafe { libc::geteuid() });
            match self.bridge.dialer(uid) {
                Ok(fd) => {
                    e.env.push((bridge::ENV_FD.into(), fd.as_raw_fd().to_string()));
                    e.env.push((bridge::ENV_TOKEN.into(), token.to_owned()));
                    e.inherit.push(Arc::new(fd));
                }
                Err(err) => tracing::error!(error = %err, "tool bridge: no dialer for this run"),
            }
        }
        if let Some((bin, exe)) = self.bin.get_or_init(|| super::agentd_bin_dir(&self.agent_dir)) {
            e.read_only.push(bin.clone());
            e.read_only.push(exe.clone());
            e.env
                .push(("PATH".into(), format!("{}:{}", bin.display(), sandbox::DEFAULT_PATH)));
        }
        e
    }
}
