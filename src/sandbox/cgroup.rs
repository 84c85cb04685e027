//! cgroups for sandbox runs: one cgroup per run, limited as a whole and
//! killed as a whole.
//!
//! This module owns the cgroup mechanics: finding what the host offers
//! (cgroup v2 delegated to agentd, cgroup v1 as root, or nothing), the
//! layout `…/agentd/<state-dir tag>/<agent>/run-<pid>-<n>`, creating a run's
//! cgroup with its limits, the file descriptors a forked child writes `0`
//! to in order to join it, and killing and removing cgroups (a run's, an
//! agent's leftovers, a whole state dir's leftovers).
//!
//! It must never touch a cgroup outside `agentd/<tag>/` of the hierarchy it
//! found (other agentd instances on the host have other tags), never kill
//! a process it did not find inside such a cgroup, and never allocate in
//! [`Join::apply`], which runs between fork and exec.
//!
//! Layout. v2: agentd's own cgroup `D` (systemd's `Delegate=yes` gives the
//! service's cgroup to agentd) holds `D/supervisor` (agentd and its agent
//! processes: the "no internal processes" rule forbids processes in `D`
//! once controllers are enabled for its children) and `D/agentd/<tag>/…`.
//! v1: under agentd's own cgroup in each of the memory, pids, cpu and
//! freezer hierarchies, `agentd/<tag>/…`.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::policy::ResourceLimits;

