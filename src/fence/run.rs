//! The fence runner: executes parsed blocks in order and reports each.
//!
//! `:execute` blocks run in the sandbox ([`crate::sandbox::run`]);
//! `:create` blocks are written here, in-process, after a path check: no
//! absolute paths, no `..`, and no symlink (existing in the workdir, at any
//! depth) that leads outside it. The sandbox is not needed for a write
//! this module can check itself, and doing it here keeps the file's owner
//! right. This module must never run model code outside the sandbox.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::sandbox::{self, RunOutcome, SandboxPolicy};

use super::parse::{Block, Span};

/// What happened to one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    Ran(RunOutcome),
    Created {
        path: PathBuf,
        bytes: usize,
    },
    /// Not run: refused path, sandbox error, unclosed or invalid block.
    NotRun {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceResult {
    /// 1-based position among the reply's blocks.
    pub index: usize,
    pub tag: String,
    pub span: Span,
    pub outcome: FenceOutcome,
}

impl FenceResult {
    /// The text the model reads back. Output was already capped (head and
    /// tail, with a note of what was cut) by the sandbox.
    pub fn render_for_model(&self) -> String {
        let head = format!("[block {} `{}` at line {}]", self.index, self.tag, self.span.line);
        match &self.outcome {
            FenceOutcome::Created { path, bytes } => {
                format!("{head} created {} ({bytes} bytes)\n", path.display())
            }
            FenceOutcome::NotRun { reason } => format!("{head} not run: {reason}\n"),
            FenceOutcome::Ran(o) => {
                let status = if let Some(reason) = &o.stopped {
                    reason.clone()
                } else if o.timed_out {
                    "timed out: killed with its children".to_string()
                } else {
                    match (o.exit_code, o.signal) {
                        (Some(c), _) => format!("exit code {c}"),
                        (None, Some(s)) => format!("killed by signal {s}"),
                        (None, None) => "no exit status".to_string(),
                    }
                };
                let mut s = format!(
                    "{head} {status}, duration {}, timed_out: {}{}\n",
                    fmt_duration(o.duration),
                    o.timed_out,
                    if o.truncated { ", output cut" } else { "" }
                );
                for (name, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
                    if text.is_empty() {
                        s.push_str(&format!("{name}: (empty)\n"));
                    } else {
                        s.push_str(&format!("{name}:\n{text}"));
                        if !text.ends_with('\n') {
                            s.push('\n');
                        }
                    }
                }
                s
            }
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Runs `blocks` in order under `policy` in `workdir`; `extra` adds
/// read-only paths and environment (skills directories, the tool bridge).
pub async fn execute(
    blocks: &[Block],
    policy: &SandboxPolicy,
    workdir: &Path,
    extra: &sandbox::Exposed,
) -> Vec<FenceResult> {
    let mut results = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let outcome = match block {
            Block::Execute { lang, code, .. } => match sandbox::run(policy, workdir, &lang.argv(code), extra).await {
                Ok(o) => FenceOutcome::Ran(o),
                Err(e) => FenceOutcome::NotRun {
                    reason: format!("sandbox: {e}"),
                },
            },
            Block::Create { path, content, .. } => match create(workdir, path, content) {
                Ok(p) => FenceOutcome::Created {
                    path: p,
                    bytes: content.len(),
                },
                Err(reason) => FenceOutcome::NotRun { reason },
            },
            Block::Unclosed { .. } => FenceOutcome::NotRun {
                reason: "the block is not closed (was the reply cut off?); close it and send it again".to_string(),
            },
            Block::Invalid { reason, .. } => FenceOutcome::NotRun { reason: reason.clone() },
        };
        results.push(FenceResult {
            index: i + 1,
            tag: block.tag(),
            span: block.span(),
            outcome,
        });
    }
    results
}

/// Writes `content` to `rel` inside `workdir`; returns the path relative
/// to the workdir. The error is a sentence for the model.
pub fn create(workdir: &Path, rel: &str, content: &str) -> Result<PathBuf, String> {
    let root = std::fs::canonicalize(workdir).map_err(|e| format!("workdir {}: {e}", workdir.display()))?;
    let target = resolve_inside(&root, rel)?;
    let parent = target.parent().ok_or_else(|| format!("{rel:?} names no file"))?;
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    // The parents were checked before they were created; check again in
    // case something swapped one for a symlink meanwhile.
    let real_parent = std::fs::canonicalize(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    if !real_parent.starts_with(&root) {
        return Err(format!("refused: {rel:?} leads outside the workdir"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .map_err(|e| format!("writing {rel}: {e}"))?;
    f.write_all(content.as_bytes())
        .map_err(|e| format!("writing {rel}: {e}"))?;
    give_to_workdir_owner(&root, &target);
    Ok(target.strip_prefix(&root).map(Path::to_path_buf).unwrap_or(target))
}

/// When agentd runs as root, sandboxed code runs as the workdir's owner
/// (see [`crate::sandbox::Identity`]): files written for it must be its.
fn give_to_workdir_owner(root: &Path, file: &Path) {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Ok(meta) = std::fs::metadata(root) else {
        return;
    };
    if meta.uid() == 0 {
        return;
    }
    let mut p = file.to_path_buf();
    while p != root && p.starts_with(root) {
        if let Err(e) = std::os::unix::fs::lchown(&p, Some(meta.uid()), Some(meta.gid())) {
            tracing::warn!(path = %p.display(), error = %e, "giving a created file to the workdir owner");
        }
        if !p.pop() {
            break;
        }
    }
}

/// Resolves `rel` under `root` (canonical) without ever leaving it.
fn resolve_inside(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() || rel.contains('\0') {
        return Err(format!("refused: {rel:?} is not a file name"));
    }
    let path = Path::new(rel);
    if path.is_absolute() {
        return Err(format!(
            "refused: {rel:?} is absolute; give a path relative to the workdir"
        ));
    }
    let comps: Vec<Component<'_>> = path.components().collect();
    if comps.iter().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("refused: {rel:?} contains `..`"));
    }
    let names: Vec<&std::ffi::OsStr> = comps
        .iter()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(*n),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return Err(format!("refused: {rel:?} names no file"));
    }
    let mut cur = root.to_path_buf();
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let next = cur.join(name);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                let real = std::fs::canonicalize(&next)
                    .map_err(|_| format!("refused: {rel:?} goes through a dangling symlink"))?;
                if !real.starts_with(root) {
                    return Err(format!(
                        "refused: {rel:?} goes through a symlink that leaves the workdir"
                    ));
                }
                cur = real;
            }
            Ok(m) if m.is_dir() && last => {
                return Err(format!("refused: {rel:?} is a directory"));
            }
            Ok(m) if !m.is_dir() && !last => {
                return Err(format!(
                    "refused: {rel:?}: {} is not a directory",
                    name.to_string_lossy()
                ));
            }
            Ok(_) => cur = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => cur = next,
            Err(e) => return Err(format!("{rel}: {e}")),
        }
    }
    Ok(cur)
}
