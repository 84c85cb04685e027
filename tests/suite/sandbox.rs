//! The escape suite: every test first shows an action succeeds without the
//! sandbox (the `none` backend, same limits and environment), then that the
//! backend blocks it. The same checks run against landlock and bwrap
//! (`suite::sandbox::landlock::*`, `suite::sandbox::bwrap::*`).
//!
//! Needs bubblewrap installed and a kernel with Landlock ABI >= 4; without
//! them these tests fail (loudly), they never skip.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::sandbox::{self, Backend, RunOutcome, SandboxPolicy};
use tempfile::TempDir;

use crate::support::wait_for;

/// The shipped default profile with the backend under test.
fn policy(backend: Backend) -> SandboxPolicy {
    let text = include_str!("../../sandbox/default.yaml");
    let mut p = agentd::config::load_sandbox_profile_str(Path::new("sandbox/default.yaml"), text)
        .expect("shipped default profile decodes");
    p.backend = backend;
    p.timeout = Duration::from_secs(20);
    // bwrap+landlock's inner half is the agentd binary, not this test binary.
    sandbox::helper::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_agentd")));
    p
}

fn sh(script: &str) -> Vec<String> {
    vec!["bash".into(), "-c".into(), script.into()]
}

fn py(code: &str) -> Vec<String> {
    vec!["python3".into(), "-c".into(), code.into()]
}

async fn run(p: &SandboxPolicy, workdir: &Path, argv: &[String]) -> RunOutcome {
    sandbox::run(p, workdir, argv, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("sandbox {:?}: {e}", p.backend))
}

/// Runs `argv` without isolation (control) and under `backend`.
async fn control_and_sandboxed(backend: Backend, workdir: &Path, argv: &[String]) -> (RunOutcome, RunOutcome) {
    let control = run(&policy(Backend::None), workdir, argv).await;
    let sandboxed = run(&policy(backend), workdir, argv).await;
    (control, sandboxed)
}

async fn write_outside_workdir(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let outside = crate::support::sandbox_workdir("outside-");
    let target = outside.path().join("escaped");
    let argv = sh(&format!("echo pwned > {}", target.display()));

    let control = run(&policy(Backend::None), wd.path(), &argv).await;
    assert!(control.success(), "control: {control:?}");
    assert!(target.exists(), "control must be able to write outside");
    std::fs::remove_file(&target).unwrap();

    let sandboxed = run(&policy(backend), wd.path(), &argv).await;
    assert!(!sandboxed.success(), "{sandboxed:?}");
    assert!(!target.exists(), "{backend:?} let a write outside the workdir through");

    // Writing inside the workdir and TMPDIR still works.
    let ok = run(
        &policy(backend),
        wd.path(),
        &sh("echo a > inside && echo b > \"$TMPDIR/t\" && cat inside"),
    )
    .await;
    assert_eq!(ok.stdout, "a\n", "{ok:?}");
    assert!(wd.path().join("inside").exists());
}

async fn read_secret_outside_allow_list(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let outside = crate::support::sandbox_workdir("secret-");
    let secret = outside.path().join("api-key");
    std::fs::write(&secret, "sk-TOPSECRET").unwrap();
    let argv = sh(&format!("cat {}", secret.display()));
    let (control, sandboxed) = control_and_sandboxed(backend, wd.path(), &argv).await;
    assert!(control.stdout.contains("sk-TOPSECRET"), "control: {control:?}");
    assert!(!sandboxed.success(), "{sandboxed:?}");
    assert!(
        !sandboxed.stdout.contains("TOPSECRET"),
        "{backend:?} leaked the secret: {sandboxed:?}"
    );
}

/// Whether a connection is waiting in the listener's backlog.
fn accepted(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    listener.accept().is_ok()
}

