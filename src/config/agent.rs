//! One agent: its accepted keys, the fields it reads itself (`name`,
//! `model`, `system_prompt`/`system_prompt_file`, `skills`) and how
//! `defaults` merge into the rest.
//!
//! Each nested section is decoded by the module that owns it (servers,
//! subscriptions, schedules, sandbox, llm, restart, heartbeat, limits,
//! bridge, webhook). An agent with any error is not returned, but every error in it
//! is recorded. It must never look at other agents (the top level checks
//! names across files).

use std::path::Path;

use marked_yaml::Node;

use super::defaults::Defaults;
use super::limits::{decode_bridge, decode_limits};
use super::llm::{decode_llm, route_model};
use super::load::{Loader, resolve_path};
use super::schedule::decode_schedule;
use super::server::decode_servers;
use super::subscription::decode_subscription;
use super::supervision::{decode_heartbeat, decode_restart};
use super::types::{AgentName, AgentSpec, BridgeSpec, Placement, SkillSpec};
use crate::yaml::{Cx, Map};

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
    "budget",
    "approve",
    "webhook",
    "placement",
];

impl Loader<'_> {
    pub(super) fn decode_agent(
        &mut self,
        cx: &mut Cx,
        node: &Node,
        path: &str,
        dir: &Path,
        d: &Defaults,
    ) -> Option<AgentSpec> {
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

        let (mcp_servers, server_names) = match map.get("mcp_servers") {
            Some(n) => decode_servers(cx, n, &f("mcp_servers"), dir),
            None => Default::default(),
        };

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

        let skills = match map.get("skills") {
            Some(n) => self.decode_skills(cx, n, &f("skills"), dir),
            None => Vec::new(),
        };

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

        // An agent's own budget replaces the default one whole: limits
        // mixed from two places would be hard to read off either.
        let budget = match map.get("budget") {
            Some(n) => super::budget::decode_budget(cx, n, &f("budget")),
            None => d.budget.clone(),
        };

        let approve = map
            .get("approve")
            .and_then(|n| super::approve::decode_approve(cx, n, &f("approve")));
        let webhook = map
            .get("webhook")
            .and_then(|n| super::operator::decode_webhook(cx, n, &f("webhook")));
        let placement = match map.get("placement") {
            Some(n) => super::fleet::decode_placement(cx, n, &f("placement")),
            None => Some(Placement::default()),
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
            budget,
            approve,
            webhook,
            placement: placement?,
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

    /// Skill directories: each must hold a valid `SKILL.md`, and names are
    /// unique within the agent.
    fn decode_skills(&mut self, cx: &mut Cx, node: &Node, field: &str, dir: &Path) -> Vec<SkillSpec> {
        let mut skills = Vec::new();
        for (item, p) in cx.list(node, field, false) {
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
        skills
    }
}
