//! Subscriptions: which resource URIs a subscription covers, and what a
//! firing carries.
//!
//! Pure functions only. The connection task decides *when* to fire (a
//! `resources/updated` notification, a `list_changed` that brought a new
//! matching resource, a changed `tool://` result); this module says *what*
//! matches and renders the re-read contents, capped.

use serde_json::Value;

/// Largest `ResourceEvent::contents` in bytes; longer contents are cut at a
/// character boundary and end with a note saying so.
pub const MAX_EVENT_CONTENTS: usize = 64 * 1024;

/// Whether a resource URI matches a glob subscription. `*` and `?` stop at
/// `/` (so `file:///inbox/*.md` does not reach into subdirectories); `**`
/// crosses them.
pub fn glob_matches(pattern: &str, uri: &str) -> bool {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    glob::Pattern::new(pattern)
        .map(|p| p.matches_with(uri, options))
        .unwrap_or(false)
}

/// Renders a `resources/read` result for the model: text verbatim, binary as
/// a one-line description. Several contents (a directory-like resource) are
/// each headed by their URI.
pub(crate) fn render_read(uri: &str, contents: &[Value]) -> String {
    match contents {
        [] => String::new(),
        [one] if one.get("uri").and_then(Value::as_str) == Some(uri) || one.get("text").is_some() => {
            match one.get("text").and_then(Value::as_str) {
                Some(text) => text.to_owned(),
                None => super::tools::render_resource_contents(one),
            }
        }
        many => many
            .iter()
            .map(super::tools::render_resource_contents)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Caps contents at `max` bytes (at a character boundary), with a note.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!(
        "\n[agentd: contents truncated: first {cut} of {total} bytes shown]"
    ));
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn glob_star_stays_within_one_path_segment() {
        assert!(glob_matches("file:///in/*.md", "file:///in/a.md"));
        assert!(!glob_matches("file:///in/*.md", "file:///in/sub/a.md"));
        assert!(glob_matches("file:///in/**/*.md", "file:///in/sub/a.md"));
        assert!(!glob_matches("file:///in/*.md", "file:///in/a.txt"));
    }

    #[test]
    fn long_contents_are_truncated_with_a_note() {
        let text = truncate("é".repeat(100), 51);
        assert!(text.starts_with(&"é".repeat(25)));
        assert!(text.ends_with("[agentd: contents truncated: first 50 of 200 bytes shown]"));
        assert_eq!(truncate("short".into(), 10), "short");
    }

    #[test]
    fn reads_render_text_verbatim_and_blobs_as_a_description() {
        let one = [json!({"uri": "file:///a", "text": "hello"})];
        assert_eq!(render_read("file:///a", &one), "hello");
        let blob = [json!({"uri": "file:///b", "blob": "AAAA", "mimeType": "image/png"})];
        assert_eq!(
            render_read("file:///b", &blob),
            "[binary resource file:///b: image/png, 3 bytes]"
        );
    }
}
