//! One agent that reacts to notes written in an `inbox/` directory,
//! watched by agentd's own `mcp-watch` server: the shape most daemon-level
//! tests need. Each suite adds its own lines (a sandbox profile, limits, a
//! second server) through [`Extra`]. The config names its state dir, so
//! `agentd check CONFIG` sees the same workdirs agentd uses.

use std::path::PathBuf;

use tempfile::TempDir;

use super::daemon::Daemon;
use super::{agentd_bin, tempdir, write};

/// What a suite adds to the one agent.
#[derive(Default)]
pub struct Extra<'a> {
    /// YAML lines for the agent, indented by four spaces.
    pub agent: &'a str,
    /// YAML lines for its `mcp_servers` list, indented by six spaces.
    pub server: &'a str,
    /// More keys for the inbox subscription, e.g. `, min_interval: 300ms`.
    pub subscription: &'a str,
    pub system_prompt: Option<&'a str>,
    /// The model client's `max_retries`.
    pub max_retries: u32,
    /// Top-level YAML lines (e.g. `prices:`), unindented.
    pub top: &'a str,
}

pub struct InboxAgent {
    pub dir: TempDir,
    pub config: PathBuf,
    pub inbox: PathBuf,
    pub name: String,
    /// The model's API key, given to agentd as `TEST_LLM_KEY`.
    pub key: String,
}

impl InboxAgent {
    pub fn new(name: &str, base_url: &str, key: &str, extra: Extra<'_>) -> InboxAgent {
        let dir = tempdir();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).expect("inbox");
        let system_prompt = extra
            .system_prompt
            .map(|p| format!("    system_prompt: {p}\n"))
            .unwrap_or_default();
        let config = write(
            dir.path(),
            "agentd.yaml",
            &format!(
                r#"shutdown_grace: 2s
state_dir: "{state}"
{top}agents:
  - name: {name}
    model: test-model
{system_prompt}    llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: {retries}}}
    restart: {{backoff_min: 20ms, backoff_max: 100ms}}
    mcp_servers:
      - name: inbox
        command: {bin}
        args: [mcp-watch, "{inbox}", --debounce-ms, "20"]
{server}
    subscriptions:
      - {{uri: "file://{inbox}/*.md", debounce: 50ms{subscription}}}
{agent}"#,
                retries = extra.max_retries,
                state = dir.path().join("state").display(),
                bin = agentd_bin().display(),
                inbox = inbox.display(),
                server = extra.server,
                subscription = extra.subscription,
                agent = extra.agent,
                top = extra.top,
            ),
        );
        InboxAgent {
            dir,
            config,
            inbox,
            name: name.to_owned(),
            key: key.to_owned(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn workdir(&self) -> PathBuf {
        self.state().join("agents").join(&self.name).join("work")
    }

    /// Starts agentd (without waiting for the agent).
    pub fn start(&self) -> Daemon {
        Daemon::start(&self.config, &self.state(), &[("TEST_LLM_KEY", &self.key)])
    }

    /// Starts agentd and waits until the agent runs.
    pub fn start_running(&self) -> Daemon {
        let d = self.start();
        d.running_pid(&self.name);
        d
    }
}
