//! The agent runtime end to end: a real agentd, a real MCP server
//! (mcp-watch), a scripted OpenAI-compatible server on 127.0.0.1, real
//! sandboxes and real kills. The ledger is read back as a user would.

use std::time::Duration;

use agentd::ledger::{Step, Task};

use agentd::domain::TaskState;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::inbox::{Extra, InboxAgent};
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::{agentd, alive, stdout, wait_for};

const KEY: &str = "sk-test-do-not-log-0123456789";

/// One agent watching `inbox/` through mcp-watch, talking to `base_url`.
fn setup(base_url: &str, extra: &str) -> InboxAgent {
    InboxAgent::new(
        "reader",
        base_url,
        KEY,
        Extra {
            agent: extra,
            // min_interval below the 1 s of quiet the burst test waits for:
            // the update held back after the first fires before it looks.
            subscription: ", min_interval: 300ms",
            system_prompt: Some("You read notes."),
            max_retries: 3,
            ..Extra::default()
        },
    )
}

use crate::support::daemon::tasks;

fn wait_task(d: &Daemon, pred: impl Fn(&Task) -> bool, what: &str) -> Task {
    wait_for(Duration::from_secs(30), || {
        tasks(&d.state_dir).into_iter().find(|t| pred(t))
    })
    .unwrap_or_else(|| {
        panic!(
            "no task {what}; tasks {:#?}; log:\n{}",
            tasks(&d.state_dir),
            d.log_text()
        )
    })
}

/// Waits until `n` tasks have succeeded.
fn wait_succeeded(d: &Daemon, n: usize) {
    let done = || {
        tasks(&d.state_dir)
            .iter()
            .filter(|t| t.state == TaskState::Succeeded)
            .count()
            == n
    };
    wait_for(Duration::from_secs(30), || done().then_some(()))
        .unwrap_or_else(|| panic!("{n} tasks never succeeded; log:\n{}", d.log_text()));
}

use crate::support::daemon::steps;

fn kinds(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|s| s.kind.as_str()).collect()
}

/// Tool names offered in a request the scripted server received.
fn offered(req: &Value) -> Vec<String> {
    req["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn resource_change_drives_a_task_through_a_tool_call_to_success() {
    let llm = LlmServer::start(vec![
        Reply::rate_limited("0"),
        Reply::stream_tool_calls(&[("call_1", "read_file", r#"{"path": "note.md"}"#)]),
        Reply::stream_text(&["The note says ", "hello."]),
    ]);
    let s = setup(&llm.base_url(), "");
    let d = s.start_running();
    std::fs::write(s.inbox.join("note.md"), "hello from the inbox\n").expect("write note");

    let t = wait_task(&d, |t| t.state.is_final(), "finished");
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\nlog:\n{}", d.log_text());
    assert_eq!(t.result.as_deref(), Some("The note says hello."));
    assert_eq!(t.trigger_kind, "resource");
    assert!(
        t.trigger["contents"]
            .as_str()
            .unwrap_or("")
            .contains("hello from the inbox"),
        "{t:#?}"
    );

    let st = steps(&d.state_dir, t.id);
    assert_eq!(kinds(&st), ["llm", "tool", "llm"], "{st:#?}");
    assert_eq!(
        st[0].payload["retries"].as_array().map(Vec::len),
        Some(1),
        "the 429 was retried and journaled"
    );
    assert_eq!(st[1].payload["name"], "read_file");
    assert!(
        st[1].payload["result"]
            .as_str()
            .unwrap_or("")
            .contains("hello from the inbox"),
        "{:#?}",
        st[1]
    );
    assert!(st[1].latency_ms.is_some());

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
        let tools = offered(&r.json());
        for name in ["list_files", "read_file", "write_file"] {
            assert!(tools.iter().any(|t| t == name), "every tool on every turn: {tools:?}");
        }
    }
    let last = reqs[2].json();
    let msgs = last["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs[0]["role"], "system");
    assert!(msgs[0]["content"].as_str().unwrap_or("").starts_with("You read notes."));
    let tool_msg = msgs
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("tool result sent back");
    assert_eq!(tool_msg["tool_call_id"], "call_1");
    assert!(
        tool_msg["content"]
            .as_str()
            .unwrap_or("")
            .contains("hello from the inbox")
    );
    assert!(!d.log_text().contains(KEY), "the API key must never be logged");

    // The CLI readers show the same story.
    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["show", "--state-dir", &sd, &t.id.to_string()]);
    let text = stdout(&out);
    assert!(
        text.contains("state:    succeeded") && text.contains("[tool]") && text.contains("read_file"),
        "{text}"
    );
}

#[test]
fn malformed_tool_arguments_go_back_to_the_model_and_fences_run_in_the_sandbox() {
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "read_file", "{not json")]),
        Reply::stream_text(&[
            "Let me count.\n```bash:execute\necho words: $(cat ../../../../inbox/x.md 2>/dev/null | wc -w); echo from-sandbox\n```\n",
        ]),
        Reply::stream_text(&["Done."]),
    ]);
    let s = setup(&llm.base_url(), "");
    let d = s.start_running();
    std::fs::write(s.inbox.join("x.md"), "one two three").expect("write");
    let t = wait_task(&d, |t| t.state.is_final(), "finished");
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", d.log_text());
    let st = steps(&d.state_dir, t.id);
    assert_eq!(kinds(&st), ["llm", "tool", "llm", "fence", "llm"], "{st:#?}");
    let err = st[1].payload["error"].as_str().unwrap_or("");
    assert!(err.contains("not valid JSON"), "{err}");
    let fence = st[3].payload["result"].as_str().unwrap_or("");
    assert!(
        fence.contains("exit code 0") && fence.contains("from-sandbox"),
        "{fence}"
    );

    let reqs = llm.requests();
    let second = reqs[1].json();
    let tool_answer = second["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool"))
        .cloned();
    assert!(tool_answer.is_some_and(|m| {
        m["content"]
            .as_str()
            .unwrap_or("")
            .contains("call it again with valid JSON")
    }));
    let third = reqs[2].json();
    let feedback = third["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(feedback["role"], "user");
    assert!(
        feedback["content"].as_str().unwrap_or("").contains("from-sandbox"),
        "{feedback}"
    );
}

