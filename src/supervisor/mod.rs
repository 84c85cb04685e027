//! The supervisor: `agentd CONFIG`. Owns the ledger (through its writer
//! thread), the config watcher, the control socket, and one child process
//! per agent; nothing else writes the ledger or starts agents.
//!
//! Everything happens on one event loop (a `current_thread` runtime on the
//! main thread): child messages and exits, restart timers, signals, config
//! changes and control requests arrive as [`Event`]s or channel messages and
//! are handled one at a time, so agent state needs no locks. Children are
//! spawned from this thread too, which `PR_SET_PDEATHSIG` requires.
//!
//! REPL lines ([`talk`]) and cron firings ([`schedules`]) arrive the same
//! way: the REPL's threads and the schedule timer only deliver; the
//! decisions and every ledger write happen here.
//!
//! Where things live: this file has the loop and the event types; an
//! agent's slot and its lifecycle enum are [`slot`]; process starts, stops,
//! heartbeats and exits [`lifecycle`]; tasks between ledger and children
//! [`tasks`]; one handler per control request [`requests`]; reload
//! [`reload`] with its pure [`diff`]; writes that a full disk refuses
//! [`ledger_writes`] and [`degraded`]; agents' users [`users`]; events for
//! watchers and notifications out [`announce`]. The HTTP API
//! ([`crate::http`]) sends its requests down the control socket's channel
//! and its webhook deliveries down one of their own.
//!
//!
//! Observability: the supervisor owns the [`Metrics`] registry and counts
//! what it already sees here (lifecycle changes, claims and task ends, the
//! children's journal steps and reconnect reports); it opens each task's
//! trace span at dispatch and ends it with the task (`task_spans`).

mod announce;
mod approvals;
mod budget;
mod cancel;
mod child;
mod degraded;
mod diff;
mod fleet;
mod heartbeat;
mod ledger_thread;
mod ledger_writes;
mod lifecycle;
mod pause;
mod reload;
mod requests;
pub mod restart;
mod schedules;
mod slot;
mod systemd;
mod talk;
mod tasks;
mod users;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{AgentSpec, Config};
use crate::control::{self, Response};
use crate::feed::Feed;
use crate::http;
use crate::ledger::{self, Ledger};
use crate::metrics::Metrics;
use crate::protocol::FromChild;
use crate::repl::{self, Repl};
use degraded::{Deferred, Degraded};
use ledger_thread::LedgerThread;
use restart::Exit;
use slot::{Agent, Lifecycle};
use talk::{Console, Waiters, Watched};
use watch::ConfigWatcher;

/// The longest the integrity check of the ledger may hold up the start.
const INTEGRITY_BUDGET: Duration = Duration::from_secs(10);
/// Quiet time after a config file event before reloading.
pub(super) const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);
/// After the grace period, a child gets SIGTERM; this much later, SIGKILL.
pub(super) const TERM_AFTER_GRACE: Duration = Duration::from_secs(1);
pub(super) const KILL_AFTER_TERM: Duration = Duration::from_secs(3);

/// Everything the event loop reacts to, besides signals and control requests.
#[derive(Debug)]
pub enum Event {
    Child {
        agent: String,
        generation: u64,
        msg: FromChild,
    },
    /// A line from a child (of any generation: it is only logged) that
    /// is not a protocol message.
    BadLine {
        agent: String,
        error: String,
    },
    Exited {
        agent: String,
        generation: u64,
        exit: Exit,
    },
    RestartDue {
        agent: String,
        generation: u64,
    },
    Escalate {
        agent: String,
        generation: u64,
        signal: Signal,
    },
    /// Time to ping this child, or to call it hung.
    Heartbeat {
        agent: String,
        generation: u64,
    },
    ConfigChanged,
    /// Time to look at a budget-paused agent's window again; `seq` names
    /// the timer (a newer one replaces it).
    BudgetRecheck {
        agent: String,
        seq: u64,
    },
    /// An approval's timeout is due (it may have been answered since).
    ApprovalTimeout {
        id: i64,
    },
    /// A notification about a task was attempted: journal it.
    Noted {
        agent: String,
        task: crate::domain::TaskId,
        step: crate::domain::NewStep,
    },
    /// A reload's parse is done (see [`Supervisor::begin_reload`]).
    ConfigParsed {
        seq: u64,
        result: Result<Config, String>,
        by: ReloadBy,
    },
}

