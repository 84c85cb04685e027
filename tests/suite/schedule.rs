//! Cron schedules and pause/resume, end to end: a real agentd, a scripted
//! model server on 127.0.0.1, and the ledger read back. Timing is only
//! ever asserted as "within a generous bound".

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::control::{AgentStatus, Request};
use agentd::domain::{TaskId, TaskState, Trigger};
use agentd::ledger::{self, Ledger, Task, TaskFilter};
use chrono::{DateTime, Utc};

use crate::support::daemon::Daemon;
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::{agentd, stderr, stdout, tempdir, wait_for, write};

const KEY: &str = "sk-test-schedule-0123456789";

fn config(dir: &Path, base_url: &str, schedules: &str) -> PathBuf {
    write(
        dir,
        "agentd.yaml",
        &format!(
            r#"shutdown_grace: 2s
agents:
  - name: clock
    model: test-model
    system_prompt: You keep time.
    llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: 0}}
    schedules:
{schedules}
"#
        ),
    )
}

/// A server with plenty of quick answers.
fn llm(n: usize) -> LlmServer {
    LlmServer::start((0..n).map(|i| Reply::stream_text(&[&format!("tick {i}")])).collect())
}

fn tasks(state: &Path) -> Vec<Task> {
    Ledger::open_read_only(&state.join(ledger::FILE_NAME))
        .and_then(|l| l.list_tasks(&TaskFilter::default()))
        .unwrap_or_default()
}

fn scheduled_for(t: &Task) -> DateTime<Utc> {
    let s = t.trigger["scheduled_for"].as_str().unwrap_or_default();
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("scheduled_for {s:?}: {e}"))
        .with_timezone(&Utc)
}

fn clock(d: &Daemon) -> AgentStatus {
    d.agent("clock").expect("agent clock")
}

#[test]
fn schedule_every_second_fires_repeatedly_and_status_shows_the_next_run() {
    let llm = llm(40);
    let dir = tempdir();
    let cfg = config(
        dir.path(),
        &llm.base_url(),
        r#"      - {cron: "* * * * * *", prompt: "Say the time.", timezone: Europe/Berlin}"#,
    );
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("clock");

    let s = clock(&d);
    assert_eq!(s.schedules.len(), 1, "{s:?}");
    assert_eq!(s.schedules[0].cron, "* * * * * *");
    assert_eq!(s.schedules[0].timezone, "Europe/Berlin");
    let next = s.schedules[0].next_run.clone().expect("a next run");
    // RFC 3339 in the schedule's timezone.
    assert!(next.ends_with("+01:00") || next.ends_with("+02:00"), "{next}");
    let out = agentd(&["status", "--state-dir", state.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("schedule \"* * * * * *\" (Europe/Berlin): next run 20"),
        "{}",
        stdout(&out)
    );

    // At least three distinct firings within a generous window.
    let fired = wait_for(Duration::from_secs(20), || {
        let done: Vec<Task> = tasks(&state)
            .into_iter()
            .filter(|t| t.trigger_kind == "schedule" && t.state == TaskState::Succeeded)
            .collect();
        (done.len() >= 3).then_some(done)
    })
    .unwrap_or_else(|| panic!("tasks: {:#?}\nlog:\n{}", tasks(&state), d.log_text()));
    let mut times: Vec<DateTime<Utc>> = fired.iter().map(scheduled_for).collect();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), fired.len(), "each firing is its own occurrence");
    for (t, at) in fired.iter().zip(fired.iter().map(scheduled_for)) {
        assert_eq!(at.timestamp_subsec_millis(), 0, "occurrences are whole seconds");
        // Recorded when due, give or take a loaded machine.
        let lag = t.created_at - at.timestamp_millis();
        assert!(
            (-1000..5000).contains(&lag),
            "task {} recorded {lag} ms after its time",
            t.id
        );
    }
    let req = llm.requests()[0].json();
    let asked = req["messages"].to_string();
    assert!(
        asked.contains("Say the time.") && asked.contains("cron `* * * * * *`"),
        "{asked}"
    );
}

