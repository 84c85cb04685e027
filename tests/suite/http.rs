//! The HTTP API against a real agentd: a real listener on 127.0.0.1, the
//! scripted OpenAI-compatible server, the ledger read back. Every route
//! with and without the token; the login link, its cookie and the
//! cross-site refusal (each with its control); SSE while a task runs and
//! its resumption; signed webhooks in; notifications out, retried.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, tasks};
use crate::support::http::Api;
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::{agentd, stdout, tempdir, wait_for, write};

const KEY: &str = "sk-test-http-0123456789-never-shown";
const HOOK_SECRET: &str = "hook-secret-0123456789-never-shown";
const NOTIFY_SECRET: &str = "notify-secret-0123456789";

fn config(dir: &Path, base_url: &str, extra_top: &str) -> PathBuf {
    write(
        dir,
        "agentd.yaml",
        &format!(
            r#"shutdown_grace: 2s
http: {{listen: "127.0.0.1:0"}}
{extra_top}
defaults:
  model: test-model
  llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: 0}}
agents:
  - name: news
    system_prompt: You read the news.
    webhook: {{secret_env: HOOK_SECRET, dedupe_header: X-GitHub-Delivery, headers: [X-GitHub-Event], max_body: 4KiB}}
  - name: mail
    system_prompt: You read the mail.
"#
        ),
    )
}

fn start(dir: &Path, cfg: &Path) -> (Daemon, Api) {
    let d = Daemon::start(
        cfg,
        &dir.join("state"),
        &[
            ("TEST_LLM_KEY", KEY),
            ("HOOK_SECRET", HOOK_SECRET),
            ("NOTIFY_SECRET", NOTIFY_SECRET),
        ],
    );
    d.running_pid("news");
    d.running_pid("mail");
    let api = Api::of(&d.state_dir);
    (d, api)
}

fn sign(secret: &str, body: &str) -> String {
    agentd::http::signature::sign(secret.as_bytes(), body.as_bytes())
}

