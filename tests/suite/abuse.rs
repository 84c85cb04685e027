//! agentd under abuse (issue 12): hung children, a flooded control socket,
//! a damaged ledger, closed pipes. Each protection is shown against a
//! control in which the abuse would have worked.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentd::control::Request;
use agentd::domain::Trigger;
use agentd::ledger::Ledger;

use crate::support::daemon::Daemon;
use crate::support::{agentd, agentd_cmd, stderr, tempdir, wait_for, write};

/// One agent with an unusable model (it runs, and fails any task it takes).
fn one_agent(dir: &Path, extra: &str) -> PathBuf {
    write(
        dir,
        "agentd.yaml",
        &format!(
            "shutdown_grace: 1s\ndefaults:\n  model: m\n  restart: {{backoff_min: 20ms, backoff_max: 100ms, burst: 5, interval: 30s}}\nagents:\n  - name: alpha\n{extra}"
        ),
    )
}

/// Sends `text` to `alpha` and waits until its task runs.
fn send_until_running(d: &Daemon, text: &str) -> agentd::domain::TaskId {
    let r = d.request(&Request::Send {
        agent: "alpha".into(),
        text: text.into(),
        wait: false,
    });
    let task = r.result.unwrap_or_default()["task"]
        .as_i64()
        .map(agentd::domain::TaskId)
        .expect("task id");
    d.wait_status("the task to run", |s| s[0].running_task == Some(task));
    task
}

/// A pipe whose reading end is already closed: every write to the other
/// end fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(r);
    w
}

#[test]
fn cli_printers_exit_quietly_into_a_closed_pipe() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let mut l = Ledger::open(&state.join(agentd::ledger::FILE_NAME)).expect("ledger");
    for i in 0..3 {
        let t = Trigger::Message {
            text: format!("hello {i}"),
            from: "test".into(),
        };
        l.enqueue("alpha", &t, None).expect("enqueue");
    }
    drop(l);
    let sd = state.to_str().unwrap_or_default();
    let cfg = one_agent(dir.path(), "");
    let cfg = cfg.to_str().unwrap_or_default();
    for args in [
        vec!["tasks", "--state-dir", sd],
        vec!["tasks", "--state-dir", sd, "--json"],
        vec!["show", "1", "--state-dir", sd],
        vec!["show", "1", "--state-dir", sd, "--json"],
        vec!["check", cfg],
    ] {
        // Control: with a pipe that is read, the command prints.
        let open = agentd(&args);
        assert!(
            open.status.success() && !open.stdout.is_empty(),
            "{args:?}: {}",
            stderr(&open)
        );
        let out = agentd_cmd(&args).stdout(closed_pipe()).output().expect("run agentd");
        assert!(
            out.status.success(),
            "{args:?} into a closed pipe: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn send_wait_to_a_paused_agent_answers_at_once() {
    let dir = tempdir();
    let cfg = one_agent(dir.path(), "");
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[]);
    d.running_pid("alpha");
    let sd = state.to_str().unwrap_or_default();
    d.request(&Request::Pause { agent: "alpha".into() });
    let started = Instant::now();
    let out = agentd(&["send", "--state-dir", sd, "alpha", "hi", "--wait", "--timeout", "60s"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(30), "waited {took:?} for a paused agent");
    assert!(
        stderr(&out).contains("not waiting: the agent is paused"),
        "{}",
        stderr(&out)
    );
    // The task is kept: it runs on resume.
    let r = d.request(&Request::Status);
    assert_eq!(r.result.unwrap_or_default()["agents"][0]["queued"], 1);
}

/// A model endpoint that accepts connections and never answers: a task
/// stays `running` as long as the test wants.
fn silent_model() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", l.local_addr().expect("addr"));
    (l, url)
}

fn ledger_task(state: &Path, id: agentd::domain::TaskId) -> agentd::ledger::Task {
    Ledger::open_read_only(&state.join(agentd::ledger::FILE_NAME))
        .and_then(|l| l.task(id))
        .expect("read the task")
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal");
}

