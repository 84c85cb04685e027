//! The egress proxy: the policy-enforcing end of a sandbox's only way out.
//!
//! It runs in the process that runs the sandbox (the agent's child, or
//! `agentd sandbox run`), one per run, on the current tokio runtime: the
//! per-run dialer and the run's lifetime are already there, a fault stays
//! in one agent, and the records go back with the run's outcome to be
//! journaled. Each connection the relay hands over is one HTTP proxy
//! request: `CONNECT host:port` (matched on the authority; the tunnel's
//! first bytes, when they are a TLS ClientHello, must name the same host)
//! or a plain-HTTP request in absolute form (matched on `Host`). Only
//! after the rules allow a name is it resolved (pins first, then DNS,
//! whose private answers are refused). A name only an `ask` rule covers
//! waits for the owner's [`Owner::ask`] (an operator's approval), and the
//! time spent waiting is kept ([`Proxy::waited`]) so the run's timeout
//! can leave it out. Every attempt becomes a [`Connection`] record, handed
//! to [`Owner::ended`] as it ends (the agent journals it then) and
//! returned with the run.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use super::rules::{Decision, Rules};
use super::sni::{self, Hello};
use super::{Hooks, Owner};

/// Largest request head (request line and headers) the proxy reads.
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head, and the upstream
/// to accept the connection.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// After the run ends, how long open connections get to write their record.
const FINISH_GRACE: Duration = Duration::from_secs(2);

/// One connection attempt through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    /// `CONNECT` or the plain-HTTP method.
    pub method: String,
    pub decision: Decision,
    /// Bytes from the code to the upstream, and back.
    pub sent: u64,
    pub received: u64,
    pub duration: Duration,
    /// What went wrong after the rules allowed it (resolution, connect,
    /// byte limit), if anything.
    #[serde(default)]
    pub error: Option<String>,
}

impl Connection {
    pub fn denied(&self) -> Option<&str> {
        match &self.decision {
            Decision::Denied { reason } => Some(reason),
            Decision::Allowed { .. } => None,
        }
    }
}

/// A running proxy for one sandbox run. Dropping it (the run was
/// abandoned) stops it and every connection it relays.
pub struct Proxy {
    records: Arc<Mutex<Vec<Connection>>>,
    asking: Arc<Mutex<AskClock>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    rules: Rules,
    hooks: Option<Hooks>,
    records: Arc<Mutex<Vec<Connection>>>,
    asking: Arc<Mutex<AskClock>>,
    slots: Arc<Semaphore>,
    bytes: AtomicU64,
    stop: watch::Receiver<bool>,
}

/// Wall time during which at least one ask waited for its answer.
#[derive(Default)]
struct AskClock {
    open: usize,
    since: Option<Instant>,
    total: Duration,
}

impl AskClock {
    fn begin(&mut self) {
        if self.open == 0 {
            self.since = Some(Instant::now());
        }
        self.open += 1;
    }

    fn end(&mut self) {
        self.open = self.open.saturating_sub(1);
        if self.open == 0
            && let Some(s) = self.since.take()
        {
            self.total += s.elapsed();
        }
    }

    fn waited(&self) -> Duration {
        self.total + self.since.map(|s| s.elapsed()).unwrap_or_default()
    }
}

