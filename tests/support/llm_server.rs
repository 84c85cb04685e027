//! A scripted OpenAI-compatible HTTP server on 127.0.0.1, for tests.
//!
//! Real HTTP/1.1 over a loopback `TcpListener` on its own threads, so it
//! works under any test runtime. It answers `POST …/chat/completions`
//! (under any base path) with the next scripted [`Reply`], in order, and
//! records every request it received (path, headers, body). When the
//! script runs out it answers 500 saying so. Dropping the server stops it:
//! the accept loop and every connection thread end (stalled replies wake
//! up), bounded by timeouts so nothing outlives a test for long.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

/// The longest a connection thread waits for anything.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a stalled reply holds its connection.
const STALL_MAX: Duration = Duration::from_secs(30);

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete HTTP response.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A 200 `text/event-stream`; each item is one event's data (sent as
    /// `data: …`), followed by `data: [DONE]`, each flushed on its own;
    /// with `stall`, the connection goes quiet after the events instead.
    Sse { events: Vec<String>, stall: bool },
    /// Reads the request, then never answers (until the server drops).
    Stall,
    /// A 200 `text/event-stream` with these events, then the connection
    /// closes cleanly: no `[DONE]`, as when a provider dies mid-answer.
    SseCut(Vec<String>),
    /// Reads the request, then holds the answer until the test calls
    /// [`LlmServer::open_gate`] (or the server drops).
    Gated(Box<Reply>),
}

impl Reply {
    /// A 200 JSON body.
    pub fn json(body: Value) -> Reply {
        Reply::Http {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    /// A plain text completion (finish_reason "stop").
    pub fn text(content: &str) -> Reply {
        Reply::json(completion(json!(content), Vec::new(), json!("stop")))
    }

    /// A completion that calls tools: `(id, name, arguments JSON text)`.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Reply {
        let calls = calls
            .iter()
            .map(
                |(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}),
            )
            .collect();
        Reply::json(completion(Value::Null, calls, json!("tool_calls")))
    }

    /// A streamed text reply: a role chunk, one chunk per piece, a finish
    /// chunk and a usage chunk.
    pub fn stream_text(pieces: &[&str]) -> Reply {
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        events.extend(pieces.iter().map(|p| chunk(json!({"content": p}), Value::Null)));
        events.push(chunk(json!({}), json!("stop")));
        events.push(usage_chunk(12, pieces.len() as u64));
        Reply::sse(events)
    }

    /// Streamed tool calls: each call's id and name first, then its
    /// arguments in two pieces, then the finish chunk.
    pub fn stream_tool_calls(calls: &[(&str, &str, &str)]) -> Reply {
        let mut events = Vec::new();
        for (i, (id, name, args)) in calls.iter().enumerate() {
            let (a, b) = args.split_at(args.len() / 2);
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in [a, b] {
                events.push(chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        }
        events.push(chunk(json!({}), json!("tool_calls")));
        events.push(usage_chunk(40, 12));
        Reply::sse(events)
    }

    /// A stream of the given chunk objects.
    pub fn sse(events: Vec<Value>) -> Reply {
        Reply::Sse {
            events: events.into_iter().map(|e| e.to_string()).collect(),
            stall: false,
        }
    }

    /// The chunk objects, then silence (until the server drops).
    pub fn sse_then_stall(events: Vec<Value>) -> Reply {
        Reply::Sse {
            events: events.into_iter().map(|e| e.to_string()).collect(),
            stall: true,
        }
    }

    /// The chunk objects, then the connection closes without `[DONE]`.
    pub fn sse_cut(events: Vec<Value>) -> Reply {
        Reply::SseCut(events.into_iter().map(|e| e.to_string()).collect())
    }

    /// A stream of raw event data, as given.
    pub fn sse_raw(events: &[&str]) -> Reply {
        Reply::Sse {
            events: events.iter().map(|e| e.to_string()).collect(),
            stall: false,
        }
    }

    /// An error status with a body.
    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Http {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    /// An OpenAI-style error object with a status.
    pub fn error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::status(
            status,
            &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}).to_string(),
        )
    }

    /// 429 with `Retry-After: retry_after`.
    pub fn rate_limited(retry_after: &str) -> Reply {
        Reply::error(429, "rate_limit_error", "Rate limit reached for requests").with_header("Retry-After", retry_after)
    }

