//! Containment: each sandbox run in its own cgroup (v1 as root on the test
//! machines), killed as a whole; leftovers of a dead agent or agentd
//! cleaned; the per-agent workdir quota. Real processes, real cgroups, a
//! real small filesystem (a tmpfs mounted by the test). Every denial is
//! shown against a control where the same action works.
//!
//! Needs root (cgroup v1 and mounting a tmpfs); without it these tests fail
//! loudly, they never skip.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::domain::TaskState;
use agentd::fence::{self, FenceOutcome};
use agentd::ledger::{Ledger, TaskFilter};
use agentd::sandbox::cgroup::Hierarchy;
use agentd::sandbox::contain::{self, Containment};
use agentd::sandbox::quota::Quota;
use agentd::sandbox::{self, Backend, Exposed, RunOutcome, SandboxPolicy};
use nix::sys::signal::Signal;

use crate::support::daemon::Daemon;
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::{wait_for, write};

pub(super) fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "containment tests need root (cgroup v1, tmpfs mounts)"
    );
}

fn policy(backend: Backend) -> SandboxPolicy {
    let text = include_str!("../../sandbox/default.yaml");
    let mut p = agentd::config::load_sandbox_profile_str(Path::new("sandbox/default.yaml"), text)
        .expect("shipped default profile decodes");
    p.backend = backend;
    p.timeout = Duration::from_secs(30);
    sandbox::helper::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_agentd")));
    p
}

/// A cgroup-backed containment for a made-up state dir, as an agent's
/// process gets it.
fn contained(state_dir: &Path, quota: Option<Quota>) -> Containment {
    let h = Hierarchy::detect();
    assert!(
        !matches!(h, Hierarchy::Unavailable { .. }),
        "this machine must offer cgroups: {}",
        h.describe()
    );
    Containment::with_hierarchy(h, state_dir, "tester", quota)
}

fn exposed(containment: Containment) -> Exposed {
    Exposed {
        containment,
        ..Default::default()
    }
}

async fn run(p: &SandboxPolicy, workdir: &Path, script: &str, extra: &Exposed) -> RunOutcome {
    let argv = vec!["bash".to_string(), "-c".into(), script.into()];
    sandbox::run(p, workdir, &argv, extra)
        .await
        .unwrap_or_else(|e| panic!("sandbox {:?}: {e}", p.backend))
}

/// Pids of live processes whose command line contains `marker`.
pub(super) fn with_marker(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !crate::support::alive(pid as u32) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

pub(super) fn kill_all(pids: &[i32]) {
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), Signal::SIGKILL);
    }
}

