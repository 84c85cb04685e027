//! `agentd sandbox run PROFILE [--workdir DIR] [--config FILE] -- CMD...`
//!
//! Lets a user try a policy by hand: the command's output is passed
//! through, a one-line summary goes to stderr, and the exit status is the
//! command's (128 + signal when killed, 124 on timeout, like `timeout(1)`).
//! Profiles resolve like an agent's: `sandbox/NAME.yaml` next to the config
//! file first, then the profiles built into the binary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::sandbox::{self as sb, Backend};

#[derive(Debug, Clone, clap::Args)]
pub struct SandboxRunArgs {
    /// Profile name: `sandbox/NAME.yaml` next to the config, or built in
    /// (default, strict, networked, web).
    #[arg(value_name = "PROFILE")]
    pub profile: String,
    /// Directory the command runs in, writable inside the sandbox
    /// (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Config file whose directory holds `sandbox/` (default: current directory).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// As root: the unprivileged user to run the command as, `UID[:GID]`
    /// (default: the workdir's owner; code never runs as root).
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub uid: Option<(u32, u32)>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `UID` or `UID:GID` (the gid defaults to the uid).
fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let num = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| format!("{s:?}: expected UID or UID:GID, numbers"))
    };
    Ok((num(u)?, num(g)?))
}

/// Exit status of `timeout(1)` when the command timed out.
const EXIT_TIMED_OUT: i32 = 124;

pub fn run(args: &SandboxRunArgs) -> anyhow::Result<i32> {
    let config_dir = args
        .config
        .as_ref()
        .map(|f| f.parent().map(PathBuf::from).unwrap_or_default());
    let (policy, origin) = crate::config::resolve_sandbox_profile(&args.profile, config_dir.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("sandbox profile {:?}", args.profile))?;
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("current directory")?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = rt
        .block_on(sb::run(
            &policy,
            &workdir,
            &args.command,
            &sb::Exposed {
                user: args.uid,
                ..Default::default()
            },
        ))
        .with_context(|| format!("running under profile {}", origin.display()))?;

    std::io::stdout().write_all(outcome.stdout.as_bytes())?;
    std::io::stdout().flush()?;
    let mut err = std::io::stderr();
    err.write_all(outcome.stderr.as_bytes())?;
    for c in &outcome.egress {
        let verdict = match &c.decision {
            sb::egress::Decision::Allowed { rule } => format!("allowed ({rule})"),
            sb::egress::Decision::Denied { reason } => format!("DENIED: {reason}"),
        };
        writeln!(
            err,
            "agentd sandbox: egress {} {}:{} {verdict}, {} B sent, {} B received, {:.3}s{}",
            c.method,
            c.host,
            c.port,
            c.sent,
            c.received,
            c.duration.as_secs_f64(),
            c.error.as_deref().map(|e| format!(", {e}")).unwrap_or_default(),
        )?;
    }
    let status = match (outcome.exit_code, outcome.signal) {
        _ if outcome.timed_out => "timed out, killed".to_string(),
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "no status".to_string(),
    };
    writeln!(
        err,
        "agentd sandbox: {status} after {:.3}s (profile {}, backend {}{}{})",
        outcome.duration.as_secs_f64(),
        origin.display(),
        policy.backend.name(),
        if policy.backend == Backend::None {
            ", NO ISOLATION"
        } else {
            ""
        },
        if outcome.truncated { ", output cut" } else { "" },
    )?;
    Ok(match (outcome.exit_code, outcome.signal) {
        _ if outcome.timed_out => EXIT_TIMED_OUT,
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    })
}
