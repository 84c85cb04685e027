//! The sandbox policy: what sandboxed code may read, write and reach.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Landlock,
    Bwrap,
    #[serde(rename = "bwrap+landlock")]
    BwrapLandlock,
    /// No isolation: explicit only, logged loudly.
    None,
}

impl Backend {
    pub const NAMES: [&'static str; 4] = ["landlock", "bwrap", "bwrap+landlock", "none"];

    pub fn parse(s: &str) -> Option<Backend> {
        Some(match s {
            "landlock" => Backend::Landlock,
            "bwrap" => Backend::Bwrap,
            "bwrap+landlock" => Backend::BwrapLandlock,
            "none" => Backend::None,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Landlock => "landlock",
            Backend::Bwrap => "bwrap",
            Backend::BwrapLandlock => "bwrap+landlock",
            Backend::None => "none",
        }
    }
}

/// Resource limits applied with setrlimit (and output capture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
    /// Captured stdout/stderr beyond this is cut (head and tail kept).
    pub output_bytes: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            cpu_seconds: Some(60),
            memory_bytes: Some(1 << 30),
            processes: Some(256),
            file_size_bytes: Some(64 << 20),
            open_files: Some(256),
            output_bytes: 64 << 10,
        }
    }
}

/// A resolved sandbox policy. The agent's workdir and a private /tmp are
/// always writable; `read_only` and `writable` add to that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxPolicy {
    pub backend: Backend,
    pub read_only: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
    pub network: Network,
    /// Run even when the kernel cannot enforce every landlock rule.
    pub best_effort: bool,
    pub timeout: Duration,
    pub limits: ResourceLimits,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            backend: Backend::Landlock,
            read_only: Vec::new(),
            writable: Vec::new(),
            network: Network::Off,
            best_effort: false,
            timeout: Duration::from_secs(60),
            limits: ResourceLimits::default(),
        }
    }
}

/// What network a run gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// None at all (`network: false`).
    Off,
    /// Everything the host reaches (`network: true`).
    On,
    /// Only the hosts the rules name, through agentd's egress proxy
    /// (`network: {allow, deny, resolve}`); needs a bwrap backend.
    Domains(super::egress::Rules),
}

impl Network {
    /// Whether the code may make IPv4/IPv6 sockets (seccomp) and TCP
    /// connections (Landlock). Under `Domains` they reach only `lo` of the
    /// run's own network namespace.
    pub fn sockets(&self) -> bool {
        !matches!(self, Network::Off)
    }

    /// Whether the run shares the host's network namespace.
    pub fn shares_host(&self) -> bool {
        matches!(self, Network::On)
    }
}