#[test]
fn missed_runs_during_downtime_become_exactly_one_catch_up_task() {
    let llm = llm(5);
    let dir = tempdir();
    // Yearly, at New Year: nothing fires during the test, and the three
    // years since the last recorded run are three missed occurrences.
    let cron = "0 0 1 1 *";
    let cfg = config(
        dir.path(),
        &llm.base_url(),
        &format!(r#"      - {{cron: "{cron}", prompt: "Happy new year."}}"#),
    );
    let state = dir.path().join("state");
    // The last run agentd recorded before it went down, three years ago.
    {
        let mut l = Ledger::open(&state.join(ledger::FILE_NAME)).expect("ledger");
        let year = Utc::now().format("%Y").to_string().parse::<i32>().unwrap_or(2026);
        let trigger = Trigger::Schedule {
            cron: cron.into(),
            prompt: "Happy new year.".into(),
            scheduled_for: format!("{}-01-01T00:00:00+00:00", year - 3),
        };
        let id = l.enqueue("clock", &trigger, None).expect("enqueue").id();
        let t = l
            .claim_next(
                "clock",
                &agentd::domain::Lease {
                    agent: "clock".into(),
                    pid: 1,
                    generation: 1,
                },
            )
            .expect("claim")
            .expect("a task");
        assert_eq!(t.id, id);
        l.finish(
            id,
            &agentd::domain::Lease {
                agent: "clock".into(),
                pid: 1,
                generation: 1,
            },
            TaskState::Succeeded,
            Some("done"),
            None,
        )
        .expect("finish");
    }

    let d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("clock");
    let catch_up = wait_for(Duration::from_secs(20), || {
        let ts: Vec<Task> = tasks(&state).into_iter().filter(|t| t.id != TaskId(1)).collect();
        ts.iter().any(|t| t.state.is_final()).then_some(ts)
    })
    .unwrap_or_else(|| panic!("no catch-up task; tasks: {:#?}\nlog:\n{}", tasks(&state), d.log_text()));
    // Give a flood the chance to show itself before counting.
    std::thread::sleep(Duration::from_millis(500));
    let later: Vec<Task> = tasks(&state).into_iter().filter(|t| t.id != TaskId(1)).collect();
    assert_eq!(later.len(), 1, "one catch-up task, not one per missed run: {later:#?}");
    let t = &catch_up[0];
    assert_eq!(t.trigger_kind, "schedule");
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    let year = Utc::now().format("%Y").to_string();
    assert_eq!(
        scheduled_for(t),
        DateTime::parse_from_rfc3339(&format!("{year}-01-01T00:00:00Z"))
            .expect("time")
            .with_timezone(&Utc),
        "the catch-up stands for the newest missed occurrence"
    );
    assert!(d.log_text().contains("missed 3 run(s)"), "{}", d.log_text());

    // A restart right away has nothing new to catch up on.
    drop(d);
    let d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("clock");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tasks(&state).len(), 2, "{:#?}", tasks(&state));
}

#[test]
fn paused_agent_queues_coalesced_triggers_and_resume_drains_them() {
    let llm = llm(40);
    let dir = tempdir();
    let cfg = config(
        dir.path(),
        &llm.base_url(),
        r#"      - {cron: "* * * * * *", prompt: "Tick."}"#,
    );
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("clock");

    let out = agentd(&["pause", "--state-dir", state.to_str().unwrap_or_default(), "clock"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("clock: running, paused"), "{}", stdout(&out));
    // A task that was already running when the pause came finishes.
    d.wait_status("clock idle", |s| s.iter().all(|a| a.running_task.is_none()));
    let served = llm.request_count();

    // A second's schedule fires a few times while paused, and a message arrives.
    let r = d.request(&Request::Send {
        agent: "clock".into(),
        text: "are you there?".into(),
        wait: false,
    });
    assert!(r.ok, "{r:?}");
    let message = r
        .result
        .as_ref()
        .and_then(|v| v["task"].as_i64())
        .map(TaskId)
        .expect("task id");
    std::thread::sleep(Duration::from_millis(3500));

    let s = clock(&d);
    assert!(s.paused, "{s:?}");
    assert_eq!(s.state, "running", "the agent process stays up: {s:?}");
    assert_eq!(llm.request_count(), served, "a paused agent runs nothing");
    let queued: Vec<Task> = tasks(&state)
        .into_iter()
        .filter(|t| t.state == TaskState::Queued)
        .collect();
    let scheduled: Vec<&Task> = queued.iter().filter(|t| t.trigger_kind == "schedule").collect();
    assert_eq!(scheduled.len(), 1, "firings coalesce while queued: {queued:#?}");
    assert!(queued.iter().any(|t| t.id == message), "{queued:#?}");
    assert_eq!(s.queued, 2, "{s:?}");
    let coalesced = scheduled[0].id;

    let r = d.request(&Request::Resume { agent: "clock".into() });
    assert!(r.ok, "{r:?}");
    let drained = wait_for(Duration::from_secs(20), || {
        let ts = tasks(&state);
        let done = |id| ts.iter().any(|t| t.id == id && t.state == TaskState::Succeeded);
        (done(coalesced) && done(message)).then_some(())
    });
    assert!(
        drained.is_some(),
        "resume did not run the queue; tasks {:#?}\nlog:\n{}",
        tasks(&state),
        d.log_text()
    );
    assert!(!clock(&d).paused);
    assert!(llm.request_count() >= served + 2);
}
