//! The MCP hub against real servers: server-everything (stdio and HTTP) and
//! agentd's own `mcp-watch`. Every wait is bounded; nothing asserts timing.

use std::time::Duration;

use agentd::mcp::{McpError, McpHub, ResourceEvent};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::support::mcp::*;
use crate::support::{agentd_bin, alive};

const LONG: Duration = Duration::from_secs(20);
const NO_DEBOUNCE: Duration = Duration::ZERO;
const POLL: Duration = Duration::from_secs(3600);

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn channel() -> (mpsc::Sender<ResourceEvent>, mpsc::Receiver<ResourceEvent>) {
    mpsc::channel(256)
}

#[tokio::test]
async fn server_everything_tools_are_listed_and_called() {
    let (tx, _rx) = channel();
    let hub = McpHub::start(&[server_everything("everything")], &[], tx).await;
    let names: Vec<String> = hub.tools().into_iter().map(|t| t.name).collect();
    assert!(names.contains(&"echo".to_owned()), "{names:?}");
    assert!(names.contains(&"get-sum".to_owned()), "{names:?}");
    let echo = hub.tools().into_iter().find(|t| t.name == "echo").unwrap();
    assert_eq!(echo.server, "everything");
    assert_eq!(echo.input_schema["type"], "object");

    let out = hub
        .call_tool("echo", args(json!({"message": "hello agentd"})))
        .await
        .unwrap();
    assert_eq!(out.text, "Echo: hello agentd");
    assert!(!out.is_error);
    assert_eq!(out.raw["content"][0]["type"], "text");

    let sum = hub.call_tool("get-sum", args(json!({"a": 2, "b": 3}))).await.unwrap();
    assert!(sum.text.contains('5'), "{}", sum.text);

    let err = hub.call_tool("no-such-tool", Map::new()).await.unwrap_err();
    assert!(matches!(err, McpError::UnknownTool { .. }), "{err}");
    hub.shutdown().await;
}

#[tokio::test]
async fn shared_tool_names_get_server_prefixes_and_tool_filter_hides_tools() {
    let (tx, _rx) = channel();
    let mut b = server_everything("b");
    b.tool_filter = Some(vec!["echo".into(), "get-s*".into()]);
    let hub = McpHub::start(&[server_everything("a"), b], &[], tx).await;
    let tools = hub.tools();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"a__echo") && names.contains(&"b__echo"), "{names:?}");
    assert!(
        names.contains(&"a__get-sum") && names.contains(&"b__get-sum"),
        "{names:?}"
    );
    // Only a has get-env, so it keeps its own name; b's filter hides b's.
    assert!(names.contains(&"get-env"), "{names:?}");
    assert!(
        tools
            .iter()
            .filter(|t| t.server == "b")
            .all(|t| t.tool == "echo" || t.tool.starts_with("get-s"))
    );
    let out = hub
        .call_tool("b__echo", args(json!({"message": "from b"})))
        .await
        .unwrap();
    assert_eq!(out.text, "Echo: from b");
    hub.shutdown().await;
}

#[tokio::test]
async fn roots_list_is_answered_with_the_configured_roots() {
    let work = tempfile::tempdir().unwrap();
    let (tx, _rx) = channel();
    let mut everything = server_everything("everything");
    everything.roots = vec![work.path().to_path_buf()];
    let hub = McpHub::start(&[everything], &[], tx).await;
    // server-everything registers get-roots-list after the handshake and
    // announces it with tools/list_changed.
    assert!(
        wait_until(LONG, || hub.tools().iter().any(|t| t.name == "get-roots-list")).await,
        "get-roots-list never appeared"
    );
    let out = hub.call_tool("get-roots-list", Map::new()).await.unwrap();
    let root = url::Url::from_directory_path(work.path()).unwrap().to_string();
    assert!(out.text.contains(&root), "{root} not in {}", out.text);
    hub.shutdown().await;
}

