//! Metrics and traces against the real binary: tasks run through a real
//! agentd (mcp-watch, the scripted model server, the sandbox), then
//! `agentd metrics` is scraped and parsed by Prometheus' own Python parser;
//! the counters are checked against what the ledger's journal says happened.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentd::control::Request;
use agentd::domain::TaskState;
use agentd::ledger::Step;
use serde_json::Value;

use crate::support::daemon::{Daemon, steps, tasks};
use crate::support::inbox::{Extra, InboxAgent};
use crate::support::llm_server::{LlmServer, Reply, chunk, usage_chunk};
use crate::support::peers::{peers_dir, python_peer};
use crate::support::{agentd, stderr, stdout, tempdir, wait_for};

/// One parsed sample.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses OpenMetrics text with `prometheus_client`'s parser (in the
/// observability virtualenv tests/setup.sh installs).
pub(super) fn parse(text: &str) -> Vec<Sample> {
    let python = peers_dir().join("obs-venv/bin/python");
    assert!(python.is_file(), "{} is missing: run tests/setup.sh", python.display());
    let mut child = Command::new(python)
        .arg(peers_dir().join("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("parser output");
    assert!(out.status.success(), "the parser refused:\n{}\n{text}", stderr(&out));
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser JSON");
    v.into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap_or_default(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect()
}

fn scrape(d: &Daemon) -> (String, Vec<Sample>) {
    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["metrics", "--state-dir", &sd]);
    assert!(out.status.success(), "agentd metrics failed: {}", stderr(&out));
    let text = stdout(&out);
    let samples = parse(&text);
    (text, samples)
}

/// The value of `name` with these labels (others ignored); 0 when absent,
/// as Prometheus reads a series that was never incremented.
pub(super) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn all_steps(d: &Daemon) -> Vec<Step> {
    tasks(&d.state_dir)
        .iter()
        .flat_map(|t| steps(&d.state_dir, t.id))
        .collect()
}

#[test]
fn metrics_scraped_after_real_tasks_count_what_the_journal_shows() {
    let llm = LlmServer::start(vec![
        // Task 1 (a resource change): a retried request, a tool call, a
        // sandbox run, a final answer.
        Reply::rate_limited("0"),
        Reply::stream_tool_calls(&[("c1", "read_file", r#"{"path": "note.md"}"#)]),
        Reply::stream_text(&["Counting.\n```bash:execute\necho ran-in-sandbox\n```\n"]),
        Reply::stream_text(&["Done."]),
        // Task 2 (a message): a failing tool call, then an answer.
        Reply::stream_tool_calls(&[("c2", "read_file", r#"{"path": "missing.md"}"#)]),
        Reply::stream_text(&["No such note."]),
    ]);
    let s = InboxAgent::new(
        "watcher",
        &llm.base_url(),
        "sk-test",
        Extra {
            max_retries: 3,
            // One USD per million input tokens, two per million output:
            // the cost counter must equal input + 2 × output millionths.
            top: "prices:\n  test-model: {input: 1, output: 2}\n",
            ..Extra::default()
        },
    );
    let d = s.start_running();

    // Before any task: the agent runs, nothing has been counted.
    let (_, before) = scrape(&d);
    assert_eq!(value(&before, "agentd_agents", &[("state", "running")]), 1.0);
    assert_eq!(value(&before, "agentd_agents", &[("state", "failed")]), 0.0);
    assert_eq!(value(&before, "agentd_tasks_started_total", &[]), 0.0);
    assert_eq!(value(&before, "agentd_model_requests_total", &[]), 0.0);
    assert_eq!(
        value(&before, "agentd_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    std::fs::write(s.inbox.join("note.md"), "hello\n").expect("write note");
    wait_for(Duration::from_secs(30), || {
        tasks(&d.state_dir).iter().any(|t| t.state.is_final()).then_some(())
    })
    .unwrap_or_else(|| panic!("the resource task did not end; log:\n{}", d.log_text()));
    let r = d.request(&Request::Send {
        agent: "watcher".into(),
        text: "read missing.md".into(),
        wait: true,
    });
    assert!(r.ok, "{r:?}");

    let done = tasks(&d.state_dir);
    assert_eq!(done.len(), 2, "{done:#?}");
    assert!(done.iter().all(|t| t.state == TaskState::Succeeded), "{done:#?}");
    let (text, after) = scrape(&d);
    let journal = all_steps(&d);
    let of = |kind: &str| journal.iter().filter(|s| s.kind == kind).collect::<Vec<_>>();

    // Tasks, by trigger kind and end state.
    for trigger in ["resource", "message"] {
        let l = [("agent", "watcher"), ("trigger", trigger)];
        assert_eq!(value(&after, "agentd_tasks_started_total", &l), 1.0, "{text}");
        let ended = [("agent", "watcher"), ("trigger", trigger), ("state", "succeeded")];
        assert_eq!(value(&after, "agentd_tasks_ended_total", &ended), 1.0, "{text}");
        assert_eq!(value(&after, "agentd_task_duration_seconds_count", &l), 1.0, "{text}");
        assert!(value(&after, "agentd_task_duration_seconds_sum", &l) > 0.0, "{text}");
    }
    assert_eq!(value(&after, "agentd_queue_depth", &[("agent", "watcher")]), 0.0);
    assert_eq!(
        value(
            &after,
            "agentd_subscription_fires_total",
            &[("agent", "watcher"), ("server", "inbox")]
        ),
        1.0,
        "{text}"
    );

    // Model calls: as many as the journal's llm steps, with their retries
    // and tokens, labelled by the configured model.
    let model = [("agent", "watcher"), ("model", "test-model")];
    let llm_steps = of("llm");
    assert_eq!(llm_steps.len(), 5, "{journal:#?}");
    assert_eq!(
        value(&after, "agentd_model_requests_total", &model),
        llm_steps.len() as f64
    );
    assert_eq!(value(&after, "agentd_model_errors_total", &model), 0.0);
    let retries: usize = llm_steps
        .iter()
        .map(|s| s.payload["retries"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(retries, 1, "the 429 was retried");
    assert_eq!(value(&after, "agentd_model_retries_total", &model), retries as f64);
    let input: i64 = llm_steps.iter().map(|s| s.input_tokens).sum();
    let output: i64 = llm_steps.iter().map(|s| s.output_tokens).sum();
    assert!(input > 0 && output > 0, "{llm_steps:#?}");
    assert_eq!(value(&after, "agentd_model_input_tokens_total", &model), input as f64);
    assert_eq!(value(&after, "agentd_model_output_tokens_total", &model), output as f64);
    let cost = value(&after, "agentd_model_cost_usd_total", &model);
    let priced = (input + 2 * output) as f64 / 1_000_000.0;
    assert!((cost - priced).abs() < 1e-9, "cost {cost}, priced {priced}");
    assert_eq!(value(&after, "agentd_approvals_pending", &[("agent", "watcher")]), 0.0);
    assert_eq!(
        value(&after, "agentd_model_request_duration_seconds_count", &model),
        llm_steps.len() as f64
    );

    // Tool calls: two of read_file, one of them an error.
    let tool = [("agent", "watcher"), ("tool", "read_file")];
    let tool_steps = of("tool");
    assert_eq!(tool_steps.len(), 2, "{journal:#?}");
    let errors = tool_steps.iter().filter(|s| s.payload["is_error"] == true).count();
    assert_eq!(errors, 1, "{tool_steps:#?}");
    assert_eq!(value(&after, "agentd_tool_calls_total", &tool), 2.0, "{text}");
    assert_eq!(
        value(&after, "agentd_tool_errors_total", &tool),
        errors as f64,
        "{text}"
    );

    // The sandbox run, under the backend the journal names.
    let fences = of("fence");
    assert_eq!(fences.len(), 1, "{journal:#?}");
    let backend = fences[0].payload["backend"].as_str().unwrap_or_default().to_owned();
    assert!(!backend.is_empty(), "{:#?}", fences[0]);
    let b = [("backend", backend.as_str())];
    assert_eq!(value(&after, "agentd_sandbox_runs_total", &b), 1.0, "{text}");
    assert_eq!(value(&after, "agentd_sandbox_timeouts_total", &b), 0.0);
    assert_eq!(value(&after, "agentd_sandbox_run_duration_seconds_count", &b), 1.0);

    // Every ledger operation was timed (claims, steps, finishes at least).
    assert!(value(&after, "agentd_ledger_operation_duration_seconds_count", &[]) >= journal.len() as f64);

    // No label carries a task id or a URI.
    for s in &after {
        for (k, v) in &s.labels {
            assert!(!v.contains("://"), "a URI in label {k} of {}: {v}", s.name);
            assert!(k != "task" && k != "uri", "label {k} on {}", s.name);
        }
    }
}

#[test]
fn metrics_without_a_running_agentd_says_so() {
    let dir = tempdir();
    let sd = dir.path().join("state");
    std::fs::create_dir_all(&sd).expect("state dir");
    let out = agentd(&["metrics", "--state-dir", sd.to_str().unwrap_or_default()]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).is_empty(),
        "nothing on stdout for a scraper to mistake: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach agentd") && err.contains("is agentd running"),
        "{err}"
    );
}

/// The Python OTLP/HTTP receiver (tests/peers/otlp_receiver.py); spans
/// land in `spans.jsonl` in its directory.
struct Receiver {
    child: std::process::Child,
    port: u16,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(mode: &str) -> Receiver {
        let dir = tempdir();
        let file = dir.path().join("spans.jsonl");
        let python = peers_dir().join("obs-venv/bin/python");
        assert!(python.is_file(), "{} is missing: run tests/setup.sh", python.display());
        let mut child = Command::new(python)
            .arg(peers_dir().join("otlp_receiver.py"))
            .arg(&file)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the receiver");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("receiver port");
        let port = line.trim().parse().expect("a port");
        Receiver {
            child,
            port,
            file,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spans whose name is `op` or `op …` (GenAI names are "operation target").
fn named<'a>(spans: &'a [Value], op: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| {
            let n = s["name"].as_str().unwrap_or_default();
            n == op || n.strip_prefix(op).is_some_and(|rest| rest.starts_with(' '))
        })
        .collect()
}

#[test]
fn a_task_is_one_trace_across_supervisor_and_agent_with_genai_attributes() {
    let receiver = Receiver::start("answer");
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[
            ("c1", "read_file", r#"{"path": "note.md"}"#),
            ("c2", "trace_context", "{}"),
        ]),
        Reply::stream_text(&["Counting.\n```bash:execute\necho traced-secret-output\n```\n"]),
        Reply::stream_text(&["Done with the secret note."]),
    ]);
    // A Python SDK server that answers the `_meta.traceparent` it was sent.
    let echo = format!(
        "      - {{name: echo, command: \"{}\", args: [\"{}\"]}}",
        python_peer("python").display(),
        peers_dir().join("meta_echo.py").display()
    );
    let s = InboxAgent::new(
        "tracer",
        &llm.base_url(),
        "sk-test",
        Extra {
            server: &echo,
            ..Extra::default()
        },
    );
    std::fs::write(s.inbox.join("note.md"), "a private note\n").expect("write note");
    let endpoint = receiver.endpoint();
    let d = Daemon::start(
        &s.config,
        &s.state(),
        &[
            ("TEST_LLM_KEY", "sk-test"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ],
    );
    let child_pid = d.running_pid("tracer");
    let r = d.request(&Request::Send {
        agent: "tracer".into(),
        text: "what does the private note say?".into(),
        wait: true,
    });
    assert!(
        r.ok && r.result.as_ref().is_some_and(|v| v["state"] == "succeeded"),
        "{r:?}\n{}",
        d.log_text()
    );
    let t = tasks(&d.state_dir).into_iter().next().expect("the task");

    let want = ["task", "invoke_agent", "chat", "execute_tool", "sandbox.run"];
    let spans = wait_for(Duration::from_secs(30), || {
        let spans = receiver.spans();
        let task_ended = named(&spans, "task").len() == 1;
        (task_ended && named(&spans, "chat").len() == 3 && want.iter().all(|n| !named(&spans, n).is_empty()))
            .then_some(spans)
    })
    .unwrap_or_else(|| {
        panic!(
            "spans did not all arrive: {:#?}\nlog:\n{}",
            receiver.spans(),
            d.log_text()
        )
    });

    // One trace; the task span is its root, in the supervisor's process.
    let task = named(&spans, "task tracer")[0];
    let trace = task["trace_id"].as_str().unwrap_or_default();
    assert_eq!(trace.len(), 32);
    assert!(spans.iter().all(|s| s["trace_id"] == trace), "{spans:#?}");
    assert_eq!(task["parent_span_id"], "", "the task span is the root");
    assert_eq!(task["attributes"]["process.pid"], d.pid() as i64);
    assert_eq!(task["attributes"]["agentd.task.id"], t.id.0);
    assert_eq!(task["attributes"]["agentd.task.trigger"], "message");
    assert_eq!(task["attributes"]["agentd.task.state"], "succeeded");
    assert_eq!(task["resource"]["service.name"], "agentd");
    assert_eq!(task["resource"]["deployment.environment"], "test");

    // The agent child's span joins it across the process boundary.
    let invoke = named(&spans, "invoke_agent tracer");
    assert_eq!(invoke.len(), 1, "{spans:#?}");
    let invoke = invoke[0];
    assert_eq!(invoke["parent_span_id"], task["span_id"], "{spans:#?}");
    assert_eq!(invoke["attributes"]["process.pid"], child_pid as i64);
    assert_ne!(child_pid, d.pid());
    let inside = |s: &&Value| s["parent_span_id"] == invoke["span_id"];

    // Model calls: GenAI conventions, tokens as the journal has them.
    let chats = named(&spans, "chat test-model");
    assert_eq!(chats.len(), 3, "{spans:#?}");
    assert!(chats.iter().all(inside), "{chats:#?}");
    let llm_steps: Vec<Step> = steps(&d.state_dir, t.id)
        .into_iter()
        .filter(|s| s.kind == "llm")
        .collect();
    assert_eq!(llm_steps.len(), 3);
    let mut chats = chats;
    chats.sort_by_key(|s| s["start"].as_u64());
    for (span, step) in chats.iter().zip(&llm_steps) {
        let a = &span["attributes"];
        assert_eq!(a["gen_ai.operation.name"], "chat");
        assert_eq!(a["gen_ai.provider.name"], "openai");
        assert_eq!(a["gen_ai.request.model"], "test-model");
        assert_eq!(a["gen_ai.usage.input_tokens"], step.input_tokens, "{span:#?}");
        assert_eq!(a["gen_ai.usage.output_tokens"], step.output_tokens, "{span:#?}");
        let reason = step.payload["reply"]["finish_reason"].clone();
        assert_eq!(
            a["gen_ai.response.finish_reasons"],
            serde_json::json!([reason]),
            "{span:#?}"
        );
    }
    // The provider got each call's context as a `traceparent` header.
    let headers: Vec<String> = llm
        .requests()
        .iter()
        .filter_map(|r| r.header("traceparent").map(str::to_owned))
        .collect();
    assert_eq!(headers.len(), 3, "{headers:?}");
    for (h, span) in headers.iter().zip(&chats) {
        assert_eq!(
            h,
            &format!("00-{trace}-{}-01", span["span_id"].as_str().unwrap_or_default())
        );
    }

    // The tool call and the sandbox run.
    let tool = named(&spans, "execute_tool read_file");
    assert_eq!(tool.len(), 1, "{spans:#?}");
    assert!(inside(&tool[0]));
    assert_eq!(tool[0]["attributes"]["gen_ai.tool.name"], "read_file");
    assert_eq!(tool[0]["attributes"]["gen_ai.tool.call.id"], "c1");
    // The MCP server got the tool call's context in `_meta.traceparent`.
    let echo = named(&spans, "execute_tool trace_context");
    assert_eq!(echo.len(), 1, "{spans:#?}");
    assert!(inside(&echo[0]));
    let journal = steps(&d.state_dir, t.id);
    let answered = journal
        .iter()
        .find(|s| s.kind == "tool" && s.payload["name"] == "trace_context")
        .map(|s| s.payload["result"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no trace_context call: {journal:#?}"));
    assert_eq!(
        answered,
        format!("00-{trace}-{}-01", echo[0]["span_id"].as_str().unwrap_or_default())
    );
    let run = named(&spans, "sandbox.run");
    assert_eq!(run.len(), 1);
    assert!(inside(&run[0]));
    assert_eq!(run[0]["attributes"]["process.exit.code"], 0);
    assert!(run[0]["attributes"]["agentd.sandbox.backend"].is_string());

    // No prompt, completion, tool result or program output is exported.
    let all = serde_json::to_string(&spans).unwrap_or_default();
    for secret in ["private note", "secret", "traced-secret-output"] {
        assert!(!all.contains(secret), "{secret:?} was exported: {all}");
    }
}

#[test]
fn a_hung_collector_blocks_no_task_and_its_drops_are_counted() {
    let receiver = Receiver::start("stall");
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "read_file", r#"{"path": "note.md"}"#)]),
        Reply::stream_text(&["Done."]),
    ]);
    let s = InboxAgent::new("stuck", &llm.base_url(), "sk-test", Extra::default());
    std::fs::write(s.inbox.join("note.md"), "note\n").expect("write note");
    let endpoint = receiver.endpoint();
    let d = Daemon::start(
        &s.config,
        &s.state(),
        &[
            ("TEST_LLM_KEY", "sk-test"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
            // One span in flight at most: the first export hangs, the rest drop.
            ("OTEL_BSP_MAX_QUEUE_SIZE", "1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
        ],
    );
    d.running_pid("stuck");
    // The task ends although every export hangs (for a minute, longer than
    // the wait below allows); without the bounded queue's own count the
    // drops would be invisible (the SDK only logs them).
    let r = d.request(&Request::Send {
        agent: "stuck".into(),
        text: "read note.md".into(),
        wait: true,
    });
    assert!(
        r.ok && r.result.as_ref().is_some_and(|v| v["state"] == "succeeded"),
        "{r:?}\n{}",
        d.log_text()
    );
    let (text, samples) = scrape(&d);
    // The child ended chat, execute_tool, chat and invoke_agent spans with
    // one slot: at least three were dropped there.
    assert!(
        value(&samples, "agentd_trace_spans_dropped_total", &[]) >= 3.0,
        "{text}"
    );
    assert!(receiver.spans().is_empty(), "the stalled receiver never answered");
}

#[test]
fn a_killed_mcp_server_counts_one_reconnect() {
    let llm = LlmServer::start(vec![]);
    let s = InboxAgent::new("rec", &llm.base_url(), "sk-test", Extra::default());
    let d = s.start_running();
    let agent = d.running_pid("rec");
    let (_, before) = scrape(&d);
    let labels = [("agent", "rec"), ("server", "inbox")];
    assert_eq!(value(&before, "agentd_mcp_reconnects_total", &labels), 0.0);
    let watch = wait_for(Duration::from_secs(10), || {
        crate::support::children_of(agent).into_iter().find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("mcp-watch"))
                .unwrap_or(false)
        })
    })
    .expect("mcp-watch runs under the agent");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill mcp-watch");
    let after = wait_for(Duration::from_secs(30), || {
        let (_, s) = scrape(&d);
        (value(&s, "agentd_mcp_reconnects_total", &labels) >= 1.0).then_some(s)
    })
    .unwrap_or_else(|| panic!("no reconnect counted; log:\n{}", d.log_text()));
    assert_eq!(value(&after, "agentd_mcp_reconnects_total", &labels), 1.0);
}

#[test]
fn message_text_is_exported_only_when_the_opt_in_says_so() {
    // Without the variable: the other trace test proves nothing leaks.
    let receiver = Receiver::start("answer");
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "read_file", r#"{"path": "note.md"}"#)]),
        // Answered by a dated version of the model, as providers do.
        Reply::sse(vec![
            {
                let mut c = chunk(
                    serde_json::json!({"role": "assistant", "content": "The note is about otters."}),
                    serde_json::json!("stop"),
                );
                c["model"] = serde_json::json!("test-model-2026-11-01");
                c
            },
            usage_chunk(30, 6),
        ]),
    ]);
    let s = InboxAgent::new("talker", &llm.base_url(), "sk-test", Extra::default());
    std::fs::write(s.inbox.join("note.md"), "otters hold hands\n").expect("write note");
    let endpoint = receiver.endpoint();
    let d = Daemon::start(
        &s.config,
        &s.state(),
        &[
            ("TEST_LLM_KEY", "sk-test"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
        ],
    );
    let r = d.request(&Request::Send {
        agent: "talker".into(),
        text: "what is the note about?".into(),
        wait: true,
    });
    assert!(r.ok, "{r:?}");
    let spans = wait_for(Duration::from_secs(30), || {
        let spans = receiver.spans();
        (named(&spans, "chat test-model").len() == 2 && named(&spans, "execute_tool read_file").len() == 1)
            .then_some(spans)
    })
    .unwrap_or_else(|| panic!("spans did not arrive: {:#?}", receiver.spans()));
    let mut chats = named(&spans, "chat test-model");
    chats.sort_by_key(|s| s["start"].as_u64());
    let input = chats[0]["attributes"]["gen_ai.input.messages"]
        .as_str()
        .unwrap_or_default();
    assert!(input.contains("what is the note about?"), "{input}");
    assert_eq!(chats[0]["attributes"]["gen_ai.response.model"], "test-model");
    assert_eq!(chats[1]["attributes"]["gen_ai.response.model"], "test-model-2026-11-01");
    assert_eq!(chats[1]["attributes"]["gen_ai.request.model"], "test-model");
    let output = chats[1]["attributes"]["gen_ai.output.messages"]
        .as_str()
        .unwrap_or_default();
    assert!(output.contains("The note is about otters."), "{output}");
    let tool = &named(&spans, "execute_tool read_file")[0]["attributes"];
    assert!(
        tool["gen_ai.tool.call.result"]
            .as_str()
            .unwrap_or_default()
            .contains("otters hold hands")
    );
    assert_eq!(tool["gen_ai.tool.call.arguments"], r#"{"path":"note.md"}"#);
}

/// A streamable-HTTP MCP server gets the tool call's trace context as the
/// `traceparent` header too, equal to the `_meta.traceparent` in the body.
#[test]
fn an_http_mcp_server_gets_the_tool_calls_traceparent_as_a_header() {
    let receiver = Receiver::start("answer");
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "trace_header", "{}"), ("c2", "trace_context", "{}")]),
        Reply::stream_text(&["Done."]),
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let mut server = std::process::Command::new(python_peer("python"))
        .arg(peers_dir().join("meta_echo.py"))
        .args(["--http", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the HTTP MCP server");
    let up = wait_for(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
    });
    assert!(up.is_some(), "the HTTP MCP server did not come up");
    let echo = format!("      - {{name: echo, type: http, url: \"http://127.0.0.1:{port}/mcp\"}}");
    let s = InboxAgent::new(
        "tracer",
        &llm.base_url(),
        "sk-test",
        Extra {
            server: &echo,
            ..Extra::default()
        },
    );
    let endpoint = receiver.endpoint();
    let d = Daemon::start(
        &s.config,
        &s.state(),
        &[("TEST_LLM_KEY", "sk-test"), ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    d.running_pid("tracer");
    let r = d.request(&Request::Send {
        agent: "tracer".into(),
        text: "where are you?".into(),
        wait: true,
    });
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        r.ok && r.result.as_ref().is_some_and(|v| v["state"] == "succeeded"),
        "{r:?}\n{}",
        d.log_text()
    );
    let journal = all_steps(&d);
    let result_of = |tool: &str| {
        journal
            .iter()
            .find(|s| s.kind == "tool" && s.payload["name"] == tool)
            .map(|s| s.payload["result"].to_string())
            .unwrap_or_else(|| panic!("no {tool} call: {journal:#?}"))
    };
    let (header, meta) = (result_of("trace_header"), result_of("trace_context"));
    assert!(header.contains("00-"), "the header: {header}");
    assert!(meta.contains("00-"), "the _meta: {meta}");
    // Both calls are in the same task's trace: the same trace id.
    let trace_id = |s: &str| s.split('-').nth(1).map(str::to_owned);
    assert_eq!(trace_id(&header), trace_id(&meta), "{header} vs {meta}");
}
