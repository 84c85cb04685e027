//! Overhead of the tool bridge: a bridged `get-sum` call (Unix socket, JSON
//! line, peer check, token check, hub call, journal step, reply) against
//! the same call made directly on the MCP hub, p50/p99 over 500 calls each,
//! both against the real server-everything over stdio.
//!
//! The bridge is the one the agent child runs ([`Bridge`]); the caller is
//! this process (a descendant of itself, as far as the peer check goes),
//! with the task's token, so every check runs as it does for sandboxed code.
//! Sandbox start-up and interpreter start-up are not included: they are the
//! same with or without the bridge.
//!
//! Run: `cargo bench --bench bridge` (needs `sh tests/setup.sh` once).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd::agent::Outbox;
use agentd::agent::bridge::{Bridge, client};
use agentd::config::{BridgeSpec, McpServerSpec, McpTransport};
use agentd::mcp::McpHub;
use serde_json::{Map, Value, json};

const CALLS: usize = 500;
const WARMUP: usize = 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let (p50, p99) = (percentile(&d, 0.50), percentile(&d, 0.99));
    println!(
        "{what:<28} p50 {:>8.1} µs   p99 {:>8.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    (p50, p99)
}

fn main() -> anyhow::Result<()> {
    let js = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    anyhow::ensure!(js.is_file(), "server-everything is missing: run sh tests/setup.sh");
    let spec = McpServerSpec {
        name: "everything".into(),
        transport: McpTransport::Stdio {
            command: "node".into(),
            args: vec![js.display().to_string(), "stdio".into()],
            env: BTreeMap::new(),
            cwd: None,
        },
        tool_filter: None,
        roots: Vec::new(),
    };
    // One worker thread serves the hub and the bridge, as the agent child's
    // single-threaded runtime does; calls come from this thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (events, _events_rx) = tokio::sync::mpsc::channel(16);
    let hub = Arc::new(rt.block_on(McpHub::start(std::slice::from_ref(&spec), &[], events)));
    anyhow::ensure!(
        hub.tools().iter().any(|t| t.name == "get-sum"),
        "server-everything did not come up"
    );
    let (outbox, mut journal) = Outbox::channel();
    let (bridge, dialer) = {
        let _guard = rt.enter();
        let bridge = Bridge::start(hub.clone(), BridgeSpec::default(), outbox);
        let dialer = bridge.dialer(nix::unistd::geteuid().as_raw())?;
        (bridge, dialer)
    };
    let lease = agentd::domain::Lease {
        agent: "bench".into(),
        pid: std::process::id(),
        generation: 1,
    };
    let token = bridge.begin(agentd::domain::TaskId(1), &lease)?;
    let args: Map<String, Value> = json!({"a": 2, "b": 3}).as_object().cloned().unwrap_or_default();

    let mut direct = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let started = Instant::now();
        let out = rt.block_on(hub.call_tool("get-sum", args.clone()))?;
        if i >= WARMUP {
            direct.push(started.elapsed());
        }
        anyhow::ensure!(out.text.contains('5'), "unexpected result {}", out.text);
    }
    let mut bridged = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let started = Instant::now();
        let reply = client::call(std::os::fd::AsFd::as_fd(&dialer), &token, "get-sum", args.clone())?;
        if i >= WARMUP {
            bridged.push(started.elapsed());
        }
        anyhow::ensure!(reply.ok, "bridge refused: {:?}", reply.error);
    }
    let mut steps = 0;
    while journal.try_recv().is_ok() {
        steps += 1;
    }

    println!("tool bridge overhead, get-sum on server-everything (stdio), {CALLS} calls each");
    let (d50, d99) = report("direct McpHub::call_tool", direct);
    let (b50, b99) = report("bridged (dialer fd + checks)", bridged);
    println!(
        "{:<28} p50 {:>8.1} µs   p99 {:>8.1} µs",
        "overhead",
        (b50.as_secs_f64() - d50.as_secs_f64()) * 1e6,
        (b99.as_secs_f64() - d99.as_secs_f64()) * 1e6
    );
    println!("journal steps sent: {steps}");
    drop(bridge);
    drop(hub);
    Ok(())
}
