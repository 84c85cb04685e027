//! Governance end to end: cancelling tasks (queued, in a model call, in a
//! sandbox run), pauses that outlive agentd, and spending budgets. A real
//! agentd, the scripted OpenAI-compatible server on 127.0.0.1, real
//! sandboxes; the ledger is read back as a user would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::control::Request;
use agentd::domain::{TaskId, TaskState};
use agentd::ledger::Task;
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

fn send(d: &Daemon, text: &str) -> TaskId {
    let r = d.request(&Request::Send {
        agent: "worker".into(),
        text: text.into(),
        wait: false,
    });
    assert!(r.ok, "send failed: {r:?}");
    TaskId(r.result.expect("result")["task"].as_i64().expect("task id"))
}

fn task(d: &Daemon, id: TaskId) -> Task {
    tasks(&d.state_dir)
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no task {id}"))
}

fn wait_state(d: &Daemon, id: TaskId, state: TaskState) -> Task {
    wait_for(Duration::from_secs(30), || {
        Some(task(d, id)).filter(|t| t.state == state)
    })
    .unwrap_or_else(|| {
        panic!(
            "task {id} never became {state}: {:?}; log:\n{}",
            task(d, id),
            d.log_text()
        )
    })
}

fn cancel(d: &Daemon, id: TaskId, reason: &str) -> serde_json::Value {
    let r = d.request(&Request::Cancel {
        task: id,
        reason: Some(reason.into()),
        caller: None,
    });
    assert!(r.ok, "cancel failed: {r:?}; log:\n{}", d.log_text());
    r.result.expect("result")
}

/// The task's `cancel` journal step: who and why.
fn cancel_step(d: &Daemon, id: TaskId) -> serde_json::Value {
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
    wait_for(Duration::from_secs(20), || (llm.request_count() == 1).then_some(())).expect("the model request was made");
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
    let d = Daemon::start(
        &config(dir.path(), &llm.base_url(), ""),
        &state,
        &[("TEST_LLM_KEY", KEY)],
    );
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
    assert!(
        before.is_some(),
        "the fence's processes never ran; log:\n{}",
        d.log_text()
    );
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
    assert_eq!(p.reason, agentd::domain::PauseReason::Operator);
    assert_eq!(p.by, "control");
    let out = agentd(&["--state-dir", state.to_str().expect("utf-8"), "status"]);
    assert!(
        stdout(&out).contains("paused (operator) by control"),
        "{}",
        stdout(&out)
    );
    let t = send(&d, "hello");
    assert_eq!(task(&d, t).state, TaskState::Queued);
    assert!(d.request(&Request::Resume { agent: "worker".into() }).ok);
    wait_state(&d, t, TaskState::Succeeded);
    assert!(!d.agent("worker").expect("worker").paused);
}

/// The first `llm` step's time of a task.
fn model_call_at(state: &Path, id: TaskId) -> i64 {
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
            .is_some_and(|p| p.reason == agentd::domain::PauseReason::Budget)
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
    let table = stdout(&agentd(&[
        "spend",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--per",
        "1h",
    ]));
    assert!(
        table.contains("worker           total: 39 tokens, $0.0000 in the last 1h"),
        "{table}"
    );
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
    assert_eq!(a.pause.expect("paused").reason, agentd::domain::PauseReason::Budget);
}

// ---- approvals ----

/// One agent, `worker`, with agentd's own MCP server on `files/` (its
/// `write_file` tool) and `approve` as its policy; more agents in `more`.
fn approval_config(dir: &Path, base_url: &str, approve: &str, more: &str) -> PathBuf {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).expect("files dir");
    config(
        dir,
        base_url,
        &format!(
            "    mcp_servers:\n      - name: files\n        command: {bin}\n        args: [mcp-watch, \"{files}\"]\n    approve: {approve}\n{more}",
            bin = crate::support::agentd_bin().display(),
            files = files.display(),
        ),
    )
}

fn pending(d: &Daemon) -> Vec<agentd::ledger::Approval> {
    let r = d.request(&Request::Approvals);
    serde_json::from_value(r.result.expect("result")["approvals"].clone()).expect("approvals")
}

