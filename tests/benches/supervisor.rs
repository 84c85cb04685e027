//! Supervisor figures: time to READY, idle memory (RSS, PSS, USS) of the
//! supervisor, its zygote and its agent children, the supervisor's CPU while
//! idle, and reload latency, for 1, 10, 100 and 1,000 agents; then the same
//! 1,000 idle agents under Python agentd 0.13.0 (PyPI, pinned, in the
//! virtualenv `tests/peers/agentd-py-venv`, made here when missing) beside
//! this agentd. Prints tables; asserts nothing (targets live in the README).
//!
//! Run: `cargo bench --bench supervisor` (`-- --no-python` skips the
//! side by side, `-- --side-by-side` runs only that, `-- --only N` runs N
//! agents only)
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

#[path = "../support/procs.rs"]
mod procs;
use procs::children_of;

/// CPU time (user + system) `pid` used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After "pid (comm) ": state is field 3; utime 14 and stime 15.
    let f = |i: usize| rest.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    f(14) + f(15)
}

/// Percent of one core `pid` used over `over`.
fn idle_cpu(pid: u32, over: Duration) -> f64 {
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let before = cpu_ticks(pid);
    std::thread::sleep(over);
    (cpu_ticks(pid) - before) as f64 / hz / over.as_secs_f64() * 100.0
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What one run measured.
struct Figures {
    ready: Duration,
    total_pss: u64,
    median_uss: u64,
    p95_uss: u64,
    idle_cpu: f64,
}

/// Starts this agentd on `cfg` with NOTIFY_SOCKET; returns it and the time to READY=1.
fn start_agentd(cfg: &Path, state: &Path, dir: &Path) -> (std::process::Child, Duration) {
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_agentd"))
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
    (child, ready)
}

/// Memory of agentd (supervisor, zygote, agents) once idle.
fn measure_agentd(child: &std::process::Child, sock: &Path, n: usize) -> (Figures, Mem, Mem) {
    // Let the children settle into idle before measuring memory.
    std::thread::sleep(Duration::from_millis(500));
    let st = status(sock);
    let agents: Vec<u32> = st.iter().filter_map(|a| a.pid).collect();
    assert_eq!(agents.len(), n, "every agent runs");
    let sup = mem(child.id());
    let all: Vec<u32> = children_of(child.id());
    let total_pss = sup.pss + all.iter().map(|p| mem(*p).pss).sum::<u64>();
    let kids: Vec<Mem> = agents.iter().map(|p| mem(*p)).collect();
    let mut uss: Vec<u64> = kids.iter().map(|m| m.uss).collect();
    uss.sort_unstable();
    let rss = kids.iter().map(|m| m.rss).sum::<u64>() / kids.len().max(1) as u64;
    let cpu = idle_cpu(child.id(), Duration::from_secs(3));
    (
        Figures {
            ready: Duration::ZERO,
            total_pss,
            median_uss: percentile(&uss, 0.5),
            p95_uss: percentile(&uss, 0.95),
            idle_cpu: cpu,
        },
        sup,
        Mem {
            rss,
            pss: 0,
            uss: percentile(&uss, 0.5),
        },
    )
}

fn stop(child: &mut std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn run(n: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("agents dir");
    for i in 0..n {
        std::fs::write(agents.join(format!("a{i}.yaml")), format!("name: a{i}\nmodel: m\n")).expect("agent file");
    }
    let cfg = dir.path().join("agentd.yaml");
    std::fs::write(&cfg, "include: [agents/*.yaml]\nhttp: false\n").expect("config");
    let state = dir.path().join("state");
    let (mut child, ready) = start_agentd(&cfg, &state, dir.path());
    let sock = state.join(control::SOCKET_NAME);
    let (mut figures, sup, child_mem) = measure_agentd(&child, &sock, n);
    figures.ready = ready;

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
    stop(&mut child);
    // Again on the same state dir: agents' directories exist now, as at
    // every start but the first (creating them is most of a first start
    // on a busy ext4).
    let (mut again, warm) = start_agentd(&cfg, &state, dir.path());
    stop(&mut again);

    println!(
        "{n:>5} agents | READY {:>7.1} ms (again: {:>6.1} ms) | total PSS {:>7.1} MiB | per child USS median {:>4} kB p95 {:>4} kB RSS {:>5} kB | supervisor PSS {:>6} kB USS {:>6} kB, idle CPU {:.2}% | reload p50 {:>6.1} ms (incl. {} ms debounce)",
        ready.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        figures.total_pss as f64 / 1024.0,
        figures.median_uss,
        figures.p95_uss,
        child_mem.rss,
        sup.pss,
        sup.uss,
        figures.idle_cpu,
        reloads[reloads.len() / 2].as_secs_f64() * 1e3,
        150,
    );
    figures
}

/// Python agentd, pinned: the version the issue measured.
const PYTHON_AGENTD: &str = "agentd==0.13.0";

/// The virtualenv with Python agentd, made when missing; its `agentd`.
fn python_agentd() -> Option<std::path::PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/agentd-py-venv");
    let bin = venv.join("bin/agentd");
    let marker = venv.join(".pinned");
    if bin.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(PYTHON_AGENTD) {
        return Some(bin);
    }
    eprintln!("installing Python {PYTHON_AGENTD} into {}", venv.display());
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", PYTHON_AGENTD])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("cannot install Python {PYTHON_AGENTD}; side by side skipped");
        return None;
    }
    std::fs::write(&marker, PYTHON_AGENTD).ok()?;
    Some(bin)
}