/// Who asked for a reload, and where its answer goes.
#[derive(Debug)]
pub enum ReloadBy {
    Sighup,
    Watcher,
    Control(tokio::sync::oneshot::Sender<Response>),
}

pub struct Supervisor {
    cfg: Config,
    /// This host as a member of a fleet (a shared PostgreSQL ledger).
    fleet: Option<fleet::Fleet>,
    ledger: LedgerThread,
    agents: BTreeMap<String, Agent>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    /// Set once shutdown begins: when it must be over.
    stop_deadline: Option<tokio::time::Instant>,
    reload_at: Option<tokio::time::Instant>,
    ready_sent: bool,
    started: Instant,
    watcher: Option<ConfigWatcher>,
    record: Option<PathBuf>,
    console: Option<Console>,
    /// REPL tasks whose replies stream to the REPL.
    watched: HashMap<crate::domain::TaskId, Watched>,
    waiters: Waiters,
    /// `--state-dir` was given: the config's `state_dir` does not apply.
    state_dir_overridden: bool,
    /// The latest reload started; older parses are dropped when they land.
    reload_seq: u64,
    /// The ledger cannot be written: why, and the writes kept meanwhile.
    degraded: Degraded,
    /// Agents' own users, when agentd runs as root. Assigned on the
    /// blocking thread that makes agents' directories (a new assignment
    /// looks the uid up in the password database, which may be a round
    /// trip to systemd-userdbd), one start at a time.
    users: Option<Arc<std::sync::Mutex<users::AgentUsers>>>,
    /// Makes agent processes (through the zygote).
    spawner: child::Spawner,
    /// Counted here, rendered for `agentd metrics` and `GET /metrics`.
    metrics: Arc<Metrics>,
    /// The trace span of each running task (disabled unless traces are exported).
    task_spans: HashMap<crate::domain::TaskId, tracing::Span>,
    /// Models without a price already named in the log (said once).
    unpriced_warned: std::collections::BTreeSet<String>,
    /// What happens, for the HTTP API's event stream ([`announce`]).
    feed: Arc<Feed>,
    /// Each agent as last announced on the feed.
    announced_agents: BTreeMap<String, announce::AgentView>,
    /// The agents that take webhooks, for the HTTP server; replaced on reload.
    webhooks: tokio::sync::watch::Sender<http::Webhooks>,
}

/// Runs the supervisor until it is stopped; the process's exit code.
/// `record`: record every agent's model replies into cassettes in this dir.
/// `repl`: run the REPL on stdin, in this mode.
/// `state_dir_overridden`: `--state-dir` was given, so the config's `state_dir` does not apply.
pub fn run(
    cfg: Config,
    record: Option<PathBuf>,
    state_dir_overridden: bool,
    repl: Option<repl::Mode>,
) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(cfg, record, state_dir_overridden, repl))
}

/// The config's ledger; a SQLite one always in the state dir agentd runs
/// with (`--state-dir` may have moved it).
fn ledger_location(cfg: &Config) -> ledger::Location {
    match &cfg.ledger {
        ledger::Location::Sqlite(_) => ledger::Location::Sqlite(crate::state_dir::ledger(&cfg.state_dir)),
        shared => shared.clone(),
    }
}

/// Leaves the shared ledger's URL (never a password) in the state dir, for
/// readers run without a config; removes a stale one with SQLite.
fn note_ledger_url(state_dir: &std::path::Path, location: &ledger::Location) {
    let path = crate::state_dir::ledger_url(state_dir);
    let r = match location {
        ledger::Location::Postgres(_) => std::fs::write(&path, format!("{}\n", location.describe())),
        ledger::Location::Sqlite(_) => match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
    };
    if let Err(e) = r {
        tracing::warn!("{}: {e}", path.display());
    }
}

