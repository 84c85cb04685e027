//! `subscriptions`: what makes an agent react — resource URIs, URI globs
//! and polled `tool://` calls — with their server, `debounce`, `interval`
//! and `min_interval`.
//!
//! [`parse_subscription_uri`] is the one classifier of subscription URIs
//! (the MCP layer uses it too). This module must never subscribe: it only
//! says to what.

use std::collections::HashSet;
use std::time::Duration;

use marked_yaml::Node;

use super::types::{McpServerSpec, SubscriptionSpec, SubscriptionTarget};
use crate::yaml::{Cx, Map, suggest};

const SUBSCRIPTION_KEYS: &[&str] = &["uri", "server", "debounce", "interval", "min_interval"];

/// Default quiet time for resource subscriptions: bursts inside it coalesce.
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// Default least time between two triggers from one resource of a
/// subscription: a chatty server cannot turn into an LLM bill.
const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Default poll interval for `tool://` subscriptions.
const DEFAULT_POLL: Duration = Duration::from_secs(30);

pub(super) fn decode_subscription(
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

#[cfg(test)]
mod tests {
    use super::*;

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
