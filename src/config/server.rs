//! `mcp_servers`: one agent's MCP servers, stdio (`command`, `args`, `env`,
//! `cwd`) or streamable HTTP (`url`, `headers`), their names (given or
//! derived from what they launch, unique within the agent), `tool_filter`
//! and `roots`.
//!
//! A declared `env` that would inject code into every process a server
//! starts (`LD_PRELOAD`, `NODE_OPTIONS`, …) is refused here, with its
//! position, by the same rule the MCP layer enforces at spawn
//! ([`crate::mcp::check_env`]). This module must never start or reach a
//! server: it only says how to.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use marked_yaml::{Node, Span};

use super::load::resolve_path;
use super::types::{McpServerSpec, McpTransport};
use crate::yaml::{Cx, Map};

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

/// The servers of one agent, and their names: a set, so a long server list
/// loads in linear time.
pub(super) fn decode_servers(
    cx: &mut Cx,
    node: &Node,
    path: &str,
    dir: &Path,
) -> (Vec<McpServerSpec>, HashSet<String>) {
    let mut servers: Vec<McpServerSpec> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for (i, (item, p)) in cx.list(node, path, false).into_iter().enumerate() {
        if let Some(s) = decode_server(cx, item, &p, i, dir) {
            if names.contains(&s.name) {
                let msg = format!("duplicate server name {:?}; give each server a unique name", s.name);
                cx.error_at_node(item, &p, msg);
            } else {
                names.insert(s.name.clone());
                servers.push(s);
            }
        }
    }
    (servers, names)
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

    // Where each `env` variable was written, for errors about it.
    let mut written: Vec<(String, Span, String)> = Vec::new();
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
            for (k, _) in n.as_mapping().into_iter().flat_map(|m| m.iter()) {
                written.push((k.as_str().to_owned(), *k.span(), format!("{}.{}", f("env"), k.as_str())));
            }
        }
        if let Some(n) = map.get("env_vars") {
            for (item, p) in cx.list(n, &f("env_vars"), false) {
                let Some(s) = cx.string(item, &p) else { continue };
                match s.split_once('=') {
                    Some((k, v)) if !k.is_empty() => {
                        written.push((k.to_owned(), *item.span(), p.clone()));
                        env.insert(k.to_owned(), v.to_owned());
                    }
                    // A bare NAME passes agentd's own value through.
                    None if !s.is_empty() => match (cx.env)(&s) {
                        Some(v) => {
                            written.push((s.clone(), *item.span(), p.clone()));
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
    // One key at a time, so every refused key is reported where it was written.
    for (key, span, p) in &written {
        let one = BTreeMap::from([(key.clone(), String::new())]);
        if let Err(e) = crate::mcp::check_env(&name, &one) {
            cx.error_at(span, p, e.to_string());
        }
    }
    (cx.errors.len() == before).then_some(McpServerSpec {
        name,
        transport,
        tool_filter,
        roots,
    })
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
}
