//! `agentd mcp-watch DIR`: a stdio MCP server that exposes the files under
//! DIR as `file://` resources with real subscriptions.
//!
//! - `resources/list` lists every regular file under DIR (recursively) as
//!   `file:///absolute/path`; `resources/read` returns it (text, or base64
//!   blob when it is not UTF-8).
//! - Subscriptions are notify-driven: a changed file sends
//!   `notifications/resources/updated` to clients subscribed to it, a file
//!   that appears or vanishes sends `notifications/resources/list_changed`.
//!   Both the legacy `resources/subscribe` and the 2026-07-28
//!   `subscriptions/listen` are served, whichever the client speaks.
//!   Filesystem events are debounced (default [`DEFAULT_DEBOUNCE`]) so one
//!   editor save or one `cp` is one notification, not five.
//! - Tools `list_files`, `read_file`, `write_file` work on paths relative to
//!   DIR (absolute paths and `file://` URIs inside DIR are accepted too).
//!
//! It must never touch anything outside DIR: every path is normalized
//! lexically (`..` cannot climb out) and then through the filesystem (the
//! nearest existing ancestor is canonicalized, so a symlink cannot lead out).

use std::collections::{BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData, Implementation,
    InitializeRequestParams, InitializeResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{Peer, RequestContext, RoleServer, SubscriptionContext, SubscriptionSink};
use rmcp::{ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Quiet time after a filesystem event before notifications go out.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(25);

/// Options for [`serve_stdio_with`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub debounce: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

/// Serves DIR on stdin/stdout until the client disconnects.
pub async fn serve_stdio(dir: &Path) -> anyhow::Result<()> {
    serve_stdio_with(dir, WatchOptions::default()).await
}

/// [`serve_stdio`] with options.
pub async fn serve_stdio_with(dir: &Path, options: WatchOptions) -> anyhow::Result<()> {
    let root = dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("mcp-watch: cannot open {}: {e}", dir.display()))?;
    if !root.is_dir() {
        anyhow::bail!("mcp-watch: {} is not a directory", root.display());
    }
    let server = WatchServer {
        inner: Arc::new(Inner {
            root: root.clone(),
            legacy: AtomicBool::new(false),
            subscribed: Mutex::new(HashSet::new()),
            sinks: Mutex::new(Vec::new()),
            peer: OnceLock::new(),
        }),
    };
    // Watch before serving, so no change between the first listing and the
    // first notification is lost.
    let (fs_tx, fs_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let _ = fs_tx.send(event);
        }
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    let inner = server.inner.clone();
    let running = server.serve(rmcp::transport::stdio_pipes()).await?;
    let _ = inner.peer.set(running.peer().clone());
    let pump = tokio::spawn(pump_events(inner, fs_rx, options.debounce));
    let _ = running.waiting().await;
    pump.abort();
    drop(watcher);
    Ok(())
}

#[derive(Clone)]
struct WatchServer {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// The client used `initialize` (legacy lifecycle): send it unscoped
    /// notifications. A 2026-07-28 client gets them on its listen streams.
    legacy: AtomicBool,
    /// URIs subscribed with `resources/subscribe`.
    subscribed: Mutex<HashSet<String>>,
    /// Open `subscriptions/listen` streams.
    sinks: Mutex<Vec<SubscriptionSink>>,
    peer: OnceLock<Peer<RoleServer>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Collects filesystem events and sends notifications once things are
/// quiet for `debounce`.
async fn pump_events(inner: Arc<Inner>, mut fs_rx: mpsc::UnboundedReceiver<notify::Event>, debounce: Duration) {
    let mut known: BTreeSet<PathBuf> = list_files(&inner.root).into_iter().collect();
    loop {
        let Some(first) = fs_rx.recv().await else {
            return;
        };
        let mut changed: BTreeSet<PathBuf> = BTreeSet::new();
        let mut structural = false;
        let mut absorb = |event: notify::Event| {
            let (content, layout) = classify(&event.kind);
            structural |= layout;
            if content || layout {
                changed.extend(event.paths);
            }
        };
        absorb(first);
        // Absorb the rest of the burst: until `debounce` passes with no event.
        loop {
            while let Ok(event) = fs_rx.try_recv() {
                absorb(event);
            }
            if debounce.is_zero() {
                break;
            }
            match tokio::time::timeout(debounce, fs_rx.recv()).await {
                Ok(Some(event)) => absorb(event),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        for path in &changed {
            if path.is_file() {
                inner.notify_updated(&file_uri(path)).await;
            }
        }
        if structural {
            let now: BTreeSet<PathBuf> = list_files(&inner.root).into_iter().collect();
            if now != known {
                known = now;
                inner.notify_list_changed().await;
            }
        }
    }
}

/// (content may have changed, files may have appeared or vanished)
fn classify(kind: &EventKind) -> (bool, bool) {
    match kind {
        EventKind::Create(_) => (true, true),
        EventKind::Remove(_) => (false, true),
        EventKind::Modify(ModifyKind::Name(_)) => (true, true),
        EventKind::Modify(ModifyKind::Metadata(_)) => (false, false),
        EventKind::Modify(_) => (true, false),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => (true, false),
        EventKind::Access(_) => (false, false),
        EventKind::Any | EventKind::Other => (true, true),
    }
}

impl Inner {
    async fn notify_updated(&self, uri: &str) {
        if self.legacy.load(Ordering::Relaxed) && lock(&self.subscribed).contains(uri) {
            if let Some(peer) = self.peer.get() {
                let _ = peer
                    .notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri))
                    .await;
            }
        }
        for sink in self.live_sinks() {
            let wants = sink
                .accepted()
                .resource_subscriptions
                .as_ref()
                .is_some_and(|uris| uris.iter().any(|u| u == uri));
            if wants {
                let _ = sink.notify_resource_updated(uri).await;
            }
        }
    }

    async fn notify_list_changed(&self) {
        if self.legacy.load(Ordering::Relaxed) {
            if let Some(peer) = self.peer.get() {
                let _ = peer.notify_resource_list_changed().await;
            }
        }
        for sink in self.live_sinks() {
            if sink.accepted().resources_list_changed == Some(true) {
                let _ = sink.notify_resource_list_changed().await;
            }
        }
    }

    fn live_sinks(&self) -> Vec<SubscriptionSink> {
        lock(&self.sinks).clone()
    }

    fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        resolve_inside(&self.root, path)
    }
}

/// Resolves `path` (relative to `root`, absolute, or a `file://` URI) to a
/// path inside `root`, refusing `..` escapes and symlinks that lead out.
pub fn resolve_inside(root: &Path, path: &str) -> Result<PathBuf, String> {
    let refuse = || format!("{path:?} is outside the watched directory");
    let raw = if path.starts_with("file://") {
        url::Url::parse(path)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| format!("{path:?} is not a file:// URI of a local path"))?
    } else {
        PathBuf::from(path)
    };
    let joined = if raw.is_absolute() { raw } else { root.join(raw) };
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                if !normal.pop() {
                    return Err(refuse());
                }
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    if !normal.starts_with(root) {
        return Err(refuse());
    }
    // Follow symlinks through the nearest existing ancestor.
    let mut existing = normal.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            if !real.starts_with(root) {
                return Err(refuse());
            }
            let rest = normal.strip_prefix(existing).map_err(|_| refuse())?;
            // `join("")` would add a trailing slash to a file path.
            return Ok(if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            });
        }
        existing = existing.parent().ok_or_else(refuse)?;
    }
}

fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(path)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| format!("file://{}", path.display()))
}

/// Every regular file under `root`, sorted. Symlinks are not followed.
fn list_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn mime_for(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "md" | "markdown" => "text/markdown",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "html" => "text/html",
        "csv" => "text/csv",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "pdf" => "application/pdf",
        _ => "text/plain",
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn tool_error(message: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(message.into())]).into()
}

fn schema(value: Value) -> Arc<serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::new()),
    }
}

impl ServerHandler for WatchServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("agentd-mcp-watch", env!("CARGO_PKG_VERSION")))
        .with_instructions(format!(
            "Files under {} as file:// resources; subscribe to get notified of changes. \
             Tools list_files, read_file and write_file take paths relative to that directory.",
            self.inner.root.display()
        ))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        self.inner.legacy.store(true, Ordering::Relaxed);
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let root = &self.inner.root;
        let resources = list_files(root)
            .into_iter()
            .map(|path| {
                let name = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                let mut r = Resource::new(file_uri(&path), name).with_mime_type(mime_for(&path));
                if let Ok(meta) = std::fs::metadata(&path) {
                    r = r.with_size(meta.len());
                }
                r
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let not_found = |why: String| ErrorData::resource_not_found(why, None);
        let path = self.inner.resolve(&request.uri).map_err(not_found)?;
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| not_found(format!("{}: {e}", request.uri)))?;
        let contents = match String::from_utf8(bytes) {
            Ok(text) => ResourceContents::text(text, request.uri.clone()),
            Err(e) => ResourceContents::blob(base64(e.as_bytes()), request.uri.clone()),
        }
        .with_mime_type(mime_for(&path));
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.inner
            .resolve(&request.uri)
            .map_err(|why| ErrorData::invalid_params(why, None))?;
        lock(&self.inner.subscribed).insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        lock(&self.inner.subscribed).remove(&request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let sink = context.sink().clone();
        lock(&self.inner.sinks).push(sink.clone());
        context.cancelled().await;
        lock(&self.inner.sinks).retain(|s| s.id() != sink.id());
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let path = json!({"type": "string", "description": "Path relative to the watched directory"});
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new(
                "list_files",
                "List the files under the watched directory (or under one of its subdirectories), one relative path per line with its size.",
                schema(json!({"type": "object", "properties": {"path": path}})),
            ),
            Tool::new(
                "read_file",
                "Read a file inside the watched directory.",
                schema(json!({"type": "object", "properties": {"path": path}, "required": ["path"]})),
            ),
            Tool::new(
                "write_file",
                "Write (create or replace) a file inside the watched directory; missing parent directories are created.",
                schema(json!({
                    "type": "object",
                    "properties": {"path": path, "content": {"type": "string"}},
                    "required": ["path", "content"]
                })),
            ),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let arg = |k: &str| args.get(k).and_then(Value::as_str);
        let root = &self.inner.root;
        match request.name.as_ref() {
            "list_files" => {
                let dir = match arg("path") {
                    Some(p) => match self.inner.resolve(p) {
                        Ok(dir) => dir,
                        Err(why) => return Ok(tool_error(why)),
                    },
                    None => root.clone(),
                };
                let lines: Vec<String> = list_files(&dir)
                    .into_iter()
                    .map(|p| {
                        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                        format!("{}\t{size}", p.strip_prefix(root).unwrap_or(&p).display())
                    })
                    .collect();
                Ok(CallToolResult::success(vec![ContentBlock::text(lines.join("\n"))]).into())
            }
            "read_file" => {
                let Some(p) = arg("path") else {
                    return Ok(tool_error("read_file needs a \"path\""));
                };
                let path = match self.inner.resolve(p) {
                    Ok(path) => path,
                    Err(why) => return Ok(tool_error(why)),
                };
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(CallToolResult::success(vec![ContentBlock::text(
                        String::from_utf8_lossy(&bytes).into_owned(),
                    )])
                    .into()),
                    Err(e) => Ok(tool_error(format!("cannot read {p}: {e}"))),
                }
            }
            "write_file" => {
                let (Some(p), Some(content)) = (arg("path"), arg("content")) else {
                    return Ok(tool_error("write_file needs \"path\" and \"content\""));
                };
                let path = match self.inner.resolve(p) {
                    Ok(path) if path != *root => path,
                    Ok(_) => return Ok(tool_error("write_file needs a file path")),
                    Err(why) => return Ok(tool_error(why)),
                };
                if let Some(parent) = path.parent()
                    && let Err(e) = tokio::fs::create_dir_all(parent).await
                {
                    return Ok(tool_error(format!("cannot create {}: {e}", parent.display())));
                }
                match tokio::fs::write(&path, content).await {
                    Ok(()) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                        "wrote {} bytes to {p}",
                        content.len()
                    ))])
                    .into()),
                    Err(e) => Ok(tool_error(format!("cannot write {p}: {e}"))),
                }
            }
            other => Err(ErrorData::invalid_params(format!("no tool named {other:?}"), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("in")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("in/escape")).unwrap();
        assert_eq!(resolve_inside(&root, "a.md").unwrap(), root.join("a.md"));
        assert_eq!(resolve_inside(&root, "in/../b.md").unwrap(), root.join("b.md"));
        std::fs::write(root.join("in/real.md"), "x").unwrap();
        let real = resolve_inside(&root, "in/real.md").unwrap();
        assert_eq!(real, root.join("in/real.md"));
        assert!(real.is_file());
        let uri = file_uri(&root.join("in/c.md"));
        assert_eq!(resolve_inside(&root, &uri).unwrap(), root.join("in/c.md"));
        for bad in [
            "../x",
            "in/../../x",
            "/etc/passwd",
            "in/escape/passwd",
            "file:///etc/passwd",
        ] {
            assert!(resolve_inside(&root, bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}
