//! The zygote agents are forked from: what a forked agent gets, and what
//! happens when the zygote dies.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::daemon::Daemon;
use crate::support::{alive, children_of, tempdir, wait_for, write};

fn config(dir: &std::path::Path, agents: &[&str]) -> std::path::PathBuf {
    let mut s = String::from(
        "shutdown_grace: 2s\ndefaults:\n  model: m\n  restart: {backoff_min: 20ms, backoff_max: 100ms, burst: 5, interval: 30s}\nagents:\n",
    );
    for a in agents {
        s.push_str(&format!("  - name: {a}\n"));
    }
    write(dir, "agentd.yaml", &s)
}

fn read(path: String) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn comm(pid: u32) -> String {
    read(format!("/proc/{pid}/comm")).trim().to_owned()
}

fn ppid(pid: u32) -> Option<u32> {
    read(format!("/proc/{pid}/stat"))
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

fn link(path: String) -> String {
    std::fs::read_link(path)
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The supervisor's child that is the zygote (agents are named `agentd:NAME`).
fn zygote_of(daemon: u32) -> Option<u32> {
    children_of(daemon)
        .into_iter()
        .find(|p| alive(*p) && comm(*p) == "agentd" && read(format!("/proc/{p}/cmdline")).contains("__zygote"))
}

fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| link(e.path().display().to_string()))
        .collect()
}

#[test]
fn agents_are_forked_from_the_zygote_as_the_supervisors_own_children() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["alpha", "beta"]);
    // A NOTIFY_SOCKET that agentd has and its agents must not.
    let notify_path = dir.path().join("notify.sock");
    let _notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let notify = notify_path.to_str().expect("utf-8");
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[("NOTIFY_SOCKET", notify)]);
    let alpha = d.running_pid("alpha");
    let beta = d.running_pid("beta");
    let zygote = zygote_of(d.pid()).expect("a zygote runs beside the agents");

    for (agent, pid) in [("alpha", alpha), ("beta", beta)] {
        // Forked from the zygote (its image, no exec), yet the supervisor's child.
        assert_eq!(comm(pid), format!("agentd:{agent}"));
        // Its command line is an agent's, not the zygote's (ps -f, pgrep -f).
        let cmdline = read(format!("/proc/{pid}/cmdline"));
        let args: Vec<&str> = cmdline.trim_end_matches('\0').split('\0').skip(1).collect();
        assert_eq!(args, ["agent", "--name", agent], "{cmdline:?}");
        assert_eq!(link(format!("/proc/{pid}/exe")), link(format!("/proc/{zygote}/exe")));
        assert_eq!(ppid(pid), Some(d.pid()), "{agent} is the supervisor's child");
        // Its own process group, as exec'd agents have.
        assert_eq!(
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).map(|p| p.as_raw() as u32),
            Ok(pid)
        );
        // Signals: none blocked.
        let status = read(format!("/proc/{pid}/status"));
        assert!(status.contains("SigBlk:\t0000000000000000"), "{status}");
        // Environment: the supervisor's, without systemd's variables.
        assert!(
            read(format!("/proc/{}/environ", d.pid())).contains("NOTIFY_SOCKET="),
            "control: agentd has it"
        );
        assert!(!read(format!("/proc/{pid}/environ")).contains("NOTIFY_SOCKET="));
        // stdin and stdout are pipes to the supervisor, stderr is the supervisor's.
        let fds = fd_targets(pid);
        assert!(link(format!("/proc/{pid}/fd/0")).starts_with("pipe:"), "{fds:?}");
        assert!(link(format!("/proc/{pid}/fd/1")).starts_with("pipe:"), "{fds:?}");
        assert_eq!(
            link(format!("/proc/{pid}/fd/2")),
            link(format!("/proc/{}/fd/2", d.pid()))
        );
        // Not the zygote's socket, nor anything else of the zygote's.
        let zygote_socket = link(format!("/proc/{zygote}/fd/3"));
        assert!(
            zygote_socket.starts_with("socket:"),
            "control: the zygote holds {zygote_socket}"
        );
        assert!(
            !fds.contains(&zygote_socket),
            "{agent} holds the zygote's socket: {fds:?}"
        );
    }
    // Agents answer: the forked process runs the same agent an exec'd one does.
    d.wait_status("both running", |s| {
        s.iter().filter(|a| a.state == "running").count() == 2
    });
}

