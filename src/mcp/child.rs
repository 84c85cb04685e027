//! Spawning and stopping stdio MCP servers.
//!
//! This module owns the operating-system side of a stdio server: the
//! environment it gets, its process group, its stderr, the noise it may print
//! on stdout, and how it is stopped. It never speaks MCP: it hands rmcp a pair
//! of pipes and gets the process back to stop it.
//!
//! Invariants:
//! - the server runs in its own process group, so stopping it reaches the
//!   grandchildren a wrapper (`npx`, `sh -c`, `uv run`) starts;
//! - it dies with the thread that spawned it (`PR_SET_PDEATHSIG`, SIGKILL) and
//!   with its [`Child`] handle (`kill_on_drop`), so a crashed agent leaves no
//!   server behind;
//! - its stderr is always piped (rmcp inherits it by default, which would mix
//!   server logs into agentd's own stderr) and logged line by line under the
//!   server's name;
//! - its stdout carries only JSON: a non-JSON line is reported with the
//!   server's name and dropped before rmcp sees it.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

use super::McpError;

/// Variables copied from agentd's own environment into every stdio server's
/// (when set). Everything else is cleared: a server sees only these plus the
/// `env` its config declares.
pub const ENV_PASSTHROUGH: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Variables a server's declared `env` may not set: each makes every program
/// of some runtime load code the command line does not show (a shared
/// library, a startup script, interpreter options), including programs the
/// server itself starts. A config that sets one is refused with an error that
/// names the key, instead of being applied or dropped silently.
/// `LD_*` and `DYLD_*` are refused as prefixes.
pub const ENV_DENIED: &[&str] = &[
    "NODE_OPTIONS",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
    "PERL5OPT",
    "RUBYOPT",
    "JAVA_TOOL_OPTIONS",
    "BASH_ENV",
    "ENV",
];

/// Checks a server's declared environment against [`ENV_DENIED`].
pub fn check_env(server: &str, env: &BTreeMap<String, String>) -> Result<(), McpError> {
    for key in env.keys() {
        let upper = key.to_ascii_uppercase();
        if upper.starts_with("LD_") || upper.starts_with("DYLD_") || ENV_DENIED.contains(&upper.as_str()) {
            return Err(McpError::DeniedEnv {
                server: server.to_owned(),
                key: key.clone(),
            });
        }
    }
    Ok(())
}

/// How long a server gets to exit after its stdin closes, before SIGTERM.
pub const STOP_EOF_GRACE: Duration = Duration::from_millis(1000);
/// How long a server gets to exit after SIGTERM, before SIGKILL.
pub const STOP_TERM_GRACE: Duration = Duration::from_millis(2000);

/// A running stdio server.
pub(crate) struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub stdin: ChildStdin,
    pub stdout: JsonLines<ChildStdout>,
    /// Quiets stderr around the `server/discover` probe, which makes every
    /// Python-SDK server print a long validation traceback.
    pub quiet: Quiet,
}