impl Proxy {
    /// Starts a proxy; returns it and the dialer end the relay inherits.
    pub fn start(rules: Rules, hooks: Option<Hooks>) -> std::io::Result<(Proxy, OwnedFd)> {
        let (ours, theirs) = crate::sandbox::dialer::pair()?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let asking = Arc::new(Mutex::new(AskClock::default()));
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(rules.max_connections.max(1))),
            rules,
            hooks,
            records: records.clone(),
            asking: asking.clone(),
            bytes: AtomicU64::new(0),
            stop: stop_rx.clone(),
        });
        let task = tokio::spawn(accept_loop(ours, shared, stop_rx));
        Ok((
            Proxy {
                records,
                asking,
                stop,
                task: Some(task),
            },
            theirs,
        ))
    }

    /// How long this run's asks have waited for answers so far.
    pub fn waited(&self) -> Duration {
        self.asking.lock().map(|c| c.waited()).unwrap_or_default()
    }

    /// Ends the proxy when the run is over; returns every record, in the
    /// order the connections ended.
    pub async fn finish(mut self) -> Vec<Connection> {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(FINISH_GRACE, &mut task).await.is_err()
        {
            task.abort();
        }
        self.records
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(dialer: AsyncFd<OwnedFd>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            got = crate::sandbox::dialer::receive(&dialer) => match got {
                Ok(Some(fds)) => {
                    for fd in fds {
                        let std = std::net::TcpStream::from(fd);
                        if std.set_nonblocking(true).is_ok() && let Ok(conn) = TcpStream::from_std(std) {
                            conns.spawn(shared.clone().serve(conn));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "egress proxy: dialer failed");
                    break;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Why an allowed name has no address to connect to.
enum Unreachable {
    /// DNS answered only with addresses the policy keeps out (a denial).
    Private(String),
    /// Resolution failed.
    Failed(String),
}

/// A parsed proxy request.
struct Request {
    method: String,
    host: String,
    port: u16,
    /// For plain HTTP: the head to send upstream (origin-form request
    /// line, hop-by-hop headers dropped, `Connection: close`).
    upstream_head: Option<Vec<u8>>,
    /// Bytes the client sent after the head.
    rest: Vec<u8>,
}

impl Shared {
    async fn serve(self: Arc<Self>, mut conn: TcpStream) {
        let started = Instant::now();
        let mut record = Connection {
            host: String::new(),
            port: 0,
            method: String::new(),
            decision: Decision::Denied {
                reason: "not an HTTP proxy request".into(),
            },
            sent: 0,
            received: 0,
            duration: Duration::ZERO,
            error: None,
        };
        self.handle(&mut conn, &mut record).await;
        record.duration = started.elapsed();
        tracing::debug!(host = %record.host, port = record.port, decision = ?record.decision, "egress");
        if let Some(h) = &self.hooks {
            h.0.ended(&record);
        }
        if let Ok(mut r) = self.records.lock() {
            r.push(record);
        }
    }

    async fn handle(&self, conn: &mut TcpStream, record: &mut Connection) {
        let req = match tokio::time::timeout(SETUP_TIMEOUT, read_request(conn)).await {
            Ok(Ok(r)) => r,
            Ok(Err(why)) => {
                record.decision = Decision::Denied { reason: why.clone() };
                respond(conn, 400, "Bad Request", &format!("agentd egress proxy: {why}")).await;
                return;
            }
            Err(_) => {
                record.decision = Decision::Denied {
                    reason: "no request head in time".into(),
                };
                return;
            }
        };
        record.host = req.host.clone();
        record.port = req.port;
        record.method = req.method.clone();
        record.decision = match self.rules.ask_rule(&req.host, req.port) {
            Some(rule) => self.ask(&req.host, req.port, rule).await,
            None => self.rules.decide(&req.host, req.port),
        };
        let _slot = match self.slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                record.decision = Decision::Denied {
                    reason: format!(
                        "too many connections at once (network.max_connections: {})",
                        self.rules.max_connections
                    ),
                };
                respond(conn, 503, "Service Unavailable", &refusal(record)).await;
                return;
            }
        };
        if matches!(record.decision, Decision::Allowed { .. }) && self.over_budget() {
            record.decision = Decision::Denied {
                reason: "the run's byte limit is used up (network.max_bytes)".into(),
            };
        }
        if record.denied().is_some() {
            respond(conn, 403, "Forbidden", &refusal(record)).await;
            return;
        }
        let addr = match self.address(&req.host, req.port).await {
            Ok(a) => a,
            Err(Unreachable::Private(reason)) => {
                record.decision = Decision::Denied { reason };
                respond(conn, 403, "Forbidden", &refusal(record)).await;
                return;
            }
            Err(Unreachable::Failed(why)) => {
                record.error = Some(why.clone());
                respond(conn, 502, "Bad Gateway", &format!("agentd egress proxy: {why}")).await;
                return;
            }
        };
        let mut upstream = match tokio::time::timeout(SETUP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                let why = format!("connecting to {addr}: {e}");
                record.error = Some(why.clone());
                respond(conn, 502, "Bad Gateway", &format!("agentd egress proxy: {why}")).await;
                return;
            }
            Err(_) => {
                let why = format!("connecting to {addr}: timed out");
                record.error = Some(why.clone());
                respond(conn, 504, "Gateway Timeout", &format!("agentd egress proxy: {why}")).await;
                return;
            }
        };
        let first = match &req.upstream_head {
            Some(head) => {
                let mut b = head.clone();
                b.extend(&req.rest);
                b
            }
            None => {
                if conn
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                match self.check_tls(conn, &mut upstream, req.rest, &req.host).await {
                    Ok(b) => b,
                    Err(reason) => {
                        record.decision = Decision::Denied { reason };
                        return;
                    }
                }
            }
        };
        if upstream.write_all(&first).await.is_err() {
            return;
        }
        record.sent += first.len() as u64;
        self.bytes.fetch_add(first.len() as u64, Ordering::Relaxed);
        self.relay(conn, upstream, record).await;
    }

    /// Puts an `ask` match to the owner; no owner, no one to ask.
    async fn ask(&self, host: &str, port: u16, rule: String) -> Decision {
        let Some(hooks) = &self.hooks else {
            return Decision::Denied {
                reason: format!("{rule}: no operator to ask outside an agent's task"),
            };
        };
        let owner: Arc<dyn Owner> = hooks.0.clone();
        if let Ok(mut c) = self.asking.lock() {
            c.begin();
        }
        let decision = owner.ask(host.to_owned(), port, rule).await;
        if let Ok(mut c) = self.asking.lock() {
            c.end();
        }
        decision
    }

    fn over_budget(&self) -> bool {
        self.rules
            .max_bytes
            .is_some_and(|max| self.bytes.load(Ordering::Relaxed) >= max)
    }

    /// Where an allowed name goes: the IP literal a rule named, a pin, or
    /// a public DNS answer.
    async fn address(&self, host: &str, port: u16) -> Result<SocketAddr, Unreachable> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if let Some(ip) = self.rules.resolve.get(host) {
            return Ok(SocketAddr::new(*ip, port));
        }
        let answers: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Unreachable::Failed(format!("resolving {host}: {e}")))?
            .collect();
        answers
            .iter()
            .find(|a| Rules::public(a.ip()))
            .copied()
            .ok_or_else(|| {
                Unreachable::Private(format!(
                    "{host} resolves only to loopback, link-local or private addresses ({}); pin it with network.resolve to allow that",
                    answers.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ")
                ))
            })
    }

    /// The tunnel's first client bytes: when they start a TLS handshake,
    /// its server name must be the CONNECT host. A server that speaks
    /// first (no client bytes yet) is not held up.
    async fn check_tls(
        &self,
        conn: &mut TcpStream,
        upstream: &mut TcpStream,
        mut buf: Vec<u8>,
        host: &str,
    ) -> Result<Vec<u8>, String> {
        let mut chunk = [0u8; 4096];
        loop {
            match sni::parse(&buf) {
                Hello::NotTls if !buf.is_empty() => return Ok(buf),
                Hello::ServerName(Some(name)) if name.trim_end_matches('.') == host => return Ok(buf),
                Hello::ServerName(Some(name)) => {
                    return Err(format!("the TLS handshake names {name}, not the CONNECT host {host}"));
                }
                Hello::ServerName(None) if host.parse::<IpAddr>().is_ok() => return Ok(buf),
                Hello::ServerName(None) => return Err(format!("a TLS handshake without a server name for {host}")),
                Hello::Malformed => return Err("a TLS handshake agentd cannot read".into()),
                Hello::NotTls | Hello::Incomplete { .. } => {}
            }
            tokio::select! {
                n = conn.read(&mut chunk) => match n {
                    Ok(0) | Err(_) => return Err("the client left before its first bytes".into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                r = upstream.readable(), if buf.is_empty() => {
                    if r.is_ok() { return Ok(buf); }
                    return Err("the upstream failed".into());
                }
                _ = tokio::time::sleep(SETUP_TIMEOUT) => return Err("no TLS handshake in time".into()),
            }
        }
    }

    /// Copies both ways until both sides are done, the run ends, or the
    /// byte limit is reached.
    async fn relay(&self, conn: &mut TcpStream, upstream: TcpStream, record: &mut Connection) {
        let (mut cr, mut cw) = conn.split();
        let (mut ur, mut uw) = upstream.into_split();
        let sent = AtomicU64::new(0);
        let received = AtomicU64::new(0);
        let up = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if uw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent.fetch_add(n as u64, Ordering::Relaxed);
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if self.over_budget() {
                    return true;
                }
            }
            let _ = uw.shutdown().await;
            false
        };
        let down = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if self.over_budget() {
                    return true;
                }
            }
            let _ = cw.shutdown().await;
            false
        };
        let mut stop = self.stop.clone();
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                cut = &mut up, if !up_done => { up_done = true; if cut { record.error = Some(limit_error(&self.rules)); break; } }
                cut = &mut down, if !down_done => { down_done = true; if cut { record.error = Some(limit_error(&self.rules)); break; } }
                _ = stop.changed() => { record.error.get_or_insert_with(|| "cut when the run ended".into()); break; }
            }
        }
        record.sent += sent.load(Ordering::Relaxed);
        record.received += received.load(Ordering::Relaxed);
    }
}

