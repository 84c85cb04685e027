//! `restart` and `heartbeat`: how the supervisor keeps an agent's child
//! alive — when it restarts one that exited (policy, backoff, burst), and
//! how it tells a hung child from a busy one.
//!
//! Values are checked against each other here (`backoff_min` <=
//! `backoff_max`, `timeout` > `interval`). This module must never act on
//! them: [`crate::supervisor`] does.

use marked_yaml::Node;

use super::types::{HeartbeatSpec, RestartPolicy, RestartSpec};
use crate::yaml::{Cx, Map};

const RESTART_KEYS: &[&str] = &["policy", "backoff_min", "backoff_max", "burst", "interval"];
const HEARTBEAT_KEYS: &[&str] = &["interval", "timeout"];

pub(super) fn decode_restart(cx: &mut Cx, node: &Node, path: &str, mut r: RestartSpec) -> RestartSpec {
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

pub(super) fn decode_heartbeat(cx: &mut Cx, node: &Node, path: &str, mut h: HeartbeatSpec) -> HeartbeatSpec {
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
