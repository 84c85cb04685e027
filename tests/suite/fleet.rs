//! Fleets: several agentd members, each with its own state dir, on one
//! real PostgreSQL ledger (tests/support/postgres.rs), with the scripted
//! model server. Failover after kill -9, fencing of a member that was
//! stopped past its lease, schedules firing once across members, a
//! PostgreSQL restart mid-run, and drains.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::domain::{TaskId, TaskState};
use agentd::ledger::{Ledger, Location, PgTarget, Task, TaskFilter};
use nix::sys::signal::Signal;

use crate::support::daemon::Daemon;
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::postgres::Postgres;
use crate::support::{agentd_cmd, stderr, tempdir, wait_for, write};

const KEY: &str = "sk-test-fleet-0123456789";
/// Short leases keep the tests quick; every wait is bounded polling.
const TTL: &str = "2s";
const LONG: Duration = Duration::from_secs(60);

struct Member {
    host: String,
    state: PathBuf,
    daemon: Daemon,
}

/// A member's config: its own host name and state dir, the shared ledger,
/// an HTTP API on a free port, and `agents`.
fn member_config(dir: &Path, host: &str, url: &str, agents: &str) -> PathBuf {
    write(
        dir,
        &format!("{host}.yaml"),
        &format!(
            r#"shutdown_grace: 2s
ledger: "{url}"
fleet: {{host: {host}, lease_ttl: {TTL}}}
http: {{listen: "127.0.0.1:0"}}
agents:
{agents}
"#
        ),
    )
}

fn agent_yaml(name: &str, base_url: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    model: test-model
    system_prompt: You work in a fleet.
    llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 30s, max_retries: 0}}
{extra}"#
    )
}

fn start(dir: &Path, host: &str, url: &str, agents: &str) -> Member {
    start_with(dir, host, url, agents, &[])
}

fn start_with(dir: &Path, host: &str, url: &str, agents: &str, envs: &[(&str, &str)]) -> Member {
    let cfg = member_config(dir, host, url, agents);
    let state = dir.join(format!("state-{host}"));
    let mut all = vec![("TEST_LLM_KEY", KEY)];
    all.extend_from_slice(envs);
    let daemon = Daemon::start(&cfg, &state, &all);
    Member {
        host: host.into(),
        state,
        daemon,
    }
}

fn location(url: &str) -> Location {
    Location::Postgres(PgTarget::parse(url).expect("url"))
}

fn ledger(url: &str) -> Ledger {
    Ledger::open_read_only_at(&location(url)).expect("open the shared ledger")
}

fn tasks(url: &str) -> Vec<Task> {
    Ledger::open_read_only_at(&location(url))
        .and_then(|l| l.list_tasks(&TaskFilter::default()))
        .unwrap_or_default()
}

/// The member holding `agent`'s unexpired lease.
fn holder(url: &str, agent: &str) -> Option<String> {
    Ledger::open_read_only_at(&location(url))
        .and_then(|l| l.agent_leases())
        .ok()?
        .into_iter()
        .find(|l| l.agent == agent && !l.expired)
        .map(|l| l.host)
}

/// The member running `agent` once the fleet has settled: all `members`
/// have joined and the agent is where placement puts it (the first member
/// up takes every agent; each moves when its own member joins).
fn wait_holder(url: &str, agent: &str, members: usize) -> String {
    wait_for(LONG, || {
        let l = Ledger::open_read_only_at(&location(url)).ok()?;
        let live = l.members(2_000).ok()?;
        if live.iter().filter(|m| m.alive).count() < members {
            return None;
        }
        let want = agentd::placement::place(agent, &Default::default(), &live)?.to_owned();
        (holder(url, agent)? == want).then_some(want)
    })
    .unwrap_or_else(|| panic!("{agent} never settled on its member"))
}