/// Spawns `command args…` with a cleared environment (see [`ENV_PASSTHROUGH`])
/// plus `env`, in `cwd` (default: the agent child's own directory, which no
/// sandbox can write), in a new process group.
/// The command `agentd` is this executable.
pub(crate) fn spawn(
    server: &str,
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    noise: Arc<AtomicU64>,
) -> Result<Spawned, McpError> {
    check_env(server, env)?;
    // `command: agentd` means this very binary, so built-in servers
    // (`agentd mcp-watch DIR`) work whether or not agentd is on PATH.
    let exe = (command == "agentd").then(std::env::current_exe).and_then(Result::ok);
    let mut cmd = match &exe {
        Some(path) => Command::new(path),
        None => Command::new(command),
    };
    cmd.args(args)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    for key in ENV_PASSTHROUGH {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(env);
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the thread that spawned us (see DESIGN "Known traps"),
            // and close the race with a parent that died before prctl ran.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| McpError::Spawn {
        server: server.to_owned(),
        command: command.to_owned(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(McpError::Spawn {
            server: server.to_owned(),
            command: command.to_owned(),
            source: io::Error::other("child pipes missing"),
        });
    };
    let (quiet, commands) = Quiet::new();
    tokio::spawn(log_stderr(server.to_owned(), stderr, commands));
    Ok(Spawned {
        child,
        pid,
        stdin,
        stdout: JsonLines::new(server, stdout, noise),
        quiet,
    })
}

/// Tells a server's stderr logger to log at DEBUG what the server prints
/// while it answers the discover probe. Not a timer: a Python-SDK server
/// prints its traceback *before* it answers, so once the handshake is
/// over, what the pipe holds at that moment is exactly what is left of it.
pub(crate) struct Quiet(mpsc::UnboundedSender<QuietCommand>);

enum QuietCommand {
    /// From now on, lines are logged at DEBUG.
    Begin,
    /// The handshake is over: the bytes already printed stay at DEBUG,
    /// later ones are logged as usual.
    End,
}

impl Quiet {
    fn new() -> (Quiet, mpsc::UnboundedReceiver<QuietCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Quiet(tx), rx)
    }

    pub fn begin(&self) {
        let _ = self.0.send(QuietCommand::Begin);
    }

    pub fn end(&self) {
        let _ = self.0.send(QuietCommand::End);
    }
}

/// Bytes waiting in a pipe (`FIONREAD`); 0 when it cannot be asked.
fn pipe_pending(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the valid pointer; `fd` is
    // the pipe the caller still owns (it reads from it).
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r == 0 { usize::try_from(n).unwrap_or(0) } else { 0 }
}

/// Logs a server's stderr line by line at INFO under its name, at DEBUG
/// while quieted (see [`Quiet`]) and for the server's own debug and info
/// chatter (see [`is_chatter`]).
async fn log_stderr(
    server: String,
    stderr: tokio::process::ChildStderr,
    commands: mpsc::UnboundedReceiver<QuietCommand>,
) {
    use std::os::fd::AsRawFd;
    let fd = stderr.as_raw_fd();
    let mut limit = crate::log_limit::LogLimit::new("stderr lines", &server);
    relay_lines(stderr, fd, commands, |quiet, text| {
        if quiet || is_chatter(text) {
            tracing::debug!(target: "agentd::mcp::stderr", server = %server, "{text}");
        } else if let Some(suppressed) = limit.allow(std::time::Instant::now()) {
            let note = limit.note(suppressed);
            tracing::info!(target: "agentd::mcp::stderr", server = %server, "{text}{note}");
        }
    })
    .await;
}

/// Reads `pipe` (whose descriptor is `fd`) line by line and hands each
/// non-empty line to `emit` with whether it is quiet, following the
/// [`QuietCommand`]s. Lines are capped so a server that never prints a
/// newline cannot grow our memory.
async fn relay_lines<R: AsyncRead + Unpin>(
    pipe: R,
    fd: std::os::fd::RawFd,
    mut commands: mpsc::UnboundedReceiver<QuietCommand>,
    mut emit: impl FnMut(bool, &str),
) {
    const MAX_LINE: usize = 16 * 1024;
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    let mut quiet = false;
    // After `End`: how many more bytes stay quiet.
    let mut quiet_left: Option<usize> = None;
    let mut listening = true;
    loop {
        let room = MAX_LINE.saturating_sub(line.len()) as u64;
        tokio::select! {
            // Commands first: a line read after `Begin` arrived is quiet.
            biased;
            command = commands.recv(), if listening => match command {
                Some(QuietCommand::Begin) => {
                    quiet = true;
                    quiet_left = None;
                }
                Some(QuietCommand::End) if quiet => {
                    let pending = line.len() + reader.buffer().len() + pipe_pending(fd);
                    if pending == 0 {
                        quiet = false;
                    } else {
                        quiet_left = Some(pending);
                    }
                }
                Some(QuietCommand::End) => {}
                None => listening = false,
            },
            read = async { (&mut reader).take(room).read_until(b'\n', &mut line).await } => {
                match read {
                    Ok(0) | Err(_) if line.is_empty() => return,
                    Ok(0) | Err(_) => {}
                    Ok(_) if !line.ends_with(b"\n") && line.len() < MAX_LINE => continue,
                    Ok(_) => {}
                }
                let this_quiet = quiet;
                if let Some(left) = quiet_left.as_mut() {
                    *left = left.saturating_sub(line.len());
                    if *left == 0 {
                        quiet = false;
                        quiet_left = None;
                    }
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    emit(this_quiet, text);
                }
                line.clear();
            }
        }
    }
}

