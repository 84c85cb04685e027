//! `sandbox` (in an agent or in `defaults`) and sandbox profiles: a profile
//! name, or an inline policy over a base profile; profiles are looked up
//! next to the config (`sandbox/NAME.yaml`) and then among the built-in
//! ones, read once per load.
//!
//! This module owns the policy keys (`backend`, `best_effort`, `network` —
//! a bool or domain rules `{allow, deny, ask, ask_timeout, resolve, max_bytes,
//! max_connections}`, refused under landlock and none —, `read_only`,
//! `writable`, `timeout`, `limits`) and is the one reader of
//! profile files, for the loader and `agentd sandbox` alike. It must never
//! apply a policy: [`crate::sandbox`] does, in the forked child only.

use std::path::{Path, PathBuf};

use marked_yaml::Node;

use super::error::ConfigErrors;
use super::load::{Loader, absolute, plain_error, resolve_path};
use crate::sandbox::egress::{
    Pattern, Rules,
    rules::{DEFAULT_ASK_TIMEOUT, DEFAULT_MAX_CONNECTIONS},
};
use crate::sandbox::{Backend, Network, SandboxPolicy};
use crate::yaml::{self, Cx, Map, is_null, parse, suggest};

/// Profiles compiled into the binary, so `sandbox: default` works wherever
/// the config lives. A `sandbox/NAME.yaml` next to the config wins.
const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../../sandbox/default.yaml")),
    ("strict", include_str!("../../sandbox/strict.yaml")),
    ("networked", include_str!("../../sandbox/networked.yaml")),
    ("web", include_str!("../../sandbox/web.yaml")),
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
const NETWORK_KEYS: &[&str] = &[
    "allow",
    "deny",
    "ask",
    "ask_timeout",
    "resolve",
    "max_bytes",
    "max_connections",
];
const POLICY_LIMIT_KEYS: &[&str] = &["cpu", "memory", "processes", "file_size", "open_files", "output"];

/// Resolves a sandbox profile by name: `<config_dir>/sandbox/NAME.yaml`
/// first, then the built-in profiles. Returns the policy and where it came
/// from (a file path, or `<builtin>/NAME.yaml`).
pub fn resolve_sandbox_profile(
    name: &str,
    config_dir: Option<&Path>,
) -> Result<(SandboxPolicy, PathBuf), ConfigErrors> {
    let mut errors = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    let mut loader = Loader::new(&env);
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

impl Loader<'_> {
    pub(super) fn builtin_default_sandbox(&mut self, cx: &mut Cx, map: &Map) -> Option<(String, SandboxPolicy)> {
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
    pub(super) fn decode_sandbox(
        &mut self,
        cx: &mut Cx,
        node: &Node,
        path: &str,
        dir: &Path,
    ) -> Option<(String, SandboxPolicy)> {
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
        errors: &mut Vec<yaml::Error>,
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
    if let Some(n) = map.get("network") {
        if let Some(net) = decode_network(cx, n, &map.field("network")) {
            p.network = net;
        }
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
    if let Network::Domains(_) = p.network
        && matches!(p.backend, Backend::Landlock | Backend::None)
    {
        let (span, field) = match (map.get("network"), map.get("backend")) {
            (Some(n), _) | (None, Some(n)) => (
                *n.span(),
                map.field(if map.get("network").is_some() {
                    "network"
                } else {
                    "backend"
                }),
            ),
            (None, None) => (map.start(), map.field("network")),
        };
        cx.error_at(
            &span,
            &field,
            format!(
                "domain rules (network: {{allow, deny}}) need a network namespace, which backend {} does not \
                 give: use backend bwrap or bwrap+landlock (e.g. profile web), or network: true",
                p.backend.name()
            ),
        );
    }
    (cx.errors.len() == before).then_some(p)
}

/// `network: true | false | {allow, deny, resolve, max_bytes,
/// max_connections}`.
fn decode_network(cx: &mut Cx, node: &Node, path: &str) -> Option<Network> {
    if node.as_mapping().is_none() {
        return cx.bool(node, path).map(|b| if b { Network::On } else { Network::Off });
    }
    let map = Map::open(cx, node, path, NETWORK_KEYS)?;
    let before = cx.errors.len();
    let mut rules = Rules {
        max_connections: DEFAULT_MAX_CONNECTIONS,
        ask_timeout: DEFAULT_ASK_TIMEOUT,
        ..Rules::default()
    };
    for key in ["allow", "deny", "ask"] {
        let Some(n) = map.get(key) else { continue };
        let mut patterns = Vec::new();
        for (item, ip) in cx.list(n, &map.field(key), false) {
            if let Some(s) = cx.non_empty_string(item, &ip)
                && let Some(pat) = cx.check(item, &ip, Pattern::parse(&s))
            {
                patterns.push(pat);
            }
        }
        match key {
            "allow" => rules.allow = patterns,
            "deny" => rules.deny = patterns,
            _ => rules.ask = patterns,
        }
    }
    if let Some(n) = map.get("resolve") {
        for (name, ip) in cx.string_map(n, &map.field("resolve")).unwrap_or_default() {
            let f = format!("{}.{name}", map.field("resolve"));
            let host = name.trim_end_matches('.').to_ascii_lowercase();
            let parsed = ip
                .parse::<std::net::IpAddr>()
                .map_err(|_| format!("{ip:?} is not an IP address (network.resolve pins a name to an address)"));
            let valid_name = Pattern::parse(&host)
                .ok()
                .filter(|p| p.port.is_none() && !p.host.contains('*'));
            if valid_name.is_none() {
                cx.error_at_node(n, &f, format!("{name:?} is not a host name"));
            } else if let Some(ip) = cx.check(n, &f, parsed) {
                rules.resolve.insert(host, ip);
            }
        }
    }
    if let Some(v) = map.size(cx, "max_bytes") {
        rules.max_bytes = Some(v);
    }
    if let Some(v) = map.number::<usize>(cx, "max_connections", "a whole number") {
        if v == 0 {
            cx.error_at_node(node, &map.field("max_connections"), "must be at least 1");
        }
        rules.max_connections = v;
    }
    if let Some(d) = map.duration(cx, "ask_timeout") {
        rules.ask_timeout = d;
    }
    if rules.allow.is_empty() && rules.ask.is_empty() && cx.errors.len() == before {
        cx.error_at(
            &map.start(),
            &map.field("allow"),
            "domain rules with no allow or ask list reach nothing; write network: false, or list hosts under allow",
        );
    }
    (cx.errors.len() == before).then_some(Network::Domains(rules))
}
