//! `agentd check CONFIG`: validate and summarise.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, Config, McpTransport, SubscriptionTarget};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    match config::load(path) {
        Ok(cfg) => {
            out!("{}", summary(&cfg));
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
    for a in &cfg.agents {
        let _ = writeln!(
            s,
            "agent {}: model {}, sandbox {} ({})",
            a.name,
            a.model,
            a.sandbox_profile,
            a.sandbox.backend.name()
        );
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
