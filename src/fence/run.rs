//! The fence runner: executes parsed blocks in order and reports each.
//!
//! `:execute` blocks run in the sandbox ([`crate::sandbox::run`]);
//! `:create` blocks are written here, in-process, after a path check: no
//! absolute paths, no `..`, and no symlink (existing in the workdir, at any
//! depth) that leads outside it. The sandbox is not needed for a write
//! this module can check itself, and doing it here keeps the file's owner
//! right. This module must never run model code outside the sandbox.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tracing::Instrument;

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
                // Refusals teach the model the policy.
                for c in &o.egress {
                    if let Some(reason) = c.denied() {
                        s.push_str(&format!(
                            "network: {}:{} refused by the sandbox's egress policy: {reason}\n",
                            c.host, c.port
                        ));
                    }
                }
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
            Block::Execute { lang, code, .. } => {
                let span = tracing::info_span!(
                    target: crate::telemetry::TARGET,
                    "sandbox.run",
                    otel.status_code = tracing::field::Empty,
                    agentd.sandbox.backend = policy.backend.name(),
                    agentd.sandbox.block = (i + 1) as i64,
                    process.exit.code = tracing::field::Empty,
                    agentd.sandbox.timed_out = tracing::field::Empty,
                    agentd.sandbox.duration_ms = tracing::field::Empty,
                    error.type = tracing::field::Empty,
                );
                if let Some(h) = &extra.egress {
                    h.0.block(i + 1);
                }
                let ran = sandbox::run(policy, workdir, &lang.argv(code), extra)
                    .instrument(span.clone())
                    .await;
                match ran {
                    Ok(o) => {
                        if let Some(c) = o.exit_code {
                            span.record("process.exit.code", c);
                        }
                        span.record("agentd.sandbox.timed_out", o.timed_out);
                        span.record("agentd.sandbox.duration_ms", o.duration.as_millis() as i64);
                        if !o.success() {
                            span.record("otel.status_code", "ERROR");
                        }
                        FenceOutcome::Ran(o)
                    }
                    Err(e) => {
                        span.record("otel.status_code", "ERROR");
                        span.record("error.type", "sandbox_error");
                        FenceOutcome::NotRun {
                            reason: format!("sandbox: {e}"),
                        }
                    }
                }
            }
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
/// to the workdir. Resolution never leaves the workdir, whatever the
/// sandbox planted there (see [`crate::beneath`]). When agentd runs as
/// root, sandboxed code runs as the workdir's owner (see
/// [`crate::sandbox::Identity`]): what is created is given to it. The error
/// is a sentence for the model.
pub fn create(workdir: &Path, rel: &str, content: &str) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(workdir).map_err(|e| format!("workdir {}: {e}", workdir.display()))?;
    // SAFETY: geteuid cannot fail.
    let owner = (unsafe { libc::geteuid() } == 0 && meta.uid() != 0).then(|| (meta.uid(), meta.gid()));
    crate::beneath::create_file(workdir, rel, content.as_bytes(), owner)?;
    let clean: PathBuf = Path::new(rel)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    Ok(clean)
}
