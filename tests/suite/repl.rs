//! The REPL and `agentd send`, end to end: a real agentd with two agents,
//! a scripted OpenAI-compatible server on 127.0.0.1, input through a pipe
//! and through a pseudo-terminal, the ledger read back as a user would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::control::Request;
use agentd::domain::TaskState;
use agentd::ledger::{self, Ledger, Task, TaskFilter};

use crate::support::daemon::Daemon;
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::repl::{PipedRepl, PtyRepl};
use crate::support::{agentd, stderr, stdout, tempdir, wait_for, write};

const KEY: &str = "sk-test-repl-0123456789";

/// Two agents, `news` first (so it is the current one), on `base_url`.
fn two_agents(dir: &Path, base_url: &str) -> PathBuf {
    write(
        dir,
        "agentd.yaml",
        &format!(
            r#"shutdown_grace: 2s
defaults:
  model: test-model
  llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: 0}}
agents:
  - name: news
    system_prompt: You read the news.
  - name: mail
    system_prompt: You read the mail.
"#
        ),
    )
}

fn tasks(state: &Path) -> Vec<Task> {
    Ledger::open_read_only(&state.join(ledger::FILE_NAME))
        .and_then(|l| l.list_tasks(&TaskFilter::default()))
        .unwrap_or_default()
}

/// The text of every message in a request the scripted server received.
fn conversation(body: &serde_json::Value) -> String {
    body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn last_user_message(body: &serde_json::Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn repl_on_piped_stdin_talks_to_two_agents_with_labelled_streamed_replies() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["Hi from ", "news.\nSecond ", "line."]),
        Reply::stream_text(&["No new ", "mail."]),
        Reply::stream_text(&["You asked about mail; ", "I said there was none."]),
    ]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    let mut r = PipedRepl::start(&config, &state, &[("TEST_LLM_KEY", KEY)]);
    r.daemon.running_pid("news");
    r.daemon.running_pid("mail");

    // A plain line goes to the current agent, the first one configured.
    r.line("hello news");
    r.wait_line("news: Second line.");
    // @name addresses another agent without switching.
    r.line("@mail any mail?");
    r.wait_line("mail: No new mail.");
    // /use switches; plain lines follow.
    r.line("/use mail");
    r.line("what did you just do?");
    r.wait_line("mail: You asked about mail; I said there was none.");

    let lines = r.lines();
    assert_eq!(
        lines,
        [
            "news: Hi from news.",
            "news: Second line.",
            "mail: No new mail.",
            "mail: You asked about mail; I said there was none.",
        ],
        "streamed replies come out whole lines, each named after its agent"
    );

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(last_user_message(&reqs[0].json()), "hello news");
    assert!(conversation(&reqs[0].json()).contains("You read the news."));
    assert_eq!(last_user_message(&reqs[1].json()), "any mail?");
    assert!(conversation(&reqs[1].json()).contains("You read the mail."));
    // The REPL message joins the conversation the agent already had, so it
    // can answer "what did you just do?".
    let third = conversation(&reqs[2].json());
    assert!(third.contains("any mail?") && third.contains("No new mail."), "{third}");
    assert!(
        !third.contains("hello news"),
        "mail does not see news's conversation: {third}"
    );

    // Each message is a task like any other: ledger, journal, snapshot.
    let ts = wait_for(Duration::from_secs(10), || {
        let ts = tasks(&state);
        (ts.len() == 3 && ts.iter().all(|t| t.state.is_final())).then_some(ts)
    })
    .unwrap_or_else(|| panic!("tasks: {:#?}", tasks(&state)));
    for t in &ts {
        assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
        assert_eq!(t.trigger_kind, "message");
        assert_eq!(t.trigger["from"], "repl");
    }
    let l = Ledger::open_read_only(&state.join(ledger::FILE_NAME)).expect("ledger");
    let newest = &ts[0];
    assert_eq!(newest.agent, "mail");
    assert_eq!(newest.trigger["text"], "what did you just do?");
    let steps = l.steps(newest.id).expect("steps");
    assert_eq!(steps.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(), ["llm"]);
    let snap = l
        .latest_snapshot("mail", ledger::SnapshotKind::Conversation)
        .expect("snapshot read");
    assert_eq!(snap.and_then(|s| s.meta.task_id), Some(newest.id));
}

