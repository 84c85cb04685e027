//! `agentd drain [HOST]`: asks a fleet member to give its agents away.
//!
//! The request is a row in the shared ledger (the member's `draining`
//! flag), so it works from any member, or from a machine that is none, and
//! reaches the member even while its control socket is out of reach. The
//! member reads it at its next tick (at once, when `LISTEN` is up): each
//! agent finishes its running task, stops, and gives its lease up; the
//! others take the agents as placement says. Restarting the member (or
//! `--undo`) makes it take agents again.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::{Global, LedgerArgs};
use crate::ledger::Ledger;

#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// The member to drain (default: this host's `fleet.host`, else its hostname).
    pub host: Option<String>,
    /// Wait until the member holds no agent (at most this many seconds).
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
    /// Take agents again: end a drain.
    #[arg(long)]
    pub undo: bool,
}

/// How long a lease may outlive its member: beyond this a member counts as
/// down for the listing (readers have no config to say otherwise).
const ALIVE_WITHIN_MS: i64 = 60_000;

pub fn run(global: &Global, args: &DrainArgs) -> anyhow::Result<ExitCode> {
    let host = match &args.host {
        Some(h) => h.clone(),
        None => match &args.ledger.config {
            Some(c) => crate::config::load(c)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .fleet
                .host
                .clone(),
            None => crate::config::fleet::default_host(),
        },
    };
    let location = super::ledger_location(global, &args.ledger)?;
    if !location.is_shared() {
        anyhow::bail!(
            "{}: a drain moves agents to other fleet members, which share a PostgreSQL ledger; this one is SQLite",
            location.describe()
        );
    }
    let mut ledger = Ledger::open_at(&location)?;
    if !ledger.drain_host(&host, !args.undo)? {
        let members: Vec<String> = ledger.members(ALIVE_WITHIN_MS)?.into_iter().map(|m| m.host).collect();
        anyhow::bail!("no fleet member named {host:?} (members: {})", members.join(", "));
    }
    if args.undo {
        outln!("{host}: takes agents again");
        return Ok(ExitCode::SUCCESS);
    }
    let held = |l: &Ledger| -> anyhow::Result<Vec<String>> {
        Ok(l.members(ALIVE_WITHIN_MS)?
            .into_iter()
            .find(|m| m.host == host)
            .map(|m| m.agents)
            .unwrap_or_default())
    };
    let agents = held(&ledger)?;
    outln!(
        "{host}: draining; {} agent(s) move once their running tasks finish: {}",
        agents.len(),
        agents.join(", ")
    );
    let Some(secs) = args.wait else {
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = held(&ledger)?;
        if left.is_empty() {
            outln!("{host}: drained");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            outln!("{host}: still holds {} after {secs}s", left.join(", "));
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