#[tokio::test]
async fn server_everything_update_becomes_one_event_with_fresh_contents() {
    let (tx, mut rx) = channel();
    let uri = "demo://resource/dynamic/text/1";
    let subs = [subscription(uri, Duration::from_millis(300), POLL)];
    let hub = McpHub::start(&[server_everything("everything")], &subs, tx).await;
    hub.call_tool("toggle-subscriber-updates", Map::new()).await.unwrap();
    let event = next_event(&mut rx, LONG).await.expect("an update event");
    assert_eq!(event.uri, uri);
    assert_eq!(event.server, "everything");
    assert_eq!(event.subscription, uri);
    assert!(
        event
            .contents
            .starts_with("Resource 1: This is a plaintext resource created at"),
        "{}",
        event.contents
    );
    // The next simulated update comes 5 s later: nothing else in between.
    assert!(next_event(&mut rx, Duration::from_secs(3)).await.is_none());
    hub.shutdown().await;
}

#[tokio::test]
async fn mcp_watch_file_write_becomes_one_event_with_fresh_contents() {
    let work = tempfile::tempdir().unwrap();
    let inbox = work.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let file = inbox.join("note.md");
    std::fs::write(&file, "old").unwrap();
    let uri = file_uri(&file);
    let (tx, mut rx) = channel();
    let subs = [subscription(&uri, Duration::from_millis(100), POLL)];
    let hub = McpHub::start(&[mcp_watch("watch", &inbox, 25)], &subs, tx).await;
    assert_eq!(hub.servers()[0].protocol.as_deref(), Some("2026-07-28"));
    std::fs::write(&file, "fresh contents").unwrap();
    let event = next_event(&mut rx, LONG).await.expect("an update event");
    assert_eq!(event.uri, uri);
    assert_eq!(event.contents, "fresh contents");
    assert!(next_event(&mut rx, Duration::from_secs(1)).await.is_none());
    hub.shutdown().await;
}

#[tokio::test]
async fn burst_of_50_writes_yields_a_bounded_number_of_events_never_zero() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("burst.txt");
    std::fs::write(&file, "start").unwrap();
    let uri = file_uri(&file);
    let (tx, mut rx) = channel();
    let subs = [subscription(&uri, Duration::from_millis(200), POLL)];
    let hub = McpHub::start(&[mcp_watch("watch", work.path(), 25)], &subs, tx).await;
    for i in 0..50 {
        std::fs::write(&file, format!("write {i}")).unwrap();
    }
    let events = events_until_quiet(&mut rx, Duration::from_secs(2), LONG).await;
    assert!(!events.is_empty(), "a burst must fire at least once");
    assert!(events.len() <= 5, "{} events for one burst", events.len());
    assert_eq!(events.last().unwrap().contents, "write 49");
    hub.shutdown().await;
}

#[tokio::test]
async fn glob_subscription_fires_for_new_files_and_their_updates_only() {
    let work = tempfile::tempdir().unwrap();
    let inbox = work.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::write(inbox.join("existing.md"), "already here").unwrap();
    let pattern = format!("{}/*.md", file_uri(&inbox));
    let (tx, mut rx) = channel();
    let subs = [subscription(&pattern, Duration::from_millis(100), POLL)];
    let hub = McpHub::start(&[mcp_watch("watch", &inbox, 25)], &subs, tx).await;
    // Existing files do not fire at start.
    assert!(next_event(&mut rx, Duration::from_millis(500)).await.is_none());

    let dropped = inbox.join("task.md");
    std::fs::write(&dropped, "please summarize").unwrap();
    let event = next_event(&mut rx, LONG).await.expect("event for the new file");
    assert_eq!(event.uri, file_uri(&dropped));
    assert_eq!(event.subscription, pattern);
    assert_eq!(event.contents, "please summarize");
    assert!(next_event(&mut rx, Duration::from_millis(800)).await.is_none());

    std::fs::write(&dropped, "changed my mind").unwrap();
    let event = next_event(&mut rx, LONG).await.expect("event for the update");
    assert_eq!(event.contents, "changed my mind");

    std::fs::write(inbox.join("ignored.txt"), "not markdown").unwrap();
    std::fs::create_dir(inbox.join("sub")).unwrap();
    std::fs::write(inbox.join("sub/deep.md"), "not in this directory").unwrap();
    assert!(next_event(&mut rx, Duration::from_secs(1)).await.is_none());
    hub.shutdown().await;
}

