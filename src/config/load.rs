//! Loading: files, includes, defaults and every agent field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::Node;

use super::decode::{Cx, Map, is_null, parse, suggest};
use super::error::{ConfigError, ConfigErrors};
use super::types::*;
use super::units;
use crate::sandbox::{Backend, SandboxPolicy};

/// Profiles compiled into the binary, so `sandbox: default` works wherever
/// the config lives. A `sandbox/NAME.yaml` next to the config wins.
const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../../sandbox/default.yaml")),
    ("strict", include_str!("../../sandbox/strict.yaml")),
    ("networked", include_str!("../../sandbox/networked.yaml")),
];

const TOP_KEYS: &[&str] = &[
    "state_dir",
    "include",
    "defaults",
    "agents",
    "shutdown_grace",
    "agent_uids",
    "control_group",
];
const DEFAULT_KEYS: &[&str] = &["model", "llm", "sandbox", "restart", "heartbeat", "limits"];
const AGENT_KEYS: &[&str] = &[
    "name",
    "description",
    "model",
    "llm",
    "system_prompt",
    "system_prompt_file",
    "mcp_servers",
    "subscriptions",
    "schedules",
    "sandbox",
    "skills",
    "bridge",
    "restart",
    "heartbeat",
    "limits",
];
const HEARTBEAT_KEYS: &[&str] = &["interval", "timeout"];
const BRIDGE_KEYS: &[&str] = &["max_request", "max_reply", "call_timeout"];
const LLM_KEYS: &[&str] = &[
    "base_url",
    "api_key_env",
    "temperature",
    "request_timeout",
    "max_retries",
    "stream",
];
const SERVER_KEYS: &[&str] = &[
    "name",
    "type",
    "command",
    "arguments",
    "args",
    "env",
    "env_vars",
    "cwd",
    "url",
    "headers",
    "tool_filter",
    "roots",
];
const SUBSCRIPTION_KEYS: &[&str] = &["uri", "server", "debounce", "interval", "min_interval"];
const SCHEDULE_KEYS: &[&str] = &["cron", "prompt", "timezone"];
const RESTART_KEYS: &[&str] = &["policy", "backoff_min", "backoff_max", "burst", "interval"];
const LIMIT_KEYS: &[&str] = &[
    "max_turns",
    "max_tool_calls",
    "max_tokens",
    "task_timeout",
    "max_attempts",
    "history_messages",
    "history_tokens",
    "workdir_size",
    "workdir_files",
];
const POLICY_KEYS: &[&str] = &[
    "profile",
    "backend",
    "best_effort",
    "network",
    "read_only",
    "writable",
    "timeout",
    "limits",
];
const POLICY_LIMIT_KEYS: &[&str] = &["cpu", "memory", "processes", "file_size", "open_files", "output"];

/// Default quiet time for resource subscriptions: bursts inside it coalesce.
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// Default least time between two triggers from one resource of a
/// subscription: a chatty server cannot turn into an LLM bill.
const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Default poll interval for `tool://` subscriptions.
const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// Loads `path` with the process environment for `${VAR}`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|k| std::env::var(k).ok())
}

/// Loads `path`, resolving `${VAR}` through `env`.
pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let path = absolute(path);
    let mut errors = Vec::new();
    let mut loader = Loader {
        env,
        files: Vec::new(),
        profile_cache: HashMap::new(),
    };
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

