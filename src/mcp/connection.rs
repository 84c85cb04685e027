//! One MCP server, kept connected: connect, list tools, subscribe, and on
//! loss reconnect with backoff and subscribe again.
//!
//! Each server has one long-lived task ([`run`]) that owns everything about
//! the session: the rmcp service, the child process, the subscription state,
//! the debounce timers and the `tool://` pollers. Notifications reach it as
//! [`Note`]s on one channel (rmcp delivers them on separate tasks, in no
//! guaranteed order), so the state has a single owner and no locks beyond the
//! small [`Shared`] view the hub reads.
//!
//! It must never block the hub: tool calls go straight to the rmcp peer
//! cloned out of [`Shared`], not through this task. And it must never leave a
//! process behind: every exit path stops or reaps the child.

// Roots, logging and `resources/subscribe` are deprecated by the 2026-07-28
// revision (SEP-2577), but today's servers use them: we speak both.
#![allow(deprecated)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ErrorData, Implementation, ListRootsResult, LoggingMessageNotificationParam,
    ProtocolVersion, ReadResourceRequestParams, ResourceUpdatedNotificationParam, Root, ServerNotification,
    SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{ClientCacheConfig, NotificationContext, Peer, RequestContext, RoleClient, RunningService};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::poll::{LastResults, Poll, poll_once, same_tool_uri, spawn_poller};
use super::subscribe::{MAX_EVENT_CONTENTS, glob_matches, render_read, truncate};
use super::{McpError, ResourceEvent, child};
use crate::config::{McpServerSpec, McpTransport, SubscriptionSpec, SubscriptionTarget};

/// How long one connection attempt (spawn + handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnect backoff: doubles from MIN to MAX; reset once a connection has
/// stayed up for STABLE.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(10);
/// HTTP sessions are probed with `ping` this often; no answer (not even an
/// error) within PROBE_TIMEOUT means the session is dead. A restarted HTTP
/// server answers requests of a session it forgot with an uncorrelated 400,
/// which leaves rmcp waiting forever; stdio servers need no probe, their
/// exit closes the pipe.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the hub can see of a server, updated by its task.
pub(crate) struct Shared {
    pub name: String,
    pub spec: McpServerSpec,
    pub noise: Arc<AtomicU64>,
    live: Mutex<Live>,
    /// Flips to true after the first connection attempt ends either way.
    pub attempted: watch::Sender<bool>,
}

#[derive(Default)]
struct Live {
    peer: Option<Peer<RoleClient>>,
    tools: Vec<rmcp::model::Tool>,
    pid: Option<u32>,
    protocol: Option<String>,
    connects: u64,
    last_error: Option<String>,
}

/// A snapshot of one server's state, for status displays and tests.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    pub name: String,
    pub connected: bool,
    /// The stdio server's process id while it runs.
    pub pid: Option<u32>,
    /// The negotiated protocol revision, e.g. `2025-11-25`.
    pub protocol: Option<String>,
    /// Successful connections so far (1 after start, +1 per reconnect).
    pub connects: u64,
    /// Non-JSON lines the server printed on stdout (reported and dropped).
    pub noise_lines: u64,
    pub last_error: Option<String>,
}

