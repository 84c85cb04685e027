//! The escape suite of the sandbox trust boundary: each attack is first
//! shown to work without the sandbox (the control, backend `none`, same
//! user), then shown to be denied under `landlock`, `bwrap` and
//! `bwrap+landlock`, with agentd running as root (code runs as the
//! workdir's unprivileged owner) and as an unprivileged user (code keeps
//! agentd's uid, and the sandbox alone holds it).
//!
//! The runs go through the real `agentd sandbox run` command; the
//! unprivileged agentd is the same binary started with `setpriv` as
//! [`AGENTD_UID`]. Daemon-level properties (who owns what in the state
//! dir, the control socket's credential check, where MCP servers start,
//! the bridge token on no command line) follow at the end.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use crate::support::daemon::Daemon;
use crate::support::inbox::{Extra, InboxAgent};
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::{SANDBOX_UID, agentd, agentd_bin, as_user, stderr, stdout, tempdir, wait_for, write};

/// The uid the "unprivileged agentd" runs as.
const AGENTD_UID: u32 = 64_997;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agentd {
    Root,
    Unprivileged,
}

impl Agentd {
    const BOTH: [Agentd; 2] = [Agentd::Root, Agentd::Unprivileged];

    /// Who the sandboxed code runs as in this mode.
    fn code_uid(self) -> u32 {
        match self {
            Agentd::Root => SANDBOX_UID,
            Agentd::Unprivileged => AGENTD_UID,
        }
    }
}

const BACKENDS: [&str; 3] = ["landlock", "bwrap", "bwrap+landlock"];

/// Profiles for every backend (the shipped default with another backend),
/// and a workdir owned by the code's uid, under target/tmp (not /tmp, which
/// bwrap replaces with a tmpfs).
struct Bench {
    dir: TempDir,
    mode: Agentd,
}