/// Resolves a sandbox profile by name: `<config_dir>/sandbox/NAME.yaml`
/// first, then the built-in profiles. Returns the policy and where it came
/// from (a file path, or `<builtin>/NAME.yaml`).
pub fn resolve_sandbox_profile(
    name: &str,
    config_dir: Option<&Path>,
) -> Result<(SandboxPolicy, PathBuf), ConfigErrors> {
    let mut errors = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    let mut loader = Loader {
        env: &env,
        files: Vec::new(),
        profile_cache: HashMap::new(),
    };
    let dir = config_dir.map(absolute).unwrap_or_else(|| absolute(Path::new(".")));
    let found = loader.profile(name, &dir, &mut errors);
    match found {
        Some(Ok(p)) if errors.is_empty() => {
            let origin = loader
                .files
                .pop()
                .unwrap_or_else(|| PathBuf::from(format!("<builtin>/{name}.yaml")));
            Ok((p, origin))
        }
        Some(Err(msg)) => Err(ConfigErrors(vec![plain_error(&dir.join("sandbox"), &msg)])),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Decodes one profile document (for tests and tools that hold the text).
pub fn load_sandbox_profile_str(file: &Path, text: &str) -> Result<SandboxPolicy, ConfigErrors> {
    let mut errors = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    let policy = match parse(file, text) {
        Ok(node) => {
            let mut cx = Cx {
                file: file.to_owned(),
                errors: &mut errors,
                env: &env,
            };
            decode_policy(&mut cx, &node, "", SandboxPolicy::default(), false)
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };
    match policy {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Groups errors by file (the main file first, then in the order files were
/// read) and orders each group by position.
fn sort_errors(errors: &mut [ConfigError], main: &Path) {
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

fn plain_error(file: &Path, message: &str) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        path: String::new(),
        message: message.to_owned(),
    }
}

fn absolute(p: &Path) -> PathBuf {
    normalize(&std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
}

/// Folds `.` and `..` without touching the filesystem, so the paths the
/// reload watcher compares against match the ones the kernel reports.
fn normalize(p: &Path) -> PathBuf {
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

/// What agents inherit from `defaults`.
struct Defaults {
    model: Option<String>,
    llm: LlmSpec,
    /// Which of `llm`'s routing fields the config wrote (not defaults).
    llm_set: LlmSet,
    sandbox: Option<(String, SandboxPolicy)>,
    restart: RestartSpec,
    heartbeat: HeartbeatSpec,
    limits: Limits,
}

struct Loader<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    /// Every file read, for the reload watcher.
    files: Vec<PathBuf>,
    /// Profiles by (directory, name), read once per load.
    profile_cache: HashMap<(PathBuf, String), Result<SandboxPolicy, String>>,
}

impl Loader<'_> {
    fn read(&mut self, path: &Path) -> Result<String, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.files.push(path.to_owned());
        Ok(text)
    }

    fn load_main(&mut self, path: &Path, errors: &mut Vec<ConfigError>) -> Option<Config> {
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
        let defaults = match map.get("defaults") {
            Some(n) => self.decode_defaults(&mut cx, n, &dir),
            None => Defaults {
                model: None,
                llm: LlmSpec::default(),
                llm_set: LlmSet::default(),
                sandbox: None,
                restart: RestartSpec::default(),
                heartbeat: HeartbeatSpec::default(),
                limits: Limits::default(),
            },
        };

        let mut agents: Vec<AgentSpec> = Vec::new();
        let mut seen: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
        if let Some(n) = map.get("agents") {
            for (item, p) in cx.list(n, "agents", false) {
                self.add_agent(&mut cx, item, &p, &dir, &defaults, &mut agents, &mut seen);
            }
        }

        let mut include_globs = Vec::new();
        if let Some(n) = map.get("include") {
            for (item, p) in cx.list(n, "include", true) {
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
                    self.load_include(cx.errors, &file, &defaults, &mut agents, &mut seen);
                }
            }
        }

        Some(Config {
            path: path.to_owned(),
            files: std::mem::take(&mut self.files),
            include_globs,
            state_dir: state_dir?,
            shutdown_grace,
            agent_uids: agent_uids?,
            control_group,
            agents,
        })
    }

    fn load_include(
        &mut self,
        errors: &mut Vec<ConfigError>,
        file: &Path,
        defaults: &Defaults,
        agents: &mut Vec<AgentSpec>,
        seen: &mut BTreeMap<String, (PathBuf, usize)>,
    ) {
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
                    self.add_agent(&mut cx, item, &p, &dir, defaults, agents, seen);
                }
            }
            _ => self.add_agent(&mut cx, &root, "", &dir, defaults, agents, seen),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_agent(
        &mut self,
        cx: &mut Cx,
        node: &Node,
        path: &str,
        dir: &Path,
        defaults: &Defaults,
        agents: &mut Vec<AgentSpec>,
        seen: &mut BTreeMap<String, (PathBuf, usize)>,
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
            if let Some((file, first)) = seen.get(&name) {
                let msg = format!(
                    "duplicate agent name {name:?} (first defined at {}:{first})",
                    file.display()
                );
                cx.error_at(n.span(), &super::decode::join(path, "name"), msg);
                duplicate = true;
            } else {
                seen.insert(name, (cx.file.clone(), line));
            }
        }
        if let Some(agent) = self.decode_agent(cx, node, path, dir, defaults)
            && !duplicate
        {
            agents.push(agent);
        }
    }

    fn decode_defaults(&mut self, cx: &mut Cx, node: &Node, dir: &Path) -> Defaults {
        let mut d = Defaults {
            model: None,
            llm: LlmSpec::default(),
            llm_set: LlmSet::default(),
            sandbox: None,
            restart: RestartSpec::default(),
            heartbeat: HeartbeatSpec::default(),
            limits: Limits::default(),
        };
        let Some(map) = Map::open(cx, node, "defaults", DEFAULT_KEYS) else {
            return d;
        };
        d.model = map.get("model").and_then(|n| cx.non_empty_string(n, "defaults.model"));
        if let Some(n) = map.get("llm") {
            (d.llm, d.llm_set) = decode_llm(cx, n, "defaults.llm", d.llm.clone(), d.llm_set);
        }
        if let Some(n) = map.get("sandbox") {
            d.sandbox = self.decode_sandbox(cx, n, "defaults.sandbox", dir);
        }
        if let Some(n) = map.get("restart") {
            d.restart = decode_restart(cx, n, "defaults.restart", d.restart.clone());
        }
        if let Some(n) = map.get("heartbeat") {
            d.heartbeat = decode_heartbeat(cx, n, "defaults.heartbeat", d.heartbeat.clone());
        }
        if let Some(n) = map.get("limits") {
            d.limits = decode_limits(cx, n, "defaults.limits", d.limits.clone());
        }
        d
    }

    fn decode_agent(&mut self, cx: &mut Cx, node: &Node, path: &str, dir: &Path, d: &Defaults) -> Option<AgentSpec> {
        let map = Map::open(cx, node, path, AGENT_KEYS)?;
        let before = cx.errors.len();
        let f = |k: &str| map.field(k);

        let name = map.require(cx, "name").and_then(|n| {
            let s = cx.string(n, &f("name"))?;
            cx.check(n, &f("name"), AgentName::try_from(s))
        });

        let model = match map.get("model") {
            Some(n) => cx.non_empty_string(n, &f("model")),
            None => match &d.model {
                Some(m) => Some(m.clone()),
                None => {
                    map.require(cx, "model");
                    None
                }
            },
        };
        let model = model.and_then(|m| self.resolve_model(cx, &map, m, dir));

        let (mut llm, llm_set) = match map.get("llm") {
            Some(n) => decode_llm(cx, n, &f("llm"), d.llm.clone(), d.llm_set),
            None => (d.llm.clone(), d.llm_set),
        };
        let model = model.and_then(|m| route_model(cx, &map, m, &mut llm, llm_set));

        let system_prompt = match (map.get("system_prompt"), map.get("system_prompt_file")) {
            (Some(_), Some(n)) => {
                cx.error_at_node(
                    n,
                    &f("system_prompt_file"),
                    "set either system_prompt or system_prompt_file, not both",
                );
                None
            }
            (Some(n), None) => cx.string(n, &f("system_prompt")),
            (None, Some(n)) => cx.non_empty_string(n, &f("system_prompt_file")).and_then(|s| {
                let p = resolve_path(&s, dir, self.env);
                match self.read(&p) {
                    Ok(text) => Some(text),
                    Err(msg) => {
                        cx.error_at_node(n, &f("system_prompt_file"), msg);
                        None
                    }
                }
            }),
            (None, None) => Some(String::new()),
        };

        let mut mcp_servers: Vec<McpServerSpec> = Vec::new();
        // Names seen so far: a set, so a long server list loads in linear time.
        let mut server_names: HashSet<String> = HashSet::new();
        if let Some(n) = map.get("mcp_servers") {
            for (i, (item, p)) in cx.list(n, &f("mcp_servers"), false).into_iter().enumerate() {
                if let Some(s) = decode_server(cx, item, &p, i, dir) {
                    if server_names.contains(&s.name) {
                        let msg = format!("duplicate server name {:?}; give each server a unique name", s.name);
                        cx.error_at_node(item, &p, msg);
                    } else {
                        server_names.insert(s.name.clone());
                        mcp_servers.push(s);
                    }
                }
            }
        }

        let mut subscriptions = Vec::new();
        if let Some(n) = map.get("subscriptions") {
            for (item, p) in cx.list(n, &f("subscriptions"), false) {
                if let Some(s) = decode_subscription(cx, item, &p, &mcp_servers, &server_names) {
                    subscriptions.push(s);
                }
            }
        }

        let mut schedules = Vec::new();
        if let Some(n) = map.get("schedules") {
            for (item, p) in cx.list(n, &f("schedules"), false) {
                if let Some(s) = decode_schedule(cx, item, &p) {
                    schedules.push(s);
                }
            }
        }

        let sandbox = match map.get("sandbox") {
            Some(n) => self.decode_sandbox(cx, n, &f("sandbox"), dir),
            None => match &d.sandbox {
                Some(s) => Some(s.clone()),
                None => self.builtin_default_sandbox(cx, &map),
            },
        };

        let mut skills = Vec::new();
        if let Some(n) = map.get("skills") {
            for (item, p) in cx.list(n, &f("skills"), false) {
                let Some(s) = cx.non_empty_string(item, &p) else {
                    continue;
                };
                let path = resolve_path(&s, dir, self.env);
                if !path.is_dir() {
                    cx.error_at_node(item, &p, format!("skill directory {} does not exist", path.display()));
                    continue;
                }
                // SKILL.md's own problems are reported in SKILL.md, with
                // their line; the reload watcher watches it too.
                let skill_md = path.join(crate::skills::SKILL_FILE);
                let text = match self.read(&skill_md) {
                    Ok(t) => t,
                    Err(msg) => {
                        cx.error_at_node(item, &p, format!("{msg}: a skill directory needs a SKILL.md"));
                        continue;
                    }
                };
                match crate::skills::parse_skill(&path, &skill_md, &text) {
                    Ok(skill) => {
                        if let Some(prev) = skills.iter().find(|s: &&SkillSpec| s.name == skill.name) {
                            let msg = format!(
                                "two skills are named {:?} ({} and {}); skill names must be unique",
                                skill.name,
                                prev.dir.display(),
                                skill.dir.display()
                            );
                            cx.error_at_node(item, &p, msg);
                        } else {
                            skills.push(skill);
                        }
                    }
                    Err(errs) => cx.errors.extend(errs),
                }
            }
        }

        let bridge = match map.get("bridge") {
            Some(n) => decode_bridge(cx, n, &f("bridge")),
            None => BridgeSpec::default(),
        };

        let restart = match map.get("restart") {
            Some(n) => decode_restart(cx, n, &f("restart"), d.restart.clone()),
            None => d.restart.clone(),
        };
        let heartbeat = match map.get("heartbeat") {
            Some(n) => decode_heartbeat(cx, n, &f("heartbeat"), d.heartbeat.clone()),
            None => d.heartbeat.clone(),
        };
        let limits = match map.get("limits") {
            Some(n) => decode_limits(cx, n, &f("limits"), d.limits.clone()),
            None => d.limits.clone(),
        };

        if cx.errors.len() != before {
            return None;
        }
        let (sandbox_profile, sandbox) = sandbox?;
        Some(AgentSpec {
            name: name?,
            source: cx.file.clone(),
            model: model?,
            llm,
            system_prompt: system_prompt?,
            mcp_servers,
            subscriptions,
            schedules,
            sandbox_profile,
            sandbox,
            skills,
            bridge,
            restart,
            heartbeat,
            limits,
        })
    }

    /// `replay:PATH` models name a cassette relative to the defining file.
    fn resolve_model(&mut self, cx: &mut Cx, map: &Map, model: String, dir: &Path) -> Option<String> {
        let Some(rest) = model.strip_prefix("replay:") else {
            return Some(model);
        };
        let path = resolve_path(rest, dir, self.env);
        if path.is_file() {
            Some(format!("replay:{}", path.display()))
        } else {
            let span = map.get("model").map(|n| *n.span()).unwrap_or(*map.node.span());
            cx.error_at(
                &span,
                &map.field("model"),
                format!("replay cassette {} does not exist", path.display()),
            );
            None
        }
    }

    fn builtin_default_sandbox(&mut self, cx: &mut Cx, map: &Map) -> Option<(String, SandboxPolicy)> {
        let dir = cx.file.parent().map(Path::to_owned).unwrap_or_default();
        match self.profile("default", &dir, cx.errors) {
            Some(Ok(p)) => Some(("default".into(), p)),
            Some(Err(msg)) => {
                cx.error_at(&map.start(), &map.field("sandbox"), msg);
                None
            }
            None => None,
        }
    }

    /// A profile name or an inline policy (optionally `profile: BASE` plus overrides).
    fn decode_sandbox(&mut self, cx: &mut Cx, node: &Node, path: &str, dir: &Path) -> Option<(String, SandboxPolicy)> {
        let (base_name, base_node, inline) = match node {
            Node::Scalar(_) => (cx.non_empty_string(node, path)?, node, false),
            Node::Mapping(m) => match m.get_node("profile").filter(|n| !is_null(n)) {
                Some(p) => (cx.non_empty_string(p, &format!("{path}.profile"))?, p, true),
                None => ("default".to_owned(), node, true),
            },
            Node::Sequence(_) => {
                cx.error_at_node(node, path, "expected a profile name or a policy mapping, found a list");
                return None;
            }
        };
        let base = match self.profile(&base_name, dir, cx.errors)? {
            Ok(p) => p,
            Err(msg) => {
                cx.error_at_node(base_node, path, msg);
                return None;
            }
        };
        if inline {
            decode_policy(cx, node, path, base, true).map(|p| ("inline".to_owned(), p))
        } else {
            Some((base_name, base))
        }
    }

    /// Looks a profile up; `Some(Err)` is "no such profile", `None` means
    /// the profile file itself had errors (already recorded).
    fn profile(
        &mut self,
        name: &str,
        dir: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Result<SandboxPolicy, String>> {
        let key = (dir.to_owned(), name.to_owned());
        if let Some(hit) = self.profile_cache.get(&key) {
            return Some(hit.clone());
        }
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let local = dir.join("sandbox").join(format!("{name}.yaml"));
        let (file, text) = if valid && local.is_file() {
            match self.read(&local) {
                Ok(t) => (local, t),
                Err(msg) => return Some(Err(msg)),
            }
        } else if let Some((_, text)) = BUILTIN_PROFILES.iter().find(|(n, _)| valid && *n == name) {
            (PathBuf::from(format!("<builtin>/{name}.yaml")), (*text).to_owned())
        } else {
            let mut known: Vec<String> = BUILTIN_PROFILES.iter().map(|(n, _)| (*n).to_owned()).collect();
            if let Ok(rd) = std::fs::read_dir(dir.join("sandbox")) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "yaml")
                        && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                        && !known.iter().any(|k| k == stem)
                    {
                        known.push(stem.to_owned());
                    }
                }
            }
            let refs: Vec<&str> = known.iter().map(String::as_str).collect();
            let hint = match suggest(name, &refs) {
                Some(s) => format!("; did you mean {s:?}?"),
                None => format!("; known profiles: {}", known.join(", ")),
            };
            let r = Err(format!("unknown sandbox profile {name:?}{hint}"));
            self.profile_cache.insert(key, r.clone());
            return Some(r);
        };
        let node = match parse(&file, &text) {
            Ok(n) => n,
            Err(e) => {
                errors.push(e);
                return None;
            }
        };
        let mut cx = Cx {
            file,
            errors,
            env: self.env,
        };
        let policy = decode_policy(&mut cx, &node, "", SandboxPolicy::default(), false)?;
        self.profile_cache.insert(key, Ok(policy.clone()));
        Some(Ok(policy))
    }
}

