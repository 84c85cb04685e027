//! The agent child process: `agentd agent --name NAME`, started by the
//! supervisor. It reads its spec and tasks as JSON lines on stdin and
//! answers on stdout (see [`crate::protocol`]); logs go to stderr.
//!
//! It connects the agent's MCP servers, forwards their resource updates to
//! the supervisor as triggers, and runs one task at a time ([`runner`]).
//! It runs a `current_thread` runtime: an idle agent should cost little more
//! than its share of the executable's pages. It never writes the ledger;
//! every record goes to the supervisor, which checks the lease.

mod approval;
pub mod bridge;
mod egress;
mod prompt;
mod runner;
mod skills;
mod throttle;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::domain::{Conversation, Lease, TaskId, Trigger};
use crate::llm::{ChatMessage, LlmClient};
use crate::mcp::{McpHub, ResourceEvent};
use crate::protocol::{self, FromChild, PROTOCOL_VERSION, ToChild};
use crate::sandbox;
use runner::{Outcome, Runtime};
use skills::SkillsRuntime;

/// The child's `main`.
pub fn main(name: &str) -> anyhow::Result<ExitCode> {
    // One malloc arena: an agent is one event loop; a thread that shows up
    // (a DNS lookup, a blocking task) shares it instead of mapping its own
    // 64 MiB arena and dirtying its first pages.
    // SAFETY: mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Boxed: the whole agent is one large future; on the stack, each move of
    // it into the runtime would dirty more of every agent's stack pages.
    rt.block_on(Box::pin(run(name)))
}

/// Sends messages to the supervisor in order, from any task.
#[derive(Clone)]
pub struct Outbox(mpsc::UnboundedSender<FromChild>);

impl Outbox {
    /// An outbox and the receiving end of what is sent to it.
    pub fn channel() -> (Outbox, mpsc::UnboundedReceiver<FromChild>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outbox(tx), rx)
    }

    pub fn send(&self, msg: FromChild) {
        let _ = self.0.send(msg);
    }
}

/// The pipes to the supervisor (stdin, stdout), read and written by the
/// event loop itself. tokio's `stdin()`/`stdout()` hand every read and
/// write to a blocking-pool thread: two threads per idle agent, each with
/// its stack. Anything that is not a pipe (a terminal, a file) gets those.
fn supervisor_pipes() -> (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>) {
    use std::os::fd::AsFd;
    use tokio::net::unix::pipe;
    let input: Box<dyn AsyncRead + Send + Unpin> = match std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(pipe::Receiver::from_owned_fd)
    {
        Ok(p) => Box::new(p),
        Err(_) => Box::new(tokio::io::stdin()),
    };
    let output: Box<dyn AsyncWrite + Send + Unpin> = match std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(pipe::Sender::from_owned_fd)
    {
        Ok(p) => Box::new(p),
        Err(_) => Box::new(tokio::io::stdout()),
    };
    (input, output)
}

