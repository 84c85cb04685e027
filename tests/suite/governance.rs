//! Governance end to end: cancelling tasks (queued, in a model call, in a
//! sandbox run), pauses that outlive agentd, and spending budgets. A real
//! agentd, the scripted OpenAI-compatible server on 127.0.0.1, real
//! sandboxes; the ledger is read back as a user would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::control::Request;
use agentd::ledger::{Task, TaskState};
use nix::sys::signal::Signal;

use super::containment::{kill_all, marker, require_root, with_marker};
use crate::support::daemon::{Daemon, steps, tasks};
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::{agentd, stdout, tempdir, wait_for, write};

const KEY: &str = "sk-test-do-not-log-0123456789";

/// One agent, `worker`, talking to `base_url`; `extra` is added to its keys.
fn config(dir: &Path, base_url: &str, extra: &str) -> PathBuf {
    write(
        dir,
        "agentd.yaml",
        &format!(
            r#"shutdown_grace: 2s
agents:
  - name: worker
    model: test-model
    system_prompt: You work.
    llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 60s, max_retries: 0}}
    restart: {{backoff_min: 20ms, backoff_max: 100ms}}
    sandbox: {{profile: default, timeout: 10m}}
{extra}"#
        ),
    )
}

fn start(cfg: &Path, state: &Path) -> Daemon {
    let d = Daemon::start(cfg, state, &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("worker");
    d
}

fn send(d: &Daemon, text: &str) -> i64 {
    let r = d.request(&Request::Send {
        agent: "worker".into(),
        text: text.into(),
        wait: false,
    });
    assert!(r.ok, "send failed: {r:?}");
    r.result.expect("result")["task"].as_i64().expect("task id")
}

fn task(d: &Daemon, id: i64) -> Task {
    tasks(&d.state_dir)
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no task {id}"))
}

fn wait_state(d: &Daemon, id: i64, state: TaskState) -> Task {
    wait_for(Duration::from_secs(30), || Some(task(d, id)).filter(|t| t.state == state)).unwrap_or_else(|| {
        panic!(
            "task {id} never became {state}: {:?}; log:\n{}",
            task(d, id),
            d.log_text()
        )
    })
}

fn cancel(d: &Daemon, id: i64, reason: &str) -> serde_json::Value {
    let r = d.request(&Request::Cancel {
        task: id,
        reason: Some(reason.into()),
        caller: None,
    });
    assert!(r.ok, "cancel failed: {r:?}; log:\n{}", d.log_text());
    r.result.expect("result")
}

/// The task's `cancel` journal step: who and why.
fn cancel_step(d: &Daemon, id: i64) -> serde_json::Value {
    steps(&d.state_dir, id)
        .into_iter()
        .find(|s| s.kind == "cancel")
        .map(|s| s.payload)
        .unwrap_or_else(|| panic!("task {id} has no cancel step: {:?}", steps(&d.state_dir, id)))
}

#[test]
fn a_queued_task_is_cancelled_and_never_runs() {
    let llm = LlmServer::start(vec![Reply::stream_text(&["b done"])]);
    let dir = tempdir();
    let d = start(&config(dir.path(), &llm.base_url(), ""), &dir.path().join("state"));
    // Paused, so the task stays queued.
    assert!(d.request(&Request::Pause { agent: "worker".into() }).ok);
    let a = send(&d, "a");
    assert_eq!(task(&d, a).state, TaskState::Queued);
    let r = cancel(&d, a, "not needed");
    assert_eq!(r["was"], "queued");
    assert_eq!(task(&d, a).state, TaskState::Cancelled);
    let step = cancel_step(&d, a);
    assert_eq!(step["by"], "uid 0", "who: the control socket's caller");
    assert_eq!(step["reason"], "not needed");
    // A cancelled task cannot be cancelled again, nor run on resume.
    let again = d.request(&Request::Cancel {
        task: a,
        reason: None,
        caller: None,
    });
    assert!(!again.ok && again.error.unwrap_or_default().contains("already cancelled"));
    assert!(d.request(&Request::Resume { agent: "worker".into() }).ok);
    let b = send(&d, "b");
    wait_state(&d, b, TaskState::Succeeded);
    assert_eq!(llm.request_count(), 1, "only b reached the model");
    assert_eq!(task(&d, a).state, TaskState::Cancelled);
}

#[test]
fn a_running_model_call_is_dropped_and_the_agent_goes_on() {
    let llm = LlmServer::start(vec![Reply::Stall, Reply::stream_text(&["second done"])]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let mut d = start(&config(dir.path(), &llm.base_url(), ""), &state);
    let pid = d.running_pid("worker");
    let a = send(&d, "a");
    wait_state(&d, a, TaskState::Running);
    wait_for(Duration::from_secs(20), || (llm.request_count() == 1).then_some(()))
        .expect("the model request was made");
    assert_eq!(cancel(&d, a, "taking too long")["was"], "running");
    assert_eq!(task(&d, a).state, TaskState::Cancelled);
    assert!(task(&d, a).error.unwrap_or_default().contains("taking too long"));
    // The agent takes its next task (the model call of `a` never answers:
    // only a dropped request lets it).
    let b = send(&d, "b");
    let done = wait_state(&d, b, TaskState::Succeeded);
    assert_eq!(done.result.as_deref(), Some("second done"));
    assert_eq!(d.running_pid("worker"), pid, "the same agent process");
    let kinds: Vec<String> = steps(&state, a).iter().map(|s| s.kind.to_string()).collect();
    assert_eq!(kinds, ["cancel"], "nothing of the dropped call was journaled");

    // Cancelled stays cancelled across a restart of agentd.
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(20));
    drop(d);
    let d = Daemon::start(&config(dir.path(), &llm.base_url(), ""), &state, &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("worker");
    assert_eq!(task(&d, a).state, TaskState::Cancelled);
}

/// A fence that starts background processes, then blocks.
fn stalling_fence(m: &str) -> String {
    format!("Running.\n```bash:execute\n( sleep {m} & ); nohup sleep {m} >/dev/null 2>&1 & sleep {m}\n```\n")
}

#[test]
fn cancelling_a_running_fence_leaves_none_of_its_processes() {
    require_root();
    let m = marker();
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[&stalling_fence(&m)]),
        Reply::stream_text(&["next task done"]),
    ]);
    let dir = tempdir();
    let d = start(&config(dir.path(), &llm.base_url(), ""), &dir.path().join("state"));
    let pid = d.running_pid("worker");
    let a = send(&d, "run it");
    // Control: while the fence runs, its processes (and background ones) exist.
    let before = wait_for(Duration::from_secs(30), || {
        let p = with_marker(&m);
        (p.len() >= 3).then_some(p)
    });
    assert!(before.is_some(), "the fence's processes never ran; log:\n{}", d.log_text());
    cancel(&d, a, "wrong script");
    let gone = wait_for(Duration::from_secs(20), || with_marker(&m).is_empty().then_some(()));
    let left = with_marker(&m);
    kill_all(&left);
    assert!(gone.is_some(), "left running after the cancel: {left:?}");
    assert_eq!(task(&d, a).state, TaskState::Cancelled);
    let b = send(&d, "next");
    wait_state(&d, b, TaskState::Succeeded);
    assert_eq!(d.running_pid("worker"), pid, "the agent process lived on");
}