#[test]
fn a_stopped_child_is_killed_restarted_and_its_task_requeued_with_the_cause() {
    let (_model, url) = silent_model();
    let dir = tempdir();
    let cfg = one_agent(
        dir.path(),
        &format!(
            "    llm: {{base_url: \"{url}\", api_key_env: HB_KEY, request_timeout: 5m, max_retries: 0}}\n    heartbeat: {{interval: 100ms, timeout: 1s}}\n"
        ),
    );
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[("HB_KEY", "k")]);
    let pid = d.running_pid("alpha");
    let task = send_until_running(&d, "think hard");

    // Control: a child busy for longer than the timeout (its model call
    // hangs) but answering heartbeats is left alone.
    std::thread::sleep(Duration::from_millis(2500));
    let s = d.agent("alpha").expect("alpha");
    assert_eq!(
        (s.pid, s.running_task, s.restarts),
        (Some(pid), Some(task), 0),
        "{}",
        d.log_text()
    );

    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let stopped = Instant::now();
    let s = d.wait_status("the hung child to be replaced", |s| {
        s[0].state == "running" && s[0].pid.is_some_and(|p| p != pid)
    });
    let detected = stopped.elapsed();
    eprintln!("hung child replaced {detected:?} after SIGSTOP (heartbeat 100ms/1s)");
    let why = s[0].last_error.clone().unwrap_or_default();
    assert!(why.contains("hung: no answer to the heartbeat"), "status says {why:?}");
    assert!(!crate::support::alive(pid), "the stopped child is gone");
    // The task went back to the queue with that cause, and runs again.
    let t = crate::support::wait_for(Duration::from_secs(10), || {
        let t = ledger_task(&state, task);
        (t.attempts == 2).then_some(t)
    })
    .unwrap_or_else(|| panic!("task not retried; log:\n{}", d.log_text()));
    let err = t.error.unwrap_or_default();
    assert!(err.contains("hung") && err.contains("re-queued"), "{err}");
}

#[test]
fn a_slow_reload_parses_off_the_event_loop() {
    let dir = tempdir();
    let cfg = one_agent(dir.path(), "");
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[]);
    let pid = d.running_pid("alpha");
    // A large config with a mistake at its very end: parsing takes seconds
    // (debug build), then the reload is rejected.
    let mut big =
        String::from("shutdown_grace: 1s\ndefaults: {model: m}\nagents:\n  - name: alpha\n    mcp_servers:\n");
    for i in 0..60_000 {
        big.push_str(&format!("      - {{name: s{i}, command: srv, args: [\"{i}\"]}}\n"));
    }
    big.push_str("    limits: {max_turns: many}\n");
    std::fs::write(&cfg, big).expect("write the big config");
    std::thread::sleep(Duration::from_millis(400));
    let socket = d.socket();
    let reload = std::thread::spawn(move || {
        let t = Instant::now();
        let r = agentd::control::client::request(&socket, &Request::Reload, Duration::from_secs(300));
        (t.elapsed(), r)
    });
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while !reload.is_finished() {
        let t = Instant::now();
        assert!(d.request(&Request::Health).ok);
        slowest = slowest.max(t.elapsed());
        answered += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (took, r) = reload.join().expect("reload thread");
    let r = r.expect("reload answered");
    assert!(!r.ok, "the broken config was rejected");
    // Control: the parse was slow enough that a blocked event loop would
    // have kept Health waiting for most of it.
    assert!(took > Duration::from_millis(1500), "the reload took only {took:?}");
    eprintln!("reload took {took:?}; {answered} health requests answered meanwhile, slowest {slowest:?}");
    assert!(slowest < took / 3, "health waited {slowest:?} during a {took:?} reload");
    assert_eq!(d.running_pid("alpha"), pid, "agents keep running");
}

/// Sets `pid`'s soft and hard RLIMIT_NOFILE (as root).
fn set_nofile(pid: u32, soft: u64, hard: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads `lim` and writes nothing (old limit pointer null).
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Lets this test process hold a few thousand sockets.
fn raise_own_nofile() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    assert!(
        hard >= 4096,
        "this test needs a hard descriptor limit of 4096 or more (have {hard})"
    );
}

/// User + system CPU time a process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

