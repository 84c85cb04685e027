//! agentd under abuse (issue 12): hung children, a flooded control socket,
//! a damaged ledger, closed pipes. Each protection is shown against a
//! control in which the abuse would have worked.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentd::control::Request;
use agentd::ledger::{Ledger, Trigger};

use crate::support::daemon::Daemon;
use crate::support::{agentd, agentd_cmd, stderr, tempdir, write};

/// One agent with an unusable model (it runs, and fails any task it takes).
fn one_agent(dir: &Path, extra: &str) -> PathBuf {
    write(
        dir,
        "agentd.yaml",
        &format!(
            "shutdown_grace: 1s\ndefaults:\n  model: m\n  restart: {{backoff_min: 20ms, backoff_max: 100ms, burst: 5, interval: 30s}}\nagents:\n  - name: alpha\n{extra}"
        ),
    )
}

/// A pipe whose reading end is already closed: every write to the other
/// end fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r);
    w
}

#[test]
fn cli_printers_exit_quietly_into_a_closed_pipe() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let mut l = Ledger::open(&state.join(agentd::ledger::FILE_NAME)).expect("ledger");
    for i in 0..3 {
        let t = Trigger::Message {
            text: format!("hello {i}"),
            from: "test".into(),
        };
        l.enqueue("alpha", &t, None).expect("enqueue");
    }
    drop(l);
    let sd = state.to_str().unwrap_or_default();
    let cfg = one_agent(dir.path(), "");
    let cfg = cfg.to_str().unwrap_or_default();
    for args in [
        vec!["tasks", "--state-dir", sd],
        vec!["tasks", "--state-dir", sd, "--json"],
        vec!["show", "1", "--state-dir", sd],
        vec!["show", "1", "--state-dir", sd, "--json"],
        vec!["check", cfg],
    ] {
        // Control: with a pipe that is read, the command prints.
        let open = agentd(&args);
        assert!(
            open.status.success() && !open.stdout.is_empty(),
            "{args:?}: {}",
            stderr(&open)
        );
        let out = agentd_cmd(&args).stdout(closed_pipe()).output().expect("run agentd");
        assert!(
            out.status.success(),
            "{args:?} into a closed pipe: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn send_wait_to_a_paused_agent_answers_at_once() {
    let dir = tempdir();
    let cfg = one_agent(dir.path(), "");
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[]);
    d.running_pid("alpha");
    let sd = state.to_str().unwrap_or_default();
    d.request(&Request::Pause { agent: "alpha".into() });
    let started = Instant::now();
    let out = agentd(&["send", "--state-dir", sd, "alpha", "hi", "--wait", "--timeout", "60s"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(30), "waited {took:?} for a paused agent");
    assert!(
        stderr(&out).contains("not waiting: the agent is paused"),
        "{}",
        stderr(&out)
    );
    // The task is kept: it runs on resume.
    let r = d.request(&Request::Status);
    assert_eq!(r.result.unwrap_or_default()["agents"][0]["queued"], 1);
}
