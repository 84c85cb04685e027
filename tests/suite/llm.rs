//! The LLM client against a scripted OpenAI-compatible server on
//! 127.0.0.1: replies, tool calls, streaming, retries, timeouts, tolerant
//! parsing, the API key, and record/replay. No timing assertions: retry
//! delays are checked as the values the client computed, not as clocks.

use std::path::Path;
use std::time::Duration;

use agentd::config::LlmSpec;
use agentd::llm::{
    Cassette, ChatMessage, ChatRequest, ChatResponse, LlmClient, LlmError, RetryPolicy, ToolCall, ToolDef,
};
use serde_json::{Value, json};

use crate::support::llm_server::{LlmServer, Reply, chunk, completion, usage_chunk};
use crate::support::tempdir;

/// The variable the key tests read; set once for the whole test binary.
const KEY_VAR: &str = "AGENTD_LLM_TEST_API_KEY";
const KEY: &str = "sk-test-5ecret-Key-0042";

fn set_test_key() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a new variable, set once, by name no other code reads;
        // std serialises its own environment access.
        unsafe { std::env::set_var(KEY_VAR, KEY) };
    });
}

fn spec(server: &LlmServer) -> LlmSpec {
    LlmSpec {
        base_url: server.base_url(),
        api_key_env: None,
        temperature: Some(0.2),
        request_timeout: Duration::from_secs(20),
        max_retries: 3,
        stream: true,
    }
}

/// Retries without real waiting, so tests stay quick on a busy machine.
fn fast_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(5),
    }
}

fn client(server: &LlmServer) -> LlmClient {
    LlmClient::new(&spec(server), "test-model")
        .expect("client")
        .with_retry_policy(fast_retries(3))
}

fn plain_client(server: &LlmServer) -> LlmClient {
    client(server).with_streaming(false)
}

fn tools() -> Vec<ToolDef> {
    vec![
        ToolDef::new(
            "read_file",
            Some("Reads a file".into()),
            json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        ),
        ToolDef::new("list_files", None, json!({"type": "object", "properties": {}})),
    ]
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(
        vec![ChatMessage::system("You keep notes."), ChatMessage::user(text)],
        tools(),
    )
}

/// Runs one completion, collecting the text deltas.
async fn complete(client: &LlmClient, req: &ChatRequest) -> (Result<ChatResponse, LlmError>, Vec<String>) {
    let mut deltas = Vec::new();
    let result = client.complete(req, &mut |t: &str| deltas.push(t.to_string())).await;
    (result, deltas)
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

// ---- replies and tool calls ----

#[tokio::test]
async fn text_reply_is_returned_and_passed_to_on_text() {
    let server = LlmServer::start(vec![Reply::text("Three open items.")]);
    let (reply, deltas) = complete(&plain_client(&server), &ask("summarise")).await;
    let reply = reply.expect("reply");
    assert_eq!(reply.content.as_deref(), Some("Three open items."));
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!((reply.usage.prompt_tokens, reply.usage.completion_tokens), (21, 7));
    assert!(reply.retries.is_empty());
    assert_eq!(deltas, ["Three open items."]);
    assert_eq!(reply.message(), ChatMessage::assistant("Three open items."));

    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].path.ends_with("/v1/chat/completions"), "{}", sent[0].path);
    let body = sent[0].json();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], false);
    assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You keep notes."})
    );
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "summarise"}));
    assert_eq!(
        body["tools"][0],
        json!({"type": "function", "function": {"name": "read_file", "description": "Reads a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}})
    );
    assert_eq!(body["tools"][1]["function"]["name"], "list_files");
}

#[tokio::test]
async fn several_tool_calls_in_one_reply_are_parsed() {
    let server = LlmServer::start(vec![Reply::tool_calls(&[
        ("call_a", "read_file", r#"{"path":"notes.md"}"#),
        ("call_b", "list_files", ""),
    ])]);
    let (reply, deltas) = complete(&plain_client(&server), &ask("look")).await;
    let reply = reply.expect("reply");
    assert_eq!(reply.content, None);
    assert!(deltas.is_empty());
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        reply.tool_calls,
        [
            call("call_a", "read_file", r#"{"path":"notes.md"}"#),
            call("call_b", "list_files", "")
        ]
    );
    assert_eq!(
        reply.tool_calls[0].arguments_json().unwrap(),
        json!({"path": "notes.md"})
    );
    assert_eq!(reply.tool_calls[1].arguments_json().unwrap(), json!({}));
}

#[tokio::test]
async fn conversation_with_tool_results_is_sent_in_openai_shape() {
    let server = LlmServer::start(vec![Reply::text("done")]);
    let mut req = ask("look");
    req.messages.push(ChatMessage::Assistant {
        content: None,
        tool_calls: vec![call("call_a", "read_file", r#"{"path":"a"}"#)],
    });
    req.messages.push(ChatMessage::tool("call_a", "file contents"));
    complete(&plain_client(&server), &req).await.0.expect("reply");
    let body = server.requests()[0].json();
    assert_eq!(
        body["messages"][2],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}}]})
    );
    assert_eq!(
        body["messages"][3],
        json!({"role": "tool", "tool_call_id": "call_a", "content": "file contents"})
    );
}

// ---- streaming ----