fn wait_task(url: &str, id: TaskId, what: &str, pred: impl Fn(&Task) -> bool) -> Task {
    wait_for(LONG, || tasks(url).into_iter().find(|t| t.id == id && pred(t)))
        .unwrap_or_else(|| panic!("task {id} never {what}: {:?}", tasks(url)))
}

/// `agentd send AGENT TEXT` through `member`'s control socket.
fn send(member: &Member, agent: &str, text: &str) -> TaskId {
    let out = agentd_cmd(&["send", agent, text, "--json", "--state-dir"])
        .arg(&member.state)
        .output()
        .expect("run agentd send");
    assert!(out.status.success(), "send: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    TaskId(v["task"].as_i64().unwrap_or_else(|| panic!("no task in {v}")))
}

#[test]
fn kill_9_of_a_member_mid_task_moves_its_agent_and_the_task_completes_on_another() {
    let pg = Postgres::start();
    let url = pg.url("fleet");
    // The first attempt's model call hangs (its host dies meanwhile); the
    // second answers.
    let llm = LlmServer::start(vec![Reply::Stall, Reply::stream_text(&["finished elsewhere"])]);
    let dir = tempdir();
    let agents = agent_yaml("worker", &llm.base_url(), "");
    let mut members = [
        start(dir.path(), "alpha", &url, &agents),
        start(dir.path(), "beta", &url, &agents),
    ];
    let first = wait_holder(&url, "worker", 2);
    let i = members.iter().position(|m| m.host == first).expect("a member");
    let other = 1 - i;
    // A message given to the member that does not run the agent reaches it.
    let id = send(&members[other], "worker", "do the work");
    wait_for(LONG, || (llm.request_count() >= 1).then_some(())).expect("the task's model call");
    let running = wait_task(&url, id, "ran", |t| t.state == TaskState::Running);
    assert_eq!(running.attempts, 1);

    members[i].daemon.signal(Signal::SIGKILL);
    members[i].daemon.wait_exit(Duration::from_secs(10));

    let done = wait_task(&url, id, "succeeded on the other member", |t| {
        t.state == TaskState::Succeeded
    });
    assert_eq!(done.attempts, 2, "{done:?}");
    assert_eq!(done.result.as_deref(), Some("finished elsewhere"));
    assert_eq!(holder(&url, "worker").as_deref(), Some(members[other].host.as_str()));
    let log = members[other].daemon.log_text();
    assert!(log.contains(&format!("took over from host {first}")), "{log}");
    assert!(
        log.contains(&format!("task {id} had no runner left; now queued")),
        "{log}"
    );
    // The journal keeps what the lost host left: the re-queue's cause.
    let l = ledger(&url);
    let steps = l.steps(id).expect("steps");
    assert!(steps.iter().any(|s| s.attempt == 2), "{steps:?}");
    assert_eq!(llm.request_count(), 2);
}

#[test]
fn a_member_stopped_past_its_lease_cannot_write_when_it_wakes() {
    let pg = Postgres::start();
    let url = pg.url("fleet");
    // The first attempt's answer is held until its host is frozen; the
    // second attempt (on the other member) answers at once.
    let llm = LlmServer::start(vec![
        Reply::Gated(Box::new(Reply::stream_text(&["written by a stale host"]))),
        Reply::stream_text(&["written by the lease holder"]),
    ]);
    let dir = tempdir();
    let agents = agent_yaml("worker", &llm.base_url(), "");
    let members = [
        start(dir.path(), "alpha", &url, &agents),
        start(dir.path(), "beta", &url, &agents),
    ];
    let first = wait_holder(&url, "worker", 2);
    let i = members.iter().position(|m| m.host == first).expect("a member");
    let (stale, fresh) = (&members[i], &members[1 - i]);
    let id = send(fresh, "worker", "do the work");
    wait_for(LONG, || (llm.request_count() >= 1).then_some(())).expect("the task's model call");

    // Control: while the lease is its own, the member writes (it took the
    // task: its claim is in the ledger).
    assert_eq!(
        tasks(&url).iter().find(|t| t.id == id).map(|t| t.state),
        Some(TaskState::Running)
    );

    stale.daemon.signal(Signal::SIGSTOP);
    // Its agent's answer arrives while its supervisor is frozen: the
    // child's writes wait in the pipe.
    llm.open_gate();
    let done = wait_task(&url, id, "succeeded on the live member", |t| {
        t.state == TaskState::Succeeded
    });
    assert_eq!(done.result.as_deref(), Some("written by the lease holder"));
    assert_eq!(holder(&url, "worker").as_deref(), Some(fresh.host.as_str()));
    let steps_before = ledger(&url).steps(id).expect("steps").len();

    stale.daemon.signal(Signal::SIGCONT);
    let log = wait_for(LONG, || {
        let log = stale.daemon.log_text();
        log.contains("no longer holds its lease").then_some(log)
    })
    .unwrap_or_else(|| {
        panic!(
            "the stale member's writes were not refused: {}",
            stale.daemon.log_text()
        )
    });
    assert!(log.contains(&format!("({first}) no longer holds its lease")), "{log}");
    wait_for(LONG, || {
        stale
            .daemon
            .log_text()
            .contains("another host took this agent's lease")
            .then_some(())
    })
    .expect("the stale member stops the agent it lost");
    // Nothing it sent landed: the task and its journal are the holder's.
    let after = tasks(&url).into_iter().find(|t| t.id == id).expect("task");
    assert_eq!(after.result.as_deref(), Some("written by the lease holder"));
    let steps = ledger(&url).steps(id).expect("steps");
    assert_eq!(steps.len(), steps_before, "{steps:?}");
    assert!(
        !steps.iter().any(|s| s.payload.to_string().contains("stale host")),
        "{steps:?}"
    );
}

#[test]
fn a_schedule_fires_once_per_occurrence_with_three_members() {
    let pg = Postgres::start();
    let url = pg.url("fleet");
    let llm = LlmServer::start((0..40).map(|i| Reply::stream_text(&[&format!("tick {i}")])).collect());
    let dir = tempdir();
    let agents = agent_yaml(
        "clock",
        &llm.base_url(),
        r#"    schedules: [{cron: "* * * * * *", prompt: "Say the time."}]
"#,
    );
    let _members: Vec<Member> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|h| start(dir.path(), h, &url, &agents))
        .collect();
    // Every member fires every occurrence; the ledger keeps one task each.
    let scheduled = wait_for(LONG, || {
        let ts: Vec<Task> = tasks(&url)
            .into_iter()
            .filter(|t| t.trigger_kind == "schedule")
            .collect();
        (ts.len() >= 4).then_some(ts)
    })
    .expect("schedule tasks");
    let mut times: Vec<String> = scheduled
        .iter()
        .map(|t| t.trigger["scheduled_for"].as_str().unwrap_or_default().to_owned())
        .collect();
    let n = times.len();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), n, "an occurrence fired twice: {times:?}");
    // Each occurrence's one firing row names the member that recorded it.
    let rows = pg.psql("fleet", "SELECT count(*) FROM schedule_firings");
    assert!(rows.trim().parse::<usize>().unwrap_or(0) >= n, "{rows}");
}

