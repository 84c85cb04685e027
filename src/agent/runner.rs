//! One task, start to end: prompt → model → MCP tool calls and code fences
//! → results back → next turn, until the model stops asking for anything or
//! a limit (turns, tokens, time) ends it. Every model call, tool call and
//! fence run is journaled through the supervisor with the task's lease.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::Outbox;
use super::approval::Approvals;
use super::egress::TaskEgress;
use super::prompt;
use super::skills::SkillsRuntime;
use crate::config::AgentSpec;
use crate::domain::{ApprovalSubject, Lease, NewStep, StepKind, TaskId, TaskState, Trigger};
use crate::fence;
use crate::llm::{ChatMessage, ChatRequest, LlmClient, ToolCall, ToolDef};
use crate::mcp::McpHub;
use crate::protocol::FromChild;
use crate::telemetry;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Longest text kept in a journal step field; the model still sees it all.
const JOURNAL_TEXT: usize = 16 * 1024;
/// Longest model reply or tool result kept beyond its turn: the task's
/// result, each message of the remembered conversation (and so its
/// snapshot), and the text streamed to the supervisor per turn. A 20 MB
/// reply must not travel whole through the supervisor or into every later
/// prompt.
pub(super) const STORED_TEXT: usize = 64 * 1024;

/// What an agent child keeps between tasks.
pub struct Runtime {
    pub spec: AgentSpec,
    pub workdir: PathBuf,
    pub llm: LlmClient,
    pub hub: Arc<McpHub>,
    /// Skills, generated MCP skills and the tool bridge.
    pub skills: SkillsRuntime,
    /// Remembered conversation (without the system prompt).
    pub history: Vec<ChatMessage>,
    pub outbox: Outbox,
    /// The cgroup scope, tmp naming and workdir quota of this agent's runs.
    pub containment: crate::sandbox::Containment,
    /// The running task's approval request, if it waits for one.
    pub approvals: Approvals,
}

/// How a task ended.
pub struct Outcome {
    pub state: TaskState,
    pub result: Option<String>,
    pub error: Option<String>,
}

impl Outcome {
    pub fn failed(error: String) -> Outcome {
        Outcome {
            state: TaskState::Failed,
            result: None,
            error: Some(error),
        }
    }

    fn succeeded(result: String) -> Outcome {
        Outcome {
            state: TaskState::Succeeded,
            result: Some(result),
            error: None,
        }
    }
}

/// A task in progress: its id and lease go on every message about it.
struct Job<'a> {
    id: TaskId,
    lease: &'a Lease,
    outbox: &'a Outbox,
    /// The tool bridge's token for this task, when the bridge is up.
    token: Option<String>,
    /// Its sandbox runs' egress asks and connection records.
    egress: Arc<TaskEgress>,
}

impl Job<'_> {
    fn step(&self, kind: StepKind, payload: Value, tokens: (u64, u64), started: Option<Instant>) {
        self.outbox.send(FromChild::Step {
            task: self.id,
            lease: self.lease.clone(),
            step: NewStep {
                kind,
                payload,
                input_tokens: tokens.0 as i64,
                output_tokens: tokens.1 as i64,
                latency_ms: started.map(|t| t.elapsed().as_millis() as i64),
            },
        });
    }
}