/// `~/x` → `$HOME/x`; relative paths are relative to the defining file's directory.
fn resolve_path(s: &str, dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
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

/// Which routing fields of `llm` a config wrote itself.
#[derive(Debug, Clone, Copy, Default)]
struct LlmSet {
    base_url: bool,
    api_key_env: bool,
}

/// Without `llm.base_url`, a model goes where the OpenAI SDK's environment
/// and its LiteLLM-style prefix say ([`crate::llm::providers`]).
fn route_model(cx: &mut Cx, map: &Map, model: String, llm: &mut LlmSpec, set: LlmSet) -> Option<String> {
    if set.base_url || model.starts_with(crate::llm::REPLAY_PREFIX) {
        return Some(model);
    }
    match crate::llm::providers::route(&model, cx.env) {
        Ok(route) => {
            llm.base_url = route.base_url;
            if !set.api_key_env {
                llm.api_key_env = route.api_key_env;
            }
            Some(route.model)
        }
        Err(msg) => {
            let span = map.get("model").map(|n| *n.span()).unwrap_or(*map.node.span());
            cx.error_at(&span, &map.field("model"), msg);
            None
        }
    }
}

fn decode_llm(cx: &mut Cx, node: &Node, path: &str, mut llm: LlmSpec, mut set: LlmSet) -> (LlmSpec, LlmSet) {
    let Some(map) = Map::open(cx, node, path, LLM_KEYS) else {
        return (llm, set);
    };
    set.base_url |= map.get("base_url").is_some();
    set.api_key_env |= map.get("api_key_env").is_some();
    if let Some(n) = map.get("base_url") {
        let p = map.field("base_url");
        if let Some(s) = cx.non_empty_string(n, &p) {
            match url::Url::parse(&s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => llm.base_url = s.trim_end_matches('/').to_owned(),
                Ok(u) => cx.error_at_node(n, &p, format!("base_url must be http or https, not {:?}", u.scheme())),
                Err(e) => cx.error_at_node(n, &p, format!("malformed URL {s:?}: {e}")),
            }
        }
    }
    if let Some(n) = map.get("api_key_env") {
        let p = map.field("api_key_env");
        if let Some(s) = cx.non_empty_string(n, &p) {
            if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                llm.api_key_env = Some(s);
            } else {
                // Likely the key itself pasted in: never echo it back.
                cx.error_at_node(
                    n,
                    &p,
                    "api_key_env takes the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key",
                );
            }
        }
    }
    if let Some(t) = map.number::<f32>(cx, "temperature", "a number") {
        llm.temperature = Some(t);
    }
    if let Some(d) = map.duration(cx, "request_timeout") {
        llm.request_timeout = d;
    }
    if let Some(n) = map.number::<u32>(cx, "max_retries", "a whole number") {
        llm.max_retries = n;
    }
    if let Some(b) = map.bool(cx, "stream") {
        llm.stream = b;
    }
    (llm, set)
}