#[test]
fn postgresql_restarted_mid_run_loses_no_task() {
    let pg = Postgres::start();
    let url = pg.url("fleet");
    let llm = LlmServer::start(vec![
        Reply::Gated(Box::new(Reply::stream_text(&["survived the restart"]))),
        Reply::stream_text(&["second"]),
    ]);
    let dir = tempdir();
    let agents = agent_yaml("worker", &llm.base_url(), "");
    let m = start(dir.path(), "alpha", &url, &agents);
    wait_holder(&url, "worker", 1);
    let id = send(&m, "worker", "work through a restart");
    wait_for(LONG, || (llm.request_count() >= 1).then_some(())).expect("the task's model call");

    pg.restart();
    // The answer comes while the connection agentd held is gone.
    llm.open_gate();
    let done = wait_task(&url, id, "succeeded after the restart", |t| {
        t.state == TaskState::Succeeded
    });
    assert_eq!(done.result.as_deref(), Some("survived the restart"));
    assert_eq!(done.attempts, 1, "{done:?}");
    // And the member goes on taking work.
    let next = send(&m, "worker", "and another");
    let t = wait_task(&url, next, "succeeded", |t| t.state == TaskState::Succeeded);
    assert_eq!(t.result.as_deref(), Some("second"));
}

#[test]
fn a_drain_lets_running_tasks_finish_then_moves_every_agent_and_status_shows_the_fleet() {
    let pg = Postgres::start();
    let url = pg.url("fleet");
    let llm = LlmServer::start(vec![Reply::Gated(Box::new(Reply::stream_text(&[
        "finished before moving",
    ])))]);
    let dir = tempdir();
    let agents: String = (1..=4)
        .map(|i| agent_yaml(&format!("a{i}"), &llm.base_url(), ""))
        .collect();
    let members = [
        start(dir.path(), "alpha", &url, &agents),
        start(dir.path(), "beta", &url, &agents),
    ];
    for i in 1..=4 {
        wait_holder(&url, &format!("a{i}"), 2);
    }
    let drained_host = wait_holder(&url, "a1", 2);
    let d = members.iter().position(|m| m.host == drained_host).expect("a member");
    let (drained, other) = (&members[d], &members[1 - d]);
    let id = send(other, "a1", "finish this first");
    wait_task(&url, id, "ran", |t| t.state == TaskState::Running);

    // Any member's state dir finds the shared ledger to drain through.
    let out = agentd_cmd(&["drain", &drained_host, "--state-dir"])
        .arg(&other.state)
        .output()
        .expect("run agentd drain");
    assert!(out.status.success(), "{}", stderr(&out));
    // Its idle agents leave; the busy one waits for its task.
    wait_for(LONG, || {
        let l = ledger(&url).agent_leases().ok()?;
        let on_drained: Vec<_> = l.iter().filter(|x| x.host == drained_host && !x.expired).collect();
        (on_drained.len() == 1 && on_drained[0].agent == "a1").then_some(())
    })
    .unwrap_or_else(|| panic!("idle agents did not move: {:?}", ledger(&url).agent_leases()));
    assert_eq!(
        tasks(&url).iter().find(|t| t.id == id).map(|t| t.state),
        Some(TaskState::Running),
        "the running task is not cut short"
    );
    llm.open_gate();
    let done = wait_task(&url, id, "succeeded", |t| t.state == TaskState::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.host.as_deref(), Some(drained_host.as_str()));
    for i in 1..=4 {
        let a = format!("a{i}");
        wait_for(LONG, || {
            (holder(&url, &a).as_deref() == Some(other.host.as_str())).then_some(())
        })
        .unwrap_or_else(|| panic!("{a} did not move to {}", other.host));
    }

    // The drained member's status shows the whole fleet, with hosts.
    let out = agentd_cmd(&["status", "--state-dir"])
        .arg(&drained.state)
        .output()
        .expect("run agentd status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("HOST"), "{text}");
    assert!(text.contains(&format!("{drained_host} 0 agents draining")), "{text}");
    for i in 1..=4 {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("a{i} ")) && l.contains(&other.host) && l.contains("running")),
            "{text}"
        );
    }
    // `send --wait` on a member that does not run the agent answers when
    // the member that does has finished.
    llm.push(Reply::stream_text(&["answered across hosts"]));
    let out = agentd_cmd(&["send", "a2", "hello from afar", "--wait", "--state-dir"])
        .arg(&drained.state)
        .output()
        .expect("run agentd send --wait");
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("answered across hosts"), "{said}");

    // The HTTP API (and so the dashboard) reads the shared ledger too, and
    // lists agents with their member.
    let api = crate::support::http::Api::of(&drained.state);
    let listed = api.get("/api/v1/tasks").json();
    let rows = listed["tasks"].as_array().cloned().unwrap_or_default();
    assert!(
        rows.iter()
            .any(|t| t["id"] == id.0 && t["host"] == drained_host.as_str()),
        "{listed}"
    );
    let agents = api.get("/api/v1/agents").json();
    assert!(
        agents.to_string().contains(&format!("\"host\":\"{}\"", other.host)),
        "{agents}"
    );
    // And `agentd tasks` from either member lists the fleet's tasks by host.
    let out = agentd_cmd(&["tasks", "--state-dir"])
        .arg(&other.state)
        .output()
        .expect("run agentd tasks");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains("a1") && l.contains(&drained_host) && l.contains("succeeded")),
        "{text}"
    );
}