async fn run(name: &str) -> anyhow::Result<ExitCode> {
    let (input, output) = supervisor_pipes();
    let mut lines = BufReader::new(input).lines();
    let first = lines.next_line().await.context("reading the start message")?;
    let Some(first) = first else {
        return Ok(ExitCode::SUCCESS);
    };
    let (spec, workdir, mcp_dir, user, conversation, record_dir) = match serde_json::from_str::<ToChild>(&first) {
        Ok(ToChild::Start {
            version,
            spec,
            workdir,
            mcp_dir,
            sandbox_user,
            conversation,
            record_dir,
        }) if version == PROTOCOL_VERSION => (spec, workdir, mcp_dir, sandbox_user, conversation, record_dir),
        Ok(ToChild::Start { version, .. }) => {
            anyhow::bail!("supervisor speaks protocol {version}, this agent {PROTOCOL_VERSION}")
        }
        Ok(_) => anyhow::bail!("expected a start message first"),
        Err(e) => anyhow::bail!("unreadable start message: {e}"),
    };
    // Before anything runs: what this agent's earlier process left behind
    // (sandbox runs' processes, cgroups, private tmp dirs) is cleaned.
    let containment = match sandbox::contain::state_dir_of_workdir(&workdir) {
        Some(state_dir) => {
            let quota = sandbox::quota::Quota {
                max_bytes: spec.limits.workdir_size,
                max_files: spec.limits.workdir_files,
            };
            sandbox::Containment::for_agent(&state_dir, spec.name.as_str(), Some(quota))
        }
        None => sandbox::Containment::default(),
    };
    // The child and the stdio MCP servers it starts live in a directory no
    // sandbox can write: a server that imports or executes from its cwd
    // (python -m, npx, git) must never find the model's files there.
    std::env::set_current_dir(&mcp_dir).with_context(|| format!("entering {}", mcp_dir.display()))?;
    // What the child creates for the sandbox (generated skills, bin/) must
    // be readable by the agent's user; agents/NAME (0710) keeps others out.
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(0o022);
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<FromChild>();
    let writer = tokio::spawn(async move {
        let mut out = output;
        while let Some(msg) = rx.recv().await {
            if out.write_all(protocol::encode(&msg).as_bytes()).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });
    let outbox = Outbox(tx);

    // A bad model setting fails every task with the reason, but the agent
    // stays up: its subscriptions keep recording triggers meanwhile.
    let llm = LlmClient::new(&spec.llm, &spec.model).and_then(|c| match &record_dir {
        Some(dir) => c.with_recording(dir, spec.name.as_str()),
        None => Ok(c),
    });

    let (events_tx, mut events_rx) = mpsc::channel::<ResourceEvent>(256);
    let hub = McpHub::start(&spec.mcp_servers, &spec.subscriptions, events_tx).await;
    let forward = outbox.clone();
    let mut throttle = throttle::Throttle::new(spec.subscriptions.iter().map(|s| (s.uri.clone(), s.min_interval)));
    tokio::spawn(async move {
        let send = |ev: ResourceEvent| {
            let dedupe_key = Some(ev.uri.clone());
            let trigger = Trigger::Resource {
                uri: ev.uri,
                server: ev.server,
                subscription: ev.subscription,
                contents: ev.contents,
            };
            forward.send(FromChild::Trigger { trigger, dedupe_key });
        };
        loop {
            let due = throttle.next_due();
            tokio::select! {
                ev = events_rx.recv() => match ev {
                    Some(ev) => {
                        if let Some(ev) = throttle.offer(ev, std::time::Instant::now()) {
                            send(ev);
                        }
                    }
                    None => break,
                },
                _ = sleep_until_opt(due), if due.is_some() => {
                    for ev in throttle.take_due(std::time::Instant::now()) {
                        send(ev);
                    }
                    tracing::debug!(coalesced = throttle.coalesced, "held resource updates fired");
                }
            }
        }
    });

    let hub = Arc::new(hub);
    let health = spawn_health(Arc::downgrade(&hub), outbox.clone());
    // The agent's own directory (the workdir's parent) holds what the
    // sandbox sees besides the workdir: generated skills, `bin/agentd`.
    let agent_dir = workdir.parent().map(Path::to_owned).unwrap_or_else(|| workdir.clone());
    let skills = SkillsRuntime::new(&agent_dir, hub.clone(), &spec, outbox.clone(), user);

    let history: Vec<ChatMessage> = conversation.map(|c| c.0).unwrap_or_default();
    outbox.send(FromChild::Ready {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    });

    let (mut runtime, llm_error) = match llm {
        Ok(llm) => (
            Some(Runtime {
                spec: (*spec).clone(),
                workdir,
                llm,
                hub,
                skills,
                history,
                outbox: outbox.clone(),
                containment,
                approvals: approval::Approvals::default(),
            }),
            None,
        ),
        Err(e) => {
            tracing::error!(agent = name, "model client unusable: {e}");
            drop(skills);
            (None, Some((e.to_string(), hub)))
        }
    };

    // What starting took and freed (the start message, the spec's copies,
    // MCP handshakes) goes back to the kernel: an idle agent keeps only
    // the pages it uses.
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => break,
        };
        match serde_json::from_str::<ToChild>(&line) {
            Ok(ToChild::Task {
                id,
                lease,
                trigger,
                attempt,
                traceparent,
            }) => {
                let Some(rt) = runtime.as_mut() else {
                    let error = llm_error.as_ref().map(|(e, _)| e.clone()).unwrap_or_default();
                    finished(
                        &outbox,
                        id,
                        &lease,
                        Outcome::failed(format!("model client unusable: {error}")),
                        None,
                    );
                    continue;
                };
                // Keep reading: a shutdown or a cancel may arrive while the task runs.
                let mut stop: Option<Duration> = None;
                let mut cancelled = false;
                let approvals = rt.approvals.clone();
                let outcome = {
                    let span = tracing::info_span!(
                        target: crate::telemetry::TARGET,
                        "invoke_agent",
                        otel.name = %format!("invoke_agent {}", lease.agent),
                        gen_ai.operation.name = "invoke_agent",
                        gen_ai.agent.name = %lease.agent,
                        agentd.task.id = id.0,
                        agentd.task.attempt = attempt,
                        agentd.task.trigger = trigger.kind(),
                        process.pid = i64::from(std::process::id()),
                    );
                    crate::telemetry::join(&span, traceparent.as_deref());
                    let fut = tracing::Instrument::instrument(rt.run_task(id, &lease, &trigger), span);
                    tokio::pin!(fut);
                    loop {
                        if let Some(grace) = stop {
                            break tokio::time::timeout(grace, &mut fut).await.ok();
                        }
                        tokio::select! {
                            o = &mut fut => break Some(o),
                            line = lines.next_line() => match line.ok().flatten().map(|l| serde_json::from_str::<ToChild>(&l)) {
                                Some(Ok(ToChild::Shutdown { grace_ms })) => stop = Some(Duration::from_millis(grace_ms)),
                                Some(Ok(ToChild::Ping { seq })) => outbox.send(FromChild::Pong { seq }),
                                // Dropping the task's future drops its model
                                // request and MCP calls, and kills its sandbox
                                // run's process group and cgroup.
                                Some(Ok(ToChild::Cancel { task, lease: l })) if task == id && l == lease => {
                                    cancelled = true;
                                    break None;
                                }
                                Some(Ok(ToChild::ApprovalAnswer { task, lease: l, answer })) if task == id && l == lease => {
                                    if !approvals.deliver(answer) {
                                        tracing::warn!(agent = name, "an approval answer for task {id}, which asked nothing");
                                    }
                                }
                                Some(Ok(other)) => tracing::warn!(agent = name, "ignoring {other:?} while a task runs"),
                                Some(Err(e)) => tracing::warn!(agent = name, "unreadable message from supervisor: {e}"),
                                None => stop = Some(Duration::ZERO),
                            },
                        }
                    }
                };
                match outcome {
                    Some(o) => {
                        let conversation = runtime.as_ref().map(|r| Conversation(r.history.clone()));
                        finished(&outbox, id, &lease, o, conversation);
                    }
                    None if cancelled => {
                        // What ran is abandoned; the bridge's token for it dies too.
                        if let Some(rt) = runtime.as_mut() {
                            rt.skills.end();
                        }
                        tracing::info!(agent = name, "task {id} cancelled");
                    }
                    // The grace period ran out: leave the task to the
                    // supervisor, which re-queues it.
                    None => tracing::warn!(agent = name, "stopping with task {id} unfinished"),
                }
                if stop.is_some() {
                    break;
                }
            }
            Ok(ToChild::Shutdown { .. }) => break,
            Ok(ToChild::Ping { seq }) => outbox.send(FromChild::Pong { seq }),
            // A cancel that crossed the task's end: nothing left to stop.
            Ok(ToChild::Cancel { task, .. }) => tracing::debug!(agent = name, "task {task} already over"),
            Ok(ToChild::ApprovalAnswer { task, .. }) => tracing::debug!(agent = name, "task {task} asks nothing now"),
            Ok(ToChild::Start { .. }) => tracing::warn!(agent = name, "ignoring a second start message"),
            Err(e) => tracing::warn!(agent = name, "unreadable message from supervisor: {e}"),
        }
    }
    let hub = match runtime {
        Some(rt) => {
            // The bridge holds the hub too: stop it first.
            drop(rt.skills);
            Some(rt.hub)
        }
        None => llm_error.map(|(_, hub)| hub),
    };
    if let Some(hub) = hub {
        shutdown_hub(hub).await;
    }
    // Its outbox would keep the writer (and so this process) up until its
    // next look, up to a second later.
    health.abort();
    let _ = health.await;
    drop(outbox);
    let _ = writer.await;
    Ok(ExitCode::SUCCESS)
}