#[tokio::test]
async fn tool_subscription_fires_on_change_and_not_otherwise() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("state.txt"), "idle").unwrap();
    let uri = "tool://read_file/?path=state.txt";
    let (tx, mut rx) = channel();
    let subs = [subscription(uri, NO_DEBOUNCE, Duration::from_millis(100))];
    let hub = McpHub::start(&[mcp_watch("watch", work.path(), 25)], &subs, tx).await;
    // Many polls, same result: nothing fires.
    assert!(next_event(&mut rx, Duration::from_secs(1)).await.is_none());
    std::fs::write(work.path().join("state.txt"), "busy").unwrap();
    let event = next_event(&mut rx, LONG).await.expect("event on change");
    assert_eq!(event.uri, uri);
    assert_eq!(event.subscription, uri);
    assert_eq!(event.server, "watch");
    assert_eq!(event.contents, "busy");
    assert!(next_event(&mut rx, Duration::from_secs(1)).await.is_none());
    hub.shutdown().await;
}

#[tokio::test]
async fn killed_server_reconnects_and_resubscribes() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("watched.txt");
    std::fs::write(&file, "before").unwrap();
    // The server starts only while the marker exists, so the outage can be
    // held open long enough to observe a tool call failing.
    let marker = work.path().join("allow-start");
    std::fs::write(&marker, "").unwrap();
    let script = format!(
        "test -f '{}' || exit 1; exec '{}' mcp-watch '{}' --debounce-ms 25",
        marker.display(),
        agentd_bin().display(),
        work.path().display()
    );
    let uri = file_uri(&file);
    let (tx, mut rx) = channel();
    let subs = [subscription(&uri, Duration::from_millis(50), POLL)];
    let hub = McpHub::start(&[shell_server("watch", &script)], &subs, tx).await;
    let first = hub.servers()[0].clone();
    let pid = first.pid.expect("server pid");
    assert_eq!(first.connects, 1);

    std::fs::remove_file(&marker).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(LONG, || !hub.servers()[0].connected).await);
    let err = hub
        .call_tool("read_file", args(json!({"path": "watched.txt"})))
        .await
        .unwrap_err();
    assert!(matches!(err, McpError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("not connected"), "{err}");

    std::fs::write(&marker, "").unwrap();
    assert!(
        wait_until(LONG, || hub.servers()[0].connects == 2 && hub.servers()[0].connected).await,
        "no reconnect: {:?}",
        hub.servers()
    );
    assert_ne!(hub.servers()[0].pid, Some(pid));
    assert!(!alive(pid));
    // Resubscribed: an update on the new connection fires.
    std::fs::write(&file, "after the restart").unwrap();
    let event = next_event(&mut rx, LONG).await.expect("event after reconnect");
    assert_eq!(event.contents, "after the restart");
    let out = hub
        .call_tool("read_file", args(json!({"path": "watched.txt"})))
        .await
        .unwrap();
    assert_eq!(out.text, "after the restart");
    hub.shutdown().await;
}

#[tokio::test]
async fn killed_server_everything_reconnects_and_resubscribes() {
    let (tx, mut rx) = channel();
    let uri = "demo://resource/dynamic/text/2";
    let subs = [subscription(uri, Duration::from_millis(100), POLL)];
    let hub = McpHub::start(&[server_everything("everything")], &subs, tx).await;
    let pid = hub.servers()[0].pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(LONG, || hub.servers()[0].connects == 2 && hub.servers()[0].connected).await,
        "no reconnect: {:?}",
        hub.servers()
    );
    // A fresh server process knows nothing: updates start only when asked,
    // and reach us only if we subscribed again.
    hub.call_tool("toggle-subscriber-updates", Map::new()).await.unwrap();
    let event = next_event(&mut rx, LONG).await.expect("event after reconnect");
    assert_eq!(event.uri, uri);
    assert!(event.contents.starts_with("Resource 2:"), "{}", event.contents);
    hub.shutdown().await;
}