/// Where the cgroup filesystem is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The leaf agentd moves itself into on cgroup v2.
pub const SUPERVISOR_LEAF: &str = "supervisor";
/// The v1 controllers used. The freezer comes first: a run is killed
/// through the first hierarchy it is in, and only the freezer can stop a
/// fork bomb while it is being killed.
const V1_CONTROLLERS: [&str; 4] = ["freezer", "memory", "pids", "cpu"];
/// How long killing a cgroup may take before it is left for the next
/// clean-up (a process stuck in uninterruptible sleep cannot die sooner).
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// CPU weight of all sandbox runs together (the `agentd/` cgroup) next to
/// agentd and its agent processes (v2: the `supervisor/` leaf, weight 100;
/// v1: agentd's own cgroup, whose processes count as 1024 shares each):
/// under contention sandboxed code yields to the daemon. Runs share it
/// equally per state dir, agent and run (default weights below).
const RUNS_CPU_WEIGHT_V2: u64 = 50;
const RUNS_CPU_SHARES_V1: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the host offers, as found by [`Hierarchy::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: `base` is agentd's delegated cgroup (`D` above);
    /// `controllers` those of memory, pids and cpu enabled for children.
    V2 { base: PathBuf, controllers: Vec<String> },
    /// cgroup v1: agentd's own cgroup directory in each hierarchy used.
    V1 { dirs: Vec<(&'static str, PathBuf)> },
    /// No usable cgroup; the reason is said once at start.
    Unavailable { reason: String },
}

impl Hierarchy {
    /// [`detect`](Self::detect), once per process: for agent processes,
    /// whose cgroup is the supervisor's and does not change. The zygote
    /// calls it before forking, so its agents find it done.
    pub fn detected() -> Hierarchy {
        static DETECTED: std::sync::OnceLock<Hierarchy> = std::sync::OnceLock::new();
        DETECTED.get_or_init(Hierarchy::detect).clone()
    }

    /// Finds agentd's place in the cgroup tree without changing anything.
    pub fn detect() -> Hierarchy {
        let own = match fs::read_to_string("/proc/self/cgroup") {
            Ok(s) => s,
            Err(e) => {
                return Hierarchy::Unavailable {
                    reason: format!("cannot read /proc/self/cgroup: {e}"),
                };
            }
        };
        Self::detect_in(Path::new(CGROUP_ROOT), &own)
    }

    /// [`detect`](Self::detect) with the mount point and the contents of
    /// `/proc/self/cgroup` given (tests point it at other mounts).
    pub fn detect_in(root: &Path, proc_self_cgroup: &str) -> Hierarchy {
        if root.join("cgroup.controllers").exists() {
            // Unified hierarchy mounted at the root: v2.
            let Some(rel) = proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
                return Hierarchy::Unavailable {
                    reason: "cgroup v2 is mounted but /proc/self/cgroup names no v2 cgroup".into(),
                };
            };
            let mut base = root.join(rel.trim_start_matches('/'));
            // A restarted agentd (or an agent process) already sits in the leaf.
            if base.file_name().is_some_and(|n| n == SUPERVISOR_LEAF) {
                if let Some(p) = base.parent() {
                    base = p.to_path_buf();
                }
            }
            let writable = access_w(&base);
            if !writable {
                return Hierarchy::Unavailable {
                    reason: format!(
                        "cgroup v2: agentd's cgroup {} is not delegated to it (run under systemd \
                         with Delegate=yes)",
                        base.display()
                    ),
                };
            }
            let controllers = fs::read_to_string(base.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .filter(|c| matches!(*c, "memory" | "pids" | "cpu"))
                .map(str::to_string)
                .collect();
            return Hierarchy::V2 { base, controllers };
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Hierarchy::Unavailable {
                reason: "cgroup v1 needs agentd to run as root".into(),
            };
        }
        let mut dirs = Vec::new();
        for ctrl in V1_CONTROLLERS {
            let rel = proc_self_cgroup.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names.split(',').any(|n| n == ctrl).then_some(path)
            });
            let mount = root.join(ctrl);
            if let Some(rel) = rel.filter(|_| mount.join("cgroup.procs").exists()) {
                dirs.push((ctrl, mount.join(rel.trim_start_matches('/'))));
            }
        }
        if !dirs.iter().any(|(c, _)| *c == "memory" || *c == "pids") {
            return Hierarchy::Unavailable {
                reason: format!(
                    "no cgroup v2 at {} and no cgroup v1 memory or pids hierarchy",
                    root.display()
                ),
            };
        }
        Hierarchy::V1 { dirs }
    }

    /// On v2, moves agentd into `D/supervisor` and enables memory, pids and
    /// cpu for `D`'s children, so that run cgroups can be limited. Called
    /// once by the supervisor before it starts any agent (they inherit the
    /// leaf). Without the controllers, runs still get a cgroup each (killing
    /// it still ends every process), only without limits; the returned
    /// error says why.
    pub fn prepare_supervisor(&mut self) -> Result<(), CgroupError> {
        let Hierarchy::V2 { base, controllers } = self else {
            return Ok(());
        };
        let leaf = base.join(SUPERVISOR_LEAF);
        mkdir(&leaf)?;
        // Move every process still in D (agentd, maybe helpers started
        // with it) into the leaf: D must be empty to delegate controllers.
        let procs = base.join("cgroup.procs");
        for pid in read_pids(&procs).map_err(io_err(&procs))? {
            let _ = write_file(&leaf.join("cgroup.procs"), &pid.to_string());
        }
        let wanted = std::mem::take(controllers);
        let mut enabled = Vec::new();
        for c in &wanted {
            if write_file(&base.join("cgroup.subtree_control"), &format!("+{c}")).is_ok() {
                enabled.push(c.clone());
            }
        }
        *controllers = enabled;
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { base, controllers } => format!(
                "cgroup v2 at {} (controllers: {})",
                base.display(),
                if controllers.is_empty() {
                    "none: runs are killed as a whole but not limited".to_string()
                } else {
                    controllers.join(", ")
                }
            ),
            Hierarchy::V1 { dirs } => format!(
                "cgroup v1 ({})",
                dirs.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
            ),
            Hierarchy::Unavailable { reason } => format!("no cgroup: {reason}"),
        }
    }

    /// The cgroup directories of one state dir: `…/agentd/<tag>`, one per
    /// hierarchy (v2: one).
    pub fn tag_dirs(&self, tag: &str) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2 { base, .. } => vec![base.join("agentd").join(tag)],
            Hierarchy::V1 { dirs } => dirs.iter().map(|(_, d)| d.join("agentd").join(tag)).collect(),
            Hierarchy::Unavailable { .. } => Vec::new(),
        }
    }

    fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2 { .. })
    }
}

/// One agent's place in the tree: where its runs' cgroups are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentScope {
    hierarchy: Hierarchy,
    tag: String,
    agent: String,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

impl AgentScope {
    pub fn new(hierarchy: Hierarchy, tag: &str, agent: &str) -> AgentScope {
        AgentScope {
            hierarchy,
            tag: tag.to_string(),
            agent: agent.to_string(),
        }
    }

    /// Makes the cgroup of one run with `limits`' memory and process
    /// limits and a CPU weight.
    pub fn create_run(&self, limits: &ResourceLimits) -> Result<RunCgroup, CgroupError> {
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("run-{}-{n}", std::process::id());
        let mut run = RunCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            v2: self.hierarchy.is_v2(),
            pids_limited: false,
        };
        match &self.hierarchy {
            Hierarchy::Unavailable { .. } => {}
            Hierarchy::V2 { base, controllers } => {
                let agentd = base.join("agentd");
                let agent = agentd.join(&self.tag).join(&self.agent);
                // Each level hands the controllers down to the next one.
                for dir in [base.as_path(), &agentd, &agentd.join(&self.tag), &agent] {
                    mkdir(dir)?;
                    if dir != base.as_path() {
                        for c in controllers {
                            let _ = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}"));
                        }
                    }
                }
                let dir = agent.join(&name);
                mkdir(&dir)?;
                run.dirs.push(dir.clone());
                let has = |c: &str| controllers.iter().any(|x| x == c);
                if has("memory") {
                    if let Some(m) = limits.memory_bytes {
                        write_file(&dir.join("memory.max"), &m.to_string())?;
                        // No swap to escape to: the limit is the memory.
                        let _ = write_file(&dir.join("memory.swap.max"), "0");
                    }
                }
                if has("pids") {
                    if let Some(p) = limits.processes {
                        write_file(&dir.join("pids.max"), &p.to_string())?;
                        run.pids_limited = true;
                    }
                }
                if has("cpu") {
                    let _ = write_file(&agentd.join("cpu.weight"), &RUNS_CPU_WEIGHT_V2.to_string());
                }
                run.procs.push(open_procs(&dir)?);
            }
            Hierarchy::V1 { dirs } => {
                for (ctrl, own) in dirs {
                    let dir = own.join("agentd").join(&self.tag).join(&self.agent).join(&name);
                    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                    run.dirs.push(dir.clone());
                    match *ctrl {
                        "memory" => {
                            if let Some(m) = limits.memory_bytes {
                                write_file(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                                // memory+swap no larger than memory: when the
                                // host has swap, it is no way around the limit.
                                let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), &m.to_string());
                            }
                        }
                        "pids" => {
                            if let Some(p) = limits.processes {
                                write_file(&dir.join("pids.max"), &p.to_string())?;
                                run.pids_limited = true;
                            }
                        }
                        "cpu" => {
                            let _ = write_file(&own.join("agentd").join("cpu.shares"), &RUNS_CPU_SHARES_V1.to_string());
                        }
                        _ => {}
                    }
                    run.procs.push(open_procs(&dir)?);
                }
            }
        }
        Ok(run)
    }

    /// Kills and removes every cgroup this agent's earlier processes left
    /// behind; returns how many processes were killed.
    pub fn clean_leftovers(&self) -> usize {
        let mut killed = 0;
        for tag_dir in self.hierarchy.tag_dirs(&self.tag) {
            killed += clean_tree(&tag_dir.join(&self.agent), self.hierarchy.is_v2());
        }
        killed
    }
}

/// Kills and removes every cgroup of the state dir tagged `tag` (all its
/// agents' runs); returns how many processes were killed. Only for a
/// supervisor holding the state dir's lock, before it starts agents.
pub fn clean_state_dir(hierarchy: &Hierarchy, tag: &str) -> usize {
    let mut killed = 0;
    for dir in hierarchy.tag_dirs(tag) {
        killed += clean_tree(&dir, hierarchy.is_v2());
    }
    killed
}

/// Kills every process below `dir` and removes the cgroups, deepest first.
/// `dir` itself is removed too; a missing `dir` is nothing to do.
fn clean_tree(dir: &Path, v2: bool) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut killed = 0;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            killed += clean_tree(&e.path(), v2);
        }
    }
    killed += kill_cgroup(dir, v2);
    if let Err(e) = remove(dir) {
        tracing::warn!(cgroup = %dir.display(), "cannot remove a leftover cgroup: {e}");
    }
    killed
}

/// The cgroup of one sandbox run. Dropping it kills whatever is left in
/// it and removes it.
#[derive(Debug)]
pub struct RunCgroup {
    /// One per hierarchy (v2: one).
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, open for writing before the fork.
    procs: Vec<OwnedFd>,
    v2: bool,
    pids_limited: bool,
}

impl RunCgroup {
    /// A run without a cgroup (none available): joining and killing are
    /// no-ops.
    pub fn none() -> RunCgroup {
        RunCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            v2: false,
            pids_limited: false,
        }
    }

    /// What the forked child needs to join this cgroup.
    pub fn join(&self) -> Join {
        Join {
            fds: self.procs.iter().map(|f| f.as_raw_fd()).collect(),
        }
    }

    /// Whether the cgroup's `pids.max` counts the run's processes (then
    /// `RLIMIT_NPROC`, which counts a whole uid, is not needed).
    pub fn limits_processes(&self) -> bool {
        self.pids_limited
    }

    /// Kills every process in the run's cgroup and waits (bounded) until
    /// it is empty. Returns how many were killed.
    pub fn kill(&self) -> usize {
        // Signalling through any one hierarchy kills the process in all.
        let Some(dir) = self.kill_dir() else { return 0 };
        kill_cgroup(dir, self.v2)
    }

    /// The directory whose processes are killed: v2's only one, v1's
    /// first (the freezer's when there is one, see [`V1_CONTROLLERS`]).
    fn kill_dir(&self) -> Option<&Path> {
        self.dirs.first().map(PathBuf::as_path)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if self.dirs.is_empty() {
            return;
        }
        self.kill();
        self.procs.clear();
        for dir in &self.dirs {
            if let Err(e) = remove(dir) {
                tracing::warn!(cgroup = %dir.display(), "cannot remove a run's cgroup (cleaned at the next start): {e}");
            }
        }
    }
}

/// Joins a cgroup from a forked child: plain `write`s of `"0"` to file
/// descriptors opened before the fork.
#[derive(Debug, Default)]
pub struct Join {
    fds: Vec<RawFd>,
}

impl Join {
    /// Async-signal-safe: no allocation, only `write(2)`.
    pub fn apply(&self) -> io::Result<()> {
        for &fd in &self.fds {
            // SAFETY: `fd` is an open `cgroup.procs` owned by the RunCgroup
            // that outlives the spawn; the buffer is a static byte string.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Kills every process in the cgroup at `dir` and waits until it is empty
/// (at most [`KILL_TIMEOUT`]). v2 uses `cgroup.kill` when the kernel has it
/// (5.14+), else freezes the cgroup so nothing forks while each process is
/// signalled; v1 does the same with the freezer hierarchy when `dir` is in
/// it, else signals until nothing is left.
fn kill_cgroup(dir: &Path, v2: bool) -> usize {
    let procs = dir.join("cgroup.procs");
    let Ok(first) = read_pids(&procs) else { return 0 };
    if first.is_empty() {
        return 0;
    }
    let killed = first.len();
    let deadline = Instant::now() + KILL_TIMEOUT;
    if v2 && write_file(&dir.join("cgroup.kill"), "1").is_ok() {
        wait_empty(&procs, deadline);
        return killed;
    }
    let (freeze_file, frozen, thawed) = if v2 {
        (dir.join("cgroup.freeze"), "1", "0")
    } else {
        (dir.join("freezer.state"), "FROZEN", "THAWED")
    };
    let can_freeze = freeze_file.exists() && write_file(&freeze_file, frozen).is_ok();
    if can_freeze {
        // Wait until frozen: a process caught mid-fork would otherwise
        // leave a child behind.
        while Instant::now() < deadline {
            let state = if v2 {
                fs::read_to_string(dir.join("cgroup.events"))
                    .map(|s| s.lines().any(|l| l == "frozen 1"))
                    .unwrap_or(true)
            } else {
                fs::read_to_string(&freeze_file)
                    .map(|s| s.trim() == "FROZEN")
                    .unwrap_or(true)
            };
            if state {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    loop {
        let pids = read_pids(&procs).unwrap_or_default();
        for pid in &pids {
            // SAFETY: the pid was listed in this cgroup a moment ago; a
            // frozen process cannot exit, so it is not recycled meanwhile.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        if can_freeze {
            // Killed processes die when thawed.
            let _ = write_file(&freeze_file, thawed);
        }
        if wait_empty(&procs, Instant::now() + Duration::from_millis(50).min(KILL_TIMEOUT))
            || Instant::now() >= deadline
        {
            break;
        }
        if can_freeze {
            let _ = write_file(&freeze_file, frozen);
        }
    }
    killed
}

/// Polls `cgroup.procs` until it lists nothing or `deadline` passes.
fn wait_empty(procs: &Path, deadline: Instant) -> bool {
    let mut pause = Duration::from_micros(100);
    loop {
        match read_pids(procs) {
            Ok(p) if p.is_empty() => return true,
            Err(_) => return true,
            Ok(_) => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

fn read_pids(procs: &Path) -> io::Result<Vec<libc::pid_t>> {
    Ok(fs::read_to_string(procs)?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.write_all(value.as_bytes()).map_err(io_err(path))
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Removes an empty cgroup; a process that just died may keep it busy
/// for a moment.
fn remove(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn open_procs(dir: &Path) -> Result<OwnedFd, CgroupError> {
    let path = dir.join("cgroup.procs");
    // std opens with O_CLOEXEC: the descriptor never reaches the exec'd
    // program, only the pre-exec code that uses it.
    let f = fs::OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
    Ok(OwnedFd::from(f))
}

fn access_w(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_base_skips_the_supervisor_leaf() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        std::fs::write(root.join("cgroup.controllers"), "").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(root.join("system.slice/agentd.service/supervisor")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            root.join("system.slice/agentd.service/cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for own in [
            "0::/system.slice/agentd.service\n",
            "0::/system.slice/agentd.service/supervisor\n",
        ] {
            match Hierarchy::detect_in(root, own) {
                Hierarchy::V2 { base, controllers } => {
                    assert_eq!(base, root.join("system.slice/agentd.service"));
                    assert_eq!(controllers, ["cpu", "memory", "pids"]);
                }
                other => panic!("{own}: {other:?}"),
            }
        }
    }

    #[test]
    fn v1_uses_own_cgroup_per_controller() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        for c in ["memory", "pids", "cpu"] {
            std::fs::create_dir_all(root.join(c)).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(root.join(c).join("cgroup.procs"), "").unwrap_or_else(|e| panic!("{e}"));
        }
        let own = "9:pids:/a\n4:memory:/b/c\n1:cpu,cpuacct:/\n0::/\n";
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(matches!(Hierarchy::detect_in(root, own), Hierarchy::Unavailable { .. }));
            return;
        }
        assert_eq!(
            Hierarchy::detect_in(root, own),
            Hierarchy::V1 {
                dirs: vec![
                    ("memory", root.join("memory/b/c")),
                    ("pids", root.join("pids/a")),
                    ("cpu", root.join("cpu")),
                ]
            }
        );
    }
}