#[test]
fn every_route_wants_the_token_except_healthz_and_no_answer_holds_a_secret() {
    let llm = LlmServer::start(vec![Reply::stream_text(&["Noted."])]);
    let dir = tempdir();
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    // A task to name in /tasks/{id}.
    let sent = api.post("/api/v1/agents/news/messages", r#"{"text": "hello", "wait": true}"#);
    assert_eq!(sent.status, 200, "{}", sent.body);
    let task = sent.json()["task"].as_i64().unwrap();

    // The token file is agentd's alone.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(d.state_dir.join("http.token")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());

    let described = api.get("/api/v1");
    assert_eq!(described.status, 200);
    let routes = described.json()["routes"].as_array().unwrap().clone();
    assert!(routes.len() >= 15, "{routes:#?}");
    let mut bodies = vec![described.body.clone()];
    for r in &routes {
        let method = r["method"].as_str().unwrap();
        let path = r["path"]
            .as_str()
            .unwrap()
            .replace("{name}", "mail")
            .replace("{id}", &task.to_string());
        let body = (method == "POST").then_some(r#"{"text": "ping"}"#);
        let without = api.call(method, &path, false, &[], body);
        let wrong = api.call(
            method,
            &path,
            false,
            &[("authorization", "Bearer 0123456789abcdef0123456789abcdef")],
            body,
        );
        let auth = r["auth"].as_str().unwrap();
        match path.as_str() {
            "/healthz" => assert_eq!(without.status, 200, "{path}: {}", without.body),
            "/login" => assert_eq!(without.status, 401, "{path} without a code"),
            p if p.ends_with("/webhook") => assert_eq!(without.status, 404, "mail takes no webhooks"),
            // The task has ended and there is no such approval or grant: the token
            // gets an answer from the handler (400), not a refusal.
            p if p.ends_with("/cancel") || p.contains("/approvals/") || p.contains("/grants/") => {
                assert_eq!(without.status, 401, "{method} {path} without the token");
                assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
                let with = api.call(method, &path, true, &[], body);
                assert_eq!(with.status, 400, "{method} {path}: {}", with.body);
                bodies.push(with.body);
            }
            _ => {
                assert!(auth.contains("Bearer"), "{path}: {auth}");
                assert_eq!(
                    without.status, 401,
                    "{method} {path} without the token: {}",
                    without.body
                );
                assert_eq!(wrong.status, 401, "{method} {path} with a wrong token: {}", wrong.body);
                if path.starts_with("/api/") {
                    assert_eq!(without.header("www-authenticate").as_deref(), Some("Bearer"));
                }
                if path == "/api/v1/events" {
                    // The stream itself: only its status and type matter here.
                    let mut sse = api.events("", None);
                    drop(sse.next(Duration::from_millis(10)));
                    continue;
                }
                let with = api.call(method, &path, true, &[], body);
                assert!(
                    (200..300).contains(&with.status),
                    "{method} {path} with the token: {} {}",
                    with.status,
                    with.body
                );
                bodies.push(with.body);
            }
        }
        bodies.push(without.body);
    }
    // Unknown things are 404s, not errors.
    assert_eq!(api.get("/api/v1/agents/nobody").status, 404);
    assert_eq!(api.post("/api/v1/agents/nobody/pause", "").status, 404);
    assert_eq!(api.get("/api/v1/tasks/999999").status, 404);
    assert_eq!(api.get("/api/v1/tasks?state=bogus").status, 400);
    assert_eq!(api.get("/readyz").json()["ready"], true);
    for b in &bodies {
        for secret in [KEY, HOOK_SECRET, api.token.as_str()] {
            assert!(!b.contains(secret), "a response holds a secret: {b}");
        }
    }
    assert!(!d.log_text().contains(&api.token), "the token is in the log");
}

#[test]
fn the_login_link_gives_a_cookie_that_reads_but_does_not_post_cross_site() {
    let llm = LlmServer::start(vec![]);
    let dir = tempdir();
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    let out = agentd(&["dashboard", "--state-dir", d.state_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let link = stdout(&out).trim().to_owned();
    assert!(link.starts_with(&format!("{}/login?code=", api.base)), "{link}");
    assert!(!link.contains(&api.token), "the link holds the token");
    let path = link.strip_prefix(&api.base).unwrap();

    let login = api.call("GET", path, false, &[], None);
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(login.header("location").as_deref(), Some("/"));
    let set = login.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains(&api.token), "the cookie is the token itself");
    let cookie = set.split(';').next().unwrap().to_owned();

    // A forged or altered code gets nothing.
    let last = if path.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &path[..path.len() - 1]);
    let refused = api.call("GET", &forged, false, &[], None);
    assert_eq!(refused.status, 401);
    assert!(refused.header("set-cookie").is_none());

    // The page itself, with the cookie, never holds the token.
    let page = api.call("GET", "/", false, &[("cookie", &cookie)], None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("app.js") && !page.body.contains(&api.token));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    let logged_out = api.call("GET", "/", false, &[], None);
    assert_eq!(logged_out.status, 401);
    assert!(logged_out.body.contains("agentd dashboard"));

    // Reads with the cookie alone.
    let agents = api.call("GET", "/api/v1/agents", false, &[("cookie", &cookie)], None);
    assert_eq!(agents.status, 200);

    let host = api.base.strip_prefix("http://").unwrap().to_owned();
    let origin = api.base.clone();
    let paused = |d: &Daemon| d.agent("mail").unwrap().paused;
    // The attack: a page elsewhere posts with the browser's cookie.
    for hdrs in [
        vec![("cookie", cookie.as_str()), ("origin", "http://evil.example")],
        vec![("cookie", cookie.as_str()), ("sec-fetch-site", "cross-site")],
        vec![("cookie", cookie.as_str())],
    ] {
        let r = api.call("POST", "/api/v1/agents/mail/pause", false, &hdrs, None);
        assert_eq!(r.status, 403, "{hdrs:?}: {}", r.body);
        assert!(!paused(&d), "a cross-site post paused the agent");
    }
    // Control: the same request from the dashboard's own origin works, so
    // the cookie alone would have been enough without the check.
    let r = api.call(
        "POST",
        "/api/v1/agents/mail/pause",
        false,
        &[("cookie", &cookie), ("origin", &origin), ("host", &host)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(paused(&d));
    let r = api.call(
        "POST",
        "/api/v1/agents/mail/resume",
        false,
        &[("cookie", &cookie), ("sec-fetch-site", "same-origin")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!paused(&d));
}

#[test]
fn tasks_page_newest_first_by_agent_and_state() {
    let llm = LlmServer::start(vec![]);
    let dir = tempdir();
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    // Paused: the messages stay queued, so the listing is stable.
    assert_eq!(api.post("/api/v1/agents/news/pause", "").status, 200);
    assert_eq!(api.post("/api/v1/agents/mail/pause", "").status, 200);
    let mut ids = Vec::new();
    for i in 0..7 {
        let agent = if i % 2 == 0 { "news" } else { "mail" };
        let r = api.post(
            &format!("/api/v1/agents/{agent}/messages"),
            &format!(r#"{{"text": "m{i}"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["paused"], true);
        ids.push((agent, r.json()["task"].as_i64().unwrap()));
    }
    let news: Vec<i64> = ids
        .iter()
        .rev()
        .filter(|(a, _)| *a == "news")
        .map(|(_, t)| *t)
        .collect();
    let mut seen = Vec::new();
    let mut next = String::new();
    loop {
        let page = api
            .get(&format!("/api/v1/tasks?agent=news&state=queued&limit=3{next}"))
            .json();
        seen.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_i64().unwrap()),
        );
        match page["next"].as_i64() {
            Some(n) => next = format!("&before={n}"),
            None => break,
        }
    }
    assert_eq!(seen, news);
    let all = api.get("/api/v1/tasks?limit=500").json();
    assert_eq!(all["tasks"].as_array().unwrap().len(), tasks(&d.state_dir).len());
    assert!(all["next"].is_null());
}

#[test]
fn sse_streams_a_running_tasks_steps_and_resumes_from_last_event_id() {
    // The first reply runs a code block (a journal step); the second
    // request hangs, so the task is still running while its steps arrive.
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["Checking.\n```sh:execute\necho step-one\n```"]),
        Reply::Stall,
    ]);
    let dir = tempdir();
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    // One watcher stays connected throughout: what the resumed one must match.
    let mut steady = api.events("?agent=news", None);
    let mut first = api.events("", None);
    let r = api.post("/api/v1/agents/news/messages", r#"{"text": "run something"}"#);
    let task = r.json()["task"].as_i64().unwrap();

    let is_step =
        |kind: &'static str| move |e: &crate::support::http::Event| e.event == "step" && e.data["kind"] == kind;
    let seen = first.until(Duration::from_secs(30), is_step("fence"));
    assert!(
        seen.iter()
            .any(|e| e.event == "task" && e.data["state"] == "queued" && e.data["task"] == task)
    );
    assert!(seen.iter().any(|e| e.event == "task" && e.data["state"] == "running"));
    assert!(seen.iter().any(|e| e.event == "step" && e.data["kind"] == "llm"));
    let fence = seen.last().unwrap().clone();
    assert!(fence.data["payload"].to_string().contains("step-one"), "{fence:?}");
    // Still running: the steps came while the task ran.
    let now = api.get(&format!("/api/v1/tasks/{task}")).json();
    assert_eq!(now["task"]["state"], "running", "{now}");
    let mid_id = seen
        .iter()
        .rev()
        .find(|e| e.event == "step")
        .and_then(|e| e.id.clone())
        .unwrap();
    drop(first);

    // While nobody watches on that connection, the task ends (the hung
    // request is cut when the scripted server goes).
    drop(llm);
    let ended =
        |e: &crate::support::http::Event| e.event == "task" && e.data["task"] == task && e.data["state"] == "failed";
    let steady_seen = steady.until(Duration::from_secs(60), ended);

    // Reconnected with Last-Event-ID: exactly what came after it, in order.
    let mut resumed = api.events("?agent=news", Some(&mid_id));
    let replay = resumed.until(Duration::from_secs(10), ended);
    let after: Vec<_> = steady_seen
        .iter()
        .skip_while(|e| e.id.as_deref() != Some(mid_id.as_str()))
        .skip(1)
        .cloned()
        .collect();
    assert!(!after.is_empty());
    assert_eq!(replay, after);

    // An id from another agentd process cannot be resumed: said so.
    let mut stale = api.events("", Some("1-1"));
    assert_eq!(stale.next(Duration::from_secs(10)).unwrap().event, "reset");
    drop(d);
}

#[test]
fn a_signed_webhook_becomes_one_task_and_a_redelivery_coalesces_a_bad_one_records_nothing() {
    let llm = LlmServer::start(vec![Reply::stream_text(&["Handled the push."])]);
    let dir = tempdir();
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    let body = r#"{"ref": "refs/heads/main", "marker": "good-delivery-7"}"#;
    let deliver = |sig: &str, delivery: &str, body: &str| {
        api.call(
            "POST",
            "/api/v1/agents/news/webhook",
            false,
            &[
                ("x-hub-signature-256", sig),
                ("x-github-delivery", delivery),
                ("x-github-event", "push"),
                ("content-type", "application/json"),
            ],
            Some(body),
        )
    };
    let before = tasks(&d.state_dir).len();

    // The attack first: a forged signature, then none. Nothing is recorded.
    let evil = r#"{"marker": "forged-delivery-9"}"#;
    let r = deliver(&sign("not-the-secret", evil), "d-evil", evil);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = deliver("", "d-evil", evil);
    assert_eq!(r.status, 401);
    assert_eq!(tasks(&d.state_dir).len(), before);
    let ledger = std::fs::read(d.state_dir.join("ledger.sqlite")).unwrap();
    let wal = std::fs::read(d.state_dir.join("ledger.sqlite-wal")).unwrap_or_default();
    for bytes in [&ledger, &wal] {
        assert!(!String::from_utf8_lossy(bytes).contains("forged-delivery-9"));
        assert!(!String::from_utf8_lossy(bytes).contains("d-evil"));
    }
    // Unknown agent; an agent without webhook; too large.
    assert_eq!(
        api.call("POST", "/api/v1/agents/nobody/webhook", false, &[], Some(body))
            .status,
        404
    );
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(5000));
    assert_eq!(deliver(&sign(HOOK_SECRET, &big), "d-big", &big).status, 413);

    // Control: the same request, signed with the secret, is a task.
    let r = deliver(&sign(HOOK_SECRET, body), "d-1", body);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["duplicate"], false);
    let task = r.json()["task"].as_i64().unwrap();
    let done = wait_for(Duration::from_secs(30), || {
        let t = api.get(&format!("/api/v1/tasks/{task}")).json();
        (t["task"]["state"] == "succeeded").then_some(t)
    })
    .unwrap_or_else(|| panic!("webhook task never ended; log:\n{}", d.log_text()));
    assert_eq!(done["task"]["trigger_kind"], "webhook");
    assert_eq!(done["task"]["trigger"]["delivery"], "d-1");
    assert_eq!(done["task"]["trigger"]["headers"]["x-github-event"], "push");
    assert!(
        done["task"]["trigger"]["body"]
            .as_str()
            .unwrap()
            .contains("good-delivery-7")
    );
    // The model saw the delivery.
    let asked = llm.requests()[0].json().to_string();
    assert!(
        asked.contains("good-delivery-7") && asked.contains("x-github-event: push"),
        "{asked}"
    );

    // A redelivery, even after the task ended, is the same task.
    let again = deliver(&sign(HOOK_SECRET, body), "d-1", body);
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["task"], task);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(tasks(&d.state_dir).len(), before + 1);
    assert_eq!(llm.request_count(), 1);
}

