//! The bubblewrap backend: turns a policy into a `bwrap` command line.
//!
//! bwrap gives what landlock cannot: a fresh network namespace (no UDP, no
//! DNS, no vsock), a private PID namespace (the timeout kills *every*
//! process, even ones that left our process group), a mount namespace that
//! shows only what the policy lists, and a tmpfs `/tmp`. The layout is:
//! read-only system binds, a fresh `/dev`, `/proc` and `/tmp`, the extra
//! writable paths, and the workdir bound writable at its own path so that
//! paths the model sees outside and inside agree.
//!
//! This module only builds arguments; it never runs anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::SandboxError;

/// Finds the `bwrap` executable.
pub fn find() -> Result<PathBuf, SandboxError> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/bin".into(), "/usr/local/bin".into(), "/bin".into()])
        .map(|dir| dir.join("bwrap"))
        .find(|p| p.is_file())
        .ok_or(SandboxError::BwrapMissing)
}

/// What the bwrap command line is built from.
#[derive(Debug)]
pub struct Layout<'a> {
    pub read_only: &'a [PathBuf],
    pub writable: &'a [PathBuf],
    pub workdir: &'a Path,
    pub network: bool,
    /// Inherited descriptors holding the seccomp programs bwrap installs
    /// just before it execs the command.
    pub seccomp_fds: &'a [i32],
}

/// Arguments for bwrap, ending with `--` and `argv`.
pub fn args(layout: &Layout<'_>, argv: &[String]) -> Result<Vec<OsString>, SandboxError> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&std::ffi::OsStr]| a.extend(items.iter().map(|s| s.to_os_string()));
    push(&[
        "--unshare-all".as_ref(),
        "--die-with-parent".as_ref(),
        "--new-session".as_ref(),
        "--cap-drop".as_ref(),
        "ALL".as_ref(),
    ]);
    if layout.network {
        push(&["--share-net".as_ref()]);
    }
    // The environment is bwrap's own, passed on: nothing secret on the
    // command line, where every local user can read it.
    let fds: Vec<String> = layout.seccomp_fds.iter().map(|fd| fd.to_string()).collect();
    for fd in &fds {
        push(&["--add-seccomp-fd".as_ref(), fd.as_ref()]);
    }
    // Read-only paths under /tmp (a skill directory or the tool bridge's
    // socket in a state dir there) are bound after the tmpfs, or it would
    // hide them; the rest now, before the writable binds.
    let (late, early): (Vec<&PathBuf>, Vec<&PathBuf>) = layout
        .read_only
        .iter()
        .filter(|p| !provided_by_bwrap(p) || p.starts_with("/tmp"))
        .partition(|p| p.starts_with("/tmp"));
    for p in early {
        match std::fs::symlink_metadata(p) {
            // Debian's /bin -> usr/bin: recreate the link instead of binding
            // its target a second time.
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(p).map_err(|source| SandboxError::Path {
                    path: p.clone(),
                    source,
                })?;
                push(&["--symlink".as_ref(), target.as_os_str(), p.as_os_str()]);
            }
            Ok(_) => push(&["--ro-bind".as_ref(), p.as_os_str(), p.as_os_str()]),
            // Same rule as landlock: a missing read-only path grants nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::Path {
                    path: p.clone(),
                    source,
                });
            }
        }
    }
    push(&[
        "--dev".as_ref(),
        "/dev".as_ref(),
        "--proc".as_ref(),
        "/proc".as_ref(),
        "--tmpfs".as_ref(),
        "/tmp".as_ref(),
    ]);
    for p in layout.writable {
        // Host paths under /tmp are bound over the tmpfs on purpose.
        if provided_by_bwrap(p) && !p.starts_with("/tmp") {
            continue;
        }
        push(&["--bind".as_ref(), p.as_os_str(), p.as_os_str()]);
    }
    push(&[
        "--bind".as_ref(),
        layout.workdir.as_os_str(),
        layout.workdir.as_os_str(),
    ]);
    for p in late {
        match std::fs::symlink_metadata(p) {
            Ok(_) => push(&["--ro-bind".as_ref(), p.as_os_str(), p.as_os_str()]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::Path {
                    path: p.clone(),
                    source,
                });
            }
        }
    }
    push(&["--chdir".as_ref(), layout.workdir.as_os_str(), "--".as_ref()]);
    a.extend(argv.iter().map(OsString::from));
    Ok(a)
}

/// `/dev`, `/proc` and `/tmp` are fresh inside bwrap; binding host paths
/// there would either be hidden by them or punch holes into them.
fn provided_by_bwrap(p: &Path) -> bool {
    ["/dev", "/proc", "/tmp"].iter().any(|root| p.starts_with(root))
}
