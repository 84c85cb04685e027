//! `agentd snapshot`: workspace archives through a running agentd and offline.

use std::path::Path;

use crate::support::daemon::Daemon;
use crate::support::{agentd, stderr, stdout, tempdir, write};

fn sd(p: &Path) -> String {
    p.to_str().unwrap_or_default().to_owned()
}

#[test]
fn workspace_snapshot_restores_the_workdir_exactly_and_restarts_the_agent() {
    let dir = tempdir();
    let cfg = write(dir.path(), "agentd.yaml", "agents:\n  - {name: keeper, model: m}\n");
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[]);
    let pid = d.running_pid("keeper");
    let work = state.join("agents/keeper/work");
    write(&work, "notes/a.md", "original\n");
    std::os::unix::fs::symlink("notes/a.md", work.join("link")).expect("symlink");

    let out = agentd(&[
        "snapshot",
        "create",
        "--state-dir",
        &sd(&state),
        "keeper",
        "--label",
        "before",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("snapshot 1 of keeper: workspace"),
        "{}",
        stdout(&out)
    );

    write(&work, "notes/a.md", "changed\n");
    write(&work, "added.txt", "new\n");
    let out = agentd(&["snapshot", "restore", "--state-dir", &sd(&state), "keeper", "before"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    d.wait_status("keeper to restart", |s| {
        s.iter()
            .any(|a| a.state == "running" && a.pid.is_some_and(|p| p != pid))
    });
    assert_eq!(
        std::fs::read_to_string(work.join("notes/a.md")).unwrap_or_default(),
        "original\n"
    );
    assert!(!work.join("added.txt").exists(), "files added since are removed");
    assert_eq!(std::fs::read_link(work.join("link")).ok(), Some("notes/a.md".into()));

    let out = agentd(&["snapshot", "list", "--state-dir", &sd(&state), "keeper"]);
    assert!(
        stdout(&out).contains("workspace") && stdout(&out).contains("before"),
        "{}",
        stdout(&out)
    );
    let out = agentd(&["snapshot", "show", "--state-dir", &sd(&state), "keeper", "before"]);
    assert!(stdout(&out).contains("notes/a.md"), "{}", stdout(&out));
    let out = agentd(&["snapshot", "restore", "--state-dir", &sd(&state), "keeper", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("snapshot keeper/nope does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn snapshots_work_offline_when_no_agentd_runs() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let work = state.join("agents/solo/work");
    write(&work, "x.txt", "one\n");
    let out = agentd(&["snapshot", "create", "--state-dir", &sd(&state), "solo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    write(&work, "x.txt", "two\n");
    let out = agentd(&["snapshot", "restore", "--state-dir", &sd(&state), "solo", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(work.join("x.txt")).unwrap_or_default(), "one\n");
}