#[test]
fn max_turns_fails_the_task_with_a_clear_reason() {
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "list_files", "{}")]),
        Reply::stream_tool_calls(&[("c2", "list_files", "{}")]),
    ]);
    let s = setup(&llm.base_url(), "    limits: {max_turns: 2}\n");
    let d = s.start_running();
    std::fs::write(s.inbox.join("a.md"), "a").expect("write");
    let t = wait_task(&d, |t| t.state.is_final(), "finished");
    assert_eq!(t.state, TaskState::Failed);
    assert!(
        t.error
            .as_deref()
            .unwrap_or("")
            .starts_with("stopped after 2 turns (limits.max_turns)"),
        "{t:#?}"
    );
}

#[test]
fn kill_9_of_the_child_mid_task_requeues_and_the_next_attempt_succeeds() {
    let llm = LlmServer::start(vec![Reply::Stall, Reply::stream_text(&["second attempt done"])]);
    let s = setup(&llm.base_url(), "");
    let d = s.start_running();
    std::fs::write(s.inbox.join("n.md"), "x").expect("write");
    let running = wait_task(&d, |t| t.state == TaskState::Running, "running");
    wait_for(Duration::from_secs(20), || (llm.request_count() >= 1).then_some(())).expect("model asked");
    let pid = d.running_pid("reader");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");

    let t = wait_task(&d, |t| t.id == running.id && t.state.is_final(), "finished after retry");
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", d.log_text());
    assert_eq!(t.attempts, 2);
    assert_eq!(t.result.as_deref(), Some("second attempt done"));
    let st = steps(&d.state_dir, t.id);
    assert!(
        st.iter().all(|s| s.attempt == 2),
        "the stalled attempt wrote no step: {st:#?}"
    );
    assert_eq!(tasks(&d.state_dir).len(), 1, "re-queued, not duplicated");
}

