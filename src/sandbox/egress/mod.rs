//! Egress by domain: sandboxed code reaches only the hosts its policy
//! names, through agentd's own HTTP proxy.
//!
//! Under `network: {allow, deny, resolve}` a bwrap run gets a network
//! namespace with only `lo`, the network seccomp policy (IPv4/IPv6
//! sockets; they reach nothing but `lo`), and [`relay`] in front of the
//! command: it listens on `127.0.0.1:3128` inside and hands each accepted
//! socket through an inherited `SOCK_SEQPACKET` dialer to [`proxy`],
//! outside, which applies [`rules`] and makes the upstream connection.
//! The code gets `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` (and lower-case)
//! pointing there. Landlock-only and `none` runs have no namespace to put
//! around the code, so domain rules under them are refused.

pub mod proxy;
pub mod relay;
pub mod rules;
pub mod sni;

pub use proxy::{Connection, Proxy};
pub use rules::{Decision, Pattern, Rules};

/// The proxy variables set for the code.
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{}", relay::PORT);
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .iter()
    .map(|k| ((*k).to_string(), url.clone()))
    .collect()
}