impl Runtime {
    pub async fn run_task(&mut self, id: TaskId, lease: &Lease, trigger: &Trigger) -> Outcome {
        let outbox = self.outbox.clone();
        let job = Job {
            id,
            lease,
            outbox: &outbox,
            token: self.skills.begin(id, lease),
            egress: TaskEgress::new(outbox.clone(), id, lease.clone(), self.approvals.clone()),
        };
        let mut messages = prompt::window(&self.history, &self.spec.limits);
        messages.push(ChatMessage::user(prompt::trigger_message(trigger)));
        let timeout = self.spec.limits.task_timeout;
        let approvals = self.approvals.clone();
        approvals.reset();
        let started = Instant::now();
        let result = {
            let fut = self.turns(&job, &mut messages);
            tokio::pin!(fut);
            // The deadline moves by the time spent waiting for approvals:
            // an operator's answer is not the task's time.
            loop {
                let deadline = started + timeout + approvals.waited();
                tokio::select! {
                    o = &mut fut => break Ok(o),
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        if !approvals.is_waiting() && Instant::now() >= started + timeout + approvals.waited() {
                            break Err(());
                        }
                    }
                }
            }
        };
        self.skills.end();
        let outcome = match result {
            Ok(o) => o,
            Err(_) => Outcome::failed(format!(
                "task timed out after {} (limits.task_timeout)",
                humantime::format_duration(timeout)
            )),
        };
        // The agent remembers what happened, failed attempts included, so
        // it can answer "what did you just do?".
        self.history = prompt::window(&messages, &self.spec.limits);
        self.history.iter_mut().for_each(clip_message);
        let mut outcome = outcome;
        outcome.result = outcome.result.map(|r| clip_to(&r, STORED_TEXT));
        outcome
    }

    async fn turns(&mut self, job: &Job<'_>, messages: &mut Vec<ChatMessage>) -> Outcome {
        let limits = self.spec.limits.clone();
        let mut spent: u64 = 0;
        for turn in 1..=limits.max_turns {
            // Tool lists change while the agent runs (list_changed): the
            // generated skills follow before each turn, and so does the index.
            let infos = self.hub.tools();
            self.skills.sync(&infos);
            let system = ChatMessage::system(prompt::system_prompt(&self.spec, Some(&self.skills.index())));
            let tools = infos
                .into_iter()
                .map(|t| ToolDef::new(t.name, Some(t.description).filter(|d| !d.is_empty()), t.input_schema))
                .collect();
            let mut request_messages = Vec::with_capacity(messages.len() + 1);
            request_messages.push(system);
            request_messages.extend(messages.iter().cloned());
            let request = ChatRequest::new(request_messages, tools);
            let started = Instant::now();
            let outbox = job.outbox.clone();
            let (task, lease) = (job.id, job.lease.to_owned());
            let mut streamed = 0usize;
            let mut on_text = move |text: &str| {
                // Streamed for people to read: capped per turn, with a note.
                let room = STORED_TEXT.saturating_sub(streamed);
                streamed = streamed.saturating_add(text.len());
                let text = if text.len() <= room {
                    text.to_owned()
                } else if room > 0 {
                    let mut end = room;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    format!(
                        "{}\n[the reply is longer than {STORED_TEXT} bytes; the rest is not streamed]\n",
                        &text[..end]
                    )
                } else {
                    return;
                };
                outbox.send(FromChild::Output {
                    task,
                    lease: lease.clone(),
                    text,
                });
            };
            // GenAI semantic conventions; no prompt or completion text.
            let span = tracing::info_span!(
                target: telemetry::TARGET,
                "chat",
                otel.name = %format!("chat {}", self.spec.model),
                otel.status_code = tracing::field::Empty,
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = "openai",
                gen_ai.request.model = %self.spec.model,
                gen_ai.response.model = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                server.address = %self.spec.llm.base_url,
                error.type = tracing::field::Empty,
                agentd.turn = turn,
            );
            let result = self.llm.complete(&request, &mut on_text).instrument(span.clone()).await;
            let capture = !span.is_disabled() && telemetry::capture_content();
            if capture {
                let input = serde_json::to_string(&request.messages).unwrap_or_default();
                span.set_attribute("gen_ai.input.messages", input);
            }
            match &result {
                Ok(reply) => {
                    if capture {
                        let output = serde_json::to_string(&[reply.message()]).unwrap_or_default();
                        span.set_attribute("gen_ai.output.messages", output);
                    }
                    if let Some(m) = &reply.model {
                        span.record("gen_ai.response.model", m.as_str());
                    }
                    span.record("gen_ai.usage.input_tokens", reply.usage.prompt_tokens as i64);
                    span.record("gen_ai.usage.output_tokens", reply.usage.completion_tokens as i64);
                    if let Some(reason) = &reply.finish_reason {
                        span.set_attribute(
                            "gen_ai.response.finish_reasons",
                            opentelemetry::Value::Array(vec![opentelemetry::StringValue::from(reason.clone())].into()),
                        );
                    }
                }
                Err(e) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", e.to_string().as_str());
                }
            }
            drop(span);
            let reply = match result {
                Ok(r) => r,
                Err(e) => {
                    job.step(
                        StepKind::LlmError,
                        json!({"turn": turn, "error": e.to_string()}),
                        (0, 0),
                        Some(started),
                    );
                    return Outcome::failed(format!("model request failed: {e}"));
                }
            };
            spent += reply.usage.total();
            job.step(
                StepKind::Llm,
                json!({
                    "turn": turn,
                    "request": {
                        "messages": request.messages.len(),
                        "last": request.messages.last().map(|m| m.role()),
                        "tools": request.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
                    },
                    "reply": {
                        "content": reply.content.as_deref().map(clip),
                        "tool_calls": reply.tool_calls.iter().map(|c| json!({"id": c.id, "name": c.name, "arguments": clip(&c.arguments)})).collect::<Vec<_>>(),
                        "finish_reason": reply.finish_reason,
                    },
                    "retries": reply.retries,
                    "usage_estimated": reply.usage.estimated,
                    // What budgets price this call by (see supervisor::budget).
                    "model": self.spec.model,
                    "cached_tokens": reply.usage.cached_tokens(),
                }),
                (reply.usage.prompt_tokens, reply.usage.completion_tokens),
                Some(started),
            );
            messages.push(reply.message());
            if spent > limits.max_tokens {
                return Outcome::failed(format!(
                    "token budget exceeded: {spent} tokens used, limits.max_tokens is {}",
                    limits.max_tokens
                ));
            }

            let cap = limits.max_tool_calls as usize;
            for call in reply.tool_calls.iter().take(cap) {
                let answer = self.call_tool(job, call).await;
                messages.push(ChatMessage::tool(call.id.clone(), answer));
            }
            // Every call must be answered; the ones past the cap are not run.
            let skipped = &reply.tool_calls[cap.min(reply.tool_calls.len())..];
            if !skipped.is_empty() {
                let note = format!(
                    "not run: this reply asked for {} tool calls and at most {cap} run per reply \
                     (limits.max_tool_calls); ask again for the ones still needed",
                    reply.tool_calls.len()
                );
                job.step(
                    StepKind::ToolCallsCapped,
                    json!({"requested": reply.tool_calls.len(), "run": cap, "not_run": skipped.len()}),
                    (0, 0),
                    None,
                );
                for call in skipped {
                    messages.push(ChatMessage::tool(call.id.clone(), format!("error: {note}")));
                }
            }

            let text = reply.content.as_deref().unwrap_or("");
            let blocks = fence::parse(text);
            if !blocks.is_empty() {
                let gated = self.approve_blocks(job, blocks.clone()).await;
                let mut exposed = self.skills.exposed(job.token.as_deref());
                exposed.containment = self.containment.clone();
                // Each connection is journaled as it ends (by the hooks).
                exposed.egress = Some(crate::sandbox::egress::Hooks(job.egress.clone()));
                let results = fence::execute(&gated, &self.spec.sandbox, &self.workdir, &exposed).await;
                let mut feedback = String::from("Results of your code blocks:\n");
                for r in &results {
                    let rendered = r.render_for_model();
                    let mut payload = json!({"block": r.tag, "line": r.span.line, "result": clip(&rendered)});
                    fence_facts(&mut payload, &r.outcome, self.spec.sandbox.backend.name());
                    job.step(StepKind::Fence, payload, (0, 0), None);
                    feedback.push_str(&rendered);
                }
                messages.push(ChatMessage::user(feedback));
            }

            if reply.tool_calls.is_empty() && blocks.is_empty() {
                return Outcome::succeeded(text.to_owned());
            }
        }
        Outcome::failed(format!(
            "stopped after {} turns (limits.max_turns) while the model was still calling tools or running code",
            limits.max_turns
        ))
    }

    /// Asks for each block the `approve:` policy names, in order; a denied
    /// block is not run, and the model reads why in its place.
    async fn approve_blocks(&self, job: &Job<'_>, blocks: Vec<fence::Block>) -> Vec<fence::Block> {
        let Some(policy) = self.spec.approve.clone() else {
            return blocks;
        };
        let mut out = Vec::with_capacity(blocks.len());
        for b in blocks {
            let (kind, code) = match &b {
                fence::Block::Execute { lang, code, .. } => (lang.name(), code.clone()),
                fence::Block::Create { content, .. } => ("create", content.clone()),
                _ => {
                    out.push(b);
                    continue;
                }
            };
            if !policy.fence(kind) {
                out.push(b);
                continue;
            }
            let subject = ApprovalSubject::Code { block: b.tag(), code };
            let answer = self.approvals.ask(job.outbox, job.id, job.lease, subject).await;
            if answer.approved {
                out.push(b);
            } else {
                out.push(fence::Block::Invalid {
                    tag: b.tag(),
                    reason: answer.denial(),
                    span: b.span(),
                });
            }
        }
        out
    }

    /// Runs one tool call; the returned text goes back to the model, errors included.
    async fn call_tool(&self, job: &Job<'_>, call: &ToolCall) -> String {
        let started = Instant::now();
        let args = match call.arguments_json() {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(format!("must be a JSON object, not {other}; call it again")),
            Err(e) => Err(format!("are not valid JSON ({e}); call it again with valid JSON")),
        };
        let args = match args {
            Ok(map) => map,
            Err(why) => {
                let msg = format!("error: the arguments of {} {why}", call.name);
                let payload = json!({"name": call.name, "arguments": clip(&call.arguments), "error": msg});
                job.step(StepKind::Tool, payload, (0, 0), None);
                return msg;
            }
        };
        if self.spec.approve.as_ref().is_some_and(|p| p.tool(&call.name)) {
            let subject = ApprovalSubject::Tool {
                name: call.name.clone(),
                arguments: Value::Object(args.clone()),
            };
            let answer = self.approvals.ask(job.outbox, job.id, job.lease, subject).await;
            if !answer.approved {
                // The model reads the denial as the tool's error, and can
                // change course.
                let msg = format!("error: not run: {}", answer.denial());
                job.step(
                    StepKind::Tool,
                    json!({"name": call.name, "arguments": Value::Object(args), "result": msg, "is_error": true, "denied": true}),
                    (0, 0),
                    Some(started),
                );
                return msg;
            }
        }
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "execute_tool",
            otel.name = %format!("execute_tool {}", call.name),
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %call.name,
            gen_ai.tool.call.id = %call.id,
            error.type = tracing::field::Empty,
        );
        let called = self
            .hub
            .call_tool(&call.name, args.clone())
            .instrument(span.clone())
            .await;
        let (text, is_error) = match called {
            Ok(out) => (out.text, out.is_error),
            Err(e) => (e.to_string(), true),
        };
        if is_error {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", "tool_error");
        }
        if !span.is_disabled() && telemetry::capture_content() {
            span.set_attribute("gen_ai.tool.call.arguments", Value::Object(args.clone()).to_string());
            span.set_attribute("gen_ai.tool.call.result", text.clone());
        }
        drop(span);
        job.step(
            StepKind::Tool,
            json!({"name": call.name, "arguments": Value::Object(args), "result": clip(&text), "is_error": is_error}),
            (0, 0),
            Some(started),
        );
        if is_error { format!("error: {text}") } else { text }
    }
}