impl Bench {
    fn new(mode: Agentd) -> Bench {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the escape suite needs root to play both agentd users"
        );
        let dir = tempfile::Builder::new()
            .prefix("escape-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let default = include_str!("../../sandbox/default.yaml");
        std::fs::create_dir_all(dir.path().join("sandbox")).expect("sandbox dir");
        for backend in BACKENDS.iter().chain(&["none"]) {
            let text = default.replace("backend: landlock", &format!("backend: {backend}"));
            std::fs::write(dir.path().join(format!("sandbox/{}.yaml", profile_name(backend))), text).expect("profile");
        }
        std::fs::write(dir.path().join("agentd.yaml"), "agents: []\n").expect("config");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("workdir");
        let uid = mode.code_uid();
        std::os::unix::fs::chown(&work, Some(uid), Some(uid)).expect("chown workdir");
        Bench { dir, mode }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// `agentd sandbox run` of a bash script under `backend`, as this
    /// bench's agentd.
    fn run(&self, backend: &str, script: &str) -> Output {
        let agentd = agentd_bin();
        let args: Vec<String> = vec![
            "sandbox".into(),
            "run".into(),
            profile_name(backend),
            "--workdir".into(),
            self.work().display().to_string(),
            "--config".into(),
            self.dir.path().join("agentd.yaml").display().to_string(),
            "--".into(),
            "bash".into(),
            "-c".into(),
            script.into(),
        ];
        let mut cmd = match self.mode {
            Agentd::Root => Command::new(&agentd),
            Agentd::Unprivileged => {
                let mut c = as_user(AGENTD_UID, &[]);
                c.arg(&agentd);
                c
            }
        };
        cmd.args(&args)
            .env("HOME", self.work())
            .output()
            .expect("agentd sandbox run")
    }
}

fn profile_name(backend: &str) -> String {
    format!("escape-{}", backend.replace('+', "-"))
}

/// Runs `script` (which prints ESCAPED when the attack worked) as the
/// control and under every backend, in both agentd modes; returns every
/// broken expectation, so one run reports them all.
fn attack(what: &str, script: &dyn Fn(&Bench) -> String) {
    let mut broken = Vec::new();
    for mode in Agentd::BOTH {
        for backend in BACKENDS {
            // A fresh bench each time: an attack may leave things behind.
            let bench = Bench::new(mode);
            let control = bench.run("none", &script(&bench));
            if !stdout(&control).contains("ESCAPED") {
                broken.push(format!(
                    "{what} ({mode:?}): the control did not succeed, so the test proves nothing:\n{}{}",
                    stdout(&control),
                    stderr(&control)
                ));
                continue;
            }
            let bench = Bench::new(mode);
            let sandboxed = bench.run(backend, &script(&bench));
            if stdout(&sandboxed).contains("ESCAPED") {
                broken.push(format!(
                    "{what} ({mode:?}, {backend}): ESCAPED\n{}{}",
                    stdout(&sandboxed),
                    stderr(&sandboxed)
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n---\n"));
}

fn python(code: &str) -> String {
    format!("python3 - <<'PY'\n{code}\nPY\n")
}

#[test]
fn sandboxed_code_cannot_make_setuid_or_setgid_files() {
    attack("setuid/setgid files", &|_| {
        python(
            "import os, shutil, stat\n\
             shutil.copy('/bin/true', 't')\n\
             for path, mode in [('t', 0o4755), ('t', 0o2755)]:\n\
             \x20   try: os.chmod(path, mode)\n\
             \x20   except OSError as e: print('chmod', e)\n\
             try:\n\
             \x20   os.close(os.open('s', os.O_CREAT | os.O_WRONLY, 0o4755))\n\
             except OSError as e: print('open', e)\n\
             for f in ['t', 's']:\n\
             \x20   if os.path.exists(f) and os.stat(f).st_mode & (stat.S_ISUID | stat.S_ISGID):\n\
             \x20       print('ESCAPED', f, oct(os.stat(f).st_mode))",
        )
    });
}

#[test]
fn sandboxed_code_cannot_reach_kernel_keyrings() {
    attack("keyrings", &|_| {
        python(
            "import ctypes\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             # add_key(\"user\", desc, payload, len, KEY_SPEC_SESSION_KEYRING)\n\
             r = libc.syscall(248, b'user', b'agentd-escape', b'x', 1, ctypes.c_int(-3))\n\
             print('ESCAPED' if r >= 0 else 'denied errno %d' % ctypes.get_errno())",
        )
    });
}

#[test]
fn sandboxed_code_cannot_make_user_namespaces() {
    attack("nested user namespace", &|_| {
        "unshare --user true && echo ESCAPED".into()
    });
}

#[test]
fn sandboxed_code_cannot_use_io_uring() {
    attack("io_uring", &|_| {
        python(
            "import ctypes\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             params = ctypes.create_string_buffer(120)\n\
             r = libc.syscall(425, 4, params)\n\
             print('ESCAPED' if r >= 0 else 'denied errno %d' % ctypes.get_errno())",
        )
    });
}

#[test]
fn sandboxed_code_cannot_open_netlink_or_vsock_sockets() {
    for (family, ty, name) in [
        ("socket.AF_NETLINK", "socket.SOCK_RAW", "netlink"),
        ("40", "socket.SOCK_STREAM", "vsock"),
    ] {
        attack(name, &|_| {
            python(&format!(
                "import socket\n\
                 try:\n\
                 \x20   socket.socket({family}, {ty}, 0)\n\
                 \x20   print('ESCAPED')\n\
                 except OSError as e: print('denied', e)"
            ))
        });
    }
}

#[test]
fn sandboxed_code_cannot_connect_to_pathname_or_abstract_unix_sockets() {
    // A listener outside the allow-list that any user may connect to (as
    // docker.sock would be to its group): only the sandbox stands between.
    let dir = tempfile::Builder::new()
        .prefix("escape-sock-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("host.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    attack("pathname unix socket", &|_| {
        python(&format!(
            "import socket\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n\
             \x20   s.connect({:?})\n\
             \x20   print('ESCAPED')\n\
             except OSError as e: print('denied', e)",
            path.display().to_string()
        ))
    });

    use std::os::linux::net::SocketAddrExt;
    let name = format!("agentd-escape-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract");
    attack("abstract unix socket", &|_| {
        python(&format!(
            "import socket\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n\
             \x20   s.connect('\\0{name}')\n\
             \x20   print('ESCAPED')\n\
             except OSError as e: print('denied', e)"
        ))
    });
}

#[test]
fn sandboxed_code_cannot_signal_processes_outside_it() {
    // A victim of the very uid the code runs as, outside the sandbox.
    let victims = std::sync::Mutex::new(Vec::new());
    attack("signal outside", &|bench: &Bench| {
        let uid = bench.mode.code_uid();
        let child = as_user(uid, &[]).args(["sleep", "300"]).spawn().expect("victim");
        let pid = child.id();
        victims.lock().expect("victims").push(child);
        format!("kill -9 {pid} && echo ESCAPED")
    });
    for mut v in victims.into_inner().expect("victims") {
        let _ = v.kill();
        let _ = v.wait();
    }
}

#[test]
fn sandboxed_code_never_runs_as_root_nor_as_a_root_agentd() {
    for backend in BACKENDS {
        let bench = Bench::new(Agentd::Root);
        let out = bench.run(backend, "id -u; id -G");
        assert!(out.status.success(), "{backend}: {}", stderr(&out));
        let ids = stdout(&out);
        assert_eq!(
            ids.lines().next(),
            Some(SANDBOX_UID.to_string().as_str()),
            "{backend}: {ids}"
        );
        assert_eq!(
            ids.lines().nth(1),
            Some(SANDBOX_UID.to_string().as_str()),
            "{backend}: no extra groups"
        );

        // A root-owned workdir gives no user to run as: refused, not run as root.
        let root_owned = Bench::new(Agentd::Root);
        std::os::unix::fs::chown(root_owned.work(), Some(0), Some(0)).expect("chown");
        let out = root_owned.run(backend, "echo ran");
        assert!(!out.status.success(), "{backend}: {}", stdout(&out));
        assert!(!stdout(&out).contains("ran"));
        assert!(
            stderr(&out).contains("sandboxed code never does"),
            "{backend}: {}",
            stderr(&out)
        );
    }
}

// ---- Daemon-level properties (agentd as root, as the tests run) ----

/// One agent whose model writes `code` once, then says "Done."; the agent
/// reacts to a file written in `inbox/`.
fn probe(base_url: &str, extra_agent: &str, extra_server: &str) -> InboxAgent {
    InboxAgent::new(
        "probe",
        base_url,
        "k",
        Extra {
            agent: extra_agent,
            server: extra_server,
            max_retries: 1,
            ..Extra::default()
        },
    )
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn state_dir_files_are_agentds_alone_and_each_workdir_is_its_agents_user() {
    let llm = LlmServer::start(vec![]);
    let a = probe(&llm.base_url(), "", "");
    let d = a.start();
    d.running_pid("probe");
    let state = a.state();
    // Others may traverse the state dir (agents' users walk to their
    // workdirs) but list nothing; every file in it is 0600.
    assert_eq!(mode_of(&state), 0o711);
    for f in ["ledger.sqlite", "agentd.sock", "agentd.lock"] {
        assert_eq!(mode_of(&state.join(f)), 0o600, "{f}");
    }
    for f in ["ledger.sqlite-wal", "ledger.sqlite-shm"] {
        if state.join(f).exists() {
            assert_eq!(mode_of(&state.join(f)) & 0o077, 0, "{f}");
        }
    }
    let work = std::fs::metadata(a.workdir()).expect("workdir");
    let uid = work.uid();
    assert!(
        (61184..=65519).contains(&uid),
        "the agent's own uid, from the default range: {uid}"
    );
    assert_eq!((work.gid(), work.mode() & 0o7777), (uid, 0o700));
    let agent_dir = std::fs::metadata(state.join("agents/probe")).expect("agent dir");
    assert_eq!(
        (agent_dir.uid(), agent_dir.gid(), agent_dir.mode() & 0o7777),
        (0, uid, 0o710)
    );
    assert_eq!(mode_of(&state.join("agents/probe/mcp")), 0o700);
    assert_eq!(std::fs::metadata(state.join("agents/probe/mcp")).expect("mcp").uid(), 0);
}

#[test]
fn the_control_socket_answers_only_agentds_uid_and_root_whatever_its_mode() {
    let llm = LlmServer::start(vec![]);
    let a = probe(&llm.base_url(), "", "");
    let d = a.start();
    d.running_pid("probe");
    let socket = a.state().join("agentd.sock");
    // Even if someone loosened the socket's mode, the uid check holds.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let state = a.state().display().to_string();
    let control = agentd(&["status", "--state-dir", &state]);
    assert!(control.status.success(), "root is answered: {}", stderr(&control));
    let other = as_user(AGENTD_UID, &[])
        .arg(agentd_bin())
        .args(["pause", "probe", "--state-dir", &state])
        .output()
        .expect("setpriv");
    assert!(!other.status.success(), "{}", stdout(&other));
    assert!(stderr(&other).contains("refused: uid 64997"), "{}", stderr(&other));
    let st = d.agent("probe").expect("probe");
    assert!(!st.paused, "the other user's pause did not happen");
}

#[test]
fn mcp_servers_start_outside_the_workdir_so_planted_modules_are_never_imported() {
    // The model's code (or anything that writes the workdir) plants a
    // module there; a server started with `python3 -m` would import it as
    // agentd's uid the next time it starts.
    let marker_dir = tempdir();
    let marker = marker_dir.path().join("PWNED");
    for explicit_cwd in [true, false] {
        let llm = LlmServer::start(vec![]);
        let cwd_line = if explicit_cwd { "        cwd: WORKDIR\n" } else { "" };
        let a = probe(
            &llm.base_url(),
            "",
            &format!("      - name: planted\n        command: python3\n        args: [-m, planted]\n{cwd_line}"),
        );
        let text = std::fs::read_to_string(&a.config)
            .expect("config")
            .replace("WORKDIR", &a.workdir().display().to_string());
        std::fs::write(&a.config, text).expect("config");
        std::fs::create_dir_all(a.workdir()).expect("workdir");
        std::fs::write(
            a.workdir().join("planted.py"),
            format!("open({:?}, 'w').write('imported')\n", marker.display().to_string()),
        )
        .expect("plant");
        if explicit_cwd {
            // The control: an operator who points cwd at the workdir gets
            // a warning from `agentd check`, and the import happens.
            let check = agentd(&["check", &a.config.display().to_string()]);
            assert!(
                stdout(&check).contains("warning") && stdout(&check).contains("workdir"),
                "{}{}",
                stdout(&check),
                stderr(&check)
            );
        }
        let d = a.start();
        d.running_pid("probe");
        let imported = wait_for(Duration::from_secs(5), || marker.exists().then_some(())).is_some();
        assert_eq!(imported, explicit_cwd, "explicit cwd {explicit_cwd}: {}", d.log_text());
        let _ = std::fs::remove_file(&marker);
    }
}

#[test]
fn the_bridge_token_is_on_no_command_line() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[
            "```bash:execute\necho \"$AGENTD_BRIDGE_TOKEN\" > token\nfor i in $(seq 300); do [ -e go ] && break; sleep 0.1; done\n```\n",
        ]),
        Reply::stream_text(&["Done."]),
    ]);
    let a = probe(&llm.base_url(), "    sandbox: {profile: strict}\n", "");
    let d = a.start();
    d.running_pid("probe");
    std::fs::write(a.inbox.join("go.md"), "go").expect("trigger");
    let token = wait_for(Duration::from_secs(60), || {
        let t = std::fs::read_to_string(a.workdir().join("token")).ok()?;
        t.ends_with('\n').then(|| t.trim().to_owned())
    })
    .unwrap_or_else(|| panic!("no token written; log:\n{}", d.log_text()));
    assert_eq!(token.len(), 32, "the control: the run has the token ({token:?})");
    let mut seen = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            seen += 1;
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&token),
                "the token is on the command line of {}: {}",
                entry.path().display(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            );
        }
    }
    assert!(seen > 10, "read the command lines of {seen} processes");
    std::fs::write(a.workdir().join("go"), "").expect("release");
}

// ---- Host-side handling of a workdir (agentd as root, as the tests run) ----

/// A workdir planted with links out of it, a fifo and a socket, as
/// sandboxed code could leave it; and a directory outside it.
struct Planted {
    work: TempDir,
    outside: TempDir,
    _socket: std::os::unix::net::UnixListener,
}

impl Planted {
    fn new() -> Planted {
        let work = tempdir();
        let outside = tempdir();
        std::fs::write(outside.path().join("target.txt"), "outside").expect("outside file");
        std::os::unix::fs::symlink(outside.path(), work.path().join("out")).expect("dir link");
        std::os::unix::fs::symlink(outside.path().join("target.txt"), work.path().join("notes.txt"))
            .expect("file link");
        nix::unistd::mkfifo(
            &work.path().join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("fifo");
        let socket = std::os::unix::net::UnixListener::bind(work.path().join("sock")).expect("socket");
        Planted {
            work,
            outside,
            _socket: socket,
        }
    }

    fn outside_target(&self) -> String {
        std::fs::read_to_string(self.outside.path().join("target.txt")).expect("outside file")
    }
}

#[test]
fn create_blocks_never_follow_planted_links_out_nor_open_special_files() {
    let p = Planted::new();
    // The control: a path-based write through the planted link lands outside.
    std::fs::write(p.work.path().join("out/control.txt"), "x").expect("control write");
    assert!(p.outside.path().join("control.txt").exists());
    std::fs::remove_file(p.outside.path().join("control.txt")).expect("cleanup");

    for (rel, why) in [
        ("out/x.txt", "outside"),
        ("notes.txt", "outside"),
        ("fifo", "fifo"),
        ("sock", "special"),
    ] {
        let started = std::time::Instant::now();
        let e = agentd::fence::create(p.work.path(), rel, "planted").expect_err(rel);
        assert!(e.contains("refused"), "{rel}: {e}");
        assert!(
            e.contains(why) || e.contains("special") || e.contains("outside"),
            "{rel}: {e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{rel}: never waits on a fifo"
        );
    }
    assert_eq!(p.outside_target(), "outside");
    assert_eq!(std::fs::read_dir(p.outside.path()).expect("outside").count(), 1);
}

#[test]
fn workspace_snapshots_store_links_as_links_skip_special_files_and_restore_never_writes_through_a_link() {
    let p = Planted::new();
    std::fs::write(p.work.path().join("real.txt"), "mine").expect("file");
    let started = std::time::Instant::now();
    let archive = agentd::snapshots::archive::archive(p.work.path()).expect("archive");
    assert!(started.elapsed() < Duration::from_secs(5), "a fifo is never read");
    let mut names = Vec::new();
    for e in tar::Archive::new(&archive[..]).entries().expect("entries") {
        let e = e.expect("entry");
        let path = e.path().expect("path").display().to_string();
        if path == "notes.txt" {
            assert!(e.header().entry_type().is_symlink(), "a link stays a link");
        }
        names.push(path);
    }
    assert!(!names.iter().any(|n| n == "fifo" || n == "sock"), "{names:?}");
    assert!(
        !String::from_utf8_lossy(&archive).contains("outside"),
        "no content from outside the workdir"
    );

    // Restore over a workdir where code planted a link where the archive
    // has a file. The control: writing by path goes through the link.
    let archive_with_file = {
        let d = tempdir();
        std::fs::write(d.path().join("notes.txt"), "restored").expect("file");
        agentd::snapshots::archive::archive(d.path()).expect("archive")
    };
    std::fs::write(p.work.path().join("notes.txt"), "through the link").expect("control");
    assert_eq!(p.outside_target(), "through the link");
    std::fs::write(p.outside.path().join("target.txt"), "outside").expect("reset");

    agentd::snapshots::archive::restore(p.work.path(), &archive_with_file).expect("restore");
    assert_eq!(p.outside_target(), "outside");
    let restored = p.work.path().join("notes.txt");
    assert!(
        !std::fs::symlink_metadata(&restored)
            .expect("notes")
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(restored).expect("notes"), "restored");
}

#[test]
fn giving_a_workdir_to_its_agents_user_never_follows_planted_links() {
    let llm = LlmServer::start(vec![]);
    let a = probe(&llm.base_url(), "", "");
    let outside = tempdir();
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "root's").expect("victim");
    std::fs::create_dir_all(a.workdir().join("sub")).expect("workdir");
    std::os::unix::fs::symlink(&victim, a.workdir().join("sub/link")).expect("link");
    // The control: a chown by path follows the link to the victim.
    std::os::unix::fs::chown(a.workdir().join("sub/link"), Some(SANDBOX_UID), None).expect("control chown");
    assert_eq!(std::fs::metadata(&victim).expect("victim").uid(), SANDBOX_UID);
    std::os::unix::fs::chown(&victim, Some(0), Some(0)).expect("reset");

