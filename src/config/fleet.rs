//! The top-level `ledger`, `ledger_password_file` and `fleet` keys: where
//! the ledger lives (the state dir's SQLite file, or a shared PostgreSQL
//! database) and who this host is among the members sharing it.
//!
//! The URL may come from the config or from `AGENTD_LEDGER`; it must
//! never hold a password (see [`crate::ledger::Location`]). The password
//! file is read here, once, so a missing or unreadable file is a config
//! error naming the key. This module must never connect to anything.

use std::path::Path;
use std::time::Duration;

use marked_yaml::Node;

use super::load::resolve_path;
use super::types::{FleetSpec, Placement};
use crate::ledger::{Location, PgTarget, URL_ENV};
use crate::yaml::{Cx, Map};

const FLEET_KEYS: &[&str] = &["host", "labels", "lease_ttl", "heartbeat"];
const PLACEMENT_KEYS: &[&str] = &["hosts", "labels"];

/// An agent's `placement: {hosts, labels}`.
pub(super) fn decode_placement(cx: &mut Cx, node: &Node, path: &str) -> Option<Placement> {
    let map = Map::open(cx, node, path, PLACEMENT_KEYS)?;
    let hosts = match map.get("hosts") {
        Some(n) => cx.strings(n, &map.field("hosts"))?,
        None => Vec::new(),
    };
    let labels = match map.get("labels") {
        Some(n) => cx.strings(n, &map.field("labels"))?,
        None => Vec::new(),
    };
    Some(Placement { hosts, labels })
}

/// How long an agent's lease outlives its holder's last heartbeat.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// `ledger: postgres://…` (else `$AGENTD_LEDGER`, else SQLite in the state
/// dir), with the password from `ledger_password_file` or
/// `$AGENTD_LEDGER_PASSWORD`.
pub(super) fn decode_ledger(
    cx: &mut Cx,
    url: Option<&Node>,
    password_file: Option<&Node>,
    dir: &Path,
    state_dir: &Path,
) -> Option<Location> {
    let env = cx.env;
    let (text, node) = match url {
        Some(n) => (cx.non_empty_string(n, "ledger")?, Some(n)),
        None => match env(URL_ENV).filter(|u| !u.is_empty()) {
            Some(u) => (u, None),
            None => {
                if let Some(n) = password_file {
                    cx.error_at_node(n, "ledger_password_file", "only meaningful with a postgres:// ledger");
                    return None;
                }
                return Some(Location::Sqlite(crate::state_dir::ledger(state_dir)));
            }
        },
    };
    let target = match PgTarget::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            let msg = match node {
                Some(_) => e.to_string(),
                None => format!("${URL_ENV}: {e}"),
            };
            match node {
                Some(n) => cx.error_at_node(n, "ledger", msg),
                None => {
                    let e = super::load::plain_error(&cx.file, &msg);
                    cx.errors.push(e);
                }
            }
            return None;
        }
    };
    let file = match password_file {
        Some(n) => Some(resolve_path(&cx.non_empty_string(n, "ledger_password_file")?, dir, env)),
        None => None,
    };
    match target.with_password_from(file.as_deref(), env) {
        Ok(t) => Some(Location::Postgres(t)),
        Err(e) => {
            if let Some(n) = password_file {
                cx.error_at_node(n, "ledger_password_file", e.to_string());
            }
            None
        }
    }
}

/// `fleet: {host, labels, lease_ttl, heartbeat}`; the host defaults to
/// the machine's hostname.
pub(super) fn decode_fleet(cx: &mut Cx, node: Option<&Node>) -> Option<FleetSpec> {
    let mut spec = FleetSpec {
        host: default_host(),
        labels: Vec::new(),
        lease_ttl: DEFAULT_LEASE_TTL,
        heartbeat: None,
    };
    let Some(node) = node else {
        return Some(spec);
    };
    let map = Map::open(cx, node, "fleet", FLEET_KEYS)?;
    if let Some(n) = map.get("host") {
        let host = cx.non_empty_string(n, &map.field("host"))?;
        let ok = host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            cx.error_at_node(
                n,
                &map.field("host"),
                format!("{host:?} is not a host name: letters, digits, '-', '_' and '.' only"),
            );
            return None;
        }
        spec.host = host;
    }
    if let Some(n) = map.get("labels") {
        spec.labels = cx.strings(n, &map.field("labels"))?;
    }
    if let Some(ttl) = map.duration(cx, "lease_ttl") {
        if ttl < Duration::from_secs(1) {
            cx.error_at_node(
                map.get("lease_ttl").unwrap_or(node),
                &map.field("lease_ttl"),
                "must be at least 1s",
            );
            return None;
        }
        spec.lease_ttl = ttl;
    }
    if let Some(hb) = map.duration(cx, "heartbeat") {
        if hb.is_zero() || hb >= spec.lease_ttl {
            cx.error_at_node(
                map.get("heartbeat").unwrap_or(node),
                &map.field("heartbeat"),
                "must be more than 0 and less than lease_ttl",
            );
            return None;
        }
        spec.heartbeat = Some(hb);
    }
    Some(spec)
}

/// This machine's name (the kernel's UTS hostname), or "localhost" when
/// it has none.
pub fn default_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