    /// A 200 whose body is cut off mid-JSON.
    pub fn malformed() -> Reply {
        Reply::Http {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: r#"{"id": "x", "choices": [{"index": 0, "message": {"role": "assist"#.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Http { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// A chat.completion object.
pub fn completion(content: Value, tool_calls: Vec<Value>, finish_reason: Value) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": null}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28},
        "system_fingerprint": null
    })
}

/// A chat.completion.chunk with one delta.
pub fn chunk(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    })
}

/// The last chunk of a stream with `include_usage`.
pub fn usage_chunk(prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    })
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics if it is not: the client always sends JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    stopped: Mutex<bool>,
    wake: Condvar,
    /// Whether [`Reply::Gated`] answers may go (guarded like `stopped`).
    gate_open: std::sync::atomic::AtomicBool,
}

/// The running server; stops when dropped.
pub struct LlmServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl LlmServer {
    /// Starts a server that will answer with `script`, in order.
    pub fn start(script: Vec<Reply>) -> LlmServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            script: Mutex::new(script.into()),
            ..State::default()
        });
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name("llm-server".into())
            .spawn(move || accept_loop(listener, st))
            .expect("spawn server thread");
        LlmServer {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// The base URL to configure (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Adds replies to the end of the script.
    pub fn push(&self, reply: Reply) {
        self.state.script.lock().unwrap().push_back(reply);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Lets every held [`Reply::Gated`] answer go, now and from now on.
    pub fn open_gate(&self) {
        let _guard = self.state.stopped.lock().unwrap();
        self.state.gate_open.store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.wake.notify_all();
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        *self.state.stopped.lock().unwrap() = true;
        self.state.wake.notify_all();
        // Wakes the blocking accept so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut handlers = Vec::new();
    for conn in listener.incoming() {
        if *state.stopped.lock().unwrap() {
            break;
        }
        let Ok(conn) = conn else { continue };
        let st = state.clone();
        handlers.push(std::thread::spawn(move || {
            let _ = serve(conn, &st);
        }));
        handlers.retain(|h: &JoinHandle<()>| !h.is_finished());
    }
    for h in handlers {
        let _ = h.join();
    }
}

fn serve(conn: TcpStream, state: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(()); // the wake-up connection from Drop, or a probe
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let received = Received {
        method: method.clone(),
        path: path.clone(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let mut out = conn;
    if method != "POST" || !path.ends_with("/chat/completions") {
        return write_http(&mut out, 404, &[], r#"{"error": {"message": "not found"}}"#);
    }
    state.received.lock().unwrap().push(received);
    let mut reply = state.script.lock().unwrap().pop_front();
    if let Some(Reply::Gated(inner)) = reply {
        let stopped = state.stopped.lock().unwrap();
        let _ = state.wake.wait_timeout_while(stopped, STALL_MAX, |s| {
            !*s && !state.gate_open.load(std::sync::atomic::Ordering::SeqCst)
        });
        reply = Some(*inner);
    }
    match reply {
        None => write_http(
            &mut out,
            500,
            &[],
            r#"{"error": {"message": "the test script has no more replies"}}"#,
        ),
        Some(Reply::Http { status, headers, body }) => write_http(&mut out, status, &headers, &body),
        Some(Reply::SseCut(events)) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            for data in &events {
                let event = format!("data: {data}\n\n");
                write!(out, "{:x}\r\n{event}\r\n", event.len())?;
            }
            write!(out, "0\r\n\r\n")?;
            out.flush()
        }
        Some(Reply::Sse { events, stall }) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            let mut send = |data: &str| -> std::io::Result<()> {
                let event = format!("data: {data}\n\n");
                write!(out, "{:x}\r\n{event}\r\n", event.len())?;
                out.flush()
            };
            for e in &events {
                send(e)?;
            }
            if stall {
                wait_for_stop(state);
                return Ok(());
            }
            send("[DONE]")?;
            write!(out, "0\r\n\r\n")?;
            out.flush()
        }
        Some(Reply::Stall) => {
            wait_for_stop(state);
            Ok(())
        }
        // Unwrapped above; a gate within a gate opens with it.
        Some(Reply::Gated(_)) => write_http(&mut out, 500, &[], r#"{"error": {"message": "nested gate"}}"#),
    }
}

/// Holds a connection open until the server drops (or [`STALL_MAX`]).
fn wait_for_stop(state: &State) {
    let stopped = state.stopped.lock().unwrap();
    let _ = state.wake.wait_timeout_while(stopped, STALL_MAX, |s| !*s);
}

fn write_http(out: &mut TcpStream, status: u16, headers: &[(String, String)], body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}