#[tokio::test]
async fn shutdown_leaves_no_server_process_behind() {
    let work = tempfile::tempdir().unwrap();
    let (tx, _rx) = channel();
    let subs = [subscription("demo://resource/dynamic/text/1", NO_DEBOUNCE, POLL)];
    let hub = McpHub::start(
        &[server_everything("everything"), mcp_watch("watch", work.path(), 25)],
        &subs,
        tx,
    )
    .await;
    // With its update timer running, server-everything ignores stdin EOF.
    hub.call_tool("toggle-subscriber-updates", Map::new()).await.unwrap();
    let pids: Vec<u32> = hub.servers().iter().map(|s| s.pid.expect("pid")).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    hub.shutdown().await;
    for pid in pids {
        assert!(!alive(pid), "server {pid} survived shutdown");
    }
}

#[tokio::test]
async fn non_json_stdout_lines_are_reported_and_tolerated() {
    let work = tempfile::tempdir().unwrap();
    let script = format!(
        "echo 'proxy: starting the real server'; exec '{}' mcp-watch '{}'",
        agentd_bin().display(),
        work.path().display()
    );
    let (tx, _rx) = channel();
    let hub = McpHub::start(&[shell_server("noisy", &script)], &[], tx).await;
    let status = &hub.servers()[0];
    assert!(status.connected, "{status:?}");
    assert_eq!(status.noise_lines, 1);
    assert!(hub.tools().iter().any(|t| t.name == "list_files"));
    hub.shutdown().await;
}

#[tokio::test]
async fn stdio_server_gets_a_cleared_environment_plus_declared_env() {
    let (tx, _rx) = channel();
    let spec = with_env(server_everything("everything"), "AGENTD_DECLARED", "yes");
    let hub = McpHub::start(&[spec], &[], tx).await;
    let out = hub.call_tool("get-env", Map::new()).await.unwrap();
    let env: Value = serde_json::from_str(&out.text).unwrap();
    assert_eq!(env["AGENTD_DECLARED"], "yes");
    assert!(env.get("PATH").is_some(), "PATH is passed through");
    // cargo sets this for the test process; it must not leak.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    assert!(env.get("CARGO_MANIFEST_DIR").is_none(), "{env}");
    hub.shutdown().await;
}

#[tokio::test]
async fn denied_env_key_is_refused_with_its_name() {
    let work = tempfile::tempdir().unwrap();
    let (tx, _rx) = channel();
    let spec = with_env(mcp_watch("watch", work.path(), 25), "LD_PRELOAD", "/tmp/evil.so");
    let hub = McpHub::start(&[spec], &[], tx).await;
    let status = &hub.servers()[0];
    assert!(!status.connected);
    assert!(status.pid.is_none());
    assert!(
        status.last_error.as_deref().unwrap_or("").contains("LD_PRELOAD"),
        "{status:?}"
    );
    assert!(hub.tools().is_empty());
    hub.shutdown().await;
}

#[tokio::test]
async fn mcp_watch_tools_refuse_paths_outside_its_directory() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("box");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(work.path(), dir.join("up")).unwrap();
    let (tx, _rx) = channel();
    let hub = McpHub::start(&[mcp_watch("watch", &dir, 25)], &[], tx).await;
    let ok = hub
        .call_tool("write_file", args(json!({"path": "sub/a.txt", "content": "inside"})))
        .await
        .unwrap();
    assert!(!ok.is_error, "{}", ok.text);
    assert_eq!(std::fs::read_to_string(dir.join("sub/a.txt")).unwrap(), "inside");
    let listed = hub.call_tool("list_files", Map::new()).await.unwrap();
    assert!(listed.text.contains("sub/a.txt"), "{}", listed.text);

    for path in ["../escape.txt", "up/escape.txt", "/tmp/escape.txt"] {
        let out = hub
            .call_tool("write_file", args(json!({"path": path, "content": "x"})))
            .await
            .unwrap();
        assert!(out.is_error, "{path}: {}", out.text);
        assert!(out.text.contains("outside"), "{}", out.text);
    }
    assert!(!work.path().join("escape.txt").exists());
    let read = hub
        .call_tool("read_file", args(json!({"path": "/etc/passwd"})))
        .await
        .unwrap();
    assert!(read.is_error);
    hub.shutdown().await;
}

