//! Reaction latency of the MCP hub, p50/p99 over 1,000 events each:
//!
//! 1. notification → event: a scripted rmcp server (this binary, re-run with
//!    `--bench-server`) stamps CLOCK_MONOTONIC and sends
//!    `notifications/resources/updated`; the hub re-reads the resource (the
//!    contents carry the stamp) and emits the event. This is agentd's own
//!    overhead, including the one `resources/read` round trip the design
//!    requires. Measured over legacy `resources/subscribe` and over
//!    2026-07-28 `subscriptions/listen`.
//! 2. file write → event: `agentd mcp-watch` with its debounce at 0: inotify,
//!    the server, the notification, the re-read and the event. Configured
//!    debounces add their own quiet time on top of this.
//!
//! Run: `cargo bench --bench mcp` (needs nothing outside the repo).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentd::config::parse_subscription_uri;
use agentd::config::{McpServerSpec, McpTransport, SubscriptionSpec};
use agentd::mcp::{McpHub, ResourceEvent};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    ResourceContents, ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter, Tool,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext, SubscriptionSink};
use rmcp::{ServerHandler, ServiceExt};
use tokio::sync::mpsc;

const EVENTS: usize = 1000;
const TICK: &str = "bench://tick";

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The scripted server: tool `fire` stamps the clock and notifies.
#[derive(Clone)]
struct BenchServer {
    modern: bool,
    stamp: Arc<Mutex<u64>>,
    sinks: Arc<Mutex<Vec<SubscriptionSink>>>,
}

impl ServerHandler for BenchServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        let max = if self.modern {
            ProtocolVersion::V_2026_07_28
        } else {
            ProtocolVersion::V_2025_11_25
        };
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&max))
    }

    async fn list_tools(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "fire",
            "send one resource update",
            Arc::new(serde_json::Map::new()),
        )]))
    }

    async fn call_tool(
        &self,
        _r: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let now = monotonic_ns();
        *self.stamp.lock().unwrap() = now;
        if self.modern {
            let sinks = self.sinks.lock().unwrap().clone();
            for sink in sinks {
                let _ = sink.notify_resource_updated(TICK).await;
            }
        } else {
            #[allow(deprecated)]
            let _ = context
                .peer
                .notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(TICK))
                .await;
        }
        Ok(CallToolResult::success(vec![ContentBlock::text("fired")]).into())
    }

    async fn read_resource(
        &self,
        r: ReadResourceRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let stamp = *self.stamp.lock().unwrap();
        Ok(ReadResourceResult::new(vec![ResourceContents::text(stamp.to_string(), r.uri)]).into())
    }

    #[allow(deprecated)]
    async fn subscribe(&self, _r: SubscribeRequestParams, _c: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        Ok(())
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        self.sinks.lock().unwrap().push(context.sink().clone());
        context.cancelled().await;
        Ok(())
    }
}

fn stdio(name: &str, command: &str, args: Vec<String>) -> McpServerSpec {
    McpServerSpec {
        name: name.into(),
        transport: McpTransport::Stdio {
            command: command.into(),
            args,
            env: BTreeMap::new(),
            cwd: None,
        },
        tool_filter: None,
        roots: Vec::new(),
    }
}

fn subscription(uri: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        uri: uri.into(),
        target: parse_subscription_uri(uri).unwrap(),
        server: None,
        debounce: Duration::ZERO,
        interval: Duration::from_secs(3600),
        min_interval: Duration::ZERO,
    }
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{label:<58} n={:<5} p50={:>9.3?} p99={:>9.3?} max={:>9.3?} mean={:>9.3?}",
        samples.len(),
        pick(0.50),
        pick(0.99),
        samples[samples.len() - 1],
        mean
    );
}

async fn next(rx: &mut mpsc::Receiver<ResourceEvent>) -> ResourceEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event within 10 s")
        .expect("hub alive")
}

async fn bench_notification(modern: bool) -> Vec<Duration> {
    let exe = std::env::current_exe().unwrap().display().to_string();
    let mode = if modern { "modern" } else { "legacy" };
    let (tx, mut rx) = mpsc::channel(1024);
    let server = stdio("bench", &exe, vec!["--bench-server".into(), mode.into()]);
    let hub = McpHub::start(&[server], &[subscription(TICK)], tx).await;
    assert!(hub.servers()[0].connected, "{:?}", hub.servers());
    let mut samples = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS + 50 {
        hub.call_tool("fire", serde_json::Map::new()).await.unwrap();
        let event = next(&mut rx).await;
        let received = monotonic_ns();
        let sent: u64 = event.contents.parse().unwrap();
        if i >= 50 {
            // The first 50 warm up allocations and the page cache.
            samples.push(Duration::from_nanos(received.saturating_sub(sent)));
        }
    }
    hub.shutdown().await;
    samples
}

async fn bench_file_write() -> Vec<Duration> {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().canonicalize().unwrap();
    let file = dir.join("inbox.txt");
    std::fs::write(&file, "start").unwrap();
    let uri = url::Url::from_file_path(&file).unwrap().to_string();
    let (tx, mut rx) = mpsc::channel(1024);
    let server = stdio(
        "watch",
        env!("CARGO_BIN_EXE_agentd"),
        vec![
            "mcp-watch".into(),
            dir.display().to_string(),
            "--debounce-ms".into(),
            "0".into(),
        ],
    );
    let hub = McpHub::start(&[server], &[subscription(&uri)], tx).await;
    assert!(hub.servers()[0].connected, "{:?}", hub.servers());
    let mut samples = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS + 50 {
        let expected = format!("event {i}");
        let start = Instant::now();
        std::fs::write(&file, &expected).unwrap();
        // A write can produce several inotify events (truncate, modify,
        // close): the sample ends at the first event carrying the new text.
        loop {
            if next(&mut rx).await.contents == expected {
                break;
            }
        }
        if i >= 50 {
            samples.push(start.elapsed());
        }
        // Let the stragglers of this write land before the next one.
        tokio::time::sleep(Duration::from_millis(5)).await;
        while rx.try_recv().is_ok() {}
    }
    hub.shutdown().await;
    samples
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(pos) = args.iter().position(|a| a == "--bench-server") {
        let modern = args.get(pos + 1).map(String::as_str) == Some("modern");
        let server = BenchServer {
            modern,
            stamp: Arc::default(),
            sinks: Arc::default(),
        };
        rt.block_on(async move {
            let running = server.serve(rmcp::transport::stdio_pipes()).await.unwrap();
            let _ = running.waiting().await;
        });
        return;
    }
    // Same runtime flavour as the agent child.
    rt.block_on(async {
        println!("MCP reaction latency ({EVENTS} events each, current_thread runtime)");
        report(
            "notification -> event (resources/subscribe, 2025-11-25)",
            bench_notification(false).await,
        );
        report(
            "notification -> event (subscriptions/listen, 2026-07-28)",
            bench_notification(true).await,
        );
        report("file write -> event (mcp-watch, debounce 0)", bench_file_write().await);
    });
}