#[test]
fn kill_9_of_agentd_then_restart_recovers_the_running_task() {
    let llm = LlmServer::start(vec![Reply::Stall, Reply::stream_text(&["recovered"])]);
    let s = setup(&llm.base_url(), "");
    let mut d = s.start_running();
    let child = d.running_pid("reader");
    std::fs::write(s.inbox.join("n.md"), "x").expect("write");
    let running = wait_task(&d, |t| t.state == TaskState::Running, "running");
    wait_for(Duration::from_secs(20), || (llm.request_count() >= 1).then_some(())).expect("model asked");
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    assert!(
        wait_for(Duration::from_secs(10), || (!alive(child)).then_some(())).is_some(),
        "the agent child dies with agentd (PDEATHSIG)"
    );
    assert_eq!(
        tasks(&d.state_dir)[0].state,
        TaskState::Running,
        "left running by the dead agentd"
    );
    drop(d);

    let d = s.start_running();
    let t = wait_task(
        &d,
        |t| t.id == running.id && t.state.is_final(),
        "finished after recovery",
    );
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", d.log_text());
    assert_eq!(t.attempts, 2);
    assert!(
        d.log_text()
            .contains(&format!("task {} was running when agentd last stopped", running.id))
    );
}

#[test]
fn the_conversation_survives_a_child_restart() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["I saw the first note."]),
        Reply::stream_text(&["Second one too."]),
    ]);
    let s = setup(&llm.base_url(), "");
    let d = s.start_running();
    std::fs::write(s.inbox.join("first.md"), "first").expect("write");
    wait_task(&d, |t| t.state == TaskState::Succeeded, "first done");
    let pid = d.running_pid("reader");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
    d.wait_status("a new child", |s| {
        s.iter()
            .any(|a| a.state == "running" && a.pid.is_some_and(|p| p != pid))
    });
    std::fs::write(s.inbox.join("second.md"), "second").expect("write");
    wait_succeeded(&d, 2);
    let reqs = llm.requests();
    let msgs = reqs[1].json()["messages"].as_array().cloned().unwrap_or_default();
    assert!(
        msgs.iter()
            .any(|m| m["role"] == "assistant" && m["content"] == "I saw the first note."),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m["content"].as_str().unwrap_or("").contains("first.md"))
    );
}

