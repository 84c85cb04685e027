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

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("agentd-test-")
        .tempdir()
        .expect("tempdir")
}
