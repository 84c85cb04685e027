//! MCP peers for tests: `@modelcontextprotocol/server-everything` (stdio and
//! streamable HTTP, pinned in `tests/peers/package.json`) and agentd's own
//! `mcp-watch`, plus config builders and bounded waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentd::config::parse_subscription_uri;
use agentd::config::{McpServerSpec, McpTransport, SubscriptionSpec};
use agentd::mcp::ResourceEvent;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// The installed server-everything entry point; panics with what to do
/// when it is missing.
pub fn server_everything_js() -> PathBuf {
    let js = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        js.is_file(),
        "server-everything is not installed: run tests/setup.sh \
         (or: npm install --prefix tests/peers --no-audit --no-fund)"
    );
    js
}

fn stdio(name: &str, command: &str, args: Vec<String>) -> McpServerSpec {
    McpServerSpec {
        name: name.to_owned(),
        transport: McpTransport::Stdio {
            command: command.to_owned(),
            args,
            env: BTreeMap::new(),
            cwd: None,
        },
        tool_filter: None,
        roots: Vec::new(),
    }
}

/// An installed npm peer's entry point (`tests/peers/node_modules/…`);
/// panics with what to do when it is missing.
pub fn npm_peer_js(package: &str) -> PathBuf {
    let js = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/node_modules")
        .join(package)
        .join("dist/index.js");
    assert!(js.is_file(), "{package} is not installed: run tests/setup.sh");
    js
}

/// `@modelcontextprotocol/server-filesystem DIR…` over stdio.
pub fn server_filesystem(name: &str, dirs: &[&Path]) -> McpServerSpec {
    let mut args = vec![
        npm_peer_js("@modelcontextprotocol/server-filesystem")
            .display()
            .to_string(),
    ];
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    stdio(name, "node", args)
}

/// `@modelcontextprotocol/server-memory`, its graph in `file`.
pub fn server_memory(name: &str, file: &Path) -> McpServerSpec {
    let js = npm_peer_js("@modelcontextprotocol/server-memory").display().to_string();
    with_env(
        stdio(name, "node", vec![js]),
        "MEMORY_FILE_PATH",
        &file.display().to_string(),
    )
}

/// server-everything over stdio.
pub fn server_everything(name: &str) -> McpServerSpec {
    let js = server_everything_js().display().to_string();
    stdio(name, "node", vec![js, "stdio".into()])
}

/// `agentd mcp-watch DIR`, with mcp-watch's own debounce in milliseconds.
pub fn mcp_watch(name: &str, dir: &Path, debounce_ms: u64) -> McpServerSpec {
    stdio(
        name,
        &super::agentd_bin().display().to_string(),
        vec![
            "mcp-watch".into(),
            dir.display().to_string(),
            "--debounce-ms".into(),
            debounce_ms.to_string(),
        ],
    )
}

/// A shell command as a server (`sh -c SCRIPT`), for misbehaving servers.
pub fn shell_server(name: &str, script: &str) -> McpServerSpec {
    stdio(name, "sh", vec!["-c".into(), script.into()])
}

pub fn with_env(mut spec: McpServerSpec, key: &str, value: &str) -> McpServerSpec {
    if let McpTransport::Stdio { env, .. } = &mut spec.transport {
        env.insert(key.to_owned(), value.to_owned());
    }
    spec
}

pub fn http(name: &str, url: &str) -> McpServerSpec {
    McpServerSpec {
        name: name.to_owned(),
        transport: McpTransport::Http {
            url: url.to_owned(),
            headers: BTreeMap::from([("X-Agentd-Test".to_owned(), "1".to_owned())]),
        },
        tool_filter: None,
        roots: Vec::new(),
    }
}

/// A subscription as the config loader would resolve it.
pub fn subscription(uri: &str, debounce: Duration, interval: Duration) -> SubscriptionSpec {
    SubscriptionSpec {
        uri: uri.to_owned(),
        target: parse_subscription_uri(uri).expect("valid subscription uri"),
        server: None,
        debounce,
        interval,
        // The hub does not throttle (the agent child does).
        min_interval: Duration::ZERO,
    }
}

/// `file://` URI of a path, as mcp-watch names it.
pub fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()))
        .expect("absolute path")
        .to_string()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event, or `None` after `timeout`.
pub async fn next_event(rx: &mut mpsc::Receiver<ResourceEvent>, timeout: Duration) -> Option<ResourceEvent> {
    tokio::time::timeout(timeout, rx.recv()).await.ok().flatten()
}

/// Every event until none arrives for `quiet` (bounded by `max` overall).
pub async fn events_until_quiet(
    rx: &mut mpsc::Receiver<ResourceEvent>,
    quiet: Duration,
    max: Duration,
) -> Vec<ResourceEvent> {
    let deadline = Instant::now() + max;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match next_event(rx, quiet).await {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

/// server-everything in streamable HTTP mode on a free loopback port.
pub struct HttpEverything {
    pub url: String,
    pub child: tokio::process::Child,
}

pub async fn start_http_everything() -> HttpEverything {
    start_http_everything_on(0).await
}

/// [`start_http_everything`] on a given port (0: any free one).
pub async fn start_http_everything_on(port: u16) -> HttpEverything {
    let js = server_everything_js();
    let preload = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/loopback.cjs");
    let mut child = tokio::process::Command::new("node")
        .arg("--require")
        .arg(preload)
        .arg(js)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(port) = line.strip_prefix("AGENTD_TEST_PORT=") {
                return port.trim().parse::<u16>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("server-everything HTTP mode printed its port");
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HttpEverything {
        url: format!("http://127.0.0.1:{port}/mcp"),
        child,
    }
}
