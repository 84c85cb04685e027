//! The top level of the main file and its includes: `state_dir`,
//! `shutdown_grace`, `agent_uids`, `control_group`, `include`, `http` and
//! `notify` (decoded by [`operator`](super::operator)), and the
//! `agents` lists wherever they are written (one name per agent across all
//! files).
//!
//! It reads the main file and every included file and hands each agent to
//! [`agent`](super::agent) with the [`Defaults`]. It must never decode an
//! agent's fields itself, and an agent's error never stops the next agent
//! or file from being checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::Node;

use super::defaults::Defaults;
use super::load::{Loader, normalize, plain_error, resolve_path};
use super::types::{AgentSpec, Config};
use crate::yaml::{self, Cx, Map, parse};

const TOP_KEYS: &[&str] = &[
    "state_dir",
    "include",
    "defaults",
    "agents",
    "shutdown_grace",
    "agent_uids",
    "control_group",
    "prices",
    "http",
    "notify",
    "ledger",
    "ledger_password_file",
    "fleet",
];

/// The agents read so far, and where each name was first defined (file,
/// line): names are unique across all files.
#[derive(Default)]
struct Roster {
    agents: Vec<AgentSpec>,
    seen: BTreeMap<String, (PathBuf, usize)>,
}

impl Loader<'_> {
    pub(super) fn load_main(&mut self, path: &Path, errors: &mut Vec<yaml::Error>) -> Option<Config> {
        let text = match self.read(path) {
            Ok(t) => t,
            Err(msg) => {
                errors.push(plain_error(path, &msg));
                return None;
            }
        };
        let root = match parse(path, &text) {
            Ok(n) => n,
            Err(e) => {
                errors.push(e);
                return None;
            }
        };
        let dir = path.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("/"));
        let env = self.env;
        let mut cx = Cx {
            file: path.to_owned(),
            errors,
            env,
        };
        let map = Map::open(&mut cx, &root, "", TOP_KEYS)?;

        let state_dir = match map.get("state_dir") {
            Some(n) => cx.non_empty_string(n, "state_dir").map(|s| resolve_path(&s, &dir, env)),
            None => Some(crate::state_dir::default(env)),
        };
        let shutdown_grace = map
            .duration(&mut cx, "shutdown_grace")
            .unwrap_or(Duration::from_secs(10));
        let agent_uids = match map.get("agent_uids") {
            Some(n) => cx
                .non_empty_string(n, "agent_uids")
                .and_then(|s| match parse_uid_range(&s) {
                    Ok(r) => Some(r),
                    Err(msg) => {
                        cx.error_at_node(n, "agent_uids", msg);
                        None
                    }
                }),
            None => Some(DEFAULT_AGENT_UIDS),
        };
        let control_group = map.get("control_group").and_then(|n| {
            let name = cx.non_empty_string(n, "control_group")?;
            let gid = match name.parse::<u32>() {
                Ok(gid) => Some(gid),
                Err(_) => nix::unistd::Group::from_name(&name)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw()),
            };
            if gid.is_none() {
                cx.error_at_node(n, "control_group", format!("no group named {name:?} on this host"));
            }
            gid
        });
        let prices = match map.get("prices") {
            Some(n) => super::budget::decode_prices(&mut cx, n, "prices"),
            None => crate::budget::Prices::default(),
        };
        let http = super::operator::decode_http(&mut cx, map.node.get_node("http"), &dir);
        let notify = match map.get("notify") {
            Some(n) => super::operator::decode_notify(&mut cx, n),
            None => Vec::new(),
        };
        let ledger = match &state_dir {
            Some(sd) => {
                super::fleet::decode_ledger(&mut cx, map.get("ledger"), map.get("ledger_password_file"), &dir, sd)
            }
            None => None,
        };
        let fleet = super::fleet::decode_fleet(&mut cx, map.get("fleet"));
        let defaults = match map.get("defaults") {
            Some(n) => self.decode_defaults(&mut cx, n, &dir),
            None => Defaults::default(),
        };

        let mut roster = Roster::default();
        if let Some(n) = map.get("agents") {
            for (item, p) in cx.list(n, "agents", false) {
                self.add_agent(&mut cx, item, &p, &dir, &defaults, &mut roster);
            }
        }
        let include_globs = match map.get("include") {
            Some(n) => self.load_includes(&mut cx, n, &dir, &defaults, &mut roster),
            None => Vec::new(),
        };

        Some(Config {
            path: path.to_owned(),
            files: std::mem::take(&mut self.files),
            include_globs,
            state_dir: state_dir?,
            shutdown_grace,
            agent_uids: agent_uids?,
            control_group,
            prices,
            http: http?,
            notify,
            ledger: ledger?,
            fleet: Box::new(fleet?),
            agents: roster.agents,
        })
    }

    /// Reads every file `include` names (globs expand in sorted order) and
    /// returns the absolute patterns, for the reload watcher.
    fn load_includes(
        &mut self,
        cx: &mut Cx,
        node: &Node,
        dir: &Path,
        defaults: &Defaults,
        roster: &mut Roster,
    ) -> Vec<String> {
        let mut include_globs = Vec::new();
        for (item, p) in cx.list(node, "include", true) {
            let Some(pattern) = cx.non_empty_string(item, &p) else {
                continue;
            };
            let abs = normalize(&dir.join(&pattern)).to_string_lossy().into_owned();
            let is_glob = pattern.contains(['*', '?', '[']);
            let matches = match glob::glob(&abs) {
                Ok(paths) => {
                    let mut v: Vec<PathBuf> = paths.filter_map(Result::ok).filter(|p| p.is_file()).collect();
                    v.sort();
                    v
                }
                Err(e) => {
                    cx.error_at_node(item, &p, format!("invalid glob pattern {pattern:?}: {e}"));
                    continue;
                }
            };
            if matches.is_empty() && !is_glob {
                cx.error_at_node(
                    item,
                    &p,
                    format!("include file {} does not exist", dir.join(&pattern).display()),
                );
            }
            include_globs.push(abs);
            for file in matches {
                self.load_include(cx.errors, &file, defaults, roster);
            }
        }
        include_globs
    }

    fn load_include(&mut self, errors: &mut Vec<yaml::Error>, file: &Path, defaults: &Defaults, roster: &mut Roster) {
        let text = match self.read(file) {
            Ok(t) => t,
            Err(msg) => return errors.push(plain_error(file, &msg)),
        };
        let root = match parse(file, &text) {
            Ok(n) => n,
            Err(e) => return errors.push(e),
        };
        let dir = file.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("/"));
        let mut cx = Cx {
            file: file.to_owned(),
            errors,
            env: self.env,
        };
        match &root {
            Node::Sequence(_) => {
                for (item, p) in cx.list(&root, "", false) {
                    self.add_agent(&mut cx, item, &p, &dir, defaults, roster);
                }
            }
            _ => self.add_agent(&mut cx, &root, "", &dir, defaults, roster),
        }
    }

    fn add_agent(
        &mut self,
        cx: &mut Cx,
        node: &Node,
        path: &str,
        dir: &Path,
        defaults: &Defaults,
        roster: &mut Roster,
    ) {
        // Duplicates are checked on the raw name, so they are reported even
        // when the agent has other errors.
        let name_node = node
            .as_mapping()
            .and_then(|m| m.get_node("name"))
            .and_then(|n| n.as_scalar());
        let mut duplicate = false;
        if let Some(n) = name_node {
            let name = n.as_str().to_owned();
            let line = n.span().start().map(|s| s.line()).unwrap_or(0);
            if let Some((file, first)) = roster.seen.get(&name) {
                let msg = format!(
                    "duplicate agent name {name:?} (first defined at {}:{first})",
                    file.display()
                );
                cx.error_at(n.span(), &yaml::join(path, "name"), msg);
                duplicate = true;
            } else {
                roster.seen.insert(name, (cx.file.clone(), line));
            }
        }
        if let Some(agent) = self.decode_agent(cx, node, path, dir, defaults)
            && !duplicate
        {
            roster.agents.push(agent);
        }
    }
}

/// The uids (and equal gids) agents' sandboxed code runs as when agentd is
/// root: systemd's range for dynamic users.
pub const DEFAULT_AGENT_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

/// `FIRST-LAST`, both ordinary (non-root) ids, FIRST <= LAST.
fn parse_uid_range(s: &str) -> Result<std::ops::RangeInclusive<u32>, String> {
    let bad = || format!("{s:?} is not a uid range: write FIRST-LAST, e.g. 61184-65519");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (first, last): (u32, u32) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if first == 0 || first > last {
        return Err(format!(
            "{s:?}: the range must start above 0 (root) and not end before it starts"
        ));
    }
    Ok(first..=last)
}