#[tokio::test]
async fn streamed_text_deltas_arrive_in_order() {
    let server = LlmServer::start(vec![Reply::stream_text(&["Hel", "lo, ", "wor", "ld"])]);
    let (reply, deltas) = complete(&client(&server), &ask("hi")).await;
    let reply = reply.expect("reply");
    assert_eq!(deltas, ["Hel", "lo, ", "wor", "ld"]);
    assert_eq!(reply.content.as_deref(), Some("Hello, world"));
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!((reply.usage.prompt_tokens, reply.usage.completion_tokens), (12, 4));
    let body = server.requests()[0].json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn streamed_tool_call_deltas_are_assembled_by_index() {
    let tc = |index: u32, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut f = json!({"arguments": args});
        if let Some(n) = name {
            f["name"] = json!(n);
        }
        let mut d = json!({"index": index, "function": f});
        if let Some(id) = id {
            d["id"] = json!(id);
            d["type"] = json!("function");
        }
        chunk(json!({"tool_calls": [d]}), Value::Null)
    };
    let server = LlmServer::start(vec![Reply::sse(vec![
        chunk(json!({"role": "assistant", "content": "Let me look. "}), Value::Null),
        tc(0, Some("call_1"), Some("read_file"), ""),
        tc(0, None, None, "{\"pa"),
        tc(1, Some("call_2"), Some("list_files"), ""),
        tc(0, None, None, "th\": \"notes"),
        tc(1, None, None, "{}"),
        tc(0, None, None, ".md\"}"),
        chunk(json!({}), json!("tool_calls")),
        usage_chunk(30, 9),
    ])]);
    let (reply, deltas) = complete(&client(&server), &ask("look")).await;
    let reply = reply.expect("reply");
    assert_eq!(deltas, ["Let me look. "]);
    assert_eq!(reply.content.as_deref(), Some("Let me look. "));
    assert_eq!(
        reply.tool_calls,
        [
            call("call_1", "read_file", r#"{"path": "notes.md"}"#),
            call("call_2", "list_files", "{}")
        ]
    );
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(reply.usage.total(), 39);
}

#[tokio::test]
async fn tool_calls_without_index_or_id_still_assemble() {
    // Seen from some local servers: no `index`, the whole call in one delta, no id.
    let server = LlmServer::start(vec![Reply::sse(vec![
        chunk(
            json!({"tool_calls": [{"function": {"name": "read_file", "arguments": {"path": "a.md"}}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ])]);
    let reply = complete(&client(&server), &ask("look")).await.0.expect("reply");
    assert_eq!(reply.tool_calls.len(), 1);
    assert_eq!(reply.tool_calls[0].id, "call_0");
    assert_eq!(reply.tool_calls[0].arguments_json().unwrap(), json!({"path": "a.md"}));
}

#[tokio::test]
async fn provider_that_does_not_stream_is_detected_and_served_plainly() {
    let server = LlmServer::start(vec![Reply::text("first"), Reply::text("first"), Reply::text("second")]);
    let client = client(&server);
    let (one, deltas) = complete(&client, &ask("a")).await;
    assert_eq!(one.expect("first reply").content.as_deref(), Some("first"));
    assert_eq!(deltas, ["first"]);
    let (two, _) = complete(&client, &ask("b")).await;
    assert_eq!(two.expect("second reply").content.as_deref(), Some("second"));
    let streamed: Vec<Value> = server.requests().iter().map(|r| r.json()["stream"].clone()).collect();
    assert_eq!(streamed, [json!(true), json!(false), json!(false)]);
}

#[tokio::test]
async fn provider_that_refuses_stream_options_is_asked_again_without() {
    let server = LlmServer::start(vec![
        Reply::error(
            422,
            "invalid_request_error",
            "stream_options: Extra inputs are not permitted",
        ),
        Reply::stream_text(&["ok"]),
        Reply::stream_text(&["again"]),
    ]);
    let client = client(&server);
    let reply = complete(&client, &ask("a")).await.0.expect("second request");
    assert_eq!(reply.content.as_deref(), Some("ok"));
    assert!(
        reply.retries.is_empty(),
        "not a failure of the provider: {:?}",
        reply.retries
    );
    complete(&client, &ask("b")).await.0.expect("third request");
    let sent: Vec<bool> = server
        .requests()
        .iter()
        .map(|r| r.json().get("stream_options").is_some())
        .collect();
    assert_eq!(sent, [true, false, false]);
}

// ---- retries ----

#[tokio::test]
async fn rate_limit_with_retry_after_is_retried_then_succeeds() {
    let server = LlmServer::start(vec![Reply::rate_limited("0"), Reply::stream_text(&["ok"])]);
    let (reply, deltas) = complete(&client(&server), &ask("hi")).await;
    let reply = reply.expect("reply after the retry");
    assert_eq!(reply.content.as_deref(), Some("ok"));
    assert_eq!(deltas, ["ok"]);
    assert_eq!(server.request_count(), 2);
    assert_eq!(reply.retries.len(), 1);
    assert_eq!(reply.retries[0].attempt, 1);
    assert!(reply.retries[0].error.contains("429"), "{}", reply.retries[0].error);
    assert!(
        reply.retries[0].error.contains("Rate limit reached"),
        "{}",
        reply.retries[0].error
    );
    // Retry-After: 0 replaces the backoff delay.
    assert_eq!(reply.retries[0].delay_ms, 0);
}

#[tokio::test]
async fn long_retry_after_is_capped() {
    let server = LlmServer::start(vec![Reply::rate_limited("3600"), Reply::text("ok")]);
    let policy = RetryPolicy {
        max_retry_after: Duration::from_millis(20),
        ..fast_retries(2)
    };
    let client = plain_client(&server).with_retry_policy(policy);
    let reply = complete(&client, &ask("hi")).await.0.expect("reply");
    assert_eq!(reply.retries.len(), 1);
    assert_eq!(reply.retries[0].delay_ms, 20);
}

#[tokio::test]
async fn server_error_is_retried() {
    let server = LlmServer::start(vec![
        Reply::status(500, "upstream exploded"),
        Reply::status(502, "<html>bad gateway</html>"),
        Reply::text("fine now"),
    ]);
    let reply = complete(&plain_client(&server), &ask("hi")).await.0.expect("reply");
    assert_eq!(reply.content.as_deref(), Some("fine now"));
    assert_eq!(server.request_count(), 3);
    let errors: Vec<&str> = reply.retries.iter().map(|r| r.error.as_str()).collect();
    assert!(
        errors[0].contains("500") && errors[0].contains("upstream exploded"),
        "{errors:?}"
    );
    assert!(errors[1].contains("502"), "{errors:?}");
    assert_eq!(reply.retries.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn retries_are_bounded_and_the_final_error_says_why() {
    let server = LlmServer::start(vec![Reply::status(503, "overloaded"); 6]);
    let client = client(&server).with_retry_policy(fast_retries(2));
    let err = complete(&client, &ask("hi")).await.0.expect_err("must give up");
    assert_eq!(server.request_count(), 3);
    let text = err.to_string();
    assert!(matches!(err, LlmError::RetriesExhausted { attempts: 3, .. }), "{err:?}");
    assert!(text.contains("gave up after 3 attempts"), "{text}");
    assert!(text.contains("503") && text.contains("overloaded"), "{text}");
    assert_eq!(err.status(), Some(503));
}

#[tokio::test]
async fn zero_retries_means_one_request() {
    let server = LlmServer::start(vec![Reply::status(500, "no"), Reply::text("never")]);
    let client = plain_client(&server).with_retry_policy(fast_retries(0));
    let err = complete(&client, &ask("hi")).await.0.expect_err("no retry");
    assert!(matches!(err, LlmError::Http { status: 500, .. }), "{err:?}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn client_errors_fail_at_once_with_the_provider_message() {
    for (status, kind, message) in [
        (400, "invalid_request_error", "Invalid schema for function 'read_file'"),
        (401, "invalid_api_key", "Incorrect API key provided"),
        (404, "not_found_error", "The model `gpt-9` does not exist"),
    ] {
        let server = LlmServer::start(vec![Reply::error(status, kind, message), Reply::text("never")]);
        let err = complete(&client(&server), &ask("hi"))
            .await
            .0
            .expect_err("client error");
        assert_eq!(server.request_count(), 1, "{status} must not be retried");
        assert_eq!(err.status(), Some(status));
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(text.contains(&status.to_string()) && text.contains(message), "{text}");
    }
}

#[tokio::test]
async fn exhausted_quota_is_not_retried() {
    let server = LlmServer::start(vec![
        Reply::error(429, "insufficient_quota", "You exceeded your current quota"),
        Reply::text("never"),
    ]);
    let err = complete(&client(&server), &ask("hi")).await.0.expect_err("quota");
    assert_eq!(server.request_count(), 1);
    assert!(err.to_string().contains("exceeded your current quota"), "{err}");
}

#[tokio::test]
async fn malformed_json_is_a_clear_retryable_error() {
    let server = LlmServer::start(vec![Reply::malformed(), Reply::text("whole")]);
    let reply = complete(&plain_client(&server), &ask("hi")).await.0.expect("retried");
    assert_eq!(reply.content.as_deref(), Some("whole"));
    assert!(
        reply.retries[0].error.contains("malformed response"),
        "{:?}",
        reply.retries
    );

    let server = LlmServer::start(vec![
        Reply::malformed(),
        Reply::malformed(),
        Reply::json(json!({"no": "choices"})),
    ]);
    let client = plain_client(&server).with_retry_policy(fast_retries(1));
    let err = complete(&client, &ask("hi")).await.0.expect_err("stays malformed");
    let text = err.to_string();
    assert!(
        text.contains("gave up after 2 attempts") && text.contains("malformed response"),
        "{text}"
    );
    assert!(text.contains("the body starts with"), "{text}");
}

#[tokio::test]
async fn completion_without_choices_is_malformed() {
    let server = LlmServer::start(vec![Reply::json(json!({"id": "x", "choices": []}))]);
    let client = plain_client(&server).with_retry_policy(fast_retries(0));
    let err = complete(&client, &ask("hi")).await.0.expect_err("no choices");
    assert!(matches!(err, LlmError::Malformed(_)), "{err:?}");
    assert!(err.to_string().contains("no choices"), "{err}");

    // A gateway's error inside a 200 body is shown.
    let server = LlmServer::start(vec![Reply::json(
        json!({"error": {"message": "upstream timed out", "code": 504}}),
    )]);
    let client = plain_client(&server).with_retry_policy(fast_retries(0));
    let err = complete(&client, &ask("hi")).await.0.expect_err("error body");
    assert!(err.to_string().contains("upstream timed out"), "{err}");
}

#[tokio::test]
async fn refusal_is_returned_as_the_text() {
    let mut body = completion(Value::Null, Vec::new(), json!("stop"));
    body["choices"][0]["message"]["refusal"] = json!("I can't help with that.");
    let server = LlmServer::start(vec![Reply::json(body)]);
    let (reply, deltas) = complete(&plain_client(&server), &ask("hi")).await;
    assert_eq!(reply.unwrap().content.as_deref(), Some("I can't help with that."));
    assert_eq!(deltas, ["I can't help with that."]);
}

#[tokio::test]
async fn malformed_stream_event_before_any_text_is_retried() {
    let server = LlmServer::start(vec![
        Reply::sse_raw(&["{\"choices\": [{\"delta\": "]),
        Reply::stream_text(&["fine"]),
    ]);
    let reply = complete(&client(&server), &ask("hi")).await.0.expect("retried");
    assert_eq!(reply.content.as_deref(), Some("fine"));
    assert_eq!(reply.retries.len(), 1);
    assert!(
        reply.retries[0].error.contains("not a completion chunk"),
        "{:?}",
        reply.retries
    );
}

#[tokio::test]
async fn stream_failing_after_text_is_not_retried() {
    // Retrying would show the same words twice in the REPL.
    let server = LlmServer::start(vec![
        Reply::sse_raw(&[
            &chunk(json!({"content": "Hal"}), Value::Null).to_string(),
            "{\"error\": {\"message\": \"model crashed\"}}",
        ]),
        Reply::text("never"),
    ]);
    let (err, deltas) = complete(&client(&server), &ask("hi")).await;
    let err = err.expect_err("broken stream");
    assert_eq!(deltas, ["Hal"]);
    assert_eq!(server.request_count(), 1);
    assert!(
        matches!(
            err,
            LlmError::Stream {
                text_delivered: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("model crashed"), "{err}");
}

#[tokio::test]
async fn stall_hits_the_request_timeout() {
    for streaming in [true, false] {
        let server = LlmServer::start(vec![Reply::Stall]);
        let spec = LlmSpec {
            request_timeout: Duration::from_millis(300),
            max_retries: 0,
            ..spec(&server)
        };
        let client = LlmClient::new(&spec, "test-model").unwrap().with_streaming(streaming);
        let err = complete(&client, &ask("hi")).await.0.expect_err("timeout");
        assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("300ms"), "{err}");
    }
}

#[tokio::test]
async fn stream_that_goes_quiet_after_text_fails_without_retry() {
    let server = LlmServer::start(vec![
        Reply::sse_then_stall(vec![chunk(json!({"content": "partial"}), Value::Null)]),
        Reply::stream_text(&["never"]),
    ]);
    let spec = LlmSpec {
        request_timeout: Duration::from_millis(300),
        ..spec(&server)
    };
    let client = LlmClient::new(&spec, "test-model")
        .unwrap()
        .with_retry_policy(fast_retries(2));
    let (err, deltas) = complete(&client, &ask("hi")).await;
    let err = err.expect_err("went quiet");
    assert_eq!(deltas, ["partial"]);
    assert_eq!(server.request_count(), 1);
    assert!(
        matches!(
            err,
            LlmError::Stream {
                text_delivered: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("sent nothing for 300ms"), "{err}");
}

#[tokio::test]
async fn stream_that_goes_quiet_before_text_is_retried() {
    let server = LlmServer::start(vec![
        Reply::sse_then_stall(vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)]),
        Reply::stream_text(&["second try"]),
    ]);
    let spec = LlmSpec {
        request_timeout: Duration::from_millis(300),
        ..spec(&server)
    };
    let client = LlmClient::new(&spec, "test-model")
        .unwrap()
        .with_retry_policy(fast_retries(2));
    let (reply, deltas) = complete(&client, &ask("hi")).await;
    assert_eq!(reply.expect("retried").retries.len(), 1);
    assert_eq!(deltas, ["second try"]);
}

#[test]
fn the_client_and_its_futures_can_move_between_threads() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Sync>(_: &T) {}
    let client = LlmClient::new(&LlmSpec::default(), "m").unwrap();
    send(&client);
    sync(&client);
    let req = ask("hi");
    let mut on_text = |_: &str| {};
    let fut = client.complete(&req, &mut on_text);
    send(&fut);
}

#[tokio::test]
async fn stalled_request_is_retried_like_any_timeout() {
    let server = LlmServer::start(vec![Reply::Stall, Reply::text("late but here")]);
    let spec = LlmSpec {
        request_timeout: Duration::from_millis(300),
        ..spec(&server)
    };
    let client = LlmClient::new(&spec, "test-model")
        .unwrap()
        .with_streaming(false)
        .with_retry_policy(fast_retries(1));
    let reply = complete(&client, &ask("hi")).await.0.expect("second attempt");
    assert_eq!(reply.content.as_deref(), Some("late but here"));
    assert!(reply.retries[0].error.contains("no answer"), "{:?}", reply.retries);
}

#[tokio::test]
async fn unreachable_provider_is_a_connection_error() {
    // Bind then drop: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = LlmSpec {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        api_key_env: None,
        temperature: None,
        request_timeout: Duration::from_secs(5),
        max_retries: 1,
        stream: true,
    };
    let client = LlmClient::new(&spec, "m").unwrap().with_retry_policy(fast_retries(1));
    let err = complete(&client, &ask("hi")).await.0.expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("gave up after 2 attempts") && text.contains("could not talk to the provider"),
        "{text}"
    );
}

#[tokio::test]
async fn tls_to_a_plain_http_server_fails_cleanly() {
    // Exercises the TLS setup (rustls) without any network: the handshake
    // meets a plain HTTP server on loopback and must fail, not panic.
    let server = LlmServer::start(vec![]);
    let spec = LlmSpec {
        base_url: server.base_url().replace("http://", "https://"),
        max_retries: 0,
        ..spec(&server)
    };
    let err = complete(&LlmClient::new(&spec, "m").unwrap(), &ask("hi"))
        .await
        .0
        .expect_err("no TLS there");
    assert!(matches!(err, LlmError::Connection(_)), "{err:?}");
}

// ---- tolerance ----

#[tokio::test]
async fn empty_null_and_unknown_finish_reasons_do_not_break_parsing() {
    let odd = |finish: Value| {
        let mut c = completion(json!("hi"), Vec::new(), finish);
        // Fields no type of ours knows about, as real providers add them.
        c["choices"][0]["message"]["reasoning_content"] = json!("thinking...");
        c["choices"][0]["message"]["refusal"] = Value::Null;
        c["service_tier"] = json!("default");
        c["usage"]["prompt_tokens_details"] = json!({"cached_tokens": 0});
        Reply::json(c)
    };
    let server = LlmServer::start(vec![
        odd(json!("")),
        odd(Value::Null),
        odd(json!("eos_token_or_something_new")),
        Reply::sse(vec![
            chunk(json!({"content": "x"}), json!("")),
            chunk(json!({}), json!("end_turn")),
        ]),
    ]);
    let client = plain_client(&server);
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let reply = complete(&client, &ask("hi")).await.0.expect("tolerated");
        assert_eq!(reply.content.as_deref(), Some("hi"));
        reasons.push(reply.finish_reason);
    }
    assert_eq!(reasons, [None, None, Some("eos_token_or_something_new".to_string())]);
    let streamed = complete(&client.with_streaming(true), &ask("hi"))
        .await
        .0
        .expect("stream");
    assert_eq!(streamed.finish_reason.as_deref(), Some("end_turn"));
}

#[tokio::test]
async fn content_parts_null_lists_and_missing_usage_are_tolerated() {
    let server = LlmServer::start(vec![Reply::json(json!({
        "choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                                 "tool_calls": null},
                     "finish_reason": "stop"}],
        "usage": null
    }))]);
    let reply = complete(&plain_client(&server), &ask("hi")).await.0.expect("tolerated");
    assert_eq!(reply.content.as_deref(), Some("ab"));
    assert!(reply.tool_calls.is_empty());
    // No usage from the provider: estimated, and marked so.
    assert!(reply.usage.estimated && reply.usage.total() > 0, "{:?}", reply.usage);
}

#[test]
fn conversation_types_round_trip_through_json() {
    let messages = vec![
        ChatMessage::system("sys"),
        ChatMessage::user("hello"),
        ChatMessage::Assistant {
            content: None,
            tool_calls: vec![call("c1", "read_file", r#"{"path":"x"}"#)],
        },
        ChatMessage::tool("c1", "contents"),
        ChatMessage::assistant("done"),
    ];
    let text = serde_json::to_string(&messages).unwrap();
    let back: Vec<ChatMessage> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, messages);

    let reply = ChatResponse {
        content: Some("x".into()),
        tool_calls: vec![call("c2", "list_files", "")],
        finish_reason: Some("tool_calls".into()),
        ..ChatResponse::default()
    };
    let back: ChatResponse = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
    assert_eq!(back, reply);

    // What providers and older snapshots may hold instead.
    let odd: ChatMessage =
        serde_json::from_value(json!({"role": "developer", "content": [{"type": "text", "text": "sys"}]})).unwrap();
    assert_eq!(odd, ChatMessage::system("sys"));
    let odd: ChatMessage =
        serde_json::from_value(json!({"role": "assistant", "content": "hi", "tool_calls": null, "name": "bot"}))
            .unwrap();
    assert_eq!(odd, ChatMessage::assistant("hi"));
}

fn any_message() -> impl proptest::strategy::Strategy<Value = ChatMessage> {
    use proptest::prelude::*;
    let text = || any::<String>();
    let tool_call = (text(), "[a-z_]{1,12}", text()).prop_map(|(id, name, arguments)| ToolCall { id, name, arguments });
    prop_oneof![
        text().prop_map(ChatMessage::system),
        text().prop_map(ChatMessage::user),
        (proptest::option::of(text()), proptest::collection::vec(tool_call, 0..3))
            .prop_map(|(content, tool_calls)| ChatMessage::Assistant { content, tool_calls }),
        (text(), text()).prop_map(|(id, content)| ChatMessage::tool(id, content)),
    ]
}

proptest::proptest! {
    #[test]
    fn any_conversation_round_trips_through_json(messages in proptest::collection::vec(any_message(), 0..6)) {
        let text = serde_json::to_string(&messages).unwrap();
        let back: Vec<ChatMessage> = serde_json::from_str(&text).unwrap();
        proptest::prop_assert_eq!(back, messages);
    }
}

// ---- the API key ----

#[tokio::test]
async fn api_key_is_sent_as_bearer_from_the_named_variable() {
    set_test_key();
    let server = LlmServer::start(vec![Reply::stream_text(&["ok"])]);
    let spec = LlmSpec {
        api_key_env: Some(KEY_VAR.into()),
        ..spec(&server)
    };
    let client = LlmClient::new(&spec, "test-model").unwrap();
    complete(&client, &ask("hi")).await.0.expect("reply");
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[tokio::test]
async fn api_key_never_appears_in_errors_or_debug_output() {
    set_test_key();
    // A provider (or proxy) that echoes the key back in its error body.
    let echo = format!("Incorrect API key provided: {KEY}. You can find your key at …");
    let server = LlmServer::start(vec![
        Reply::error(401, "invalid_request_error", &echo),
        Reply::status(500, &format!("proxy saw Authorization: Bearer {KEY}")),
        Reply::status(500, &format!("again {KEY}")),
    ]);
    let spec = LlmSpec {
        api_key_env: Some(KEY_VAR.into()),
        ..spec(&server)
    };
    let client = LlmClient::new(&spec, "test-model")
        .unwrap()
        .with_retry_policy(fast_retries(1));
    let err = complete(&client, &ask("hi")).await.0.expect_err("401");
    for shown in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!shown.contains(KEY), "key leaked: {shown}");
    }
    assert!(
        err.to_string().contains("Incorrect API key provided: [redacted]"),
        "{err}"
    );

    let err = complete(&client, &ask("hi")).await.0.expect_err("500s");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(KEY), "key leaked: {shown}");
    }
}

#[tokio::test]
async fn missing_key_variable_is_named_and_nothing_is_sent() {
    let server = LlmServer::start(vec![Reply::text("never")]);
    let spec = LlmSpec {
        api_key_env: Some("AGENTD_LLM_TEST_UNSET_KEY".into()),
        ..spec(&server)
    };
    let err = complete(&LlmClient::new(&spec, "m").unwrap(), &ask("hi"))
        .await
        .0
        .expect_err("no key");
    assert!(matches!(err, LlmError::MissingApiKey { .. }), "{err:?}");
    assert!(err.to_string().contains("AGENTD_LLM_TEST_UNSET_KEY"), "{err}");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn no_key_variable_sends_no_authorization_header() {
    // Local servers (Ollama, llama.cpp) need no key; an OPENAI_API_KEY in
    // the environment must not be sent to them either.
    let server = LlmServer::start(vec![Reply::text("ok")]);
    complete(&plain_client(&server), &ask("hi")).await.0.expect("reply");
    assert_eq!(server.requests()[0].header("authorization"), None);
}

#[test]
fn bad_settings_are_rejected_up_front() {
    let base = LlmSpec::default();
    let err = LlmClient::new(
        &LlmSpec {
            base_url: "localhost:11434".into(),
            ..base.clone()
        },
        "m",
    )
    .unwrap_err();
    assert!(err.to_string().contains("llm.base_url"), "{err}");
    let err = LlmClient::new(&base, "replay:").unwrap_err();
    assert!(err.to_string().contains("cassette path"), "{err}");
    let err = LlmClient::new(&base, "replay:/nonexistent/x.cassette.json").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.cassette.json"), "{err}");
}

// ---- record and replay ----

/// One agent "task": ask, run the tool calls (answering with canned
/// output), and loop until the model stops calling tools.
async fn run_task(client: &LlmClient, trigger: &str) -> Vec<ChatResponse> {
    let mut req = ask(trigger);
    let mut replies = Vec::new();
    for _ in 0..5 {
        let reply = complete(client, &req).await.0.expect("reply");
        req.messages.push(reply.message());
        let calls = reply.tool_calls.clone();
        replies.push(reply);
        if calls.is_empty() {
            break;
        }
        for c in calls {
            req.messages
                .push(ChatMessage::tool(c.id, format!("output of {}", c.name)));
        }
    }
    replies
}

#[tokio::test]
async fn recorded_run_replays_the_same_replies_without_a_server() {
    let dir = tempdir();
    let server = LlmServer::start(vec![
        Reply::stream_tool_calls(&[
            ("call_1", "read_file", r#"{"path":"notes.md"}"#),
            ("call_2", "list_files", "{}"),
        ]),
        Reply::stream_text(&["Notes ", "read."]),
        Reply::rate_limited("0"),
        Reply::stream_text(&["Second task ", "done."]),
    ]);
    let recorder = client(&server).with_recording(dir.path(), "notes").expect("recording");
    let cassette_path = dir.path().join("notes.cassette.json");
    assert_eq!(recorder.recording(), Some(cassette_path.as_path()));
    let mut recorded = run_task(&recorder, "notes.md changed").await;
    recorded.extend(run_task(&recorder, "anything else?").await);
    assert_eq!(recorded.len(), 3);
    drop(recorder);
    drop(server);

    let cassette = Cassette::load(&cassette_path).expect("a valid cassette");
    assert_eq!(cassette.exchanges.len(), 3);
    assert_eq!(cassette.agent.as_deref(), Some("notes"));
    assert_eq!(
        cassette.exchanges[1].request.tool_results,
        Some(vec!["call_1".into(), "call_2".into()])
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");

    // Different user text on replay is fine: only the shape must match.
    let player = LlmClient::new(&LlmSpec::default(), &format!("replay:{}", cassette_path.display())).unwrap();
    assert!(player.is_replay());
    let mut replayed = run_task(&player, "notes.md changed (other contents)").await;
    replayed.extend(run_task(&player, "something else").await);
    let strip = |v: Vec<ChatResponse>| -> Vec<ChatResponse> {
        v.into_iter()
            .map(|mut r| {
                r.retries.clear();
                r
            })
            .collect()
    };
    assert_eq!(strip(replayed), strip(recorded));

    // Replayed text reaches on_text too.
    let player = LlmClient::new(&LlmSpec::default(), &format!("replay:{}", cassette_path.display())).unwrap();
    run_task(&player, "x").await;
    let (_, deltas) = complete(&player, &ask("y")).await;
    assert_eq!(deltas, ["Second task done."]);
}

fn write_cassette(dir: &Path, value: Value) -> String {
    let path = dir.join("hand.cassette.json");
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    format!("replay:{}", path.display())
}

#[tokio::test]
async fn hand_written_cassette_with_only_responses_replays() {
    let dir = tempdir();
    let model = write_cassette(
        dir.path(),
        json!({"agentd_cassette": 1, "exchanges": [
            {"response": {"content": "Hello from a cassette."}}
        ]}),
    );
    let player = LlmClient::new(&LlmSpec::default(), &model).unwrap();
    let (reply, deltas) = complete(&player, &ChatRequest::new(vec![ChatMessage::user("hi")], vec![])).await;
    assert_eq!(reply.unwrap().content.as_deref(), Some("Hello from a cassette."));
    assert_eq!(deltas, ["Hello from a cassette."]);
}

#[tokio::test]
async fn replay_that_runs_out_fails_clearly() {
    let dir = tempdir();
    let model = write_cassette(
        dir.path(),
        json!({"agentd_cassette": 1, "exchanges": [{"response": {"content": "only one"}}]}),
    );
    let player = LlmClient::new(&LlmSpec::default(), &model).unwrap();
    complete(&player, &ask("1")).await.0.expect("first");
    let err = complete(&player, &ask("2")).await.0.expect_err("ran out");
    let text = err.to_string();
    assert!(matches!(err, LlmError::ReplayExhausted { len: 1, .. }), "{err:?}");
    assert!(
        text.contains("hand.cassette.json") && text.contains("1 recorded replies") && text.contains("reply 2"),
        "{text}"
    );
}

#[tokio::test]
async fn repeating_cassette_starts_over_after_the_last_reply() {
    let dir = tempdir();
    let model = write_cassette(
        dir.path(),
        json!({"agentd_cassette": 1, "repeat": true, "exchanges": [
            {"response": {"content": "one"}}, {"response": {"content": "two"}}
        ]}),
    );
    let player = LlmClient::new(&LlmSpec::default(), &model).unwrap();
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(
            complete(&player, &ask(&i.to_string()))
                .await
                .0
                .expect("repeats")
                .content
                .unwrap_or_default(),
        );
    }
    assert_eq!(got, ["one", "two", "one", "two", "one"]);
}

#[tokio::test]
async fn replay_mismatch_says_what_was_expected_and_what_came() {
    let dir = tempdir();
    let model = write_cassette(
        dir.path(),
        json!({"agentd_cassette": 1, "exchanges": [
            {"request": {"last_role": "user", "tools": ["read_file"]},
             "response": {"tool_calls": [{"id": "call_9", "type": "function",
                                          "function": {"name": "read_file", "arguments": "{}"}}]}},
            {"request": {"last_role": "tool", "tool_results": ["call_9"]},
             "response": {"content": "done"}}
        ]}),
    );

    // Tools missing from the request.
    let player = LlmClient::new(&LlmSpec::default(), &model).unwrap();
    let bare = ChatRequest::new(vec![ChatMessage::user("hi")], vec![]);
    let err = complete(&player, &bare).await.0.expect_err("no tools offered");
    let text = err.to_string();
    assert!(matches!(err, LlmError::ReplayMismatch { index: 1, .. }), "{err:?}");
    assert!(text.contains("read_file") && text.contains("missing"), "{text}");

    // The position did not move: a fitting request still gets reply 1.
    let reply = complete(&player, &ask("hi")).await.0.expect("fits");
    assert_eq!(reply.tool_calls[0].id, "call_9");

    // Answering the wrong call.
    let mut req = ask("hi");
    req.messages.push(reply.message());
    req.messages.push(ChatMessage::tool("call_other", "x"));
    let err = complete(&player, &req).await.0.expect_err("wrong tool result");
    let text = err.to_string();
    assert!(
        text.contains("reply 2") && text.contains("call_9") && text.contains("call_other"),
        "{text}"
    );

    // A user message where a tool result was expected.
    let err = complete(&player, &ask("again")).await.0.expect_err("wrong role");
    assert!(
        err.to_string().contains("ending with a tool message") && err.to_string().contains("user"),
        "{err}"
    );
}

#[test]
fn unreadable_cassettes_are_reported_with_their_path() {
    let dir = tempdir();
    let model = write_cassette(dir.path(), json!({"agentd_cassette": 1, "exchange": []}));
    let err = LlmClient::new(&LlmSpec::default(), &model).unwrap_err();
    assert!(
        err.to_string().contains("hand.cassette.json") && err.to_string().contains("exchange"),
        "{err}"
    );
    let model = write_cassette(dir.path(), json!({"agentd_cassette": 7, "exchanges": []}));
    let err = LlmClient::new(&LlmSpec::default(), &model).unwrap_err();
    assert!(err.to_string().contains("version 7"), "{err}");
}

#[tokio::test]
async fn recording_continues_an_existing_cassette() {
    let dir = tempdir();
    let server = LlmServer::start(vec![Reply::text("one"), Reply::text("two")]);
    let first = plain_client(&server).with_recording(dir.path(), "a").unwrap();
    complete(&first, &ask("x")).await.0.unwrap();
    drop(first);
    let second = plain_client(&server).with_recording(dir.path(), "a").unwrap();
    complete(&second, &ask("y")).await.0.unwrap();
    let cassette = Cassette::load(&dir.path().join("a.cassette.json")).unwrap();
    let contents: Vec<_> = cassette
        .exchanges
        .iter()
        .map(|e| e.response.content.clone().unwrap())
        .collect();
    assert_eq!(contents, ["one", "two"]);
}

/// Not a test: prints how long one completion takes against the loopback
/// server (p50/p90), an upper bound on the client's own overhead (each
/// request also opens a TCP connection and a server thread). Run with
/// `cargo test --release --test all llm::overhead -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, run by hand"]
async fn overhead_of_one_completion_on_loopback() {
    const N: usize = 300;
    let server = LlmServer::start(Vec::new());
    for _ in 0..N {
        server.push(Reply::stream_text(&["a", "b", "c"]));
    }
    let client = client(&server);
    let req = ask("hi");
    let mut times = Vec::with_capacity(N);
    for _ in 0..N {
        let t = std::time::Instant::now();
        complete(&client, &req).await.0.expect("reply");
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "streamed completion on loopback: p50 {:?}, p90 {:?}, max {:?}",
        times[N / 2],
        times[N * 9 / 10],
        times[N - 1]
    );
}

// ---- field compatibility (issue 13) ----

#[tokio::test]
async fn stream_that_breaks_off_without_finish_reason_is_an_error_and_retried() {
    // The connection closes mid-answer: no finish_reason, no [DONE]. The
    // partial text must not become the answer; the request is tried again.
    let partial = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "The answer is"}), Value::Null),
    ];
    let server = LlmServer::start(vec![Reply::sse_cut(partial.clone()), Reply::stream_text(&["42."])]);
    let (reply, deltas) = complete(&client(&server), &ask("hi")).await;
    let reply = reply.expect("retried after the break-off");
    assert_eq!(reply.content.as_deref(), Some("42."));
    assert_eq!(reply.retries.len(), 1);
    assert!(reply.retries[0].error.contains("broke off"), "{:?}", reply.retries);
    assert_eq!(deltas, ["The answer is", "42."]);

    // Only break-offs: the call fails, never returns the partial text.
    let server = LlmServer::start(vec![Reply::sse_cut(partial.clone()), Reply::sse_cut(partial)]);
    let client = LlmClient::new(&spec(&server), "test-model")
        .unwrap()
        .with_retry_policy(fast_retries(1));
    let err = complete(&client, &ask("hi")).await.0.expect_err("broken stream");
    assert!(err.to_string().contains("broke off"), "{err}");
}

