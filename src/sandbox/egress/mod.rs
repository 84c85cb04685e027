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
//!
//! The run's owner may give the proxy [`Hooks`]: an agent puts `ask`
//! rules to its operators as approval requests and journals each
//! connection as it ends. Without hooks (`agentd sandbox run`) an ask is a
//! denial: there is no one to ask.

pub mod proxy;
pub mod relay;
pub mod rules;
pub mod sni;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use proxy::{Connection, Proxy};
pub use rules::{Decision, Pattern, Rules};

/// What the owner of a run does for its proxy.
pub trait Owner: Send + Sync {
    /// `host:port` matched `rule`, an `ask` rule: the answer decides.
    fn ask(self: Arc<Self>, host: String, port: u16, rule: String) -> Pin<Box<dyn Future<Output = Decision> + Send>>;
    /// A connection attempt ended (allowed or not).
    fn ended(&self, connection: &Connection);
    /// The fence block whose run comes next (1-based), for the records.
    fn block(&self, _index: usize) {}
}

/// A run's [`Owner`], carried in [`crate::sandbox::Exposed`].
#[derive(Clone)]
pub struct Hooks(pub Arc<dyn Owner>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("egress::Hooks")
    }
}

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
