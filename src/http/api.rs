//! The route table and the JSON handlers of `/api/v1/`.
//!
//! [`ROUTES`] describes every route (served as `GET /api/v1`, as
//! `DescribeInterface` does on the control socket) and sits beside
//! [`router`], which serves them; the tests walk the description, so a
//! route missing from either shows. Handlers that read or change agents
//! send the control request the socket would send; listings read the
//! ledger through [`super::reader`].
//!
//! Governance's routes (cancel, approvals, spend) forward to the same
//! control requests as `agentd cancel|approvals|approve|deny|spend`; the
//! journal records their caller as `http` (the bearer of the token).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Refusal};
use super::{App, dashboard, events, webhook};
use crate::control::{self, Request as Control};
use crate::domain::{TaskId, TaskState};
use crate::ledger::{LedgerError, TaskFilter};

/// Who may call a route.
#[derive(Clone, Copy)]
pub enum Access {
    /// Anyone: `/healthz` only.
    Open,
    /// The bearer token or a logged-in browser.
    Token,
    /// A login code in the URL.
    LoginCode,
    /// An HMAC-SHA256 signature of the body with the agent's secret.
    Signature,
}

/// Every route: method, path, who may call it, what it does.
pub const ROUTES: &[(&str, &str, Access, &str)] = &[
    ("GET", "/healthz", Access::Open, "200 while agentd's event loop answers"),
    (
        "GET",
        "/readyz",
        Access::Token,
        "200 once every agent has started (or failed trying) and the ledger takes writes; else 503",
    ),
    ("GET", "/api/v1", Access::Token, "this description"),
    (
        "GET",
        "/api/v1/agents",
        Access::Token,
        "{agents: [{name, state, paused, pid, restarts, uptime_s, last_exit, last_error, queued, running_task, schedules}]}",
    ),
    (
        "GET",
        "/api/v1/agents/{name}",
        Access::Token,
        "one agent, as in the list",
    ),
    (
        "GET",
        "/api/v1/agents/{name}/snapshots",
        Access::Token,
        "{snapshots: [{id, agent, kind, label, task_id, size, created_at}]}, newest first",
    ),
    (
        "POST",
        "/api/v1/agents/{name}/messages",
        Access::Token,
        "body {text, wait: bool}: queue a message as a task; without wait at once {task, state: queued, paused}, with wait when it ends {task, state, result, error}; the reply streams as `output` events",
    ),
    (
        "POST",
        "/api/v1/agents/{name}/pause",
        Access::Token,
        "pause: triggers queue but do not run; the agent's status",
    ),
    (
        "POST",
        "/api/v1/agents/{name}/resume",
        Access::Token,
        "resume; the agent's status",
    ),
    (
        "POST",
        "/api/v1/agents/{name}/restart",
        Access::Token,
        "restart the agent's process; its status",
    ),
    (
        "POST",
        "/api/v1/agents/{name}/webhook",
        Access::Signature,
        "a delivery signed in X-Hub-Signature-256 (sha256=HMAC of the body with webhook.secret_env): 202 {task, duplicate}; 401 for a bad signature (nothing recorded); 404 for an agent without webhook",
    ),
    (
        "GET",
        "/api/v1/tasks",
        Access::Token,
        "?agent=&state=&before=ID&limit=N (default 50, at most 500): {tasks: [...], next: ID|null} newest first; next is the before= of the next page",
    ),
    (
        "GET",
        "/api/v1/tasks/{id}",
        Access::Token,
        "{task, steps: [{seq, attempt, kind, payload, tokens, latency_ms, created_at}]}",
    ),
    (
        "POST",
        "/api/v1/tasks/{id}/cancel",
        Access::Token,
        "body {reason} (optional): cancel a queued or running task; it ends cancelled, journaled with who (http) and why",
    ),
    (
        "GET",
        "/api/v1/approvals",
        Access::Token,
        "{approvals: [{id, task, agent, subject, state, asked_at, timeout_at, on_timeout}]}: pending ones, oldest first",
    ),
    (
        "POST",
        "/api/v1/approvals/{id}/approve",
        Access::Token,
        "body {note, remember} (optional): let the waiting tool call, code block or connection run; remember: once | task | always (egress asks)",
    ),
    (
        "GET",
        "/api/v1/grants",
        Access::Token,
        "{grants: [approval records]}: standing egress grants (approved with remember: always)",
    ),
    (
        "POST",
        "/api/v1/grants/{id}/revoke",
        Access::Token,
        "end a standing egress grant: the host is asked about again",
    ),
    (
        "POST",
        "/api/v1/approvals/{id}/deny",
        Access::Token,
        "body {reason} (optional): refuse it; the model reads the reason as the tool's error",
    ),
    (
        "GET",
        "/api/v1/spend",
        Access::Token,
        "?agent=&per=1d: model spend per agent and model over the window (tokens, cost_usd, budget left)",
    ),
    (
        "GET",
        "/metrics",
        Access::Token,
        "Prometheus metrics in the OpenMetrics text format (what `agentd metrics` prints)",
    ),
    (
        "GET",
        "/api/v1/events",
        Access::Token,
        "Server-Sent Events: task, step, output, agent (and reset when events were missed); ?agent=&task= filter; Last-Event-ID resumes",
    ),
    (
        "GET",
        "/login",
        Access::LoginCode,
        "?code=: sets the session cookie (agentd dashboard prints the link) and opens the dashboard",
    ),
    (
        "GET",
        "/",
        Access::Token,
        "the dashboard (without a session: how to log in)",
    ),
    ("GET", "/app.js", Access::Token, "the dashboard's script"),
    ("GET", "/style.css", Access::Token, "the dashboard's style sheet"),
];

