//! The `bwrap+landlock` backend's inner half: `agentd __sandbox-landlock`.
//!
//! Landlock forbids `mount(2)` to a restricted process, so it cannot be
//! applied before exec'ing bwrap; and its rules are tied to inodes, so the
//! ruleset for bwrap's own tmpfs `/tmp` can only be built inside the new
//! mount namespace. bwrap therefore runs this helper (the agentd binary
//! itself, bound read-only into the sandbox), which builds the ruleset for
//! the paths it is given, restricts itself — a single-purpose process, not
//! the daemon — and execs the real command. `no_new_privs` is already set
//! by the parent's pre-exec setup and inherited through bwrap.
//!
//! Command line: `agentd __sandbox-landlock [--best-effort] [--network]
//! [--ro PATH]... [--rw PATH]... -- CMD [ARG]...`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::SandboxError;
use super::landlock::{self, Allowed, Requirements};

/// The hidden subcommand the agentd binary must dispatch to [`main`].
pub const SUBCOMMAND: &str = "__sandbox-landlock";

/// Exit status when the helper cannot set up the sandbox (as a shell's
/// "cannot execute").
const EXIT_SETUP_FAILED: i32 = 126;

static HELPER_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Overrides the helper executable (default: the running executable,
/// which is agentd in production). Tests point it at the built agentd.
pub fn set_helper_exe(path: PathBuf) {
    let _ = HELPER_EXE.set(path);
}

pub(super) fn helper_exe() -> Result<PathBuf, SandboxError> {
    if let Some(p) = HELPER_EXE.get() {
        return Ok(p.clone());
    }
    std::env::current_exe().map_err(|source| SandboxError::Path {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })
}

/// The helper's command line for the inner half of a bwrap+landlock run.
pub(super) fn argv(
    helper: &std::path::Path,
    allowed: &Allowed,
    network: bool,
    best_effort: bool,
    command: &[String],
) -> Vec<String> {
    let mut a = vec![helper.display().to_string(), SUBCOMMAND.to_string()];
    if best_effort {
        a.push("--best-effort".into());
    }
    if network {
        a.push("--network".into());
    }
    for p in &allowed.read_only {
        a.push("--ro".into());
        a.push(p.display().to_string());
    }
    for p in &allowed.writable {
        a.push("--rw".into());
        a.push(p.display().to_string());
    }
    a.push("--".into());
    a.extend(command.iter().cloned());
    a
}

/// Runs the helper with the arguments after the subcommand. Only returns
/// (with an exit status) when something failed; on success it execs.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    match restrict_and_exec(args) {
        Ok(never) => match never {},
        Err(msg) => {
            eprintln!("agentd sandbox helper: {msg}");
            EXIT_SETUP_FAILED
        }
    }
}

enum Never {}

fn restrict_and_exec(args: impl IntoIterator<Item = OsString>) -> Result<Never, String> {
    use std::os::unix::process::CommandExt;

    let mut allowed = Allowed::default();
    let (mut network, mut best_effort) = (false, false);
    let mut it = args.into_iter();
    let mut command = Vec::new();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--best-effort") => best_effort = true,
            Some("--network") => network = true,
            Some("--ro") => allowed.read_only.push(it.next().ok_or("--ro needs a path")?.into()),
            Some("--rw") => allowed.writable.push(it.next().ok_or("--rw needs a path")?.into()),
            Some("--") => {
                command.extend(it.by_ref());
                break;
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    let Some((program, rest)) = command.split_first() else {
        return Err("no command after --".into());
    };
    let ruleset =
        landlock::build(&allowed, &Requirements::inside_namespaces(network), best_effort).map_err(|e| e.to_string())?;
    // This process exists only to be restricted and replaced by `program`.
    let status = ruleset.restrict_self().map_err(|e| e.to_string())?;
    if status.ruleset == ::landlock::RulesetStatus::NotEnforced && !best_effort {
        return Err("the kernel did not enforce the landlock ruleset".into());
    }
    let err = std::process::Command::new(program).args(rest).exec();
    Err(format!("exec {}: {err}", program.to_string_lossy()))
}