async fn tcp_connect_to_loopback_listener(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let argv = sh(&format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"));

    let control = run(&policy(Backend::None), wd.path(), &argv).await;
    assert_eq!(control.stdout, "connected\n", "control: {control:?}");
    assert!(accepted(&listener), "control connection must reach the listener");

    let sandboxed = run(&policy(backend), wd.path(), &argv).await;
    assert!(!sandboxed.success(), "{sandboxed:?}");
    assert!(!sandboxed.stdout.contains("connected"));
    assert!(!accepted(&listener), "{backend:?} let a TCP connection through");
}

/// A DNS query for example.com, as a resolver would send it.
const DNS_QUERY: &str =
    "b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01'";

fn received(sock: &UdpSocket) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut buf = [0u8; 512];
    sock.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

async fn udp_dns_send(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = dns.local_addr().unwrap().port();
    let argv = py(&format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.sendto({DNS_QUERY}, ('127.0.0.1', {port}))\nprint('sent')"
    ));

    let control = run(&policy(Backend::None), wd.path(), &argv).await;
    assert_eq!(control.stdout, "sent\n", "control: {control:?}");
    let got = received(&dns).expect("control datagram must arrive");
    assert!(got.windows(7).any(|w| w == b"example"));

    let sandboxed = run(&policy(backend), wd.path(), &argv).await;
    assert!(
        received(&dns).is_none(),
        "{backend:?} let a UDP datagram out: {sandboxed:?}"
    );
}

async fn symlink_out_of_workdir(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let outside = crate::support::sandbox_workdir("outside-");
    std::fs::write(outside.path().join("secret"), "sk-VIA-LINK").unwrap();
    std::os::unix::fs::symlink(outside.path(), wd.path().join("link")).unwrap();
    let argv = sh("cat link/secret; echo written > link/new");

    let control = run(&policy(Backend::None), wd.path(), &argv).await;
    assert!(control.stdout.contains("sk-VIA-LINK"), "control: {control:?}");
    assert!(outside.path().join("new").exists());
    std::fs::remove_file(outside.path().join("new")).unwrap();

    let sandboxed = run(&policy(backend), wd.path(), &argv).await;
    assert!(
        !sandboxed.stdout.contains("VIA-LINK"),
        "{backend:?} read through a symlink: {sandboxed:?}"
    );
    assert!(
        !outside.path().join("new").exists(),
        "{backend:?} wrote through a symlink"
    );
}

/// Processes of `uid` alive right now.
fn processes_of(uid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse::<u32>().ok())
                == Some(uid)
        })
        .count()
}

/// An otherwise unused uid: the limit counts every process of the user,
/// so the test must own all of them.
const TEST_UID: u32 = 64_999;

/// The kernel never enforces RLIMIT_NPROC for uid 0, so the sandbox runs
/// code as the workdir's owner when agentd is root: give the workdir to
/// an unprivileged uid for this test.
fn workdir_owned_by_test_uid() -> TempDir {
    let wd = crate::support::sandbox_workdir("wd-uid-");
    let is_root = unsafe { libc::geteuid() } == 0;
    assert!(
        is_root,
        "the fork bomb test needs root to hand the workdir to another uid"
    );
    std::os::unix::fs::chown(wd.path(), Some(TEST_UID), Some(TEST_UID)).unwrap();
    // The parent test dir must be traversable by that uid.
    let parent = wd.path().parent().unwrap();
    let mode = std::fs::metadata(parent).unwrap().permissions().mode();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
    wd
}

/// The fork bomb tests share TEST_UID, whose process count is what the
/// limit counts: they must not overlap.
static TEST_UID_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn wait_until_test_uid_idle() {
    let idle = wait_for(Duration::from_secs(10), || (processes_of(TEST_UID) == 0).then_some(()));
    assert!(
        idle.is_some(),
        "{} processes of uid {TEST_UID} still running",
        processes_of(TEST_UID)
    );
}

async fn fork_bomb_bounded_by_process_limit(backend: Backend) {
    let _serial = TEST_UID_LOCK.lock().await;
    wait_until_test_uid_idle();
    let wd = workdir_owned_by_test_uid();
    let limit = 32;
    // Forks 200 children that sleep, and reports how many forks worked.
    let spawn_200 = py(
        "import os, time\nn = 0\nfor i in range(200):\n    try:\n        pid = os.fork()\n    \
         except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    \
         n += 1\nprint(n)",
    );
    let mut control_policy = policy(Backend::None);
    control_policy.limits.processes = None;
    let control = run(&control_policy, wd.path(), &spawn_200).await;
    assert_eq!(control.stdout.trim(), "200", "control: {control:?}");

    wait_until_test_uid_idle();
    let mut p = policy(backend);
    p.limits.processes = Some(limit);
    let sandboxed = run(&p, wd.path(), &spawn_200).await;
    let forked: u64 = sandboxed
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sandboxed:?}"));
    assert!(forked < limit, "{backend:?} forked {forked} with a limit of {limit}");

    // A real fork bomb: bounded by the limit, ended by the timeout, and
    // nothing of it survives.
    wait_until_test_uid_idle();
    p.timeout = Duration::from_secs(3);
    let bomb = run(&p, wd.path(), &sh("bomb() { bomb | bomb & }; bomb; wait")).await;
    assert!(bomb.timed_out || bomb.exit_code.is_some(), "{bomb:?}");
    wait_until_test_uid_idle();
}

