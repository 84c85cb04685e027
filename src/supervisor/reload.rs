//! Hot reload: watch the config's files, parse a changed config off the
//! event loop, and apply the [`super::diff::ConfigDiff`] it makes.

use super::restart::Restarts;
use super::slot::{AfterExit, Agent};
use super::watch::ConfigWatcher;
use super::{Event, ReloadBy, Supervisor, diff, systemd};
use crate::config::{self, Config};
use crate::control::Response;

impl Supervisor {
    pub(super) fn watch_config(&mut self) {
        self.watcher = None;
        match ConfigWatcher::start(&self.cfg, self.events.clone()) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => tracing::warn!("hot reload is off: cannot watch config files: {e}"),
        }
    }

    /// Parses the config off the event loop (a large one takes a while);
    /// [`Event::ConfigParsed`] brings the result back to [`Self::finish_reload`].
    pub(super) fn begin_reload(&mut self, by: ReloadBy) {
        systemd::reloading();
        self.reload_seq += 1;
        let seq = self.reload_seq;
        let path = self.cfg.path.clone();
        let events = self.events.clone();
        std::thread::Builder::new()
            .name("config-parse".into())
            .spawn(move || {
                let result = config::load(&path).map_err(|e| e.to_string());
                let _ = events.send(Event::ConfigParsed { seq, result, by });
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::error!("cannot start the config parser thread: {e}"));
    }

    /// Applies a parsed config, unless a newer reload started since.
    pub(super) async fn finish_reload(&mut self, seq: u64, result: Result<Config, String>, by: ReloadBy) {
        if seq != self.reload_seq {
            if let ReloadBy::Control(reply) = by {
                let _ = reply.send(Response::error("superseded by a newer reload"));
            }
            return;
        }
        let outcome = self.reload(result).await;
        match (by, outcome) {
            (ReloadBy::Control(reply), Ok(summary)) => {
                let _ = reply.send(Response::ok(summary));
            }
            (ReloadBy::Control(reply), Err(e)) => {
                tracing::error!("reload requested over the control socket failed; agents keep running:\n{e}");
                let _ = reply.send(Response::error(format!("config rejected; agents keep running:\n{e}")));
            }
            (ReloadBy::Sighup, Err(e)) => tracing::error!("reload on SIGHUP failed; agents keep running:\n{e}"),
            (ReloadBy::Watcher, Err(e)) => tracing::error!("config change rejected; agents keep running:\n{e}"),
            (_, Ok(_)) => {}
        }
    }

    pub(super) async fn reload(&mut self, result: Result<Config, String>) -> Result<serde_json::Value, String> {
        let mut new = match result {
            Ok(c) => c,
            Err(errors) => {
                systemd::ready(&format!("{}; last reload rejected", self.status_line()));
                return Err(errors);
            }
        };
        if new.state_dir != self.cfg.state_dir && !self.state_dir_overridden {
            tracing::warn!(
                "state_dir changed to {}; that takes a restart of agentd (keeping {})",
                new.state_dir.display(),
                self.cfg.state_dir.display()
            );
        }
        new.state_dir = self.cfg.state_dir.clone();
        let running = self.agents.iter().map(|(name, a)| (name.clone(), &a.spec)).collect();
        let diff = diff::ConfigDiff::between(&running, &new);
        for name in &diff.remove {
            if self.stop_agent(name, AfterExit::Remove, self.cfg.shutdown_grace) {
                self.agents.remove(name);
            }
        }
        for spec in &diff.add {
            let name = spec.name.to_string();
            let mut slot = Agent::new(spec.clone());
            slot.pause = self.recorded_pause(&name).await.unwrap_or_else(|e| {
                tracing::warn!(agent = name, "cannot read its recorded pause: {e}");
                None
            });
            self.agents.insert(name.clone(), slot);
            self.arm_schedules(&name).await;
        }
        let added: Vec<&str> = diff.add.iter().map(|s| s.name.as_str()).collect();
        self.start_agents(&added).await;
        for spec in &diff.change {
            let name = spec.name.to_string();
            let Some(a) = self.agents.get_mut(&name) else { continue };
            a.restarts = Restarts::new(spec.restart.clone());
            a.spec = spec.clone();
            a.last_error = None;
            self.arm_schedules(&name).await;
            if self.stop_agent(&name, AfterExit::StartAgain, self.cfg.shutdown_grace) {
                self.start_agent(&name).await;
            }
        }
        if new.http != self.cfg.http {
            tracing::warn!("http changed; that takes a restart of agentd (the API keeps its address)");
        }
        self.cfg = new;
        self.webhooks.send_replace(super::webhook_specs(&self.cfg));
        self.watch_config();
        let summary = diff.summary();
        tracing::info!(
            "config reloaded: added {}, removed {}, restarted {}, {} unchanged",
            summary["added"],
            summary["removed"],
            summary["restarted"],
            diff.unchanged.len()
        );
        systemd::ready(&self.status_line());
        Ok(summary)
    }
}