fn describe() -> Value {
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|(method, path, access, what)| {
            let auth = match access {
                Access::Open => "none",
                Access::Token => "Authorization: Bearer TOKEN (STATE_DIR/http.token), or the dashboard's session cookie (state changes from a browser: same origin only)",
                Access::LoginCode => "a login code from `agentd dashboard`",
                Access::Signature => "X-Hub-Signature-256",
            };
            json!({"method": method, "path": path, "auth": auth, "result": what})
        })
        .collect();
    json!({
        "version": 1,
        "control_interface_version": control::INTERFACE_VERSION,
        "errors": "{error: message} with 400 (bad request), 401 (no or wrong credentials), 403 (cross-site), 404 (no such agent or task), 413 (too large), 503 (agentd stopping)",
        "routes": routes,
    })
}

/// The largest JSON body a route takes (messages).
const MAX_JSON: usize = 256 * 1024;

pub(super) fn router(app: Arc<App>) -> Router {
    let authed = Router::new()
        .route("/readyz", get(readyz))
        .route("/api/v1", get(|| async { Json(describe()) }))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{name}", get(agent))
        .route("/api/v1/agents/{name}/snapshots", get(snapshots))
        .route("/api/v1/agents/{name}/messages", post(message))
        .route("/api/v1/agents/{name}/pause", post(pause))
        .route("/api/v1/agents/{name}/resume", post(resume))
        .route("/api/v1/agents/{name}/restart", post(restart))
        .route("/api/v1/tasks/{id}/cancel", post(cancel))
        .route("/api/v1/approvals", get(approvals))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/deny", post(deny))
        .route("/api/v1/grants", get(grants))
        .route("/api/v1/grants/{id}/revoke", post(revoke))
        .route("/api/v1/spend", get(spend))
        .route("/api/v1/tasks", get(tasks))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/events", get(events::stream))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::page))
        .route("/app.js", get(dashboard::script))
        .route("/style.css", get(dashboard::style))
        .layer(DefaultBodyLimit::max(MAX_JSON))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/login", get(login))
        // Its own limit, checked before the body is read (see webhook.rs).
        .route(
            "/api/v1/agents/{name}/webhook",
            post(webhook::deliver).layer(DefaultBodyLimit::disable()),
        )
        .merge(authed)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route; GET /api/v1 lists them") })
        .with_state(app)
}

