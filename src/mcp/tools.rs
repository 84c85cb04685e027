//! MCP tools as the model sees them: unique function names, `tool_filter`,
//! and results rendered as text.
//!
//! Pure functions only: no I/O, no MCP session. The hub calls [`name_tools`]
//! with every connected server's tool list and [`render_result`] with every
//! `tools/call` result.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    /// Unique, model-facing function name: `[a-zA-Z0-9_-]{1,64}`. The
    /// server's own tool name when no other server has a tool of that name,
    /// otherwise `server__tool`.
    pub name: String,
    /// The MCP server that has the tool.
    pub server: String,
    /// The tool's own name on that server.
    pub tool: String,
    pub description: String,
    /// The tool's input JSON Schema, as the server sent it.
    pub input_schema: Value,
}

/// One server's tools, in the order the server listed them.
pub(crate) struct ServerTools<'a> {
    pub server: &'a str,
    pub filter: Option<&'a [String]>,
    pub tools: &'a [rmcp::model::Tool],
}

/// Whether `tool` passes a server's `tool_filter` (glob patterns; no filter
/// passes everything).
pub fn tool_allowed(filter: Option<&[String]>, tool: &str) -> bool {
    match filter {
        None => true,
        Some(patterns) => patterns.iter().any(|p| match glob::Pattern::new(p) {
            Ok(pattern) => pattern.matches(tool),
            Err(_) => p == tool,
        }),
    }
}

