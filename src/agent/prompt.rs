//! What the model is told: the system prompt (with how to run code), the
//! remembered conversation (bounded), and the trigger as a user message.

use crate::config::{AgentSpec, Limits};
use crate::domain::Trigger;
use crate::llm::ChatMessage;

/// Appended to every agent's system prompt: the fence grammar the runtime
/// executes. Kept short; models know Markdown fences already.
const FENCE_GUIDE: &str = "\
You can run code on this machine inside a sandbox. Write a fenced block whose info string ends in \
`:execute` and it runs; its exit code and output come back to you:
```bash:execute
ls -la
```
Languages: bash, sh, python. To write a file in your working directory use `PATH:create`:
```notes/todo.md:create
- item
```
Plain fences without `:execute` or `:create` are only shown, never run. \
When you have nothing left to run or call, answer in plain text: that ends the task.";

pub fn system_prompt(spec: &AgentSpec, skills_index: Option<&str>) -> String {
    let mut s = spec.system_prompt.trim_end().to_owned();
    if !s.is_empty() {
        s.push_str("\n\n");
    }
    s.push_str(FENCE_GUIDE);
    if let Some(index) = skills_index.filter(|i| !i.trim().is_empty()) {
        s.push_str("\n\n");
        s.push_str(index.trim_end());
    }
    s
}

/// The user message that starts a task.
pub fn trigger_message(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Resource {
            uri, server, contents, ..
        } => format!("The resource {uri} (MCP server {server}) changed. This is what it contains now:\n\n{contents}"),
        Trigger::Schedule {
            cron,
            prompt,
            scheduled_for,
        } => {
            format!("Scheduled task (cron `{cron}`, due {scheduled_for}):\n\n{prompt}")
        }
        Trigger::Message { text, .. } => text.clone(),
        Trigger::Webhook {
            delivery,
            headers,
            body,
        } => {
            let mut s = match delivery {
                Some(d) => format!("A webhook delivery ({d}) arrived."),
                None => "A webhook delivery arrived.".to_owned(),
            };
            for (k, v) in headers {
                s.push_str(&format!("\n{k}: {v}"));
            }
            s.push_str("\n\n");
            s.push_str(body);
            s
        }
    }
}

/// Rough token estimate (about four bytes a token): enough to bound a window.
fn tokens(m: &ChatMessage) -> u64 {
    let text = m.content().map(str::len).unwrap_or(0);
    let calls = match m {
        ChatMessage::Assistant { tool_calls, .. } => tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum(),
        _ => 0,
    };
    ((text + calls) / 4 + 4) as u64
}

/// Trims the remembered conversation to the configured window: at most
/// `history_messages` messages and about `history_tokens` tokens, dropping
/// the oldest first, and never starting on a tool result or an assistant
/// turn whose question was dropped (providers reject orphaned tool messages).
pub fn window(history: &[ChatMessage], limits: &Limits) -> Vec<ChatMessage> {
    let mut start = history.len().saturating_sub(limits.history_messages as usize);
    let mut budget: u64 = history[start..].iter().map(tokens).sum();
    while start < history.len() && budget > limits.history_tokens {
        budget -= tokens(&history[start]);
        start += 1;
    }
    while start < history.len() && !matches!(history[start], ChatMessage::User { .. }) {
        start += 1;
    }
    history[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;

    fn limits(messages: u32, tokens: u64) -> Limits {
        Limits {
            history_messages: messages,
            history_tokens: tokens,
            ..Limits::default()
        }
    }

    #[test]
    fn window_keeps_recent_messages_and_starts_on_a_user_turn() {
        let call = ToolCall {
            id: "c1".into(),
            name: "t".into(),
            arguments: "{}".into(),
        };
        let h = vec![
            ChatMessage::user("one"),
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![call],
            },
            ChatMessage::tool("c1", "result"),
            ChatMessage::assistant("done"),
            ChatMessage::user("two"),
            ChatMessage::assistant("ok"),
        ];
        let w = window(&h, &limits(4, 10_000));
        assert_eq!(w, h[4..].to_vec(), "a window may not start on a tool result");
        assert_eq!(window(&h, &limits(100, 10_000)), h);
        assert!(window(&h, &limits(100, 3)).is_empty());
    }
}
