//! The dashboard in a real browser: headless Chromium, driven over
//! WebDriver, against a real agentd and the scripted model server. It logs
//! in with the link `agentd dashboard` prints, sees the agents, sends a
//! message and sees the streamed reply appear, pauses an agent, cancels a
//! queued task and approves a waiting tool call with their buttons, all
//! with the keyboard and the mouse as a person would.

use std::path::Path;
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::http::Api;
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::webdriver::Browser;
use crate::support::{agentd, stdout, tempdir, wait_for, write};

const KEY: &str = "sk-test-dashboard-0123456789";

fn start(dir: &Path, base_url: &str) -> Daemon {
    std::fs::create_dir_all(dir.join("files")).expect("files dir");
    let cfg = write(
        dir,
        "agentd.yaml",
        &format!(
            r#"shutdown_grace: 2s
http: {{listen: "127.0.0.1:0"}}
defaults:
  model: test-model
  llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: 0}}
agents:
  - name: news
    system_prompt: You read the news.
    schedules: [{{cron: "0 9 * * 1-5", prompt: "Morning digest"}}]
  - name: mail
    system_prompt: You read the mail.
  - name: files
    system_prompt: You write files.
    mcp_servers:
      - {{name: files, command: {bin}, args: [mcp-watch, "{files}"]}}
    approve: {{tools: [write_file], timeout: 10m}}
"#,
            bin = crate::support::agentd_bin().display(),
            files = dir.join("files").display(),
        ),
    );
    let d = Daemon::start(&cfg, &dir.join("state"), &[("TEST_LLM_KEY", KEY)]);
    d.running_pid("news");
    d.running_pid("mail");
    d.running_pid("files");
    d
}

#[test]
fn a_browser_logs_in_sees_the_agents_talks_with_a_streamed_reply_pauses_cancels_and_approves() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&["Hello ", "from the ", "news desk."]),
        Reply::stream_tool_calls(&[("c1", "write_file", r#"{"path": "out.md", "content": "x"}"#)]),
        Reply::stream_text(&["Written."]),
    ]);
    let dir = tempdir();
    let d = start(dir.path(), &llm.base_url());
    let api = Api::of(&d.state_dir);
    let out = agentd(&["dashboard", "--state-dir", d.state_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let link = stdout(&out).trim().to_owned();

    let b = Browser::start();
    // Control: without logging in, the page says how to, and shows no agent.
    b.goto(&format!("{}/", api.base));
    assert!(b.text("body").contains("agentd dashboard"), "{}", b.text("body"));
    assert!(b.find("#agent-news").is_none());

    b.goto(&link);
    // The login link does not stay in the address bar.
    assert_eq!(b.url(), format!("{}/", api.base));
    b.wait_text("#agent-news .state", |t| t == "running");
    b.wait_text("#agent-mail .state", |t| t == "running");
    assert!(
        b.text("#agent-news").contains("0 9 * * 1-5"),
        "{}",
        b.text("#agent-news")
    );
    b.wait_text("#live", |t| t == "live");
    // The session cookie is out of the page's reach, and the token is nowhere in it.
    let page = b.script("return document.documentElement.outerHTML + '|' + document.cookie;");
    let page = page.as_str().unwrap();
    assert!(page.ends_with('|'), "the page can read the cookie: {page}");
    assert!(!page.contains(&api.token));

    // Talk: the row's Message button picks the agent and focuses the box;
    // Enter sends; the reply streams into the page.
    b.click("#agent-news .talk");
    b.keys_to_focus("What is new?\u{E007}");
    let reply = b.wait_text("#msg-reply", |t| t == "Hello from the news desk.");
    assert_eq!(reply, "Hello from the news desk.");
    b.wait_text("#msg-status", |t| t.ends_with("succeeded"));
    let asked = llm.requests()[0].json().to_string();
    assert!(asked.contains("What is new?"), "{asked}");
    // The task list shows it, and its journal opens.
    b.wait_text("#tasks tbody", |t| t.contains("What is new?"));
    b.click("#tasks tbody tr:first-child button");
    b.wait_text("#journal", |t| t.contains("news desk"));

    // Pause with the button: the agent is paused in agentd, and the page says so.
    b.click("#agent-mail .pause");
    b.wait_text("#agent-mail .state", |t| t == "paused");
    wait_for(Duration::from_secs(10), || d.agent("mail").filter(|a| a.paused)).expect("mail paused in agentd");
    assert!(!d.agent("news").unwrap().paused);
    assert_eq!(b.text("#agent-mail .pause"), "Resume");

    // Cancel with the button: a message to the paused agent waits in the
    // queue; its task view offers Cancel, which agentd carries out.
    let queued = api.post(
        "/api/v1/agents/mail/messages",
        r#"{"text": "Later, please", "wait": false}"#,
    );
    let task = queued.json()["task"].as_i64().unwrap();
    b.wait_text("#tasks tbody", |t| t.contains("Later, please"));
    b.click("#tasks tbody tr:first-child button");
    b.wait_text("#task-meta", |t| t.contains("queued"));
    b.click("#task-cancel");
    b.wait_text("#task-meta", |t| t.contains("cancelled"));
    let cancelled = wait_for(Duration::from_secs(10), || {
        crate::support::daemon::tasks(&d.state_dir)
            .into_iter()
            .find(|t| t.id.0 == task && t.state == agentd::domain::TaskState::Cancelled)
    });
    assert!(cancelled.is_some(), "task {task} cancelled in agentd");
    b.click("#task-close");

    // Approve with the button: a tool call waiting for an operator shows
    // under Approvals; Approve lets it run.
    assert!(b.text("#approvals").is_empty());
    api.post(
        "/api/v1/agents/files/messages",
        r#"{"text": "Write it", "wait": false}"#,
    );
    b.wait_text("#approvals", |t| t.contains("write_file"));
    b.click("#approvals li:first-child .approve");
    b.wait_text("#approvals", |t| !t.contains("write_file"));
    let written = wait_for(Duration::from_secs(20), || {
        dir.path().join("files/out.md").exists().then_some(())
    });
    assert!(written.is_some(), "the approved call ran: {}", d.log_text());

    // Phone-sized: the agents and the message box still fit the screen.
    b.set_window(390, 844);
    let wide = b.script("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    assert_eq!(wide, true, "the page is wider than a phone screen");
    // For the README: AGENTD_SCREENSHOTS=docs writes both sizes there.
    if let Some(out) = std::env::var_os("AGENTD_SCREENSHOTS") {
        let out = std::path::PathBuf::from(out);
        std::fs::write(out.join("dashboard-phone.png"), b.screenshot_png()).unwrap();
        b.set_window(1100, 900);
        std::fs::write(out.join("dashboard.png"), b.screenshot_png()).unwrap();
    }
}
