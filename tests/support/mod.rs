//! Shared test support: temp dirs, the agentd binary, process helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The agentd binary built for this test run.
pub fn agentd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agentd"))
}

/// Runs `agentd ARGS` to completion with a clean, predictable environment.
pub fn agentd(args: &[&str]) -> Output {
    agentd_cmd(args).output().expect("run agentd")
}

pub fn agentd_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(agentd_bin());
    c.args(args)
        .env_remove("AGENTD_STATE_DIR")
        .env_remove("AGENTD_HOME")
        .env_remove("NOTIFY_SOCKET")
        // The OpenAI SDK's variables route models (issue 13): the host's
        // must not reach tests, which set them where they mean to.
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_BASE")
        .env("RUST_LOG", "warn");
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `text` to `dir/name` (creating parents) and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create parent dirs");
    }
    std::fs::write(&p, text).expect("write file");
    p
}

/// A temporary directory others may traverse (not list): with agentd as
/// root, agents' own users must walk through it to their workdirs.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("agentd-test-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod tempdir");
    d
}

/// A workdir for sandboxed code outside /tmp (bwrap mounts a tmpfs there,
/// which would make "blocked" trivially true for paths under /tmp), others
/// may enter it, and as root it belongs to [`SANDBOX_UID`], as agentd gives
/// an agent's workdir to the agent's own user: sandboxed code never runs as
/// root.
pub fn sandbox_workdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    give_to_sandbox_user(d.path());
    d
}

/// A command that runs what follows as `uid` (gid the same) with only the
/// supplementary `groups` given (none: cleared), as a service user would.
pub fn as_user(uid: u32, groups: &[u32]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.arg("--");
    c
}

/// The unprivileged user tests run sandboxed code as when they call the
/// sandbox directly as root (agentd itself assigns agents their own).
pub const SANDBOX_UID: u32 = 64_998;

/// Gives `dir` to [`SANDBOX_UID`] when the tests run as root, as agentd
/// does with a workdir: sandboxed code never runs as root.
pub fn give_to_sandbox_user(dir: &Path) {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(SANDBOX_UID), Some(SANDBOX_UID)).expect("chown to the sandbox user");
    }
}

/// Polls `f` every 25 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state field follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

pub mod daemon;
pub mod http;
pub mod inbox;
pub mod llm_server;

pub mod mcp;
pub mod peers;
pub mod postgres;
pub mod procs;
pub use procs::children_of;
pub mod repl;
pub mod webdriver;

/// Logs to the test's captured output; `RUST_LOG` picks the level.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}
