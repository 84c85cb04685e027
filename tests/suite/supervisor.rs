//! The supervisor against the real binary and real signals.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use agentd::control::Request;
use nix::sys::signal::Signal;

use crate::support::daemon::Daemon;
use crate::support::{agentd, alive, stderr, stdout, tempdir, wait_for, write};

const FAST_RESTART: &str = "restart: {backoff_min: 20ms, backoff_max: 100ms, burst: 3, interval: 30s}";

fn config(dir: &std::path::Path, agents: &[&str]) -> std::path::PathBuf {
    let mut s =
        format!("include: [\"agents/*.yaml\"]\nshutdown_grace: 2s\ndefaults:\n  model: m\n  {FAST_RESTART}\nagents:\n");
    for a in agents {
        s.push_str(&format!("  - name: {a}\n"));
    }
    write(dir, "agentd.yaml", &s)
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
}

#[test]
fn kill_9_child_restarts_with_new_pid() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["alpha", "beta"]);
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let old = d.running_pid("alpha");
    let beta = d.running_pid("beta");
    kill9(old);
    let s = d.wait_status("alpha to come back", |s| {
        s.iter()
            .any(|a| a.name == "alpha" && a.state == "running" && a.pid.is_some_and(|p| p != old))
    });
    let alpha = s.iter().find(|a| a.name == "alpha").expect("alpha");
    assert_eq!(alpha.restarts, 1);
    assert_eq!(
        alpha.last_error.as_deref(),
        Some("agent process killed by signal 9 (SIGKILL)")
    );
    assert_eq!(d.running_pid("beta"), beta, "the other agent is untouched");
}

#[test]
fn crash_looping_agent_hits_its_start_limit_while_others_keep_running() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["looper", "steady"]);
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let steady = d.running_pid("steady");
    // Burst 3: the first start plus two restarts, then the limit.
    for _ in 0..3 {
        let pid = d.running_pid("looper");
        kill9(pid);
        d.wait_status("looper to notice the kill", |s| {
            s.iter().any(|a| a.name == "looper" && a.pid != Some(pid))
        });
    }
    let s = d.wait_status("looper to fail", |s| {
        s.iter().any(|a| a.name == "looper" && a.state == "failed")
    });
    let looper = s.iter().find(|a| a.name == "looper").expect("looper");
    assert!(looper.pid.is_none());
    let err = looper.last_error.as_deref().unwrap_or("");
    assert!(
        err.starts_with("start limit hit: 3 starts within 30s; last exit: killed by signal 9"),
        "{err}"
    );
    assert_eq!(d.running_pid("steady"), steady);

    // Failed agents stay down until started by hand, which clears the limit.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.agent("looper").map(|a| a.state), Some("failed".to_string()));
    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["start", "--state-dir", &sd, "looper"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    d.running_pid("looper");
}

#[test]
fn editing_one_agent_restarts_only_that_agent() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["stays"]);
    write(dir.path(), "agents/edited.yaml", "name: edited\nsystem_prompt: one\n");
    write(dir.path(), "agents/other.yaml", "name: other\n");
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let (stays, edited, other) = (d.running_pid("stays"), d.running_pid("edited"), d.running_pid("other"));
    // Save like an editor: write a new file, rename it over the old one.
    write(
        dir.path(),
        "agents/.edited.yaml.tmp",
        "name: edited\nsystem_prompt: two\n",
    );
    std::fs::rename(
        dir.path().join("agents/.edited.yaml.tmp"),
        dir.path().join("agents/edited.yaml"),
    )
    .expect("rename");
    d.wait_status("edited to restart", |s| {
        s.iter()
            .any(|a| a.name == "edited" && a.state == "running" && a.pid.is_some_and(|p| p != edited))
    });
    assert_eq!(d.running_pid("stays"), stays);
    assert_eq!(d.running_pid("other"), other);
}