impl Shared {
    pub(crate) fn new(spec: McpServerSpec) -> Arc<Shared> {
        Arc::new(Shared {
            name: spec.name.clone(),
            spec,
            noise: Arc::new(AtomicU64::new(0)),
            live: Mutex::new(Live::default()),
            attempted: watch::channel(false).0,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn peer(&self) -> Option<Peer<RoleClient>> {
        self.live().peer.clone()
    }

    pub(crate) fn with_tools<T>(&self, f: impl FnOnce(&[rmcp::model::Tool]) -> T) -> T {
        f(&self.live().tools)
    }

    pub(crate) fn status(&self) -> ServerStatus {
        let live = self.live();
        ServerStatus {
            name: self.name.clone(),
            connected: live.peer.is_some(),
            pid: live.pid,
            protocol: live.protocol.clone(),
            connects: live.connects,
            noise_lines: self.noise.load(Ordering::Relaxed),
            last_error: live.last_error.clone(),
        }
    }
}

/// Messages to a server's task.
#[derive(Debug)]
pub(crate) enum Note {
    Updated(String),
    ResourceListChanged,
    ToolListChanged,
    /// A debounce window for this URI ended: re-read it and fire.
    Flush(String),
    /// The `subscriptions/listen` stream ended while connected: open it again.
    ListenEnded,
    /// The liveness probe of session number N got no answer.
    Dead(u64),
}

/// The client side of one session: answers the server's requests and turns
/// its notifications into [`Note`]s.
struct Client {
    server: Arc<str>,
    roots: Vec<Root>,
    notes: mpsc::UnboundedSender<Note>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        // Roots are opt-in (`roots:` of the server): a client that offers
        // roots makes server-filesystem drop its command-line directories.
        let capabilities = if self.roots.is_empty() {
            ClientCapabilities::default()
        } else {
            ClientCapabilities::builder().enable_roots().build()
        };
        ClientConfig::new(capabilities, Implementation::new("agentd", env!("CARGO_PKG_VERSION")))
    }

    async fn list_roots(&self, _context: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(self.roots.clone()))
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.notes.send(Note::Updated(params.uri));
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.notes.send(Note::ResourceListChanged);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.notes.send(Note::ToolListChanged);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        tracing::debug!(target: "agentd::mcp::log", server = %self.server, level = ?params.level, data = %params.data, "server log");
    }
}

/// A live session.
struct Conn {
    service: RunningService<RoleClient, Client>,
    child: Option<tokio::process::Child>,
    modern: bool,
    http: bool,
}

/// Everything a server's task needs.
pub(crate) struct Task {
    pub shared: Arc<Shared>,
    pub subs: Vec<SubscriptionSpec>,
    pub events: mpsc::Sender<ResourceEvent>,
    pub shutdown: watch::Receiver<bool>,
}

/// Per-server subscription state; survives reconnects.
struct Subs {
    specs: Vec<SubscriptionSpec>,
    /// Resource URIs from the latest listing; `None` before the first one.
    known: Option<BTreeSet<String>>,
    /// URI → index of the first spec that covers it.
    watched: BTreeMap<String, usize>,
    /// URIs inside a debounce window.
    pending: HashSet<String>,
    /// Per connection: URIs subscribed with legacy `resources/subscribe`.
    subscribed: BTreeSet<String>,
    /// Per connection: the URI set of the open `subscriptions/listen`.
    listened: Option<BTreeSet<String>>,
    listen_task: Option<JoinHandle<()>>,
    /// Per connection: spec index → its `tool://` poller.
    pollers: HashMap<usize, JoinHandle<()>>,
    /// Per connection: indexes of `tool://` specs the server serves itself
    /// (subscribed with `resources/subscribe`, not polled).
    served: BTreeSet<usize>,
    last_results: LastResults,
}

impl Subs {
    fn stop_connection_tasks(&mut self) {
        for (_, poller) in self.pollers.drain() {
            poller.abort();
        }
        self.served.clear();
        if let Some(listen) = self.listen_task.take() {
            listen.abort();
        }
        self.subscribed.clear();
        self.listened = None;
    }
}

pub(crate) async fn run(mut task: Task) {
    let name = task.shared.name.clone();
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<Note>();
    let mut subs = Subs {
        specs: task.subs.clone(),
        known: None,
        watched: BTreeMap::new(),
        pending: HashSet::new(),
        subscribed: BTreeSet::new(),
        listened: None,
        listen_task: None,
        pollers: HashMap::new(),
        served: BTreeSet::new(),
        last_results: Default::default(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        if *task.shutdown.borrow() {
            break;
        }
        let mut stop = task.shutdown.clone();
        let attempt = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&task, notes_tx.clone())) => r,
            _ = stopped(&mut stop) => break,
        };
        let conn = match attempt {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let permanent = matches!(e, McpError::DeniedEnv { .. });
                tracing::warn!(server = %name, "MCP server failed to connect: {e}");
                task.shared.live().last_error = Some(e.to_string());
                task.shared.attempted.send_replace(true);
                if permanent {
                    // A config error: retrying cannot help. Wait for shutdown.
                    stopped(&mut task.shutdown).await;
                    break;
                }
                if sleep_or_shutdown(&mut task.shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                tracing::warn!(server = %name, "MCP server did not finish the handshake within {CONNECT_TIMEOUT:?}");
                {
                    // The attempt's child died with the dropped future (kill_on_drop).
                    let mut live = task.shared.live();
                    live.last_error = Some("handshake timed out".into());
                    live.pid = None;
                }
                task.shared.attempted.send_replace(true);
                if sleep_or_shutdown(&mut task.shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let up_since = Instant::now();
        let lost = session(&mut task, &mut subs, conn, &mut notes, &notes_tx).await;
        subs.stop_connection_tasks();
        {
            let mut live = task.shared.live();
            live.peer = None;
            live.pid = None;
        }
        if !lost {
            break;
        }
        if up_since.elapsed() >= STABLE {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(server = %name, "MCP server connection lost; reconnecting in {backoff:?}");
        if sleep_or_shutdown(&mut task.shutdown, backoff).await {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    subs.stop_connection_tasks();
}

/// Resolves once shutdown is requested (or the hub is gone). Drops the
/// watch guard before returning, so the future stays `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Sleeps, returning true if shutdown was requested meanwhile.
async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(shutdown) => true,
    }
}

/// Connects once: spawn (stdio) or open (HTTP), then the handshake. Tries
/// the 2026-07-28 `server/discover` lifecycle first and falls back to
/// `initialize` (rmcp's `Auto` mode does this on one connection when the
/// server answers discover with an error; a transport that fails outright is
/// retried once with plain `initialize`).
async fn connect(task: &Task, notes: mpsc::UnboundedSender<Note>) -> Result<Conn, McpError> {
    let auto = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    match connect_with(task, notes.clone(), auto).await {
        Ok(conn) => Ok(conn),
        Err(e @ (McpError::DeniedEnv { .. } | McpError::Spawn { .. } | McpError::Config { .. })) => Err(e),
        Err(first) => {
            tracing::debug!(server = %task.shared.name, "discover lifecycle failed ({first}); trying initialize");
            connect_with(task, notes, ClientLifecycleMode::Initialize)
                .await
                .map_err(|_| first)
        }
    }
}

async fn connect_with(
    task: &Task,
    notes: mpsc::UnboundedSender<Note>,
    lifecycle: ClientLifecycleMode,
) -> Result<Conn, McpError> {
    let name = task.shared.name.clone();
    let client = Client {
        server: Arc::from(name.as_str()),
        roots: task.shared.spec.roots.iter().map(|d| dir_root(d)).collect(),
        notes,
    };
    let connect_err = |e: rmcp::service::ClientInitializeError| McpError::Connect {
        server: name.clone(),
        message: e.to_string(),
    };
    let (service, child) = match &task.shared.spec.transport {
        McpTransport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            let spawned = child::spawn(&name, command, args, env, cwd.as_deref(), task.shared.noise.clone())?;
            let mut child = spawned.child;
            task.shared.live().pid = Some(spawned.pid);
            // The discover probe makes Python-SDK servers print a 31-line
            // validation traceback on stderr (before they answer it): what
            // they print until the handshake is over is relayed at DEBUG.
            let probing = matches!(lifecycle, ClientLifecycleMode::Auto { .. });
            if probing {
                spawned.quiet.begin();
            }
            let served = client
                .serve_with_lifecycle((spawned.stdout, spawned.stdin), lifecycle)
                .await;
            if probing {
                spawned.quiet.end();
            }
            match served {
                Ok(service) => (service, Some(child)),
                Err(e) => {
                    // The pipes are gone with the failed service: stdin is closed.
                    child::stop(&name, &mut child).await;
                    task.shared.live().pid = None;
                    return Err(connect_err(e));
                }
            }
        }
        McpTransport::Http { url, headers } => {
            use rmcp::transport::StreamableHttpClientTransport;
            use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
            let mut custom = std::collections::HashMap::new();
            for (k, v) in headers {
                let bad = |what: &str| McpError::Config {
                    server: name.clone(),
                    message: format!("header {k:?}: invalid {what}"),
                };
                let key = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("name"))?;
                let value = http::HeaderValue::from_str(v).map_err(|_| bad("value"))?;
                custom.insert(key, value);
            }
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(custom);
            let http = super::traced_http::TracedHttp::new().map_err(|e| McpError::Connect {
                server: name.clone(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
            let transport = StreamableHttpClientTransport::with_client(http, config);
            let service = client
                .serve_with_lifecycle(transport, lifecycle)
                .await
                .map_err(connect_err)?;
            (service, None)
        }
    };
    let info = service.peer().peer_info();
    let protocol = info.as_ref().map(|i| i.protocol_version.to_string());
    let modern = info.as_ref().is_some_and(|i| !i.protocol_version.has_initialize());
    // Always re-read: rmcp's response cache would otherwise answer a
    // `resources/read` from memory (and serve stale entries on errors).
    service
        .peer()
        .set_response_cache_config(ClientCacheConfig::disabled())
        .await;
    tracing::info!(server = %name, protocol = ?protocol, "MCP server connected");
    {
        let mut live = task.shared.live();
        live.protocol = protocol;
        live.last_error = None;
    }
    let http = child.is_none();
    Ok(Conn {
        service,
        child,
        modern,
        http,
    })
}

fn dir_root(dir: &Path) -> Root {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let uri = url::Url::from_directory_path(&abs)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| format!("file://{}", abs.display()));
    let name = abs.file_name().map(|n| n.to_string_lossy().into_owned());
    match name {
        Some(n) => Root::new(uri).with_name(n),
        None => Root::new(uri),
    }
}

/// Runs one session until it is lost (returns true) or shut down (false).
async fn session(
    task: &mut Task,
    subs: &mut Subs,
    conn: Conn,
    notes: &mut mpsc::UnboundedReceiver<Note>,
    notes_tx: &mpsc::UnboundedSender<Note>,
) -> bool {
    let name = task.shared.name.clone();
    let Conn {
        service,
        mut child,
        modern,
        http,
    } = conn;
    let peer = service.peer().clone();
    let cancel = service.cancellation_token();
    let mut closed = Box::pin(service.waiting());
    // `closed` must not be polled again once it has completed.
    let mut ended = false;

    let session_no = {
        let mut live = task.shared.live();
        live.connects += 1;
        live.connects
    };
    let probe = http.then(|| spawn_probe(peer.clone(), notes_tx.clone(), session_no));
    // A server that accepts the handshake but never answers tools/list or
    // resources/list must not wedge this task: bound the setup.
    let set_up = tokio::time::timeout(CONNECT_TIMEOUT, async {
        refresh_tools(&task.shared, &peer).await;
        task.shared.live().peer = Some(peer.clone());
        resync(task, subs, &peer, modern, notes_tx).await;
        start_pollers(task, subs, &peer, modern).await;
    })
    .await
    .is_ok();
    // Only now is the server fully set up: `McpHub::start` returning means
    // an update from here on is seen.
    task.shared.attempted.send_replace(true);
    if !set_up {
        tracing::warn!(server = %name, "MCP server did not answer its setup requests within {CONNECT_TIMEOUT:?}");
    }

    let mut stop = task.shutdown.clone();
    let lost = !set_up
        || loop {
            tokio::select! {
                _ = &mut closed, if !ended => {
                    ended = true;
                    tracing::warn!(server = %name, "MCP server closed the connection");
                    break true;
                }
                _ = stopped(&mut stop) => break false,
                Some(note) = notes.recv() => match note {
                    Note::Updated(uri) => {
                        served_update(task, subs, &peer, &uri);
                        trigger(subs, &uri, notes_tx);
                    }
                    Note::Flush(uri) => flush(task, subs, &peer, uri),
                    Note::ResourceListChanged => resync(task, subs, &peer, modern, notes_tx).await,
                    Note::ListenEnded => {
                        subs.listened = None;
                        resync(task, subs, &peer, modern, notes_tx).await;
                    }
                    Note::Dead(n) if n == session_no => {
                        tracing::warn!(server = %name, "MCP server stopped answering ping; dropping the session");
                        break true;
                    }
                    Note::Dead(_) => {}
                    Note::ToolListChanged => {
                        refresh_tools(&task.shared, &peer).await;
                        // A tool:// subscription may have found its tool.
                        start_pollers(task, subs, &peer, modern).await;
                    }
                },
            }
        };
    // Tool calls fail fast from here on, with a clear error.
    task.shared.live().peer = None;
    if let Some(probe) = probe {
        probe.abort();
    }
    // Cancelling the service closes the transport (stdin EOF for stdio) and
    // fails the requests still waiting on it. A no-op if it already ended.
    cancel.cancel();
    if !ended {
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut closed).await;
    }
    if let Some(child) = child.as_mut() {
        if lost {
            child::reap(child).await;
        } else {
            child::stop(&name, child).await;
        }
    }
    lost
}

fn spawn_probe(peer: Peer<RoleClient>, notes: mpsc::UnboundedSender<Note>, session_no: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let ping = rmcp::model::ClientRequest::PingRequest(rmcp::model::PingRequest::default());
            match tokio::time::timeout(PROBE_TIMEOUT, peer.send_request(ping)).await {
                // Any correlated answer, an error included, proves the session lives.
                Ok(Ok(_)) | Ok(Err(rmcp::service::ServiceError::McpError(_))) => {}
                _ => {
                    let _ = notes.send(Note::Dead(session_no));
                    return;
                }
            }
        }
    })
}

