//! Watching config files for hot reload.
//!
//! Directories are watched, not files: editors save by writing a new file
//! and renaming it over the old one, and Kubernetes ConfigMaps swap a
//! `..data` symlink, and a watch on the old inode would miss both. An event
//! counts when it names a config file, a file matching an include glob, or
//! a `..`-prefixed entry (the ConfigMap swap). The supervisor debounces.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Event;
use crate::config::Config;

pub struct ConfigWatcher {
    _watcher: RecommendedWatcher,
}

impl ConfigWatcher {
    pub fn start(cfg: &Config, events: mpsc::UnboundedSender<Event>) -> notify::Result<ConfigWatcher> {
        let files: BTreeSet<PathBuf> = cfg.files.iter().cloned().collect();
        let globs: Vec<glob::Pattern> = cfg
            .include_globs
            .iter()
            .filter_map(|g| glob::Pattern::new(g).ok())
            .collect();
        let mut dirs: BTreeSet<PathBuf> = files.iter().filter_map(|f| f.parent().map(Path::to_owned)).collect();
        for g in &cfg.include_globs {
            dirs.insert(glob_base(g));
        }
        // A directory that does not exist yet (an empty `agents/`) is
        // watched through its nearest existing ancestor until it appears;
        // the reload that follows re-creates the watcher on the real thing.
        let missing: Vec<PathBuf> = dirs.iter().filter(|d| !d.is_dir()).cloned().collect();
        let mut watch_dirs: BTreeSet<PathBuf> = dirs.iter().filter(|d| d.is_dir()).cloned().collect();
        for m in &missing {
            if let Some(a) = m.ancestors().find(|a| a.is_dir()) {
                watch_dirs.insert(a.to_owned());
            }
        }
        let relevant = move |p: &Path| {
            missing.iter().any(|m| m.starts_with(p))
                || files.contains(p)
                || globs.iter().any(|g| g.matches_path(p))
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".."))
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if ev.kind.is_access() {
                return;
            }
            if ev.paths.iter().any(|p| relevant(p)) {
                let _ = events.send(Event::ConfigChanged);
            }
        })?;
        for d in &watch_dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        Ok(ConfigWatcher { _watcher: watcher })
    }
}

/// The directory part of a glob before its first wildcard component.
fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    for comp in Path::new(pattern).components() {
        let s = comp.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            break;
        }
        base.push(comp);
    }
    if base == Path::new(pattern) {
        base.parent().map(Path::to_owned).unwrap_or(base)
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::glob_base;
    use std::path::Path;

    #[test]
    fn glob_base_is_the_fixed_prefix() {
        assert_eq!(glob_base("/etc/agentd/agents/*.yaml"), Path::new("/etc/agentd/agents"));
        assert_eq!(glob_base("/etc/agentd/*/a.yaml"), Path::new("/etc/agentd"));
        assert_eq!(glob_base("/etc/agentd/one.yaml"), Path::new("/etc/agentd"));
    }
}
