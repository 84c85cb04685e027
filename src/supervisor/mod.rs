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

mod child;
mod degraded;
mod diff;
mod heartbeat;
mod ledger_thread;
mod requests;
pub mod restart;
mod schedules;
mod slot;
mod systemd;
mod talk;
mod users;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{self, AgentSpec, Config};
use crate::control::{self, Response};
use crate::ledger::{self, Ledger, LedgerError, SnapshotKind, TaskState, Trigger};
use crate::protocol::{FromChild, PROTOCOL_VERSION, ToChild};
use crate::repl::{self, Repl};
use degraded::{Deferred, Degraded};
use ledger_thread::LedgerThread;
use restart::{Decision, Exit, Restarts};
use slot::{AfterExit, Agent, Claim, Lifecycle, Live};
use talk::{Console, Waiters, Watched};
use watch::ConfigWatcher;

/// The longest the integrity check of the ledger may hold up the start.
const INTEGRITY_BUDGET: Duration = Duration::from_secs(10);
/// Quiet time after a config file event before reloading.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);
/// After the grace period, a child gets SIGTERM; this much later, SIGKILL.
const TERM_AFTER_GRACE: Duration = Duration::from_secs(1);
const KILL_AFTER_TERM: Duration = Duration::from_secs(3);

/// Everything the event loop reacts to, besides signals and control requests.
#[derive(Debug)]
pub enum Event {
    Child {
        agent: String,
        generation: u64,
        msg: FromChild,
    },
    BadLine {
        agent: String,
        generation: u64,
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
    watched: HashMap<i64, Watched>,
    waiters: Waiters,
    /// `--state-dir` was given: the config's `state_dir` does not apply.
    state_dir_overridden: bool,
    /// The latest reload started; older parses are dropped when they land.
    reload_seq: u64,
    /// The ledger cannot be written: why, and the writes kept meanwhile.
    degraded: Degraded,
    /// Agents' own users, when agentd runs as root.
    users: Option<users::AgentUsers>,
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
    let users = root.then(|| users::AgentUsers::load(&cfg.state_dir, cfg.agent_uids.clone()));
    // One supervisor per state dir: two would both run the same tasks.
    let _lock = crate::state_dir::lock(&cfg.state_dir)?;
    // Before any agent starts: cgroups for sandbox runs, and what a killed
    // agentd left behind.
    crate::sandbox::contain::at_supervisor_start(&cfg.state_dir);
    let ledger = Ledger::open(&crate::state_dir::ledger(&cfg.state_dir))?;
    // Before a single row is trusted: a damaged ledger is refused, never half-run.
    match ledger.check_integrity(INTEGRITY_BUDGET)? {
        ledger::Integrity::Ok { took } => tracing::debug!("ledger integrity check passed in {took:?}"),
        ledger::Integrity::Unfinished { budget } => tracing::warn!(
            "ledger integrity check did not finish within {}; starting without it",
            humantime::format_duration(budget)
        ),
    }
    let ledger = LedgerThread::start(ledger).context("starting the ledger thread")?;

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
    control::serve(&socket, operators, control_tx).with_context(|| format!("cannot listen on {}", socket.display()))?;

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
        cfg,
    };
    sup.recover_orphaned_tasks().await?;
    sup.watch_config();
    let names: Vec<AgentSpec> = sup.cfg.agents.clone();
    for spec in names {
        let name = spec.name.to_string();
        sup.agents.insert(name.clone(), Agent::new(spec));
        // Catch-up tasks are queued before the child is up, so it takes
        // them first.
        sup.arm_schedules(&name).await;
        sup.start_agent(&name).await;
    }
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
    tracing::info!(
        "agentd {} supervising {} agents (state dir {}, control socket {})",
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
            Some(input) = repl_rx.recv() => sup.on_repl(input).await,
            _ = sleep_until_opt(schedule_at), if schedule_at.is_some() => sup.fire_schedules().await,
            _ = tokio::time::sleep(degraded::RETRY), if degraded => sup.retry_kept().await,
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
        }
    };
    // Release the socket first, so clients see "not running", not a hang.
    let _ = std::fs::remove_file(&socket);
    if let Some(c) = &mut sup.console {
        c.repl.finish();
    }
    let _ = sup.ledger.call(|l| l.checkpoint()).await;
    crate::sandbox::contain::at_supervisor_stop(&sup.cfg.state_dir);
    tracing::info!("agentd stopped");
    Ok(code)
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// Tasks a previous agentd left running go back in the queue (or fail
    /// once their attempts are spent): never lost, never run twice at once.
    async fn recover_orphaned_tasks(&mut self) -> anyhow::Result<()> {
        let max: BTreeMap<String, u32> = self
            .cfg
            .agents
            .iter()
            .map(|a| (a.name.to_string(), a.limits.max_attempts))
            .collect();
        let recovered = self
            .ledger
            .call(move |l| -> Result<Vec<(i64, String, TaskState)>, LedgerError> {
                let mut out = Vec::new();
                for t in l.running_tasks()? {
                    let attempts = max.get(&t.agent).copied().unwrap_or(1);
                    let state = l.release(t.id, "agentd stopped while the task was running", attempts)?;
                    out.push((t.id, t.agent, state));
                }
                Ok(out)
            })
            .await;
        match recovered {
            Some(Ok(tasks)) => {
                for (id, agent, state) in tasks {
                    tracing::warn!(agent, "task {id} was running when agentd last stopped; now {state}");
                }
            }
            // Starting anyway would run on a ledger that cannot record.
            Some(Err(e)) => anyhow::bail!("recovering running tasks failed; not starting: {e}"),
            None => anyhow::bail!("the ledger thread is gone; not starting"),
        }
        Ok(())
    }

    fn watch_config(&mut self) {
        self.watcher = None;
        match ConfigWatcher::start(&self.cfg, self.events.clone()) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => tracing::warn!("hot reload is off: cannot watch config files: {e}"),
        }
    }

    fn workdir(&self, agent: &str) -> PathBuf {
        crate::state_dir::workdir(&self.cfg.state_dir, agent)
    }

    async fn start_agent(&mut self, name: &str) {
        let workdir = self.workdir(name);
        let owned = name.to_owned();
        let conversation = self
            .ledger
            .call(move |l| l.latest_snapshot(&owned, SnapshotKind::Conversation))
            .await
            .and_then(Result::ok)
            .flatten()
            .and_then(|s| serde_json::from_slice(&s.data).ok());
        self.generation += 1;
        let generation = self.generation;
        let events = self.events.clone();
        let record_dir = self.record.clone();
        let user = match self.users.as_mut().map(|u| u.assign(name)).transpose() {
            Ok(user) => user,
            Err(e) => {
                self.fail_to_start(name, e);
                return;
            }
        };
        let dirs = match crate::state_dir::prepare_agent(&self.cfg.state_dir, name, user) {
            Ok(d) => d,
            Err(e) => {
                self.fail_to_start(name, format!("cannot prepare workdir {}: {e}", workdir.display()));
                return;
            }
        };
        let Some(a) = self.agents.get_mut(name) else { return };
        let start = ToChild::Start {
            version: PROTOCOL_VERSION,
            spec: Box::new(a.spec.clone()),
            workdir: dirs.work,
            mcp_dir: dirs.mcp,
            sandbox_user: user,
            conversation,
            record_dir,
        };
        match child::spawn(name, generation, &start, a.spec.heartbeat.interval, events) {
            Ok(handle) => {
                tracing::info!(agent = name, pid = handle.pid, "agent started");
                let now = Instant::now();
                a.restarts.started(now);
                a.life = Lifecycle::Starting {
                    child: Live { handle, since: now },
                };
                a.last_pong = now;
                a.hung = None;
            }
            Err(e) => {
                a.life = Lifecycle::Failed;
                a.last_error = Some(format!("cannot start agent process: {e}"));
                tracing::error!(agent = name, "cannot start agent process: {e}");
            }
        }
        self.update_status();
    }

    fn fail_to_start(&mut self, name: &str, why: String) {
        if let Some(a) = self.agents.get_mut(name) {
            tracing::error!(agent = name, "{why}");
            a.life = Lifecycle::Failed;
            a.last_error = Some(why);
        }
        self.update_status();
    }

    /// Asks the child to stop (finishing its task within `grace`), then
    /// escalates to SIGTERM and SIGKILL. Without a child, `after` applies now.
    fn stop_agent(&mut self, name: &str, after: AfterExit, grace: Duration) -> bool {
        let Some(a) = self.agents.get_mut(name) else {
            return false;
        };
        let (child, claim) = match std::mem::replace(&mut a.life, Lifecycle::Stopped) {
            Lifecycle::Starting { child } => (child, None),
            Lifecycle::Running { child, claim } | Lifecycle::Stopping { child, claim, .. } => (child, claim),
            // A pending restart is called off; stopped and failed stay so.
            Lifecycle::Backoff { .. } => return true,
            down @ (Lifecycle::Stopped | Lifecycle::Failed) => {
                a.life = down;
                return true;
            }
        };
        child.handle.send(&ToChild::Shutdown {
            grace_ms: grace.as_millis() as u64,
        });
        let generation = child.handle.generation;
        a.life = Lifecycle::Stopping {
            child,
            claim,
            then: after,
        };
        let events = self.events.clone();
        let agent = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(grace + TERM_AFTER_GRACE).await;
            let _ = events.send(Event::Escalate {
                agent: agent.clone(),
                generation,
                signal: Signal::SIGTERM,
            });
            tokio::time::sleep(KILL_AFTER_TERM).await;
            let _ = events.send(Event::Escalate {
                agent,
                generation,
                signal: Signal::SIGKILL,
            });
        });
        false
    }

    fn begin_stop(&mut self, why: &str) {
        if self.stop_deadline.is_some() {
            return;
        }
        let grace = self.cfg.shutdown_grace;
        tracing::info!(
            "{why}: stopping {} agents (grace {})",
            self.agents.len(),
            humantime::format_duration(grace)
        );
        systemd::stopping();
        self.stop_deadline = Some(tokio::time::Instant::now() + grace + TERM_AFTER_GRACE + KILL_AFTER_TERM);
        let names: Vec<String> = self.agents.keys().cloned().collect();
        for name in names {
            self.stop_agent(&name, AfterExit::StayDown, grace);
        }
    }

    fn kill_all(&mut self) {
        for a in self.agents.values() {
            if let Some(c) = a.life.child() {
                c.signal(Signal::SIGKILL);
                c.kill_group();
            }
        }
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
            Event::BadLine { agent, error, .. } => {
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
            Event::ConfigParsed { seq, result, by } => self.finish_reload(seq, result, by).await,
            Event::ConfigChanged => {
                if self.stop_deadline.is_none() {
                    self.reload_at = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE);
                }
            }
        }
    }

    /// Pings a running child, or kills it when it has stopped answering
    /// (see [`heartbeat`]). Starting children are not judged: they read
    /// their stdin only once their MCP servers are up. Stopping ones have
    /// their own escalation.
    fn on_heartbeat(&mut self, name: &str, generation: u64) {
        let Some(a) = self.agents.get_mut(name) else { return };
        let Some(child) = a.life.child_of(generation) else {
            return;
        };
        if !a.life.is_running() || a.hung.is_some() {
            return;
        }
        match heartbeat::verdict(&a.spec.heartbeat, a.last_pong, Instant::now()) {
            heartbeat::Verdict::Alive => {
                a.heartbeat_seq += 1;
                child.send(&ToChild::Ping { seq: a.heartbeat_seq });
            }
            heartbeat::Verdict::Hung(why) => {
                tracing::error!(agent = name, pid = child.pid, "{why}");
                child.signal(Signal::SIGKILL);
                child.kill_group();
                a.hung = Some(why);
            }
        }
    }

    async fn on_child_message(&mut self, name: &str, msg: FromChild) {
        match msg {
            FromChild::Ready { version, pid } => {
                if version != PROTOCOL_VERSION {
                    tracing::error!(
                        agent = name,
                        "agent speaks protocol {version}, expected {PROTOCOL_VERSION}"
                    );
                }
                if let Some(a) = self.agents.get_mut(name)
                    && a.life.is_starting()
                    && let Lifecycle::Starting { child } = std::mem::replace(&mut a.life, Lifecycle::Stopped)
                {
                    tracing::debug!(agent = name, pid, "agent ready");
                    a.life = Lifecycle::Running { child, claim: None };
                    a.last_pong = Instant::now();
                }
                self.maybe_ready();
                self.update_status();
                self.dispatch(name).await;
            }
            FromChild::Trigger { trigger, dedupe_key } => {
                let kept = Deferred::Trigger {
                    agent: name.to_owned(),
                    trigger,
                    dedupe_key,
                };
                self.write_or_keep(name, kept).await;
                self.dispatch(name).await;
            }
            FromChild::Step { task, lease, step } => {
                if self.watched.contains_key(&task) {
                    self.on_step(task, &step.kind, step.payload["name"].as_str());
                }
                self.write_or_keep(name, Deferred::Step { task, lease, step }).await;
            }
            FromChild::Pong { seq } => {
                if let Some(a) = self.agents.get_mut(name)
                    && seq == a.heartbeat_seq
                {
                    a.last_pong = Instant::now();
                }
            }
            FromChild::Health { degraded } => {
                if let Some(a) = self.agents.get_mut(name) {
                    match &degraded {
                        Some(why) => tracing::warn!(agent = name, "degraded: {why}"),
                        None if a.degraded.is_some() => tracing::info!(agent = name, "MCP servers reachable again"),
                        None => {}
                    }
                    a.degraded = degraded;
                }
            }
            FromChild::Output { task, text, .. } => {
                tracing::debug!(agent = name, "model: {text}");
                self.on_output(task, &text);
            }
            FromChild::Finished {
                task,
                lease,
                state,
                result,
                error,
                conversation,
            } => {
                let current = self.agents.get(name).and_then(|a| a.life.claim().cloned());
                if current
                    != Some(Claim {
                        task,
                        lease: lease.clone(),
                    })
                {
                    tracing::warn!(agent = name, "ignoring a result for task {task} from a stale lease");
                    return;
                }
                let agent = name.to_owned();
                let state = if state.is_final() { state } else { TaskState::Failed };
                // One line of what the model said (or what went wrong) for the log.
                let summary = result
                    .as_deref()
                    .or(error.as_deref())
                    .and_then(|t| t.lines().find(|l| !l.trim().is_empty()));
                let summary = summary.map(|l| l.chars().take(200).collect::<String>());
                // Shown and answered after the write, so whoever hears of the
                // end finds it in the ledger.
                let (shown_result, shown_error) = (result.clone(), error.clone());
                // Kept in memory when the ledger cannot take it: the task
                // is not left `running` for good.
                let end = Deferred::Finish {
                    agent,
                    task,
                    lease,
                    state,
                    result,
                    error,
                    conversation: conversation.map(|c| serde_json::to_vec(&c).unwrap_or_default()),
                };
                self.write_or_keep(name, end).await;
                let said = summary.map(|s| format!(": {s}")).unwrap_or_default();
                tracing::info!(agent = name, "task {task} {state}{said}");
                self.on_task_end(name, task, state, shown_result.as_deref(), shown_error.as_deref());
                if let Some(a) = self.agents.get_mut(name)
                    && let Lifecycle::Running { claim, .. } | Lifecycle::Stopping { claim, .. } = &mut a.life
                {
                    *claim = None;
                }
                self.dispatch(name).await;
            }
        }
    }

    async fn on_exit(&mut self, name: &str, generation: u64, exit: Exit) {
        let Some(a) = self.agents.get_mut(name) else { return };
        if a.life.child_of(generation).is_none() {
            return;
        }
        let (child, running, after) = match std::mem::replace(&mut a.life, Lifecycle::Stopped) {
            Lifecycle::Starting { child } => (child, None, AfterExit::Policy),
            Lifecycle::Running { child, claim } => (child, claim, AfterExit::Policy),
            Lifecycle::Stopping { child, claim, then } => (child, claim, then),
            Lifecycle::Stopped | Lifecycle::Failed | Lifecycle::Backoff { .. } => return,
        };
        // Whatever the child started and left behind goes with it.
        child.handle.kill_group();
        crate::sandbox::contain::after_agent_exit(&self.cfg.state_dir, name);
        let uptime = child.since.elapsed();
        a.last_exit = Some(exit);
        a.degraded = None;
        let max_attempts = a.spec.limits.max_attempts;
        // Killed as hung: that, not the SIGKILL, is why it is gone.
        let cause = a.hung.take().unwrap_or_else(|| format!("agent process {exit}"));
        if !exit.success() && after == AfterExit::Policy {
            a.last_error = Some(cause.clone());
        }
        let log_exit = format!(
            "agent process {exit} after {}",
            humantime::format_duration(trim(uptime))
        );
        if after == AfterExit::Policy && !exit.success() {
            tracing::warn!(agent = name, "{log_exit}");
        } else {
            tracing::info!(agent = name, "{log_exit}");
        }

        if let Some(Claim { task, .. }) = running {
            let c2 = cause.clone();
            let r = if self.degraded.kept.is_empty() {
                self.ledger.call(move |l| l.release(task, &c2, max_attempts)).await
            } else {
                Some(Err(LedgerError::NoSuchTask(task)))
            };
            match r {
                Some(Ok(state)) => {
                    tracing::warn!(agent = name, "task {task} interrupted; now {state}");
                    self.on_task_released(name, task, state, &cause);
                }
                Some(Err(e)) if !self.degraded.kept.is_empty() || e.is_unwritable() => {
                    if e.is_unwritable() {
                        self.enter_degraded(&e);
                    }
                    tracing::warn!(
                        agent = name,
                        "task {task} interrupted; its release is kept until the ledger takes writes"
                    );
                    self.degraded.keep(Deferred::Release {
                        task,
                        cause: cause.clone(),
                        max_attempts,
                    });
                }
                Some(Err(e)) => tracing::error!(agent = name, "cannot release task {task}: {e}"),
                None => {}
            }
        }

        let stopping = self.stop_deadline.is_some();
        let Some(a) = self.agents.get_mut(name) else { return };
        match after {
            AfterExit::Remove => {
                self.agents.remove(name);
            }
            AfterExit::StayDown => a.life = Lifecycle::Stopped,
            AfterExit::StartAgain if !stopping => {
                a.restarts.reset();
                if let Some(which) = a.pending_restore.take() {
                    self.restore_snapshot(name, which).await;
                }
                self.start_agent(name).await;
            }
            AfterExit::StartAgain => a.life = Lifecycle::Stopped,
            AfterExit::Policy if stopping => a.life = Lifecycle::Stopped,
            AfterExit::Policy => {
                a.restarts.ran_for(uptime);
                match a.restarts.decide(exit, Instant::now()) {
                    Decision::Restart(delay) => {
                        a.restart_count += 1;
                        self.generation += 1;
                        a.life = Lifecycle::Backoff {
                            generation: self.generation,
                        };
                        let (events, agent, generation) = (self.events.clone(), name.to_owned(), self.generation);
                        tracing::info!(
                            agent = name,
                            "restarting in {}",
                            humantime::format_duration(trim(delay))
                        );
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = events.send(Event::RestartDue { agent, generation });
                        });
                    }
                    Decision::Stop => a.life = Lifecycle::Stopped,
                    Decision::Fail(why) => {
                        tracing::error!(
                            agent = name,
                            "agent failed: {why}; it stays down until restarted or its config changes"
                        );
                        a.life = Lifecycle::Failed;
                        a.last_error = Some(why);
                    }
                }
            }
        }
        self.maybe_ready();
        self.update_status();
    }

    /// Records a trigger as a task (coalescing by `dedupe_key` while queued).
    async fn record_trigger(
        &mut self,
        agent: &str,
        trigger: Trigger,
        dedupe_key: Option<String>,
    ) -> Result<ledger::Enqueued, String> {
        let agent = agent.to_owned();
        match self
            .ledger
            .call(move |l| l.enqueue(&agent, &trigger, dedupe_key.as_deref()))
            .await
        {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => {
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                }
                Err(e.to_string())
            }
            None => Err("the ledger is closed".into()),
        }
    }

    /// Writes what must not be lost, or keeps it in memory while the ledger
    /// cannot take writes (and behind writes already kept, so their order
    /// holds). See [`degraded`].
    async fn write_or_keep(&mut self, agent: &str, d: Deferred) {
        if !self.degraded.kept.is_empty() {
            self.degraded.keep(d);
            return;
        }
        let (back, r) = match self
            .ledger
            .call(move |l| {
                let r = d.apply(l);
                (d, r)
            })
            .await
        {
            Some(x) => x,
            None => return,
        };
        match r {
            Ok(()) => {
                if let Deferred::Trigger { .. } = back {
                    tracing::debug!(agent, "trigger recorded");
                }
            }
            Err(e) if e.is_unwritable() => {
                self.enter_degraded(&e);
                self.degraded.keep(back);
            }
            Err(e) => tracing::warn!(agent, "ledger write rejected: {e}"),
        }
    }

    fn enter_degraded(&mut self, e: &LedgerError) {
        if self.degraded.enter(e) {
            tracing::error!(
                "agentd is degraded: the ledger cannot be written ({}); tasks' ends, journal steps and \
                 agents' triggers are kept in memory, new messages are refused, retrying every {}",
                e.short(),
                humantime::format_duration(degraded::RETRY)
            );
            self.update_status();
        }
    }

    /// While degraded: replays the kept writes in order, then proves the
    /// ledger takes writes; on success agentd is whole again.
    async fn retry_kept(&mut self) {
        let kept = std::mem::take(&mut self.degraded.kept);
        let r = self
            .ledger
            .call(move |l| {
                let mut kept = kept;
                let mut dropped = Vec::new();
                while let Some(d) = kept.front() {
                    match d.apply(l) {
                        Ok(()) => {
                            kept.pop_front();
                        }
                        Err(e) if e.is_unwritable() => return (kept, dropped, Err(e)),
                        Err(e) => {
                            dropped.push(e.to_string());
                            kept.pop_front();
                        }
                    }
                }
                let probe = l.probe_write();
                (kept, dropped, probe)
            })
            .await;
        let Some((kept, dropped, outcome)) = r else { return };
        self.degraded.kept = kept;
        for e in dropped {
            tracing::warn!("a kept ledger write was rejected on replay: {e}");
        }
        if outcome.is_ok()
            && let Some(took) = self.degraded.recovered()
        {
            let lost = std::mem::take(&mut self.degraded.dropped_steps);
            let lost = if lost > 0 {
                format!(" ({lost} journal steps past the in-memory cap were dropped)")
            } else {
                String::new()
            };
            tracing::info!(
                "the ledger takes writes again after {}: agentd is no longer degraded{lost}",
                humantime::format_duration(Duration::from_secs(took.as_secs()))
            );
            self.update_status();
            let names: Vec<String> = self.agents.keys().cloned().collect();
            for name in names {
                self.dispatch(&name).await;
            }
        }
    }

    /// Hands the agent its next queued task, if it is free to take one.
    async fn dispatch(&mut self, name: &str) {
        if self.stop_deadline.is_some() {
            return;
        }
        let Some(a) = self.agents.get(name) else { return };
        let Lifecycle::Running {
            child: Live { handle: child, .. },
            claim: None,
        } = &a.life
        else {
            return;
        };
        if a.paused {
            return;
        }
        let lease = crate::domain::Lease {
            agent: name.to_owned(),
            pid: child.pid,
            generation: child.generation,
        }
        .to_string();
        let (agent, l2) = (name.to_owned(), lease.clone());
        let claimed = self.ledger.call(move |l| l.claim_next(&agent, &l2)).await;
        let task = match claimed {
            Some(Ok(Some(t))) => t,
            Some(Ok(None)) | None => return,
            Some(Err(e)) => {
                if e.is_unwritable() {
                    self.enter_degraded(&e);
                } else {
                    tracing::error!(agent = name, "cannot claim a task: {e}");
                }
                return;
            }
        };
        let Some(a) = self.agents.get_mut(name) else { return };
        let Some(trigger) = task.trigger() else {
            let id = task.id;
            tracing::error!(agent = name, "task {id} has an unreadable trigger; failing it");
            let _ = self
                .ledger
                .call(move |l| l.finish(id, &lease, TaskState::Failed, None, Some("unreadable trigger payload")))
                .await;
            return;
        };
        tracing::info!(
            agent = name,
            "task {} started (attempt {}): {}",
            task.id,
            task.attempts,
            trigger.summary()
        );
        // Checked above; the supervisor handles one event at a time, so the
        // lifecycle cannot have moved while the ledger answered.
        let (Lifecycle::Running { child, claim } | Lifecycle::Stopping { child, claim, .. }) = &mut a.life else {
            return;
        };
        *claim = Some(Claim {
            task: task.id,
            lease: lease.clone(),
        });
        child.handle.send(&ToChild::Task {
            id: task.id,
            lease,
            attempt: task.attempts,
            trigger,
        });
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
    async fn finish_reload(&mut self, seq: u64, result: Result<Config, String>, by: ReloadBy) {
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

    async fn reload(&mut self, result: Result<Config, String>) -> Result<serde_json::Value, String> {
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
            self.agents.insert(name.clone(), Agent::new(spec.clone()));
            self.arm_schedules(&name).await;
            self.start_agent(&name).await;
        }
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
        self.cfg = new;
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

/// Durations for humans: whole milliseconds.
fn trim(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
