//! Governance figures: what a budget check costs after each model call
//! (the window's `llm` steps read back from the ledger, summed and priced,
//! and the moment the window has room computed), for windows holding 1k,
//! 10k and 100k model calls, and for 1k calls in the window among 100k
//! older ones; and an approval's ledger round trip (ask, then answer).
//! Prints a table; asserts nothing.
//!
//! Run: `cargo bench --bench governance`
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::time::{Duration, Instant};

use agentd::budget::{self, BudgetSpec, OnExceed, Prices};
use agentd::domain::{ApprovalAnswer, ApprovalSubject, Lease, NewStep, StepKind, TaskId, Trigger};
use agentd::ledger::{self, Ledger};

fn lease() -> Lease {
    Lease {
        agent: "a".into(),
        pid: 1,
        generation: 1,
    }
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A ledger with one agent's task holding `calls` llm steps; the first
/// `old` of them are moved two days back.
fn ledger_with(dir: &std::path::Path, calls: usize, old: usize) -> Ledger {
    let path = dir.join(format!("ledger-{calls}-{old}.sqlite"));
    let mut l = Ledger::open(&path).expect("ledger");
    let trigger = Trigger::Message {
        text: "hi".into(),
        from: "bench".into(),
    };
    l.enqueue("a", &trigger, None).expect("enqueue");
    let task = l.claim_next("a", &lease()).expect("claim").expect("task");
    let step = NewStep {
        kind: StepKind::Llm,
        // A reply of 4 KiB, as journaled (up to 16 KiB are kept).
        payload: serde_json::json!({"model": "gpt-4o-mini", "cached_tokens": 100, "reply": {"content": "x".repeat(4096)}}),
        input_tokens: 1200,
        output_tokens: 300,
        latency_ms: Some(900),
    };
    for _ in 0..calls {
        l.append_step(task.id, &lease(), &step).expect("step");
    }
    drop(l);
    let c = rusqlite::Connection::open(&path).expect("sqlite");
    c.execute(
        "UPDATE steps SET created_at = created_at - 172800000 WHERE seq <= ?1",
        [old as i64],
    )
    .expect("age");
    drop(c);
    Ledger::open(&path).expect("reopen")
}

fn budget_check(dir: &std::path::Path, calls: usize, old: usize) {
    let l = ledger_with(dir, calls, old);
    let b = BudgetSpec {
        tokens: Some(1_000_000),
        cost_usd: Some(5.0),
        per: Duration::from_secs(86_400),
        on_exceed: OnExceed::Finish,
    };
    let prices = Prices::default();
    let mut times = Vec::new();
    let mut in_window = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let usage = l
            .llm_usage_by_model(Some("a"), b.since(ledger::now_ms()))
            .expect("usage");
        let s = budget::spent(&usage, &prices);
        let _ = b.exceeded(&s);
        times.push(t.elapsed());
        in_window = s.calls;
    }
    // Only a used-up budget reads the calls one by one (to tell when the
    // window has room again).
    let mut room = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let usage = l.llm_usage(Some("a"), b.since(ledger::now_ms())).expect("usage");
        let _ = b.room_at(&usage, &prices);
        room.push(t.elapsed());
    }
    println!(
        "budget check  {:>7} calls in the window ({:>7} in the ledger)  p50 {:>8.3} ms; when used up, + {:>8.3} ms",
        in_window,
        calls,
        p50(times).as_secs_f64() * 1e3,
        p50(room).as_secs_f64() * 1e3
    );
}

fn approval_round_trip(dir: &std::path::Path) {
    let mut l = ledger_with(dir, 0, 0);
    let subject = ApprovalSubject::Tool {
        name: "write_file".into(),
        arguments: serde_json::json!({"path": "a", "content": "b"}),
    };
    let mut times = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let asked = l
            .ask_approval(TaskId(1), &lease(), &subject, 60_000, "deny")
            .expect("ask");
        let ledger::Asked::Pending(a) = asked else {
            panic!("pending")
        };
        let answer = ApprovalAnswer {
            approved: i % 2 == 0,
            by: "bench".into(),
            note: None,
            remember: Default::default(),
        };
        l.answer_approval(a.id, &answer, Some(&lease())).expect("answer");
        times.push(t.elapsed());
    }
    println!(
        "approval ask + answer (ledger, two transactions)              p50 {:>9.3} ms",
        p50(times).as_secs_f64() * 1e3
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    for calls in [1_000, 10_000, 100_000] {
        budget_check(dir.path(), calls, 0);
    }
    budget_check(dir.path(), 101_000, 100_000);
    approval_round_trip(dir.path());
}
