//! The LLM client layer: one chat completion at a time, against any
//! OpenAI-compatible `base_url` (OpenAI, DeepSeek, Ollama, vLLM,
//! llama.cpp, LiteLLM) or a recorded cassette.
//!
//! It owns the wire types the agent also keeps as its conversation
//! ([`types`]), the client with streaming, timeouts and retries
//! ([`client`], [`retry`]), and record/replay ([`cassette`]).
//!
//! It must never log or return the API key (the key is read from its
//! environment variable at request time and only ever placed in a request
//! header), never send an OpenAI key to another provider, never retry
//! behind the caller's back without reporting it ([`ChatResponse::retries`]),
//! and never touch the ledger or the conversation history: the agent
//! runtime decides what to keep.

pub mod cassette;
pub mod client;
pub mod error;
pub mod providers;
pub mod retry;
pub mod types;

pub use cassette::{Cassette, Exchange, RequestSummary};
pub use client::{LlmClient, REPLAY_PREFIX};
pub use error::LlmError;
pub use retry::RetryPolicy;
pub use types::{ChatMessage, ChatRequest, ChatResponse, RetryNote, ToolCall, ToolDef, Usage};
