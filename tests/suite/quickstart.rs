//! The README's main command: the quickstart runs offline, for real.

use std::path::Path;
use std::time::Duration;

use agentd::ledger::{self, Ledger, TaskFilter};

use agentd::domain::TaskState;

use crate::support::daemon::Daemon;
use crate::support::{agentd, stdout, tempdir, wait_for};

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap_or(to)).expect("mkdir");
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read dir").flatten() {
            copy(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).expect("copy");
    }
}

#[test]
fn quickstart_checks_and_reacts_to_a_dropped_note_without_an_api_key() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempdir();
    for p in [
        "examples/quickstart.yaml",
        "examples/cassettes",
        "examples/inbox",
        "agents",
    ] {
        copy(&repo.join(p), &dir.path().join(p));
    }
    let config = dir.path().join("examples/quickstart.yaml");
    let out = agentd(&["check", config.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("agent triage"), "{}", stdout(&out));

    let state = dir.path().join("state");
    let d = Daemon::start(&config, &state, &[("OPENAI_API_KEY", "")]);
    d.running_pid("triage");
    std::fs::write(dir.path().join("examples/inbox/todo.md"), "Buy milk\n").expect("drop a note");
    let read = || Ledger::open_read_only(&state.join(ledger::FILE_NAME)).ok();
    let task = wait_for(Duration::from_secs(30), || {
        read()?
            .list_tasks(&TaskFilter::default())
            .ok()?
            .into_iter()
            .find(|t| t.trigger_kind == "resource" && t.state.is_final())
    })
    .unwrap_or_else(|| panic!("no finished task; log:\n{}", d.log_text()));
    assert_eq!(task.state, TaskState::Succeeded, "{task:#?}\n{}", d.log_text());
    assert_eq!(
        task.result.as_deref(),
        Some("Inbox checked and logged in log/triage.log.")
    );
    let steps = read().map(|l| l.steps(task.id).unwrap_or_default()).unwrap_or_default();
    let kinds: Vec<&str> = steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["llm", "tool", "llm", "fence", "llm"], "{steps:#?}");
    assert!(steps[2].payload.to_string().contains("looked at the inbox"));
    let fence = steps[3].payload["result"].as_str().unwrap_or("");
    // Every task (the schedule fires every 20 s too) appends one look to
    // the log, one task at a time: this task's look is the count so far.
    let looks = read()
        .and_then(|l| l.list_tasks(&TaskFilter::default()).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.id <= task.id && t.state == TaskState::Succeeded)
        .count();
    assert!(
        fence.contains("exit code 0") && fence.contains(&format!("looks so far: {looks}\n")),
        "{fence}"
    );
    assert!(
        steps[1].payload["result"].as_str().unwrap_or("").contains("todo.md"),
        "the real MCP server listed the note"
    );
    let log = state.join("agents/triage/work/log/triage.log");
    assert!(log.is_file(), "the sandboxed code wrote into the agent's workdir");
}
