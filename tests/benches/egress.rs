//! Cost of the egress proxy: a plain-HTTP request (new connection each,
//! as `Connection: close` makes it) through the proxy against the same
//! request made directly, p50/p99 over 500 each; and bulk throughput
//! through a CONNECT tunnel against a direct connection (256 MiB).
//!
//! The proxy is the one a sandbox run gets ([`Proxy`]), on a
//! current-thread runtime of its own thread as in the agent child; a
//! thread here plays the relay (accept on 127.0.0.1, hand the socket over
//! the dialer with SCM_RIGHTS), which is all the relay inside the
//! namespace does. Sandbox start-up is not included (the same with or
//! without domain rules).
//!
//! Run: `cargo bench --bench egress`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use agentd::sandbox::egress::{Pattern, Proxy, Rules};

const REQUESTS: usize = 500;
const WARMUP: usize = 20;
const BULK: usize = 256 << 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut d: Vec<Duration>) -> Duration {
    d.sort();
    let (p50, p99) = (percentile(&d, 0.50), percentile(&d, 0.99));
    println!(
        "{what:<28} p50 {:>8.1} µs   p99 {:>8.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    p50
}

/// Reads a request head, then answers: a short body, or BULK bytes.
fn upstream(bulk: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                if bulk {
                    let chunk = vec![b'x'; 256 << 10];
                    for _ in 0..BULK / chunk.len() {
                        if c.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n");
                }
            });
        }
    });
    port
}

/// Plays the relay: every accepted connection goes to the proxy.
fn relay(dialer: OwnedFd) -> u16 {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let fds = [c.as_raw_fd()];
            let iov = [std::io::IoSlice::new(&[0u8])];
            sendmsg::<()>(
                dialer.as_raw_fd(),
                &iov,
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
    });
    port
}

fn request(port: u16, head: &str) -> Duration {
    let t = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    assert!(out.ends_with(b"hello\n"), "{}", String::from_utf8_lossy(&out));
    t.elapsed()
}

fn bulk(mut c: TcpStream) -> f64 {
    let t = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0;
    loop {
        match c.read(&mut buf).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    assert_eq!(n, BULK);
    (n as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64()
}

fn main() {
    let small = upstream(false);
    let big = upstream(true);
    let rules = Rules {
        allow: vec![Pattern::parse("bench.test").unwrap()],
        resolve: [("bench.test".to_string(), "127.0.0.1".parse().unwrap())].into(),
        max_connections: 64,
        ..Rules::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (proxy, dialer) = Proxy::start(rules, None).unwrap();
            tx.send(dialer).unwrap();
            std::future::pending::<()>().await;
            drop(proxy);
        });
    });
    let proxy = relay(rx.recv().unwrap());

    let direct_head = format!("GET / HTTP/1.1\r\nHost: bench.test:{small}\r\nConnection: close\r\n\r\n");
    let proxied_head = format!("GET http://bench.test:{small}/ HTTP/1.1\r\nHost: bench.test:{small}\r\n\r\n");
    for _ in 0..WARMUP {
        request(small, &direct_head);
        request(proxy, &proxied_head);
    }
    let direct: Vec<Duration> = (0..REQUESTS).map(|_| request(small, &direct_head)).collect();
    let proxied: Vec<Duration> = (0..REQUESTS).map(|_| request(proxy, &proxied_head)).collect();
    let d = report("direct request", direct);
    let p = report("through the proxy", proxied);
    println!(
        "added latency per request   p50 {:>8.1} µs",
        (p.as_secs_f64() - d.as_secs_f64()) * 1e6
    );

    let direct = bulk(TcpStream::connect(("127.0.0.1", big)).unwrap());
    let mut tunnel = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    tunnel
        .write_all(format!("CONNECT bench.test:{big} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    let mut reply = [0u8; 39];
    tunnel.read_exact(&mut reply).unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let through = bulk(tunnel);
    println!("bulk direct                 {direct:>8.0} MiB/s");
    println!("bulk through a CONNECT      {through:>8.0} MiB/s");
}