/// Launchers whose first plain argument names the server better than they do.
const LAUNCHERS: &[&str] = &[
    "npx", "uvx", "uv", "node", "python", "python3", "bunx", "deno", "pipx", "docker", "bash", "sh",
];

fn derived_server_name(command: &str, args: &[String], index: usize) -> String {
    let base = |s: &str| {
        let s = s.rsplit('/').next().unwrap_or(s);
        let s = s.split('@').find(|p| !p.is_empty()).unwrap_or(s);
        let s = s.strip_suffix(".py").or_else(|| s.strip_suffix(".js")).unwrap_or(s);
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
    };
    let cmd = base(command);
    let name = if LAUNCHERS.contains(&cmd.as_str()) {
        args.iter()
            .find(|a| !a.starts_with('-') && *a != "run")
            .map(|a| base(a))
            .unwrap_or(cmd)
    } else {
        cmd
    };
    if name.is_empty() {
        format!("server{index}")
    } else {
        name
    }
}

fn decode_server(cx: &mut Cx, node: &Node, path: &str, index: usize, dir: &Path) -> Option<McpServerSpec> {
    let map = Map::open(cx, node, path, SERVER_KEYS)?;
    let before = cx.errors.len();
    let f = |k: &str| map.field(k);
    let ty = match map.get("type") {
        Some(n) => {
            let s = cx.string(n, &f("type"))?;
            match s.as_str() {
                "stdio" => Some("stdio"),
                "http" | "streamable_http" | "streamable-http" => Some("http"),
                other => {
                    cx.error_at_node(
                        n,
                        &f("type"),
                        format!("unknown server type {other:?}; expected stdio or http"),
                    );
                    return None;
                }
            }
        }
        None => None,
    };
    let ty = match (ty, map.get("command").is_some(), map.get("url").is_some()) {
        (Some(t), _, _) => t,
        (None, true, false) => "stdio",
        (None, false, true) => "http",
        (None, _, _) => {
            cx.error_at(
                &map.start(),
                &f("type"),
                "missing \"type\": set type: stdio (with command) or type: http (with url)",
            );
            return None;
        }
    };
    let misplaced = |cx: &mut Cx, keys: &[&str], why: &str| {
        for k in keys {
            if let Some((key, _)) = map.node.iter().find(|(key, _)| key.as_str() == *k) {
                cx.error_at(key.span(), &f(k), format!("{k:?} {why}"));
            }
        }
    };
    let tool_filter = map.get("tool_filter").and_then(|n| {
        let v = cx.strings(n, &f("tool_filter"))?;
        for (pat, (item, p)) in v.iter().zip(cx.list(n, &f("tool_filter"), false)) {
            if let Err(e) = glob::Pattern::new(pat) {
                cx.error_at_node(item, &p, format!("invalid tool pattern {pat:?}: {e}"));
            }
        }
        // Python agentd writes `tool_filter: []` in every example, meaning
        // "no filter"; an empty allow-list would hide every tool.
        (!v.is_empty()).then_some(v)
    });

    let roots = map
        .get("roots")
        .and_then(|n| cx.strings(n, &f("roots")))
        .unwrap_or_default()
        .into_iter()
        .map(|s| resolve_path(&s, dir, cx.env))
        .collect();

    let (transport, default_name) = if ty == "stdio" {
        misplaced(cx, &["url", "headers"], "is for type: http servers");
        let command = map
            .require(cx, "command")
            .and_then(|n| cx.non_empty_string(n, &f("command")));
        let mut args = Vec::new();
        for key in ["arguments", "args"] {
            if let Some(n) = map.get(key) {
                args.extend(cx.strings(n, &f(key)).unwrap_or_default());
            }
        }
        let mut env = BTreeMap::new();
        if let Some(n) = map.get("env") {
            env.extend(cx.string_map(n, &f("env")).unwrap_or_default());
        }
        if let Some(n) = map.get("env_vars") {
            for (item, p) in cx.list(n, &f("env_vars"), false) {
                let Some(s) = cx.string(item, &p) else { continue };
                match s.split_once('=') {
                    Some((k, v)) if !k.is_empty() => {
                        env.insert(k.to_owned(), v.to_owned());
                    }
                    // A bare NAME passes agentd's own value through.
                    None if !s.is_empty() => match (cx.env)(&s) {
                        Some(v) => {
                            env.insert(s, v);
                        }
                        None => cx.error_at_node(
                            item,
                            &p,
                            format!("environment variable {s} is not set (write {s}=VALUE to set it)"),
                        ),
                    },
                    _ => cx.error_at_node(item, &p, format!("expected NAME=VALUE, found {s:?}")),
                }
            }
        }
        for k in env.keys() {
            if k.is_empty() || k.contains(['=', '\0']) {
                cx.error_at_node(node, &f("env"), format!("invalid environment variable name {k:?}"));
            }
        }
        let cwd = map
            .get("cwd")
            .and_then(|n| cx.non_empty_string(n, &f("cwd")))
            .map(|s| resolve_path(&s, dir, cx.env));
        let command = command?;
        let name = derived_server_name(&command, &args, index);
        (
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            },
            name,
        )
    } else {
        misplaced(
            cx,
            &["command", "arguments", "args", "env", "env_vars", "cwd"],
            "is for type: stdio servers",
        );
        let url = map.require(cx, "url").and_then(|n| {
            let s = cx.non_empty_string(n, &f("url"))?;
            match url::Url::parse(&s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(s),
                Ok(u) => {
                    cx.error_at_node(n, &f("url"), format!("url must be http or https, not {:?}", u.scheme()));
                    None
                }
                Err(e) => {
                    cx.error_at_node(n, &f("url"), format!("malformed URL {s:?}: {e}"));
                    None
                }
            }
        });
        let headers = match map.get("headers") {
            Some(n) => cx
                .string_map(n, &f("headers"))
                .unwrap_or_default()
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        };
        let url = url?;
        let name = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.replace(['.', ':', '[', ']'], "-")))
            .unwrap_or_else(|| format!("server{index}"));
        (McpTransport::Http { url, headers }, name)
    };
    let name = match map.get("name") {
        Some(n) => {
            let s = cx.non_empty_string(n, &f("name"))?;
            if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                cx.error_at_node(
                    n,
                    &f("name"),
                    format!("invalid server name {s:?}: use letters, digits, - and _"),
                );
            }
            s
        }
        None => default_name,
    };
    (cx.errors.len() == before).then_some(McpServerSpec {
        name,
        transport,
        tool_filter,
        roots,
    })
}

