//! [`LlmClient`]: one chat completion per call, against any
//! OpenAI-compatible provider or a cassette.
//!
//! The HTTP path goes through async-openai's `byot` calls with this
//! module's own tolerant types, and through a transport of our own
//! (async-openai's `middleware` feature) because the library's default
//! transport (a) retries 429/5xx three times by itself, sleeping for any
//! `Retry-After` the server names, uncapped and invisible to the journal,
//! and (b) drops the response headers we need for `Retry-After`. Our
//! transport sends each request once, sets the `Authorization` header from
//! the key read at request time (or none), and notes status and
//! `Retry-After`; retries, timeouts and their bookkeeping happen here.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use super::cassette::{Player, Recorder};
use super::retry::{RetryPolicy, parse_retry_after};
use super::types::{ChunkChoice, DeltaToolCall, StreamOptions, WireChunk, WireRequest, WireResponse};
use super::{ChatRequest, ChatResponse, LlmError, RetryNote, ToolCall, Usage};
use crate::config::LlmSpec;

/// The model prefix that selects a cassette instead of a provider.
pub const REPLAY_PREFIX: &str = "replay:";

/// Longest provider text kept in an error message.
const ERROR_TEXT_CHARS: usize = 500;

/// Talks to the model for one agent. Cheap to create: the HTTP client is
/// built on the first request. Replay position and the "provider does not
/// stream" discovery live here, so keep one client per agent process.
pub struct LlmClient {
    backend: Backend,
    recorder: Option<Recorder>,
}

enum Backend {
    Http(Box<HttpBackend>),
    Replay(Player),
}

impl std::fmt::Debug for LlmClient {
    // Hand-written so no future field can leak anything sensitive.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("LlmClient");
        match &self.backend {
            Backend::Http(h) => d.field("base_url", &h.base_url).field("model", &h.model),
            Backend::Replay(p) => d.field("replay", p),
        };
        d.field("recording", &self.recorder.as_ref().map(|r| r.path())).finish()
    }
}

impl LlmClient {
    /// A client for `model` as configured by `spec`; `model` may be
    /// `replay:PATH` to play a cassette back instead.
    pub fn new(spec: &LlmSpec, model: &str) -> Result<LlmClient, LlmError> {
        let backend = match model.strip_prefix(REPLAY_PREFIX) {
            Some("") => return Err(LlmError::Config("`replay:` needs a cassette path after it".into())),
            Some(path) => Backend::Replay(Player::open(Path::new(path))?),
            None => Backend::Http(Box::new(HttpBackend::new(spec, model)?)),
        };
        Ok(LlmClient {
            backend,
            recorder: None,
        })
    }

    /// Also appends every successful exchange to `DIR/<agent>.cassette.json`
    /// (continuing that cassette if it exists). The file is rewritten
    /// atomically after each exchange; a failed write fails that call, since
    /// the user asked for the recording.
    pub fn with_recording(mut self, dir: &Path, agent: &str) -> Result<LlmClient, LlmError> {
        let model = match &self.backend {
            Backend::Http(h) => h.model.clone(),
            Backend::Replay(_) => "replay".to_string(),
        };
        self.recorder = Some(Recorder::open(dir, agent, &model)?);
        Ok(self)
    }

    /// Streaming is on by default. A provider that answers a streamed
    /// request with a plain JSON body is detected and served without
    /// streaming from then on; this turns streaming off from the start.
    pub fn with_streaming(mut self, on: bool) -> LlmClient {
        if let Backend::Http(h) = &mut self.backend {
            h.stream = AtomicBool::new(on);
        }
        self
    }

    /// Replaces the retry policy built from the spec (count and timing);
    /// tests use it to retry without waiting.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> LlmClient {
        if let Backend::Http(h) = &mut self.backend {
            h.policy = policy;
        }
        self
    }

    /// Whether this client plays a cassette back.
    pub fn is_replay(&self) -> bool {
        matches!(self.backend, Backend::Replay(_))
    }

    /// Where exchanges are recorded, if they are.
    pub fn recording(&self) -> Option<&Path> {
        self.recorder.as_ref().map(|r| r.path())
    }

    /// Asks the model for the next reply. Text is passed to `on_text` as it
    /// arrives (in one piece when the provider does not stream, or on
    /// replay); tool calls are returned whole. Retryable failures are
    /// retried as the spec says; the ones that happened are listed in
    /// [`ChatResponse::retries`].
    pub async fn complete(
        &self,
        req: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatResponse, LlmError> {
        let reply = match &self.backend {
            Backend::Http(h) => h.complete(req, on_text).await?,
            Backend::Replay(p) => {
                let reply = p.next(req)?;
                if let Some(text) = reply.content.as_deref().filter(|t| !t.is_empty()) {
                    on_text(text);
                }
                reply
            }
        };
        if let Some(recorder) = &self.recorder {
            recorder.append(req, &reply)?;
        }
        Ok(reply)
    }
}

