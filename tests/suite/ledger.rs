//! The ledger: migrations, refusal of foreign files, task lifecycle, and
//! the `tasks`/`show` readers.

use agentd::ledger::{self, Enqueued, Ledger, LedgerError, TaskFilter};

use agentd::domain::{Lease, NewStep, TaskState, Trigger};
use rusqlite::Connection;

use crate::support::{agentd, agentd_cmd, stderr, stdout, tempdir};

/// One ledger under test, on either backend, and how the CLI readers reach
/// it: `--state-dir` for SQLite, `AGENTD_LEDGER` for PostgreSQL.
struct Target {
    state: tempfile::TempDir,
    url: Option<String>,
    _db: Option<crate::support::postgres::TestDb>,
}

impl Target {
    fn sqlite() -> (Ledger, Target) {
        let state = tempdir();
        let l = Ledger::open(&state.path().join(ledger::FILE_NAME)).expect("open");
        (
            l,
            Target {
                state,
                url: None,
                _db: None,
            },
        )
    }

    fn postgres() -> (Ledger, Target) {
        let db = crate::support::postgres::TestDb::new();
        let l = Ledger::open_at(&db.location()).expect("open");
        let t = Target {
            state: tempdir(),
            url: Some(db.url.clone()),
            _db: Some(db),
        };
        (l, t)
    }

    /// Runs `agentd ARGS` reading this ledger.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut c = agentd_cmd(args);
        c.arg("--state-dir").arg(self.state.path());
        match &self.url {
            Some(u) => c.env(ledger::URL_ENV, u),
            None => c.env_remove(ledger::URL_ENV),
        };
        c.output().expect("run agentd")
    }
}

/// The same test on a SQLite file and on a PostgreSQL database.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[test] fn $name() { let (mut l, t) = super::Target::sqlite(); super::$name(&mut l, &t); } )*
        }
        mod on_postgres {
            $( #[test] fn $name() { let (mut l, t) = super::Target::postgres(); super::$name(&mut l, &t); } )*
        }
    };
}

on_both_backends!(
    queued_updates_for_one_uri_coalesce_until_claimed,
    an_agent_runs_one_task_at_a_time,
    a_stale_lease_cannot_write,
    release_fails_the_task_after_max_attempts,
    tasks_and_show_print_the_ledger,
    pauses_cancels_and_spend_are_kept,
    approvals_are_asked_answered_and_reused,
    snapshots_and_deliveries_are_kept,
    many_agents_read_in_one_query_match_one_at_a_time,
    egress_grants_answer_later_asks_until_revoked_and_only_egress_asks_are_remembered,
);

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