fn wait_pending(d: &Daemon) -> agentd::ledger::Approval {
    wait_for(Duration::from_secs(30), || pending(d).into_iter().next())
        .unwrap_or_else(|| panic!("no approval was asked; log:\n{}", d.log_text()))
}

const WRITE: &str = r#"{"path": "out.md", "content": "approved write"}"#;

#[test]
fn an_approval_survives_kill_9_of_agentd_and_then_runs_the_call() {
    // The run after the restart asks the model again; it asks the same.
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "write_file", WRITE)]),
        Reply::stream_tool_calls(&[("c1", "write_file", WRITE)]),
        Reply::stream_text(&["written"]),
    ]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = approval_config(dir.path(), &llm.base_url(), "{tools: [\"write_*\"]}", "");
    let mut d = start(&cfg, &state);
    let child = d.running_pid("worker");
    let t = send(&d, "write it");
    let a = wait_pending(&d);
    assert_eq!((a.task, a.agent.as_str()), (t, "worker"));
    assert_eq!(
        a.subject,
        agentd::domain::ApprovalSubject::Tool {
            name: "write_file".into(),
            arguments: serde_json::from_str(WRITE).expect("json"),
        }
    );
    assert_eq!(task(&d, t).state, TaskState::Waiting);
    assert!(
        !dir.path().join("files/out.md").exists(),
        "nothing runs before the answer"
    );
    let waiting = d.agent("worker").expect("worker").waiting;
    assert_eq!(
        waiting.iter().map(|w| w.id).collect::<Vec<_>>(),
        [a.id],
        "status says what it waits for"
    );
    let shown = stdout(&agentd(&["--state-dir", state.to_str().expect("utf-8"), "status"]));
    assert!(
        shown.contains(&format!("task {t} waits for approval {}: tool write_file", a.id)),
        "{shown}"
    );

    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(20));
    let orphan = wait_for(Duration::from_secs(20), || {
        (!crate::support::alive(child)).then_some(())
    });
    assert!(orphan.is_some(), "the agent died with agentd");
    drop(d);

    let d = start(&cfg, &state);
    assert_eq!(task(&d, t).state, TaskState::Waiting, "still waiting after the restart");
    assert_eq!(pending(&d).iter().map(|p| p.id).collect::<Vec<_>>(), [a.id]);
    let out = agentd(&[
        "--state-dir",
        state.to_str().expect("utf-8"),
        "approve",
        &a.id.to_string(),
        "--note",
        "looks right",
    ]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let done = wait_state(&d, t, TaskState::Succeeded);
    assert_eq!(done.result.as_deref(), Some("written"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("files/out.md")).expect("written"),
        "approved write"
    );
    let journal = steps(&state, t);
    let answer = journal
        .iter()
        .find(|s| s.kind == "approval_answer")
        .expect("the answer is journaled");
    assert_eq!(answer.payload["by"], "uid 0");
    assert_eq!(answer.payload["note"], "looks right");
    assert!(
        journal
            .iter()
            .any(|s| s.kind == "approval" && s.payload["reused"] == true)
    );
    assert!(pending(&d).is_empty());
}

#[test]
fn a_denial_reaches_the_model_as_the_tools_error() {
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "write_file", WRITE)]),
        Reply::stream_text(&["I will not write then."]),
    ]);
    let dir = tempdir();
    let cfg = approval_config(dir.path(), &llm.base_url(), "{tools: [write_file]}", "");
    let d = start(&cfg, &dir.path().join("state"));
    let t = send(&d, "write it");
    let a = wait_pending(&d);
    let r = d.request(&Request::Deny {
        id: a.id,
        reason: Some("no writes today".into()),
        caller: None,
    });
    assert!(r.ok, "{r:?}");
    wait_state(&d, t, TaskState::Succeeded);
    assert!(!dir.path().join("files/out.md").exists(), "the denied call did not run");
    let second = &llm.requests()[1].json();
    let told = second["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the tool's answer")["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        told.contains("denied by uid 0: no writes today"),
        "the model was told: {told}"
    );
    // Answered once: a second answer is refused.
    let again = d.request(&Request::Approve {
        id: a.id,
        note: None,
        remember: Default::default(),
        caller: None,
    });
    assert!(!again.ok && again.error.unwrap_or_default().contains("already answered"));
}

