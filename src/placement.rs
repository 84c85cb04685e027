//! Which fleet member runs an agent: rendezvous (highest random weight)
//! hashing of the agent's name over the live, non-draining members its
//! `placement:` allows. Pure, so every member computes the same answer
//! from the same membership, and so tests can ask where an agent belongs.
//! Agents spread evenly, and a member joining or leaving moves only its
//! own share. The supervisor acts on it (`supervisor/fleet.rs`).

use crate::config::Placement;
use crate::ledger::Member;

/// The member that should run `agent`: among live, non-draining members
/// `placement` allows, the one with the highest hash of (agent, host).
/// None when no member may run it.
pub fn place<'m>(agent: &str, placement: &Placement, members: &'m [Member]) -> Option<&'m str> {
    members
        .iter()
        .filter(|m| m.alive && !m.draining && placement.allows(&m.host, &m.labels))
        .max_by_key(|m| (weight(agent, &m.host), m.host.as_str()))
        .map(|m| m.host.as_str())
}

/// FNV-1a over "agent/host": stable across hosts, builds and restarts.
fn weight(agent: &str, host: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in agent.bytes().chain([b'/']).chain(host.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for similar keys: fold the high half in.
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Member;

    fn member(host: &str, labels: &[&str]) -> Member {
        Member {
            host: host.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            started_at: 0,
            heartbeat_at: 0,
            alive: true,
            draining: false,
            agents: Vec::new(),
        }
    }

    #[test]
    fn placement_spreads_agents_evenly_and_a_new_member_takes_only_its_share() {
        let two = [member("a", &[]), member("b", &[])];
        let three = [member("a", &[]), member("b", &[]), member("c", &[])];
        let any = Placement::default();
        let names: Vec<String> = (0..300).map(|i| format!("agent-{i}")).collect();
        let on =
            |members: &[Member], host: &str| names.iter().filter(|n| place(n, &any, members) == Some(host)).count();
        let (a, b) = (on(&two, "a"), on(&two, "b"));
        assert_eq!(a + b, 300);
        assert!((120..=180).contains(&a), "{a} of 300 on a");
        // With c joining, agents only move to c, never between a and b.
        for n in &names {
            let before = place(n, &any, &two);
            let after = place(n, &any, &three);
            assert!(after == before || after == Some("c"), "{n}: {before:?} -> {after:?}");
        }
        assert!((70..=130).contains(&on(&three, "c")), "{}", on(&three, "c"));
    }

    #[test]
    fn placement_honours_hosts_labels_liveness_and_draining() {
        let mut members = vec![member("a", &["gpu"]), member("b", &[]), member("c", &["gpu"])];
        let gpu = Placement {
            hosts: vec![],
            labels: vec!["gpu".into()],
        };
        let only_b = Placement {
            hosts: vec!["b".into()],
            labels: vec![],
        };
        for i in 0..50 {
            let n = format!("x{i}");
            assert_ne!(place(&n, &gpu, &members), Some("b"));
            assert_eq!(place(&n, &only_b, &members), Some("b"));
        }
        members[1].alive = false;
        assert_eq!(place("x", &only_b, &members), None);
        members[0].draining = true;
        for i in 0..50 {
            assert_eq!(place(&format!("x{i}"), &gpu, &members), Some("c"));
        }
    }
}
