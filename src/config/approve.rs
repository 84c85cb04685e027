//! `approve:`: the tools (globs) and code block kinds whose runs wait for
//! an operator, the timeout and what it answers. This module must never
//! ask or answer: the agent child asks, the supervisor records and answers.

use std::time::Duration;

use marked_yaml::Node;

use super::types::{ApprovalPolicy, FENCE_KINDS};
use crate::yaml::{Cx, Map};

const APPROVE_KEYS: &[&str] = &["tools", "fences", "timeout", "on_timeout"];

pub(super) fn decode_approve(cx: &mut Cx, node: &Node, path: &str) -> Option<ApprovalPolicy> {
    let map = Map::open(cx, node, path, APPROVE_KEYS)?;
    let before = cx.errors.len();
    let tools = match map.get("tools") {
        Some(n) => {
            let tools = cx.strings(n, &map.field("tools")).unwrap_or_default();
            for t in &tools {
                if let Err(e) = glob::Pattern::new(t) {
                    cx.error_at_node(n, &map.field("tools"), format!("{t:?} is not a valid pattern: {e}"));
                }
            }
            tools
        }
        None => Vec::new(),
    };
    let fences = match map.get("fences") {
        None => Vec::new(),
        Some(n) if n.as_scalar().is_some() => match cx.string(n, &map.field("fences")).as_deref() {
            Some("all") => FENCE_KINDS.iter().map(|s| (*s).to_owned()).collect(),
            Some("none") => Vec::new(),
            Some(other) => {
                cx.error_at_node(
                    n,
                    &map.field("fences"),
                    format!(
                        "unknown value {other:?}; expected all, none or a list of {}",
                        FENCE_KINDS.join(", ")
                    ),
                );
                Vec::new()
            }
            None => Vec::new(),
        },
        Some(n) => {
            let kinds = cx.strings(n, &map.field("fences")).unwrap_or_default();
            for k in &kinds {
                if !FENCE_KINDS.contains(&k.as_str()) {
                    cx.error_at_node(
                        n,
                        &map.field("fences"),
                        format!("unknown block kind {k:?}; expected {}", FENCE_KINDS.join(", ")),
                    );
                }
            }
            kinds
        }
    };
    let timeout = map.duration(cx, "timeout").unwrap_or(Duration::from_secs(30 * 60));
    let on_timeout_approve = match map.get("on_timeout") {
        None => false,
        Some(n) => match cx.string(n, &map.field("on_timeout")).as_deref() {
            Some("deny") => false,
            Some("approve") => true,
            Some(other) => {
                cx.error_at_node(
                    n,
                    &map.field("on_timeout"),
                    format!("unknown value {other:?}; expected deny or approve"),
                );
                false
            }
            None => false,
        },
    };
    (cx.errors.len() == before).then_some(ApprovalPolicy {
        tools,
        fences,
        timeout,
        on_timeout_approve,
    })
}