#[test]
fn an_unanswered_approval_times_out_as_the_policy_says() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["Writing.\n```bash:execute\necho by-timeout > timed.txt\n```\n"]),
        Reply::stream_text(&["done"]),
    ]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = approval_config(
        dir.path(),
        &llm.base_url(),
        "{fences: [bash], timeout: 1s, on_timeout: approve}",
        "",
    );
    let d = start(&cfg, &state);
    let t = send(&d, "go");
    wait_state(&d, t, TaskState::Succeeded);
    let answer = steps(&state, t)
        .into_iter()
        .find(|s| s.kind == "approval_answer")
        .expect("answered");
    assert_eq!(
        (answer.payload["by"].as_str(), answer.payload["approved"].as_bool()),
        (Some("timeout"), Some(true))
    );
    let workdir = state.join("agents/worker/work");
    assert_eq!(
        std::fs::read_to_string(workdir.join("timed.txt"))
            .expect("the block ran")
            .trim(),
        "by-timeout"
    );
}

#[test]
fn sandboxed_code_cannot_answer_an_approval_but_an_operator_can() {
    // `worker` waits for approval; `helper` (another agent, still running
    // tasks meanwhile) writes code that tries to approve it.
    let llm = LlmServer::start(vec![Reply::stream_tool_calls(&[("c1", "write_file", WRITE)])]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let helper_llm = LlmServer::start(vec![]);
    let cfg = approval_config(
        dir.path(),
        &llm.base_url(),
        "{tools: [write_file]}",
        &format!(
            r#"  - name: helper
    model: test-model
    llm: {{base_url: "{}", api_key_env: TEST_LLM_KEY, max_retries: 0}}
    sandbox: {{profile: default, timeout: 1m}}
"#,
            helper_llm.base_url()
        ),
    );
    let d = start(&cfg, &state);
    d.running_pid("helper");
    let t = send(&d, "write it");
    let a = wait_pending(&d);
    let approve = format!("agentd --state-dir {} approve {}; echo exit=$?", state.display(), a.id);
    helper_llm.push(Reply::stream_text(&[&format!("```bash:execute\n{approve}\n```\n")]));
    helper_llm.push(Reply::stream_text(&["tried"]));
    let h = d.request(&Request::Send {
        agent: "helper".into(),
        text: "approve it".into(),
        wait: true,
    });
    assert!(h.ok, "the other agent ran while worker waited: {h:?}");
    let fence = steps(&state, TaskId(h.result.expect("result")["task"].as_i64().expect("id")))
        .into_iter()
        .find(|s| s.kind == "fence")
        .expect("the code ran");
    let said = fence.payload["result"].as_str().unwrap_or_default().to_owned();
    assert!(
        said.contains("exit=1") && said.contains("cannot reach agentd"),
        "the sandbox reached the control socket: {said}"
    );
    assert_eq!(pending(&d).len(), 1, "still pending after the attempt");
    assert_eq!(task(&d, t).state, TaskState::Waiting);
    // Control: the same command from the operator's side answers it.
    llm.push(Reply::stream_text(&["written"]));
    let out = agentd(&[
        "--state-dir",
        state.to_str().expect("utf-8"),
        "approve",
        &a.id.to_string(),
    ]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    wait_state(&d, t, TaskState::Succeeded);
}

#[test]
fn the_repl_cancels_lists_and_answers_approvals_and_shows_spend() {
    let llm = LlmServer::start(vec![
        Reply::Stall,
        Reply::stream_tool_calls(&[("c1", "write_file", WRITE)]),
        Reply::stream_text(&["Written."]),
    ]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = approval_config(
        dir.path(),
        &llm.base_url(),
        "{tools: [write_file]}\n    budget: {tokens: 1M, per: 1d}",
        "",
    );
    let mut r = crate::support::repl::PipedRepl::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    r.daemon.running_pid("worker");
    r.line("summarise the inbox");
    wait_for(Duration::from_secs(20), || (llm.request_count() == 1).then_some(())).expect("the model was asked");
    r.line("/cancel changed my mind");
    r.wait_line("task 1 of worker cancelled (it was running)");
    r.line("write the note");
    r.wait_until("an approval asked", |l| {
        l.iter()
            .any(|l| l.starts_with("approval 1 asked by worker (task 2): tool write_file"))
    });
    r.line("/approvals");
    r.wait_until("the approvals list", |l| {
        l.iter().any(|l| l.contains("worker") && l.contains("tool write_file"))
    });
    r.line("/approve 1 fine");
    r.wait_line("approval 1 approved (task 2 of worker)");
    r.wait_line("worker: Written.");
    r.line("/status");
    let lines = r.wait_until("spend in status", |l| l.iter().any(|l| l.contains("  spend ")));
    let spend = lines.iter().find(|l| l.contains("  spend ")).expect("spend line");
    // Task 2's two model calls: 52 and 13 tokens (the cancelled call spent nothing).
    assert!(
        spend.contains("65 tokens") && spend.contains("left: 999935 tokens"),
        "{spend}"
    );
    assert_eq!(task(&r.daemon, TaskId(1)).state, TaskState::Cancelled);
    assert_eq!(cancel_step(&r.daemon, TaskId(1))["by"], "repl");
    assert_eq!(cancel_step(&r.daemon, TaskId(1))["reason"], "changed my mind");
}

#[test]
fn an_approval_survives_kill_9_of_the_agent_and_its_denial_reaches_the_rerun() {
    // The agent dies while its task waits; the new process starts no
    // other task; the denial then reaches the task's next run.
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "write_file", WRITE)]),
        Reply::stream_tool_calls(&[("c1", "write_file", WRITE)]),
        Reply::stream_text(&["Understood, not writing."]),
        Reply::stream_text(&["the other message"]),
    ]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = approval_config(dir.path(), &llm.base_url(), "{tools: [write_file]}", "");
    let d = start(&cfg, &state);
    let pid = d.running_pid("worker");
    let t = send(&d, "write it");
    let a = wait_pending(&d);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill the agent");
    let new_pid = wait_for(Duration::from_secs(20), || {
        d.agent("worker")
            .filter(|s| s.state == "running")
            .and_then(|s| s.pid)
            .filter(|p| *p != pid)
    })
    .expect("the agent restarted");
    assert_ne!(new_pid, pid);
    let other = send(&d, "something else");
    assert_eq!(task(&d, t).state, TaskState::Waiting);
    assert_eq!(pending(&d).len(), 1);
    assert_eq!(
        task(&d, other).state,
        TaskState::Queued,
        "a waiting agent starts no other task"
    );
    let r = d.request(&Request::Deny {
        id: a.id,
        reason: Some("not now".into()),
        caller: None,
    });
    assert!(r.ok, "{r:?}");
    wait_state(&d, t, TaskState::Succeeded);
    wait_state(&d, other, TaskState::Succeeded);
    assert!(!dir.path().join("files/out.md").exists());
    let third = &llm.requests()[2].json();
    let told = third["messages"].to_string();
    assert!(told.contains("denied by uid 0: not now"), "{told}");
}

