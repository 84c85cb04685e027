//! `llm` (in an agent or in `defaults`) and where a model is routed:
//! `base_url`, `api_key_env`, `temperature`, `request_timeout`,
//! `max_retries`, `stream`.
//!
//! Without `base_url`, the model name and the OpenAI SDK's environment
//! choose the provider ([`crate::llm::providers`]). This module must never
//! read or echo an API key: it records the NAME of the variable only.

use marked_yaml::Node;

use super::types::LlmSpec;
use crate::yaml::{Cx, Map};

const LLM_KEYS: &[&str] = &[
    "base_url",
    "api_key_env",
    "temperature",
    "request_timeout",
    "max_retries",
    "stream",
];

/// Which routing fields of `llm` a config wrote itself.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LlmSet {
    pub(super) base_url: bool,
    pub(super) api_key_env: bool,
}

/// Without `llm.base_url`, a model goes where the OpenAI SDK's environment
/// and its LiteLLM-style prefix say ([`crate::llm::providers`]).
pub(super) fn route_model(cx: &mut Cx, map: &Map, model: String, llm: &mut LlmSpec, set: LlmSet) -> Option<String> {
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

pub(super) fn decode_llm(cx: &mut Cx, node: &Node, path: &str, mut llm: LlmSpec, mut set: LlmSet) -> (LlmSpec, LlmSet) {
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