fn connect_many(socket: &Path, n: usize) -> Vec<std::os::unix::net::UnixStream> {
    (0..n)
        .map(|i| std::os::unix::net::UnixStream::connect(socket).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect()
}

#[test]
fn twelve_hundred_idle_connections_do_not_lock_operators_out() {
    raise_own_nofile();
    let dir = tempdir();
    let cfg = one_agent(dir.path(), "");
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[]);
    d.running_pid("alpha");
    // systemd's default soft limit.
    set_nofile(d.pid(), 1024, 4096);
    let before = open_sockets(d.pid());
    let flood = connect_many(&d.socket(), 1200);
    // Control: the flood is more than agentd could hold open (1,024 files).
    assert_eq!(flood.len(), 1200);
    // Evicted connections are closed by their own tasks, which a loaded
    // machine may run a little later: wait (bounded) for them to settle.
    let held = || open_sockets(d.pid()).saturating_sub(before);
    let settled = wait_for(Duration::from_secs(20), || (held() <= 256).then_some(()));
    assert!(
        settled.is_some(),
        "agentd holds {} control connections (cap 256)",
        held()
    );
    let cpu0 = cpu_time(d.pid());
    let t = Instant::now();
    let out = agentd(&["status", "--state-dir", state.to_str().unwrap_or_default()]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "status failed under the flood: {}\n{}",
        stderr(&out),
        d.log_text()
    );
    assert!(crate::support::stdout(&out).contains("alpha"));
    d.request(&Request::Restart { agent: "alpha".into() });
    std::thread::sleep(Duration::from_secs(1));
    let cpu = cpu_time(d.pid()) - cpu0;
    eprintln!(
        "status under 1,200 idle connections: {took:?}; agentd CPU over the next ~1 s: {cpu:?}; held {}",
        held()
    );
    assert!(
        cpu < Duration::from_millis(500),
        "agentd used {cpu:?} of CPU while flooded"
    );
    drop(flood);
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    raise_own_nofile();
    let dir = tempdir();
    let cfg = one_agent(dir.path(), "");
    let state = dir.path().join("state");
    let d = Daemon::start(&cfg, &state, &[]);
    d.running_pid("alpha");
    // Leave agentd four free descriptors: fewer than the smallest cap (8),
    // so accepting runs into EMFILE.
    let used = std::fs::read_dir(format!("/proc/{}/fd", d.pid())).expect("fds").count() as u64;
    set_nofile(d.pid(), used + 4, 4096);
    let flood = connect_many(&d.socket(), 64);
    let cpu0 = cpu_time(d.pid());
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_time(d.pid()) - cpu0;
    // Control: agentd really ran out of descriptors.
    let now = std::fs::read_dir(format!("/proc/{}/fd", d.pid())).expect("fds").count() as u64;
    assert!(now >= used + 4, "agentd has {now} of {} descriptors open", used + 4);
    eprintln!("agentd CPU over 2 s out of descriptors: {cpu:?}");
    assert!(
        cpu < Duration::from_millis(400),
        "the accept loop spun: {cpu:?} of CPU in 2 s"
    );
    // Descriptors come back: agentd accepts again by itself.
    set_nofile(d.pid(), 1024, 4096);
    drop(flood);
    let r = crate::support::wait_for(Duration::from_secs(10), || d.try_request(&Request::Health).ok());
    assert!(
        r.is_some_and(|r| r.ok),
        "agentd did not recover; log:\n{}",
        d.log_text()
    );
}

/// A ledger with enough tasks to fill a few dozen pages.
fn filled_ledger(state: &Path) -> PathBuf {
    let path = state.join(agentd::ledger::FILE_NAME);
    let mut l = Ledger::open(&path).expect("ledger");
    for i in 0..400 {
        let t = Trigger::Message {
            text: format!("message {i}: {}", "x".repeat(200)),
            from: "test".into(),
        };
        l.enqueue("alpha", &t, None).expect("enqueue");
    }
    l.checkpoint().expect("checkpoint");
    drop(l);
    path
}

/// Overwrites `len` bytes of page `page` (1-based, 4 KiB pages) at `offset`.
fn damage(path: &Path, page: u64, offset: u64, len: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).expect("open ledger");
    f.seek(SeekFrom::Start((page - 1) * 4096 + offset)).expect("seek");
    f.write_all(&vec![0xA5; len]).expect("write garbage");
}