struct HttpBackend {
    /// Without a trailing slash: async-openai appends `/chat/completions`.
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    temperature: Option<f32>,
    timeout: Duration,
    policy: RetryPolicy,
    /// Cleared for good once the provider shows it does not stream.
    stream: AtomicBool,
    /// Whether to ask for usage in streams (`stream_options`); cleared for
    /// good once the provider refuses the field.
    stream_usage: AtomicBool,
    /// Built once: `OpenAIConfig::new` reads OPENAI_* variables (and warns
    /// about some of them) every time it is called.
    config: OpenAIConfig,
    http: OnceLock<reqwest::Client>,
}

impl HttpBackend {
    fn new(spec: &LlmSpec, model: &str) -> Result<HttpBackend, LlmError> {
        let base_url = spec.base_url.trim_end_matches('/').to_string();
        match url::Url::parse(&base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(LlmError::Config(format!(
                    "llm.base_url {:?} is not an http:// or https:// URL",
                    spec.base_url
                )));
            }
        }
        if spec.request_timeout.is_zero() {
            return Err(LlmError::Config("llm.request_timeout must be longer than zero".into()));
        }
        if model.trim().is_empty() {
            return Err(LlmError::Config("the model name is empty".into()));
        }
        // Every field is set explicitly: the defaults come from OPENAI_*
        // variables, and an OpenAI key must never go to another provider.
        let config = OpenAIConfig::new()
            .with_api_base(base_url.clone())
            .with_api_key("")
            .with_org_id("")
            .with_project_id("");
        Ok(HttpBackend {
            base_url,
            model: model.to_string(),
            api_key_env: spec.api_key_env.clone(),
            temperature: spec.temperature,
            timeout: spec.request_timeout,
            policy: RetryPolicy::from_spec(spec),
            stream: AtomicBool::new(spec.stream),
            stream_usage: AtomicBool::new(true),
            config,
            http: OnceLock::new(),
        })
    }

    /// The shared HTTP client (connection pool, TLS roots), built once.
    fn http(&self) -> Result<reqwest::Client, LlmError> {
        if let Some(c) = self.http.get() {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .build()
            .map_err(|e| LlmError::Config(format!("cannot set up the HTTP client: {}", error_chain(&e))))?;
        Ok(self.http.get_or_init(|| client).clone())
    }

    /// The key, read from its variable now (so a rotated key is picked up
    /// without a restart), or `None` when no variable is configured.
    fn api_key(&self) -> Result<Option<String>, LlmError> {
        let Some(var) = &self.api_key_env else {
            return Ok(None);
        };
        let invalid = |reason| LlmError::InvalidApiKey {
            var: var.clone(),
            reason,
        };
        match std::env::var(var) {
            Ok(k) if k.trim().is_empty() => Err(invalid("is empty")),
            Ok(k) => Ok(Some(k.trim().to_string())),
            Err(std::env::VarError::NotPresent) => Err(LlmError::MissingApiKey { var: var.clone() }),
            Err(std::env::VarError::NotUnicode(_)) => Err(invalid("is not valid UTF-8")),
        }
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatResponse, LlmError> {
        let key = self.api_key()?;
        let auth = match &key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| LlmError::InvalidApiKey {
                    var: self.api_key_env.clone().unwrap_or_default(),
                    reason: "contains characters that cannot be sent in an HTTP header",
                })?;
                // Keeps it out of reqwest's and http's Debug output.
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut backoff = self.policy.backoff();
        let mut retries = Vec::new();
        let mut attempt: u32 = 1;
        loop {
            let err = match self.attempt(req, auth.clone(), on_text).await {
                Ok(mut reply) => {
                    reply.retries = retries;
                    if reply.usage.total() == 0 {
                        reply.usage = super::Usage::estimate(req, &reply);
                    }
                    return Ok(reply);
                }
                Err(e) => scrub(e, key.as_deref()),
            };
            if !err.is_retryable() {
                return Err(err);
            }
            let Some(backoff_delay) = backoff.next() else {
                return Err(if attempt == 1 {
                    err
                } else {
                    LlmError::RetriesExhausted {
                        attempts: attempt,
                        last: Box::new(err),
                    }
                });
            };
            let delay = self.policy.delay_after(&err, backoff_delay);
            tracing::warn!(
                model = %self.model,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "LLM request failed, retrying: {err}"
            );
            retries.push(RetryNote {
                attempt,
                error: err.to_string(),
                delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
            });
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One request (two when a streamed request shows the provider does
    /// not stream).
    async fn attempt(
        &self,
        req: &ChatRequest,
        auth: Option<HeaderValue>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatResponse, LlmError> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let client = self.openai(auth, seen.clone())?;
        if self.stream.load(Ordering::Relaxed) {
            let streamed = match self.attempt_stream(&client, &seen, req, on_text).await {
                // Strict servers (e.g. ones that forbid extra fields) refuse
                // `stream_options`; usage is then only as good as they send.
                Err(LlmError::Http { status, message, .. })
                    if matches!(status, 400 | 422)
                        && message.contains("stream_options")
                        && self.stream_usage.swap(false, Ordering::Relaxed) =>
                {
                    tracing::info!(model = %self.model, "the provider refuses stream_options; not sending it again");
                    self.attempt_stream(&client, &seen, req, on_text).await?
                }
                other => other?,
            };
            if let Some(reply) = streamed {
                return Ok(reply);
            }
            // No server-sent events at all: the provider ignored
            // `stream: true`. Ask again without it; if that works, stop
            // asking for streams.
            let reply = self.attempt_plain(&client, &seen, req, on_text).await?;
            tracing::info!(model = %self.model, "the provider does not stream; using plain requests from now on");
            self.stream.store(false, Ordering::Relaxed);
            return Ok(reply);
        }
        self.attempt_plain(&client, &seen, req, on_text).await
    }

    /// An async-openai client for one attempt: our transport, with its own
    /// note of what the provider answered.
    fn openai(
        &self,
        auth: Option<HeaderValue>,
        seen: Arc<Mutex<Seen>>,
    ) -> Result<async_openai::Client<OpenAIConfig>, LlmError> {
        let http = self.http()?;
        Ok(
            async_openai::Client::build(http.clone(), self.config.clone()).with_http_service(Transport {
                http,
                auth,
                seen,
            }),
        )
    }

    fn body<'a>(&'a self, req: &'a ChatRequest, stream: bool) -> WireRequest<'a> {
        WireRequest {
            model: &self.model,
            messages: &req.messages,
            tools: &req.tools,
            temperature: self.temperature,
            stream,
            stream_options: (stream && self.stream_usage.load(Ordering::Relaxed))
                .then_some(StreamOptions { include_usage: true }),
        }
    }

    async fn attempt_plain(
        &self,
        client: &async_openai::Client<OpenAIConfig>,
        seen: &Mutex<Seen>,
        req: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatResponse, LlmError> {
        let body = self.body(req, false);
        let response: WireResponse = tokio::time::timeout(self.timeout, client.chat().create_byot(&body))
            .await
            .map_err(|_| LlmError::Timeout { after: self.timeout })?
            .map_err(|e| map_error(e, &lock(seen)))?;
        let usage = response.usage;
        let model = response.model.filter(|m| !m.is_empty());
        let mut choices = response.choices;
        let pos = choices.iter().position(|c| c.index == 0).unwrap_or(0);
        if choices.is_empty() {
            return Err(LlmError::Malformed(match response.error {
                Some(e) => format!("no choices; the provider reported: {}", provider_error_text(&e)),
                None => "the completion has no choices".into(),
            }));
        }
        let choice = choices.swap_remove(pos);
        let (content, tool_calls) = match choice.message {
            Some(m) => (m.content.or(m.refusal), m.tool_calls),
            None => return Err(LlmError::Malformed("the completion's choice has no message".into())),
        };
        if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
            on_text(text);
        }
        Ok(finish(ChatResponse {
            content,
            tool_calls,
            finish_reason: choice.finish_reason,
            usage,
            retries: Vec::new(),
            model,
        }))
    }

    /// A streamed attempt; `None` when the answer held no events at all.
    async fn attempt_stream(
        &self,
        client: &async_openai::Client<OpenAIConfig>,
        seen: &Mutex<Seen>,
        req: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<ChatResponse>, LlmError> {
        let body = self.body(req, true);
        let mut stream = tokio::time::timeout(self.timeout, client.chat().create_stream_byot::<_, WireChunk>(&body))
            .await
            .map_err(|_| LlmError::Timeout { after: self.timeout })?
            .map_err(|e| map_error(e, &lock(seen)))?;
        let mut acc = Accumulator::default();
        let mut events = 0usize;
        loop {
            // The timeout is per event: a long answer that keeps coming is
            // fine, a provider that goes quiet is not.
            let next = tokio::time::timeout(self.timeout, std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)));
            let chunk = match next.await {
                Err(_) if acc.delivered => {
                    return Err(LlmError::Stream {
                        message: format!(
                            "the provider sent nothing for {} (llm.request_timeout)",
                            humantime::format_duration(self.timeout)
                        ),
                        text_delivered: true,
                    });
                }
                Err(_) => return Err(LlmError::Timeout { after: self.timeout }),
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    let message = match e {
                        OpenAIError::JSONDeserialize(err, data) => {
                            format!("an event is not a completion chunk ({err}): {}", snippet(&data))
                        }
                        other => other.to_string(),
                    };
                    return Err(LlmError::Stream {
                        message,
                        text_delivered: acc.delivered,
                    });
                }
            };
            events += 1;
            if let Some(error) = chunk.error {
                return Err(LlmError::Stream {
                    message: format!("the provider reported an error: {}", provider_error_text(&error)),
                    text_delivered: acc.delivered,
                });
            }
            acc.push(chunk, on_text);
        }
        if events == 0 {
            return Ok(None);
        }
        // `[DONE]` and a closed connection look the same from here; a
        // finished answer always names its finish_reason.
        if acc.finish_reason.is_none() {
            return Err(LlmError::BrokenOff {
                received: acc.text.len() + acc.calls.iter().map(|c| c.call.arguments.len()).sum::<usize>(),
            });
        }
        Ok(Some(finish(acc.finish())))
    }
}

/// What the transport saw of the last response.
#[derive(Debug, Default)]
struct Seen {
    status: Option<u16>,
    retry_after: Option<Duration>,
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    // Only plain data behind it; a panic elsewhere does not corrupt it.
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// The HTTP transport under async-openai: one request per call, our
/// `Authorization`, and a note of status and `Retry-After`.
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
    auth: Option<HeaderValue>,
    seen: Arc<Mutex<Seen>>,
}

impl tower_service::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut request = factory.build().await?;
            // async-openai always sets `Bearer <config key>`, and ours is
            // empty on purpose: replace it with the real one, or none.
            let headers = request.headers_mut();
            headers.remove(AUTHORIZATION);
            if let Some(v) = this.auth {
                headers.insert(AUTHORIZATION, v);
            }
            // The model call's span (when traces are exported) continues
            // at the provider, if it traces.
            if let Some(tp) = crate::telemetry::traceparent(&tracing::Span::current())
                && let Ok(v) = HeaderValue::from_str(&tp)
            {
                headers.insert("traceparent", v);
            }
            let response = this.http.execute(request).await?;
            let mut seen = lock(&this.seen);
            seen.status = Some(response.status().as_u16());
            seen.retry_after = parse_retry_after(response.headers());
            Ok(response)
        })
    }
}

