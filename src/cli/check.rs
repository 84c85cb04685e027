//! `agentd check CONFIG`: validate and summarise.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Config, McpTransport, SubscriptionTarget};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    match config::load(path) {
        Ok(cfg) => {
            out!("{}", summary(&cfg));
            // Warnings do not make a config invalid (exit code 0).
            for w in warnings(&cfg) {
                outln!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.0.len();
            eprintln!("{}: {n} error{}", path.display(), if n == 1 { "" } else { "s" });
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What is valid but unwise: an MCP server started inside an agent's
/// workdir runs as agentd and reads (imports, executes) from a directory
/// sandboxed code writes; a stdio server whose command is not there.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let workdirs: Vec<(String, std::path::PathBuf)> = cfg
        .agents
        .iter()
        .map(|a| {
            let w = crate::state_dir::workdir(&cfg.state_dir, a.name.as_str());
            (a.name.to_string(), std::fs::canonicalize(&w).unwrap_or(w))
        })
        .collect();
    let mut out = Vec::new();
    for a in &cfg.agents {
        for srv in &a.mcp_servers {
            let McpTransport::Stdio { cwd: Some(cwd), .. } = &srv.transport else {
                continue;
            };
            let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.clone());
            if let Some((owner, _)) = workdirs.iter().find(|(_, w)| cwd.starts_with(w)) {
                out.push(format!(
                    "agent {}: server {} starts in {}, inside agent {owner}'s workdir, which sandboxed code \
                     can write: the server (running as agentd) may load what the model planted there; \
                     leave cwd unset",
                    a.name,
                    srv.name,
                    cwd.display()
                ));
            }
        }
    }
    out.extend(missing_commands(cfg));
    out
}

/// A stdio server whose command cannot be found: not on agentd's `PATH`
/// (which servers inherit), or an absolute path that is not there.
pub fn missing_commands(cfg: &Config) -> Vec<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut out = Vec::new();
    for (i, a) in cfg.agents.iter().enumerate() {
        for (j, srv) in a.mcp_servers.iter().enumerate() {
            let McpTransport::Stdio { command, env, .. } = &srv.transport else {
                continue;
            };
            // `agentd` is this binary (resolved when spawned).
            if command == "agentd" {
                continue;
            }
            let search = env
                .get("PATH")
                .map(std::ffi::OsString::from)
                .unwrap_or_else(|| path.clone());
            let found = if command.contains('/') {
                // Relative paths resolve against the server's cwd, known
                // only at spawn: judge absolute ones only.
                !Path::new(command).is_absolute() || is_executable(Path::new(command))
            } else {
                std::env::split_paths(&search).any(|d| is_executable(&d.join(command)))
            };
            if !found {
                out.push(format!(
                    "agents[{i}].mcp_servers[{j}].command: {command:?} (server {}) is not on PATH; \
                     the server will fail to start until it is installed",
                    srv.name
                ));
            }
        }
    }
    out
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A short, human summary of a valid config.
pub fn summary(cfg: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let n = cfg.agents.len();
    let _ = writeln!(
        s,
        "{}: valid, {n} agent{}",
        cfg.path.display(),
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(s, "state dir: {}", cfg.state_dir.display());
    if cfg.ledger.is_shared() {
        // The URL holds no password (a config with one is refused).
        let _ = writeln!(
            s,
            "ledger: {} (fleet member {:?}, lease TTL {}, heartbeat {})",
            cfg.ledger.describe(),
            cfg.fleet.host,
            humantime::format_duration(cfg.fleet.lease_ttl),
            humantime::format_duration(cfg.fleet.heartbeat())
        );
    }
    for a in &cfg.agents {
        let _ = writeln!(
            s,
            "agent {}: model {}, sandbox {} ({})",
            a.name,
            a.model,
            a.sandbox_profile,
            a.sandbox.backend.name()
        );
        if !a.model.starts_with(crate::llm::REPLAY_PREFIX) {
            let key = a.llm.api_key_env.as_deref().unwrap_or("none");
            let _ = writeln!(s, "  llm: {} (key variable {key})", a.llm.base_url);
        }
        for srv in &a.mcp_servers {
            let how = match &srv.transport {
                McpTransport::Stdio { command, args, .. } => {
                    let mut v = vec![command.as_str()];
                    v.extend(args.iter().map(String::as_str));
                    format!("stdio: {}", v.join(" "))
                }
                McpTransport::Http { url, .. } => format!("http: {url}"),
            };
            let _ = writeln!(s, "  server {}: {how}", srv.name);
        }
        for sub in &a.subscriptions {
            let kind = match &sub.target {
                SubscriptionTarget::Resource { .. } => {
                    format!("resource, debounce {}", humantime::format_duration(sub.debounce))
                }
                SubscriptionTarget::Glob { .. } => {
                    format!("glob, debounce {}", humantime::format_duration(sub.debounce))
                }
                SubscriptionTarget::Tool { .. } => {
                    format!("tool poll every {}", humantime::format_duration(sub.interval))
                }
            };
            let _ = writeln!(s, "  subscription {} ({kind})", sub.uri);
        }
        for sch in &a.schedules {
            let first = sch.prompt.lines().next().unwrap_or("");
            let _ = writeln!(s, "  schedule {:?} {}: {first}", sch.cron, sch.timezone);
        }
        for skill in &a.skills {
            let _ = writeln!(s, "  skill {}: {}", skill.name, skill.dir.display());
        }
    }
    s
}