fn queued_updates_for_one_uri_coalesce_until_claimed(l: &mut Ledger, _: &Target) {
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

fn an_agent_runs_one_task_at_a_time(l: &mut Ledger, _: &Target) {
    l.enqueue("a", &msg("one"), None).expect("e");
    l.enqueue("a", &msg("two"), None).expect("e");
    let t1 = l.claim_next("a", &lease(1)).expect("claim").expect("task");
    assert!(l.claim_next("a", &lease(2)).expect("claim").is_none());
    l.finish(t1.id, &lease(1), TaskState::Succeeded, Some("done"), None)
        .expect("finish");
    let t2 = l.claim_next("a", &lease(2)).expect("claim").expect("task");
    assert_eq!(t2.trigger(), Some(msg("two")));
}

fn a_stale_lease_cannot_write(l: &mut Ledger, _: &Target) {
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

fn release_fails_the_task_after_max_attempts(l: &mut Ledger, _: &Target) {
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
fn tasks_and_show_print_the_ledger(l: &mut Ledger, t: &Target) {
    {
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
    let out = t.cli(&["tasks"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(s.lines().next().unwrap_or("").contains("AGENT"), "{s}");
    assert!(
        s.contains("news") && s.contains("succeeded") && s.contains("resource file:///inbox/a.md"),
        "{s}"
    );
    assert!(s.contains("other") && s.contains("queued"), "{s}");

    let out = t.cli(&["tasks", "--agent", "news", "--state", "succeeded", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["input_tokens"], 120);

    let out = t.cli(&["show", "1"]);
    let s = stdout(&out);
    assert!(s.contains("task 1 (news)"), "{s}");
    assert!(s.contains("state:    succeeded (attempt 1)"), "{s}");
    assert!(s.contains("step 1 [llm] attempt 1, 42 ms, 120+30 tokens"), "{s}");
    assert!(s.contains("I will read it"), "{s}");
    assert!(s.contains("result:   Summarized a.md"), "{s}");

    let out = t.cli(&["show", "--json", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["steps"][0]["payload"]["reply"], "I will read it");

    let out = t.cli(&["show", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("task 99 does not exist"), "{}", stderr(&out));
    let out = t.cli(&["tasks", "--state", "done"]);
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

fn pauses_cancels_and_spend_are_kept(l: &mut Ledger, _: &Target) {
    use agentd::ledger::Pause;
    let pause = Pause {
        agent: "a".into(),
        reason: agentd::domain::PauseReason::parse("operator"),
        by: "uid 0".into(),
        note: Some("lunch".into()),
        since: 1_000,
    };
    l.set_pause(&pause).expect("pause");
    l.set_pause(&Pause {
        note: None,
        ..pause.clone()
    })
    .expect("pause again replaces");
    assert_eq!(l.pauses().expect("pauses"), vec![Pause { note: None, ..pause }]);
    l.clear_pause("a").expect("clear");
    assert!(l.pauses().expect("pauses").is_empty());

    let queued = l.enqueue("a", &msg("one"), None).expect("e").id();
    let c = l.cancel(queued, "uid 0", Some("not needed")).expect("cancel");
    assert_eq!(c.was, TaskState::Queued);
    assert!(matches!(
        l.cancel(queued, "uid 0", None),
        Err(LedgerError::AlreadyEnded { .. })
    ));
    let t = l.task(queued).expect("task");
    assert_eq!(t.state, TaskState::Cancelled);
    assert_eq!(t.error.as_deref(), Some("cancelled by uid 0: not needed"));
    assert_eq!(l.steps(queued).expect("steps")[0].kind.as_str(), "cancel");

    l.enqueue("a", &msg("two"), None).expect("e");
    let run = l.claim_next("a", &lease(1)).expect("claim").expect("task");
    for (model, tokens) in [("m1", 100), ("m1", 50), ("m2", 7)] {
        let step = NewStep {
            kind: agentd::domain::StepKind::Llm,
            payload: serde_json::json!({"model": model, "cached_tokens": 3}),
            input_tokens: tokens,
            output_tokens: 1,
            latency_ms: Some(5),
        };
        l.append_step(run.id, &lease(1), &step).expect("step");
    }
    let by_model = l.llm_usage_by_model(Some("a"), 0).expect("usage");
    assert_eq!(by_model.len(), 2, "{by_model:?}");
    assert_eq!(
        (
            by_model[0].model.as_deref(),
            by_model[0].calls,
            by_model[0].input_tokens,
            by_model[0].cached_tokens
        ),
        (Some("m1"), 2, 150, 6)
    );
    assert_eq!(l.llm_usage(None, 0).expect("usage").len(), 3);
    assert!(l.llm_usage(Some("b"), 0).expect("usage").is_empty());
    assert_eq!(l.task(run.id).expect("task").input_tokens, 157);
}

fn approvals_are_asked_answered_and_reused(l: &mut Ledger, _: &Target) {
    use agentd::domain::{ApprovalAnswer, ApprovalSubject};
    use agentd::ledger::Asked;
    l.enqueue("a", &msg("rm"), None).expect("e");
    let t = l.claim_next("a", &lease(1)).expect("claim").expect("task");
    let subject = ApprovalSubject::Code {
        block: "bash".into(),
        code: "rm -rf x".into(),
    };
    let Asked::Pending(asked) = l.ask_approval(t.id, &lease(1), &subject, 60_000, "deny").expect("ask") else {
        panic!("a first question is pending");
    };
    assert_eq!(l.task(t.id).expect("task").state, TaskState::Waiting);
    assert_eq!(l.pending_approvals(None).expect("pending").len(), 1);
    assert_eq!(l.pending_approvals(Some("b")).expect("pending").len(), 0);
    // The runner died while it waited: the answer re-queues the task and is
    // kept for its next run.
    assert_eq!(l.release(t.id, "gone", 3).expect("release"), TaskState::Waiting);
    let answer = ApprovalAnswer {
        approved: true,
        by: "uid 0".into(),
        note: None,
        remember: agentd::domain::Remember::Once,
    };
    let answered = l.answer_approval(asked.id, &answer, None).expect("answer");
    assert_eq!(answered.state, "approved");
    assert!(matches!(
        l.answer_approval(asked.id, &answer, None),
        Err(LedgerError::ApprovalAnswered { .. })
    ));
    assert_eq!(l.task(t.id).expect("task").state, TaskState::Queued);
    let again = l.claim_next("a", &lease(2)).expect("claim").expect("task");
    match l
        .ask_approval(again.id, &lease(2), &subject, 60_000, "deny")
        .expect("ask")
    {
        Asked::Answered(_, a) => assert!(a.approved),
        other => panic!("the kept answer applies: {other:?}"),
    }
}

fn snapshots_and_deliveries_are_kept(l: &mut Ledger, _: &Target) {
    use agentd::ledger::SnapshotKind;
    let bytes: Vec<u8> = (0..=255u8).collect();
    let id = l
        .put_snapshot("a", SnapshotKind::Workspace, Some("before"), None, &bytes)
        .expect("put");
    l.put_snapshot("a", SnapshotKind::Conversation, None, None, b"[]")
        .expect("put");
    let s = l.snapshot("a", "before").expect("by label");
    assert_eq!((s.meta.id, s.meta.size, &s.data), (id, 256, &bytes));
    assert_eq!(l.snapshot("a", &id.to_string()).expect("by id").data, bytes);
    assert_eq!(l.list_snapshots("a", None).expect("list").len(), 2);
    assert_eq!(
        l.list_snapshots("a", Some(SnapshotKind::Workspace))
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        l.latest_snapshot("a", SnapshotKind::Conversation)
            .expect("latest")
            .map(|s| s.data),
        Some(b"[]".to_vec())
    );
    assert!(matches!(l.snapshot("b", "before"), Err(LedgerError::NoSuchSnapshot(_))));

    let first = l.enqueue_delivery("a", "delivery-1", &msg("hook")).expect("deliver");
    let again = l.enqueue_delivery("a", "delivery-1", &msg("hook")).expect("deliver");
    assert!(matches!(first, Enqueued::New(_)));
    assert_eq!(again, Enqueued::Coalesced(first.id()));
}

/// The batched reads a large start and a status use (the newest
/// conversation of each agent, every agent's queue depth) answer what one
/// query per agent answers.
fn many_agents_read_in_one_query_match_one_at_a_time(l: &mut Ledger, _: &Target) {
    use agentd::ledger::SnapshotKind;
    for (agent, data) in [("a", "[1]"), ("b", "[2]"), ("a", "[3]"), ("c", "[4]")] {
        l.put_snapshot(agent, SnapshotKind::Conversation, None, None, data.as_bytes())
            .expect("put");
    }
    // A newer snapshot of another kind is not a conversation.
    l.put_snapshot("b", SnapshotKind::Workspace, Some("w"), None, b"tar")
        .expect("put");
    let mut got: Vec<(String, Vec<u8>)> = l
        .latest_snapshots(&["a", "b", "d"], SnapshotKind::Conversation)
        .expect("batch")
        .into_iter()
        .map(|s| (s.meta.agent, s.data))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("a".to_owned(), b"[3]".to_vec()), ("b".to_owned(), b"[2]".to_vec())]
    );
    for agent in ["a", "b", "c", "d"] {
        let one = l.latest_snapshot(agent, SnapshotKind::Conversation).expect("one");
        let batch = l.latest_snapshots(&[agent], SnapshotKind::Conversation).expect("batch");
        assert_eq!(one.map(|s| s.data), batch.into_iter().next().map(|s| s.data), "{agent}");
    }
    assert!(
        l.latest_snapshots(&[], SnapshotKind::Conversation)
            .expect("none")
            .is_empty()
    );

    for (agent, text) in [("a", "1"), ("a", "2"), ("b", "3")] {
        l.enqueue(agent, &msg(text), None).expect("enqueue");
    }
    // A claimed task is running, not queued.
    l.claim_next("a", &lease(1)).expect("claim").expect("a task");
    let counts = l.queued_counts().expect("counts");
    for agent in ["a", "b", "c"] {
        assert_eq!(
            counts.get(agent).copied().unwrap_or(0),
            l.queued_count(agent).expect("count"),
            "{agent}"
        );
    }
    assert_eq!(
        (counts.get("a"), counts.get("b"), counts.get("c")),
        (Some(&1), Some(&1), None)
    );
}

#[test]
fn a_postgres_database_that_is_not_a_ledger_is_refused_untouched() {
    let db = crate::support::postgres::TestDb::new();
    db.psql("CREATE TABLE invoices (id int)");
    let err = Ledger::open_at(&db.location()).err().expect("refused");
    assert!(matches!(err, LedgerError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("no agentd_meta"), "{err}");
}

#[test]
fn members_starting_together_migrate_a_postgres_ledger_once() {
    let db = crate::support::postgres::TestDb::new();
    let opened: Vec<_> = (0..3)
        .map(|_| {
            let loc = db.location();
            std::thread::spawn(move || Ledger::open_at(&loc).map(drop))
        })
        .collect();
    for h in opened {
        h.join().expect("join").expect("every member opens the ledger");
    }
    assert_eq!(
        db.psql("SELECT value FROM agentd_meta WHERE key = 'schema_version'")
            .trim(),
        "1"
    );
}

/// Two members record the same schedule occurrence after the first run of
/// it was claimed. Control: a ledger without the fleet's firing record (one
/// SQLite host) makes a second task; the shared ledger finds the first.
#[test]
fn a_schedule_occurrence_is_recorded_once_across_members() {
    let occurrence = Trigger::Schedule {
        cron: "* * * * *".into(),
        prompt: "tick".into(),
        scheduled_for: "2026-12-01T10:00:00+00:00".into(),
    };
    let key = Some("schedule:* * * * *\ntick");
    let dir = tempdir();
    let mut one = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
    let first = one.enqueue("a", &occurrence, key).expect("e").id();
    one.claim_next("a", &lease(1)).expect("claim").expect("task");
    assert!(
        matches!(one.enqueue("a", &occurrence, key).expect("e"), Enqueued::New(id) if id != first),
        "control: without the firing record the occurrence runs twice"
    );

    let db = crate::support::postgres::TestDb::new();
    let mut alpha = Ledger::open_at(&db.location()).expect("open");
    let mut beta = Ledger::open_at(&db.location()).expect("open");
    alpha.join_fleet("alpha", &[]).expect("join");
    beta.join_fleet("beta", &[]).expect("join");
    let epoch = alpha.acquire_agent("a", 60_000, 3).expect("acquire").expect("free");
    assert_eq!(epoch.epoch, 1);
    let first = alpha.enqueue("a", &occurrence, key).expect("e");
    assert!(matches!(first, Enqueued::New(_)));
    alpha.claim_next("a", &lease(1)).expect("claim").expect("task");
    assert_eq!(
        beta.enqueue("a", &occurrence, key).expect("e"),
        Enqueued::Coalesced(first.id())
    );
    let next = Trigger::Schedule {
        cron: "* * * * *".into(),
        prompt: "tick".into(),
        scheduled_for: "2026-12-01T10:01:00+00:00".into(),
    };
    assert!(matches!(beta.enqueue("a", &next, key).expect("e"), Enqueued::New(_)));
}

/// The fence: a member writes an agent's task only while it holds the
/// agent's lease at the epoch it took. Control: the holder's writes land;
/// after another member took the lease over (the first one's expired), the
/// first one's claim, step, end and re-queue are all refused.
#[test]
fn a_member_whose_lease_was_taken_over_cannot_write() {
    let db = crate::support::postgres::TestDb::new();
    let mut alpha = Ledger::open_at(&db.location()).expect("open");
    let mut beta = Ledger::open_at(&db.location()).expect("open");
    alpha.join_fleet("alpha", &[]).expect("join");
    beta.join_fleet("beta", &[]).expect("join");
    // A short lease, so beta may take it over once it runs out.
    assert!(alpha.acquire_agent("a", 300, 3).expect("acquire").is_some());
    assert!(
        beta.acquire_agent("a", 300, 3).expect("acquire").is_none(),
        "a live lease is not taken"
    );
    alpha.enqueue("a", &msg("one"), None).expect("e");
    let t = alpha.claim_next("a", &lease(1)).expect("claim").expect("task");
    let step = NewStep {
        kind: agentd::domain::StepKind::parse("note"),
        payload: serde_json::json!("by alpha"),
        input_tokens: 0,
        output_tokens: 0,
        latency_ms: None,
    };
    assert_eq!(alpha.append_step(t.id, &lease(1), &step).expect("the holder writes"), 1);

    let taken = crate::support::wait_for(std::time::Duration::from_secs(30), || {
        beta.acquire_agent("a", 60_000, 3).expect("acquire")
    })
    .expect("beta takes the expired lease");
    assert_eq!((taken.epoch, taken.previous.as_deref()), (2, Some("alpha")));
    assert_eq!(taken.requeued, vec![(t.id, TaskState::Queued)]);
    let requeued = beta.task(t.id).expect("task");
    assert_eq!(
        requeued.error.as_deref(),
        Some("host alpha lost (attempt 1 of 3; re-queued)")
    );

    // alpha wakes up with the same lease string its child still holds.
    for refused in [
        alpha.append_step(t.id, &lease(1), &step).map(drop),
        alpha.finish(t.id, &lease(1), TaskState::Succeeded, Some("stale"), None),
        alpha.release(t.id, "stale", 3).map(drop),
        alpha.claim_next("a", &lease(1)).map(drop),
    ] {
        assert!(
            matches!(&refused, Err(LedgerError::StaleEpoch { host, epoch: 1, .. }) if host == "alpha"),
            "{refused:?}"
        );
    }
    assert!(matches!(
        alpha.put_snapshot("a", agentd::ledger::SnapshotKind::Conversation, None, Some(t.id), b"[]"),
        Err(LedgerError::StaleEpoch { .. })
    ));
    beta.put_snapshot("a", agentd::ledger::SnapshotKind::Conversation, None, Some(t.id), b"[]")
        .expect("the holder saves the agent's memory");
    assert_eq!(alpha.heartbeat(60_000, None).expect("heartbeat"), vec!["a".to_string()]);
    let again = beta.claim_next("a", &lease(2)).expect("claim").expect("task");
    assert_eq!(again.attempts, 2);
    assert_eq!(beta.steps(t.id).expect("steps").len(), 1);
}

fn egress_grants_answer_later_asks_until_revoked_and_only_egress_asks_are_remembered(l: &mut Ledger, _: &Target) {
    use agentd::domain::{ApprovalAnswer, ApprovalSubject, Remember};
    use ledger::Asked;
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
    let t1 = run(l, 1);
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
    finish(l, t1, 1);

    // Always: a later task of the agent is answered by the ledger.
    let t2 = run(l, 2);
    let Asked::Pending(e2) = l.ask_approval(t2, &lease(2), &egress, 60_000, "deny").unwrap() else {
        panic!("pending")
    };
    l.answer_approval(e2.id, &answer(Remember::Always), Some(&lease(2)))
        .unwrap();
    finish(l, t2, 2);
    let t3 = run(l, 3);
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