#[test]
fn adding_and_removing_a_file_under_agents_starts_and_stops_its_agent() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["base"]);
    std::fs::create_dir_all(dir.path().join("agents")).expect("agents dir");
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let base = d.running_pid("base");
    write(dir.path(), "agents/newcomer.yaml", "name: newcomer\n");
    let pid = d.running_pid("newcomer");
    std::fs::remove_file(dir.path().join("agents/newcomer.yaml")).expect("rm");
    d.wait_status("newcomer to go", |s| !s.iter().any(|a| a.name == "newcomer"));
    assert!(
        wait_for(Duration::from_secs(10), || (!alive(pid)).then_some(())).is_some(),
        "its process ended"
    );
    assert_eq!(d.running_pid("base"), base);
}

#[test]
fn broken_edit_keeps_all_agents_running_and_reports_the_line() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["one", "two"]);
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let (one, two) = (d.running_pid("one"), d.running_pid("two"));
    write(dir.path(), "agents/bad.yaml", "name: three\nmodle: m\n");
    let log = wait_for(Duration::from_secs(10), || {
        let l = d.log_text();
        l.contains("agents/bad.yaml:2:1: modle: unknown key \"modle\"; did you mean \"model\"?")
            .then_some(l)
    });
    assert!(log.is_some(), "the error and its line are logged:\n{}", d.log_text());
    assert_eq!(d.running_pid("one"), one);
    assert_eq!(d.running_pid("two"), two);
    assert!(d.agent("three").is_none());
    // The CLI reload reports the same error and exits non-zero.
    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["reload", "--state-dir", &sd]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.yaml:2:1: modle"), "{}", stderr(&out));
}

#[test]
fn sigterm_exits_zero_and_leaves_no_process_behind() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["a", "b", "c"]);
    let mut d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let pids: Vec<u32> = ["a", "b", "c"].iter().map(|n| d.running_pid(n)).collect();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log_text());
    for pid in pids {
        assert!(!alive(pid), "agent process {pid} outlived agentd");
    }
    assert!(!d.socket().exists(), "the control socket is removed");
}

#[test]
fn sighup_and_agentd_reload_apply_config_changes() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["first"]);
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    d.running_pid("first");
    // Watching may be slow to fire on a busy machine; SIGHUP is explicit.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap_or_default() + "  - name: second\n",
    )
    .expect("edit");
    d.signal(Signal::SIGHUP);
    d.running_pid("second");
    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["reload", "--state-dir", &sd]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("unchanged [first, second]"), "{}", stdout(&out));
}