#[test]
fn a_recorded_run_replays_to_the_same_journal_without_a_server() {
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("call_1", "read_file", r#"{"path": "r.md"}"#)]),
        Reply::stream_text(&["Recorded answer."]),
    ]);
    let s = setup(&llm.base_url(), "");
    let cassettes = s.dir.path().join("cassettes");
    let journal = |d: &Daemon| {
        let t = wait_task(d, |t| t.state.is_final(), "finished");
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", d.log_text());
        steps(&d.state_dir, t.id)
            .into_iter()
            .map(|s| {
                (
                    s.kind,
                    s.payload["reply"].clone(),
                    s.payload["name"].clone(),
                    s.payload["result"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let recorded = {
        let mut cmd_env = vec![("TEST_LLM_KEY", KEY)];
        cmd_env.push(("RUST_LOG", "info"));
        let d = Daemon::start_with_args(
            &s.config,
            &s.state(),
            &cmd_env,
            &["--record", cassettes.to_str().unwrap_or_default()],
        );
        d.running_pid("reader");
        std::fs::write(s.inbox.join("r.md"), "replay me").expect("write");
        journal(&d)
    };
    let cassette = cassettes.join("reader.cassette.json");
    assert!(cassette.is_file(), "cassette written");
    drop(llm); // no server from here on

    let text = std::fs::read_to_string(&s.config).expect("config").replace(
        "model: test-model",
        &format!("model: \"replay:{}\"", cassette.display()),
    );
    std::fs::write(&s.config, text).expect("config");
    std::fs::remove_dir_all(s.state()).expect("fresh state");
    std::fs::remove_file(s.inbox.join("r.md")).expect("rm");
    let d = s.start_running();
    std::fs::write(s.inbox.join("r.md"), "replay me").expect("write");
    assert_eq!(journal(&d), recorded);
}

#[test]
fn a_burst_of_50_writes_yields_a_few_tasks_and_the_last_has_the_fresh_contents() {
    let llm = LlmServer::start((0..20).map(|i| Reply::stream_text(&[&format!("seen {i}")])).collect());
    let s = setup(&llm.base_url(), "");
    let d = s.start_running();
    let note = s.inbox.join("burst.md");
    for i in 0..50 {
        std::fs::write(&note, format!("version {i}\n")).expect("write");
    }
    // Wait until the ledger has been quiet (all final) for a while.
    let mut stable = 0;
    let mut last = Vec::new();
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(100));
        let now = tasks(&d.state_dir);
        if !now.is_empty() && now.iter().all(|t| t.state.is_final()) && now.len() == last.len() {
            stable += 1;
            if stable >= 10 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    let all = tasks(&d.state_dir);
    assert!(!all.is_empty(), "never zero; log:\n{}", d.log_text());
    assert!(all.len() <= 5, "bursts coalesce: {} tasks for 50 writes", all.len());
    assert!(all.iter().all(|t| t.state == TaskState::Succeeded), "{all:#?}");
    let newest = &all[0];
    assert_eq!(
        newest.trigger["contents"], "version 49\n",
        "the last task saw what the file says now"
    );
}

#[test]
fn sigterm_stops_agents_and_their_mcp_servers() {
    let llm = LlmServer::start(vec![]);
    let s = setup(&llm.base_url(), "");
    let mut d = s.start_running();
    let child = d.running_pid("reader");
    let servers = wait_for(Duration::from_secs(10), || {
        Some(crate::support::children_of(child)).filter(|v| !v.is_empty())
    })
    .expect("the agent started its MCP server");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)).code(), Some(0));
    for pid in servers.iter().chain([&child]) {
        assert!(
            wait_for(Duration::from_secs(5), || (!alive(*pid)).then_some(())).is_some(),
            "process {pid} outlived agentd"
        );
    }
}

#[test]
fn restoring_a_conversation_snapshot_gives_the_agent_that_memory_back() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["Noted the apples."]),
        Reply::stream_text(&["Noted the pears."]),
        Reply::stream_text(&["I remember apples only."]),
    ]);
    let s = setup(&llm.base_url(), "");
    let d = s.start_running();
    std::fs::write(s.inbox.join("apples.md"), "apples").expect("write");
    wait_task(&d, |t| t.state == TaskState::Succeeded, "first");
    std::fs::write(s.inbox.join("pears.md"), "pears").expect("write");
    wait_succeeded(&d, 2);
    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["snapshot", "list", "--state-dir", &sd, "reader", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    let after_first = list
        .as_array()
        .and_then(|l| l.last())
        .map(|m| m["id"].to_string())
        .expect("a snapshot");
    let out = agentd(&["snapshot", "show", "--state-dir", &sd, "reader", &after_first]);
    assert!(
        stdout(&out).contains("assistant: Noted the apples."),
        "{}",
        stdout(&out)
    );

    let pid = d.running_pid("reader");
    let out = agentd(&["snapshot", "restore", "--state-dir", &sd, "reader", &after_first]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_status("reader to restart", |s| {
        s.iter()
            .any(|a| a.state == "running" && a.pid.is_some_and(|p| p != pid))
    });
    std::fs::write(s.inbox.join("plums.md"), "plums").expect("write");
    wait_for(Duration::from_secs(30), || (llm.request_count() == 3).then_some(())).expect("third request");
    let msgs = llm.requests()[2].json()["messages"].to_string();
    assert!(
        msgs.contains("Noted the apples.") && !msgs.contains("Noted the pears."),
        "{msgs}"
    );
}

#[test]
fn sandboxed_code_cannot_steer_agentd_through_the_control_socket() {
    let llm = LlmServer::start(vec![]);
    let s = setup(&llm.base_url(), "");
    let socket = s.state().join("agentd.sock");
    // Directly, and from a double-forked orphan (its parent is pid 1, so an
    // ancestry check would have let it through).
    let code = format!(
        "```python:execute\nimport os, socket, time\n\
         def steer(tag):\n    try:\n        s = socket.socket(socket.AF_UNIX)\n        s.connect({path:?})\n        s.sendall(b'{{\"method\":\"Stop\",\"agent\":\"reader\"}}\\n')\n        out = s.recv(4096).decode()\n    except OSError as e:\n        out = 'error: %s' % e\n    open(tag, 'w').write(out)\n\
         if os.fork() == 0:\n    if os.fork() == 0:\n        time.sleep(0.3)\n        steer('orphan.txt')\n    os._exit(0)\n\
         steer('direct.txt')\n\
         for _ in range(50):\n    if os.path.exists('orphan.txt'): break\n    time.sleep(0.1)\n\
         print('direct:', open('direct.txt').read())\nprint('orphan:', open('orphan.txt').read())\n```",
        path = socket.display().to_string()
    );
    llm.push(Reply::stream_text(&[&code]));
    llm.push(Reply::stream_text(&["Tried."]));
    let d = s.start_running();
    let pid = d.running_pid("reader");
    std::fs::write(s.inbox.join("x.md"), "x").expect("write");
    let t = wait_task(&d, |t| t.state.is_final(), "finished");
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", d.log_text());
    let st = steps(&d.state_dir, t.id);
    let fence = st
        .iter()
        .find(|s| s.kind == "fence")
        .map(|s| s.payload["result"].to_string())
        .unwrap_or_default();
    // Both refused before a request was read: no Unix socket for the
    // sandbox (seccomp), and the control socket's uid check behind that.
    assert!(fence.contains("direct: error:"), "{fence}");
    assert!(fence.contains("orphan: error:"), "{fence}");
    assert!(!fence.contains("\\\"ok\\\":true"), "{fence}");
    assert_eq!(d.running_pid("reader"), pid, "the agent was not stopped");
}

#[test]
fn egress_attempts_are_journaled_and_denials_reach_the_model() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfetched!\n");
        }
    });
    let code = format!(
        "```bash:execute\ncurl -sS --max-time 20 http://allowed.test:{port}/; curl -sS --max-time 20 http://denied.test:{port}/ >/dev/null\n```"
    );
    let llm = LlmServer::start(vec![Reply::stream_text(&[&code]), Reply::stream_text(&["Done."])]);
    let s = setup(
        &llm.base_url(),
        "    sandbox: {profile: web, backend: bwrap, network: {allow: [allowed.test], deny: [denied.test], resolve: {allowed.test: 127.0.0.1, denied.test: 127.0.0.1}}}\n",
    );
    let d = s.start_running();
    std::fs::write(s.inbox.join("x.md"), "x").expect("write");
    let t = wait_task(&d, |t| t.state.is_final(), "finished");
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", d.log_text());
    let st = steps(&d.state_dir, t.id);
    assert_eq!(kinds(&st), ["llm", "egress", "egress", "fence", "llm"], "{st:#?}");
    let (allowed, denied) = (&st[1].payload, &st[2].payload);
    assert_eq!(
        (
            allowed["host"].as_str(),
            allowed["port"].as_u64(),
            allowed["decision"].as_str()
        ),
        (Some("allowed.test"), Some(port as u64), Some("allowed"))
    );
    assert_eq!(allowed["rule"], "allow allowed.test");
    assert!(allowed["received"].as_u64().unwrap_or(0) > 9, "{allowed}");
    assert!(allowed["duration_ms"].is_u64(), "{allowed}");
    assert_eq!(
        (
            denied["host"].as_str(),
            denied["decision"].as_str(),
            denied["rule"].as_str()
        ),
        (
            Some("denied.test"),
            Some("denied"),
            Some("denied by rule deny denied.test")
        )
    );
    let feedback = llm.requests()[1].json()["messages"].to_string();
    assert!(feedback.contains("fetched!"), "{feedback}");
    assert!(
        feedback.contains("denied.test:") && feedback.contains("refused by the sandbox's egress policy"),
        "{feedback}"
    );
    // Counted per agent and decision (never per host: denied names are
    // the model's to choose), bytes per direction.
    let metrics = d.request(&agentd::control::Request::Metrics);
    let text = metrics.result.expect("metrics")["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for line in [
        r#"agentd_egress_connections_total{agent="reader",decision="allowed"} 1"#,
        r#"agentd_egress_connections_total{agent="reader",decision="denied"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let received = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"agentd_egress_bytes_total{agent="reader",direction="received"} "#))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(received.is_some_and(|r| r > 9.0), "{text}");
}
