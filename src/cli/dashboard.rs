//! `agentd dashboard`: prints the link that logs a browser into the
//! dashboard of the agentd running on this state dir. The link carries a
//! login code that expires in a few minutes, not the token; reading the
//! token file takes agentd's own user (or root).

use std::process::ExitCode;

use clap::Args;

use super::{Global, LedgerArgs};

#[derive(Debug, Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// How long the link may be used to log in, in seconds (at most 600).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub valid: i64,
}

pub fn run(global: &Global, args: &DashboardArgs) -> anyhow::Result<ExitCode> {
    let dir = super::state_dir(global, &args.ledger)?;
    let url = crate::http::login_url(&dir, args.valid.clamp(1, crate::http::auth::LOGIN_MAX_AGE_S))?;
    outln!("{url}");
    Ok(ExitCode::SUCCESS)
}
