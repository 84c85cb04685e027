//! A client for agentd's HTTP API in tests: plain requests with or without
//! the token, and a Server-Sent Events reader. reqwest (agentd's own HTTP
//! client) on a runtime shared by the tests; every call is bounded.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use super::wait_for;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

/// The API of one running agentd.
pub struct Api {
    pub base: String,
    pub token: String,
}

impl Api {
    /// Waits for agentd in `state_dir` to write where its API listens.
    pub fn of(state_dir: &Path) -> Api {
        let base = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(state_dir.join("http.url"))
                .ok()
                .filter(|s| s.ends_with('\n'))
        })
        .expect("agentd wrote http.url");
        let token = std::fs::read_to_string(state_dir.join("http.token")).expect("http.token");
        Api {
            base: base.trim().to_owned(),
            token: token.trim().to_owned(),
        }
    }

    /// A request: `auth` adds the bearer token; `headers` are sent as given.
    pub fn call(&self, method: &str, path: &str, auth: bool, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.base);
        let method: reqwest::Method = method.parse().expect("method");
        let mut req = client().request(method, url).timeout(Duration::from_secs(30));
        if auth {
            req = req.bearer_auth(&self.token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        rt().block_on(async move {
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.text().await.unwrap_or_default();
            Answer { status, headers, body }
        })
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, true, &[], None)
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.call("POST", path, true, &[], Some(body))
    }

    /// Opens the event stream (with the token), resuming after `last_id`.
    pub fn events(&self, query: &str, last_id: Option<&str>) -> Sse {
        let mut req = client()
            .get(format!("{}/api/v1/events{query}", self.base))
            .bearer_auth(&self.token);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = rt().block_on(async move { req.send().await.expect("events request") });
        assert_eq!(resp.status().as_u16(), 200, "events answered {}", resp.status());
        Sse {
            resp,
            buf: String::new(),
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// The next event (comments skipped), or `None` when none came within
    /// `timeout` or the stream ended.
    pub fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(ev);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let chunk = rt().block_on(async { tokio::time::timeout(left, self.resp.chunk()).await });
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Events until one satisfies `pred` (that one included), within `timeout`.
    pub fn until(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline
                .checked_duration_since(std::time::Instant::now())
                .unwrap_or_else(|| panic!("no matching event; saw {seen:#?}"));
            match self.next(left) {
                Some(e) => {
                    let done = pred(&e);
                    seen.push(e);
                    if done {
                        return seen;
                    }
                }
                None => panic!("no matching event; saw {seen:#?}"),
            }
        }
    }
}