/// `ledger:` refuses a URL with a password (naming file, line and field),
/// `agentd check` names the ledger and the member, and a password file is
/// what connects to a server that asks for one (control: without it, the
/// same URL is refused by the server).
#[test]
fn the_ledger_url_holds_no_password_and_the_password_file_connects() {
    let dir = tempdir();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "state_dir: s\nledger: \"postgres://agentd:hunter2@db.example.com/agentd\"\nfleet: {host: \"no spaces allowed\"}\nagents: []\n",
    );
    let out = agentd_cmd(&["check"]).arg(&bad).output().expect("run check");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.yaml:2:9: ledger: the URL holds a password; remove it and put the password in ledger_password_file or $AGENTD_LEDGER_PASSWORD"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml:3:15: fleet.host: \"no spaces allowed\" is not a host name"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let pg = Postgres::start();
    pg.psql("postgres", "CREATE ROLE member LOGIN PASSWORD 'sesame'");
    pg.psql("postgres", "CREATE DATABASE members OWNER member");
    pg.require_passwords();
    let url = format!("postgres://member@localhost/members?host={}", pg.socket_dir().display());
    let secret = write(dir.path(), "pg.pass", "sesame\n");
    let good = write(
        dir.path(),
        "good.yaml",
        &format!(
            "state_dir: s\nledger: \"{url}\"\nledger_password_file: pg.pass\nfleet: {{host: alpha, lease_ttl: 9s}}\nagents: []\n"
        ),
    );
    let out = agentd_cmd(&["check"]).arg(&good).output().expect("run check");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "ledger: {url} (fleet member \"alpha\", lease TTL 9s, heartbeat 3s)"
        )),
        "{text}"
    );
    let cfg = agentd::config::load(&good).expect("valid");
    Ledger::open_at(&cfg.ledger).expect("the password file's password connects");
    let without = Location::Postgres(PgTarget::parse(&url).expect("url"));
    let refused = Ledger::open_at(&without)
        .err()
        .expect("control: no password, no connection");
    assert!(refused.to_string().contains("password"), "{refused}");
    let _ = secret;
}

