//! The ledger: migrations, refusal of foreign files, task lifecycle, and
//! the `tasks`/`show` readers.

use agentd::ledger::{self, Enqueued, Ledger, LedgerError, TaskFilter};

use agentd::domain::{Lease, NewStep, TaskState, Trigger};
use rusqlite::Connection;

use crate::support::{agentd, stderr, stdout, tempdir};

/// A lease of agent `a`; different generations are different holders.
fn lease(generation: u64) -> Lease {
    Lease {
        agent: "a".into(),
        pid: 1,
        generation,
    }
}

fn msg(text: &str) -> Trigger {
    Trigger::Message {
        text: text.into(),
        from: "test".into(),
    }
}

fn resource(uri: &str, contents: &str) -> Trigger {
    Trigger::Resource {
        uri: uri.into(),
        server: "fs".into(),
        subscription: uri.into(),
        contents: contents.into(),
    }
}

#[test]
fn fresh_file_is_created_at_the_latest_version() {
    let dir = tempdir();
    let path = dir.path().join("state/ledger.sqlite");
    let l = Ledger::open(&path).expect("open");
    drop(l);
    let c = Connection::open(&path).expect("sqlite");
    let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    let app: i64 = c.query_row("PRAGMA application_id", [], |r| r.get(0)).expect("app id");
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
    assert_eq!(v, ledger::SCHEMA_VERSION);
    assert_eq!(app, ledger::APPLICATION_ID);
    assert_eq!(mode, "wal");
}

#[test]
fn older_ledger_is_migrated_keeping_its_rows() {
    let dir = tempdir();
    let path = dir.path().join("ledger.sqlite");
    ledger::create_at_version(&path, 1).expect("v1");
    {
        let c = Connection::open(&path).expect("sqlite");
        c.execute(
            "INSERT INTO tasks (agent, trigger_kind, trigger_payload, state, created_at) VALUES ('a', 'message', '{}', 'succeeded', 1)",
            [],
        )
        .expect("insert");
        let has_snapshots: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'snapshots'", [], |r| {
                r.get(0)
            })
            .expect("query");
        assert_eq!(has_snapshots, 0, "v1 has no snapshots table");
    }
    let mut l = Ledger::open(&path).expect("migrates");
    assert_eq!(l.list_tasks(&TaskFilter::default()).expect("list").len(), 1);
    l.put_snapshot("a", ledger::SnapshotKind::Conversation, None, None, b"[]")
        .expect("v2 table exists");
}

#[test]
fn a_v2_ledger_gains_waiting_tasks_approvals_and_pauses_keeping_every_row() {
    let dir = tempdir();
    let path = dir.path().join("ledger.sqlite");
    ledger::create_at_version(&path, 2).expect("v2");
    {
        let c = Connection::open(&path).expect("sqlite");
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             INSERT INTO tasks (agent, trigger_kind, trigger_payload, state, created_at, dedupe_key)
                 VALUES ('a', 'message', '{}', 'queued', 1, 'k');
             INSERT INTO steps (task_id, seq, attempt, kind, payload, input_tokens, output_tokens, created_at)
                 VALUES (1, 1, 1, 'llm', '{\"model\": \"gpt-4o\", \"cached_tokens\": 5}', 10, 2, 2);
             INSERT INTO snapshots (agent, kind, task_id, data, created_at) VALUES ('a', 'conversation', 1, x'5b5d', 3);",
        )
        .expect("v2 rows");
        // Control: v2 refuses the state a waiting task needs.
        let refused = c.execute("UPDATE tasks SET state = 'waiting' WHERE id = 1", []);
        assert!(refused.is_err(), "v2's CHECK allows waiting?");
    }
    let mut l = Ledger::open(&path).expect("migrates");
    let t = l.task(agentd::domain::TaskId(1)).expect("task kept");
    assert_eq!((t.state, t.dedupe_key.as_deref()), (TaskState::Queued, Some("k")));
    assert_eq!(l.steps(agentd::domain::TaskId(1)).expect("steps").len(), 1);
    // The old model call counts for budgets: its model and cached tokens
    // were copied out of its payload.
    let spent = l.llm_usage(Some("a"), 0).expect("usage");
    assert_eq!(spent.len(), 1);
    assert_eq!(
        (spent[0].model.as_deref(), spent[0].cached_tokens, spent[0].input_tokens),
        (Some("gpt-4o"), 5, 10)
    );
    assert!(
        l.latest_snapshot("a", ledger::SnapshotKind::Conversation)
            .expect("read")
            .is_some()
    );
    l.set_pause(&ledger::Pause {
        agent: "a".into(),
        reason: agentd::domain::PauseReason::Budget,
        by: "budget".into(),
        note: None,
        since: 5,
    })
    .expect("pauses table");
    assert_eq!(
        l.pauses().expect("pauses")[0].reason,
        agentd::domain::PauseReason::Budget
    );
    drop(l);
    let c = Connection::open(&path).expect("sqlite");
    c.execute("UPDATE tasks SET state = 'waiting' WHERE id = 1", [])
        .expect("v3 allows waiting");
    let fk: i64 = c
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
        .expect("fk check");
    assert_eq!(fk, 0, "steps and snapshots still refer to their task");
    let indexes: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('tasks_by_agent_state', 'tasks_queued_dedupe')",
            [],
            |r| r.get(0),
        )
        .expect("indexes");
    assert_eq!(indexes, 2, "the rebuilt table has its indexes back");
}