/// Turns async-openai's error into ours, using what the transport saw.
fn map_error(e: OpenAIError, seen: &Seen) -> LlmError {
    match e {
        OpenAIError::ApiError(r) => LlmError::Http {
            status: r.status_code.as_u16(),
            message: snippet(&r.api_error.to_string()),
            retry_after: seen.retry_after,
        },
        // async-openai reports an error status with a non-JSON body as a
        // deserialization error; the status tells the two apart.
        OpenAIError::JSONDeserialize(err, body) => match seen.status {
            Some(status) if !(200..300).contains(&status) => LlmError::Http {
                status,
                message: if body.trim().is_empty() {
                    "(empty body)".into()
                } else {
                    snippet(&body)
                },
                retry_after: seen.retry_after,
            },
            _ => LlmError::Malformed(format!("{err}; the body starts with: {}", snippet(&body))),
        },
        OpenAIError::Reqwest(e) if e.is_builder() => LlmError::Config(error_chain(&e)),
        OpenAIError::Reqwest(e) => LlmError::Connection(error_chain(&e)),
        OpenAIError::InvalidArgument(m) => LlmError::Config(m),
        other => LlmError::Connection(other.to_string()),
    }
}

/// An error and its causes on one line ("error sending request: …:
/// connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= ERROR_TEXT_CHARS {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(ERROR_TEXT_CHARS).collect();
    cut.push('…');
    cut
}