/// An approval asked on the member running the agent and answered on the
/// other one reaches the waiting runner: the call runs there, once.
#[test]
fn an_approval_answered_on_another_member_reaches_the_waiting_agent() {
    const WRITE: &str = r#"{"path": "out.md", "content": "approved across hosts"}"#;
    let pg = Postgres::start();
    let url = pg.url("fleet");
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "write_file", WRITE)]),
        Reply::stream_text(&["written"]),
    ]);
    let dir = tempdir();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    let agents = agent_yaml(
        "worker",
        &llm.base_url(),
        &format!(
            "    mcp_servers:\n      - name: files\n        command: {bin}\n        args: [mcp-watch, \"{files}\"]\n    approve: {{tools: [\"write_*\"]}}\n",
            bin = crate::support::agentd_bin().display(),
            files = files.display(),
        ),
    );
    let members = [
        start(dir.path(), "alpha", &url, &agents),
        start(dir.path(), "beta", &url, &agents),
    ];
    let runner = wait_holder(&url, "worker", 2);
    let i = members.iter().position(|m| m.host == runner).expect("a member");
    let other = &members[1 - i];
    let id = send(other, "worker", "write it");
    let asked = wait_for(LONG, || {
        ledger(&url).pending_approvals(Some("worker")).ok()?.into_iter().next()
    })
    .expect("an approval is asked");
    assert_eq!(asked.task, id);
    assert!(!files.join("out.md").exists(), "nothing runs before the answer");

    let out = agentd_cmd(&["approve", &asked.id.to_string(), "--state-dir"])
        .arg(&other.state)
        .output()
        .expect("run agentd approve");
    assert!(out.status.success(), "{}", stderr(&out));
    let done = wait_task(&url, id, "succeeded", |t| t.state == TaskState::Succeeded);
    assert_eq!(done.attempts, 1, "the waiting run went on, not a re-run: {done:?}");
    assert_eq!(done.host.as_deref(), Some(runner.as_str()));
    assert_eq!(
        std::fs::read_to_string(files.join("out.md")).expect("the call ran"),
        "approved across hosts"
    );
    assert!(
        members[i].daemon.log_text().contains("answered on another member"),
        "{}",
        members[i].daemon.log_text()
    );
}