#[test]
fn control_socket_answers_and_survives_bad_requests() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let cfg = config(dir.path(), &["solo"]);
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let pid = d.running_pid("solo");
    let mode = std::fs::metadata(d.socket()).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut ask = |line: &str| -> serde_json::Value {
        s.write_all(format!("{line}\n").as_bytes()).expect("write");
        let mut out = String::new();
        r.read_line(&mut out).expect("read");
        serde_json::from_str(&out).expect("json response")
    };
    let v = ask("this is not json");
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap_or("").starts_with("bad request"), "{v}");
    let v = ask(r#"{"method":"Explode"}"#);
    assert_eq!(v["ok"], false);
    let v = ask(r#"{"method":"Stop","agent":"nobody"}"#);
    assert_eq!(v["error"], "no agent named \"nobody\"");
    let v = ask(r#"{"method":"DescribeInterface"}"#);
    assert_eq!(v["result"]["version"], 3);
    for m in [
        "Status",
        "Send",
        "Pause",
        "Resume",
        "Cancel",
        "Approvals",
        "Approve",
        "Deny",
        "Spend",
        "Metrics",
    ] {
        assert!(v["result"]["methods"][m].is_object(), "{m} is described");
    }
    let v = ask(r#"{"method":"Health"}"#);
    assert_eq!(v["result"]["ok"], true);
    assert_eq!(d.running_pid("solo"), pid, "bad requests changed nothing");

    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["stop", "--state-dir", &sd, "solo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    d.wait_status("solo to stop", |s| {
        s.iter().any(|a| a.name == "solo" && a.state == "stopped")
    });
    assert!(wait_for(Duration::from_secs(10), || (!alive(pid)).then_some(())).is_some());
    let out = agentd(&["restart", "--state-dir", &sd, "solo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(d.running_pid("solo"), pid);
    let out = agentd(&["status", "--state-dir", &sd, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["agents"][0]["name"], "solo");
    assert!(d.request(&Request::Health).ok);
}

#[test]
fn a_second_agentd_on_the_same_state_dir_is_refused() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["x"]);
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    d.running_pid("x");
    let sd = d.state_dir.to_str().unwrap_or_default().to_owned();
    let out = agentd(&["--state-dir", &sd, cfg.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another agentd is already running"),
        "{}",
        stderr(&out)
    );
    assert!(d.request(&Request::Health).ok, "the first one is unaffected");
}

/// A fake systemd: receives sd_notify datagrams on NOTIFY_SOCKET.
/// systemd reads its notify socket; a receiver that stops reading must not
/// stop agentd. The socket's queue is filled first, so every notification
/// agentd sends finds it full.
#[test]
fn a_notify_socket_that_is_never_read_does_not_freeze_the_supervisor() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["q1", "q2"]);
    let sock_path = dir.path().join("notify.sock");
    let _sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let filler = UnixDatagram::unbound().expect("socket");
    filler.set_nonblocking(true).expect("nonblocking");
    let mut queued = 0;
    while filler.send_to(b"STATUS=filler", &sock_path).is_ok() {
        queued += 1;
        assert!(queued < 1_000_000, "the queue never filled");
    }
    // The control: a sender that waits (as agentd's did) does not get through.
    filler.set_nonblocking(false).expect("blocking");
    filler
        .set_write_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let blocked = filler.send_to(b"READY=1", &sock_path).expect_err("a full queue");
    assert_eq!(blocked.kind(), std::io::ErrorKind::WouldBlock, "{blocked}");

    // READY=1 is sent before the event loop serves requests: starting at all
    // (the control socket answering) shows agentd did not wait.
    let mut d = Daemon::start(
        &cfg,
        &dir.path().join("state"),
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap_or_default())],
    );
    d.wait_status("both agents running", |s| {
        s.iter().all(|a| a.state == "running") && s.len() == 2
    });
    // State changes send STATUS= lines: still answered.
    let before = d.running_pid("q1");
    let r = d.request(&Request::Restart { agent: "q1".into() });
    assert!(r.ok, "{r:?}");
    d.wait_status("q1 restarted and running", |s| {
        s.iter()
            .any(|a| a.name == "q1" && a.state == "running" && a.pid.is_some_and(|p| p != before))
    });
    let log = d.log_text();
    assert_eq!(log.matches("sd_notify failed").count(), 1, "said once:\n{log}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn notify_socket_sees_ready_reloading_stopping_and_watchdog() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["n1", "n2"]);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut d = Daemon::start(
        &cfg,
        &dir.path().join("state"),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap_or_default()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::<String>::new();
    let recv_until = |want: &str, seen: &mut Vec<String>| {
        let found = wait_for(Duration::from_secs(20), || {
            let mut buf = [0u8; 4096];
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            seen.iter().any(|m| m.lines().any(|l| l == want)).then_some(())
        });
        assert!(found.is_some(), "never saw {want}; saw {seen:?}");
    };
    recv_until("READY=1", &mut seen);
    let ready = seen.iter().find(|m| m.contains("READY=1")).cloned().unwrap_or_default();
    assert!(ready.contains("STATUS=2 agents: 2 running"), "{ready}");
    recv_until("WATCHDOG=1", &mut seen);
    d.signal(Signal::SIGHUP);
    recv_until("RELOADING=1", &mut seen);
    let reloading = seen
        .iter()
        .find(|m| m.contains("RELOADING=1"))
        .cloned()
        .unwrap_or_default();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    d.signal(Signal::SIGTERM);
    recv_until("STOPPING=1", &mut seen);
    assert_eq!(d.wait_exit(Duration::from_secs(15)).code(), Some(0));
    assert!(
        d.log_text().lines().filter(|l| l.contains("agent started")).count() == 2,
        "children never talk to NOTIFY_SOCKET themselves"
    );
}
