//! Supervisor figures: time to READY, idle memory (RSS, PSS, USS) of the
//! supervisor and its agent children, and reload latency, for 1, 10 and
//! 100 agents. Prints a table; asserts nothing (targets live in the README).
//!
//! Run: `cargo bench --bench supervisor`
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentd::control::{self, AgentStatus, Request};

#[derive(Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
    uss: u64,
}

/// kB figures from /proc/PID/smaps_rollup.
fn mem(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
        uss: field("Private_Clean:") + field("Private_Dirty:"),
    }
}

fn status(sock: &Path) -> Vec<AgentStatus> {
    control::client::request(sock, &Request::Status, Duration::from_secs(10))
        .ok()
        .and_then(|r| r.result)
        .and_then(|v| serde_json::from_value(v["agents"].clone()).ok())
        .unwrap_or_default()
}

fn run(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("agents dir");
    for i in 0..n {
        std::fs::write(agents.join(format!("a{i}.yaml")), format!("name: a{i}\nmodel: m\n")).expect("agent file");
    }
    let cfg = dir.path().join("agentd.yaml");
    std::fs::write(&cfg, "include: [agents/*.yaml]\n").expect("config");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let state = dir.path().join("state");

    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args([
            "--state-dir",
            state.to_str().unwrap_or_default(),
            cfg.to_str().unwrap_or_default(),
        ])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agentd");
    let mut buf = [0u8; 4096];
    let ready = loop {
        match notify.recv(&mut buf) {
            Ok(len) if String::from_utf8_lossy(&buf[..len]).lines().any(|l| l == "READY=1") => break t0.elapsed(),
            Ok(_) => continue,
            Err(e) => panic!("no READY=1: {e}"),
        }
    };
    // Keep draining: systemd always reads, and a full socket queue would
    // block agentd's notifications.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while notify.recv(&mut buf).is_ok() {}
    });
    // Let the children settle into idle before measuring memory.
    std::thread::sleep(Duration::from_millis(500));
    let sock = state.join(control::SOCKET_NAME);
    let st = status(&sock);
    let sup = mem(child.id());
    let kids: Vec<Mem> = st.iter().filter_map(|a| a.pid).map(mem).collect();
    let sum = |f: fn(&Mem) -> u64| kids.iter().map(f).sum::<u64>();
    let total_pss = sup.pss + sum(|m| m.pss);
    let per_child_uss = if kids.is_empty() {
        0
    } else {
        sum(|m| m.uss) / kids.len() as u64
    };
    let per_child_rss = if kids.is_empty() {
        0
    } else {
        sum(|m| m.rss) / kids.len() as u64
    };

    // Reload latency: edit one agent, time until its new child is running.
    let mut reloads = Vec::new();
    for round in 0..5 {
        let old = status(&sock).into_iter().find(|a| a.name == "a0").and_then(|a| a.pid);
        let t = Instant::now();
        std::fs::write(
            agents.join("a0.yaml"),
            format!("name: a0\nmodel: m\nsystem_prompt: round {round}\n"),
        )
        .expect("edit");
        loop {
            let s = status(&sock);
            if s.iter()
                .any(|a| a.name == "a0" && a.state == "running" && a.pid.is_some() && a.pid != old)
            {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "reload never happened");
            std::thread::sleep(Duration::from_millis(2));
        }
        reloads.push(t.elapsed());
    }
    reloads.sort();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();

    println!(
        "{n:>4} agents | READY {:>7.1} ms | supervisor RSS {:>6} kB PSS {:>6} kB USS {:>6} kB | per child RSS {:>6} kB USS {:>5} kB | total PSS {:>7.1} MiB | reload p50 {:>6.1} ms (incl. {} ms debounce)",
        ready.as_secs_f64() * 1e3,
        sup.rss,
        sup.pss,
        sup.uss,
        per_child_rss,
        per_child_uss,
        total_pss as f64 / 1024.0,
        reloads[reloads.len() / 2].as_secs_f64() * 1e3,
        150,
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs benches as tests with no args: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for n in [1, 10, 100] {
        run(n);
    }
}
