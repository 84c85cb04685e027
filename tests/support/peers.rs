//! Stand-ins for what Python agentd's example configs reach on the
//! internet or through `uv`/`npx`: a web page served on 127.0.0.1, the PATH
//! shims in `tests/peers/shims`, the Python peers in `tests/peers/venv`
//! and LiteLLM's proxy in `tests/peers/litellm-venv` (all installed by
//! `tests/setup.sh`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// A program of the Python peers' virtualenv; panics with what to do when
/// it is missing.
pub fn python_peer(program: &str) -> PathBuf {
    let p = peers_dir().join("venv/bin").join(program);
    assert!(p.is_file(), "{} is missing: run tests/setup.sh", p.display());
    p
}

/// `PATH` with the `uv`/`uvx`/`npx` shims first.
pub fn shim_path() -> String {
    let shims = peers_dir().join("shims");
    // The shims use the virtualenv; make sure it is there.
    python_peer("mcp_subscribe");
    format!("{}:{}", shims.display(), std::env::var("PATH").unwrap_or_default())
}

/// An HTML page on 127.0.0.1 whose body can be changed; `/robots.txt` is
/// 404 (mcp-server-fetch asks for it first). Dropping it stops it.
pub struct Page {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Page {
    pub fn start(body: &str) -> Page {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
        let addr = listener.local_addr().expect("page address");
        let body = Arc::new(Mutex::new(body.to_owned()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (body.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve_page(conn, &b);
                }
            }
        });
        Page {
            addr,
            body,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.addr.port())
    }

    pub fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_owned();
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_page(conn: TcpStream, body: &Mutex<String>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/");
    let (status, text) = if path.starts_with("/robots.txt") {
        ("404 Not Found", "not here".to_owned())
    } else {
        let b = body.lock().unwrap().clone();
        (
            "200 OK",
            format!("<html><head><title>Facts</title></head><body><p>{b}</p></body></html>"),
        )
    };
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    out.flush()
}

/// LiteLLM's proxy on 127.0.0.1 with mock responses: model `mock-gpt`
/// answers `reply`. Killed on drop.
pub struct LiteLlm {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

pub const LITELLM_KEY: &str = "sk-litellm-test-0123456789";

impl LiteLlm {
    pub fn start(reply: &str) -> LiteLlm {
        let bin = peers_dir().join("litellm-venv/bin/litellm");
        assert!(bin.is_file(), "{} is missing: run tests/setup.sh", bin.display());
        let mut dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: mock-gpt\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_key: unused\n      mock_response: {}\n",
                serde_json::Value::String(reply.to_owned())
            ),
        )
        .expect("litellm config");
        // The port is free when chosen but released before LiteLLM binds
        // it (it takes seconds to start), so another test's server may take
        // it meanwhile: wait for LiteLLM's own liveliness answer, not just
        // for something on the port, and try another port if it lost.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            let log = std::fs::File::create(dir.path().join("litellm.log")).expect("log");
            let child = Command::new(&bin)
                .args(["--config", &config.display().to_string(), "--host", "127.0.0.1"])
                .args(["--port", &port.to_string()])
                .env("LITELLM_MASTER_KEY", LITELLM_KEY)
                // Offline: no fetch of the model price list, no telemetry.
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("LITELLM_TELEMETRY", "False")
                .env("NO_PROXY", "127.0.0.1,localhost")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start litellm");
            let mut proxy = LiteLlm { child, port, _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if litellm_alive(port) {
                    return proxy;
                }
                let exited = proxy.child.try_wait().ok().flatten().is_some();
                let log = std::fs::read_to_string(proxy._dir.path().join("litellm.log")).unwrap_or_default();
                if exited && log.contains("address already in use") {
                    break;
                }
                if exited || Instant::now() > deadline {
                    panic!("LiteLLM's proxy did not come up:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            dir = std::mem::replace(&mut proxy._dir, tempfile::tempdir().expect("tempdir"));
        }
        panic!("LiteLLM's proxy lost its port to another server three times");
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

/// Whether LiteLLM's proxy (and not some other server) answers on `port`.
fn litellm_alive(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health/liveliness HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("I'm alive!")
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