async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match auth::check(&app.token, req.method(), req.headers()) {
        Ok(_) => next.run(req).await,
        Err(Refusal::Unauthenticated) if req.uri().path() == "/" => dashboard::logged_out(),
        Err(Refusal::Unauthenticated) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "authentication required: Authorization: Bearer TOKEN (STATE_DIR/http.token)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            r
        }
        Err(Refusal::CrossSite) => error(
            StatusCode::FORBIDDEN,
            "refused: a state-changing request with the session cookie must come from the dashboard's own origin",
        ),
    }
}

pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// A control response as HTTP: the result, or the error with a status.
/// Handlers word their refusals one way (requests.rs and talk.rs): "no
/// agent named …" is a 404, "agentd is shutting down" a 503.
/// The metrics as the supervisor renders them (its gauges refreshed first),
/// in the text format Prometheus scrapes.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let r = app.control(Control::Metrics).await;
    match r.result.as_ref().and_then(|v| v["text"].as_str()).filter(|_| r.ok) {
        Some(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text.to_owned()).into_response(),
        None => answer(r),
    }
}

fn answer(r: control::Response) -> Response {
    match (r.ok, r.error) {
        (true, _) => Json(r.result.unwrap_or(Value::Null)).into_response(),
        (false, Some(e)) if e.starts_with("no agent named") => error(StatusCode::NOT_FOUND, e),
        (false, Some(e)) if e.contains("shutting down") => error(StatusCode::SERVICE_UNAVAILABLE, e),
        (false, e) => error(StatusCode::BAD_REQUEST, e.unwrap_or_default()),
    }
}

fn ledger_error(e: LedgerError) -> Response {
    match e {
        LedgerError::NoSuchTask(_) | LedgerError::NoSuchSnapshot(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        LedgerError::Closed => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => {
            tracing::warn!("HTTP API: reading the ledger failed: {other}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the ledger failed; see agentd's log",
            )
        }
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), app.control(Control::Health)).await;
    match r {
        Ok(r) if r.ok => (StatusCode::OK, "ok\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "agentd is not answering\n").into_response(),
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let r = app.control(Control::Health).await;
    let h = r.result.unwrap_or(Value::Null);
    let ready = h["ready"].as_bool() == Some(true) && h["ok"].as_bool() == Some(true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "agents": h["agents"], "failed": h["failed"], "degraded": h["degraded"]})),
    )
        .into_response()
}

async fn agents(State(app): State<Arc<App>>) -> Response {
    answer(app.control(Control::Status).await)
}

async fn agent(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let r = app.control(Control::Status).await;
    if !r.ok {
        return answer(r);
    }
    let found = r
        .result
        .as_ref()
        .and_then(|v| v["agents"].as_array())
        .and_then(|a| a.iter().find(|x| x["name"].as_str() == Some(name.as_str())).cloned());
    match found {
        Some(a) => Json(a).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no agent named {name:?}")),
    }
}

async fn snapshots(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match app.reader.read(move |l| l.list_snapshots(&name, None)).await {
        Ok(s) => Json(json!({ "snapshots": s })).into_response(),
        Err(e) => ledger_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    text: String,
    #[serde(default)]
    wait: bool,
}

async fn message(
    State(app): State<Arc<App>>,
    Path(agent): Path<String>,
    body: Result<Json<Message>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(m) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                e.status(),
                format!("bad request: {e}; send {{\"text\": \"…\", \"wait\": false}}"),
            );
        }
    };
    if m.text.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "text must not be empty");
    }
    answer(
        app.control(Control::Send {
            agent,
            text: m.text,
            wait: m.wait,
        })
        .await,
    )
}

async fn pause(State(app): State<Arc<App>>, Path(agent): Path<String>) -> Response {
    answer(app.control(Control::Pause { agent }).await)
}

async fn resume(State(app): State<Arc<App>>, Path(agent): Path<String>) -> Response {
    answer(app.control(Control::Resume { agent }).await)
}

async fn restart(State(app): State<Arc<App>>, Path(agent): Path<String>) -> Response {
    answer(app.control(Control::Restart { agent }).await)
}

/// Who asks, for the journal: the HTTP API authenticates a bearer of the
/// token (or its session cookie), not a person.
const HTTP_CALLER: &str = "http";