#[test]
fn repl_errors_are_one_line_and_end_of_input_leaves_the_daemon_running() {
    let llm = LlmServer::start(vec![Reply::stream_text(&["still here"])]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    let mut r = PipedRepl::start(&config, &state, &[("TEST_LLM_KEY", KEY)]);
    r.daemon.running_pid("news");
    r.daemon.running_pid("mail");

    r.line("@nobody hello");
    r.line("/use nobody");
    r.line("/frobnicate");
    r.line("/agents");
    let lines = r.wait_until("four answers", |l| l.len() >= 5);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(lines[0].starts_with("error: no agent named \"nobody\""), "{lines:#?}");
    assert!(lines[1].starts_with("error: no agent named \"nobody\""), "{lines:#?}");
    assert!(lines[2].starts_with("error: unknown command /frobnicate"), "{lines:#?}");
    // /agents lists both, the current one marked (config order is news first;
    // the listing is by name).
    assert_eq!(&lines[3..], ["  mail (running)", "* news (running)"]);
    assert!(tasks(&state).is_empty(), "errors queue nothing");

    // End of input closes the REPL only.
    r.close();
    wait_for(Duration::from_secs(10), || {
        r.daemon.log_text().contains("REPL input ended").then_some(())
    })
    .unwrap_or_else(|| panic!("no sign of the REPL closing; log:\n{}", r.daemon.log_text()));
    assert!(
        r.daemon.child.try_wait().expect("try_wait").is_none(),
        "agentd exited at end of input"
    );
    let out = agentd(&[
        "send",
        "--state-dir",
        state.to_str().unwrap_or_default(),
        "news",
        "are you there?",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "still here\n");
    assert!(r.daemon.request(&Request::Health).ok);
}

#[test]
fn repl_in_a_terminal_shows_the_current_agent_and_honours_line_editing() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["Headlines: ", "none."]),
        Reply::stream_text(&["Inbox ", "zero."]),
    ]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    let mut t = PtyRepl::start(&config, &state, &[("TEST_LLM_KEY", KEY)]);
    t.daemon.running_pid("news");
    t.daemon.running_pid("mail");
    t.wait_after(0, "news> ");

    // A typo fixed with backspace (DEL) reaches the agent fixed.
    let m = t.mark();
    t.keys(b"any newz\x7fs?\r");
    t.wait_after(m, "news: Headlines: none.");
    // agentd's own log lines come out above the prompt too, not into the
    // line being typed.
    t.wait_after(m, "task 1 succeeded: Headlines: none.");
    t.wait_after(m, "news> ");
    let reqs = llm.requests();
    assert_eq!(last_user_message(&reqs[0].json()), "any news?");

    // /use switches, and the prompt says so.
    let m = t.mark();
    t.keys(b"/use mail\r");
    t.wait_after(m, "mail> ");
    // Ctrl-A (start of line) then typing inserts before what was typed.
    let m = t.mark();
    t.keys(b"inbox?\x01check \r");
    t.wait_after(m, "mail: Inbox zero.");
    let reqs = llm.requests();
    assert_eq!(last_user_message(&reqs[1].json()), "check inbox?");

    // Errors are one line; the prompt comes back.
    let m = t.mark();
    t.keys(b"@ghost boo\r");
    let shown = t.wait_after(m, "error: no agent named \"ghost\"");
    assert!(!shown.contains("panicked"), "{shown}");
    t.wait_after(m, "mail> ");

    // History: Up brings back the last line.
    let m = t.mark();
    t.keys(b"\x1b[A");
    t.wait_after(m, "@ghost boo");

    // End of input (Ctrl-D on an empty line) closes the REPL, not agentd.
    let m = t.mark();
    t.keys(b"\x15\x04");
    t.wait_after(m, "REPL closed; agentd keeps running");
    assert!(
        t.daemon.child.try_wait().expect("try_wait").is_none(),
        "agentd exited at Ctrl-D"
    );
    assert!(t.daemon.request(&Request::Health).ok);
}