/// One config both daemons read: Python agentd's format, `n` idle agents.
fn python_format_config(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut text = String::from("agents:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - name: a{i}\n    model: gpt-4o-mini\n    system_prompt: You are agent {i}.\n    mcp_servers: []\n    subscriptions: []\n"
        ));
    }
    let cfg = dir.join("agents.yaml");
    std::fs::write(&cfg, text).expect("config");
    cfg
}

fn python_ready(out: &str, n: usize) -> bool {
    out.lines()
        .filter(|l| l.starts_with("Agent ") && l.contains(" ready."))
        .count()
        >= n
}

/// PSS of `pid` and all its descendants, in kB.
fn tree_pss(pid: u32) -> u64 {
    mem(pid).pss + children_of(pid).into_iter().map(tree_pss).sum::<u64>()
}

/// Python agentd and this agentd on the same `n`-agent config.
fn side_by_side(n: usize) {
    let Some(py) = python_agentd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = python_format_config(dir.path(), n);

    // This agentd.
    let state = dir.path().join("state");
    let (mut child, ready) = start_agentd(&cfg, &state, dir.path());
    let (ours, ..) = measure_agentd(&child, &state.join(control::SOCKET_NAME), n);
    stop(&mut child);

    // Python agentd: one process; ready once it has started every agent,
    // which it says on stdout ("Agent NAME ready."), one line per agent.
    // Its stdin stays open: each agent reads it, and EOF ends them all.
    let log = dir.path().join("py.log");
    let t0 = Instant::now();
    let mut py_child = Command::new(&py)
        .arg(&cfg)
        .current_dir(dir.path())
        .env("OPENAI_API_KEY", "sk-bench")
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.path().join("py.err")).expect("log"))
        .spawn()
        .expect("spawn python agentd");
    let py_ready = loop {
        let out = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("py.err")).unwrap_or_default();
        if python_ready(&out, n) {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(300) || py_child.try_wait().ok().flatten().is_some() {
            eprintln!(
                "Python agentd did not get ready:\n{}",
                out.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    let py_pss = tree_pss(py_child.id());
    let py_cpu = idle_cpu(py_child.id(), Duration::from_secs(3));
    let _ = py_child.kill();
    let _ = py_child.wait();

    println!("side by side, {n} idle agents, one config:");
    println!(
        "  agentd (Rust)       READY {:>8.1} ms | total PSS {:>7.1} MiB | idle CPU {:.2}%",
        ready.as_secs_f64() * 1e3,
        ours.total_pss as f64 / 1024.0,
        ours.idle_cpu
    );
    match py_ready {
        Some(r) => println!(
            "  agentd 0.13.0 (Py)  ready {:>8.1} ms | total PSS {:>7.1} MiB | idle CPU {:.2}%  ({:.1}x the time, {:.1}x the memory)",
            r.as_secs_f64() * 1e3,
            py_pss as f64 / 1024.0,
            py_cpu,
            r.as_secs_f64() / ready.as_secs_f64(),
            py_pss as f64 / ours.total_pss.max(1) as f64
        ),
        None => println!(
            "  agentd 0.13.0 (Py)  never ready | total PSS {:>7.1} MiB",
            py_pss as f64 / 1024.0
        ),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs benches as tests with no args: skip then.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok());
    let side_by_side_only = args.iter().any(|a| a == "--side-by-side");
    for n in [1, 10, 100, 1000] {
        if !side_by_side_only && only.is_none_or(|o| o == n) {
            run(n);
        }
    }
    if !args.iter().any(|a| a == "--no-python") && only.is_none() {
        side_by_side(1000);
    }
}