fn decode_subscription(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    servers: &[McpServerSpec],
    server_names: &HashSet<String>,
) -> Option<SubscriptionSpec> {
    let (uri_node, uri_path, map) = match node {
        Node::Scalar(_) => (node, path.to_owned(), None),
        _ => {
            let map = Map::open(cx, node, path, SUBSCRIPTION_KEYS)?;
            (map.require(cx, "uri")?, map.field("uri"), Some(map))
        }
    };
    let uri = cx.non_empty_string(uri_node, &uri_path)?;
    let target = cx.check(uri_node, &uri_path, parse_subscription_uri(&uri))?;
    let mut spec = SubscriptionSpec {
        uri,
        target,
        server: None,
        debounce: DEFAULT_DEBOUNCE,
        interval: DEFAULT_POLL,
        min_interval: DEFAULT_MIN_INTERVAL,
    };
    if let Some(map) = map {
        if let Some(n) = map.get("server") {
            let s = cx.non_empty_string(n, &map.field("server"))?;
            if !server_names.contains(&s) {
                let names: Vec<&str> = servers.iter().map(|x| x.name.as_str()).collect();
                let hint = match suggest(&s, &names) {
                    Some(h) => format!("; did you mean {h:?}?"),
                    None => format!("; this agent's servers: {}", names.join(", ")),
                };
                cx.error_at_node(n, &map.field("server"), format!("unknown server {s:?}{hint}"));
                return None;
            }
            spec.server = Some(s);
        }
        if let Some(d) = map.duration(cx, "min_interval") {
            spec.min_interval = d;
        }
        if let Some(d) = map.duration(cx, "debounce") {
            spec.debounce = d;
        }
        if let Some(d) = map.duration(cx, "interval") {
            if d.is_zero() {
                cx.error_at(
                    &map.start(),
                    &map.field("interval"),
                    "interval must be greater than zero",
                );
                return None;
            }
            spec.interval = d;
        }
    }
    Some(spec)
}