    let d = a.start();
    d.running_pid("probe");
    let uid = std::fs::metadata(a.workdir()).expect("workdir").uid();
    assert_ne!(uid, 0);
    assert_eq!(
        std::fs::symlink_metadata(a.workdir().join("sub/link"))
            .expect("link")
            .uid(),
        uid
    );
    assert_eq!(std::fs::metadata(a.workdir().join("sub")).expect("sub").uid(), uid);
    assert_eq!(
        std::fs::metadata(&victim).expect("victim").uid(),
        0,
        "the link was not followed"
    );
}

#[test]
fn one_agents_code_can_neither_read_nor_write_another_agents_workdir() {
    // Backend `none` on purpose: only the separation of users stands
    // between the two agents here.
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[
            "```bash:execute\ncat ../../b/work/secret.txt && echo READ; echo pwned > ../../b/work/pwned.txt && echo WROTE; id -u\n```\n",
        ]),
        Reply::stream_text(&["Done."]),
    ]);
    let dir = tempdir();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let agent = |name: &str, sub: &str| {
        format!(
            r#"  - name: {name}
    model: test-model
    llm: {{base_url: "{base}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: 1}}
    sandbox: {{profile: default, backend: none}}
    mcp_servers:
      - name: inbox
        command: {bin}
        args: [mcp-watch, "{inbox}", --debounce-ms, "20"]
{sub}"#,
            base = llm.base_url(),
            bin = agentd_bin().display(),
            inbox = inbox.display(),
        )
    };
    let config = write(
        dir.path(),
        "agentd.yaml",
        &format!(
            "shutdown_grace: 2s\nagents:\n{}{}",
            agent(
                "a",
                &format!(
                    "    subscriptions:\n      - {{uri: \"file://{}/*.md\", debounce: 50ms}}\n",
                    inbox.display()
                )
            ),
            agent("b", "")
        ),
    );
    let state = dir.path().join("state");
    let d = Daemon::start(&config, &state, &[("TEST_LLM_KEY", "k")]);
    d.running_pid("a");
    d.running_pid("b");
    let b_work = state.join("agents/b/work");
    std::fs::write(b_work.join("secret.txt"), "b's secret").expect("secret");
    // The control: agentd's own uid (root) reads and writes it.
    assert_eq!(
        std::fs::read_to_string(b_work.join("secret.txt")).expect("control read"),
        "b's secret"
    );
    std::fs::write(inbox.join("go.md"), "go").expect("trigger");
    let t = wait_for(Duration::from_secs(60), || {
        crate::support::daemon::tasks(&state)
            .into_iter()
            .find(|t| t.state.is_final())
    })
    .unwrap_or_else(|| panic!("no task finished; log:\n{}", d.log_text()));
    let steps = crate::support::daemon::steps(&state, t.id);
    let fence = steps
        .iter()
        .find(|s| s.kind == "fence")
        .map(|s| s.payload["result"].to_string())
        .expect("a fence step");
    assert!(!fence.contains("b's secret") && !fence.contains("READ"), "{fence}");
    assert!(
        !fence.contains("WROTE") && !b_work.join("pwned.txt").exists(),
        "{fence}"
    );
    let a_uid = std::fs::metadata(state.join("agents/a/work")).expect("a").uid();
    let b_uid = std::fs::metadata(&b_work).expect("b").uid();
    assert_ne!(a_uid, b_uid);
    assert!(
        fence.contains(&a_uid.to_string()),
        "a's code ran as a's own user: {fence}"
    );
}

#[test]
fn the_operators_group_may_use_the_control_socket_and_others_may_not() {
    let llm = LlmServer::start(vec![]);
    let a = probe(&llm.base_url(), "", "");
    let text = std::fs::read_to_string(&a.config)
        .expect("config")
        .replace("shutdown_grace: 2s\n", "shutdown_grace: 2s\ncontrol_group: \"64996\"\n");
    std::fs::write(&a.config, text).expect("config");
    let d = a.start();
    d.running_pid("probe");
    let socket = a.state().join("agentd.sock");
    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!((meta.gid(), meta.mode() & 0o777), (64996, 0o660));
    let state = a.state().display().to_string();
    let status_as = |groups: &[u32]| {
        as_user(AGENTD_UID, groups)
            .arg(agentd_bin())
            .args(["status", "--state-dir", &state])
            .output()
            .expect("setpriv")
    };
    let member = status_as(&[64996]);
    assert!(member.status.success(), "{}", stderr(&member));
    assert!(stdout(&member).contains("probe"), "{}", stdout(&member));
    // Past a loosened mode, a non-member is still refused by credentials.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let stranger = status_as(&[]);
    assert!(!stranger.status.success(), "{}", stdout(&stranger));
    assert!(
        stderr(&stranger).contains("refused: uid 64997"),
        "{}",
        stderr(&stranger)
    );
}

#[test]
fn under_an_unprivileged_agentd_code_keeps_its_uid_but_not_its_files_sockets_or_signals() {
    // What code running as agentd's own uid would do first: read the
    // ledger, steer agentd through its socket, signal it.
    for profile in ["default", "strict"] {
        let llm = LlmServer::start(vec![]);
        let a = probe(&llm.base_url(), &format!("    sandbox: {{profile: {profile}}}\n"), "");
        let state = a.state();
        let script = |agentd_pid: u32| {
            format!(
                "head -c 15 {ledger} && echo ' READ';\n\
                 python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{socket}'); print('CONNECTED')\";\n\
                 kill -0 {agentd_pid} && echo SIGNALLED; id -u\n",
                ledger = state.join("ledger.sqlite").display(),
                socket = state.join("agentd.sock").display(),
            )
        };
        // The inbox and the config must be readable by that user.
        std::fs::set_permissions(&a.inbox, std::fs::Permissions::from_mode(0o777)).expect("chmod inbox");
        let d = Daemon::start_as(AGENTD_UID, &a.config, &state, &[("TEST_LLM_KEY", "k")]);
        d.running_pid("probe");
        let agentd_pid = d.pid();

        // The control: the same script, as the same user, outside a sandbox.
        let control = as_user(AGENTD_UID, &[])
            .args(["bash", "-c", &script(agentd_pid)])
            .output()
            .expect("control");
        let out = stdout(&control);
        for done in ["SQLite format 3 READ", "CONNECTED", "SIGNALLED"] {
            assert!(
                out.contains(done),
                "control: {done} missing:\n{out}{}",
                stderr(&control)
            );
        }

        llm.push(Reply::stream_text(&[&format!(
            "```bash:execute\n{}```\n",
            script(agentd_pid)
        )]));
        llm.push(Reply::stream_text(&["Done."]));
        std::fs::write(a.inbox.join("go.md"), "go").expect("trigger");
        let t = wait_for(Duration::from_secs(60), || {
            crate::support::daemon::tasks(&state)
                .into_iter()
                .find(|t| t.state.is_final())
        })
        .unwrap_or_else(|| panic!("{profile}: no task finished; log:\n{}", d.log_text()));
        let fence = crate::support::daemon::steps(&state, t.id)
            .iter()
            .find(|s| s.kind == "fence")
            .map(|s| s.payload["result"].to_string())
            .unwrap_or_else(|| panic!("{profile}: no fence step; log:\n{}", d.log_text()));
        assert!(
            fence.contains(&AGENTD_UID.to_string()),
            "{profile}: code kept agentd's uid: {fence}"
        );
        for escaped in ["READ", "CONNECTED", "SIGNALLED"] {
            assert!(!fence.contains(escaped), "{profile}: {escaped}: {fence}");
        }
    }
}
