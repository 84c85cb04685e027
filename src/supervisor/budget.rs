//! Budgets at run time. After each model call of an agent with a
//! `budget:` (and when it becomes ready), its spend over the window is
//! read back from the ledger's journal and compared with the limits:
//!
//! - reached: the agent is paused with reason `budget` (recorded, so a
//!   restart keeps it paused); with `on_exceed: stop` its running task is
//!   cancelled, else it finishes. Its triggers queue meanwhile. A timer is
//!   set for the moment enough of the window's oldest calls age out.
//! - room again (the timer, or a restart): a budget pause is lifted and
//!   what queued runs. An operator's pause is never lifted here.
//!
//! Nothing is counted in memory: the journal is the only account.

use std::time::Duration;

use super::{Event, Supervisor};
use crate::budget::{self, BudgetSpec, OnExceed};
use crate::control::SpendStatus;
use crate::ledger::{LlmUsage, PauseReason, now_ms};

impl Supervisor {
    /// The agent's budget and its calls in the current window: summed per
    /// model, or one by one (`each`, to tell when the window has room).
    async fn window(&self, name: &str, each: bool) -> Option<(BudgetSpec, Vec<LlmUsage>)> {
        let b = self.agents.get(name)?.spec.budget.clone()?;
        let (n, since) = (name.to_owned(), b.since(now_ms()));
        let r = if each {
            self.ledger.call(move |l| l.llm_usage(Some(&n), since)).await
        } else {
            self.ledger.call(move |l| l.llm_usage_by_model(Some(&n), since)).await
        };
        match r {
            Ok(usage) => Some((b, usage)),
            Err(e) => {
                tracing::warn!(agent = name, "cannot read its spend from the ledger: {e}");
                None
            }
        }
    }

    /// Spend and what is left, for status.
    pub(super) async fn spend_status(&self, name: &str) -> Option<SpendStatus> {
        let (b, usage) = self.window(name, false).await?;
        let s = budget::spent(&usage, &self.cfg.prices);
        let (left_tokens, left_cost_usd) = b.left(&s);
        Some(SpendStatus {
            per: humantime::format_duration(b.per).to_string(),
            tokens: s.tokens(),
            cost_usd: s.cost_usd,
            left_tokens,
            left_cost_usd,
        })
    }

    /// Compares the agent's spend with its budget and pauses, stops or
    /// resumes it accordingly (see the module doc).
    pub(super) async fn check_budget(&mut self, name: &str) {
        let by_budget = self
            .agents
            .get(name)
            .and_then(|a| a.pause.as_ref())
            .is_some_and(|p| p.reason == PauseReason::Budget);
        let Some((b, usage)) = self.window(name, false).await else {
            // No budget (any more): a budget pause has nothing to wait for.
            if by_budget && self.agents.get(name).is_some_and(|a| a.spec.budget.is_none()) {
                let _ = self.resume(name, "budget (the agent has no budget any more)").await;
            }
            return;
        };
        let s = budget::spent(&usage, &self.cfg.prices);
        for model in &s.unpriced {
            if self.unpriced_warned.insert(model.clone()) {
                tracing::warn!(
                    agent = name,
                    "model {model:?} has no price (add it under prices:); its calls count tokens but no cost"
                );
            }
        }
        if !b.exceeded(&s) {
            if by_budget {
                let _ = self.resume(name, "budget (the window has room again)").await;
            }
            return;
        }
        let paused = self.agents.get(name).is_some_and(|a| a.is_paused());
        let note = over_note(&b, &s);
        if !paused {
            if let Err(e) = self
                .pause(name, PauseReason::Budget, "budget", Some(note.clone()))
                .await
            {
                tracing::error!(agent = name, "budget reached but the pause could not be recorded: {e}");
                return;
            }
            if b.on_exceed == OnExceed::Stop
                && let Some(task) = self.running_task(name)
                && let Err(e) = self.cancel_task(task, "budget", Some(note)).await
            {
                tracing::warn!(agent = name, "cannot stop task {task} on budget: {e}");
            }
        }
        let budget_paused = self
            .agents
            .get(name)
            .and_then(|a| a.pause.as_ref())
            .is_some_and(|p| p.reason == PauseReason::Budget);
        if budget_paused
            && let Some((b, each)) = self.window(name, true).await
            && let Some(at) = b.room_at(&each, &self.cfg.prices)
        {
            self.recheck_budget_at(name, at);
        }
    }

    /// Looks at the budget again at `at_ms` (a newer timer replaces this one).
    fn recheck_budget_at(&mut self, name: &str, at_ms: i64) {
        let Some(a) = self.agents.get_mut(name) else { return };
        a.budget_recheck += 1;
        let seq = a.budget_recheck;
        // A little past the moment, so the call has surely left the window.
        let wait = Duration::from_millis((at_ms - now_ms()).max(0) as u64 + 50);
        tracing::info!(
            agent = name,
            "budget reached; looking again in {}",
            humantime::format_duration(super::trim(wait))
        );
        let events = self.events.clone();
        let agent = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = events.send(Event::BudgetRecheck { agent, seq });
        });
    }

    pub(super) async fn on_budget_recheck(&mut self, name: &str, seq: u64) {
        if self.agents.get(name).is_some_and(|a| a.budget_recheck == seq) {
            self.check_budget(name).await;
        }
    }
}

/// `12,000 of 10,000 tokens in the last 1d`, for the pause's note.
fn over_note(b: &BudgetSpec, s: &budget::Spent) -> String {
    let per = humantime::format_duration(b.per);
    let mut parts = Vec::new();
    if let Some(t) = b.tokens {
        parts.push(format!("{} of {t} tokens", s.tokens()));
    }
    if let Some(c) = b.cost_usd {
        parts.push(format!("${:.4} of ${c}", s.cost_usd));
    }
    format!("{} in the last {per}", parts.join(", "))
}