/// What metrics and traces count of a block's run, beside its rendered
/// result: the backend, whether it ran, its exit, timeout and duration.
fn fence_facts(payload: &mut Value, outcome: &fence::FenceOutcome, backend: &str) {
    payload["backend"] = json!(backend);
    match outcome {
        fence::FenceOutcome::Ran(o) => {
            payload["outcome"] = json!("ran");
            payload["exit_code"] = json!(o.exit_code);
            payload["signal"] = json!(o.signal);
            payload["timed_out"] = json!(o.timed_out);
            payload["duration_ms"] = json!(o.duration.as_millis() as u64);
        }
        fence::FenceOutcome::Created { .. } => payload["outcome"] = json!("created"),
        fence::FenceOutcome::NotRun { .. } => payload["outcome"] = json!("not_run"),
    }
}

/// Caps text for the journal, keeping the head and noting the rest.
pub(super) fn clip(s: &str) -> String {
    clip_to(s, JOURNAL_TEXT)
}

/// Keeps the first `max` bytes of `s` (on a character boundary) and notes
/// how many more there were.
pub(super) fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &s[..end], s.len() - end)
}

/// Caps a remembered message's text at [`STORED_TEXT`].
fn clip_message(m: &mut ChatMessage) {
    let text = match m {
        ChatMessage::System { content } | ChatMessage::User { content } | ChatMessage::Tool { content, .. } => content,
        ChatMessage::Assistant {
            content: Some(content), ..
        } => content,
        ChatMessage::Assistant { content: None, .. } => return,
    };
    if text.len() > STORED_TEXT {
        *text = clip_to(text, STORED_TEXT);
    }
}
