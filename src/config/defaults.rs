//! `defaults`: what every agent inherits unless it sets the field itself
//! (`model`, `llm`, `sandbox`, `restart`, `heartbeat`, `limits`, `budget`).
//!
//! Each field is decoded by the module that owns it, so a default is
//! checked exactly like the agent field it stands for. This module must
//! never merge defaults into an agent: [`agent`](super::agent) does, field
//! by field.

use std::path::Path;

use marked_yaml::Node;

use super::limits::decode_limits;
use super::llm::{LlmSet, decode_llm};
use super::load::Loader;
use super::supervision::{decode_heartbeat, decode_restart};
use super::types::{HeartbeatSpec, Limits, LlmSpec, RestartSpec};
use crate::sandbox::SandboxPolicy;
use crate::yaml::{Cx, Map};

const DEFAULT_KEYS: &[&str] = &["model", "llm", "sandbox", "restart", "heartbeat", "limits", "budget"];

/// What agents inherit from `defaults`.
#[derive(Default)]
pub(super) struct Defaults {
    pub(super) model: Option<String>,
    pub(super) llm: LlmSpec,
    /// Which of `llm`'s routing fields the config wrote (not defaults).
    pub(super) llm_set: LlmSet,
    pub(super) sandbox: Option<(String, SandboxPolicy)>,
    pub(super) restart: RestartSpec,
    pub(super) heartbeat: HeartbeatSpec,
    pub(super) limits: Limits,
    pub(super) budget: Option<crate::budget::BudgetSpec>,
}

impl Loader<'_> {
    pub(super) fn decode_defaults(&mut self, cx: &mut Cx, node: &Node, dir: &Path) -> Defaults {
        let mut d = Defaults::default();
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
        if let Some(n) = map.get("budget") {
            d.budget = super::budget::decode_budget(cx, n, "defaults.budget");
        }
        d
    }
}