async fn refresh_tools(shared: &Shared, peer: &Peer<RoleClient>) {
    let has_tools = peer.peer_info().is_none_or(|i| i.capabilities.tools.is_some());
    if !has_tools {
        return;
    }
    match peer.list_all_tools().await {
        Ok(tools) => shared.live().tools = tools,
        Err(e) => tracing::warn!(server = %shared.name, "tools/list failed: {e}"),
    }
}

/// How long asking a server whether it serves a `tool://` URI may take
/// (mcp-subscribe calls the tool once before it answers). Kept well under
/// CONNECT_TIMEOUT, which bounds the whole session setup.
const SERVED_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Sets up each `tool://` subscription whose tool this server has (or that
/// names this server), unless already done on this connection: subscribed
/// when the server serves the URI itself, polled otherwise.
async fn start_pollers(task: &Task, subs: &mut Subs, peer: &Peer<RoleClient>, modern: bool) {
    let name = &task.shared.name;
    for i in 0..subs.specs.len() {
        let Some(poll) = poll_for(&subs.specs[i], name) else {
            continue;
        };
        if subs.pollers.contains_key(&i) || subs.served.contains(&i) {
            continue;
        }
        let has_tool = task
            .shared
            .with_tools(|tools| tools.iter().any(|t| t.name == poll.tool));
        if !has_tool && subs.specs[i].server.as_deref() != Some(name.as_str()) {
            continue;
        }
        if !modern {
            match serves_tool_uri(peer, &poll.subscription).await {
                Served::Yes => {
                    tracing::info!(server = %name, "{} is served by the server: subscribed, not polled", poll.subscription);
                    subs.served.insert(i);
                    continue;
                }
                Served::No => {}
                // Said, because the choice is then made by a clock.
                Served::NoAnswer => tracing::warn!(
                    server = %name,
                    "{} is polled: the server did not say within {}s whether it serves it",
                    poll.subscription,
                    SERVED_PROBE_TIMEOUT.as_secs()
                ),
            }
        }
        let poller = spawn_poller(poll, peer.clone(), subs.last_results.clone(), task.events.clone());
        subs.pollers.insert(i, poller);
    }
}

fn poll_for(spec: &SubscriptionSpec, server: &str) -> Option<Poll> {
    let SubscriptionTarget::Tool { tool, arguments } = &spec.target else {
        return None;
    };
    Some(Poll {
        server: server.to_owned(),
        subscription: spec.uri.clone(),
        tool: tool.clone(),
        arguments: arguments.clone(),
        interval: spec.interval,
    })
}

/// Whether the server serves a `tool://` URI as a subscribable resource.
/// A server that advertises resource subscriptions accepts any URI
/// (server-everything does), so for it only a listed URI counts; a server
/// that does not advertise them but accepts `resources/subscribe` for the
/// URI anyway is a proxy like mcp-subscribe, which polls for us.
enum Served {
    Yes,
    No,
    NoAnswer,
}

async fn serves_tool_uri(peer: &Peer<RoleClient>, uri: &str) -> Served {
    let advertised = peer
        .peer_info()
        .and_then(|i| i.capabilities.resources.as_ref().and_then(|r| r.subscribe))
        .unwrap_or(false);
    let probe = async {
        if advertised {
            let listed = peer
                .list_all_resources()
                .await
                .is_ok_and(|all| all.iter().any(|r| same_tool_uri(&r.uri, uri)));
            if !listed {
                return false;
            }
        }
        peer.subscribe(SubscribeRequestParams::new(uri.to_owned()))
            .await
            .is_ok()
    };
    match tokio::time::timeout(SERVED_PROBE_TIMEOUT, probe).await {
        Ok(true) => Served::Yes,
        Ok(false) => Served::No,
        Err(_) => Served::NoAnswer,
    }
}

/// A `resources/updated` for a `tool://` URI the server serves: the update
/// only says "changed" (mcp-subscribe cannot even read it back), so call
/// the tool once and fire with its result.
fn served_update(task: &Task, subs: &Subs, peer: &Peer<RoleClient>, uri: &str) {
    for &i in &subs.served {
        let spec = &subs.specs[i];
        if !same_tool_uri(&spec.uri, uri) {
            continue;
        }
        let Some(poll) = poll_for(spec, &task.shared.name) else {
            continue;
        };
        let (peer, last, events) = (peer.clone(), subs.last_results.clone(), task.events.clone());
        tokio::spawn(async move {
            poll_once(&poll, &peer, &last, &events, true).await;
        });
    }
}

/// Brings the subscribed set in line with the specs: lists resources when a
/// glob needs it, subscribes what is new, drops what vanished, and fires for
/// resources that appeared on a glob since the previous listing.
async fn resync(
    task: &Task,
    subs: &mut Subs,
    peer: &Peer<RoleClient>,
    modern: bool,
    notes_tx: &mpsc::UnboundedSender<Note>,
) {
    let name = &task.shared.name;
    let has_globs = subs
        .specs
        .iter()
        .any(|s| matches!(s.target, SubscriptionTarget::Glob { .. }));
    let listed: BTreeSet<String> = if has_globs {
        match peer.list_all_resources().await {
            Ok(resources) => resources.into_iter().map(|r| r.uri).collect(),
            Err(e) => {
                tracing::warn!(server = %name, "resources/list failed: {e}");
                subs.known.clone().unwrap_or_default()
            }
        }
    } else {
        BTreeSet::new()
    };
    let mut want = BTreeMap::new();
    let mut appeared = Vec::new();
    for (i, spec) in subs.specs.iter().enumerate() {
        match &spec.target {
            SubscriptionTarget::Resource { uri } => {
                want.entry(uri.clone()).or_insert(i);
            }
            SubscriptionTarget::Glob { pattern } => {
                for uri in listed.iter().filter(|u| glob_matches(pattern, u)) {
                    if want.insert(uri.clone(), i).is_none() && subs.known.as_ref().is_some_and(|k| !k.contains(uri)) {
                        appeared.push(uri.clone());
                    }
                }
            }
            SubscriptionTarget::Tool { .. } => {}
        }
    }
    if has_globs {
        subs.known = Some(listed);
    }
    subs.watched = want;
    let wanted: BTreeSet<String> = subs.watched.keys().cloned().collect();

    if modern {
        if subs.listened.as_ref() != Some(&wanted) {
            open_listen(task, subs, peer, wanted, has_globs, notes_tx).await;
        }
    } else {
        {
            for uri in wanted.difference(&subs.subscribed.clone()) {
                match peer.subscribe(SubscribeRequestParams::new(uri.clone())).await {
                    Ok(()) => {
                        subs.subscribed.insert(uri.clone());
                    }
                    Err(e) => {
                        tracing::warn!(server = %name, uri = %uri, "resources/subscribe failed: {e}")
                    }
                }
            }
            for uri in subs.subscribed.clone().difference(&wanted) {
                subs.subscribed.remove(uri);
                let _ = peer.unsubscribe(UnsubscribeRequestParams::new(uri.clone())).await;
            }
        }
    }
    for uri in appeared {
        trigger(subs, &uri, notes_tx);
    }
}

/// Opens a `subscriptions/listen` stream for `uris`, then drops the previous
/// one (in this order, so no update falls between the two).
async fn open_listen(
    task: &Task,
    subs: &mut Subs,
    peer: &Peer<RoleClient>,
    uris: BTreeSet<String>,
    list_changed: bool,
    notes_tx: &mpsc::UnboundedSender<Note>,
) {
    let mut filter = SubscriptionFilter::builder().tools_list_changed();
    if list_changed {
        filter = filter.resources_list_changed();
    }
    if !uris.is_empty() {
        filter = filter.resource_subscriptions(uris.iter().cloned());
    }
    let capacity = NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN);
    let mut stream = match peer.listen_with_capacity(filter.build(), capacity).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(server = %task.shared.name, "subscriptions/listen failed: {e}");
            return;
        }
    };
    let notes = notes_tx.clone();
    let server = task.shared.name.clone();
    let reader = tokio::spawn(async move {
        loop {
            let note = match stream.next().await {
                Ok(Some(ServerNotification::ResourceUpdatedNotification(n))) => Note::Updated(n.params.uri),
                Ok(Some(ServerNotification::ResourceListChangedNotification(_))) => Note::ResourceListChanged,
                Ok(Some(ServerNotification::ToolListChangedNotification(_))) => Note::ToolListChanged,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    tracing::debug!(server = %server, end = ?stream.end(), "subscriptions/listen ended");
                    // Don't spin against a server that ends every stream at once.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = notes.send(Note::ListenEnded);
                    return;
                }
            };
            if notes.send(note).is_err() {
                return;
            }
        }
    });
    if let Some(old) = subs.listen_task.replace(reader) {
        old.abort();
    }
    subs.listened = Some(uris);
}