pub(super) fn marker() -> String {
    // sleep takes a fractional number of seconds: a unique argument finds
    // exactly this test's processes.
    format!(
        "1000.{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// Background processes as fences make them: a subshell's child and nohup.
fn background_script(m: &str) -> String {
    format!("( sleep {m} & ); nohup sleep {m} >/dev/null 2>&1 & sleep 1; echo started")
}

/// Watches, from another thread, for `n` processes carrying `m` while the
/// run lives: the control that shows they were there to be killed.
fn seen_running(m: &str, n: usize) -> std::thread::JoinHandle<bool> {
    let m = m.to_string();
    std::thread::spawn(move || {
        wait_for(Duration::from_secs(10), || (with_marker(&m).len() >= n).then_some(())).is_some()
    })
}

async fn background_processes_die_with_the_run(backend: Backend) {
    require_root();
    let wd = crate::support::sandbox_workdir("wd-");
    let state = crate::support::sandbox_workdir("state-");
    let m = marker();
    let seen = seen_running(&m, 2);
    let out = run(
        &policy(backend),
        wd.path(),
        &background_script(&m),
        &exposed(contained(state.path(), None)),
    )
    .await;
    assert!(out.stdout.contains("started"), "{out:?}");
    assert!(seen.join().unwrap_or(false), "control: the background processes ran");
    let left = with_marker(&m);
    kill_all(&left);
    assert!(left.is_empty(), "processes outlived their run: {left:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn background_processes_of_a_run_never_outlive_it_landlock() {
    background_processes_die_with_the_run(Backend::Landlock).await;
}

#[tokio::test(flavor = "current_thread")]
async fn background_processes_of_a_run_never_outlive_it_bwrap() {
    background_processes_die_with_the_run(Backend::Bwrap).await;
}

/// Landlock's seccomp filter denies setsid and setpgid, and bwrap's PID
/// namespace ends with the run; without either (backend none) a process
/// can leave the run's process group, and only the cgroup still finds it.
#[tokio::test(flavor = "current_thread")]
async fn a_process_that_left_the_process_group_dies_with_the_run_cgroup() {
    require_root();
    let wd = crate::support::sandbox_workdir("wd-");
    let state = crate::support::sandbox_workdir("state-");
    let script = |m: &str| format!("setsid sleep {m} & sleep 0.3; echo started");

    // Control: without a cgroup it survives the run.
    let m = marker();
    let control = run(&policy(Backend::None), wd.path(), &script(&m), &Exposed::default()).await;
    assert!(control.stdout.contains("started"), "{control:?}");
    let left = with_marker(&m);
    kill_all(&left);
    assert!(!left.is_empty(), "control: setsid escapes the process group kill");

    let m = marker();
    let out = run(
        &policy(Backend::None),
        wd.path(),
        &script(&m),
        &exposed(contained(state.path(), None)),
    )
    .await;
    assert!(out.stdout.contains("started"), "{out:?}");
    let left = with_marker(&m);
    kill_all(&left);
    assert!(left.is_empty(), "outlived its run: {left:?}");
}

/// The v2 path on this machine's hybrid layout: the unified hierarchy at
/// /sys/fs/cgroup/unified has no controllers (they are bound to v1), but
/// a run's cgroup there still finds and kills every process with
/// `cgroup.kill`, and is removed.
#[tokio::test(flavor = "current_thread")]
async fn on_cgroup_v2_a_run_is_killed_as_a_whole_with_cgroup_kill() {
    require_root();
    let unified = Path::new("/sys/fs/cgroup/unified");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let h = Hierarchy::detect_in(unified, &own);
    assert!(
        matches!(&h, Hierarchy::V2 { controllers, .. } if controllers.is_empty()),
        "{h:?}"
    );
    let wd = crate::support::sandbox_workdir("wd-");
    let state = crate::support::sandbox_workdir("state-");
    let tag = contain::state_tag(state.path());
    let c = Containment::with_hierarchy(h.clone(), state.path(), "tester", None);
    let m = marker();
    let script = format!("setsid sleep {m} & sleep 0.3; grep '^0::' /proc/self/cgroup");
    let out = run(&policy(Backend::None), wd.path(), &script, &exposed(c.clone())).await;
    assert!(out.stdout.contains(&format!("/agentd/{tag}/tester/run-")), "{out:?}");
    let left = with_marker(&m);
    kill_all(&left);
    assert!(left.is_empty(), "outlived its run: {left:?}");
    let runs = std::fs::read_dir(h.tag_dirs(&tag)[0].join("tester"))
        .map(|d| d.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).count())
        .unwrap_or(0);
    assert_eq!(runs, 0, "run cgroups left behind");
    c.clean_leftovers();
    let _ = std::fs::remove_dir(&h.tag_dirs(&tag)[0]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_leaves_no_cgroup_behind() {
    require_root();
    let wd = crate::support::sandbox_workdir("wd-");
    let state = crate::support::sandbox_workdir("state-");
    let c = contained(state.path(), None);
    // Backend none: landlock keeps /proc/self/cgroup from the code; the
    // cgroup does not depend on the backend.
    let out = run(
        &policy(Backend::None),
        wd.path(),
        "cat /proc/self/cgroup",
        &exposed(c.clone()),
    )
    .await;
    let tag = contain::state_tag(state.path());
    assert!(
        out.stdout.contains(&format!("/agentd/{tag}/tester/run-")),
        "the run was in its own cgroup: {out:?}"
    );
    for dir in Hierarchy::detect().tag_dirs(&tag) {
        let runs: Vec<_> = std::fs::read_dir(dir.join("tester"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(runs.is_empty(), "left behind: {runs:?}");
    }
    // All runs together weigh half of agentd's own cgroup (a fresh
    // cgroup has 1024 shares, the default).
    if let Hierarchy::V1 { dirs } = Hierarchy::detect() {
        let cpu = dirs
            .iter()
            .find(|(c, _)| *c == "cpu")
            .map(|(_, d)| d.join("agentd/cpu.shares"));
        let shares = cpu.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        assert_eq!(shares.trim(), "512");
    }
    c.clean_leftovers();
    for dir in Hierarchy::detect().tag_dirs(&tag) {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Four processes of 800 MiB each, together, in one run.
const FOUR_BIG: &str = "for i in 1 2 3 4; do \
    python3 -c 'import time; b = b\"x\" * (800 << 20); print(\"held\", flush=True); time.sleep(3)' & \
    done; wait; echo done";

#[tokio::test(flavor = "current_thread")]
async fn the_memory_limit_counts_the_whole_run_not_each_process() {
    require_root();
    let wd = crate::support::sandbox_workdir("wd-");
    let state = crate::support::sandbox_workdir("state-");

    // Control: with 4 GiB for the run, all four hold their memory at once.
    let mut roomy = policy(Backend::Landlock);
    roomy.limits.memory_bytes = Some(4 << 30);
    let control = run(&roomy, wd.path(), FOUR_BIG, &exposed(contained(state.path(), None))).await;
    assert_eq!(control.stdout.matches("held").count(), 4, "control: {control:?}");

    // 1 GiB for the run: RLIMIT_AS alone would let each process have its
    // 800 MiB; the run's cgroup cannot hold two of them.
    let mut tight = policy(Backend::Landlock);
    tight.limits.memory_bytes = Some(1 << 30);
    let out = run(&tight, wd.path(), FOUR_BIG, &exposed(contained(state.path(), None))).await;
    let held = out.stdout.matches("held").count();
    assert!(
        // The OOM killer may let another one through once one is killed,
        // never all four together.
        held < 4,
        "{held} processes held 800 MiB each under a 1 GiB run: {out:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_process_limit_counts_the_run_not_the_uid() {
    require_root();
    let base = crate::support::sandbox_workdir("nproc-");
    let wd = base.path().join("work");
    std::fs::create_dir(&wd).expect("workdir");
    // The workdir's owner is who the code runs as (agentd is root here).
    std::os::unix::fs::chown(&wd, Some(65534), Some(65534)).expect("chown");
    let state = crate::support::sandbox_workdir("state-");

    // 40 processes of the same uid elsewhere on the host.
    let m = marker();
    let mut others = Vec::new();
    for _ in 0..40 {
        let child = std::process::Command::new("sleep")
            .arg(&m)
            .uid(65534)
            .gid(65534)
            .spawn()
            .expect("spawn as nobody");
        others.push(child);
    }
    let eight = "for i in $(seq 8); do sleep 5 & done; echo forked; kill $(jobs -p); wait";
    let mut p = policy(Backend::Landlock);
    p.limits.processes = Some(16);

    // Control: RLIMIT_NPROC (no cgroup) counts the uid's 40 processes and
    // refuses the run's forks.
    let argv = vec!["bash".to_string(), "-c".into(), eight.into()];
    let control = sandbox::run(&p, &wd, &argv, &Exposed::default()).await;
    // With the run's cgroup, the same 8 forks fit in its 16.
    let ok = run(&p, &wd, eight, &exposed(contained(state.path(), None))).await;
    // And the cgroup's limit is real: 30 forks do not fit in 16.
    let thirty = "for i in $(seq 30); do sleep 5 & done; echo forked; kill $(jobs -p) 2>/dev/null; wait";
    let denied = run(&p, &wd, thirty, &exposed(contained(state.path(), None))).await;
    let mut roomy = p.clone();
    roomy.limits.processes = Some(64);
    let allowed = run(&roomy, &wd, thirty, &exposed(contained(state.path(), None))).await;

    for mut c in others {
        let _ = c.kill();
        let _ = c.wait();
    }
    // The kernel refuses even to start the run (setresuid or exec fails
    // with EAGAIN), or the forks inside it.
    match &control {
        Err(e) => assert!(e.to_string().contains("Resource temporarily unavailable"), "{e}"),
        Ok(o) => assert!(!o.success(), "control: RLIMIT_NPROC counts the uid: {o:?}"),
    }
    assert!(ok.success() && ok.stdout.contains("forked"), "{ok:?}");
    assert!(
        denied.stderr.contains("fork") && denied.stderr.contains("Resource temporarily unavailable"),
        "{denied:?}"
    );
    assert!(allowed.success() && allowed.stderr.is_empty(), "{allowed:?}");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = crate::support::sandbox_workdir("smallfs-");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t tmpfs");
        SmallFs { dir }
    }

    fn workdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir(&p).expect("workdir");
        crate::support::give_to_sandbox_user(&p);
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

async fn fence_in(workdir: &Path, script: &str, quota: Quota, state: &Path) -> (String, RunOutcome) {
    let text = format!("```bash:execute\n{script}\n```\n");
    let blocks = fence::parse(&text);
    let results = fence::execute(
        &blocks,
        &policy(Backend::Landlock),
        workdir,
        &exposed(contained(state, Some(quota))),
    )
    .await;
    let rendered = results[0].render_for_model();
    match &results[0].outcome {
        FenceOutcome::Ran(o) => (rendered, o.clone()),
        other => panic!("not run: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_fence_writing_past_workdir_size_is_stopped_and_told_why() {
    require_root();
    let fs = SmallFs::mount("64m");
    let state = crate::support::sandbox_workdir("state-");
    let script = "for i in $(seq 40); do head -c 1048576 /dev/zero > f$i; sleep 0.05; done; echo wrote-all";

    // Control: 40 MiB fit in a 48 MiB quota.
    let wd = fs.workdir("control");
    let q = Quota {
        max_bytes: 48 << 20,
        max_files: 1000,
    };
    let (_, control) = fence_in(&wd, script, q, state.path()).await;
    assert!(control.success() && control.stdout.contains("wrote-all"), "{control:?}");
    std::fs::remove_dir_all(&wd).expect("room for the next runs");

    let wd = fs.workdir("limited");
    let q = Quota {
        max_bytes: 8 << 20,
        max_files: 1000,
    };
    let (rendered, out) = fence_in(&wd, script, q, state.path()).await;
    assert!(!out.stdout.contains("wrote-all"), "the run went on: {out:?}");
    assert!(!wd.join("f40").exists(), "stopped before the end");
    assert!(
        out.stopped
            .as_deref()
            .is_some_and(|r| r.contains("limits.workdir_size")),
        "{out:?}"
    );
    assert!(
        rendered.contains("workdir quota is exceeded"),
        "the model is told: {rendered}"
    );
    std::fs::remove_dir_all(&wd).expect("room for the next run");

    // A write too quick for the watch is still reported after the run.
    let wd = fs.workdir("quick");
    let (rendered, out) = fence_in(&wd, "head -c 20971520 /dev/zero > big", q, state.path()).await;
    assert!(
        out.stopped
            .as_deref()
            .is_some_and(|r| r.contains("limits.workdir_size"))
            && rendered.contains("20.0 MiB"),
        "{rendered}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_fence_creating_more_than_workdir_files_is_stopped_and_told_why() {
    require_root();
    let fs = SmallFs::mount("64m");
    let state = crate::support::sandbox_workdir("state-");
    let script = "for i in $(seq 20); do mkdir d$i; (cd d$i && touch $(seq 100)); sleep 0.05; done; echo made-all";

    // Control: 2,020 files fit in 5,000.
    let wd = fs.workdir("control");
    let roomy = Quota {
        max_bytes: 48 << 20,
        max_files: 5000,
    };
    let (_, control) = fence_in(&wd, script, roomy, state.path()).await;
    assert!(control.success() && control.stdout.contains("made-all"), "{control:?}");

    let wd = fs.workdir("limited");
    let tight = Quota {
        max_bytes: 48 << 20,
        max_files: 500,
    };
    let (rendered, out) = fence_in(&wd, script, tight, state.path()).await;
    assert!(!out.stdout.contains("made-all"), "the run went on: {out:?}");
    assert!(
        out.stopped
            .as_deref()
            .is_some_and(|r| r.contains("limits.workdir_files")),
        "{out:?}"
    );
    assert!(rendered.contains("workdir quota is exceeded"), "{rendered}");

    // Over quota already: a run that deletes files is not stopped.
    let (_, cleanup) = fence_in(&wd, "rm -rf d*; echo cleaned", tight, state.path()).await;
    assert!(cleanup.success() && cleanup.stopped.is_none(), "{cleanup:?}");
}

// ---- whole daemon: a dead agent or agentd leaves nothing running ----

const KEY: &str = "sk-test-do-not-log-0123456789";

fn config(dir: &Path, base_url: &str) -> PathBuf {
    write(
        dir,
        "agentd.yaml",
        &format!(
            r#"shutdown_grace: 2s
agents:
  - name: reader
    model: test-model
    system_prompt: You run code.
    llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: 3}}
    restart: {{backoff_min: 20ms, backoff_max: 100ms}}
    sandbox: {{profile: default, timeout: 10m}}
"#
        ),
    )
}

/// A fence that starts background processes and then blocks.
fn stalling_fence(m: &str) -> String {
    format!(
        "Running.\n```bash:execute\n( sleep {m} & ); nohup sleep {m} >/dev/null 2>&1 & echo x > $TMPDIR/mark; sleep {m}\n```\n"
    )
}

fn send(d: &Daemon, text: &str) {
    d.request(&agentd::control::Request::Send {
        agent: "reader".into(),
        text: text.into(),
        wait: false,
    });
}

fn private_tmp_dirs(state: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}{}.", contain::TMP_PREFIX, contain::state_tag(state));
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|e| e.path())
        .collect()
}

fn run_cgroups(state: &Path) -> Vec<PathBuf> {
    let tag = contain::state_tag(state);
    let mut found = Vec::new();
    for dir in Hierarchy::detect().tag_dirs(&tag) {
        for agent in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for run in std::fs::read_dir(agent.path()).into_iter().flatten().flatten() {
                if run.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(run.path());
                }
            }
        }
    }
    found
}

fn three_running(m: &str) -> Option<Vec<i32>> {
    let p = with_marker(m);
    (p.len() >= 3).then_some(p)
}

#[test]
fn kill_9_of_the_agent_mid_fence_leaves_no_process_behind() {
    require_root();
    let m = marker();
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[&stalling_fence(&m)]),
        Reply::stream_text(&["second attempt: done"]),
    ]);
    let dir = crate::support::tempdir();
    let state = dir.path().join("state");
    let cfg = config(dir.path(), &llm.base_url());
    let d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    let pid = d.running_pid("reader");
    send(&d, "go");
    // Control: while the fence runs, its background processes exist.
    let before = wait_for(Duration::from_secs(20), || three_running(&m));
    assert!(
        before.is_some(),
        "the fence's processes never ran; log:\n{}",
        d.log_text()
    );
    assert_eq!(run_cgroups(&state).len(), 4, "one run cgroup per v1 hierarchy");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill agent");
    let gone = wait_for(Duration::from_secs(20), || with_marker(&m).is_empty().then_some(()));
    let left = with_marker(&m);
    kill_all(&left);
    assert!(gone.is_some(), "left running after kill -9 of the agent: {left:?}");
    let clean = wait_for(Duration::from_secs(10), || {
        (run_cgroups(&state).is_empty() && private_tmp_dirs(&state).is_empty()).then_some(())
    });
    assert!(
        clean.is_some(),
        "cgroups {:?}, tmp dirs {:?}",
        run_cgroups(&state),
        private_tmp_dirs(&state)
    );
}

#[test]
fn kill_9_of_agentd_then_restart_cleans_processes_cgroups_and_tmp_dirs() {
    require_root();
    let m = marker();
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[&stalling_fence(&m)]),
        Reply::stream_text(&["after restart: done"]),
    ]);
    let dir = crate::support::tempdir();
    let state = dir.path().join("state");
    let cfg = config(dir.path(), &llm.base_url());
    let mut d = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    send(&d, "go");
    assert!(
        wait_for(Duration::from_secs(20), || three_running(&m)).is_some(),
        "the fence's processes never ran; log:\n{}",
        d.log_text()
    );
    // Both die at once, as when the OOM killer or `kill -9 -PGID` takes
    // them: the agent is stopped first so that it cannot clean up on the
    // SIGTERM agentd's death sends it.
    let agent = d.running_pid("reader");
    let agent = nix::unistd::Pid::from_raw(agent as i32);
    nix::sys::signal::kill(agent, Signal::SIGSTOP).expect("stop agent");
    d.signal(Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    nix::sys::signal::kill(agent, Signal::SIGKILL).expect("kill agent");
    std::thread::sleep(Duration::from_millis(300));
    // Control: what a dead agentd leaves behind (the run's main process
    // dies with the agent; its background processes do not).
    let left = with_marker(&m);
    let cgroups = run_cgroups(&state);
    let tmps = private_tmp_dirs(&state);
    // `d` stays alive (its process is gone): its Drop would clean up.
    if left.is_empty() || cgroups.is_empty() || tmps.is_empty() {
        kill_all(&left);
        panic!(
            "expected leftovers after kill -9 of agentd: processes {left:?}, cgroups {cgroups:?}, tmp dirs {tmps:?}"
        );
    }

    let d2 = Daemon::start(&cfg, &state, &[("TEST_LLM_KEY", KEY)]);
    d2.running_pid("reader");
    let after = with_marker(&m);
    kill_all(&after);
    assert!(after.is_empty(), "still running after restart: {after:?}");
    assert!(run_cgroups(&state).is_empty(), "{:?}", run_cgroups(&state));
    assert!(private_tmp_dirs(&state).is_empty(), "{:?}", private_tmp_dirs(&state));
    let log = d2.log_text();
    assert!(
        log.contains("cleaned what an earlier agentd left behind") && !log.contains("left behind: 0 processes"),
        "{log}"
    );
    // The interrupted task still finishes.
    let done = wait_for(Duration::from_secs(20), || {
        let l = Ledger::open(&state.join(agentd::ledger::FILE_NAME)).ok()?;
        let t = l.list_tasks(&TaskFilter::default()).ok()?;
        t.into_iter().find(|t| t.state == TaskState::Succeeded)
    });
    assert!(done.is_some(), "{}", d2.log_text());
    drop(d);
}
