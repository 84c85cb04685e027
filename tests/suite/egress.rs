//! Egress by domain: sandboxed code reaches only the hosts its policy
//! names, through agentd's proxy. Real servers on 127.0.0.1 under names
//! pinned with `network.resolve`; every refusal is first shown to work
//! without the sandbox (the `none` backend, no proxy), then refused and
//! recorded.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd::sandbox::egress::Decision;
use agentd::sandbox::{self, Backend, Network, RunOutcome, SandboxPolicy};

/// A plain HTTP server on 127.0.0.1 that answers every request with
/// `hello from NAME` and remembers each request's Host header.
struct HttpServer {
    port: u16,
    hosts: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    fn start(name: &'static str) -> HttpServer {
        HttpServer::with_body(name, 0)
    }

    /// Answers `hello from NAME` followed by `pad` bytes of `x`.
    fn with_body(name: &'static str, pad: usize) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let seen = hosts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut host = String::from("(none)");
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(h) = line.to_ascii_lowercase().strip_prefix("host:") {
                            host = h.trim().to_string();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    seen.lock().unwrap().push(host);
                    let body = format!("hello from {name}\n{}", "x".repeat(pad));
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        HttpServer { port, hosts }
    }

    fn requests(&self) -> Vec<String> {
        self.hosts.lock().unwrap().clone()
    }
}

fn helper() {
    sandbox::helper::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_agentd")));
}

/// The shipped `web` profile (bwrap+landlock) with test rules: the names
/// below pinned to 127.0.0.1, `allowed.test` allowed, `denied.test`
/// denied by a rule that a broader allow would otherwise let through.
fn web_policy() -> SandboxPolicy {
    helper();
    let (mut p, _) = agentd::config::resolve_sandbox_profile("web", None).expect("web profile");
    let text = "network:\n  allow: [allowed.test, \"*.test\"]\n  deny: [denied.test]\n  resolve: {allowed.test: 127.0.0.1, denied.test: 127.0.0.1, liar.test: 127.0.0.1}\n";
    let extra =
        agentd::config::load_sandbox_profile_str(Path::new("egress-test.yaml"), &format!("backend: bwrap\n{text}"))
            .expect("test rules decode");
    p.network = extra.network;
    p.timeout = Duration::from_secs(30);
    p
}

/// The control: same argv, no isolation, no proxy.
fn control_policy() -> SandboxPolicy {
    helper();
    let (mut p, _) = agentd::config::resolve_sandbox_profile("networked", None).expect("networked profile");
    p.backend = Backend::None;
    p.timeout = Duration::from_secs(30);
    p
}

async fn run(p: &SandboxPolicy, workdir: &Path, argv: &[String]) -> RunOutcome {
    sandbox::run(p, workdir, argv, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("sandbox {:?}: {e}", p.backend))
}

fn sh(script: &str) -> Vec<String> {
    vec!["bash".into(), "-c".into(), script.into()]
}

fn py(code: &str) -> Vec<String> {
    vec!["python3".into(), "-c".into(), code.into()]
}

fn denied_record<'a>(o: &'a RunOutcome, host: &str) -> &'a str {
    o.egress
        .iter()
        .filter(|c| c.host == host)
        .find_map(|c| c.denied())
        .unwrap_or_else(|| panic!("no denial of {host} recorded: {:?}", o.egress))
}