/// Whether a stderr line is the server's own DEBUG or INFO logging in the
/// Python `logging` default format (`INFO:mcp.server…:Processing request`),
/// which mcp-subscribe prints for every request: relayed at DEBUG so the
/// default log stays quiet while things work. Warnings, errors and
/// unprefixed lines (tracebacks, node servers' banners) stay at INFO.
pub(crate) fn is_chatter(line: &str) -> bool {
    ["DEBUG:", "INFO:"].iter().any(|p| line.starts_with(p))
}

/// Stops a server whose stdin has already been closed: wait for it to exit,
/// then SIGTERM its process group, then SIGKILL it. Always reaps the child.
pub(crate) async fn stop(server: &str, child: &mut Child) {
    let Some(pid) = child.id() else {
        // Already reaped.
        return;
    };
    if wait_exit(child, STOP_EOF_GRACE).await {
        return;
    }
    tracing::debug!(server, pid, "server ignored stdin EOF; sending SIGTERM");
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if wait_exit(child, STOP_TERM_GRACE).await {
        kill_group(pid);
        return;
    }
    tracing::warn!(server, pid, "server ignored SIGTERM; sending SIGKILL");
    kill_group(pid);
    let _ = child.kill().await;
}

/// Reaps a server that is believed dead (its stdout closed), killing it if
/// it lingers, so a half-dead server never blocks a reconnect.
pub(crate) async fn reap(child: &mut Child) {
    if let Some(pid) = child.id() {
        if !wait_exit(child, Duration::from_millis(200)).await {
            kill_group(pid);
            let _ = child.kill().await;
        } else {
            // Grandchildren left in the group die with it.
            kill_group(pid);
        }
    }
}

fn kill_group(pid: u32) {
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, child.wait()).await, Ok(Ok(_)))
}

/// The longest stdout line accepted, as in rmcp's own stdio transport.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// An [`AsyncRead`] over a server's stdout that passes through only lines
/// that parse as JSON. Some servers (and proxies in front of them) print a
/// banner or log line on stdout before or after the handshake; the protocol
/// has no id to answer such a line with, so it is reported and dropped.
pub(crate) struct JsonLines<R> {
    inner: R,
    server: Arc<str>,
    noise: Arc<AtomicU64>,
    /// Bytes of the current, incomplete line.
    partial: Vec<u8>,
    /// Where the newline search in `partial` resumes.
    scanned: usize,
    /// Validated lines waiting to be read.
    ready: Vec<u8>,
    ready_pos: usize,
    /// Dropping the rest of an oversized line.
    discarding: bool,
    eof: bool,
    /// Keeps a flood of non-JSON lines from flooding the log.
    limit: crate::log_limit::LogLimit,
}

impl<R> JsonLines<R> {
    pub(crate) fn new(server: &str, inner: R, noise: Arc<AtomicU64>) -> Self {
        JsonLines {
            inner,
            server: Arc::from(server),
            noise,
            partial: Vec::new(),
            scanned: 0,
            ready: Vec::new(),
            ready_pos: 0,
            discarding: false,
            eof: false,
            limit: crate::log_limit::LogLimit::new("non-JSON stdout lines", server),
        }
    }

    fn take_lines(&mut self) {
        while let Some(offset) = self.partial[self.scanned..].iter().position(|b| *b == b'\n') {
            let end = self.scanned + offset + 1;
            let line: Vec<u8> = self.partial.drain(..end).collect();
            self.scanned = 0;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            self.accept(&line);
        }
        self.scanned = self.partial.len();
        if self.partial.len() > MAX_LINE {
            tracing::warn!(
                server = %self.server,
                "MCP server sent a stdout line longer than {MAX_LINE} bytes; dropped"
            );
            self.partial.clear();
            self.scanned = 0;
            self.discarding = true;
        }
    }