#[test]
fn a_pause_survives_a_restart_of_agentd_with_its_reason() {
    let llm = LlmServer::start(vec![Reply::stream_text(&["ran after resume"])]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = config(dir.path(), &llm.base_url(), "");
    let mut d = start(&cfg, &state);
    assert!(d.request(&Request::Pause { agent: "worker".into() }).ok);
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(20));
    drop(d);

    let d = start(&cfg, &state);
    let a = d.agent("worker").expect("worker");
    assert!(a.paused, "a restarted agentd starts the agent paused: {a:?}");
    let p = a.pause.expect("why it is paused");
    assert_eq!(p.reason, agentd::ledger::PauseReason::Operator);
    assert_eq!(p.by, "control");
    let out = agentd(&["--state-dir", state.to_str().expect("utf-8"), "status"]);
    assert!(stdout(&out).contains("paused (operator) by control"), "{}", stdout(&out));
    let t = send(&d, "hello");
    assert_eq!(task(&d, t).state, TaskState::Queued);
    assert!(d.request(&Request::Resume { agent: "worker".into() }).ok);
    wait_state(&d, t, TaskState::Succeeded);
    assert!(!d.agent("worker").expect("worker").paused);
}

/// The first `llm` step's time of a task.
fn model_call_at(state: &Path, id: i64) -> i64 {
    steps(state, id)
        .into_iter()
        .find(|s| s.kind == "llm")
        .map(|s| s.created_at)
        .expect("an llm step")
}