async fn run_async(
    cfg: Config,
    record: Option<PathBuf>,
    state_dir_overridden: bool,
    repl_mode: Option<repl::Mode>,
) -> anyhow::Result<ExitCode> {
    // Everything agentd creates is its own alone unless it says otherwise
    // (agents' directories are given their modes explicitly).
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    crate::state_dir::prepare(&cfg.state_dir, root)?;
    let users = root.then(|| {
        Arc::new(std::sync::Mutex::new(users::AgentUsers::load(
            &cfg.state_dir,
            cfg.agent_uids.clone(),
        )))
    });
    // One supervisor per state dir: two would both run the same tasks.
    let _lock = crate::state_dir::lock(&cfg.state_dir)?;
    // Three descriptors per agent: a thousand do not fit in 1,024.
    crate::nofile::raise(cfg.agents.len());
    // Before any agent starts: cgroups for sandbox runs, and what a killed
    // agentd left behind.
    crate::sandbox::contain::at_supervisor_start(&cfg.state_dir);
    let location = ledger_location(&cfg);
    // PostgreSQL's client runs a runtime of its own, which cannot start on
    // this (async) thread: the ledger is opened on one of its own, as it is
    // then used on the ledger thread.
    let ledger = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<Ledger> {
            let mut l = Ledger::open_at(&location)?;
            if location.is_shared() {
                l.join_fleet(&cfg.fleet.host, &cfg.fleet.labels)
                    .context("joining the fleet")?;
            }
            Ok(l)
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("opening the ledger panicked")))
    })?;
    note_ledger_url(&cfg.state_dir, &location);
    // A shared ledger makes this host a fleet member; what wakes it when
    // another member queues work for one of its agents comes on `wake_rx`.
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<String>();
    let fleet = match &location {
        ledger::Location::Postgres(target) => {
            ledger::wake::listen(target.clone(), move |agent| wake_tx.send(agent).is_ok())
                .context("starting the fleet listener")?;
            tracing::info!("fleet member {:?} on {}", cfg.fleet.host, location.describe());
            Some(fleet::Fleet::new((*cfg.fleet).clone()))
        }
        ledger::Location::Sqlite(_) => {
            drop(wake_tx);
            None
        }
    };
    // Before a single row is trusted: a damaged ledger is refused, never half-run.
    match ledger.check_integrity(INTEGRITY_BUDGET)? {
        ledger::Integrity::Ok { took } => tracing::debug!("ledger integrity check passed in {took:?}"),
        ledger::Integrity::Unfinished { budget } => tracing::warn!(
            "ledger integrity check did not finish within {}; starting without it",
            humantime::format_duration(budget)
        ),
    }
    let metrics = Arc::new(Metrics::new());
    let ledger = LedgerThread::start(ledger, metrics.ledger_duration.clone()).context("starting the ledger thread")?;

    let socket = crate::state_dir::socket(&cfg.state_dir);
    // The lock proves no other agentd owns this state dir: a socket left
    // here is stale.
    let _ = std::fs::remove_file(&socket);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let operators = control::Operators {
        // SAFETY: geteuid cannot fail.
        own_uid: unsafe { libc::geteuid() },
        group: cfg.control_group,
    };
    control::serve(&socket, operators, control_tx.clone())
        .with_context(|| format!("cannot listen on {}", socket.display()))?;

    // The HTTP API sends control requests down the socket's own channel;
    // webhook deliveries come on their own.
    let feed = Feed::new();
    let (webhooks, webhooks_rx) = tokio::sync::watch::channel(webhook_specs(&cfg));
    let (deliveries_tx, mut deliveries_rx) = mpsc::unbounded_channel();
    let http_url = match &cfg.http {
        Some(listen) => {
            let links = http::Links {
                control: control_tx,
                deliveries: deliveries_tx,
                feed: feed.clone(),
                webhooks: webhooks_rx,
                state_dir: cfg.state_dir.clone(),
                ledger: location.clone(),
            };
            http::start(listen, links).await?
        }
        None => {
            drop((control_tx, deliveries_tx));
            None
        }
    };

    let (events, mut events_rx) = mpsc::unbounded_channel();
    let mut sup = Supervisor {
        agents: BTreeMap::new(),
        ledger,
        events: events.clone(),
        generation: 0,
        stop_deadline: None,
        reload_at: None,
        ready_sent: false,
        started: Instant::now(),
        watcher: None,
        record,
        console: None,
        watched: HashMap::new(),
        waiters: HashMap::new(),
        state_dir_overridden,
        reload_seq: 0,
        degraded: Degraded::default(),
        users,
        spawner: child::Spawner::new(),
        metrics,
        task_spans: HashMap::new(),
        unpriced_warned: Default::default(),
        feed,
        announced_agents: BTreeMap::new(),
        webhooks,
        fleet,
        cfg,
    };
    // In a fleet, other members' running tasks are theirs: each agent's
    // are recovered when its lease is taken (see fleet.rs).
    if sup.fleet.is_none() {
        sup.recover_orphaned_tasks().await?;
    }
    sup.arm_pending_approvals().await;
    sup.watch_config();
    // Pauses outlive agentd: an agent paused before starts paused.
    let pauses = sup
        .ledger
        .call(|l| l.pauses())
        .await
        .context("reading the agents' recorded pauses")?;
    let specs: Vec<AgentSpec> = sup.cfg.agents.clone();
    let mut names = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.name.to_string();
        let mut slot = Agent::new(spec);
        slot.pause = pauses.iter().find(|p| p.agent == name).cloned();
        if let Some(p) = &slot.pause {
            tracing::info!(agent = name, "starts paused ({}, by {})", p.reason, p.by);
        }
        sup.agents.insert(name.clone(), slot);
        // Catch-up tasks are queued before the child is up, so it takes
        // them first.
        sup.arm_schedules(&name).await;
        names.push(name);
    }
    // In the config's order, as before batching.
    sup.start_agents(&names.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    // A fleet member takes its share of the agents now.
    sup.fleet_tick().await;
    sup.maybe_ready();
    let (repl_tx, mut repl_rx) = mpsc::unbounded_channel();
    if let Some(mode) = repl_mode {
        let current = sup.cfg.agents.first().map(|a| a.name.to_string());
        let history = sup.cfg.state_dir.join("repl_history");
        let repl = Repl::start(mode, talk::prompt_for(current.as_deref()), history, repl_tx.clone())
            .context("starting the REPL")?;
        sup.console = Some(Console { repl, current });
    }
    drop(repl_tx);
    let http_note = http_url.map(|u| format!(", HTTP API {u}")).unwrap_or_default();
    tracing::info!(
        "agentd {} supervising {} agents (state dir {}, control socket {}{http_note})",
        env!("CARGO_PKG_VERSION"),
        sup.agents.len(),
        sup.cfg.state_dir.display(),
        socket.display()
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let watchdog = systemd::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut interrupts = 0;
    let mut fleet_tick = tokio::time::interval(
        sup.fleet
            .as_ref()
            .map(|f| f.tick_every())
            .unwrap_or(Duration::from_secs(3600)),
    );
    fleet_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let parked = sup.degraded.parked.clone();
    let code = loop {
        if sup.stop_deadline.is_some() && sup.agents.values().all(|a| a.life.child().is_none()) {
            break ExitCode::SUCCESS;
        }
        let reload_at = sup.reload_at;
        let stop_deadline = sup.stop_deadline;
        let schedule_at = sup.next_schedule_at();
        let degraded = sup.degraded.is_degraded();
        tokio::select! {
            Some(ev) = events_rx.recv() => sup.handle(ev).await,
            Some((req, reply)) = control_rx.recv() => sup.on_control(req, reply).await,
            Some(d) = deliveries_rx.recv() => sup.on_delivery(d).await,
            Some(input) = repl_rx.recv() => sup.on_repl(input).await,
            _ = sleep_until_opt(schedule_at), if schedule_at.is_some() => sup.fire_schedules().await,
            _ = tokio::time::sleep(degraded::RETRY), if degraded => sup.retry_kept().await,
            _ = parked.refused.notified() => sup.take_back(),
            _ = sigterm.recv() => sup.begin_stop("SIGTERM"),
            _ = sigint.recv() => {
                interrupts += 1;
                if interrupts > 1 {
                    tracing::warn!("second interrupt: stopping now");
                    sup.kill_all();
                    break ExitCode::from(130);
                }
                sup.begin_stop("SIGINT");
            }
            _ = sighup.recv() => sup.begin_reload(ReloadBy::Sighup),
            _ = sleep_until_opt(reload_at), if reload_at.is_some() => {
                sup.reload_at = None;
                sup.begin_reload(ReloadBy::Watcher);
            }
            _ = sleep_until_opt(stop_deadline), if stop_deadline.is_some() => {
                tracing::warn!("grace period over: killing the remaining agents");
                sup.kill_all();
                sup.stop_deadline = Some(tokio::time::Instant::now() + KILL_AFTER_TERM);
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => systemd::watchdog(),
            _ = fleet_tick.tick(), if sup.fleet.is_some() => sup.fleet_tick().await,
            Some(agent) = wake_rx.recv() => sup.on_wake(agent).await,
        }
        sup.announce_agents();
    };
    // Release the socket first, so clients see "not running", not a hang;
    // `agentd dashboard` then says the API is not there.
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(crate::state_dir::http_url(&sup.cfg.state_dir));
    if let Some(c) = &mut sup.console {
        c.repl.finish();
    }
    // One last replay: the checkpoint below then also waits for the
    // journal steps still on their way to the ledger thread.
    if sup.degraded.behind() {
        sup.retry_kept().await;
    }
    sup.leave_fleet().await;
    let _ = sup.ledger.call(|l| l.checkpoint()).await;
    sup.take_back();
    if !sup.degraded.kept.is_empty() {
        tracing::error!(
            "stopping with {} ledger writes unmade (the ledger still refuses writes); running tasks among them are re-queued at the next start",
            sup.degraded.kept.len()
        );
    }
    crate::sandbox::contain::at_supervisor_stop(&sup.cfg.state_dir);
    tracing::info!("agentd stopped");
    Ok(code)
}

/// The agents that take webhooks, as the HTTP server looks them up.
fn webhook_specs(cfg: &Config) -> http::Webhooks {
    Arc::new(
        cfg.agents
            .iter()
            .filter_map(|a| a.webhook.clone().map(|w| (a.name.to_string(), w)))
            .collect(),
    )
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    fn workdir(&self, agent: &str) -> PathBuf {
        crate::state_dir::workdir(&self.cfg.state_dir, agent)
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Child { agent, generation, msg } => {
                if self
                    .agents
                    .get(&agent)
                    .is_some_and(|a| a.life.child_of(generation).is_some())
                {
                    self.on_child_message(&agent, msg).await;
                }
            }
            Event::BadLine { agent, error } => {
                tracing::warn!(agent, "unreadable line from agent process: {error}");
            }
            Event::Exited {
                agent,
                generation,
                exit,
            } => self.on_exit(&agent, generation, exit).await,
            Event::RestartDue { agent, generation } => {
                let due = self
                    .agents
                    .get(&agent)
                    .is_some_and(|a| matches!(a.life, Lifecycle::Backoff { generation: g } if g == generation));
                if due && self.stop_deadline.is_none() {
                    self.start_agent(&agent).await;
                }
            }
            Event::Escalate {
                agent,
                generation,
                signal,
            } => {
                if let Some(c) = self.agents.get(&agent).and_then(|a| a.life.child_of(generation)) {
                    tracing::warn!(agent, pid = c.pid, "agent did not stop in time: sending {signal}");
                    c.signal(signal);
                    if signal == Signal::SIGKILL {
                        c.kill_group();
                    }
                }
            }
            Event::Heartbeat { agent, generation } => self.on_heartbeat(&agent, generation),
            Event::BudgetRecheck { agent, seq } => self.on_budget_recheck(&agent, seq).await,
            Event::ApprovalTimeout { id } => self.on_approval_timeout(id).await,
            Event::ConfigParsed { seq, result, by } => self.finish_reload(seq, result, by).await,
            Event::Noted { agent, task, step } => self.on_noted(agent, task, step).await,
            Event::ConfigChanged => {
                if self.stop_deadline.is_none() {
                    self.reload_at = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE);
                }
            }
        }
    }

    /// READY=1 once every agent has started (or failed trying).
    fn maybe_ready(&mut self) {
        if self.ready_sent || self.agents.values().any(|a| a.life.is_starting()) {
            return;
        }
        self.ready_sent = true;
        let status = self.status_line();
        tracing::info!("ready: {status}");
        systemd::ready(&status);
    }

    fn status_line(&self) -> String {
        let count = |s: &str| self.agents.values().filter(|a| a.life.name() == s).count();
        let degraded = self
            .degraded
            .cause()
            .map(|c| format!("; DEGRADED: {c}"))
            .unwrap_or_default();
        format!(
            "{} agents: {} running, {} starting, {} failed{degraded}",
            self.agents.len(),
            count("running"),
            count("starting") + count("backoff"),
            count("failed")
        )
    }

    fn update_status(&self) {
        if self.ready_sent {
            systemd::status(&self.status_line());
        }
    }
}

/// Durations for humans: whole milliseconds.
pub(super) fn trim(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