/// Classifies a subscription URI: `tool://NAME?a=b` (also `tool://NAME/?a=b`),
/// a glob over resource URIs (contains `*`), or one resource URI.
pub fn parse_subscription_uri(uri: &str) -> Result<SubscriptionTarget, String> {
    if let Some(rest) = uri.strip_prefix("tool://") {
        let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
        let name = name.trim_end_matches('/');
        if name.is_empty() || name.contains('/') {
            return Err(format!("malformed tool URI {uri:?}: expected tool://TOOL?arg=value"));
        }
        // `a=2` passes the number 2 (tools type their inputs); anything that
        // is not JSON, or is a JSON string, passes as the text written.
        let arguments = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| {
                let value = match serde_json::from_str::<serde_json::Value>(&v) {
                    Ok(j) if !j.is_string() => j,
                    _ => serde_json::Value::String(v.into_owned()),
                };
                (k.into_owned(), value)
            })
            .collect();
        return Ok(SubscriptionTarget::Tool {
            tool: name.to_owned(),
            arguments,
        });
    }
    let parsed = url::Url::parse(uri).map_err(|e| format!("malformed URI {uri:?}: {e}"))?;
    if parsed.scheme().is_empty() {
        return Err(format!("malformed URI {uri:?}: missing scheme"));
    }
    if uri.contains('*') {
        glob::Pattern::new(uri).map_err(|e| format!("invalid URI glob {uri:?}: {e}"))?;
        Ok(SubscriptionTarget::Glob {
            pattern: uri.to_owned(),
        })
    } else {
        Ok(SubscriptionTarget::Resource { uri: uri.to_owned() })
    }
}

