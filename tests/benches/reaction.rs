//! Reaction latency through the whole of agentd: a file write in a watched
//! directory → the task recorded in the ledger → the LLM request arriving
//! at an OpenAI-compatible server on 127.0.0.1. Real agentd, real mcp-watch
//! (debounce 0), real ledger; the scripted server answers at once.
//!
//! Then a message's round trip, as the REPL and `agentd send --wait` make
//! it: the control request → task → model reply → the answer back.
//!
//! Run: `cargo bench --bench reaction` (prints p50/p99 over 1,000 events
//! and 200 round trips). With `OTEL_EXPORTER_OTLP_ENDPOINT` set, agentd
//! and its agent export traces there: the instrumentation's cost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

#[allow(dead_code)]
#[path = "../support/llm_server.rs"]
mod llm_server;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentd::ledger::{self, Ledger, TaskFilter};
use llm_server::{LlmServer, Reply};

const EVENTS: usize = 1000;
const ROUND_TRIPS: usize = 200;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let llm = LlmServer::start(Vec::new());
    // With no debounce one write can fire twice (inotify reports the
    // truncate and the write): script plenty of replies.
    for i in 0..EVENTS * 3 {
        llm.push(Reply::stream_text(&[&format!("ok {i}")]));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let cfg = dir.path().join("agentd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "agents:\n  - name: r\n    model: m\n    llm: {{base_url: \"{}\"}}\n    limits: {{history_messages: 2}}\n    mcp_servers: [{{name: inbox, command: agentd, args: [mcp-watch, \"{}\", --debounce-ms, \"0\"]}}]\n    subscriptions: [{{uri: \"file://{}/*.md\", debounce: 0ms, min_interval: 0ms}}]\n",
            llm.base_url(),
            inbox.display(),
            inbox.display()
        ),
    )
    .expect("config");
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args([
            "--no-repl",
            "--state-dir",
            state.to_str().unwrap_or_default(),
            cfg.to_str().unwrap_or_default(),
        ])
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()))
        .env("OPENAI_API_KEY", "sk-bench")
        .stdin(Stdio::null())
        .stderr(if std::env::var_os("REACTION_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn agentd");
    // Wait until the agent is up and subscribed: the first write must fire.
    std::thread::sleep(Duration::from_secs(2));
    let ledger_path = state.join(ledger::FILE_NAME);
    let note = inbox.join("note.md");
    let (mut to_task, mut to_llm) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = agentd::domain::TaskId(0);
    for i in 0..EVENTS {
        let written_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        // Counted before the write: a fast agent's request may arrive
        // before this thread runs again, and then no later one comes.
        let asked = llm.request_count();
        let t = Instant::now();
        std::fs::write(&note, format!("version {i}\n")).expect("write");
        while llm.request_count() <= asked {
            assert!(Instant::now() < deadline, "agentd stopped reacting at event {i}");
            std::thread::sleep(Duration::from_micros(50));
        }
        to_llm.push(t.elapsed().as_secs_f64() * 1e3);
        // Let every task finish so the next write is not queued behind one;
        // the first task created after the write is this event's.
        let created = loop {
            assert!(Instant::now() < deadline, "tasks never finished at event {i}");
            let l = Ledger::open_read_only(&ledger_path).expect("ledger");
            let tasks = l.list_tasks(&TaskFilter::default()).expect("tasks");
            let new: Vec<_> = tasks.iter().filter(|t| t.id > seen).collect();
            if !new.is_empty() && tasks.iter().all(|t| t.state.is_final()) {
                seen = tasks.iter().map(|t| t.id).max().unwrap_or(seen);
                break new.iter().map(|t| t.created_at).min().unwrap_or(0);
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        to_task.push(created as f64 - written_ms);
    }
    let socket = state.join(agentd::control::SOCKET_NAME);
    let mut round_trips = Vec::new();
    for i in 0..ROUND_TRIPS {
        let req = agentd::control::Request::Send {
            agent: "r".into(),
            text: format!("hello {i}"),
            wait: true,
        };
        let t = Instant::now();
        let r = agentd::control::client::request(&socket, &req, Duration::from_secs(30)).expect("send --wait");
        assert!(r.ok, "{r:?}");
        round_trips.push(t.elapsed().as_secs_f64() * 1e3);
    }
    round_trips.sort_by(f64::total_cmp);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    to_llm.sort_by(f64::total_cmp);
    to_task.sort_by(f64::total_cmp);
    println!(
        "{EVENTS} file writes: → task in the ledger p50 {:.1} ms p99 {:.1} ms (1 ms clock) | → LLM request at the server p50 {:.2} ms p99 {:.2} ms",
        pct(&to_task, 0.5),
        pct(&to_task, 0.99),
        pct(&to_llm, 0.5),
        pct(&to_llm, 0.99)
    );
    println!(
        "{ROUND_TRIPS} message round trips (send --wait: request → task → model → answer): p50 {:.2} ms p99 {:.2} ms",
        pct(&round_trips, 0.5),
        pct(&round_trips, 0.99)
    );
}