/// A receiver on 127.0.0.1 that answers each POST with the next status
/// (the last one repeated) and keeps what it received; a status of 0
/// never answers.
/// One received POST: its headers (lower-case names) and body.
type Received = (Vec<(String, String)>, String);

struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(statuses: Vec<u16>) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook?token=in-the-query", l.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for (i, conn) in l.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end().to_owned();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    if k == "content-length" {
                        len = v.parse().unwrap();
                    }
                    headers.push((k, v));
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                g.lock()
                    .unwrap()
                    .push((headers, String::from_utf8_lossy(&body).into_owned()));
                let status = *statuses.get(i).or(statuses.last()).unwrap();
                if status == 0 {
                    held.push(conn);
                    continue;
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, got }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

#[test]
fn a_notification_is_signed_retried_until_it_lands_and_journaled_and_a_dead_receiver_blocks_nothing() {
    let flaky = Receiver::start(vec![500, 200]);
    let dead = Receiver::start(vec![0]);
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["First done."]),
        Reply::stream_text(&["Second done."]),
    ]);
    let dir = tempdir();
    let notify = format!(
        "notify:\n  - {{url: \"{}\", on: [succeeded], secret_env: NOTIFY_SECRET, backoff: 50ms}}\n  - {{url: \"{}\", timeout: 1h}}\n",
        flaky.url, dead.url
    );
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), &notify));
    let first = api
        .post("/api/v1/agents/news/messages", r#"{"text": "one", "wait": true}"#)
        .json();
    assert_eq!(first["state"], "succeeded", "{first}");
    let task = first["task"].as_i64().unwrap();
    // The dead receiver holds its connection open: the agent goes on.
    wait_for(Duration::from_secs(20), || (dead.count() >= 1).then_some(())).expect("dead receiver reached");
    let second = api
        .post("/api/v1/agents/news/messages", r#"{"text": "two", "wait": true}"#)
        .json();
    assert_eq!(second["state"], "succeeded", "{second}");

    wait_for(Duration::from_secs(20), || (flaky.count() >= 3).then_some(()))
        .unwrap_or_else(|| panic!("notifications: {:?}; log:\n{}", flaky.got.lock().unwrap(), d.log_text()));
    let got = flaky.got.lock().unwrap().clone();
    let for_first: Vec<_> = got
        .iter()
        .filter(|(_, b)| serde_json::from_str::<Value>(b).unwrap()["task"] == task)
        .collect();
    assert_eq!(for_first.len(), 2, "first attempt 500, retried once: {got:?}");
    for (headers, body) in &for_first {
        let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(h("x-agentd-signature-256"), sign(NOTIFY_SECRET, body));
        assert_eq!(h("x-agentd-delivery"), format!("{task}-succeeded"));
        let ev: Value = serde_json::from_str(body).unwrap();
        assert_eq!(ev["event"], "task.succeeded");
        assert_eq!(ev["result"], "First done.");
    }
    // The journal has both attempts, without the URL's query.
    let journal = wait_for(Duration::from_secs(10), || {
        let steps = api.get(&format!("/api/v1/tasks/{task}")).json()["steps"].clone();
        let notes: Vec<Value> = steps
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "notify" && s["payload"]["url"].as_str().unwrap().contains(&flaky.url[7..20]))
            .cloned()
            .collect();
        (notes.len() == 2).then_some(notes)
    })
    .expect("two notify steps");
    assert_eq!(journal[0]["payload"]["delivered"], false);
    assert_eq!(journal[0]["payload"]["status"], 500);
    assert_eq!(journal[1]["payload"]["delivered"], true);
    assert!(!journal.iter().any(|s| s.to_string().contains("in-the-query")));
    assert_eq!(json!(dead.count() >= 1), json!(true));
}