fn decode_schedule(cx: &mut Cx, node: &Node, path: &str) -> Option<ScheduleSpec> {
    let map = Map::open(cx, node, path, SCHEDULE_KEYS)?;
    let cron_node = map.require(cx, "cron");
    let cron = cron_node.and_then(|n| {
        let s = cx.non_empty_string(n, &map.field("cron"))?;
        cx.check(n, &map.field("cron"), units::parse_cron(&s)).map(|_| s)
    });
    let prompt = map
        .require(cx, "prompt")
        .and_then(|n| cx.non_empty_string(n, &map.field("prompt")));
    let timezone = match map.get("timezone") {
        Some(n) => cx.non_empty_string(n, &map.field("timezone")).and_then(|tz| {
            let ok = tz.parse::<chrono_tz::Tz>().is_ok();
            let r = if ok {
                Ok(tz.clone())
            } else {
                Err(format!(
                    "unknown timezone {tz:?}; use an IANA name such as Europe/Berlin or UTC"
                ))
            };
            cx.check(n, &map.field("timezone"), r)
        }),
        None => Some("UTC".to_owned()),
    };
    Some(ScheduleSpec {
        cron: cron?,
        prompt: prompt?,
        timezone: timezone?,
    })
}

fn decode_restart(cx: &mut Cx, node: &Node, path: &str, mut r: RestartSpec) -> RestartSpec {
    let Some(map) = Map::open(cx, node, path, RESTART_KEYS) else {
        return r;
    };
    if let Some(n) = map.get("policy") {
        let p = map.field("policy");
        if let Some(s) = cx.string(n, &p) {
            match s.as_str() {
                "always" => r.policy = RestartPolicy::Always,
                "on-failure" | "on_failure" => r.policy = RestartPolicy::OnFailure,
                "never" | "no" => r.policy = RestartPolicy::Never,
                other => cx.error_at_node(
                    n,
                    &p,
                    format!("unknown restart policy {other:?}; expected always, on-failure or never"),
                ),
            }
        }
    }
    if let Some(d) = map.duration(cx, "backoff_min") {
        r.backoff_min = d;
    }
    if let Some(d) = map.duration(cx, "backoff_max") {
        r.backoff_max = d;
    }
    if let Some(b) = map.number::<u32>(cx, "burst", "a whole number") {
        if b == 0 {
            cx.error_at(&map.start(), &map.field("burst"), "burst must be at least 1");
        }
        r.burst = b.max(1);
    }
    if let Some(d) = map.duration(cx, "interval") {
        r.interval = d;
    }
    if r.backoff_min > r.backoff_max {
        cx.error_at(&map.start(), path, "backoff_min must not exceed backoff_max");
    }
    r
}

fn decode_heartbeat(cx: &mut Cx, node: &Node, path: &str, mut h: HeartbeatSpec) -> HeartbeatSpec {
    let Some(map) = Map::open(cx, node, path, HEARTBEAT_KEYS) else {
        return h;
    };
    if let Some(d) = map.duration(cx, "interval") {
        h.interval = d;
    }
    if let Some(d) = map.duration(cx, "timeout") {
        h.timeout = d;
    }
    if h.interval.is_zero() {
        cx.error_at(&map.start(), &map.field("interval"), "interval must be more than 0");
    }
    if h.timeout <= h.interval {
        cx.error_at(
            &map.start(),
            &map.field("timeout"),
            "timeout must be longer than interval (a child gets several pings before it counts as hung)",
        );
    }
    h
}

fn decode_bridge(cx: &mut Cx, node: &Node, path: &str) -> BridgeSpec {
    let mut b = BridgeSpec::default();
    let Some(map) = Map::open(cx, node, path, BRIDGE_KEYS) else {
        return b;
    };
    if let Some(v) = map.size(cx, "max_request") {
        b.max_request = v;
    }
    if let Some(v) = map.size(cx, "max_reply") {
        b.max_reply = v;
    }
    if let Some(v) = map.duration(cx, "call_timeout") {
        b.call_timeout = v;
    }
    for (key, zero) in [("max_request", b.max_request == 0), ("max_reply", b.max_reply == 0)] {
        if zero && let Some(n) = map.get(key) {
            cx.error_at_node(n, &map.field(key), "must be more than 0 bytes");
        }
    }
    b
}

fn decode_limits(cx: &mut Cx, node: &Node, path: &str, mut l: Limits) -> Limits {
    let Some(map) = Map::open(cx, node, path, LIMIT_KEYS) else {
        return l;
    };
    let positive = |cx: &mut Cx, key: &str, v: u64| {
        if v == 0 {
            cx.error_at(&map.start(), &map.field(key), format!("{key} must be at least 1"));
        }
    };
    if let Some(v) = map.number::<u32>(cx, "max_turns", "a whole number") {
        positive(cx, "max_turns", v.into());
        l.max_turns = v;
    }
    if let Some(v) = map.number::<u32>(cx, "max_tool_calls", "a whole number") {
        positive(cx, "max_tool_calls", v.into());
        l.max_tool_calls = v;
    }
    if let Some(v) = map.number::<u64>(cx, "max_tokens", "a whole number") {
        positive(cx, "max_tokens", v);
        l.max_tokens = v;
    }
    if let Some(v) = map.duration(cx, "task_timeout") {
        l.task_timeout = v;
    }
    if let Some(v) = map.number::<u32>(cx, "max_attempts", "a whole number") {
        positive(cx, "max_attempts", v.into());
        l.max_attempts = v;
    }
    if let Some(v) = map.number::<u32>(cx, "history_messages", "a whole number") {
        l.history_messages = v;
    }
    if let Some(v) = map.number::<u64>(cx, "history_tokens", "a whole number") {
        l.history_tokens = v;
    }
    if let Some(v) = map.size(cx, "workdir_size") {
        positive(cx, "workdir_size", v);
        l.workdir_size = v;
    }
    if let Some(v) = map.number::<u64>(cx, "workdir_files", "a whole number") {
        positive(cx, "workdir_files", v);
        l.workdir_files = v;
    }
    l
}

