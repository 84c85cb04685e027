//! `limits` and `bridge`: what one task may spend (turns, tool calls,
//! tokens, time, attempts, history, workdir quota) and the tool bridge's
//! request and reply caps.
//!
//! Counts that must be positive are checked here. This module must never
//! enforce a limit: the agent child and the sandbox do.

use marked_yaml::Node;

use super::types::{BridgeSpec, Limits};
use crate::yaml::{Cx, Map};

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
const BRIDGE_KEYS: &[&str] = &["max_request", "max_reply", "call_timeout"];

pub(super) fn decode_limits(cx: &mut Cx, node: &Node, path: &str, mut l: Limits) -> Limits {
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

pub(super) fn decode_bridge(cx: &mut Cx, node: &Node, path: &str) -> BridgeSpec {
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