/// Runs agentd on `state` until it exits (at most 20 s); its exit code and log.
fn run_to_exit(cfg: &Path, state: &Path) -> (Option<i32>, String) {
    let log = state.with_extension("log");
    let mut child = agentd_cmd(&[
        "--state-dir",
        state.to_str().unwrap_or_default(),
        cfg.to_str().unwrap_or_default(),
    ])
    .env("RUST_LOG", "info")
    .stdin(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log"))
    .spawn()
    .expect("spawn agentd");
    let status = crate::support::wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        status.and_then(|s| s.code()),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn a_damaged_ledger_is_refused_before_anything_runs() {
    let dir = tempdir();
    let cfg = one_agent(dir.path(), "");
    // Control: the same ledger undamaged starts, and agentd reaches READY.
    let good = dir.path().join("good");
    filled_ledger(&good);
    let d = Daemon::start(&cfg, &good, &[]);
    d.running_pid("alpha");
    drop(d);

    for (what, page, offset, len) in [
        ("flipped bytes in data pages", 6, 0, 64),
        ("flipped bytes in data pages", 9, 0, 4096),
        ("a corrupt page 2", 2, 0, 4096),
    ] {
        let state = dir.path().join(format!("bad-{page}"));
        let path = filled_ledger(&state);
        damage(&path, page, offset, len);
        let (code, log) = run_to_exit(&cfg, &state);
        assert_eq!(code, Some(1), "{what}: agentd should refuse; log:\n{log}");
        assert!(log.contains("the ledger is damaged"), "{what}: {log}");
        assert!(
            log.contains(".recover") && log.contains("README"),
            "{what}: no way out given: {log}"
        );
        assert!(
            !log.contains("ready:") && !log.contains("agent started"),
            "{what}: half-started: {log}"
        );
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount tmpfs (needs root): {}", stderr(&out));
        Tmpfs(at.to_owned())
    }

    /// Writes a file until the filesystem is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let one = [0u8; 1];
        while f.write_all(&one).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_degrades_agentd_without_lying_and_it_recovers_by_itself() {
    let (_model, url) = silent_model();
    let dir = tempdir();
    let cfg = one_agent(
        dir.path(),
        &format!("    llm: {{base_url: \"{url}\", api_key_env: FULL_KEY, request_timeout: 2s, max_retries: 0}}\n"),
    );
    // The state dir is the tmpfs itself; agentd's log lands next to it.
    let state = dir.path().join("state");
    let fs = Tmpfs::mount(&state, "8m");
    let d = Daemon::start(&cfg, &state, &[("FULL_KEY", "k")]);
    d.running_pid("alpha");
    let sd = state.to_str().unwrap_or_default();
    // Control: with space, a message is recorded and agentd is healthy.
    let task = send_until_running(&d, "first");
    assert_eq!(d.request(&Request::Health).result.unwrap_or_default()["ok"], true);

    // The disk fills while the task runs; the model call then times out,
    // and the task's end cannot be written.
    let filler = fs.fill();
    let out = agentd(&["send", "--state-dir", sd, "alpha", "second"]);
    assert_eq!(out.status.code(), Some(1), "a message on a full disk must be refused");
    assert!(stderr(&out).contains("disk is full"), "{}", stderr(&out));
    let degraded = crate::support::wait_for(Duration::from_secs(10), || {
        let out = agentd(&["status", "--state-dir", sd]);
        let text = crate::support::stdout(&out);
        text.contains("DEGRADED").then_some(text)
    })
    .unwrap_or_else(|| panic!("status never said degraded; log:\n{}", d.log_text()));
    assert!(degraded.contains("database or disk is full"), "{degraded}");
    // The task ended (its model call timed out), and agentd knows it: the
    // agent is free, not stuck on a task the ledger still calls running.
    d.wait_status("the task to end", |s| s[0].running_task.is_none());
    assert_eq!(
        ledger_task(&state, task).state.as_str(),
        "running",
        "the ledger could not be written yet"
    );

    // Space returns: agentd writes what it kept, by itself.
    std::fs::remove_file(filler).expect("free space");
    let t = crate::support::wait_for(Duration::from_secs(10), || {
        let t = ledger_task(&state, task);
        t.state.is_final().then_some(t)
    })
    .unwrap_or_else(|| panic!("the task's end was never written; log:\n{}", d.log_text()));
    assert_eq!(t.state.as_str(), "failed");
    assert!(
        t.error.unwrap_or_default().contains("model"),
        "the kept error was written"
    );
    let h = crate::support::wait_for(Duration::from_secs(10), || {
        let h = d.request(&Request::Health).result.unwrap_or_default();
        (h["ok"] == true).then_some(h)
    });
    assert!(h.is_some(), "agentd stayed degraded; log:\n{}", d.log_text());
    let out = agentd(&["send", "--state-dir", sd, "alpha", "third"]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(d);
}

/// A stdio MCP server (Python) with one subscribable resource. Once
/// subscribed it sends `updates` `resources/updated` notifications as
/// fast as it can, and prints `noise` non-JSON lines on stdout and on stderr.
const FLOOD_SERVER: &str = r#"
import json, sys, threading
updates, noise = int(sys.argv[1]), int(sys.argv[2])
lock = threading.Lock()
def send(msg):
    with lock:
        sys.stdout.write(json.dumps(msg) + "\n"); sys.stdout.flush()
def flood():
    for i in range(noise):
        with lock:
            sys.stdout.write("noise line %d on stdout\n" % i)
        sys.stderr.write("noise line %d on stderr\n" % i)
    sys.stdout.flush(); sys.stderr.flush()
    for i in range(updates):
        send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "flood://x"}})
    with open(sys.argv[3], "w") as f:
        f.write("done")
counter = [0]
for line in sys.stdin:
    msg = json.loads(line)
    m, i = msg.get("method"), msg.get("id")
    if i is None:
        continue
    if m == "initialize":
        r = {"protocolVersion": msg["params"]["protocolVersion"], "serverInfo": {"name": "flood", "version": "1"},
             "capabilities": {"resources": {"subscribe": True}}}
    elif m == "resources/list":
        r = {"resources": [{"uri": "flood://x", "name": "x"}]}
    elif m == "resources/read":
        counter[0] += 1
        r = {"contents": [{"uri": "flood://x", "text": "version %d" % counter[0]}]}
    elif m == "resources/subscribe":
        send({"jsonrpc": "2.0", "id": i, "result": {}})
        threading.Thread(target=flood, daemon=True).start()
        continue
    elif m in ("tools/list",):
        r = {"tools": []}
    elif m in ("prompts/list",):
        r = {"prompts": []}
    else:
        send({"jsonrpc": "2.0", "id": i, "error": {"code": -32601, "message": "no " + str(m)}})
        continue
    send({"jsonrpc": "2.0", "id": i, "result": r})
"#;

/// Runs one agent subscribed to the flood server until the flood is over
/// and 3 s more, then stops agentd; returns how many tasks it made, how
/// long the flood lasted, and agentd's log.
fn flood_run(dir: &Path, name: &str, updates: u32, noise: u32, subscription: &str) -> (usize, Duration, String) {
    let script = write(dir, "flood.py", FLOOD_SERVER);
    let done = dir.join(format!("{name}.done"));
    let cfg = write(
        dir,
        &format!("{name}.yaml"),
        &format!(
            "shutdown_grace: 1s\nagents:\n  - name: alpha\n    model: m\n    llm: {{base_url: \"http://127.0.0.1:1/v1\", max_retries: 0}}\n    mcp_servers: [{{name: flood, command: python3, args: [\"{}\", \"{updates}\", \"{noise}\", \"{}\"]}}]\n    subscriptions: [{subscription}]\n",
            script.display(),
            done.display()
        ),
    );
    let state = dir.join(name);
    let mut d = Daemon::start(&cfg, &state, &[]);
    d.running_pid("alpha");
    let started = Instant::now();
    let finished = crate::support::wait_for(Duration::from_secs(120), || done.exists().then_some(()));
    assert!(finished.is_some(), "the flood never finished; log:\n{}", d.log_text());
    let lasted = started.elapsed();
    // Past the default min_interval, so a held-back update has fired.
    std::thread::sleep(Duration::from_secs(3).max(Duration::from_secs(12).saturating_sub(lasted)));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(20));
    let tasks = Ledger::open_read_only(&state.join(agentd::ledger::FILE_NAME))
        .and_then(|l| {
            l.list_tasks(&agentd::ledger::TaskFilter {
                agent: None,
                state: None,
                limit: None,
                before: None,
            })
        })
        .expect("tasks")
        .len();
    (tasks, lasted, d.log_text())
}

