//! Driving agentd's REPL from tests: through a pipe (plain lines) or
//! through a pseudo-terminal (line editing, prompts), with everything agentd
//! prints collected by a reader thread and waited on with bounds.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::daemon::Daemon;
use super::wait_for;

const WAIT: Duration = Duration::from_secs(30);

/// What agentd wrote, as it arrived.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn collect(&self, mut from: impl Read + Send + 'static, answer: Option<std::fs::File>) {
        let out = self.0.clone();
        let mut answer = answer;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = &buf[..n];
                        // A terminal answers rustyline's cursor position
                        // query; so does this one, like a real terminal.
                        if let Some(t) = answer.as_mut()
                            && chunk.windows(4).any(|w| w == b"\x1b[6n")
                        {
                            let _ = t.write_all(b"\x1b[1;1R");
                        }
                        out.lock().unwrap().extend_from_slice(chunk);
                    }
                }
            }
        });
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// agentd with `--repl` reading a pipe.
pub struct PipedRepl {
    pub daemon: Daemon,
    stdin: Option<ChildStdin>,
    out: Output,
}

impl PipedRepl {
    pub fn start(config: &Path, state_dir: &Path, envs: &[(&str, &str)]) -> PipedRepl {
        let mut daemon = Daemon::start_with_stdio(config, state_dir, envs, &["--repl"], Stdio::piped(), Stdio::piped());
        let stdin = daemon.child.stdin.take();
        let stdout = daemon.child.stdout.take().expect("piped stdout");
        let out = Output::default();
        out.collect(stdout, None);
        PipedRepl { daemon, stdin, out }
    }

    /// Writes one line to agentd's stdin.
    pub fn line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .expect("write to agentd's stdin");
        stdin.flush().expect("flush agentd's stdin");
    }

    /// Ends agentd's input.
    pub fn close(&mut self) {
        self.stdin = None;
    }

    /// Every complete line agentd printed so far.
    pub fn lines(&self) -> Vec<String> {
        let text = self.out.text();
        let complete = text.rsplit_once('\n').map(|(a, _)| a).unwrap_or("");
        complete.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// Waits for a printed line equal to `line`.
    pub fn wait_line(&self, line: &str) {
        self.wait_until(&format!("the line {line:?}"), |lines| lines.iter().any(|l| l == line));
    }

    pub fn wait_until(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        wait_for(WAIT, || {
            let l = self.lines();
            pred(&l).then_some(l)
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}; agentd printed:\n{}\nlog:\n{}",
                self.out.text(),
                self.daemon.log_text()
            )
        })
    }
}

/// agentd whose stdin and stdout are a pseudo-terminal (no `--repl`: a
/// terminal turns the REPL on by itself).
pub struct PtyRepl {
    pub daemon: Daemon,
    master: std::fs::File,
    out: Output,
}

impl PtyRepl {
    pub fn start(config: &Path, state_dir: &Path, envs: &[(&str, &str)]) -> PtyRepl {
        let size = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let slave2 = slave.try_clone().expect("dup the pty slave");
        let mut all_envs = vec![("TERM", "xterm")];
        all_envs.extend_from_slice(envs);
        let daemon = Daemon::start_with_stdio(
            config,
            state_dir,
            &all_envs,
            &[],
            Stdio::from(slave),
            Stdio::from(slave2),
        );
        let master = std::fs::File::from(pty.master);
        let out = Output::default();
        out.collect(
            master.try_clone().expect("dup the pty master"),
            Some(master.try_clone().expect("dup the pty master")),
        );
        PtyRepl { daemon, master, out }
    }

    /// Types raw bytes, as keys on a keyboard.
    pub fn keys(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type into the pty");
        self.master.flush().expect("flush the pty");
    }

    /// Where the screen output stands now (a mark for [`Self::wait_after`]).
    pub fn mark(&self) -> usize {
        self.out.len()
    }

    /// Everything shown since `mark`, with terminal escapes and carriage
    /// returns taken out.
    pub fn since(&self, mark: usize) -> String {
        let raw = self.out.0.lock().unwrap();
        strip_escapes(&String::from_utf8_lossy(&raw[mark.min(raw.len())..]))
    }

    /// Waits until `needle` shows up after `mark`; returns what was shown.
    pub fn wait_after(&self, mark: usize, needle: &str) -> String {
        wait_for(WAIT, || {
            let s = self.since(mark);
            s.contains(needle).then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting for {needle:?} on the terminal; it shows:\n{}\nlog:\n{}",
                self.since(mark),
                self.daemon.log_text()
            )
        })
    }
}

/// Removes CSI (`ESC [ … letter`) and OSC (`ESC ] … BEL`) sequences and
/// carriage returns: what is left is the text a person would read.
pub fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() || c == '~' {
                            break;
                        }
                    }
                }
                Some(']') => {
                    for c in chars.by_ref() {
                        if c == '\x07' {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}