#[test]
fn foreign_sqlite_file_is_refused_untouched() {
    let dir = tempdir();
    let path = dir.path().join("other.sqlite");
    {
        let c = Connection::open(&path).expect("sqlite");
        c.execute_batch("CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup');")
            .expect("create");
    }
    let before = std::fs::read(&path).expect("read");
    let err = Ledger::open(&path).err().expect("refused");
    assert!(matches!(err, LedgerError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("not an agentd ledger"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), before, "file must not change");
    assert!(!dir.path().join("other.sqlite-wal").exists());
}

#[test]
fn non_database_file_is_refused_untouched() {
    let dir = tempdir();
    let path = dir.path().join("ledger.sqlite");
    let junk = b"this is a text file, not a database, and it is long enough to have a header".repeat(20);
    std::fs::write(&path, &junk).expect("write");
    let err = Ledger::open(&path).err().expect("refused");
    assert!(err.to_string().contains("not an agentd ledger"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), junk);
}

#[test]
fn newer_ledger_is_refused_untouched() {
    let dir = tempdir();
    let path = dir.path().join("ledger.sqlite");
    drop(Ledger::open(&path).expect("create"));
    {
        let c = Connection::open(&path).expect("sqlite");
        c.execute_batch(&format!("PRAGMA user_version = {}", ledger::SCHEMA_VERSION + 1))
            .expect("bump");
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").expect("checkpoint");
    }
    let before = std::fs::read(&path).expect("read");
    let err = Ledger::open(&path).err().expect("refused");
    assert!(matches!(err, LedgerError::TooNew { .. }), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn queued_updates_for_one_uri_coalesce_until_claimed() {
    let dir = tempdir();
    let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
    let first = l
        .enqueue("a", &resource("file:///x", "v1"), Some("file:///x"))
        .expect("enqueue");
    let second = l
        .enqueue("a", &resource("file:///x", "v2"), Some("file:///x"))
        .expect("enqueue");
    assert!(matches!(first, Enqueued::New(_)));
    assert_eq!(second, Enqueued::Coalesced(first.id()));
    // Other agents and other URIs do not coalesce.
    assert!(matches!(
        l.enqueue("b", &resource("file:///x", "v"), Some("file:///x"))
            .expect("e"),
        Enqueued::New(_)
    ));
    assert!(matches!(
        l.enqueue("a", &resource("file:///y", "v"), Some("file:///y"))
            .expect("e"),
        Enqueued::New(_)
    ));

    let t = l.claim_next("a", &lease(1)).expect("claim").expect("a task");
    assert_eq!(t.id, first.id());
    assert_eq!(
        t.trigger(),
        Some(resource("file:///x", "v2")),
        "the freshest contents win"
    );
    // While it runs, a new update queues a new task instead of vanishing.
    let third = l
        .enqueue("a", &resource("file:///x", "v3"), Some("file:///x"))
        .expect("enqueue");
    assert!(matches!(third, Enqueued::New(_)));
}

#[test]
fn an_agent_runs_one_task_at_a_time() {
    let dir = tempdir();
    let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
    l.enqueue("a", &msg("one"), None).expect("e");
    l.enqueue("a", &msg("two"), None).expect("e");
    let t1 = l.claim_next("a", &lease(1)).expect("claim").expect("task");
    assert!(l.claim_next("a", &lease(2)).expect("claim").is_none());
    l.finish(t1.id, &lease(1), TaskState::Succeeded, Some("done"), None)
        .expect("finish");
    let t2 = l.claim_next("a", &lease(2)).expect("claim").expect("task");
    assert_eq!(t2.trigger(), Some(msg("two")));
}

#[test]
fn a_stale_lease_cannot_write() {
    let dir = tempdir();
    let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
    l.enqueue("a", &msg("hi"), None).expect("e");
    let t = l.claim_next("a", &lease(1)).expect("claim").expect("task");
    assert_eq!(
        l.release(t.id, "agent process killed by signal 9", 3).expect("release"),
        TaskState::Queued
    );
    let again = l.claim_next("a", &lease(2)).expect("claim").expect("task");
    assert_eq!(again.attempts, 2);
    let step = NewStep {
        kind: agentd::domain::StepKind::parse("note"),
        payload: serde_json::json!("x"),
        input_tokens: 0,
        output_tokens: 0,
        latency_ms: None,
    };
    assert!(matches!(
        l.append_step(t.id, &lease(1), &step),
        Err(LedgerError::StaleLease { .. })
    ));
    assert!(matches!(
        l.finish(t.id, &lease(1), TaskState::Succeeded, None, None),
        Err(LedgerError::StaleLease { .. })
    ));
    assert_eq!(l.append_step(t.id, &lease(2), &step).expect("current lease writes"), 1);
}

#[test]
fn release_fails_the_task_after_max_attempts() {
    let dir = tempdir();
    let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
    l.enqueue("a", &msg("hi"), None).expect("e");
    for attempt in 1..=2 {
        let t = l.claim_next("a", &lease(attempt)).expect("claim").expect("task");
        let state = l.release(t.id, "agent process killed by signal 9", 2).expect("release");
        let expected = if attempt < 2 {
            TaskState::Queued
        } else {
            TaskState::Failed
        };
        assert_eq!(state, expected);
    }
    let t = l.list_tasks(&TaskFilter::default()).expect("list").remove(0);
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(
        t.error.as_deref(),
        Some("agent process killed by signal 9 (attempt 2 of 2; giving up)")
    );
}

/// Builds a ledger with a finished task and steps, and reads it back through the CLI.
#[test]
fn tasks_and_show_print_the_ledger() {
    let dir = tempdir();
    let state = dir.path().join("state");
    {
        let mut l = Ledger::open(&state.join(ledger::FILE_NAME)).expect("open");
        let id = l
            .enqueue(
                "news",
                &resource("file:///inbox/a.md", "hello"),
                Some("file:///inbox/a.md"),
            )
            .expect("e")
            .id();
        l.enqueue("other", &msg("queued one"), None).expect("e");
        l.claim_next("news", &lease(1)).expect("claim");
        let step = NewStep {
            kind: agentd::domain::StepKind::Llm,
            payload: serde_json::json!({"reply": "I will read it"}),
            input_tokens: 120,
            output_tokens: 30,
            latency_ms: Some(42),
        };
        l.append_step(id, &lease(1), &step).expect("step");
        l.finish(id, &lease(1), TaskState::Succeeded, Some("Summarized a.md"), None)
            .expect("finish");
    }
    let sd = state.to_str().unwrap_or_default();
    let out = agentd(&["tasks", "--state-dir", sd]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(s.lines().next().unwrap_or("").contains("AGENT"), "{s}");
    assert!(
        s.contains("news") && s.contains("succeeded") && s.contains("resource file:///inbox/a.md"),
        "{s}"
    );
    assert!(s.contains("other") && s.contains("queued"), "{s}");

    let out = agentd(&[
        "tasks",
        "--state-dir",
        sd,
        "--agent",
        "news",
        "--state",
        "succeeded",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["input_tokens"], 120);

    let out = agentd(&["show", "--state-dir", sd, "1"]);
    let s = stdout(&out);
    assert!(s.contains("task 1 (news)"), "{s}");
    assert!(s.contains("state:    succeeded (attempt 1)"), "{s}");
    assert!(s.contains("step 1 [llm] attempt 1, 42 ms, 120+30 tokens"), "{s}");
    assert!(s.contains("I will read it"), "{s}");
    assert!(s.contains("result:   Summarized a.md"), "{s}");

    let out = agentd(&["show", "--state-dir", sd, "--json", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["steps"][0]["payload"]["reply"], "I will read it");

    let out = agentd(&["show", "--state-dir", sd, "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("task 99 does not exist"), "{}", stderr(&out));
    let out = agentd(&["tasks", "--state-dir", sd, "--state", "done"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn readers_say_when_there_is_no_ledger_yet() {
    let dir = tempdir();
    let out = agentd(&["tasks", "--state-dir", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no ledger here"), "{}", stderr(&out));
}

#[test]
fn every_task_listing_walks_an_index_newest_first_without_sorting() {
    let dir = tempdir();
    let path = dir.path().join(ledger::FILE_NAME);
    let l = Ledger::open(&path).expect("open");
    let agent = Some("news".to_string());
    let state = Some(TaskState::Failed);
    for (agent, state, before, index) in [
        (None, None, None, None),
        (None, None, Some(500), None),
        (agent.clone(), None, None, Some("tasks_by_agent ")),
        (agent.clone(), None, Some(500), Some("tasks_by_agent ")),
        (None, state, None, Some("tasks_by_state")),
        (agent.clone(), state, Some(500), Some("tasks_by_agent_state")),
    ] {
        let filter = TaskFilter {
            agent,
            state,
            limit: Some(50),
            before,
        };
        let plan = l.list_tasks_plan(&filter).expect("plan").join("\n");
        // A sort would mean reading every matching row before the first page.
        assert!(!plan.contains("TEMP B-TREE"), "{filter:?}: {plan}");
        match index {
            Some(i) => assert!(plan.contains(&format!("USING INDEX {i}")), "{filter:?}: {plan}"),
            None => assert!(
                plan.contains("SCAN tasks") || plan.contains("SEARCH tasks USING INTEGER PRIMARY KEY"),
                "{filter:?}: {plan}"
            ),
        }
    }
}

#[test]
fn egress_grants_answer_later_asks_until_revoked_and_only_egress_asks_are_remembered() {
    use agentd::domain::{ApprovalAnswer, ApprovalSubject, Remember};
    use ledger::Asked;
    let dir = tempdir();
    let mut l = Ledger::open(&dir.path().join("ledger.sqlite")).expect("open");
    let egress = ApprovalSubject::Egress {
        host: "pypi.org".into(),
        port: 443,
    };
    let tool = ApprovalSubject::Tool {
        name: "write_file".into(),
        arguments: serde_json::json!({}),
    };
    let answer = |remember| ApprovalAnswer {
        approved: true,
        by: "test".into(),
        note: None,
        remember,
    };
    let run = |l: &mut Ledger, n: u64| {
        l.enqueue("a", &msg(&format!("t{n}")), None).expect("enqueue");
        l.claim_next("a", &lease(n)).expect("claim").expect("task").id
    };
    let finish = |l: &mut Ledger, t, n| {
        l.finish(t, &lease(n), TaskState::Succeeded, Some("ok"), None)
            .expect("finish");
    };

    // A tool call's answer cannot be remembered.
    let t1 = run(&mut l, 1);
    let Asked::Pending(a) = l.ask_approval(t1, &lease(1), &tool, 60_000, "deny").unwrap() else {
        panic!("pending")
    };
    assert!(matches!(
        l.answer_approval(a.id, &answer(Remember::Always), Some(&lease(1))),
        Err(LedgerError::NotRememberable(_))
    ));
    l.answer_approval(a.id, &answer(Remember::Once), Some(&lease(1)))
        .unwrap();

    // Control: an egress answer given once is not a grant; the next ask waits.
    let Asked::Pending(e1) = l.ask_approval(t1, &lease(1), &egress, 60_000, "deny").unwrap() else {
        panic!("pending")
    };
    l.answer_approval(e1.id, &answer(Remember::Once), Some(&lease(1)))
        .unwrap();
    let Asked::Pending(again) = l.ask_approval(t1, &lease(1), &egress, 60_000, "deny").unwrap() else {
        panic!("a once answer answered again")
    };
    l.answer_approval(again.id, &answer(Remember::Once), Some(&lease(1)))
        .unwrap();
    assert!(l.grants(None).unwrap().is_empty());
    assert!(matches!(l.revoke_grant(e1.id, "test"), Err(LedgerError::NotAGrant(_))));
    finish(&mut l, t1, 1);

    // Always: a later task of the agent is answered by the ledger.
    let t2 = run(&mut l, 2);
    let Asked::Pending(e2) = l.ask_approval(t2, &lease(2), &egress, 60_000, "deny").unwrap() else {
        panic!("pending")
    };
    l.answer_approval(e2.id, &answer(Remember::Always), Some(&lease(2)))
        .unwrap();
    finish(&mut l, t2, 2);
    let t3 = run(&mut l, 3);
    match l.ask_approval(t3, &lease(3), &egress, 60_000, "deny").unwrap() {
        Asked::Answered(g, a) => assert!(g.id == e2.id && a.approved && a.remember == Remember::Always),
        other => panic!("not answered by the grant: {other:?}"),
    }
    assert_eq!(l.grants(Some("a")).unwrap().len(), 1);
    // Revoked: asked again.
    l.revoke_grant(e2.id, "test").unwrap();
    assert!(l.grants(None).unwrap().is_empty());
    assert!(matches!(
        l.ask_approval(t3, &lease(3), &egress, 60_000, "deny").unwrap(),
        Asked::Pending(_)
    ));
}