async fn endless_output_capped(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let one_mb = sh("head -c 1000000 /dev/zero | tr '\\0' x; echo; echo THE-END");
    let mut control_policy = policy(Backend::None);
    control_policy.limits.output_bytes = 4 << 20;
    let control = run(&control_policy, wd.path(), &one_mb).await;
    assert!(
        !control.truncated && control.stdout.len() > 1_000_000,
        "control was cut"
    );

    let mut p = policy(backend);
    p.limits.output_bytes = 64 << 10;
    let capped = run(&p, wd.path(), &one_mb).await;
    assert!(capped.truncated, "{backend:?}");
    assert!(
        capped.stdout.len() < (64 << 10) + 200,
        "{} bytes kept",
        capped.stdout.len()
    );
    assert!(capped.stdout.starts_with("xxxx"));
    assert!(capped.stdout.ends_with("THE-END\n"), "the tail must survive");
    assert!(capped.stdout.contains("agentd cut"), "the cut must be noted");

    p.timeout = Duration::from_secs(2);
    let endless = run(&p, wd.path(), &sh("yes")).await;
    assert!(
        endless.timed_out && endless.truncated,
        "{backend:?}: {:?}",
        endless.stderr
    );
    assert!(endless.stdout.len() < (64 << 10) + 200);
}

/// `sleep MARKER` processes (ours: the marker is unique).
fn pids_with(marker: &str) -> Vec<i32> {
    let wanted = format!("sleep\0{marker}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).ends_with(&wanted).then_some(pid)
        })
        .filter(|pid| crate::support::alive(*pid as u32))
        .collect()
}

fn running_with(marker: &str) -> bool {
    !pids_with(marker).is_empty()
}

fn unique_sleep() -> String {
    // sleep accepts fractional seconds: a unique duration marks our processes.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("300.{n:09}")
}

async fn sleep_past_timeout_killed_with_children(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let marker = unique_sleep();
    let script = format!("sleep {marker} & sleep {marker}; echo never");

    // Control: killing only the main process leaves the child running.
    let mut naive = std::process::Command::new("bash")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || running_with(&marker).then_some(())).is_some());
    naive.kill().unwrap();
    naive.wait().unwrap();
    assert!(
        running_with(&marker),
        "control: the background sleep should survive a naive kill"
    );
    for pid in pids_with(&marker) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(wait_for(Duration::from_secs(5), || (!running_with(&marker)).then_some(())).is_some());

    let mut p = policy(backend);
    p.timeout = Duration::from_secs(1);
    let o = run(&p, wd.path(), &sh(&script)).await;
    assert!(o.timed_out, "{o:?}");
    assert_eq!(o.signal, Some(libc::SIGKILL), "{o:?}");
    assert!(!o.stdout.contains("never"));
    let gone = wait_for(Duration::from_secs(5), || (!running_with(&marker)).then_some(()));
    assert!(
        gone.is_some(),
        "{backend:?} left a child of the timed-out command running"
    );
}

async fn no_new_privs_and_empty_environment(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let probe = "import ctypes, os\nlibc = ctypes.CDLL(None)\n\
                 print(libc.prctl(39, 0, 0, 0, 0))\nprint(sorted(os.environ))";
    // Control: a plain child of this test process inherits its environment
    // (cargo sets CARGO_* for tests) and has no_new_privs off.
    let plain = std::process::Command::new("python3")
        .args(["-c", probe])
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(plain.starts_with("0\n") && plain.contains("CARGO"), "control: {plain}");

    let o = run(&policy(backend), wd.path(), &py(probe)).await;
    // bwrap's --chdir sets PWD (the workdir): harmless, nothing of ours.
    let stdout = o.stdout.replace("'PWD', ", "");
    assert_eq!(stdout, "1\n['HOME', 'LANG', 'PATH', 'TMPDIR']\n", "{backend:?}: {o:?}");
}