/// What sandboxed code could plant in a watched workdir: links that lead
/// out (a directory and a file) and a fifo. mcp-watch follows none of them
/// out and never waits on the fifo; the controls show a path-based read and
/// write would have gone through.
#[tokio::test]
async fn mcp_watch_tools_refuse_planted_links_out_and_special_files() {
    let work = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "outside").unwrap();
    std::os::unix::fs::symlink(outside.path(), work.path().join("out")).unwrap();
    std::os::unix::fs::symlink(&secret, work.path().join("notes.txt")).unwrap();
    nix::unistd::mkfifo(
        &work.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::write(work.path().join("mine.txt"), "inside").unwrap();
    std::os::unix::fs::symlink("mine.txt", work.path().join("alias.txt")).unwrap();
    // The controls: by name, both links lead out.
    assert_eq!(
        std::fs::read_to_string(work.path().join("notes.txt")).unwrap(),
        "outside"
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("out/secret.txt")).unwrap(),
        "outside"
    );

    let (tx, _rx) = channel();
    let hub = McpHub::start(&[mcp_watch("watch", work.path(), 25)], &[], tx).await;
    // A link that stays inside is fine.
    let alias = hub
        .call_tool("read_file", args(json!({"path": "alias.txt"})))
        .await
        .unwrap();
    assert!(!alias.is_error, "{}", alias.text);
    assert_eq!(alias.text, "inside");

    for path in ["notes.txt", "out/secret.txt", "out/new.txt"] {
        let read = hub.call_tool("read_file", args(json!({"path": path}))).await.unwrap();
        assert!(read.is_error, "read {path}: {}", read.text);
        assert!(read.text.contains("outside"), "read {path}: {}", read.text);
        let uri = file_uri(&work.path().join(path));
        let read = hub.call_tool("read_file", args(json!({"path": uri}))).await.unwrap();
        assert!(
            read.is_error && read.text.contains("outside"),
            "read {uri}: {}",
            read.text
        );
        let write = hub
            .call_tool("write_file", args(json!({"path": path, "content": "planted"})))
            .await
            .unwrap();
        assert!(write.is_error, "write {path}: {}", write.text);
        assert!(write.text.contains("outside"), "write {path}: {}", write.text);
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "outside");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing created outside"
    );
    let listed = hub.call_tool("list_files", args(json!({"path": "out"}))).await.unwrap();
    assert!(listed.is_error && listed.text.contains("outside"), "{}", listed.text);
    let listed = hub.call_tool("list_files", Map::new()).await.unwrap();
    assert!(!listed.text.contains("secret"), "{}", listed.text);

    for tool in ["read_file", "write_file"] {
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            hub.call_tool(tool, args(json!({"path": "fifo", "content": "x"}))),
        )
        .await
        .expect("a fifo is never waited on")
        .unwrap();
        assert!(out.is_error, "{tool} fifo: {}", out.text);
        assert!(out.text.contains("refused"), "{tool} fifo: {}", out.text);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{tool}: never waits on a fifo"
        );
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn streamable_http_server_tools_and_updates_work() {
    let server = start_http_everything().await;
    let (tx, mut rx) = channel();
    let uri = "demo://resource/dynamic/text/3";
    let subs = [subscription(uri, Duration::from_millis(100), POLL)];
    let hub = McpHub::start(&[http("remote", &server.url)], &subs, tx).await;
    assert!(hub.servers()[0].connected, "{:?}", hub.servers());
    let out = hub
        .call_tool("echo", args(json!({"message": "over http"})))
        .await
        .unwrap();
    assert_eq!(out.text, "Echo: over http");
    hub.call_tool("toggle-subscriber-updates", Map::new()).await.unwrap();
    let event = next_event(&mut rx, LONG).await.expect("update over HTTP");
    assert_eq!(event.uri, uri);
    assert_eq!(event.server, "remote");
    hub.shutdown().await;
}

