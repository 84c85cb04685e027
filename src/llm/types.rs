//! The chat-completions wire types, written tolerantly.
//!
//! These are both what goes over the wire to an OpenAI-compatible provider
//! and what the agent keeps as its conversation (snapshots, cassettes), so
//! they serialize to exactly the OpenAI shape and deserialize whatever real
//! providers send: unknown fields are ignored, `null` stands in for empty
//! lists, `finish_reason` is any string (or none), content may come as a
//! string, `null` or a list of text parts, and tool-call arguments may come
//! as a string or as a JSON object. Nothing here is a strict enum that a new
//! provider value could break.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// One message of a conversation, tagged by `role` as on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum ChatMessage {
    /// OpenAI's newer `developer` role means the same thing to us.
    #[serde(alias = "developer")]
    System {
        #[serde(deserialize_with = "text_content")]
        content: String,
    },
    User {
        #[serde(deserialize_with = "text_content")]
        content: String,
    },
    Assistant {
        /// `None` (sent as `null`) when the reply is only tool calls.
        #[serde(default, deserialize_with = "opt_text_content")]
        content: Option<String>,
        /// Omitted when empty: some providers reject `"tool_calls": []`.
        #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        /// The [`ToolCall::id`] this message answers.
        tool_call_id: String,
        #[serde(deserialize_with = "text_content")]
        content: String,
    },
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::System {
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::User {
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::Assistant {
            content: Some(content.into()),
            tool_calls: Vec::new(),
        }
    }

    /// The answer to one tool call.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage::Tool {
            tool_call_id: tool_call_id.into(),
            content: content.into(),
        }
    }

    /// The wire name of the role.
    pub fn role(&self) -> &'static str {
        match self {
            ChatMessage::System { .. } => "system",
            ChatMessage::User { .. } => "user",
            ChatMessage::Assistant { .. } => "assistant",
            ChatMessage::Tool { .. } => "tool",
        }
    }

    /// The text of the message, if it has any.
    pub fn content(&self) -> Option<&str> {
        match self {
            ChatMessage::System { content } | ChatMessage::User { content } | ChatMessage::Tool { content, .. } => {
                Some(content)
            }
            ChatMessage::Assistant { content, .. } => content.as_deref(),
        }
    }
}

/// A function call the model asked for. Flat here; on the wire it is
/// `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireToolCall", into = "WireToolCall")]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: a JSON text, possibly invalid.
    pub arguments: String,
}

impl ToolCall {
    /// The arguments parsed as JSON. An empty string (what models send for
    /// tools without parameters) is an empty object.
    pub fn arguments_json(&self) -> Result<Value, serde_json::Error> {
        if self.arguments.trim().is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_str(&self.arguments)
    }
}

#[derive(Serialize, Deserialize)]
struct WireToolCall {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(rename = "type", default = "function_type", deserialize_with = "string_or_function")]
    kind: String,
    function: WireFunctionCall,
}

#[derive(Serialize, Deserialize)]
struct WireFunctionCall {
    #[serde(default, deserialize_with = "null_as_default")]
    name: String,
    #[serde(default, deserialize_with = "arguments_text")]
    arguments: String,
}

fn function_type() -> String {
    "function".into()
}

fn string_or_function<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(function_type))
}

impl From<WireToolCall> for ToolCall {
    fn from(w: WireToolCall) -> ToolCall {
        ToolCall {
            id: w.id,
            name: w.function.name,
            arguments: w.function.arguments,
        }
    }
}

impl From<ToolCall> for WireToolCall {
    fn from(c: ToolCall) -> WireToolCall {
        WireToolCall {
            id: c.id,
            kind: function_type(),
            function: WireFunctionCall {
                name: c.name,
                arguments: c.arguments,
            },
        }
    }
}

/// A tool offered to the model. On the wire:
/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "WireTool", into = "WireTool")]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object describing the arguments.
    pub parameters: Value,
}

impl ToolDef {
    pub fn new(name: impl Into<String>, description: Option<String>, parameters: Value) -> ToolDef {
        ToolDef {
            name: name.into(),
            description,
            parameters,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WireTool {
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunctionDef,
}

#[derive(Serialize, Deserialize)]
struct WireFunctionDef {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default = "empty_schema")]
    parameters: Value,
}

fn empty_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

impl From<WireTool> for ToolDef {
    fn from(w: WireTool) -> ToolDef {
        ToolDef {
            name: w.function.name,
            description: w.function.description,
            parameters: w.function.parameters,
        }
    }
}

impl From<ToolDef> for WireTool {
    fn from(t: ToolDef) -> WireTool {
        WireTool {
            kind: function_type(),
            function: WireFunctionDef {
                name: t.name,
                description: t.description,
                parameters: t.parameters,
            },
        }
    }
}

/// What the runtime asks the model: the conversation and the tools on
/// offer. Model name, temperature and streaming come from the client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
}

impl ChatRequest {
    pub fn new(messages: Vec<ChatMessage>, tools: Vec<ToolDef>) -> ChatRequest {
        ChatRequest { messages, tools }
    }
}

/// Token counts of one completion, as the provider reported them, or
/// estimated by the client when it reported none (`estimated`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "null_as_default")]
    pub prompt_tokens: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_tokens: u64,
    /// The provider sent no usage; these are the client's estimate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// OpenAI's breakdown of the prompt: how much of it was served from the
    /// provider's cache (billed at the cached-input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default, deserialize_with = "null_as_default")]
    pub cached_tokens: u64,
}

