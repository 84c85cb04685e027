//! The HTTP API at size: a real agentd with 100 agents and 100,000 tasks in
//! its ledger. Measures the latency of `GET /api/v1/tasks` (first page,
//! filtered by agent, by state, and a page deep in the list) and of
//! `GET /api/v1/agents`, over keep-alive connections on 127.0.0.1; then
//! the delay from a journal step's write to its arrival as a Server-Sent
//! Event, at a plain HTTP client and in headless Chromium's EventSource
//! (when chromium and chromedriver are installed).
//!
//! Run: `cargo bench --bench http` (prints p50/p99).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

#[allow(dead_code)]
#[path = "../support/llm_server.rs"]
mod llm_server;
#[allow(dead_code)]
#[path = "../support/webdriver.rs"]
mod webdriver;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llm_server::{LlmServer, Reply};

const TASKS: i64 = 100_000;
const AGENTS: usize = 100;
const ROUNDS: usize = 300;
const MESSAGES: usize = 200;

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{what:<44} p50 {:>7.3} ms  p99 {:>7.3} ms  (n={})",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        ms.len()
    );
}

/// 100,000 finished tasks over 100 agents, written straight into a fresh ledger.
fn fill(state: &std::path::Path) {
    std::fs::create_dir_all(state).unwrap();
    let path = state.join(agentd::ledger::FILE_NAME);
    drop(agentd::ledger::Ledger::open(&path).unwrap());
    let mut c = rusqlite::Connection::open(&path).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO tasks (agent, trigger_kind, trigger_payload, state, attempts, created_at, finished_at, result)
                 VALUES (?1, 'message', ?2, ?3, 1, ?4, ?4, 'done')",
            )
            .unwrap();
        for i in 0..TASKS {
            let agent = format!("a{:02}", i % AGENTS as i64);
            let payload = format!(r#"{{"kind":"message","text":"message {i}","from":"bench"}}"#);
            let state = if i % 10 == 0 { "failed" } else { "succeeded" };
            ins.execute(rusqlite::params![agent, payload, state, 1_700_000_000_000 + i])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let llm = LlmServer::start(Vec::new());
    for i in 0..MESSAGES * 2 + 10 {
        llm.push(Reply::stream_text(&[&format!("ok {i}")]));
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let t = Instant::now();
    fill(&state);
    println!("filled the ledger with {TASKS} tasks in {:?}", t.elapsed());
    let mut cfg = format!(
        "http: {{listen: \"127.0.0.1:0\"}}\ndefaults: {{model: m, llm: {{base_url: \"{}\"}}, limits: {{history_messages: 2}}}}\nagents:\n",
        llm.base_url()
    );
    for i in 0..AGENTS {
        cfg.push_str(&format!("  - {{name: a{i:02}}}\n"));
    }
    let cfg_path = dir.path().join("agentd.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_agentd"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--no-repl")
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .env_remove("AGENTD_HOME")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped however this ends, a panic included.
    let _agentd = Stop(child);
    let base = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(state.join("http.url"))
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .expect("agentd's API")
    .trim()
    .to_owned();
    let token = std::fs::read_to_string(state.join("http.token"))
        .unwrap()
        .trim()
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let req = client.get(format!("{base}{path}")).bearer_auth(&token);
        rt.block_on(async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.unwrap()
        })
    };
    // Everyone up: /readyz answers 200.
    wait_for(Duration::from_secs(60), || {
        let req = client.get(format!("{base}/readyz")).bearer_auth(&token);
        rt.block_on(async move { req.send().await.ok().filter(|r| r.status().is_success()) })
    })
    .expect("ready");

    for (what, path) in [
        ("GET /api/v1/tasks (newest 50)", "/api/v1/tasks".to_owned()),
        ("GET /api/v1/tasks?agent=a42", "/api/v1/tasks?agent=a42".to_owned()),
        (
            "GET /api/v1/tasks?state=failed",
            "/api/v1/tasks?state=failed".to_owned(),
        ),
        (
            "GET /api/v1/tasks?agent=a40&state=failed",
            "/api/v1/tasks?agent=a40&state=failed".to_owned(),
        ),
        (
            "GET /api/v1/tasks?before=50000 (deep page)",
            "/api/v1/tasks?before=50000".to_owned(),
        ),
        ("GET /api/v1/agents (100 agents)", "/api/v1/agents".to_owned()),
    ] {
        get(&path);
        let mut ms = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let body = get(&path);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(body.len() > 100);
        }
        report(what, ms);
    }

    // Journal write → SSE event at a plain client.
    let post = |text: &str| {
        let req = client
            .post(format!("{base}/api/v1/agents/a00/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"text": "{text}", "wait": true}}"#));
        rt.block_on(async move { req.send().await.unwrap().bytes().await.unwrap() });
    };
    let mut delays = Vec::new();
    {
        let req = client
            .get(format!("{base}/api/v1/events?agent=a00"))
            .bearer_auth(&token);
        let mut resp = rt.block_on(async move { req.send().await.unwrap() });
        let mut buf = String::new();
        for i in 0..MESSAGES {
            // Sent with wait from a thread of its own, while this one reads.
            let (b, tk, c) = (base.clone(), token.clone(), client.clone());
            let handle = rt.spawn(async move {
                c.post(format!("{b}/api/v1/agents/a00/messages"))
                    .bearer_auth(&tk)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"text": "m{i}", "wait": true}}"#))
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            });
            loop {
                if let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if block.contains("event: step") {
                        let now = chrono::Utc::now().timestamp_micros();
                        let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                        let v: serde_json::Value = serde_json::from_str(data).unwrap();
                        delays.push((now - v["written_at_us"].as_i64().unwrap()) as f64 / 1000.0);
                        break;
                    }
                    continue;
                }
                let chunk = rt.block_on(resp.chunk()).unwrap().unwrap();
                buf.push_str(&String::from_utf8_lossy(&chunk));
            }
            rt.block_on(handle).unwrap();
        }
    }
    report("journal write → SSE event (HTTP client)", delays);

    // The same in a browser's EventSource, if one is installed.
    let have_browser = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if have_browser {
        let out = Command::new(env!("CARGO_BIN_EXE_agentd"))
            .args(["dashboard", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let b = webdriver::Browser::start();
        b.goto(&link);
        b.script(
            "window.delays = []; const es = new EventSource('/api/v1/events?agent=a00');
             es.addEventListener('step', (e) => { const d = JSON.parse(e.data);
               window.delays.push(((performance.timeOrigin + performance.now()) * 1000 - d.written_at_us) / 1000); });
             window.es = es; return true;",
        );
        wait_for(Duration::from_secs(10), || {
            (b.script("return window.es.readyState;") == serde_json::json!(1)).then_some(())
        })
        .expect("EventSource open");
        for i in 0..MESSAGES {
            post(&format!("b{i}"));
        }
        let got = wait_for(Duration::from_secs(30), || {
            let v = b.script("return window.delays;");
            let a = v.as_array().cloned().unwrap_or_default();
            (a.len() >= MESSAGES).then_some(a)
        })
        .expect("browser saw the steps");
        report(
            "journal write → SSE event (Chromium)",
            got.iter().map(|v| v.as_f64().unwrap()).collect(),
        );
    } else {
        println!("journal write → SSE event (Chromium): skipped, chromium/chromedriver not installed");
    }
}

struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}