#[test]
fn send_wait_prints_the_reply_and_send_alone_prints_the_task() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["The reply, ", "streamed."]),
        Reply::stream_text(&["second"]),
        Reply::error(400, "invalid_request_error", "the model refuses"),
    ]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    let d = Daemon::start(&config, &state, &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("news");
    let sd = state.to_str().unwrap_or_default();

    let out = agentd(&["send", "--state-dir", sd, "news", "hello", "--wait"]);
    assert!(out.status.success(), "{}\nlog:\n{}", stderr(&out), d.log_text());
    assert_eq!(stdout(&out), "The reply, streamed.\n");

    let out = agentd(&["send", "--state-dir", sd, "news", "again", "--wait", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["result"], "second");
    assert_eq!(v["agent"], "news");
    let task = v["task"].as_i64().map(agentd::domain::TaskId).expect("task id");
    let t = tasks(&state).into_iter().find(|t| t.id == task).expect("the task");
    assert_eq!(t.trigger["from"], "control");
    assert_eq!(t.trigger["text"], "again");

    // A failed task: the error on stderr, exit 1.
    let out = agentd(&["send", "--state-dir", sd, "news", "fail please", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("failed"), "{}", stderr(&out));

    // Without --wait: the task id at once.
    d.request(&Request::Pause { agent: "mail".into() });
    let out = agentd(&["send", "--state-dir", sd, "mail", "later"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("task ") && stdout(&out).contains("queued for mail (the agent is paused"),
        "{}",
        stdout(&out)
    );

    let out = agentd(&["send", "--state-dir", sd, "nobody", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no agent named \"nobody\""), "{}", stderr(&out));
}

#[test]
fn repl_pause_resume_status_and_tasks_commands() {
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("call_1", "lookup", "{}")]),
        Reply::stream_text(&["Resumed and answering."]),
    ]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    let mut r = PipedRepl::start(&config, &state, &[("TEST_LLM_KEY", KEY)]);
    r.daemon.running_pid("news");

    r.line("/pause");
    r.wait_line("news paused: its triggers queue up; /resume news runs them");
    r.line("hello?");
    let lines = r.wait_until("the queued note", |l| l.len() >= 2);
    assert!(
        lines[1].starts_with("news: (news is paused (operator); /resume news runs it: task "),
        "{lines:#?}"
    );
    assert_eq!(llm.request_count(), 0, "a paused agent runs nothing");
    assert!(r.daemon.agent("news").is_some_and(|a| a.paused && a.queued == 1));

    r.line("/status");
    // The header, then one row per agent (mail, news).
    let lines = r.wait_until("the status table", |l| {
        l.iter()
            .position(|x| x.starts_with("AGENT "))
            .is_some_and(|h| l.len() >= h + 3)
    });
    let header = lines.iter().position(|x| x.starts_with("AGENT ")).unwrap_or_default();
    let news = &lines[header + 2];
    assert!(news.starts_with("news ") && news.contains("paused"), "{lines:#?}");

    r.line("/resume news");
    r.wait_line("news resumed");
    r.wait_line("news: Resumed and answering.");
    // The tool call it made on the way shows, labelled, before the answer.
    let lines = r.lines();
    let tool = lines.iter().position(|l| l == "news: [tool lookup]");
    let answer = lines.iter().position(|l| l == "news: Resumed and answering.");
    assert!(tool.is_some() && tool < answer, "{lines:#?}");
    r.line("/tasks");
    let lines = r.wait_until("the task list", |l| l.iter().any(|x| x.starts_with("#")));
    let row = lines.iter().find(|x| x.starts_with('#')).cloned().unwrap_or_default();
    assert!(
        row.contains("succeeded") && row.contains("message") && row.contains("hello?"),
        "{row}"
    );
}

#[test]
fn repl_quit_stops_agentd_after_the_reply_in_flight() {
    let llm = LlmServer::start(vec![Reply::stream_text(&["Last ", "words."])]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    let mut r = PipedRepl::start(&config, &state, &[("TEST_LLM_KEY", KEY)]);
    r.daemon.running_pid("news");
    r.daemon.running_pid("mail");
    r.line("say goodbye");
    r.line("/quit");
    let status = r.daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    r.wait_line("news: Last words.");
}

#[test]
fn without_a_terminal_or_repl_flag_stdin_is_not_read() {
    let llm = LlmServer::start(vec![]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    // As under systemd: stdin is not a terminal and there is no --repl.
    let mut d = Daemon::start_with_stdio(
        &config,
        &state,
        &[("TEST_LLM_KEY", KEY)],
        &[],
        std::process::Stdio::piped(),
        std::process::Stdio::piped(),
    );
    d.running_pid("news");
    {
        use std::io::Write;
        let mut stdin = d.child.stdin.take().expect("stdin");
        stdin.write_all(b"hello\n/quit\n").expect("write");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(tasks(&state).is_empty(), "{:#?}", tasks(&state));
    assert_eq!(llm.request_count(), 0);
    assert!(d.child.try_wait().expect("try_wait").is_none(), "/quit was not read");
}

/// `/tasks` and `agentd tasks` list in the same order: newest first.
#[test]
fn repl_tasks_lists_newest_first_like_agentd_tasks() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["First answer."]),
        Reply::stream_text(&["Second answer."]),
    ]);
    let dir = tempdir();
    let config = two_agents(dir.path(), &llm.base_url());
    let state = dir.path().join("state");
    let mut r = PipedRepl::start(&config, &state, &[("TEST_LLM_KEY", KEY)]);
    r.daemon.running_pid("news");
    r.line("one");
    r.wait_line("news: First answer.");
    r.line("two");
    r.wait_line("news: Second answer.");
    r.line("/tasks");
    let lines = r.wait_until("two task rows", |l| {
        l.iter().filter(|x| x.starts_with('#')).count() >= 2
    });
    let rows: Vec<&String> = lines.iter().filter(|x| x.starts_with('#')).collect();
    assert!(rows[0].starts_with("#2 ") && rows[1].starts_with("#1 "), "{rows:#?}");

    let out = agentd(&["tasks", "--state-dir", &state.display().to_string()]);
    let listed = stdout(&out);
    let ids: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["2", "1"], "{listed}");
}