#[tokio::test]
async fn every_write_in_a_slow_sequence_fires_with_its_own_contents() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("seq.txt");
    std::fs::write(&file, "start").unwrap();
    let uri = file_uri(&file);
    let (tx, mut rx) = channel();
    let subs = [subscription(&uri, NO_DEBOUNCE, POLL)];
    let hub = McpHub::start(&[mcp_watch("watch", work.path(), 0)], &subs, tx).await;
    for i in 0..200 {
        let expected = format!("write {i}");
        std::fs::write(&file, &expected).unwrap();
        // Several inotify events per write may fire several times; the
        // last one always carries the fresh contents.
        let mut seen = Vec::new();
        loop {
            let Some(event) = next_event(&mut rx, LONG).await else {
                panic!("write {i} never fired; saw {seen:?}");
            };
            if event.contents == expected {
                break;
            }
            seen.push(event.contents);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        while rx.try_recv().is_ok() {}
    }
    hub.shutdown().await;
}

/// A plain `initialize` client (what most MCP clients are today) talking to
/// mcp-watch: legacy `resources/subscribe`, updates and `list_changed`.
#[tokio::test]
#[allow(deprecated)] // resources/subscribe is the legacy API on purpose
async fn mcp_watch_serves_legacy_resources_subscribe_and_list_changed() {
    use rmcp::ServiceExt;
    use rmcp::model::{ReadResourceRequestParams, ResourceUpdatedNotificationParam, SubscribeRequestParams};
    use rmcp::service::{NotificationContext, RoleClient};

    struct Collector(mpsc::UnboundedSender<String>);
    impl rmcp::ClientHandler for Collector {
        async fn on_resource_updated(&self, p: ResourceUpdatedNotificationParam, _: NotificationContext<RoleClient>) {
            let _ = self.0.send(p.uri);
        }
        async fn on_resource_list_changed(&self, _: NotificationContext<RoleClient>) {
            let _ = self.0.send("list_changed".into());
        }
    }

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("a.txt");
    std::fs::write(&file, "one").unwrap();
    let uri = file_uri(&file);
    let mut cmd = tokio::process::Command::new(agentd_bin());
    cmd.arg("mcp-watch").arg(work.path()).args(["--debounce-ms", "25"]);
    let (transport, _stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Collector(tx).serve(transport).await.unwrap();
    let version = client.peer().peer_info().unwrap().protocol_version.clone();
    assert!(version.has_initialize(), "{version}");

    let listed = client.peer().list_all_resources().await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(),
        [uri.as_str()]
    );
    client
        .peer()
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    std::fs::write(&file, "two").unwrap();
    let got = tokio::time::timeout(LONG, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, uri);
    let read = client
        .peer()
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&read.contents[0]).unwrap()["text"], "two");

    std::fs::write(work.path().join("new.txt"), "appeared").unwrap();
    let mut saw_list_changed = false;
    while let Ok(Some(note)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        if note == "list_changed" {
            saw_list_changed = true;
            break;
        }
    }
    assert!(saw_list_changed);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn restarted_http_server_gets_a_new_session_and_subscriptions() {
    let mut server = start_http_everything().await;
    let port: u16 = server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    let (tx, mut rx) = channel();
    let uri = "demo://resource/dynamic/text/4";
    let subs = [subscription(uri, Duration::from_millis(100), POLL)];
    let hub = McpHub::start(&[http("remote", &server.url)], &subs, tx).await;
    assert_eq!(hub.servers()[0].connects, 1);
    server.child.kill().await.unwrap();
    let _restarted = start_http_everything_on(port).await;
    // The old session is gone with the old process: the next request fails,
    // the hub reconnects and subscribes again on a new session.
    let _ = hub.call_tool("echo", args(json!({"message": "probe"}))).await;
    assert!(
        wait_until(LONG, || hub.servers()[0].connects >= 2 && hub.servers()[0].connected).await,
        "no reconnect: {:?}",
        hub.servers()
    );
    hub.call_tool("toggle-subscriber-updates", Map::new()).await.unwrap();
    let event = next_event(&mut rx, LONG).await.expect("update on the new session");
    assert_eq!(event.uri, uri);
    hub.shutdown().await;
}

