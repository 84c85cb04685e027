//! Fleet figures, on a throwaway PostgreSQL (Debian's server, as the
//! tests start it): failover time (kill -9 of the member running an agent
//! → the other member holds its lease → a task queued after the kill is
//! done there), task claims per second with 2 members × 50 agents (the
//! ledger alone: claim, fence check, finish; and through two agentd
//! processes running 50 agents each), and the cost of one journal
//! step on PostgreSQL against SQLite. Prints a table; asserts nothing.
//!
//! Run: `cargo bench --bench fleet`
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic
#![allow(dead_code)]

#[path = "../support/llm_server.rs"]
mod llm_server;
#[path = "../support/postgres.rs"]
mod postgres;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentd::domain::{Lease, NewStep, StepKind, TaskId, TaskState, Trigger};
use agentd::ledger::{Ledger, Location, PgTarget};

const TTL_S: u64 = 3;

fn lease(agent: &str, generation: u64) -> Lease {
    Lease {
        agent: agent.into(),
        pid: 1,
        generation,
    }
}

fn msg(i: usize) -> Trigger {
    Trigger::Message {
        text: format!("task {i}"),
        from: "bench".into(),
    }
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn location(url: &str) -> Location {
    Location::Postgres(PgTarget::parse(url).expect("url"))
}

fn spawn_member(dir: &Path, host: &str, url: &str, base_url: &str) -> Child {
    spawn_members_agents(dir, host, url, base_url, &["worker".to_string()])
}

fn spawn_members_agents(dir: &Path, host: &str, url: &str, base_url: &str, agents: &[String]) -> Child {
    let cfg = dir.join(format!("{host}.yaml"));
    let list: String = agents
        .iter()
        .map(|a| {
            format!(
                "  - name: {a}\n    model: test-model\n    system_prompt: You work.\n    llm: {{base_url: \"{base_url}\", api_key_env: BENCH_KEY, max_retries: 0, stream: false}}\n"
            )
        })
        .collect();
    std::fs::write(
        &cfg,
        format!(
            r#"shutdown_grace: 1s
ledger: "{url}"
fleet: {{host: {host}, lease_ttl: {TTL_S}s}}
http: false
agents:
{list}"#
        ),
    )
    .unwrap();
    let state = dir.join(format!("state-{host}"));
    std::fs::create_dir_all(&state).unwrap();
    Command::new(env!("CARGO_BIN_EXE_agentd"))
        .arg("--state-dir")
        .arg(&state)
        .arg(&cfg)
        .env("BENCH_KEY", "sk-bench")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agentd")
}

fn holder(url: &str) -> Option<String> {
    Ledger::open_read_only_at(&location(url))
        .and_then(|l| l.agent_leases())
        .ok()?
        .into_iter()
        .find(|l| l.agent == "worker" && !l.expired)
        .map(|l| l.host)
}

fn wait<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn failover(pg: &postgres::Postgres, runs: usize) {
    let url = pg.url("failover");
    let llm = llm_server::LlmServer::start(
        (0..runs * 4)
            .map(|i| llm_server::Reply::text(&format!("done {i}")))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut members = vec![
        (
            "alpha".to_string(),
            spawn_member(dir.path(), "alpha", &url, &llm.base_url()),
        ),
        (
            "beta".to_string(),
            spawn_member(dir.path(), "beta", &url, &llm.base_url()),
        ),
    ];
    let (mut to_lease, mut to_task) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let first = wait(Duration::from_secs(60), || holder(&url));
        let i = members.iter().position(|(h, _)| *h == first).unwrap();
        let killed = Instant::now();
        members[i].1.kill().unwrap();
        members[i].1.wait().unwrap();
        let mut l = Ledger::open_at(&location(&url)).unwrap();
        let id = l.enqueue("worker", &msg(run), None).unwrap().id();
        wait(Duration::from_secs(60), || holder(&url).filter(|h| *h != first));
        to_lease.push(killed.elapsed());
        wait(Duration::from_secs(60), || {
            (l.task(id).ok()?.state == TaskState::Succeeded).then_some(())
        });
        to_task.push(killed.elapsed());
        // The killed member comes back for the next run.
        let host = members[i].0.clone();
        members[i].1 = spawn_member(dir.path(), &host, &url, &llm.base_url());
        std::thread::sleep(Duration::from_secs(1));
    }
    for (_, c) in &mut members {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!(
        "failover (lease TTL {TTL_S}s, heartbeat {}s, {runs} runs): kill -9 → lease taken p50 {:.2} s (max {:.2} s); → task queued after the kill done on the other member p50 {:.2} s (max {:.2} s)",
        TTL_S as f64 / 3.0,
        pct(to_lease.clone(), 0.5).as_secs_f64(),
        pct(to_lease, 1.0).as_secs_f64(),
        pct(to_task.clone(), 0.5).as_secs_f64(),
        pct(to_task, 1.0).as_secs_f64(),
    );
}

/// Two members, each holding 50 agents' leases, claim and finish tasks
/// queued for their agents as fast as the ledger lets them.
fn claims(pg: &postgres::Postgres, per_agent: usize) {
    let url = pg.url("claims");
    let mut setup = Ledger::open_at(&location(&url)).unwrap();
    for a in 0..100 {
        for i in 0..per_agent {
            setup.enqueue(&format!("agent-{a}"), &msg(i), None).unwrap();
        }
    }
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|m| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut l = Ledger::open_at(&location(&url)).unwrap();
                l.join_fleet(&format!("member-{m}"), &[]).unwrap();
                let agents: Vec<String> = (0..50).map(|a| format!("agent-{}", m * 50 + a)).collect();
                for a in &agents {
                    l.acquire_agent(a, 60_000, 3).unwrap().unwrap();
                }
                let mut n = 0;
                loop {
                    let mut any = false;
                    for a in &agents {
                        if let Some(t) = l.claim_next(a, &lease(a, 1)).unwrap() {
                            l.finish(t.id, &lease(a, 1), TaskState::Succeeded, Some("ok"), None)
                                .unwrap();
                            n += 1;
                            any = true;
                        }
                    }
                    if !any {
                        return n;
                    }
                }
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let took = started.elapsed();
    println!(
        "claims, 2 members × 50 agents: {total} tasks claimed and finished in {:.2} s: {:.0} claims/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
}

/// The same through agentd: 2 members, 100 agents (each member runs its
/// ~50 as child processes), tasks queued in the ledger, every one claimed
/// by the member running its agent, answered by a model on 127.0.0.1, and
/// finished.
fn claims_through_agentd(pg: &postgres::Postgres, per_agent: usize) {
    let url = pg.url("claims_e2e");
    let agents: Vec<String> = (0..100).map(|a| format!("agent-{a}")).collect();
    let total = agents.len() * per_agent;
    let llm = llm_server::LlmServer::start(
        (0..total)
            .map(|i| llm_server::Reply::text(&format!("ok {i}")))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut members: Vec<Child> = ["alpha", "beta"]
        .iter()
        .map(|h| spawn_members_agents(dir.path(), h, &url, &llm.base_url(), &agents))
        .collect();
    // Settled: both members hold their share.
    wait(Duration::from_secs(120), || {
        let l = Ledger::open_read_only_at(&location(&url)).ok()?;
        let members = l.members(TTL_S as i64 * 1000).ok()?;
        let counts: Vec<usize> = members.iter().map(|m| m.agents.len()).collect();
        (counts.len() == 2 && counts.iter().sum::<usize>() == 100 && counts.iter().all(|&c| c > 0)).then_some(())
    });
    let mut l = Ledger::open_at(&location(&url)).unwrap();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(total);
    for i in 0..per_agent {
        for a in &agents {
            ids.push(l.enqueue(a, &msg(i), None).unwrap().id());
        }
    }
    wait(Duration::from_secs(600), || {
        let done = l
            .list_tasks(&agentd::ledger::TaskFilter {
                state: Some(TaskState::Succeeded),
                ..Default::default()
            })
            .ok()?
            .len();
        (done == total).then_some(())
    });
    let took = started.elapsed();
    let split = l.members(60_000).unwrap();
    println!(
        "claims through agentd, 2 members × 50 agents ({}): {total} tasks queued, claimed, answered and finished in {:.2} s: {:.0} tasks/s",
        split
            .iter()
            .map(|m| format!("{} {}", m.host, m.agents.len()))
            .collect::<Vec<_>>()
            .join(", "),
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    for c in &mut members {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn steps(l: &mut Ledger, n: usize) -> (Duration, Duration) {
    l.enqueue("a", &msg(0), None).unwrap();
    let t: TaskId = l.claim_next("a", &lease("a", 1)).unwrap().unwrap().id;
    let step = NewStep {
        kind: StepKind::Llm,
        payload: serde_json::json!({"model": "gpt-4o-mini", "reply": {"content": "x".repeat(1024)}}),
        input_tokens: 1200,
        output_tokens: 300,
        latency_ms: Some(900),
    };
    let mut each = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        l.append_step(t, &lease("a", 1), &step).unwrap();
        each.push(s.elapsed());
    }
    (pct(each.clone(), 0.5), pct(each, 0.99))
}

fn main() {
    let pg = postgres::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let n = 2000;
    let (s50, s99) = steps(&mut Ledger::open(&dir.path().join("ledger.sqlite")).unwrap(), n);
    let url = pg.url("steps");
    let (p50, p99) = steps(&mut Ledger::open_at(&location(&url)).unwrap(), n);
    let mut fenced = Ledger::open_at(&location(&pg.url("fenced"))).unwrap();
    fenced.join_fleet("bench", &[]).unwrap();
    fenced.acquire_agent("a", 600_000, 3).unwrap().unwrap();
    let (f50, f99) = steps(&mut fenced, n);
    println!(
        "journal step ({n} × 1 KiB llm steps): SQLite p50 {:.0} µs p99 {:.0} µs; PostgreSQL p50 {:.0} µs p99 {:.0} µs; PostgreSQL fenced (fleet member) p50 {:.0} µs p99 {:.0} µs",
        s50.as_secs_f64() * 1e6,
        s99.as_secs_f64() * 1e6,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        f50.as_secs_f64() * 1e6,
        f99.as_secs_f64() * 1e6,
    );
    claims(&pg, 20);
    claims_through_agentd(&pg, 10);
    failover(&pg, 3);
}
