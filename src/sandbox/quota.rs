//! Per-agent workdir quota: bytes and files, checked during and after
//! each sandbox run.
//!
//! The kernel offers no per-directory quota that agentd can count on: XFS
//! and ext4 project quotas need the filesystem mounted with them and a
//! project id per workdir, tmpfs quotas are per user, and `RLIMIT_FSIZE`
//! (set by `limits`) bounds one file, not a directory. So this module
//! measures: it walks the run's writable directories (the workdir and the
//! private tmp dir) every so often while the run lives and once after it,
//! and says why when a run went over.
//!
//! A run is over quota when usage is above the limit *and* above what it
//! was when the run started: a workdir that is already full still lets
//! the model run `rm`. It must never follow a symlink or leave the
//! filesystem it starts on, and never modify what it measures.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The limits (`limits: {workdir_size, workdir_files}` of an agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Bytes of disk the files take (allocated blocks, hard links once).
    pub max_bytes: u64,
    /// Files, directories and symlinks.
    pub max_files: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            max_bytes: 1 << 30,
            max_files: 100_000,
        }
    }
}

/// What a set of directories takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

/// Measures `dirs`: every entry below them (not the roots themselves),
/// without following symlinks or crossing into another filesystem. Entries
/// that vanish while walking are skipped.
pub fn measure(dirs: &[PathBuf]) -> Usage {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    for root in dirs {
        let Ok(meta) = std::fs::symlink_metadata(root) else {
            continue;
        };
        let dev = meta.dev();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let Ok(m) = e.metadata() else { continue };
                usage.files += 1;
                if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                usage.bytes += m.blocks() * 512;
                if m.is_dir() && m.dev() == dev {
                    stack.push(e.path());
                }
            }
        }
    }
    usage
}

/// Watches one run's directories against a quota.
#[derive(Debug)]
pub struct Watch {
    dirs: Vec<PathBuf>,
    quota: Quota,
    start: Usage,
    /// Time between measurements: at least [`MIN_INTERVAL`], and ten times
    /// the last walk, so a huge workdir costs at most a tenth of a core.
    interval: Duration,
}

const MIN_INTERVAL: Duration = Duration::from_millis(200);

impl Watch {
    /// Measures the starting point (off the async thread).
    pub async fn start(dirs: Vec<PathBuf>, quota: Quota) -> Watch {
        let mut w = Watch {
            dirs,
            quota,
            start: Usage::default(),
            interval: MIN_INTERVAL,
        };
        w.start = w.measure().await;
        w
    }

    async fn measure(&mut self) -> Usage {
        let dirs = self.dirs.clone();
        let began = Instant::now();
        let usage = tokio::task::spawn_blocking(move || measure(&dirs))
            .await
            .unwrap_or_default();
        self.interval = (began.elapsed() * 10).max(MIN_INTERVAL);
        usage
    }

    /// Resolves when a measurement finds the run over quota, with the
    /// reason for the model; pending for as long as it stays within.
    pub async fn exceeded(&mut self) -> String {
        loop {
            tokio::time::sleep(self.interval).await;
            if let Some(reason) = self.check().await {
                return reason;
            }
        }
    }

    /// One measurement now: the reason when over quota.
    pub async fn check(&mut self) -> Option<String> {
        let now = self.measure().await;
        verdict(self.quota, self.start, now)
    }
}

/// [`Watch::exceeded`] of a run's watch, if it has one; pending forever
/// when it has none.
pub async fn exceeded(watch: &mut Option<Watch>) -> String {
    match watch {
        Some(w) => w.exceeded().await,
        None => std::future::pending().await,
    }
}

/// Whether `now` is over `quota` and grew past `start`, as a sentence.
pub fn verdict(quota: Quota, start: Usage, now: Usage) -> Option<String> {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    if now.bytes > quota.max_bytes && now.bytes > start.bytes {
        return Some(format!(
            "stopped: the workdir quota is exceeded: its files take {:.1} MiB, the limit is {:.1} MiB \
             (limits.workdir_size); delete files to make room",
            mib(now.bytes),
            mib(quota.max_bytes)
        ));
    }
    if now.files > quota.max_files && now.files > start.files {
        return Some(format!(
            "stopped: the workdir quota is exceeded: it holds {} files, the limit is {} \
             (limits.workdir_files); delete files to make room",
            now.files, quota.max_files
        ));
    }
    None
}

/// The directories a run can write to and that count against the quota.
pub fn dirs(workdir: &Path, private_tmp: Option<&Path>) -> Vec<PathBuf> {
    let mut d = vec![workdir.to_path_buf()];
    d.extend(private_tmp.map(Path::to_path_buf));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        max_bytes: 100,
        max_files: 10,
    };

    #[test]
    fn over_quota_only_when_grown() {
        let u = |bytes, files| Usage { bytes, files };
        assert_eq!(verdict(Q, u(0, 0), u(100, 10)), None);
        assert!(verdict(Q, u(0, 0), u(101, 1)).is_some_and(|r| r.contains("workdir_size")));
        assert!(verdict(Q, u(0, 0), u(1, 11)).is_some_and(|r| r.contains("workdir_files")));
        // Already full before the run: cleaning up is allowed.
        assert_eq!(verdict(Q, u(500, 50), u(400, 40)), None);
        assert!(verdict(Q, u(500, 50), u(501, 40)).is_some());
    }

    #[test]
    fn measure_counts_files_and_hard_links_once() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(d.path().join("sub")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.path().join("sub/a"), vec![1u8; 64 << 10]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::hard_link(d.path().join("sub/a"), d.path().join("b")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("/", d.path().join("root")).unwrap_or_else(|e| panic!("{e}"));
        let u = measure(&[d.path().to_path_buf()]);
        assert_eq!(u.files, 4, "sub, sub/a, b, root");
        assert!(u.bytes >= 64 << 10 && u.bytes < 2 * (64 << 10), "{u:?}");
    }
}