#[tokio::test(flavor = "current_thread")]
async fn allowed_plain_http_is_reached_with_curl_and_python() {
    let server = HttpServer::start("allowed");
    let wd = crate::support::sandbox_workdir("egress-");
    let url = format!("http://allowed.test:{}/x", server.port);

    let curl = run(&web_policy(), wd.path(), &sh(&format!("curl -sS --max-time 20 {url}"))).await;
    assert_eq!(curl.stdout, "hello from allowed\n", "{curl:?}");
    let urllib = run(
        &web_policy(),
        wd.path(),
        &py(&format!(
            "import urllib.request; print(urllib.request.urlopen('{url}', timeout=20).read().decode(), end='')"
        )),
    )
    .await;
    assert_eq!(urllib.stdout, "hello from allowed\n", "{urllib:?}");
    assert_eq!(server.requests(), vec![format!("allowed.test:{}", server.port); 2]);

    let c = &curl.egress[0];
    assert_eq!(
        (c.host.as_str(), c.port, c.method.as_str()),
        ("allowed.test", server.port, "GET")
    );
    assert_eq!(
        c.decision,
        Decision::Allowed {
            rule: "allow allowed.test".into()
        }
    );
    assert!(c.sent > 0 && c.received > "hello from allowed\n".len() as u64, "{c:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_denied_name_is_refused_even_when_an_allow_glob_matches() {
    let server = HttpServer::start("denied");
    let wd = crate::support::sandbox_workdir("egress-");
    let p = server.port;
    let argv = sh(&format!(
        "curl -sS --max-time 20 --resolve denied.test:{p}:127.0.0.1 http://denied.test:{p}/"
    ));

    let control = run(&control_policy(), wd.path(), &argv).await;
    assert_eq!(control.stdout, "hello from denied\n", "control: {control:?}");
    assert_eq!(server.requests().len(), 1);

    let sandboxed = run(&web_policy(), wd.path(), &argv).await;
    assert!(!sandboxed.stdout.contains("hello"), "{sandboxed:?}");
    assert!(
        sandboxed.stdout.contains("refused"),
        "the 403 body says why: {sandboxed:?}"
    );
    assert_eq!(server.requests().len(), 1, "the denied request reached the server");
    assert_eq!(
        denied_record(&sandboxed, "denied.test"),
        "denied by rule deny denied.test"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_ip_literal_is_refused_unless_a_rule_names_it() {
    let server = HttpServer::start("ip");
    let wd = crate::support::sandbox_workdir("egress-");
    let argv = sh(&format!("curl -sS --max-time 20 http://127.0.0.1:{}/", server.port));

    let control = run(&control_policy(), wd.path(), &argv).await;
    assert_eq!(control.stdout, "hello from ip\n", "control: {control:?}");

    let sandboxed = run(&web_policy(), wd.path(), &argv).await;
    assert!(!sandboxed.stdout.contains("hello"), "{sandboxed:?}");
    assert_eq!(server.requests().len(), 1, "the IP literal reached the server");
    assert!(
        denied_record(&sandboxed, "127.0.0.1").contains("IP address"),
        "{sandboxed:?}"
    );

    // A rule naming the address lets it through.
    let mut named = web_policy();
    if let Network::Domains(r) = &mut named.network {
        r.allow
            .push(agentd::sandbox::egress::Pattern::parse("127.0.0.1").unwrap());
    }
    let ok = run(&named, wd.path(), &argv).await;
    assert_eq!(ok.stdout, "hello from ip\n", "{ok:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_direct_tcp_connect_that_ignores_the_proxy_goes_nowhere() {
    let server = HttpServer::start("direct");
    let wd = crate::support::sandbox_workdir("egress-");
    let argv = sh(&format!(
        "curl -sS --max-time 10 --noproxy '*' --resolve allowed.test:{p}:127.0.0.1 http://allowed.test:{p}/",
        p = server.port
    ));

    let control = run(&control_policy(), wd.path(), &argv).await;
    assert_eq!(control.stdout, "hello from direct\n", "control: {control:?}");

    let sandboxed = run(&web_policy(), wd.path(), &argv).await;
    assert!(!sandboxed.success(), "{sandboxed:?}");
    assert!(!sandboxed.stdout.contains("hello"), "{sandboxed:?}");
    assert_eq!(server.requests().len(), 1, "a direct connection reached the host");
    assert!(
        sandboxed.egress.is_empty(),
        "nothing went through the proxy: {:?}",
        sandboxed.egress
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_dns_query_goes_nowhere() {
    let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = resolver.local_addr().unwrap().port();
    let wd = crate::support::sandbox_workdir("egress-");
    let query =
        "b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01'";
    let argv = py(&format!(
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto({query}, ('127.0.0.1', {port})); print('sent')"
    ));
    let received = || {
        resolver.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut buf = [0u8; 512];
        resolver.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
    };

    let control = run(&control_policy(), wd.path(), &argv).await;
    assert!(control.success(), "control: {control:?}");
    assert!(
        received().is_some_and(|q| q.windows(7).any(|w| w == b"example")),
        "control query arrives"
    );

    let sandboxed = run(&web_policy(), wd.path(), &argv).await;
    assert!(received().is_none(), "a DNS query left the sandbox: {sandboxed:?}");
    // And names do not resolve inside: only the proxy resolves.
    let lookup = run(
        &web_policy(),
        wd.path(),
        &py("import socket\ntry:\n    socket.getaddrinfo('allowed.test', 80); print('resolved')\nexcept OSError as e:\n    print('no resolution')"),
    )
    .await;
    assert_eq!(lookup.stdout, "no resolution\n", "{lookup:?}");
}

/// A TLS server (python's ssl with a throwaway certificate for
/// allowed.test) that answers one line over HTTPS, and accepts any SNI.
struct TlsServer {
    port: u16,
    cert: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let st = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=allowed.test",
            ])
            .args([
                "-addext",
                "subjectAltName=DNS:allowed.test,DNS:liar.test,DNS:denied.test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl req");
        let script = format!(
            r#"
import socket, ssl, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain({cert:?}, {key:?})
ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(16)
print(ls.getsockname()[1], flush=True)
def serve(c):
    try:
        s = ctx.wrap_socket(c, server_side=True)
        s.recv(4096)
        body = b'hello over tls\n'
        s.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
        s.close()
    except Exception:
        c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#,
            cert = cert.display().to_string(),
            key = key.display().to_string()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        TlsServer {
            port,
            cert,
            child,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn allowed_https_is_reached_and_a_lying_sni_is_refused() {
    let tls = TlsServer::start();
    let wd = crate::support::sandbox_workdir("egress-");
    let cert = wd.path().join("cert.pem");
    std::fs::copy(&tls.cert, &cert).unwrap();
    let p = tls.port;

    let curl = run(
        &web_policy(),
        wd.path(),
        &sh(&format!(
            "curl -sS --max-time 20 --cacert cert.pem https://allowed.test:{p}/"
        )),
    )
    .await;
    assert_eq!(curl.stdout, "hello over tls\n", "{curl:?}");
    assert_eq!(curl.egress[0].method, "CONNECT");
    let urllib = run(
        &web_policy(),
        wd.path(),
        &py(&format!(
            "import ssl, urllib.request; ctx = ssl.create_default_context(cafile='cert.pem'); \
             print(urllib.request.urlopen('https://allowed.test:{p}/', context=ctx, timeout=20).read().decode(), end='')"
        )),
    )
    .await;
    assert_eq!(urllib.stdout, "hello over tls\n", "{urllib:?}");

    // CONNECT is matched on its authority: a denied name gets no tunnel
    // (control: the same command without the sandbox reaches the server).
    let denied = sh(&format!(
        "curl -sS --max-time 20 --cacert cert.pem --resolve denied.test:{p}:127.0.0.1 https://denied.test:{p}/"
    ));
    let control = run(&control_policy(), wd.path(), &denied).await;
    assert_eq!(control.stdout, "hello over tls\n", "control: {control:?}");
    let refused = run(&web_policy(), wd.path(), &denied).await;
    assert!(refused.stderr.contains("403"), "{refused:?}");
    let c = refused
        .egress
        .iter()
        .find(|c| c.host == "denied.test")
        .expect("recorded");
    assert_eq!(
        (c.method.as_str(), c.denied()),
        ("CONNECT", Some("denied by rule deny denied.test"))
    );

    // A tunnel opened for allowed.test carrying a handshake for liar.test
    // (which the rules would allow too, but not through this tunnel).
    let lie = |proxy: bool| {
        format!(
            r#"
import socket, ssl
ctx = ssl.create_default_context(cafile='cert.pem')
if {proxy}:
    s = socket.create_connection(('127.0.0.1', 3128), timeout=20)
    s.sendall(b'CONNECT allowed.test:{p} HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n')
    head = b''
    while not head.endswith(b'\r\n\r\n'):
        head += s.recv(1)
else:
    s = socket.create_connection(('127.0.0.1', {p}), timeout=20)
try:
    t = ctx.wrap_socket(s, server_hostname='liar.test')
    t.sendall(b'GET / HTTP/1.1\r\nHost: liar.test\r\n\r\n')
    print(t.recv(4096).decode().splitlines()[-1])
except (ssl.SSLError, OSError) as e:
    print('handshake failed')
"#,
            proxy = if proxy { "True" } else { "False" }
        )
    };
    let control = run(&control_policy(), wd.path(), &py(&lie(false))).await;
    assert_eq!(
        control.stdout, "hello over tls\n",
        "control: the server accepts the lying name: {control:?}"
    );
    let sandboxed = run(&web_policy(), wd.path(), &py(&lie(true))).await;
    assert_eq!(sandboxed.stdout, "handshake failed\n", "{sandboxed:?}");
    assert!(
        denied_record(&sandboxed, "allowed.test").contains("names liar.test"),
        "{:?}",
        sandboxed.egress
    );
}

#[tokio::test(flavor = "current_thread")]
async fn denials_are_reported_in_the_fence_result() {
    let wd = crate::support::sandbox_workdir("egress-");
    let blocks = agentd::fence::parse("```bash:execute\ncurl -sS --max-time 10 http://denied.test:9/ || true\n```\n");
    let results = agentd::fence::execute(&blocks, &web_policy(), wd.path(), &Default::default()).await;
    let text = results[0].render_for_model();
    assert!(
        text.contains("network: denied.test:9 refused by the sandbox's egress policy: denied by rule deny denied.test"),
        "{text}"
    );
}

#[test]
fn domain_rules_are_checked_with_positions() {
    let bad = "backend: bwrap\nnetwork:\n  allow: [pypi.org, \"bad host\", \"x.org:99999\"]\n  resolve: {a.test: not-an-ip}\n";
    let err = agentd::config::load_sandbox_profile_str(Path::new("p.yaml"), bad)
        .unwrap_err()
        .to_string();
    for want in [
        "p.yaml:3:",
        "network.allow[1]",
        "cannot be part of a host name",
        "network.allow[2]",
        "65535",
        "network.resolve.a.test",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    let landlock = "backend: landlock\nnetwork: {allow: [pypi.org]}\n";
    let err = agentd::config::load_sandbox_profile_str(Path::new("p.yaml"), landlock)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.yaml:2:") && err.contains("need a network namespace"),
        "{err}"
    );
    // Control: the same rules under bwrap decode.
    let ok =
        agentd::config::load_sandbox_profile_str(Path::new("p.yaml"), "backend: bwrap\nnetwork: {allow: [pypi.org]}\n");
    assert!(matches!(ok.unwrap().network, Network::Domains(_)));
}

#[tokio::test(flavor = "current_thread")]
async fn landlock_only_runs_refuse_domain_rules() {
    let wd = crate::support::sandbox_workdir("egress-");
    let mut p = web_policy();
    p.backend = Backend::Landlock;
    let err = sandbox::run(&p, wd.path(), &sh("true"), &Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("need a network namespace"), "{err}");
    p.backend = Backend::Bwrap;
    assert!(run(&p, wd.path(), &sh("true")).await.success(), "control");
}

fn with_limits(max_bytes: Option<u64>, max_connections: usize) -> SandboxPolicy {
    let mut p = web_policy();
    if let Network::Domains(r) = &mut p.network {
        r.max_bytes = max_bytes;
        r.max_connections = max_connections;
    }
    p
}

#[tokio::test(flavor = "current_thread")]
async fn the_byte_limit_cuts_a_run_and_refuses_its_next_connections() {
    let server = HttpServer::with_body("big", 1 << 20);
    let wd = crate::support::sandbox_workdir("egress-");
    let url = format!("http://allowed.test:{}/", server.port);
    let argv = sh(&format!(
        "curl -sS --max-time 20 -o first {url}; wc -c < first; curl -sS --max-time 20 {url} | head -c 200"
    ));

    let control = run(&with_limits(None, 32), wd.path(), &argv).await;
    let size: u64 = control.stdout.lines().next().unwrap_or("").trim().parse().unwrap_or(0);
    assert!(size > 1 << 20, "control: the whole body arrives: {control:?}");

    let limited = run(&with_limits(Some(64 << 10), 32), wd.path(), &argv).await;
    let size: u64 = limited
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert!(size < 1 << 20, "the body was cut: {limited:?}");
    let first = &limited.egress[0];
    assert!(
        first.error.as_deref().is_some_and(|e| e.contains("max_bytes")),
        "{first:?}"
    );
    assert!(
        denied_record(&limited, "allowed.test").contains("byte limit is used up"),
        "{:?}",
        limited.egress
    );
}

#[tokio::test(flavor = "current_thread")]
async fn connections_beyond_the_limit_are_refused() {
    let server = HttpServer::start("slots");
    let wd = crate::support::sandbox_workdir("egress-");
    // Holds one tunnel open (the server waits for a request that never
    // comes) while a second request is made.
    let script = format!(
        r#"
import socket, urllib.request, urllib.error
s = socket.create_connection(('127.0.0.1', 3128), timeout=20)
s.sendall(b'CONNECT allowed.test:{p} HTTP/1.1\r\n\r\n')
print(s.recv(100).split(b'\r\n')[0].decode())
try:
    print(urllib.request.urlopen('http://allowed.test:{p}/', timeout=20).read().decode(), end='')
except urllib.error.HTTPError as e:
    print(e.code)
"#,
        p = server.port
    );
    let control = run(&with_limits(None, 2), wd.path(), &py(&script)).await;
    assert_eq!(
        control.stdout, "HTTP/1.1 200 Connection established\nhello from slots\n",
        "control: {control:?}"
    );

    let limited = run(&with_limits(None, 1), wd.path(), &py(&script)).await;
    assert_eq!(
        limited.stdout, "HTTP/1.1 200 Connection established\n503\n",
        "{limited:?}"
    );
    assert!(
        denied_record(&limited, "allowed.test").contains("max_connections: 1"),
        "{:?}",
        limited.egress
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_name_dns_points_at_loopback_is_refused_unless_pinned() {
    let server = HttpServer::start("local");
    let wd = crate::support::sandbox_workdir("egress-");
    let argv = sh(&format!("curl -sS --max-time 20 http://localhost:{}/", server.port));
    let mut pinned = web_policy();
    let mut by_dns = web_policy();
    for (p, pin) in [(&mut pinned, true), (&mut by_dns, false)] {
        if let Network::Domains(r) = &mut p.network {
            r.allow
                .push(agentd::sandbox::egress::Pattern::parse("localhost").unwrap());
            if pin {
                r.resolve.insert("localhost".into(), "127.0.0.1".parse().unwrap());
            }
        }
    }
    // Control: the same rules with the name pinned reach the server.
    let control = run(&pinned, wd.path(), &argv).await;
    assert_eq!(control.stdout, "hello from local\n", "control: {control:?}");

    let refused = run(&by_dns, wd.path(), &argv).await;
    assert!(!refused.stdout.contains("hello"), "{refused:?}");
    assert_eq!(
        server.requests().len(),
        1,
        "a DNS answer pointing at loopback was followed"
    );
    assert!(
        denied_record(&refused, "localhost").contains("resolves only to loopback"),
        "{:?}",
        refused.egress
    );
}

#[tokio::test(flavor = "current_thread")]
async fn killing_the_relay_and_taking_its_port_leads_nowhere() {
    let server = HttpServer::start("relay");
    let wd = crate::support::sandbox_workdir("egress-");
    let p = server.port;
    // The relay runs as the code's user: find it, use it once (control),
    // kill it, listen on its port, and try every way out again.
    let script = format!(
        r#"
import os, signal, socket, subprocess, time
def fetch(extra=[]):
    r = subprocess.run(['curl', '-sS', '--max-time', '5'] + extra + ['http://allowed.test:{p}/'], capture_output=True, text=True)
    return r.stdout.strip() or 'failed'
print('before:', fetch())
for pid in os.listdir('/proc'):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            cmd = open('/proc/%s/cmdline' % pid, 'rb').read()
        except OSError:
            continue
        if cmd.split(b'\0')[1:2] == [b'__sandbox-relay']:
            os.kill(int(pid), signal.SIGKILL)
            print('killed relay')
time.sleep(0.2)
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind(('127.0.0.1', 3128)); ls.listen(1)
print('took port')
print('after:', fetch())
print('direct:', fetch(['--noproxy', '*', '--resolve', 'allowed.test:{p}:127.0.0.1']))
"#
    );
    // bwrap alone: under bwrap+landlock the code cannot even list /proc.
    let mut p = web_policy();
    p.backend = Backend::Bwrap;
    let o = run(&p, wd.path(), &py(&script)).await;
    assert_eq!(
        o.stdout, "before: hello from relay\nkilled relay\ntook port\nafter: failed\ndirect: failed\n",
        "{o:?}"
    );
    assert_eq!(server.requests().len(), 1, "only the proxied request arrived");
}

mod ask {
    //! `network.ask`: a host no allow or deny rule decides becomes an
    //! approval request of the running task; the connection waits for the
    //! answer, which is remembered once, for the task, or always.
    use super::HttpServer;
    use std::time::Duration;

    use agentd::control::Request;
    use agentd::domain::{Remember, TaskState};
    use agentd::ledger::{Approval, Step, Task};

    use crate::support::daemon::{Daemon, steps, tasks};
    use crate::support::inbox::{Extra, InboxAgent};
    use crate::support::llm_server::{LlmServer, Reply};
    use crate::support::wait_for;

    fn pending(d: &Daemon) -> Vec<Approval> {
        let r = d.request(&Request::Approvals);
        serde_json::from_value(r.result.expect("result")["approvals"].clone()).expect("approvals")
    }

    fn wait_pending(d: &Daemon) -> Approval {
        wait_for(Duration::from_secs(30), || pending(d).into_iter().next())
            .unwrap_or_else(|| panic!("no approval was asked; log:\n{}", d.log_text()))
    }

    fn approve(d: &Daemon, id: i64, remember: Remember) {
        let r = d.request(&Request::Approve {
            id,
            note: None,
            remember,
            caller: None,
        });
        assert!(r.ok, "{r:?}");
    }

    fn wait_task(d: &Daemon, n: usize) -> Task {
        wait_for(Duration::from_secs(60), || {
            let mut all = tasks(&d.state_dir);
            all.sort_by_key(|t| t.id);
            all.get(n - 1).filter(|t| t.state.is_final()).cloned()
        })
        .unwrap_or_else(|| panic!("task {n} never ended; {:#?}\n{}", tasks(&d.state_dir), d.log_text()))
    }

    fn egress_steps(d: &Daemon, t: &Task) -> Vec<Step> {
        steps(&d.state_dir, t.id)
            .into_iter()
            .filter(|s| s.kind == "egress")
            .collect()
    }

    fn fence_result(d: &Daemon, t: &Task) -> String {
        steps(&d.state_dir, t.id)
            .iter()
            .filter(|s| s.kind == "fence")
            .map(|s| s.payload["result"].to_string())
            .collect()
    }

    #[test]
    fn an_asked_host_waits_for_an_operator_and_the_answer_is_remembered_as_told() {
        let asked = HttpServer::start("asked");
        let port = asked.port;
        // Two fetches per run: under remember task the second is not asked.
        let fetch =
            format!("```bash:execute\nfor i in 1 2; do curl -sS --max-time 60 http://asked.test:{port}/; done\n```");
        let llm = LlmServer::start(vec![]);
        for _ in 0..4 {
            llm.push(Reply::stream_text(&[&fetch]));
            llm.push(Reply::stream_text(&["Done."]));
        }
        let agent = "    sandbox: {profile: web, backend: bwrap, timeout: 3s, network: {allow: [allowed.test], ask: [\"*.test\"], \
             resolve: {allowed.test: 127.0.0.1, asked.test: 127.0.0.1}}}\n";
        let s = InboxAgent::new(
            "reader",
            &llm.base_url(),
            "sk-test",
            Extra {
                agent,
                ..Extra::default()
            },
        );
        let d = s.start_running();

        // Task 1: the connection waits; nothing reached the server yet.
        std::fs::write(s.inbox.join("1.md"), "1").expect("write");
        let a = wait_pending(&d);
        assert_eq!(a.subject.summary(), format!("connect to asked.test:{port}"));
        assert_eq!(tasks(&d.state_dir)[0].state, TaskState::Waiting);
        // Longer than the run's 3 s timeout: the wait is not the code's time.
        std::thread::sleep(Duration::from_secs(4));
        assert!(asked.requests().is_empty(), "control: the ask gates the connection");
        approve(&d, a.id, Remember::Task);
        let t1 = wait_task(&d, 1);
        assert_eq!(t1.state, TaskState::Succeeded, "{t1:#?}\n{}", d.log_text());
        assert_eq!(asked.requests().len(), 2, "both fetches went through");
        let e = egress_steps(&d, &t1);
        assert_eq!(e.len(), 2, "{e:#?}");
        for s in &e {
            assert_eq!(s.payload["decision"], "allowed", "{s:#?}");
            let rule = s.payload["rule"].as_str().unwrap_or_default();
            assert!(rule.starts_with("ask *.test: approved (task) by"), "{rule}");
        }
        assert!(
            fence_result(&d, &t1).contains("timed_out: false"),
            "{}",
            fence_result(&d, &t1)
        );

        // Task 2: remember task ended with task 1: asked again, for good.
        std::fs::write(s.inbox.join("2.md"), "2").expect("write");
        let a2 = wait_pending(&d);
        assert_ne!(a2.id, a.id);
        approve(&d, a2.id, Remember::Always);
        assert_eq!(wait_task(&d, 2).state, TaskState::Succeeded);

        // Task 3: the ledger's grant answers; no operator is asked.
        std::fs::write(s.inbox.join("3.md"), "3").expect("write");
        let t3 = wait_task(&d, 3);
        assert_eq!(t3.state, TaskState::Succeeded, "{}", d.log_text());
        assert_eq!(
            asked.requests().len(),
            6,
            "{:#?}\n{}",
            steps(&d.state_dir, t3.id),
            d.log_text()
        );
        let grants = d.request(&Request::Grants { agent: None });
        let grants: Vec<Approval> = serde_json::from_value(grants.result.expect("grants")["grants"].clone()).unwrap();
        assert_eq!(grants.iter().map(|g| g.id).collect::<Vec<_>>(), [a2.id]);

        // Revoked: task 4 asks again, is denied, and the model reads why.
        let r = d.request(&Request::Revoke {
            id: a2.id,
            caller: None,
        });
        assert!(r.ok, "{r:?}");
        std::fs::write(s.inbox.join("4.md"), "4").expect("write");
        let a4 = wait_pending(&d);
        let r = d.request(&Request::Deny {
            id: a4.id,
            reason: Some("not that host".into()),
            caller: None,
        });
        assert!(r.ok, "{r:?}");
        let t4 = wait_task(&d, 4);
        assert_eq!(
            asked.requests().len(),
            6,
            "the denied connections never reached the server"
        );
        let e = egress_steps(&d, &t4);
        assert_eq!(e.len(), 2, "the retry is refused without asking again: {e:#?}");
        assert!(e.iter().all(|s| s.payload["decision"] == "denied"), "{e:#?}");
        let told = fence_result(&d, &t4);
        assert!(
            told.contains("refused by the sandbox's egress policy") && told.contains("not that host"),
            "{told}"
        );
        assert!(pending(&d).is_empty(), "a denial is not remembered: {:?}", pending(&d));
    }

    #[test]
    fn an_ask_outside_an_agent_is_denied_there_is_no_one_to_ask() {
        // No operator outside an agent: `agentd sandbox run`'s proxy denies.
        let mut p = super::web_policy();
        if let agentd::sandbox::Network::Domains(r) = &mut p.network {
            r.allow.clear();
            r.deny.clear();
            r.ask = vec![agentd::sandbox::egress::Pattern::parse("*.test").unwrap()];
        }
        let server = HttpServer::start("asked");
        let wd = crate::support::sandbox_workdir("egress-");
        let o = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(super::run(
                &p,
                wd.path(),
                &super::sh(&format!("curl -sS --max-time 20 http://allowed.test:{}/", server.port)),
            ));
        assert!(
            super::denied_record(&o, "allowed.test").contains("no operator to ask"),
            "{:?}",
            o.egress
        );
        assert!(server.requests().is_empty());
    }
}
