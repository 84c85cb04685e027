//! `agentd snapshot`: workspace archives through a running agentd and
//! offline, and the archive format itself.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use agentd::snapshots;

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

/// A workdir as agentd makes one: with agentd as root, owned by the
/// agent's own user (restore gives everything to the workdir's owner).
fn archive_dir() -> tempfile::TempDir {
    let d = tempdir();
    crate::support::give_to_sandbox_user(d.path());
    d
}

#[test]
fn workspace_restore_puts_the_workdir_back_exactly() {
    let wd = archive_dir();
    let d = wd.path();
    std::fs::create_dir_all(d.join("src/deep")).unwrap();
    std::fs::write(d.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(d.join("src/deep/data.bin"), [0u8, 159, 146, 150, 255]).unwrap();
    std::fs::write(d.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(d.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(d.join("ro")).unwrap();
    std::fs::write(d.join("ro/frozen"), "x").unwrap();
    std::fs::set_permissions(d.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", d.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", d.join("abs-link")).unwrap();
    std::fs::create_dir(d.join("empty")).unwrap();
    let before = tree(d);

    let archive = snapshots::archive::archive(d).unwrap();

    std::fs::write(d.join("src/main.rs"), "changed").unwrap();
    std::fs::remove_file(d.join("link")).unwrap();
    std::fs::write(d.join("link"), "now a file").unwrap();
    std::fs::write(d.join("added.txt"), "new").unwrap();
    std::fs::create_dir_all(d.join("added-dir/sub")).unwrap();
    std::fs::remove_dir_all(d.join("src/deep")).unwrap();
    std::fs::set_permissions(d.join("run.sh"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_dir(d.join("empty")).unwrap();
    assert_ne!(tree(d), before);

    snapshots::archive::restore(d, &archive).unwrap();
    assert_eq!(tree(d), before);
    // Restoring twice is the same.
    snapshots::archive::restore(d, &archive).unwrap();
    assert_eq!(tree(d), before);
    std::fs::set_permissions(d.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn workspace_restore_of_a_corrupt_archive_leaves_the_workdir_alone() {
    let wd = archive_dir();
    std::fs::write(wd.path().join("keep"), "me").unwrap();
    let mut archive = snapshots::archive::archive(wd.path()).unwrap();
    archive.truncate(700);
    archive[600] ^= 0xff;
    archive[100] ^= 0xff;
    assert!(snapshots::archive::restore(wd.path(), &archive).is_err());
    assert_eq!(std::fs::read_to_string(wd.path().join("keep")).unwrap(), "me");
}

/// Every entry under `root`: relative path, kind, mode, content or link target.
fn tree(root: &Path) -> Vec<(PathBuf, String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push((
                    rel,
                    "link".into(),
                    0,
                    std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes(),
                ));
            } else if m.is_dir() {
                out.push((rel, "dir".into(), mode, Vec::new()));
                stack.push(p);
            } else {
                let mut content = Vec::new();
                std::fs::File::open(&p).unwrap().read_to_end(&mut content).unwrap();
                out.push((rel, "file".into(), mode, content));
            }
        }
    }
    out.push((
        PathBuf::from("."),
        "dir".into(),
        std::fs::metadata(root).unwrap().permissions().mode() & 0o7777,
        vec![],
    ));
    out.sort();
    out
}