#[test]
fn a_budget_pause_outlives_a_restart_and_still_lifts_when_the_window_frees() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["one"]),
        Reply::stream_text(&["two"]),
        Reply::stream_text(&["three"]),
    ]);
    let dir = tempdir();
    let state = dir.path().join("state");
    let cfg = config(dir.path(), &llm.base_url(), "    budget: {tokens: 20, per: 4s}\n");
    let mut d = start(&cfg, &state);
    let one = send(&d, "one");
    wait_state(&d, one, TaskState::Succeeded);
    let two = send(&d, "two");
    wait_state(&d, two, TaskState::Succeeded);
    d.wait_status("a budget pause", |s| {
        s[0].pause
            .as_ref()
            .is_some_and(|p| p.reason == agentd::domain::PauseReason::Budget)
    });
    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(20));
    drop(d);

    let d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    // Whether or not the window freed while agentd was down, the restarted
    // agentd read the budget pause back before anything ran.
    assert!(
        d.log_text().contains("starts paused (budget, by budget)"),
        "{}",
        d.log_text()
    );
    let three = send(&d, "three");
    let done = wait_state(&d, three, TaskState::Succeeded);
    let room_at = model_call_at(&state, one) + 4_000;
    assert!(
        done.started_at.expect("started") >= room_at,
        "task three started at {:?}, before the window had room at {room_at}",
        done.started_at
    );
    assert!(!d.agent("worker").expect("worker").paused);
}