async fn sleep_until_opt(t: Option<std::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// How often the child looks at its MCP servers' health.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Reports to the supervisor when an MCP server becomes unreachable (it
/// failed to spawn or connect, or lost its connection) and when all are
/// fine again, and how often each reconnected. Holds the hub weakly so
/// shutdown can take it back.
fn spawn_health(hub: std::sync::Weak<McpHub>, outbox: Outbox) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reported: Option<String> = None;
        // Reconnects reported per server: every connection after the first.
        let mut reconnects: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        loop {
            tokio::time::sleep(HEALTH_EVERY).await;
            let Some(hub) = hub.upgrade() else { return };
            let servers = hub.servers();
            drop(hub);
            for s in &servers {
                let now = s.connects.saturating_sub(1);
                let before = reconnects.insert(s.name.clone(), now).unwrap_or(0);
                if now > before {
                    outbox.send(FromChild::McpReconnected {
                        server: s.name.clone(),
                        count: now - before,
                    });
                }
            }
            let degraded = servers
                .into_iter()
                .find(|s| !s.connected && s.last_error.is_some())
                .map(|s| format!("MCP server {}: {}", s.name, s.last_error.unwrap_or_default()));
            if degraded != reported {
                reported = degraded.clone();
                outbox.send(FromChild::Health { degraded });
            }
        }
    })
}