#[test]
fn a_flood_of_resource_updates_is_a_handful_of_tasks() {
    let dir = tempdir();
    // Control: without the rate limit the same flood makes many tasks.
    let (unlimited, _, _) = flood_run(
        dir.path(),
        "unlimited",
        20_000,
        0,
        "{uri: \"flood://x\", debounce: 0ms, min_interval: 0ms}",
    );
    let (limited, lasted, log) = flood_run(dir.path(), "limited", 20_000, 0, "{uri: \"flood://x\", debounce: 0ms}");
    eprintln!(
        "20,000 updates: {unlimited} tasks without min_interval, {limited} with the default 10 s (flood lasted {lasted:?})"
    );
    assert!(unlimited > 10, "the control flood made only {unlimited} tasks");
    // One at once, then at most one per 10 s, the last at the end.
    let bound = 2 + (lasted.as_secs() / 10) as usize;
    assert!(
        limited <= bound,
        "{limited} tasks from a {lasted:?} flood (at most {bound}); log:\n{log}"
    );
    // The last update is not lost: it fired when its interval ended.
    assert!(limited >= 2, "the held-back update never fired; log:\n{log}");
}

#[test]
fn a_flood_of_server_noise_is_a_few_log_lines_with_counts() {
    let dir = tempdir();
    let t = Instant::now();
    let (_, _, log) = flood_run(dir.path(), "noisy", 0, 100_000, "{uri: \"flood://x\"}");
    let took = t.elapsed();
    let stdout_lines = log.matches("non-JSON line on stdout").count();
    let stderr_lines = log.matches("noise line").count() - stdout_lines;
    eprintln!(
        "200,000 noise lines in ~{took:?}: {stdout_lines} stdout warnings and {stderr_lines} stderr lines logged, {} log bytes",
        log.len()
    );
    // Control: the server really printed them (agentd counted what it held back).
    let counted: u64 = log
        .match_indices(" more non-JSON stdout lines suppressed")
        .chain(log.match_indices(" non-JSON stdout lines suppressed at the end"))
        .filter_map(|(i, _)| log[..i].rsplit([' ', '(']).next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    assert!(
        counted + stdout_lines as u64 >= 99_000,
        "only {counted} suppressed lines counted; log tail:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert!(
        stdout_lines < 500 && stderr_lines < 500,
        "{stdout_lines} + {stderr_lines} noise lines reached the log"
    );
}

fn agent_with_model(dir: &Path, name: &str, base_url: &str, limits: &str) -> PathBuf {
    write(
        dir,
        &format!("{name}.yaml"),
        &format!(
            "shutdown_grace: 1s\nagents:\n  - name: alpha\n    model: m\n    llm: {{base_url: \"{base_url}\", api_key_env: T_KEY, request_timeout: 60s, max_retries: 0}}\n    limits: {{{limits}}}\n"
        ),
    )
}

/// Sends a message and waits (up to 60 s) for its task to end.
fn run_message(d: &Daemon, state: &Path) -> agentd::ledger::Task {
    let r = d.request(&Request::Send {
        agent: "alpha".into(),
        text: "go".into(),
        wait: false,
    });
    let id = r.result.unwrap_or_default()["task"]
        .as_i64()
        .map(agentd::domain::TaskId)
        .expect("task id");
    crate::support::wait_for(Duration::from_secs(60), || {
        let t = ledger_task(state, id);
        t.state.is_final().then_some(t)
    })
    .unwrap_or_else(|| panic!("task {id} did not end; log:\n{}", d.log_text()))
}

fn tool_steps(state: &Path, task: agentd::domain::TaskId) -> (usize, Vec<serde_json::Value>) {
    let steps = Ledger::open_read_only(&state.join(agentd::ledger::FILE_NAME))
        .and_then(|l| l.steps(task))
        .expect("steps");
    let tools = steps.iter().filter(|s| s.kind == "tool").count();
    let capped = steps
        .iter()
        .filter(|s| s.kind == "tool_calls_capped")
        .map(|s| s.payload.clone())
        .collect();
    (tools, capped)
}

#[test]
fn a_reply_with_a_thousand_tool_calls_runs_only_the_cap() {
    use crate::support::llm_server::{LlmServer, Reply};
    let calls: Vec<(String, String)> = (0..1000).map(|i| (format!("call_{i}"), "{}".to_owned())).collect();
    let calls: Vec<(&str, &str, &str)> = calls.iter().map(|(id, a)| (id.as_str(), "nope", a.as_str())).collect();
    let dir = tempdir();
    let mut ran = Vec::new();
    for (name, limits) in [("control", "max_tool_calls: 5000"), ("capped", "")] {
        let llm = LlmServer::start(vec![Reply::stream_tool_calls(&calls), Reply::stream_text(&["done"])]);
        let cfg = agent_with_model(dir.path(), name, &llm.base_url(), limits);
        let state = dir.path().join(name);
        let d = Daemon::start(&cfg, &state, &[("T_KEY", "k")]);
        d.running_pid("alpha");
        let t = run_message(&d, &state);
        assert_eq!(t.state.as_str(), "succeeded", "{:?}; log:\n{}", t.error, d.log_text());
        // Every call was answered in the next request, run or not.
        let second = llm.requests().get(1).map(|r| r.json()).expect("a second model request");
        let answers = second["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "tool").count())
            .unwrap_or(0);
        assert_eq!(
            answers,
            1000,
            "{name}: every tool call needs an answer: {}",
            &second.to_string()[..2000.min(second.to_string().len())]
        );
        ran.push(tool_steps(&state, t.id));
    }
    assert_eq!(ran[0].0, 1000, "control: without the cap all 1,000 run");
    assert_eq!(ran[1].0, 32, "the default cap runs 32");
    assert_eq!(ran[1].1.len(), 1);
    assert_eq!(ran[1].1[0]["not_run"], 968);
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_20_mb_reply_is_stored_capped_and_never_crosses_the_supervisor_whole() {
    use crate::support::llm_server::{LlmServer, Reply};
    let big = "All work and no play makes Jack a dull boy.\n".repeat(20 * 1024 * 1024 / 44);
    let pieces: Vec<&str> = big
        .as_bytes()
        .chunks(1 << 20)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    let llm = LlmServer::start(vec![Reply::stream_text(&pieces)]);
    let dir = tempdir();
    let cfg = agent_with_model(dir.path(), "big", &llm.base_url(), "");
    let state = dir.path().join("big");
    let d = Daemon::start(&cfg, &state, &[("T_KEY", "k")]);
    d.running_pid("alpha");
    let before = peak_rss_kib(d.pid());
    let t = run_message(&d, &state);
    let after = peak_rss_kib(d.pid());
    eprintln!(
        "supervisor peak RSS {before} KiB before, {after} KiB after a {} MB reply",
        big.len() / 1_000_000
    );
    assert_eq!(
        t.state.as_str(),
        "succeeded",
        "{:?}; {} requests: {:?}\nlog:\n{}",
        t.error,
        llm.request_count(),
        llm.requests()
            .iter()
            .map(|r| r.body.chars().take(300).collect::<String>())
            .collect::<Vec<_>>(),
        d.log_text()
    );
    let result = t.result.unwrap_or_default();
    // Control: the reply really was 20 MB; the note says how much was left out.
    let note = format!("[{} more bytes]", big.len() - 64 * 1024);
    assert!(
        result.ends_with(&note),
        "stored result ends {:?}",
        &result[result.len().saturating_sub(80)..]
    );
    assert!(result.len() < 70 * 1024);
    assert!(
        after - before < 16 * 1024,
        "the supervisor grew by {} KiB for a 20 MB reply",
        after - before
    );
}