/// An update for `uri`: open a debounce window unless one is open.
fn trigger(subs: &mut Subs, uri: &str, notes_tx: &mpsc::UnboundedSender<Note>) {
    let Some(&i) = subs.watched.get(uri) else {
        return;
    };
    if !subs.pending.insert(uri.to_owned()) {
        return; // coalesced into the open window
    }
    let debounce = subs.specs[i].debounce;
    let notes = notes_tx.clone();
    let uri = uri.to_owned();
    if debounce.is_zero() {
        let _ = notes.send(Note::Flush(uri));
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(debounce).await;
        let _ = notes.send(Note::Flush(uri));
    });
}

/// A debounce window ended: re-read the resource now and fire with what it
/// says now (notifications may arrive out of order; the read is the truth).
fn flush(task: &Task, subs: &mut Subs, peer: &Peer<RoleClient>, uri: String) {
    subs.pending.remove(&uri);
    let Some(&i) = subs.watched.get(&uri) else {
        return;
    };
    let subscription = subs.specs[i].uri.clone();
    let peer = peer.clone();
    let events = task.events.clone();
    let server = task.shared.name.clone();
    tokio::spawn(async move {
        let read = match peer.read_resource(ReadResourceRequestParams::new(uri.clone())).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(server = %server, uri = %uri, "re-reading updated resource failed: {e}");
                return;
            }
        };
        let contents: Vec<serde_json::Value> = read
            .contents
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let event = ResourceEvent {
            contents: truncate(render_read(&uri, &contents), MAX_EVENT_CONTENTS),
            uri,
            server,
            subscription,
        };
        let _ = events.send(event).await;
    });
}
