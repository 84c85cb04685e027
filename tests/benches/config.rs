//! Config loading against its size: one agent with N stdio MCP servers
//! (and N agents in the main file), N doubling until one load takes more
//! than 2 s. Prints the time per item at each size (flat when loading is
//! linear) and the largest config loaded within 1 s.
//!
//! `cargo bench --bench config` (CONFIG_BENCH_MAX caps N).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

fn servers_config(n: usize) -> String {
    let mut s =
        String::from("state_dir: /tmp/agentd-config-bench\nagents:\n  - name: big\n    model: m\n    mcp_servers:\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "      - {{name: s{i}, command: mcp-server-{i}, args: [--port, \"{i}\"]}}"
        );
    }
    s.push_str("    subscriptions:\n");
    for i in (0..n).step_by(10) {
        let _ = writeln!(s, "      - {{uri: \"file:///srv/{i}.md\", server: s{i}}}");
    }
    s
}

fn agents_config(n: usize) -> String {
    let mut s = String::from("state_dir: /tmp/agentd-config-bench\ndefaults: {model: m}\nagents:\n");
    for i in 0..n {
        let _ = writeln!(s, "  - {{name: a{i}, system_prompt: \"agent {i}\"}}");
    }
    s
}

fn measure(dir: &Path, what: &str, make: fn(usize) -> String, max: usize) {
    let path = dir.join(format!("{what}.yaml"));
    let mut best = 0;
    let mut n = 1000;
    while n <= max {
        std::fs::write(&path, make(n)).expect("write config");
        let t = Instant::now();
        let r = agentd::config::load_with_env(&path, &|_| None);
        let took = t.elapsed();
        if let Err(e) = r {
            panic!("{what} n={n}: {e}");
        }
        println!(
            "{what:<8} n={n:>8}  {:>9.1} ms  {:>6.2} µs per item",
            took.as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1e6 / n as f64
        );
        if took <= Duration::from_secs(1) {
            best = n;
        }
        if took > Duration::from_secs(2) {
            break;
        }
        n *= 2;
    }
    println!("{what}: largest config loaded within 1 s: {best} items");
}

fn main() {
    let max: usize = std::env::var("CONFIG_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_096_000);
    let dir = tempfile::tempdir().expect("tempdir");
    measure(dir.path(), "servers", servers_config, max);
    measure(dir.path(), "agents", agents_config, max);
}
