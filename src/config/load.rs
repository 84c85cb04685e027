//! The loader's entry points and shared state: reading files, collecting
//! and ordering errors, and the path rules every section uses.
//!
//! [`load`] hands the main file to [`top`](super::top), which walks the
//! sections; each section's keys and rules live in its own module. This
//! module owns the [`Loader`] (the environment for `${VAR}`, every file
//! read, the profile cache) and turns the collected problems into
//! [`ConfigErrors`] in file order. It must never decode a section itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::ConfigErrors;
use super::types::Config;
use crate::sandbox::SandboxPolicy;
use crate::yaml;

/// Loads `path` with the process environment for `${VAR}`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|k| std::env::var(k).ok())
}

/// Loads `path`, resolving `${VAR}` through `env`.
pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let path = absolute(path);
    let mut errors = Vec::new();
    let mut loader = Loader::new(env);
    let config = loader.load_main(&path, &mut errors);
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => {
            sort_errors(&mut errors, &path);
            if errors.is_empty() {
                // Defensive: a decode that produced nothing must say why.
                errors.push(plain_error(&path, "the config could not be loaded"));
            }
            Err(ConfigErrors(errors))
        }
    }
}

/// State of one load: shared by every section that reads a file.
pub(super) struct Loader<'e> {
    pub(super) env: &'e dyn Fn(&str) -> Option<String>,
    /// Every file read, for the reload watcher.
    pub(super) files: Vec<PathBuf>,
    /// Profiles by (directory, name), read once per load.
    pub(super) profile_cache: HashMap<(PathBuf, String), Result<SandboxPolicy, String>>,
}

impl<'e> Loader<'e> {
    pub(super) fn new(env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Loader {
            env,
            files: Vec::new(),
            profile_cache: HashMap::new(),
        }
    }

    /// Reads a file and records it for the reload watcher.
    pub(super) fn read(&mut self, path: &Path) -> Result<String, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.files.push(path.to_owned());
        Ok(text)
    }
}

/// Groups errors by file (the main file first, then in the order files were
/// read) and orders each group by position.
pub(super) fn sort_errors(errors: &mut [yaml::Error], main: &Path) {
    // File → rank, by first appearance: a map, so many errors in many
    // files sort in n log n.
    let mut order: HashMap<PathBuf, usize> = HashMap::new();
    order.insert(main.to_owned(), 0);
    for e in errors.iter() {
        let next = order.len();
        order.entry(e.file.clone()).or_insert(next);
    }
    errors.sort_by_key(|e| (order.get(&e.file).copied(), e.line, e.column));
}

pub(super) fn plain_error(file: &Path, message: &str) -> yaml::Error {
    yaml::Error {
        file: file.to_owned(),
        line: 0,
        column: 0,
        path: String::new(),
        message: message.to_owned(),
    }
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    normalize(&std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
}

/// Folds `.` and `..` without touching the filesystem, so the paths the
/// reload watcher compares against match the ones the kernel reports.
pub(super) fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `~/x` → `$HOME/x`; relative paths are relative to the defining file's directory.
pub(super) fn resolve_path(s: &str, dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let expanded = match (s.strip_prefix("~/"), env("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(s),
    };
    normalize(&if expanded.is_absolute() {
        expanded
    } else {
        dir.join(expanded)
    })
}