#[test]
fn a_budget_crossed_by_a_task_pauses_the_agent_until_the_window_frees() {
    // Each reply costs 13 tokens (12 in, 1 out); the budget is 20 per 3 s.
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["one"]),
        Reply::stream_text(&["two"]),
        Reply::stream_text(&["three"]),
    ]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = config(dir.path(), &llm.base_url(), "    budget: {tokens: 20, per: 3s}\n");
    let d = start(&cfg, &state);
    let one = send(&d, "one");
    wait_state(&d, one, TaskState::Succeeded);
    assert!(!d.agent("worker").expect("worker").paused, "13 of 20 tokens: room left");
    let two = send(&d, "two");
    // 26 of 20: the task finishes (on_exceed: finish), then the agent pauses.
    assert_eq!(wait_state(&d, two, TaskState::Succeeded).result.as_deref(), Some("two"));
    let paused = d.wait_status("a budget pause", |s| {
        s[0].pause
            .as_ref()
            .is_some_and(|p| p.reason == agentd::ledger::PauseReason::Budget)
    });
    let spend = paused[0].spend.clone().expect("spend in status");
    assert_eq!((spend.tokens, spend.left_tokens), (26, Some(0)));
    let three = send(&d, "three");
    // It runs once the window has room again: after the first call left it.
    let done = wait_state(&d, three, TaskState::Succeeded);
    let room_at = model_call_at(&state, one) + 3_000;
    assert!(
        done.started_at.expect("started") >= room_at,
        "task three started at {:?}, before the window had room at {room_at}",
        done.started_at
    );
    assert!(d.log_text().contains("resumed by budget"), "{}", d.log_text());

    // `agentd spend` reads the same account from the ledger.
    let out = agentd(&[
        "spend",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--per",
        "1h",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("spend json");
    assert_eq!(v[0]["agent"], "worker");
    assert_eq!(v[0]["tokens"], 39);
    assert_eq!(v[0]["models"][0]["model"], "test-model");
    assert_eq!(v[0]["models"][0]["calls"], 3);
    assert!(v[0]["models"][0]["cost_usd"].is_null(), "test-model has no price");
    assert!(d.log_text().contains("\"test-model\" has no price"));
}

#[test]
fn a_budget_with_on_exceed_stop_cancels_the_running_task() {
    // The first reply (52 tokens) crosses the 20-token budget mid-task: the
    // task would go on (a tool call, then a stalled model call), but stops.
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "no_such_tool", "{}")]),
        Reply::Stall,
    ]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = config(
        dir.path(),
        &llm.base_url(),
        "    budget: {tokens: 20, per: 1h, on_exceed: stop}\n",
    );
    let d = start(&cfg, &state);
    let t = send(&d, "go");
    let done = wait_state(&d, t, TaskState::Cancelled);
    assert!(done.error.unwrap_or_default().contains("cancelled by budget"));
    assert_eq!(cancel_step(&d, t)["by"], "budget");
    let a = d.agent("worker").expect("worker");
    assert_eq!(a.pause.expect("paused").reason, agentd::ledger::PauseReason::Budget);
}