#[tokio::test]
async fn tool_call_in_flight_when_the_server_dies_fails_clearly() {
    let (tx, _rx) = channel();
    let hub = McpHub::start(&[server_everything("everything")], &[], tx).await;
    let pid = hub.servers()[0].pid.expect("pid");
    let call = hub.call_tool(
        "trigger-long-running-operation",
        args(json!({"duration": 30, "steps": 3})),
    );
    let kill = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    let (result, ()) = tokio::time::timeout(LONG, async { tokio::join!(call, kill) })
        .await
        .expect("the call ends");
    let err = result.unwrap_err();
    assert!(matches!(err, McpError::Lost { .. }), "{err}");
    assert!(err.to_string().contains("trigger-long-running-operation"), "{err}");
    hub.shutdown().await;
}

// ---- field compatibility (issue 13) ----

/// Python agentd's facts.yaml shape: `server-filesystem ./output/`. With no
/// `roots:` configured the server keeps the directory its command line
/// names (a client that offers roots makes it replace them).
#[tokio::test]
async fn server_filesystem_keeps_its_command_line_directories_without_roots() {
    let work = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let (tx, _rx) = channel();
    let hub = McpHub::start(&[server_filesystem("fs", &[output.path()])], &[], tx).await;
    // The server asks for roots after the handshake, if the client offers
    // them: give it the time it takes to apply an answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let allowed = hub
        .call_tool("list_allowed_directories", Map::new())
        .await
        .unwrap()
        .text;
    let output_dir = output.path().canonicalize().unwrap().display().to_string();
    assert!(allowed.contains(&output_dir), "{allowed}");
    let target = output.path().join("facts.txt");
    let out = hub
        .call_tool(
            "write_file",
            args(json!({"path": target.display().to_string(), "content": "a fact"})),
        )
        .await
        .unwrap();
    assert!(
        !out.is_error,
        "write into the command-line directory refused: {}",
        out.text
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "a fact");
    hub.shutdown().await;

    // Opted in: the configured roots are what the server allows.
    let (tx, _rx) = channel();
    let mut fs = server_filesystem("fs", &[output.path()]);
    fs.roots = vec![work.path().to_path_buf()];
    let hub = McpHub::start(&[fs], &[], tx).await;
    let allowed = wait_for_text(&hub, "list_allowed_directories", |t| {
        t.contains(&work.path().canonicalize().unwrap().display().to_string())
    })
    .await;
    assert!(!allowed.contains(&output.path().display().to_string()), "{allowed}");
    hub.shutdown().await;
}

/// `@modelcontextprotocol/server-memory`: tools listed and called.
#[tokio::test]
async fn server_memory_tools_work() {
    let work = tempfile::tempdir().unwrap();
    let (tx, _rx) = channel();
    let file = work.path().join("memory.jsonl");
    let hub = McpHub::start(&[server_memory("memory", &file)], &[], tx).await;
    let entity =
        json!({"entities": [{"name": "agentd", "entityType": "project", "observations": ["written in Rust"]}]});
    let out = hub.call_tool("create_entities", args(entity)).await.unwrap();
    assert!(!out.is_error, "{}", out.text);
    let read = hub.call_tool("read_graph", Map::new()).await.unwrap();
    assert!(read.text.contains("written in Rust"), "{}", read.text);
    hub.shutdown().await;
}

/// Calls `tool` until its text satisfies `ok` (roots arrive asynchronously).
async fn wait_for_text(hub: &McpHub, tool: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let text = hub
            .call_tool(tool, Map::new())
            .await
            .map(|o| o.text)
            .unwrap_or_default();
        if ok(&text) || std::time::Instant::now() > deadline {
            assert!(ok(&text), "{tool} never said what was expected: {text}");
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