/// Decodes policy keys over `base`. `inline` allows the `profile` key.
fn decode_policy(cx: &mut Cx, node: &Node, path: &str, mut p: SandboxPolicy, inline: bool) -> Option<SandboxPolicy> {
    let keys = if inline { POLICY_KEYS } else { &POLICY_KEYS[1..] };
    let map = Map::open(cx, node, path, keys)?;
    let before = cx.errors.len();
    if let Some(n) = map.get("backend") {
        let f = map.field("backend");
        if let Some(s) = cx.string(n, &f) {
            match Backend::parse(&s) {
                Some(b) => p.backend = b,
                None => cx.error_at_node(
                    n,
                    &f,
                    format!("unknown backend {s:?}; expected one of: {}", Backend::NAMES.join(", ")),
                ),
            }
        }
    }
    if let Some(b) = map.bool(cx, "best_effort") {
        p.best_effort = b;
    }
    if let Some(b) = map.bool(cx, "network") {
        p.network = b;
    }
    for key in ["read_only", "writable"] {
        let Some(n) = map.get(key) else { continue };
        let mut paths = Vec::new();
        for (item, ip) in cx.list(n, &map.field(key), false) {
            let Some(s) = cx.non_empty_string(item, &ip) else {
                continue;
            };
            let expanded = resolve_path(&s, Path::new("/"), cx.env);
            if s.starts_with('/') || s.starts_with("~/") {
                paths.push(expanded);
            } else {
                cx.error_at_node(item, &ip, format!("sandbox paths must be absolute, found {s:?}"));
            }
        }
        if key == "read_only" {
            p.read_only = paths
        } else {
            p.writable = paths
        }
    }
    if let Some(d) = map.duration(cx, "timeout") {
        p.timeout = d;
    }
    if let Some(n) = map.get("limits")
        && let Some(lm) = Map::open(cx, n, &map.field("limits"), POLICY_LIMIT_KEYS)
    {
        let l = &mut p.limits;
        if let Some(d) = lm.duration(cx, "cpu") {
            l.cpu_seconds = Some(d.as_secs().max(1));
        }
        if let Some(v) = lm.size(cx, "memory") {
            l.memory_bytes = Some(v);
        }
        if let Some(v) = lm.number::<u64>(cx, "processes", "a whole number") {
            l.processes = Some(v);
        }
        if let Some(v) = lm.size(cx, "file_size") {
            l.file_size_bytes = Some(v);
        }
        if let Some(v) = lm.number::<u64>(cx, "open_files", "a whole number") {
            l.open_files = Some(v);
        }
        if let Some(v) = lm.size(cx, "output") {
            l.output_bytes = v;
        }
    }
    (cx.errors.len() == before).then_some(p)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_derive_from_the_launched_package() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            derived_server_name("uvx", &a(&["mcp-server-fetch"]), 0),
            "mcp-server-fetch"
        );
        assert_eq!(
            derived_server_name("npx", &a(&["-y", "@modelcontextprotocol/server-everything"]), 0),
            "server-everything"
        );
        assert_eq!(
            derived_server_name("/usr/bin/agentd", &a(&["mcp-watch", "x"]), 0),
            "agentd"
        );
        assert_eq!(derived_server_name("python3", &a(&["srv.py"]), 3), "srv");
    }

    #[test]
    fn tool_uris_parse_in_both_forms_with_typed_arguments() {
        for uri in ["tool://get-sum?a=1&b=2.5", "tool://get-sum/?a=1&b=2.5"] {
            let Ok(SubscriptionTarget::Tool { tool, arguments }) = parse_subscription_uri(uri) else {
                panic!("not a tool target");
            };
            assert_eq!(tool, "get-sum");
            assert_eq!(
                serde_json::Value::Object(arguments),
                serde_json::json!({"a": 1, "b": 2.5})
            );
        }
        let Ok(SubscriptionTarget::Tool { arguments, .. }) =
            parse_subscription_uri("tool://echo?message=hello%20there&flag=true")
        else {
            panic!("not a tool target");
        };
        assert_eq!(
            serde_json::Value::Object(arguments),
            serde_json::json!({"message": "hello there", "flag": true})
        );
    }

    #[test]
    fn subscription_uris_classify() {
        assert!(matches!(
            parse_subscription_uri("tool://fetch/?url=https://example.com").unwrap(),
            SubscriptionTarget::Tool { ref tool, ref arguments } if tool == "fetch" && arguments["url"] == "https://example.com"
        ));
        assert!(matches!(
            parse_subscription_uri("file:///srv/*.md").unwrap(),
            SubscriptionTarget::Glob { .. }
        ));
        assert!(matches!(
            parse_subscription_uri("demo://resource/static/document/1").unwrap(),
            SubscriptionTarget::Resource { .. }
        ));
        assert!(parse_subscription_uri("not a uri").is_err());
        assert!(parse_subscription_uri("tool://?x=1").is_err());
    }
}
