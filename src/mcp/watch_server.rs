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
//! It must never touch anything outside DIR, and DIR may be a workdir that
//! sandboxed code writes, so the rule is [`crate::beneath`]'s, the same as
//! fence `:create`: a name is made relative to DIR lexically
//! ([`beneath::under`]), then resolved by the kernel beneath a descriptor of
//! DIR opened once at start (`openat2(RESOLVE_BENEATH)`). Links that stay
//! inside are followed; one that leads out is refused, whatever is swapped
//! when; fifos, devices and sockets are refused and never waited on;
//! listings walk descriptor to descriptor and never follow a link.

use std::collections::{BTreeSet, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
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
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::beneath::{self, Denied, NotUnder};

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
        inner: Arc::new(
            Inner::new(&root).map_err(|e| anyhow::anyhow!("mcp-watch: cannot open {}: {e}", root.display()))?,
        ),
    };
    // Watch before serving, so no change between the first listing and the
    // first notification is lost.
    let (fs_tx, fs_rx) = mpsc::unbounded_channel();
    // A link planted under DIR is not a reason to watch where it leads.
    let mut watcher = notify::RecommendedWatcher::new(
        move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                let _ = fs_tx.send(event);
            }
        },
        notify::Config::default().with_follow_symlinks(false),
    )?;
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
    /// DIR, canonical: what names are made relative to, and what URIs say.
    root: PathBuf,
    /// DIR, opened once: what every name is resolved beneath.
    root_fd: OwnedFd,
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
    let mut known: BTreeSet<PathBuf> = inner.files().into_iter().map(|(p, _)| p).collect();
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
            if inner.is_file(path) {
                inner.notify_updated(&file_uri(path)).await;
            }
        }
        if structural {
            let now: BTreeSet<PathBuf> = inner.files().into_iter().map(|(p, _)| p).collect();
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
    /// `root` canonical.
    fn new(root: &Path) -> std::io::Result<Inner> {
        Ok(Inner {
            root: root.to_path_buf(),
            root_fd: beneath::open_root(root)?,
            legacy: AtomicBool::new(false),
            subscribed: Mutex::new(HashSet::new()),
            sinks: Mutex::new(Vec::new()),
            peer: OnceLock::new(),
        })
    }

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

    /// `path` (relative, absolute inside DIR, or a `file://` URI) as a
    /// path relative to DIR; the error is a sentence for the client.
    fn relative(&self, path: &str) -> Result<PathBuf, String> {
        beneath::under(&self.root, path).map_err(|why| match why {
            NotUnder::NotAFileUri => format!("{path:?} is not a file:// URI of a local path"),
            NotUnder::Outside => outside(path),
        })
    }

    /// Whether `path` (absolute, from a filesystem event) is a regular
    /// file reached beneath DIR.
    fn is_file(&self, path: &Path) -> bool {
        path.strip_prefix(&self.root)
            .ok()
            .and_then(|rel| beneath::stat(&self.root_fd, rel).ok())
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
    }

    /// Every regular file under DIR (absolute) with its size, sorted.
    fn files(&self) -> Vec<(PathBuf, u64)> {
        let files = beneath::list_files(&self.root_fd, Path::new("")).unwrap_or_default();
        files
            .into_iter()
            .map(|(rel, size)| (self.root.join(rel), size))
            .collect()
    }

    /// Reads the regular file `path` names beneath DIR.
    async fn read(&self, path: &str) -> Result<(PathBuf, Vec<u8>), String> {
        let rel = self.relative(path)?;
        let file = beneath::open_file(&self.root_fd, &rel).map_err(|d| denied(path, d, "cannot read"))?;
        let mut bytes = Vec::new();
        tokio::fs::File::from_std(file)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        Ok((rel, bytes))
    }
}

fn outside(path: &str) -> String {
    format!("{path:?} is outside the watched directory")
}

/// Why `path` was not given, for the client; `doing` starts an I/O error.
fn denied(path: &str, d: Denied, doing: &str) -> String {
    match d {
        Denied::Outside => outside(path),
        Denied::Special(kind) => format!("refused: {path:?} is {kind}"),
        Denied::Directory => format!("{doing} {path}: it is a directory"),
        Denied::ParentNotDirectory => format!("{doing} {path}: a parent is not a directory"),
        Denied::Io(e) => format!("{doing} {path}: {e}"),
    }
}

fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(path)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| format!("file://{}", path.display()))
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
        let resources = self
            .inner
            .files()
            .into_iter()
            .map(|(path, size)| {
                let name = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                Resource::new(file_uri(&path), name)
                    .with_mime_type(mime_for(&path))
                    .with_size(size)
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
        let (path, bytes) = self.inner.read(&request.uri).await.map_err(not_found)?;
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
        // A file that does not exist yet may be subscribed to; one reached
        // through a link that leads out may not.
        let rel = self
            .inner
            .relative(&request.uri)
            .map_err(|why| ErrorData::invalid_params(why, None))?;
        if let Err(Denied::Outside) = beneath::stat(&self.inner.root_fd, &rel) {
            return Err(ErrorData::invalid_params(outside(&request.uri), None));
        }
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
        match request.name.as_ref() {
            "list_files" => {
                let (p, rel) = match arg("path") {
                    Some(p) => match self.inner.relative(p) {
                        Ok(rel) => (p, rel),
                        Err(why) => return Ok(tool_error(why)),
                    },
                    None => (".", PathBuf::new()),
                };
                let files = match beneath::list_files(&self.inner.root_fd, &rel) {
                    Ok(files) => files,
                    // Nothing there (yet): nothing to list.
                    Err(Denied::ParentNotDirectory) => Vec::new(),
                    Err(Denied::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(d) => return Ok(tool_error(denied(p, d, "cannot list"))),
                };
                let lines: Vec<String> = files
                    .into_iter()
                    .map(|(rel, size)| format!("{}\t{size}", rel.display()))
                    .collect();
                Ok(CallToolResult::success(vec![ContentBlock::text(lines.join("\n"))]).into())
            }
            "read_file" => {
                let Some(p) = arg("path") else {
                    return Ok(tool_error("read_file needs a \"path\""));
                };
                match self.inner.read(p).await {
                    Ok((_, bytes)) => Ok(CallToolResult::success(vec![ContentBlock::text(
                        String::from_utf8_lossy(&bytes).into_owned(),
                    )])
                    .into()),
                    Err(why) => Ok(tool_error(why)),
                }
            }
            "write_file" => {
                let (Some(p), Some(content)) = (arg("path"), arg("content")) else {
                    return Ok(tool_error("write_file needs \"path\" and \"content\""));
                };
                let rel = match self.inner.relative(p) {
                    Ok(rel) if !rel.as_os_str().is_empty() => rel,
                    Ok(_) => return Ok(tool_error("write_file needs a file path")),
                    Err(why) => return Ok(tool_error(why)),
                };
                let written = beneath::create_file_at(&self.inner.root_fd, &rel, None).and_then(|mut file| {
                    std::io::Write::write_all(&mut file, content.as_bytes()).map_err(Denied::from)
                });
                match written {
                    Ok(()) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                        "wrote {} bytes to {p}",
                        content.len()
                    ))])
                    .into()),
                    Err(d) => Ok(tool_error(denied(p, d, "cannot write"))),
                }
            }
            other => Err(ErrorData::invalid_params(format!("no tool named {other:?}"), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paths_outside_the_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("in")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("in/escape")).unwrap();
        let inner = Inner::new(&root).unwrap();
        assert_eq!(inner.relative("a.md").unwrap(), Path::new("a.md"));
        assert_eq!(inner.relative("in/../b.md").unwrap(), Path::new("b.md"));
        std::fs::write(root.join("in/real.md"), "x").unwrap();
        assert_eq!(inner.relative("in/real.md").unwrap(), Path::new("in/real.md"));
        assert_eq!(inner.read("in/real.md").await.unwrap().1, b"x");
        let uri = file_uri(&root.join("in/c.md"));
        assert_eq!(inner.relative(&uri).unwrap(), Path::new("in/c.md"));
        assert_eq!(inner.relative(&root.display().to_string()).unwrap(), Path::new(""));
        for bad in ["../x", "in/../../x", "/etc/passwd", "file:///etc/passwd"] {
            let why = inner.relative(bad).expect_err(bad);
            assert!(why.contains("outside the watched directory"), "{bad}: {why}");
        }
        // Lexically inside, but the link leads out: the kernel refuses it.
        let why = inner
            .read("in/escape/passwd")
            .await
            .expect_err("read through a link out");
        assert!(why.contains("outside the watched directory"), "{why}");
        assert!(inner.relative("file://host/x").is_err());
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