fn provider_error_text(error: &serde_json::Value) -> String {
    match error.get("message").and_then(|m| m.as_str()) {
        Some(m) => snippet(m),
        None => snippet(&error.to_string()),
    }
}

/// Removes the API key from provider text that made it into an error
/// (a misbehaving proxy may echo request headers).
fn scrub(err: LlmError, key: Option<&str>) -> LlmError {
    let Some(key) = key.filter(|k| k.len() >= 4) else {
        return err;
    };
    let clean = |s: String| s.replace(key, "[redacted]");
    match err {
        LlmError::Http {
            status,
            message,
            retry_after,
        } => LlmError::Http {
            status,
            message: clean(message),
            retry_after,
        },
        LlmError::Connection(m) => LlmError::Connection(clean(m)),
        LlmError::Malformed(m) => LlmError::Malformed(clean(m)),
        LlmError::Config(m) => LlmError::Config(clean(m)),
        LlmError::Stream {
            message,
            text_delivered,
        } => LlmError::Stream {
            message: clean(message),
            text_delivered,
        },
        other => other,
    }
}

fn finish(mut reply: ChatResponse) -> ChatResponse {
    reply.fill_missing_ids();
    reply
}

/// Builds a reply out of stream chunks.
#[derive(Default)]
struct Accumulator {
    text: String,
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Usage,
    model: Option<String>,
    /// Whether `on_text` has been called.
    delivered: bool,
}