/// An optional `{reason}` or `{note}` body; an empty or absent body is none.
#[derive(Deserialize, Default)]
struct Why {
    reason: Option<String>,
    note: Option<String>,
    /// Approve only: once | task | always (egress asks).
    #[serde(default)]
    remember: crate::domain::Remember,
}

fn why(body: &axum::body::Bytes) -> Result<Why, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Why::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("bad body: {e}; send {{\"reason\": \"…\"}} or nothing"))
}

async fn cancel(State(app): State<Arc<App>>, Path(task): Path<i64>, body: axum::body::Bytes) -> Response {
    let why = match why(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let req = Control::Cancel {
        task: crate::domain::TaskId(task),
        reason: why.reason,
        caller: None,
    };
    answer(app.control(req.with_caller(HTTP_CALLER.into())).await)
}

async fn grants(State(app): State<Arc<App>>) -> Response {
    answer(app.control(Control::Grants { agent: None }).await)
}

async fn revoke(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Response {
    let req = Control::Revoke { id, caller: None };
    answer(app.control(req.with_caller(HTTP_CALLER.into())).await)
}

async fn approvals(State(app): State<Arc<App>>) -> Response {
    answer(app.control(Control::Approvals).await)
}

async fn approve(State(app): State<Arc<App>>, Path(id): Path<i64>, body: axum::body::Bytes) -> Response {
    let why = match why(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let req = Control::Approve {
        id,
        note: why.note.or(why.reason),
        remember: why.remember,
        caller: None,
    };
    answer(app.control(req.with_caller(HTTP_CALLER.into())).await)
}

async fn deny(State(app): State<Arc<App>>, Path(id): Path<i64>, body: axum::body::Bytes) -> Response {
    let why = match why(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let req = Control::Deny {
        id,
        reason: why.reason.or(why.note),
        caller: None,
    };
    answer(app.control(req.with_caller(HTTP_CALLER.into())).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpendQuery {
    agent: Option<String>,
    per: Option<String>,
}

async fn spend(
    State(app): State<Arc<App>>,
    q: Result<Query<SpendQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    answer(
        app.control(Control::Spend {
            agent: q.agent,
            per: q.per,
        })
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskQuery {
    agent: Option<String>,
    state: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

async fn tasks(
    State(app): State<Arc<App>>,
    q: Result<Query<TaskQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match TaskState::parse(s) {
            Some(st) => Some(st),
            None => {
                let all: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("state: unknown state {s:?}; expected one of {}", all.join(", ")),
                );
            }
        },
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let filter = TaskFilter {
        agent: q.agent.filter(|a| !a.is_empty()),
        state,
        // One more than asked: whether there is a next page.
        limit: Some(limit + 1),
        before: q.before,
    };
    match app.reader.read(move |l| l.list_tasks(&filter)).await {
        Ok(mut tasks) => {
            let more = tasks.len() > limit as usize;
            tasks.truncate(limit as usize);
            let next = more.then(|| tasks.last().map(|t| t.id)).flatten();
            Json(json!({ "tasks": tasks, "next": next })).into_response()
        }
        Err(e) => ledger_error(e),
    }
}

async fn task(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a task id"));
    };
    match app
        .reader
        .read(move |l| Ok((l.task(TaskId(id))?, l.steps(TaskId(id))?)))
        .await
    {
        Ok((task, steps)) => Json(json!({ "task": task, "steps": steps })).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// `/login?code=…`: a valid code sets the session cookie and opens the
/// dashboard; the code is not echoed anywhere.
async fn login(State(app): State<Arc<App>>, Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    let code = q.get("code").map(String::as_str).unwrap_or("");
    if !app.token.check_login(code, chrono::Utc::now().timestamp()) {
        return dashboard::login_refused();
    }
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age=2592000",
        auth::COOKIE,
        app.token.session()
    );
    let mut headers = HeaderMap::new();
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, v);
    }
    headers.insert(header::LOCATION, header::HeaderValue::from_static("/"));
    // The login URL must not linger where the next page can see it.
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    (StatusCode::SEE_OTHER, headers).into_response()
}