#[tokio::test]
async fn streams_ask_for_usage_and_estimate_it_when_none_comes() {
    // llama.cpp's server: a finished stream without any usage chunk.
    let server = LlmServer::start(vec![Reply::sse(vec![
        chunk(json!({"content": "Twelve characters and more"}), Value::Null),
        chunk(json!({}), json!("stop")),
    ])]);
    let reply = complete(&client(&server), &ask("hi")).await.0.expect("reply");
    assert_eq!(
        server.requests()[0].json()["stream_options"],
        json!({"include_usage": true})
    );
    assert!(reply.usage.estimated, "{:?}", reply.usage);
    assert!(
        reply.usage.prompt_tokens > 10 && reply.usage.completion_tokens >= 6,
        "{:?}",
        reply.usage
    );
    // A reported figure is kept as it is.
    let server = LlmServer::start(vec![Reply::stream_text(&["a"])]);
    let reply = complete(&client(&server), &ask("hi")).await.0.expect("reply");
    assert!(!reply.usage.estimated);
    assert_eq!(reply.usage.total(), 13);
}

#[tokio::test]
async fn llm_stream_false_sends_plain_requests() {
    let server = LlmServer::start(vec![Reply::text("plain")]);
    let spec = LlmSpec {
        stream: false,
        ..spec(&server)
    };
    let client = LlmClient::new(&spec, "m").unwrap();
    let reply = complete(&client, &ask("hi")).await.0.expect("reply");
    assert_eq!(reply.content.as_deref(), Some("plain"));
    let body = server.requests()[0].json();
    assert_eq!(body["stream"], json!(false), "{body}");
    assert!(body.get("stream_options").is_none_or(Value::is_null), "{body}");
}