struct PartialCall {
    index: Option<u32>,
    call: ToolCall,
}

impl Accumulator {
    fn push(&mut self, chunk: WireChunk, on_text: &mut (dyn FnMut(&str) + Send)) {
        if let Some(usage) = chunk.usage {
            self.usage = usage;
        }
        if let Some(m) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = Some(m);
        }
        // Only the first choice: agentd never asks for more than one.
        for ChunkChoice {
            delta, finish_reason, ..
        } in chunk.choices.into_iter().filter(|c| c.index == 0)
        {
            if finish_reason.is_some() {
                self.finish_reason = finish_reason;
            }
            let Some(delta) = delta else { continue };
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                on_text(&text);
                self.delivered = true;
                self.text.push_str(&text);
            }
            for d in delta.tool_calls {
                self.tool_delta(d);
            }
        }
    }

    /// Tool calls arrive in pieces keyed by `index`: the first piece has
    /// the id and name, later ones more of the arguments. Providers that
    /// omit `index` start a new call with a new id.
    fn tool_delta(&mut self, d: DeltaToolCall) {
        let id = d.id.filter(|id| !id.is_empty());
        let pos = match d.index {
            Some(i) => self.calls.iter().position(|c| c.index == Some(i)),
            None => match &id {
                Some(id) => self.calls.iter().position(|c| &c.call.id == id),
                None => self.calls.len().checked_sub(1),
            },
        };
        let pos = pos.unwrap_or_else(|| {
            self.calls.push(PartialCall {
                index: d.index,
                call: ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                },
            });
            self.calls.len() - 1
        });
        let call = &mut self.calls[pos].call;
        if let Some(id) = id {
            call.id = id;
        }
        if let Some(f) = d.function {
            match f.name.filter(|n| !n.is_empty()) {
                // Some servers repeat the name in every piece.
                Some(n) if call.name.is_empty() || call.name == n => call.name = n,
                Some(n) => call.name.push_str(&n),
                None => {}
            }
            call.arguments.push_str(&f.arguments);
        }
    }

    fn finish(self) -> ChatResponse {
        let mut calls = self.calls;
        // Stable by first appearance for index-less providers.
        calls.sort_by_key(|c| c.index.unwrap_or(u32::MAX));
        ChatResponse {
            content: (!self.text.is_empty()).then_some(self.text),
            tool_calls: calls.into_iter().map(|c| c.call).collect(),
            finish_reason: self.finish_reason,
            usage: self.usage,
            retries: Vec::new(),
            model: self.model,
        }
    }
}
