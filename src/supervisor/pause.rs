//! Pausing and resuming agents. A pause is written to the ledger before it
//! takes effect, with its reason (an operator, a spent budget) and who
//! asked, so a restarted agentd starts a paused agent paused and status can
//! say why. A paused agent's process keeps running and its triggers keep
//! queueing (coalesced as usual); it is only given no task.

use super::Supervisor;
use crate::ledger::{Pause, PauseReason, now_ms};

impl Supervisor {
    /// Pauses `name` (or changes why it is paused). A running task goes on
    /// (a budget with `on_exceed: stop` cancels it separately).
    pub(super) async fn pause(
        &mut self,
        name: &str,
        reason: PauseReason,
        by: &str,
        note: Option<String>,
    ) -> Result<(), String> {
        self.known(name)?;
        let pause = Pause {
            agent: name.to_owned(),
            reason,
            by: by.to_owned(),
            note,
            since: now_ms(),
        };
        let p2 = pause.clone();
        self.ledger
            .call(move |l| l.set_pause(&p2))
            .await
            .map_err(|e| format!("cannot record the pause: {e}"))?;
        if let Some(a) = self.agents.get_mut(name) {
            let running = a.life.claim().map(|c| format!("; task {} finishes first", c.task));
            let note = pause.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
            tracing::info!(
                agent = name,
                "paused ({reason}) by {by}{note}{}",
                running.unwrap_or_default()
            );
            a.pause = Some(pause);
        }
        Ok(())
    }

    /// Resumes `name`, whatever paused it; what is queued runs.
    pub(super) async fn resume(&mut self, name: &str, by: &str) -> Result<(), String> {
        self.known(name)?;
        if self.agents.get(name).is_some_and(|a| a.is_paused()) {
            let n = name.to_owned();
            self.ledger
                .call(move |l| l.clear_pause(&n))
                .await
                .map_err(|e| format!("cannot record the resume: {e}"))?;
            if let Some(a) = self.agents.get_mut(name) {
                a.pause = None;
            }
            tracing::info!(agent = name, "resumed by {by}");
        }
        self.dispatch(name).await;
        Ok(())
    }

    /// The recorded pause of `name`, for a slot being created (at start or
    /// when a reload adds the agent back).
    pub(super) async fn recorded_pause(&self, name: &str) -> anyhow::Result<Option<Pause>> {
        let pauses = self.ledger.call(|l| l.pauses()).await?;
        Ok(pauses.into_iter().find(|p| p.agent == name))
    }
}
