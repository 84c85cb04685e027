//! Headless Chromium driven over WebDriver (W3C) for the dashboard test:
//! Debian's `chromium` and `chromium-driver` (installed by tests/setup.sh),
//! spoken to with reqwest, agentd's own HTTP client, so driving a browser
//! adds no dependency (a WebDriver crate such as fantoccini would add a
//! second HTTP stack to the build). Only what the tests use is here.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::wait_for;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A chromedriver process and one browser session in it.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
}

fn find_binary(names: &[&str]) -> String {
    for n in names {
        for dir in ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"] {
            let p = format!("{dir}/{n}");
            if std::path::Path::new(&p).exists() {
                return p;
            }
        }
    }
    panic!("none of {names:?} is installed; run tests/setup.sh (it installs chromium and chromium-driver)");
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless session.
    pub fn start() -> Browser {
        let driver_bin = find_binary(&["chromedriver"]);
        let chrome = find_binary(&["chromium", "chromium-browser"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            client,
        };
        let up = wait_for(Duration::from_secs(20), || {
            b.raw("GET", "/status", None)
                .ok()
                .filter(|v| v["value"]["ready"] == true)
        });
        assert!(up.is_some(), "chromedriver did not come up");
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                // Root (CI) needs --no-sandbox; /dev/shm may be small in containers.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1100,900", format!("--user-data-dir={}", profile.path().display())],
            }
        }}});
        let s = b.raw("POST", "/session", Some(caps)).expect("new session");
        b.session = s["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {s}"))
            .to_owned();
        // Chromium keeps the profile dir open; it goes with the test's temp dir.
        std::mem::forget(profile);
        b
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.client.get(url),
            "DELETE" => self.client.delete(url),
            _ => self.client.post(url).json_body(body.unwrap_or(json!({}))),
        };
        rt().block_on(async move {
            let r = req
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = r.status().is_success();
            let text = r.text().await.map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            if ok { Ok(v) } else { Err(v.to_string()) }
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.raw(method, &path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))["value"]
            .clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The element `css` selects, if there is one now.
    pub fn find(&self, css: &str) -> Option<String> {
        let path = format!("/session/{}/element", self.session);
        let v = self
            .raw("POST", &path, Some(json!({"using": "css selector", "value": css})))
            .ok()?;
        v["value"][ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits (bounded) for an element.
    pub fn wait(&self, css: &str) -> String {
        wait_for(Duration::from_secs(20), || self.find(css)).unwrap_or_else(|| panic!("no element {css}"))
    }

    pub fn text(&self, css: &str) -> String {
        let Some(e) = self.find(css) else { return String::new() };
        let path = format!("/session/{}/element/{e}/text", self.session);
        self.raw("GET", &path, None)
            .ok()
            .and_then(|v| v["value"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits (bounded) until the text of `css` satisfies `pred`; returns it.
    pub fn wait_text(&self, css: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(Duration::from_secs(30), || Some(self.text(css)).filter(|t| pred(t)))
            .unwrap_or_else(|| panic!("{css} never matched; it says {:?}", self.text(css)))
    }

    pub fn click(&self, css: &str) {
        let e = self.wait(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// Types into an element (WebDriver key codes: "\u{E007}" is Enter).
    pub fn keys(&self, css: &str, text: &str) {
        let e = self.wait(css);
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    /// Keys sent to whatever has the focus (Tab, Enter, …).
    pub fn keys_to_focus(&self, text: &str) {
        let e = self.cmd("GET", "/element/active", None)[ELEMENT]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    pub fn script(&self, js: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": js, "args": []})))
    }

    pub fn screenshot_png(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        decode_base64(b64.as_str().unwrap_or_default())
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }
}

trait JsonBody {
    fn json_body(self, v: Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: Value) -> Self {
        self.header("content-type", "application/json").body(v.to_string())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