async fn bash_and_python_run(backend: Backend) {
    let wd = crate::support::sandbox_workdir("wd-");
    let o = run(
        &policy(backend),
        wd.path(),
        &sh("set -e; echo hi | tr a-z A-Z; ls /usr >/dev/null; pwd"),
    )
    .await;
    assert_eq!(
        o.stdout,
        format!("HI\n{}\n", wd.path().canonicalize().unwrap().display()),
        "{o:?}"
    );
    let o = run(
        &policy(backend),
        wd.path(),
        &py("import json, sys; print(json.dumps({'v': sys.version_info[0]}))"),
    )
    .await;
    assert_eq!(o.stdout, "{\"v\": 3}\n", "{o:?}");
    assert_eq!(o.stderr, "", "python must start cleanly under the default profile");
}

macro_rules! escape_suite {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "current_thread")]
            async fn blocks_write_outside_workdir() {
                write_outside_workdir($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn blocks_reading_secret_outside_allow_list() {
                read_secret_outside_allow_list($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn blocks_tcp_connect_to_loopback_listener() {
                tcp_connect_to_loopback_listener($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn blocks_udp_dns_send() {
                udp_dns_send($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn blocks_symlink_out_of_workdir() {
                symlink_out_of_workdir($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn bounds_fork_bomb_by_process_limit() {
                fork_bomb_bounded_by_process_limit($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn caps_endless_output() {
                endless_output_capped($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn timeout_kills_sleep_and_its_children() {
                sleep_past_timeout_killed_with_children($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn sets_no_new_privs_and_empty_environment() {
                no_new_privs_and_empty_environment($backend).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn runs_bash_and_python_under_default_profile() {
                bash_and_python_run($backend).await
            }
        }
    };
}

escape_suite!(landlock, Backend::Landlock);
escape_suite!(bwrap, Backend::Bwrap);
escape_suite!(bwrap_landlock, Backend::BwrapLandlock);

#[test]
fn landlock_is_enforceable_on_this_kernel() {
    let abi = sandbox::landlock::kernel_abi();
    assert!(
        abi >= 4,
        "Landlock ABI {abi}: the landlock backend cannot enforce the default profile here"
    );
}

#[test]
fn shipped_profiles_decode_with_the_documented_backends() {
    for (name, backend, network) in [
        ("default", Backend::Landlock, false),
        ("strict", Backend::BwrapLandlock, false),
        ("networked", Backend::Landlock, true),
    ] {
        let (p, _) = agentd::config::resolve_sandbox_profile(name, None).expect(name);
        assert_eq!((p.backend, p.network.shares_host()), (backend, network), "{name}");
        assert!(!p.best_effort, "{name}");
        assert!(p.read_only.contains(&PathBuf::from("/usr")), "{name}");
        assert!(
            !p.read_only.contains(&PathBuf::from("/etc")),
            "{name}: /etc/shadow must stay out"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn landlock_without_network_lets_unix_sockets_and_workdir_io_work() {
    let wd = crate::support::sandbox_workdir("wd-");
    let o = run(
        &policy(Backend::Landlock),
        wd.path(),
        &py("import socket\na, b = socket.socketpair()\na.send(b'ok')\nprint(b.recv(2).decode())"),
    )
    .await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn networked_profile_allows_tcp_connect() {
    let wd = crate::support::sandbox_workdir("wd-");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (p, _) = agentd::config::resolve_sandbox_profile("networked", None).unwrap();
    let o = run(
        &p,
        wd.path(),
        &sh(&format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")),
    )
    .await;
    assert_eq!(o.stdout, "connected\n", "{o:?}");
    assert!(accepted(&listener));
}

#[tokio::test(flavor = "current_thread")]
async fn extra_read_only_paths_are_readable_but_not_writable() {
    let wd = crate::support::sandbox_workdir("wd-");
    let skills = crate::support::sandbox_workdir("skills-");
    std::fs::write(skills.path().join("SKILL.md"), "use the force").unwrap();
    for backend in [Backend::Landlock, Backend::Bwrap, Backend::BwrapLandlock] {
        let argv = sh(&format!("cat {0}/SKILL.md; echo x > {0}/new", skills.path().display()));
        let o = sandbox::run(
            &policy(backend),
            wd.path(),
            &argv,
            &sandbox::Exposed {
                read_only: vec![skills.path().to_path_buf()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(o.stdout, "use the force", "{backend:?}: {o:?}");
        assert!(!skills.path().join("new").exists(), "{backend:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_missing_command_is_a_spawn_error_or_exit_127() {
    let wd = crate::support::sandbox_workdir("wd-");
    let argv = vec!["definitely-not-a-command-agentd".to_string()];
    assert!(matches!(
        sandbox::run(&policy(Backend::Landlock), wd.path(), &argv, &Default::default()).await,
        Err(sandbox::SandboxError::Spawn { .. })
    ));
    let o = run(&policy(Backend::Bwrap), wd.path(), &argv).await;
    assert!(!o.success(), "{o:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn relative_policy_paths_are_refused() {
    let wd = crate::support::sandbox_workdir("wd-");
    let mut p = policy(Backend::Landlock);
    p.read_only.push(PathBuf::from("usr/lib"));
    let e = sandbox::run(&p, wd.path(), &sh("true"), &Default::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must be absolute"), "{e}");
}

#[test]
fn cli_runs_a_command_under_a_builtin_profile_and_returns_its_status() {
    let wd = crate::support::sandbox_workdir("wd-");
    sandbox::helper::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_agentd")));
    let args = |profile: &str, cmd: &[&str]| agentd::cli::sandbox::SandboxRunArgs {
        profile: profile.into(),
        workdir: Some(wd.path().to_path_buf()),
        config: None,
        uid: None,
        command: cmd.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(
        agentd::cli::sandbox::run(&args("default", &["sh", "-c", "exit 7"])).unwrap(),
        7
    );
    let outside = crate::support::sandbox_workdir("outside-");
    let touch = format!("touch {}/x", outside.path().display());
    assert_ne!(
        agentd::cli::sandbox::run(&args("default", &["sh", "-c", &touch])).unwrap(),
        0
    );
    assert!(!outside.path().join("x").exists());
    assert_eq!(
        agentd::cli::sandbox::run(&args("strict", &["sh", "-c", "exit 0"])).unwrap(),
        0
    );
    let e = agentd::cli::sandbox::run(&args("no-such-profile", &["true"])).unwrap_err();
    assert!(format!("{e:#}").contains("no-such-profile"), "{e:#}");
}

#[test]
fn cli_takes_profiles_from_the_sandbox_dir_next_to_the_config() {
    let wd = crate::support::sandbox_workdir("wd-");
    let cfg = crate::support::sandbox_workdir("cfg-");
    std::fs::create_dir(cfg.path().join("sandbox")).unwrap();
    std::fs::write(
        cfg.path().join("sandbox/quick.yaml"),
        "backend: landlock\nread_only: [/usr, /bin, /lib, /lib64, /etc/ld.so.cache]\ntimeout: 1s\n",
    )
    .unwrap();
    let args = agentd::cli::sandbox::SandboxRunArgs {
        profile: "quick".into(),
        workdir: Some(wd.path().to_path_buf()),
        config: Some(cfg.path().join("config.yaml")),
        uid: None,
        command: vec!["sleep".into(), "5".into()],
    };
    assert_eq!(
        agentd::cli::sandbox::run(&args).unwrap(),
        124,
        "timed out like timeout(1)"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bwrap_landlock_applies_landlock_inside_the_namespace() {
    // bwrap mounts a /proc of its own; only landlock (not in the allow-list)
    // can make it unreadable.
    let wd = crate::support::sandbox_workdir("wd-");
    let argv = sh("grep -c NoNewPrivs /proc/self/status");
    let bwrap_only = run(&policy(Backend::Bwrap), wd.path(), &argv).await;
    assert_eq!(bwrap_only.stdout, "1\n", "{bwrap_only:?}");
    let both = run(&policy(Backend::BwrapLandlock), wd.path(), &argv).await;
    assert!(!both.success() && both.stderr.contains("Permission denied"), "{both:?}");
}

#[test]
fn cli_args_take_the_command_after_a_double_dash() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: agentd::cli::sandbox::SandboxRunArgs,
    }
    let cli = Cli::try_parse_from(["agentd", "strict", "--workdir", "/srv/a", "--", "sh", "-c", "ls --all"]).unwrap();
    assert_eq!(cli.run.profile, "strict");
    assert_eq!(cli.run.workdir, Some(PathBuf::from("/srv/a")));
    assert_eq!(cli.run.command, ["sh", "-c", "ls --all"]);
    assert!(
        Cli::try_parse_from(["agentd", "default"]).is_err(),
        "a command is required"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn landlock_keeps_every_process_in_the_group_the_timeout_kills() {
    let wd = crate::support::sandbox_workdir("wd-");
    let marker = unique_sleep();
    let argv = py(&format!(
        "import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\nprint('started')"
    ));
    // Control: without the sandbox a new session escapes the group kill.
    let control = run(&policy(Backend::None), wd.path(), &argv).await;
    assert_eq!(control.stdout, "started\n", "control: {control:?}");
    assert!(running_with(&marker), "control: the new session should survive");
    for pid in pids_with(&marker) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    let sandboxed = run(&policy(Backend::Landlock), wd.path(), &argv).await;
    assert!(!sandboxed.success(), "setsid must be refused: {sandboxed:?}");
    let gone = wait_for(Duration::from_secs(5), || (!running_with(&marker)).then_some(()));
    assert!(gone.is_some(), "a process left the sandbox's process group");
}

#[test]
fn the_agentd_binary_is_its_own_landlock_helper() {
    // What bwrap runs inside the namespace for bwrap+landlock; here without
    // bwrap, so the rules apply to host paths directly.
    let wd = crate::support::sandbox_workdir("wd-");
    let outside = crate::support::sandbox_workdir("outside-");
    std::fs::write(outside.path().join("secret"), "sk-HELPER").unwrap();
    let wd_s = wd.path().to_str().unwrap();
    let helper = |script: &str| {
        let mut args = vec![sandbox::helper::SUBCOMMAND, "--rw", wd_s];
        for p in ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"] {
            args.extend(["--ro", p]);
        }
        args.extend(["--", "sh", "-c", script]);
        crate::support::agentd(&args)
    };
    let ok = helper(&format!("echo in > {wd_s}/f && cat {wd_s}/f"));
    assert_eq!(crate::support::stdout(&ok), "in\n", "{}", crate::support::stderr(&ok));
    let denied = helper(&format!("cat {}/secret", outside.path().display()));
    assert!(!denied.status.success() && !crate::support::stdout(&denied).contains("HELPER"));
    let bad = crate::support::agentd(&[sandbox::helper::SUBCOMMAND, "--bogus"]);
    assert_eq!(bad.status.code(), Some(126), "{}", crate::support::stderr(&bad));
}

#[test]
fn agentd_sandbox_run_passes_output_and_exit_status_through() {
    let wd = crate::support::sandbox_workdir("wd-");
    let out = crate::support::agentd(&[
        "sandbox",
        "run",
        "default",
        "--workdir",
        wd.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo hello; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", crate::support::stderr(&out));
    assert_eq!(crate::support::stdout(&out), "hello\n");
    let err = crate::support::stderr(&out);
    assert!(
        err.contains("oops\n") && err.contains("exit 3") && err.contains("backend landlock"),
        "{err}"
    );
}

#[test]
fn agentd_sandbox_run_strict_uses_agentd_itself_as_the_landlock_helper() {
    // No set_helper_exe here: the real binary finds itself.
    let wd = crate::support::sandbox_workdir("wd-");
    let outside = crate::support::sandbox_workdir("outside-");
    let run = |script: &str| {
        crate::support::agentd(&[
            "sandbox",
            "run",
            "strict",
            "--workdir",
            wd.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ])
    };
    let ok = run("echo inside > f && cat f");
    assert_eq!(
        crate::support::stdout(&ok),
        "inside\n",
        "{}",
        crate::support::stderr(&ok)
    );
    let proc_read = run("cat /proc/self/status");
    assert_ne!(proc_read.status.code(), Some(0), "landlock must deny bwrap's /proc");
    let escape = run(&format!("touch {}/x", outside.path().display()));
    assert_ne!(escape.status.code(), Some(0));
    assert!(!outside.path().join("x").exists());
}