fn limit_error(rules: &Rules) -> String {
    format!(
        "cut at the run's byte limit (network.max_bytes: {})",
        rules.max_bytes.unwrap_or_default()
    )
}

fn refusal(record: &Connection) -> String {
    format!(
        "agentd egress proxy: {}:{} refused: {}",
        record.host,
        record.port,
        record.denied().unwrap_or("refused")
    )
}

async fn respond(conn: &mut TcpStream, code: u16, status: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {code} {status}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    let _ = conn.write_all(text.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Reads and parses the request head; the error is a sentence for the
/// code's HTTP client.
async fn read_request(conn: &mut TcpStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("the request head is over {MAX_HEAD} bytes"));
        }
        let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before a request head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    parse_head(&buf, rest)
}

fn parse_head(head: &[u8], rest: Vec<u8>) -> Result<Request, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("not an HTTP request line: {line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported HTTP version {version:?}"));
    }
    let headers: Vec<(&str, &str)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(Request {
            method: method.into(),
            host,
            port,
            upstream_head: None,
            rest,
        });
    }
    let url = url::Url::parse(target).map_err(|_| {
        format!("{target:?} is not an absolute http:// URL (is the client using the proxy? use CONNECT for https)")
    })?;
    if url.scheme() != "http" {
        return Err(format!(
            "scheme {:?}: plain requests through the proxy are http://; use CONNECT for others",
            url.scheme()
        ));
    }
    // Matched on Host: the header the upstream server will act on.
    let host_header = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| *v);
    let (host, port) = match host_header {
        Some(h) => authority(h, Some(80))?,
        None => authority(url.authority(), Some(80))?,
    };
    let url_host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase());
    if url_host.as_deref().map(|h| h.trim_end_matches('.')) != Some(host.as_str())
        || url.port_or_known_default() != Some(port)
    {
        return Err(format!("the URL's host and the Host header ({host}:{port}) differ"));
    }
    let mut origin = url.path().to_string();
    if let Some(q) = url.query() {
        origin.push('?');
        origin.push_str(q);
    }
    let mut up = format!("{method} {origin} {version}\r\n");
    for (k, v) in &headers {
        let hop = ["connection", "proxy-connection", "proxy-authorization", "keep-alive"];
        if !hop.iter().any(|h| k.eq_ignore_ascii_case(h)) {
            up.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if host_header.is_none() {
        up.push_str(&format!("Host: {}\r\n", url.authority()));
    }
    // One request per upstream connection: a reused client connection
    // still reaches only this upstream.
    up.push_str("Connection: close\r\n\r\n");
    Ok(Request {
        method: method.into(),
        host,
        port,
        upstream_head: Some(up.into_bytes()),
        rest,
    })
}

/// `host[:port]` (IPv6 in brackets) → lower-case host without a trailing
/// dot, and port.
fn authority(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("bad authority {s:?}"))?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port in {s:?}"))?,
        None => default_port.ok_or_else(|| format!("{s:?} has no port"))?,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("no host in {s:?}"));
    }
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_matched_on_host_and_rewritten() {
        let head =
            b"GET http://Example.org/a?b=1 HTTP/1.1\r\nHost: example.org\r\nProxy-Connection: keep-alive\r\n\r\n";
        let r = parse_head(head, vec![]).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("example.org", 80));
        let up = String::from_utf8(r.upstream_head.unwrap()).unwrap();
        assert!(up.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{up}");
        assert!(!up.to_ascii_lowercase().contains("proxy-connection"), "{up}");
        assert!(up.ends_with("Connection: close\r\n\r\n"), "{up}");
    }

    #[test]
    fn a_host_header_that_lies_is_refused() {
        let head = b"GET http://allowed.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n";
        assert!(parse_head(head, vec![]).is_err());
        let ok = b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n";
        let r = parse_head(ok, vec![]).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 443));
        assert!(parse_head(b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", vec![]).is_err());
    }
}
