//! `agentd spend`: model spend per agent and model over a window, read
//! from the ledger (so it works while agentd is down). Prices and budgets
//! come from the config when `--config` names it, else the built-in price
//! table applies and no budget is known.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{Global, LedgerArgs};
use crate::budget::{self, AgentSpend};
use crate::ledger::now_ms;

#[derive(Debug, Args)]
pub struct SpendArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Only this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// The window (e.g. 1d, 12h); default: each agent's budget window, else 1d.
    #[arg(long, value_name = "DURATION", value_parser = crate::yaml::parse_duration)]
    pub per: Option<Duration>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &Global, args: &SpendArgs) -> anyhow::Result<ExitCode> {
    let cfg = match &args.ledger.config {
        Some(c) => Some(crate::config::load(c).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let ledger = super::open_reader(global, &args.ledger)?;
    let prices = cfg.as_ref().map(|c| c.prices.clone()).unwrap_or_default();
    let now = now_ms();
    // Configured agents, and any other agent that spent in the window.
    let mut names: BTreeSet<String> = cfg
        .iter()
        .flat_map(|c| c.agents.iter().map(|a| a.name.to_string()))
        .collect();
    let widest = args.per.unwrap_or(budget::DEFAULT_WINDOW);
    names.extend(
        ledger
            .llm_usage_by_model(None, now - widest.as_millis() as i64)?
            .into_iter()
            .map(|u| u.agent),
    );
    let mut out = Vec::new();
    for name in names.into_iter().filter(|n| args.agent.as_ref().is_none_or(|a| a == n)) {
        let b = cfg.as_ref().and_then(|c| c.agent(&name)).and_then(|a| a.budget.clone());
        let per = args.per.or(b.as_ref().map(|b| b.per)).unwrap_or(budget::DEFAULT_WINDOW);
        let since = now - per.as_millis() as i64;
        let usage = ledger.llm_usage_by_model(Some(&name), since)?;
        out.push(budget::report(&name, per, since, &usage, &prices, b.as_ref()));
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(agents: &[AgentSpend]) -> anyhow::Result<()> {
    outln!(
        "{:<16} {:<24} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "AGENT",
        "MODEL",
        "CALLS",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "COST_USD"
    );
    for a in agents {
        for m in &a.models {
            let cost = m
                .cost_usd
                .map(|c| format!("{c:.4}"))
                .unwrap_or_else(|| "no price".into());
            outln!(
                "{:<16} {:<24} {:>6} {:>10} {:>10} {:>10} {:>10}",
                a.agent,
                m.model,
                m.calls,
                m.input_tokens,
                m.output_tokens,
                m.cached_tokens,
                cost
            );
        }
        let status = crate::control::SpendStatus {
            per: a.per.clone(),
            tokens: a.tokens,
            cost_usd: a.cost_usd,
            left_tokens: a.left_tokens,
            left_cost_usd: a.left_cost_usd,
        };
        outln!("{:<16} total: {}", a.agent, crate::control::spend_line(&status));
    }
    Ok(())
}