/// Names every allowed tool of every server, uniquely.
///
/// A tool keeps its own name (sanitized) when it is unique across servers;
/// when two servers share a name, both become `server__tool`. Names are cut
/// to 64 characters; a cut name that would collide gets a short hash suffix.
/// The result is deterministic for the same input, so the hub can recompute
/// it for each call instead of keeping a second copy of the table.
pub(crate) fn name_tools(servers: &[ServerTools<'_>]) -> Vec<ToolInfo> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for s in servers {
        for t in s.tools.iter().filter(|t| tool_allowed(s.filter, &t.name)) {
            *count.entry(sanitize(&t.name)).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    let mut taken: BTreeMap<String, ()> = BTreeMap::new();
    for s in servers {
        for t in s.tools.iter().filter(|t| tool_allowed(s.filter, &t.name)) {
            let own = sanitize(&t.name);
            let wanted = if count.get(&own).copied().unwrap_or(0) > 1 {
                format!("{}__{}", sanitize(s.server), own)
            } else {
                own
            };
            let mut name = cut(&wanted, 64);
            if taken.contains_key(&name) || name != wanted {
                // A cut or still-colliding name: make it unique but stable.
                let suffix = format!("_{:08x}", fnv(&format!("{}\0{}", s.server, t.name)));
                name = format!("{}{}", cut(&wanted, 64 - suffix.len()), suffix);
            }
            if taken.insert(name.clone(), ()).is_some() {
                // Two identical (server, tool) pairs: a server listing a tool twice.
                continue;
            }
            out.push(ToolInfo {
                name,
                server: s.server.to_owned(),
                tool: t.name.to_string(),
                description: t
                    .description
                    .as_deref()
                    .or(t.title.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
                input_schema: Value::Object((*t.input_schema).clone()),
            });
        }
    }
    out
}

/// Maps a name onto `[a-zA-Z0-9_-]`, replacing anything else with `_`.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".to_owned() } else { s }
}

fn cut(s: &str, max: usize) -> String {
    // ASCII only after sanitize, so byte slicing is safe.
    s[..s.len().min(max)].to_owned()
}

fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Renders a `tools/call` result (as JSON) for the model: text blocks
/// verbatim, embedded text resources verbatim under their URI, binary and
/// media blocks as a one-line description (the model cannot read base64),
/// and `structuredContent` as JSON when there are no content blocks.
pub fn render_result(result: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(blocks) = result.get("content").and_then(Value::as_array) {
        for block in blocks {
            parts.push(render_block(block));
        }
    }
    if parts.is_empty()
        && let Some(structured) = result.get("structuredContent")
    {
        parts.push(serde_json::to_string_pretty(structured).unwrap_or_default());
    }
    parts.join("\n")
}

fn render_block(block: &Value) -> String {
    let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
    let str_field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    match kind {
        "text" => str_field(block, "text").unwrap_or_default(),
        "image" | "audio" => format!(
            "[{kind} content: {}, {} bytes]",
            str_field(block, "mimeType").unwrap_or_else(|| "unknown type".into()),
            base64_len(block.get("data"))
        ),
        "resource_link" => {
            let uri = str_field(block, "uri").unwrap_or_default();
            match str_field(block, "name") {
                Some(name) if name != uri => format!("[resource link: {uri} ({name})]"),
                _ => format!("[resource link: {uri}]"),
            }
        }
        "resource" => {
            let res = block.get("resource").unwrap_or(&Value::Null);
            render_resource_contents(res)
        }
        _ => serde_json::to_string(block).unwrap_or_default(),
    }
}

/// Renders one `ResourceContents` (text or blob) as text.
pub(crate) fn render_resource_contents(res: &Value) -> String {
    let uri = res.get("uri").and_then(Value::as_str).unwrap_or("");
    if let Some(text) = res.get("text").and_then(Value::as_str) {
        if uri.is_empty() {
            text.to_owned()
        } else {
            format!("[resource {uri}]\n{text}")
        }
    } else {
        format!(
            "[binary resource {uri}: {}, {} bytes]",
            res.get("mimeType").and_then(Value::as_str).unwrap_or("unknown type"),
            base64_len(res.get("blob"))
        )
    }
}

/// Decoded size of a base64 string, without decoding it.
fn base64_len(v: Option<&Value>) -> usize {
    let s = v.and_then(Value::as_str).unwrap_or("");
    let pad = s.bytes().rev().take_while(|b| *b == b'=').count();
    (s.len() / 4 * 3).saturating_sub(pad)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn tool(name: &str) -> rmcp::model::Tool {
        rmcp::model::Tool::new(
            name.to_owned(),
            format!("does {name}"),
            Arc::new(serde_json::Map::new()),
        )
    }

    #[test]
    fn shared_names_are_prefixed_with_the_server_and_unique_ones_are_kept() {
        let a = [tool("echo"), tool("read.file")];
        let b = [tool("echo"), tool("sum")];
        let names: Vec<String> = name_tools(&[
            ServerTools {
                server: "one",
                filter: None,
                tools: &a,
            },
            ServerTools {
                server: "two",
                filter: None,
                tools: &b,
            },
        ])
        .into_iter()
        .map(|t| t.name)
        .collect();
        assert_eq!(names, ["one__echo", "read_file", "two__echo", "sum"]);
    }

    #[test]
    fn tool_filter_globs_hide_tools() {
        let a = [tool("get-sum"), tool("get-env"), tool("echo")];
        let filter = vec!["get-s*".to_owned(), "echo".to_owned()];
        let names: Vec<String> = name_tools(&[ServerTools {
            server: "s",
            filter: Some(&filter),
            tools: &a,
        }])
        .into_iter()
        .map(|t| t.name)
        .collect();
        assert_eq!(names, ["get-sum", "echo"]);
    }

    #[test]
    fn long_names_are_cut_to_64_valid_characters_and_stay_unique() {
        let long = "x".repeat(80);
        let a = [tool(&format!("{long}a")), tool(&format!("{long}b"))];
        let tools = name_tools(&[ServerTools {
            server: "s",
            filter: None,
            tools: &a,
        }]);
        assert_eq!(tools.len(), 2);
        assert_ne!(tools[0].name, tools[1].name);
        for t in &tools {
            assert!(t.name.len() <= 64);
            assert!(
                t.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
        }
    }

    #[test]
    fn results_render_text_resources_and_media_faithfully() {
        let result = json!({"content": [
            {"type": "text", "text": "hello\nworld"},
            {"type": "image", "data": "aGVsbG8=", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "text": "A"}},
            {"type": "resource_link", "uri": "file:///b", "name": "b"}
        ]});
        assert_eq!(
            render_result(&result),
            "hello\nworld\n[image content: image/png, 5 bytes]\n[resource file:///a]\nA\n\
             [resource link: file:///b (b)]"
        );
        let structured = json!({"content": [], "structuredContent": {"sum": 3}});
        assert_eq!(render_result(&structured), "{\n  \"sum\": 3\n}");
    }
}