/// Characters per token in the estimate: the usual figure for English
/// text with OpenAI's tokenizers, and on the high side for JSON.
const CHARS_PER_TOKEN: usize = 4;

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Prompt tokens the provider served from its cache (part of `prompt_tokens`).
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }

    /// An estimate from the size of what was sent and received, for
    /// providers that report no usage (llama.cpp's server in streams): a
    /// budget (`limits.max_tokens`) must still be able to trip.
    pub fn estimate(req: &ChatRequest, reply: &ChatResponse) -> Usage {
        let tokens = |chars: usize| chars.div_ceil(CHARS_PER_TOKEN) as u64;
        let sent = serde_json::to_string(&req.messages).map_or(0, |s| s.len())
            + serde_json::to_string(&req.tools).map_or(0, |s| s.len());
        let received = reply.content.as_deref().map_or(0, str::len)
            + reply
                .tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum::<usize>();
        Usage {
            prompt_tokens: tokens(sent),
            completion_tokens: tokens(received).max(1),
            estimated: true,
            prompt_tokens_details: None,
        }
    }
}

/// The model's reply to one [`ChatRequest`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The text of the reply (already delivered through `on_text`).
    #[serde(default, deserialize_with = "opt_text_content")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub tool_calls: Vec<ToolCall>,
    /// Whatever the provider said (`stop`, `tool_calls`, `length`, or
    /// anything else); an empty string counts as none.
    #[serde(default, deserialize_with = "finish_reason")]
    pub finish_reason: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub usage: Usage,
    /// The failed attempts before this reply, for the task journal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryNote>,
}

impl ChatResponse {
    /// The reply as the assistant message to append to the conversation.
    pub fn message(&self) -> ChatMessage {
        ChatMessage::Assistant {
            content: self.content.clone(),
            tool_calls: self.tool_calls.clone(),
        }
    }

    /// Gives tool calls without an id (some local servers, hand-written
    /// cassettes) one, so the tool messages answering them can refer to it.
    pub(crate) fn fill_missing_ids(&mut self) {
        for (i, call) in self.tool_calls.iter_mut().enumerate() {
            if call.id.is_empty() {
                call.id = format!("call_{i}");
            }
        }
    }
}

/// One failed attempt that was retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryNote {
    /// 1 for the first request.
    pub attempt: u32,
    /// What went wrong (never contains the API key).
    pub error: String,
    /// How long the client waited before the next attempt.
    pub delay_ms: u64,
}

// ---- the provider's side of the wire (crate-private) ----

/// The request body. Borrowed so a long conversation is not copied per turn.
#[derive(Serialize)]
pub(crate) struct WireRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "<[ToolDef]>::is_empty")]
    pub tools: &'a [ToolDef],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// async-openai's byot calls require this to be explicit.
    pub stream: bool,
    /// Asks for usage in the last chunk of a stream (the budget needs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
pub(crate) struct StreamOptions {
    pub include_usage: bool,
}

/// A non-streamed completion.
#[derive(Deserialize)]
pub(crate) struct WireResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<WireChoice>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub usage: Usage,
    /// Some gateways report upstream failures in a 200 body.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct WireChoice {
    #[serde(default, deserialize_with = "null_as_default")]
    pub index: u32,
    #[serde(default)]
    pub message: Option<WireAssistant>,
    #[serde(default, deserialize_with = "finish_reason")]
    pub finish_reason: Option<String>,
}

/// The assistant message of a completion; `role` is not checked.
#[derive(Deserialize)]
pub(crate) struct WireAssistant {
    #[serde(default, deserialize_with = "opt_text_content")]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tool_calls: Vec<ToolCall>,
    /// OpenAI's refusal text, sent instead of `content`.
    #[serde(default, deserialize_with = "opt_text_content")]
    pub refusal: Option<String>,
}

/// One server-sent event of a streamed completion.
#[derive(Deserialize)]
pub(crate) struct WireChunk {
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Some providers (vLLM, LiteLLM, OpenAI) report failures mid-stream
    /// as an event carrying an `error` object.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct ChunkChoice {
    #[serde(default, deserialize_with = "null_as_default")]
    pub index: u32,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default, deserialize_with = "finish_reason")]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Delta {
    #[serde(default, deserialize_with = "opt_text_content")]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tool_calls: Vec<DeltaToolCall>,
}

#[derive(Deserialize)]
pub(crate) struct DeltaToolCall {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<DeltaFunction>,
}

#[derive(Deserialize)]
pub(crate) struct DeltaFunction {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "arguments_text")]
    pub arguments: String,
}

// ---- tolerant field readers ----

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Text from a string, `null`, or a list of parts (`[{"type": "text",
/// "text": …}]`); non-text parts are skipped.
fn text_of(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Array(parts) => Some(
            parts
                .into_iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s),
                    Value::Object(mut o) => match o.remove("text") {
                        Some(Value::String(s)) => Some(s),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
        ),
        other => Some(other.to_string()),
    }
}

fn text_content<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(text_of(Value::deserialize(d)?).unwrap_or_default())
}

fn opt_text_content<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(text_of(Value::deserialize(d)?))
}

/// Arguments as text: providers mostly send a JSON string, some (Ollama
/// builds, older vLLM) a JSON object.
fn arguments_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => String::new(),
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// Any value as an optional string; empty means none.
fn finish_reason<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}