/// The Kubernetes example's config (in its ConfigMap) passes `agentd check`
/// as a pod would see it: its name in POD_NAME, the Secret's password file.
#[test]
fn the_kubernetes_example_config_is_valid() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/kubernetes/configmap.yaml"
    ))
    .expect("configmap.yaml");
    let dir = tempdir();
    let body = manifest.split_once("agentd.yaml: |\n").expect("the config key").1;
    let text: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "/etc/agentd-secret/pg.pass",
            &dir.path().join("pg.pass").display().to_string(),
        )
        .replace("/var/lib/agentd", &dir.path().join("state").display().to_string());
    write(dir.path(), "pg.pass", "from-the-secret\n");
    let cfg = write(dir.path(), "agentd.yaml", &text);
    let out = agentd_cmd(&["check"])
        .arg(&cfg)
        .env("POD_NAME", "agentd-7d9f-x2")
        .env("OPENAI_API_KEY", "sk-x")
        .output()
        .expect("run check");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fleet member \"agentd-7d9f-x2\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Pause, resume and cancel given to the member that does not run the
/// agent take effect on the one that does: a paused agent's message waits,
/// a resume runs it, and a cancelled run is dropped there (the agent takes
/// its next task at once).
#[test]
fn pause_resume_and_cancel_on_one_member_act_on_the_agent_running_on_another() {
    let pg = Postgres::start();
    let url = pg.url("fleet");
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["ran after the resume"]),
        Reply::Stall,
        Reply::stream_text(&["the next one"]),
    ]);
    let dir = tempdir();
    let agents = agent_yaml("worker", &llm.base_url(), "");
    let members = [
        start(dir.path(), "alpha", &url, &agents),
        start(dir.path(), "beta", &url, &agents),
    ];
    let runner = wait_holder(&url, "worker", 2);
    let i = members.iter().position(|m| m.host == runner).expect("a member");
    let (here, other) = (&members[i], &members[1 - i]);
    let cli = |args: &[&str]| {
        let out = agentd_cmd(args)
            .arg("--state-dir")
            .arg(&other.state)
            .output()
            .expect("run agentd");
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };

    cli(&["pause", "worker"]);
    wait_for(LONG, || {
        here.daemon.log_text().contains("(on another member)").then_some(())
    })
    .unwrap_or_else(|| panic!("the runner did not hear of the pause: {}", here.daemon.log_text()));
    // The runner itself now says the agent is paused.
    let w = here.daemon.agent("worker").expect("worker");
    assert!(w.paused && w.pid.is_some(), "{w:?}");
    let first = send(other, "worker", "wait for the resume");
    assert_eq!(
        tasks(&url).iter().find(|t| t.id == first).map(|t| t.state),
        Some(TaskState::Queued)
    );
    cli(&["resume", "worker"]);
    let done = wait_task(&url, first, "succeeded after the resume", |t| {
        t.state == TaskState::Succeeded
    });
    assert_eq!(done.result.as_deref(), Some("ran after the resume"));

    let stuck = send(other, "worker", "this one hangs");
    wait_for(LONG, || (llm.request_count() >= 2).then_some(())).expect("the hanging call");
    cli(&["cancel", &stuck.to_string(), "--reason", "not needed"]);
    wait_for(LONG, || {
        here.daemon
            .log_text()
            .contains(&format!("task {stuck} was cancelled on another member"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the runner did not drop the cancelled run: {}", here.daemon.log_text()));
    let next = send(other, "worker", "and the next");
    let t = wait_task(&url, next, "succeeded", |t| t.state == TaskState::Succeeded);
    assert_eq!(t.result.as_deref(), Some("the next one"));
    assert_eq!(
        tasks(&url).iter().find(|t| t.id == stuck).map(|t| t.state),
        Some(TaskState::Cancelled)
    );
}

/// A signed webhook delivered to the member that does not run the agent
/// becomes its task, run where the agent runs; the same delivery sent to
/// the other member is the same task (delivery keys are shared).
#[test]
fn a_webhook_given_to_any_member_reaches_the_agent_once() {
    let pg = Postgres::start();
    let url = pg.url("fleet");
    let llm = LlmServer::start(vec![Reply::stream_text(&["handled the push"])]);
    let dir = tempdir();
    let agents = agent_yaml(
        "hooks",
        &llm.base_url(),
        "    webhook: {secret_env: HOOK_SECRET, dedupe_header: X-GitHub-Delivery}\n",
    );
    let envs = [("HOOK_SECRET", "fleet-hook-secret")];
    let members = [
        start_with(dir.path(), "alpha", &url, &agents, &envs),
        start_with(dir.path(), "beta", &url, &agents, &envs),
    ];
    let runner = wait_holder(&url, "hooks", 2);
    let i = members.iter().position(|m| m.host == runner).expect("a member");
    let body = r#"{"ref": "refs/heads/main"}"#;
    let sig = agentd::http::signature::sign(b"fleet-hook-secret", body.as_bytes());
    let deliver = |m: &Member| {
        crate::support::http::Api::of(&m.state).call(
            "POST",
            "/api/v1/agents/hooks/webhook",
            false,
            &[
                ("x-hub-signature-256", &sig),
                ("x-github-delivery", "delivery-1"),
                ("content-type", "application/json"),
            ],
            Some(body),
        )
    };
    // Control: a forged signature records nothing, on either member.
    let forged = crate::support::http::Api::of(&members[1 - i].state).call(
        "POST",
        "/api/v1/agents/hooks/webhook",
        false,
        &[
            ("x-hub-signature-256", "sha256=00"),
            ("x-github-delivery", "delivery-0"),
        ],
        Some(body),
    );
    assert_eq!(forged.status, 401, "{}", forged.body);
    let first = deliver(&members[1 - i]);
    assert!(first.status < 300, "{}: {}", first.status, first.body);
    let again = deliver(&members[i]);
    assert!(again.status < 300, "{}: {}", again.status, again.body);
    let done = wait_for(LONG, || {
        let ts: Vec<Task> = tasks(&url)
            .into_iter()
            .filter(|t| t.trigger_kind == "webhook")
            .collect();
        (ts.len() == 1 && ts[0].state == TaskState::Succeeded).then_some(ts)
    })
    .unwrap_or_else(|| panic!("one webhook task, done: {:?}", tasks(&url)));
    assert_eq!(done[0].host.as_deref(), Some(runner.as_str()));
    assert_eq!(done[0].result.as_deref(), Some("handled the push"));
}