#[test]
fn a_killed_zygote_leaves_agents_running_and_is_replaced_at_the_next_start() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["alpha", "beta"]);
    let d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let alpha = d.running_pid("alpha");
    let beta = d.running_pid("beta");
    let old = zygote_of(d.pid()).expect("zygote");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill the zygote");
    wait_for(Duration::from_secs(10), || (!alive(old)).then_some(())).expect("the zygote dies");
    // The agents are the supervisor's children, not the zygote's: untouched.
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(alpha) && alive(beta));
    assert_eq!(d.running_pid("alpha"), alpha);

    // The next start finds the zygote gone, says so, starts a new one and forks from it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(alpha as i32), Signal::SIGKILL).expect("kill alpha");
    let s = d.wait_status("alpha back", |s| {
        s.iter()
            .any(|a| a.name == "alpha" && a.state == "running" && a.pid.is_some_and(|p| p != alpha))
    });
    let new_alpha = s.iter().find(|a| a.name == "alpha").and_then(|a| a.pid).expect("pid");
    let log = d.log_text();
    assert!(log.contains(&format!("the zygote (pid {old}) is gone")), "{log}");
    assert!(log.contains("starting a new zygote"), "{log}");
    let new = zygote_of(d.pid()).expect("a new zygote");
    assert_ne!(new, old);
    assert_eq!(comm(new_alpha), "agentd:alpha", "forked, not exec'd");
    assert_eq!(ppid(new_alpha), Some(d.pid()));
    assert_eq!(d.running_pid("beta"), beta, "the other agent is untouched");
    // The old zygote was reaped, not left a zombie.
    assert!(
        std::fs::metadata(format!("/proc/{old}")).is_err(),
        "zygote {old} left behind"
    );
}

#[test]
fn killing_agentd_takes_the_zygote_and_forked_agents_down() {
    let dir = tempdir();
    let cfg = config(dir.path(), &["alpha", "beta"]);
    let mut d = Daemon::start(&cfg, &dir.path().join("state"), &[]);
    let agents = [d.running_pid("alpha"), d.running_pid("beta")];
    let zygote = zygote_of(d.pid()).expect("zygote");
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    for pid in agents.into_iter().chain([zygote]) {
        assert!(
            wait_for(Duration::from_secs(10), || (!alive(pid)).then_some(())).is_some(),
            "{pid} ({}) outlived agentd",
            comm(pid)
        );
    }
}

/// `(soft, hard)` open descriptor limits of `pid`.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = read(format!("/proc/{pid}/limits"));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_owned();
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0))
}

/// Each agent holds three descriptors in the supervisor: 400 agents do not
/// fit in the 1,024 most systems start a process with (before agentd raised
/// its soft limit, starts past the 330th failed with EMFILE). What agentd
/// starts gets the limit agentd was started with back.
#[test]
fn four_hundred_agents_start_under_a_soft_limit_of_1024_descriptors_and_agents_keep_that_limit() {
    const AGENTS: usize = 400;
    let dir = tempdir();
    let names: Vec<String> = (0..AGENTS).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cfg = config(dir.path(), &refs);
    let d = Daemon::start_with_nofile(&cfg, &dir.path().join("state"), (1024, 4096));
    let all = d.wait_status(&format!("all {AGENTS} agents running"), |s| {
        s.len() == AGENTS && s.iter().all(|a| a.state == "running")
    });
    assert!(!d.log_text().contains("Too many open files"), "{}", d.log_text());
    assert_eq!(
        nofile_of(d.pid()),
        (4096, 4096),
        "the supervisor raised its soft limit to the hard one"
    );
    let zygote = zygote_of(d.pid()).expect("a zygote");
    assert_eq!(
        nofile_of(zygote),
        (1024, 4096),
        "the zygote has agentd's original limit"
    );
    let agent = all.iter().find_map(|a| a.pid).expect("an agent's pid");
    assert_eq!(nofile_of(agent), (1024, 4096), "agents have agentd's original limit");
}
