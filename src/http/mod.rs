//! The operator's HTTP surface, served by agentd itself (axum on the
//! supervisor's own runtime): the JSON API under `/api/v1/`, its live event
//! stream (SSE), signed webhooks in, `/healthz` and `/readyz`, and the
//! dashboard at `/`.
//!
//! Like the control socket, this module only parses, authorizes and
//! forwards: every request that reads or changes agents becomes the same
//! [`control::Request`] the socket sends, answered by the supervisor's one
//! handler for it; a webhook delivery becomes a [`Delivery`] the supervisor
//! records. What it reads itself is the ledger (read-only connections of
//! its own, off the event loop) and the [`Feed`] of events. It never
//! changes state on its own.
//!
//! Where things live: [`auth`] (token, login, cookie, CSRF), [`api`] (the
//! route table and handlers), [`events`] (SSE), [`webhook`] (deliveries
//! in), [`dashboard`] (the embedded page), [`signature`] (HMAC-SHA256),
//! [`cap`] (the connection cap), [`reader`] (read-only ledger connections).

mod api;
pub mod auth;
mod cap;
mod dashboard;
mod events;
mod reader;
pub mod signature;
mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Listen, WebhookSpec};
use crate::control::{self, Request, Response};
use crate::domain::Trigger;
use crate::feed::Feed;

/// A webhook delivery whose signature checked out, for the supervisor to
/// record (once per delivery key) and dispatch.
#[derive(Debug)]
pub struct Delivery {
    pub agent: String,
    pub key: Option<String>,
    pub trigger: Trigger,
    /// The task, and whether it was recorded before (a redelivery).
    pub reply: oneshot::Sender<Result<(crate::domain::TaskId, bool), String>>,
}

/// The agents that take webhooks and how; replaced on reload.
pub type Webhooks = Arc<BTreeMap<String, WebhookSpec>>;

/// What the HTTP server needs from the rest of agentd.
pub struct Links {
    pub control: mpsc::UnboundedSender<control::Envelope>,
    pub deliveries: mpsc::UnboundedSender<Delivery>,
    pub feed: Arc<Feed>,
    pub webhooks: watch::Receiver<Webhooks>,
    pub state_dir: PathBuf,
    /// The ledger the API reads.
    pub ledger: crate::ledger::Location,
}

/// State shared by every handler.
struct App {
    links: Links,
    token: auth::Token,
    reader: reader::Reader,
}

impl App {
    /// Sends a request through the same path as the control socket.
    async fn control(&self, req: Request) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.links.control.send((req, tx)).is_err() {
            return Response::error("agentd is shutting down");
        }
        rx.await.unwrap_or_else(|_| Response::error("agentd is shutting down"))
    }
}

/// Binds `listen` and serves on the current runtime. A port in use is a
/// warning (agentd runs on without its API), not a failure; the address
/// actually bound is written to `STATE_DIR/http.url` for `agentd
/// dashboard`. Returns that URL when serving.
pub async fn start(listen: &Listen, links: Links) -> anyhow::Result<Option<String>> {
    let token_path = crate::state_dir::http_token(&links.state_dir);
    let token = auth::Token::load_or_create(&token_path)
        .map_err(|e| anyhow::anyhow!("HTTP API token {}: {e}", token_path.display()))?;
    let url_path = crate::state_dir::http_url(&links.state_dir);
    let _ = std::fs::remove_file(&url_path);
    let reader = reader::Reader::new(links.ledger.clone());
    let app = Arc::new(App { links, token, reader });
    let router = api::router(app);
    let url = match listen {
        Listen::Tcp(addr) => {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("HTTP API not started: cannot listen on {addr}: {e}");
                    return Ok(None);
                }
            };
            let bound = listener.local_addr()?;
            let listener = cap::Capped::new(listener, cap::MAX_CONNECTIONS);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("HTTP API stopped: {e}");
                }
            });
            format!("http://{bound}")
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener = match tokio::net::UnixListener::bind(path) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("HTTP API not started: cannot listen on {}: {e}", path.display());
                    return Ok(None);
                }
            };
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            let listener = cap::Capped::new(listener, cap::MAX_CONNECTIONS);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("HTTP API stopped: {e}");
                }
            });
            format!("unix:{}", path.display())
        }
    };
    std::fs::write(&url_path, format!("{url}\n"))?;
    Ok(Some(url))
}

/// The URL that logs a browser in, valid for `valid_s` seconds, for
/// `agentd dashboard`: read from the state dir of a running agentd.
pub fn login_url(state_dir: &Path, valid_s: i64) -> anyhow::Result<String> {
    let url_path = crate::state_dir::http_url(state_dir);
    let base = std::fs::read_to_string(&url_path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; is agentd running with its HTTP API on (http: in the config)?",
            url_path.display()
        )
    })?;
    let base = base.trim();
    if base.starts_with("unix:") {
        anyhow::bail!(
            "the HTTP API listens on {base}, which a browser cannot open; listen on HOST:PORT for the dashboard"
        );
    }
    let token_path = crate::state_dir::http_token(state_dir);
    let token = auth::Token::load(&token_path).map_err(|e| anyhow::anyhow!("{}: {e}", token_path.display()))?;
    let expiry = chrono::Utc::now().timestamp() + valid_s.min(auth::LOGIN_MAX_AGE_S);
    Ok(format!("{base}/login?code={}", token.login_code(expiry)))
}