    fn accept(&mut self, line: &[u8]) {
        let body = line.trim_ascii();
        if body.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            self.ready.extend_from_slice(line);
            return;
        }
        self.noise.fetch_add(1, Ordering::Relaxed);
        let Some(suppressed) = self.limit.allow(std::time::Instant::now()) else {
            return;
        };
        let note = self.limit.note(suppressed);
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        tracing::warn!(
            server = %self.server,
            line = %shown,
            "MCP server printed a non-JSON line on stdout (stdout is for JSON-RPC only; \
             logs belong on stderr); ignored{note}"
        );
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for JsonLines<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let filled = chunk_buf.filled();
            if filled.is_empty() {
                this.eof = true;
                // A final line without a newline: judge it like any other.
                if !this.partial.is_empty() && !this.discarding {
                    let mut line = std::mem::take(&mut this.partial);
                    line.push(b'\n');
                    this.accept(&line);
                }
                continue;
            }
            this.partial.extend_from_slice(filled);
            this.take_lines();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn filter(input: &[u8]) -> (String, u64) {
        let noise = Arc::new(AtomicU64::new(0));
        let mut reader = JsonLines::new("t", input, noise.clone());
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        (out, noise.load(Ordering::Relaxed))
    }

    /// What was in the pipe when the handshake ended stays quiet, however
    /// late the relay reads it; what comes after does not.
    #[tokio::test(flavor = "current_thread")]
    async fn the_pipes_contents_at_the_end_of_the_probe_stay_quiet_and_no_more() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let fd = r.as_raw_fd();
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(r).expect("receiver");
        let mut w = std::fs::File::from(w);
        let (quiet, commands) = Quiet::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        quiet.begin();
        // The relay has not run yet: all of this is still in the pipe when
        // the end of the handshake is announced.
        for i in 0..10 {
            writeln!(w, "probe noise {i}").expect("write");
        }
        quiet.end();
        let relay = tokio::spawn(relay_lines(pipe, fd, commands, move |q, text| {
            seen2.lock().expect("lock").push((q, text.to_owned()))
        }));
        while seen.lock().expect("lock").len() < 10 {
            tokio::task::yield_now().await;
        }
        writeln!(w, "after").expect("write");
        drop(w);
        relay.await.expect("relay");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 11, "{seen:?}");
        assert!(seen[..10].iter().all(|(q, _)| *q), "{seen:?}");
        assert_eq!(seen[10], (false, "after".to_owned()));
    }

    #[test]
    fn python_debug_and_info_logging_is_chatter() {
        assert!(is_chatter(
            "INFO:mcp.server.lowlevel.server:Processing request of type CallToolRequest"
        ));
        assert!(is_chatter("DEBUG:mcp.server.lowlevel.server:Response sent"));
        assert!(!is_chatter("WARNING:root:something is off"));
        assert!(!is_chatter("Traceback (most recent call last):"));
        assert!(!is_chatter("Secure MCP Filesystem Server running on stdio"));
    }

    #[tokio::test]
    async fn non_json_lines_are_dropped_and_counted() {
        let (out, noise) = filter(b"Starting proxy...\n{\"a\":1}\n\nnot json {\n{\"b\":2}\ntrailing").await;
        assert_eq!(out, "{\"a\":1}\n\n{\"b\":2}\n");
        assert_eq!(noise, 3);
    }

    #[tokio::test]
    async fn final_json_line_without_newline_is_kept() {
        let (out, noise) = filter(b"{\"a\":1}").await;
        assert_eq!(out, "{\"a\":1}\n");
        assert_eq!(noise, 0);
    }

    #[test]
    fn loader_injection_keys_are_refused() {
        let mut env = BTreeMap::new();
        env.insert("API_TOKEN".to_owned(), "x".to_owned());
        assert!(check_env("s", &env).is_ok());
        for key in ["LD_PRELOAD", "ld_library_path", "DYLD_INSERT_LIBRARIES", "NODE_OPTIONS"] {
            let mut env = env.clone();
            env.insert(key.to_owned(), "x".to_owned());
            let err = check_env("s", &env).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
