//! Process ancestry from /proc, for telling agentd's own sandboxed
//! descendants apart from other local callers of its sockets.

/// Whether `pid` is `ancestor` or one of its descendants, following parent
/// pids in /proc.
pub fn is_descendant(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    // Bounded: a parent chain is never this deep, and a loop cannot hang.
    for _ in 0..128 {
        if p == ancestor {
            return true;
        }
        if p <= 1 {
            return false;
        }
        match parent_pid(p) {
            Some(pp) => p = pp,
            None => return false,
        }
    }
    false
}

pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may contain spaces or `)`.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}