#[test]
fn a_port_in_use_is_a_warning_and_agentd_runs_on_without_its_api() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let llm = LlmServer::start(vec![]);
    let dir = tempdir();
    let cfg = config(dir.path(), &llm.base_url(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("news");
    let log = d.log_text();
    assert!(
        log.contains("WARN") && log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(!d.state_dir.join("http.url").exists());
    // `agentd dashboard` says why there is no link.
    let out = agentd(&["dashboard", "--state-dir", d.state_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(crate::support::stderr(&out).contains("http.url"), "{out:?}");
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    let llm = LlmServer::start(vec![]);
    let dir = tempdir();
    let cfg = config(dir.path(), &llm.base_url(), "");
    let state = dir.path().join("state");
    // Control: agentd makes its own token 0600 and serves with it.
    let d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    let api = Api::of(&state);
    assert_eq!(api.get("/api/v1").status, 200);
    drop(d);
    // The attack's precondition: the file became readable by others.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(state.join("http.token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = crate::support::agentd_cmd(&[
        "--state-dir",
        state.to_str().unwrap(),
        "--no-repl",
        cfg.to_str().unwrap(),
    ])
    .env("TEST_LLM_KEY", KEY)
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = crate::support::stderr(&out);
    assert!(err.contains("http.token") && err.contains("chmod 600"), "{err}");
}

#[test]
fn connections_held_open_without_the_token_cannot_use_up_agentds_descriptors() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let llm = LlmServer::start(vec![]);
    let dir = tempdir();
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", d.pid())).unwrap().count();
    let before = fds();
    let addr = api.base.strip_prefix("http://").unwrap().to_owned();
    // More connections than the cap, each sending nothing: as code in a
    // sandbox with network could.
    // Past the cap and the listen backlog a connect hangs: a few misses
    // in a row end it.
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let mut held = Vec::new();
    let mut misses = 0;
    while held.len() < 900 && misses < 5 {
        match std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)) {
            Ok(c) => {
                held.push(c);
                misses = 0;
            }
            Err(_) => {
                misses += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert!(held.len() > 560, "only {} connections", held.len());
    wait_for(Duration::from_secs(20), || (fds() >= before + 500).then_some(()))
        .unwrap_or_else(|| panic!("agentd accepted fewer than 500 connections: {} fds", fds()));
    // It stops at the cap (bounded polling for a breach that never comes).
    let breach = wait_for(Duration::from_secs(2), || (fds() > before + 512 + 16).then_some(fds()));
    assert!(breach.is_none(), "agentd holds {breach:?} descriptors");
    // The control socket still answers.
    assert_eq!(d.agent("news").unwrap().state, "running");
    drop(held);
    // And the API serves again once they are gone.
    let back = wait_for(Duration::from_secs(20), || {
        let r = api.get("/api/v1/agents");
        (r.status == 200).then_some(r)
    });
    assert!(back.is_some());
}

#[test]
fn the_api_can_listen_on_a_unix_socket_only_its_owner_may_open() {
    use std::os::unix::fs::PermissionsExt;
    let llm = LlmServer::start(vec![]);
    let dir = tempdir();
    let cfg = config(dir.path(), &llm.base_url(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"127.0.0.1:0\"", "\"unix:api.sock\"");
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[("TEST_LLM_KEY", KEY)]);
    let sock = dir.path().join("api.sock");
    let url = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(d.state_dir.join("http.url")).ok()
    })
    .expect("http.url");
    assert_eq!(url.trim(), format!("unix:{}", sock.display()));
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(d.state_dir.join("http.token")).unwrap();
    let ask = |auth: bool| {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let bearer = if auth {
            format!("Authorization: Bearer {}\r\n", token.trim())
        } else {
            String::new()
        };
        write!(
            s,
            "GET /api/v1/agents HTTP/1.1\r\nHost: agentd\r\n{bearer}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(ask(false).starts_with("HTTP/1.1 401"), "{}", ask(false));
    let with = ask(true);
    assert!(with.starts_with("HTTP/1.1 200") && with.contains("\"news\""), "{with}");
    // A browser cannot open a socket: `agentd dashboard` says so.
    let out = agentd(&["dashboard", "--state-dir", d.state_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        crate::support::stderr(&out).contains("a browser cannot open"),
        "{out:?}"
    );
}

/// Governance over HTTP: the same control requests as the CLI's, with the
/// journal naming the API as the caller.
#[test]
fn a_queued_task_is_cancelled_over_http_and_the_journal_says_by_whom() {
    let llm = LlmServer::start(Vec::new());
    let dir = tempdir();
    let (d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    assert_eq!(api.post("/api/v1/agents/mail/pause", "").status, 200);
    let sent = api.post("/api/v1/agents/mail/messages", r#"{"text": "later", "wait": false}"#);
    assert_eq!(sent.status, 200, "{}", sent.body);
    let task = sent.json()["task"].as_i64().unwrap();

    // Without the token nothing happens.
    let refused = api.call("POST", &format!("/api/v1/tasks/{task}/cancel"), false, &[], Some("{}"));
    assert_eq!(refused.status, 401);
    let queued = crate::support::daemon::tasks(&d.state_dir);
    assert!(
        queued
            .iter()
            .any(|t| t.id.0 == task && t.state == agentd::domain::TaskState::Queued)
    );

    let cancelled = api.post(&format!("/api/v1/tasks/{task}/cancel"), r#"{"reason": "not needed"}"#);
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["state"], "cancelled");
    let steps = crate::support::daemon::steps(&d.state_dir, agentd::domain::TaskId(task));
    let step = steps.iter().find(|s| s.kind == "cancel").expect("a cancel step");
    assert_eq!(step.payload["by"], "http", "{:?}", step.payload);
    assert_eq!(step.payload["reason"], "not needed", "{:?}", step.payload);
    assert_eq!(llm.request_count(), 0, "a cancelled task never ran");

    let pending = api.get("/api/v1/approvals");
    assert_eq!(pending.status, 200);
    assert_eq!(pending.json()["approvals"], serde_json::json!([]));
    let spend = api.get("/api/v1/spend?per=1d");
    assert_eq!(spend.status, 200, "{}", spend.body);
}

#[test]
fn get_metrics_serves_what_agentd_metrics_prints_after_a_task() {
    let llm = LlmServer::start(vec![Reply::stream_text(&["Noted."])]);
    let dir = tempdir();
    let (_d, api) = start(dir.path(), &config(dir.path(), &llm.base_url(), ""));
    let sent = api.post("/api/v1/agents/news/messages", r#"{"text": "hello", "wait": true}"#);
    assert_eq!(sent.status, 200, "{}", sent.body);
    let m = api.get("/metrics");
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.header("content-type").as_deref(), Some(agentd::metrics::CONTENT_TYPE));
    let samples = super::observability::parse(&m.body);
    let ended = [("agent", "news"), ("trigger", "message"), ("state", "succeeded")];
    assert_eq!(
        super::observability::value(&samples, "agentd_tasks_ended_total", &ended),
        1.0
    );
    assert_eq!(
        super::observability::value(&samples, "agentd_agents", &[("state", "running")]),
        2.0
    );
}

/// `notify: on: [waiting]`: a task that stops for an approval is posted,
/// signed, with what it asks and how to answer; the attempt is journaled.
#[test]
fn a_task_waiting_for_an_approval_is_notified() {
    let hook = Receiver::start(vec![200]);
    let llm = LlmServer::start(vec![
        Reply::stream_tool_calls(&[("c1", "write_file", r#"{"path": "out.md", "content": "x"}"#)]),
        Reply::stream_text(&["Done."]),
    ]);
    let dir = tempdir();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let cfg = write(
        dir.path(),
        "agentd.yaml",
        &format!(
            r#"shutdown_grace: 2s
http: {{listen: "127.0.0.1:0"}}
notify:
  - {{url: "{hook}", on: [waiting], secret_env: NOTIFY_SECRET}}
agents:
  - name: news
    model: test-model
    llm: {{base_url: "{base}", api_key_env: TEST_LLM_KEY, max_retries: 0}}
    mcp_servers:
      - {{name: files, command: {bin}, args: [mcp-watch, "{files}"]}}
    approve: {{tools: [write_file], timeout: 10m}}
  - name: mail
    model: test-model
    llm: {{base_url: "{base}", api_key_env: TEST_LLM_KEY, max_retries: 0}}
"#,
            hook = hook.url,
            base = llm.base_url(),
            bin = crate::support::agentd_bin().display(),
            files = files.display(),
        ),
    );
    let (d, api) = start(dir.path(), &cfg);
    let sent = api.post("/api/v1/agents/news/messages", r#"{"text": "write it", "wait": false}"#);
    let task = sent.json()["task"].as_i64().unwrap();
    wait_for(Duration::from_secs(30), || (hook.count() >= 1).then_some(()))
        .unwrap_or_else(|| panic!("no notification; log:\n{}", d.log_text()));
    let (headers, body) = hook.got.lock().unwrap()[0].clone();
    let ev: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ev["event"], "task.waiting", "{ev}");
    assert_eq!(ev["task"], task);
    assert_eq!(ev["state"], "waiting");
    assert!(ev["approval"]["asks"].as_str().unwrap().contains("write_file"), "{ev}");
    let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(h("x-agentd-signature-256"), sign(NOTIFY_SECRET, &body));
    let id = ev["approval"]["id"].as_i64().unwrap();
    assert_eq!(h("x-agentd-delivery"), format!("{task}-waiting-{id}"));
    // remember is for egress asks: a tool call's approval is refused it
    // (the body's field reaches the ledger's check), and stays pending.
    let longer = api.post(&format!("/api/v1/approvals/{id}/approve"), r#"{"remember": "always"}"#);
    assert_eq!(longer.status, 400, "{}", longer.body);
    assert!(longer.body.contains("remember is for egress asks"), "{}", longer.body);
    // The receiver's answer path: approve over the API; the call runs.
    let approved = api.post(&format!("/api/v1/approvals/{id}/approve"), r#"{"note": "ok"}"#);
    assert_eq!(approved.status, 200, "{}", approved.body);
    let done = wait_for(Duration::from_secs(30), || {
        tasks(&d.state_dir)
            .into_iter()
            .find(|t| t.id.0 == task && t.state == agentd::domain::TaskState::Succeeded)
    });
    assert!(done.is_some(), "{}", d.log_text());
    assert!(files.join("out.md").exists(), "the approved call ran");
}