/// Shuts the MCP servers down once the bridge's aborted tasks have let go
/// of the hub; if they somehow do not, kill_on_drop still ends the servers.
async fn shutdown_hub(mut hub: Arc<McpHub>) {
    for _ in 0..100 {
        match Arc::try_unwrap(hub) {
            Ok(h) => return h.shutdown().await,
            Err(h) => hub = h,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!("MCP hub still in use at shutdown; leaving its servers to kill_on_drop");
}

/// Where the sandbox finds `agentd` (for `agentd tool call`): a `bin/`
/// directory with a link to this executable, so it can go first on the
/// sandbox's PATH without exposing the directory the executable lives in.
fn agentd_bin_dir(agent_dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().ok()?;
    let bin = agent_dir.join("bin");
    let link = bin.join("agentd");
    // Left as it is when it already leads here: a new link is a new inode,
    // and a thousand agents starting at once would each make one.
    if std::fs::read_link(&link).is_ok_and(|to| to == exe) {
        return Some((bin, exe));
    }
    let made = std::fs::create_dir_all(&bin).and_then(|()| {
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&exe, &link)
    });
    match made {
        Ok(()) => Some((bin, exe)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot link agentd into {}; `agentd tool call` is unavailable in the sandbox", bin.display());
            None
        }
    }
}

fn finished(outbox: &Outbox, task: TaskId, lease: &Lease, o: Outcome, conversation: Option<Conversation>) {
    outbox.send(FromChild::Finished {
        task,
        lease: lease.clone(),
        state: o.state,
        result: o.result,
        error: o.error,
        conversation,
        spans_dropped: crate::telemetry::take_dropped(),
    });
}
