//! The REPL on agentd's stdin: a person talks to the agents while they run.
//!
//! What it owns: the terminal. One thread reads lines (with line editing
//! and history through `rustyline` when stdin is a terminal, plain lines
//! when it is a pipe) and one thread writes output, so neither a person
//! who is slow to type nor a reader who is slow to drain a pipe can stall
//! the supervisor's event loop. It also owns the small pure pieces of the
//! user interface: parsing a line into a [`Command`], and cutting streamed
//! model text into labelled lines ([`LineBuffer`]).
//!
//! What it must never do: change state. Each line goes to the supervisor as
//! an [`Input`] and the REPL waits for the [`Answer`] (which carries the
//! next prompt) before reading on; the supervisor resolves agent names,
//! records the task, pauses and resumes. Messages typed here are tasks like
//! any other. End of input closes the REPL, never the daemon.

mod terminal;

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;

use tokio::sync::{mpsc, oneshot};

/// How the REPL reads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// stdin is a terminal: line editing, history, prompts.
    Terminal,
    /// stdin is a pipe or file: plain lines, no prompts, no echo.
    Plain,
}

/// From the REPL to the supervisor.
#[derive(Debug)]
pub enum Input {
    /// A line as typed; the supervisor answers on `answer` once handled.
    Line {
        text: String,
        answer: oneshot::Sender<Answer>,
    },
    /// End of input: the REPL is closed (agentd keeps running).
    Closed,
}

/// The supervisor's answer to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The prompt for the next line (`news> `).
    pub prompt: String,
    /// `/quit`: stop reading.
    pub quit: bool,
}

/// What a line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A message: to `agent`, or to the current agent when `None`.
    Say {
        agent: Option<String>,
        text: String,
    },
    Use(String),
    Agents,
    Status,
    Tasks,
    Pause(Option<String>),
    Resume(Option<String>),
    /// Pending approvals.
    Approvals,
    /// Answer approval `id`: approve (with a note) or deny (with a reason).
    Answer {
        id: i64,
        approve: bool,
        note: Option<String>,
        /// `/approve ID task|always …` (egress asks).
        remember: crate::domain::Remember,
    },
    /// Cancel a task (the current agent's running one when `None`).
    Cancel {
        task: Option<crate::domain::TaskId>,
        reason: Option<String>,
    },
    Help,
    Quit,
    /// A blank line: nothing to do.
    Nothing,
}

pub const HELP: &[&str] = &[
    "text             send text to the current agent (shown in the prompt)",
    "@AGENT text      send text to another agent",
    "/use AGENT       make AGENT the current agent",
    "/agents          list the agents",
    "/status          state, queue and next scheduled run of each agent",
    "/tasks           the current agent's recent tasks",
    "/pause [AGENT]   stop running AGENT's tasks (they keep queueing)",
    "/resume [AGENT]  run what is queued again",
    "/cancel [TASK] [REASON]  cancel a task (default: the current agent's running one)",
    "/approvals       tool calls and code waiting for an answer",
    "/approve ID [once|task|always] [NOTE]   let it run (task/always: an egress host for the task, or for good)",
    "/deny ID [REASON]    refuse it (the model reads the reason)",
    "/help            this help",
    "/quit            stop agentd (end of input, e.g. Ctrl-D, closes only the REPL)",
];

/// Parses one line. Errors are one line, for the person at the keyboard.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Command::Nothing);
    }
    if let Some(rest) = line.strip_prefix('@') {
        let (name, text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if name.is_empty() {
            return Err("write @AGENT text".into());
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("nothing to send to {name}: write @{name} text"));
        }
        return Ok(Command::Say {
            agent: Some(name.to_owned()),
            text: text.to_owned(),
        });
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Command::Say {
            agent: None,
            text: line.to_owned(),
        });
    };
    let mut words = rest.split_whitespace();
    let cmd = words.next().unwrap_or("");
    if cmd == "cancel" {
        return parse_cancel(words.collect());
    }
    if cmd == "approve" || cmd == "deny" {
        let rest: Vec<&str> = words.collect();
        let id = rest
            .first()
            .and_then(|w| w.trim_start_matches('#').parse::<i64>().ok())
            .ok_or_else(|| format!("write /{cmd} ID [text]; /approvals lists the ids"))?;
        let mut rest = &rest[1..];
        let mut remember = crate::domain::Remember::Once;
        if cmd == "approve"
            && let Some(r) = rest.first().and_then(|w| w.parse().ok())
        {
            remember = r;
            rest = &rest[1..];
        }
        let note = (!rest.is_empty()).then(|| rest.join(" "));
        return Ok(Command::Answer {
            id,
            approve: cmd == "approve",
            note,
            remember,
        });
    }
    let arg = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(format!("/{cmd} takes at most one argument; /help lists the commands"));
    }
    let no_arg = |c: Command| match &arg {
        None => Ok(c),
        Some(_) => Err(format!("/{cmd} takes no argument")),
    };
    match cmd {
        "use" => arg.map(Command::Use).ok_or_else(|| "write /use AGENT".to_owned()),
        "agents" => no_arg(Command::Agents),
        "status" => no_arg(Command::Status),
        "tasks" => no_arg(Command::Tasks),
        "approvals" => no_arg(Command::Approvals),
        "pause" => Ok(Command::Pause(arg)),
        "resume" => Ok(Command::Resume(arg)),
        "help" | "?" => no_arg(Command::Help),
        "quit" | "exit" => no_arg(Command::Quit),
        other => Err(format!("unknown command /{other}; /help lists the commands")),
    }
}

/// `/cancel [TASK] [REASON…]`: a first word that is a number is the task.
fn parse_cancel(words: Vec<&str>) -> Result<Command, String> {
    let (task, rest) = match words
        .first()
        .map(|w| w.trim_start_matches('#').parse::<crate::domain::TaskId>())
    {
        Some(Ok(id)) => (Some(id), &words[1..]),
        _ => (None, &words[..]),
    };
    let reason = (!rest.is_empty()).then(|| rest.join(" "));
    Ok(Command::Cancel { task, reason })
}

/// Cuts streamed text into whole lines, so output from agents answering at
/// the same time interleaves by line, each labelled, never mid-line.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: String,
}

impl LineBuffer {
    /// Adds a chunk; returns the lines it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<String> {
        self.partial.push_str(chunk);
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let rest = self.partial.split_off(i + 1);
            let mut line = std::mem::replace(&mut self.partial, rest);
            line.pop();
            if line.ends_with('\r') {
                line.pop();
            }
            lines.push(line);
        }
        lines
    }

    /// The unfinished last line, if any (at the end of a model turn).
    pub fn flush(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.partial);
        (!line.is_empty()).then_some(line)
    }
}

/// `agent: line`, the form of every line an agent says in the REPL.
pub fn labelled(agent: &str, line: &str) -> String {
    format!("{agent}: {line}")
}

/// How long agentd, stopping, waits for the last output lines to be written.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The supervisor's handle on the REPL: where output goes.
pub struct Repl {
    out: Option<std_mpsc::Sender<String>>,
    /// Hears from the writer thread when it has written everything.
    drained: std_mpsc::Receiver<()>,
    terminal: Option<terminal::Restore>,
}

impl Repl {
    /// Starts the reader and writer threads. `first_prompt` is shown before
    /// the first line; `history` is where a terminal session keeps its
    /// history between runs.
    pub fn start(
        mode: Mode,
        first_prompt: String,
        history: PathBuf,
        inputs: mpsc::UnboundedSender<Input>,
    ) -> std::io::Result<Repl> {
        let (out, lines) = std_mpsc::channel::<String>();
        let (done, drained) = std_mpsc::channel::<()>();
        let terminal = match mode {
            Mode::Terminal => {
                let t = terminal::start(first_prompt, history, inputs, lines, done)?;
                // Logs written straight to the terminal would tear the line
                // being typed; the printer puts them above the prompt.
                crate::logging::route_to_console(Some(out.clone()));
                Some(t)
            }
            Mode::Plain => {
                start_plain(inputs, lines, done)?;
                None
            }
        };
        Ok(Repl {
            out: Some(out),
            drained,
            terminal,
        })
    }

    pub fn is_terminal(&self) -> bool {
        self.terminal.is_some()
    }

    /// Prints one line (without its newline) above the prompt.
    pub fn print(&self, line: String) {
        // The writer thread ends only with the process; a failed send means
        // it died on a closed stdout, and then nobody is reading anyway.
        if let Some(out) = &self.out {
            let _ = out.send(line);
        }
    }

    /// At exit: lets the writer finish what is queued (a reply that came
    /// in just before the end), for a bounded time, then restores the
    /// terminal.
    pub fn finish(&mut self) {
        if self.terminal.is_some() {
            crate::logging::route_to_console(None);
        }
        self.out = None;
        let _ = self.drained.recv_timeout(DRAIN);
        self.restore_terminal();
    }

    /// Puts the terminal back as it was: the process may exit while the
    /// reader sits in raw mode, and a shell left in raw mode is unusable.
    pub fn restore_terminal(&self) {
        if let Some(t) = &self.terminal {
            t.restore();
        }
    }
}

/// Piped stdin: plain lines in, plain lines out, no prompt.
fn start_plain(
    inputs: mpsc::UnboundedSender<Input>,
    lines: std_mpsc::Receiver<String>,
    done: std_mpsc::Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("repl-out".into()).spawn(move || {
        use std::io::Write;
        let stdout = std::io::stdout();
        for line in lines {
            let mut w = stdout.lock();
            if writeln!(w, "{line}").and_then(|_| w.flush()).is_err() {
                break;
            }
        }
        let _ = done.send(());
    })?;
    std::thread::Builder::new().name("repl-in".into()).spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
            match send_line(&inputs, text) {
                Some(a) if !a.quit => {}
                _ => return,
            }
        }
        let _ = inputs.send(Input::Closed);
    })?;
    Ok(())
}

/// Hands a line to the supervisor and waits for its answer; `None` when
/// the supervisor is gone.
fn send_line(inputs: &mpsc::UnboundedSender<Input>, text: String) -> Option<Answer> {
    let (answer, rx) = oneshot::channel();
    inputs.send(Input::Line { text, answer }).ok()?;
    rx.blocking_recv().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_takes_an_optional_task_and_a_reason_of_many_words() {
        let c = |task, reason: Option<&str>| Command::Cancel {
            task,
            reason: reason.map(str::to_owned),
        };
        assert_eq!(parse("/cancel"), Ok(c(None, None)));
        let t12 = Some(crate::domain::TaskId(12));
        assert_eq!(parse("/cancel 12"), Ok(c(t12, None)));
        assert_eq!(parse("/cancel #12 wrong file"), Ok(c(t12, Some("wrong file"))));
        assert_eq!(parse("/cancel too slow"), Ok(c(None, Some("too slow"))));
        assert_eq!(
            parse("/deny 3 use the archive instead"),
            Ok(Command::Answer {
                id: 3,
                approve: false,
                note: Some("use the archive instead".into()),
                remember: crate::domain::Remember::Once,
            })
        );
        assert!(parse("/approve soon").is_err());
        assert_eq!(
            parse("/approve 4 always pypi mirror"),
            Ok(Command::Answer {
                id: 4,
                approve: true,
                note: Some("pypi mirror".into()),
                remember: crate::domain::Remember::Always,
            })
        );
        // A deny's reason may start with any word.
        assert_eq!(
            parse("/deny 4 always no"),
            Ok(Command::Answer {
                id: 4,
                approve: false,
                note: Some("always no".into()),
                remember: crate::domain::Remember::Once,
            })
        );
    }

    fn say(agent: Option<&str>, text: &str) -> Command {
        Command::Say {
            agent: agent.map(str::to_owned),
            text: text.to_owned(),
        }
    }

    #[test]
    fn plain_lines_go_to_the_current_agent() {
        assert_eq!(parse("hello there"), Ok(say(None, "hello there")));
        assert_eq!(parse("  spaced  "), Ok(say(None, "spaced")));
        assert_eq!(parse(""), Ok(Command::Nothing));
        assert_eq!(parse("   "), Ok(Command::Nothing));
    }

    #[test]
    fn at_name_addresses_another_agent() {
        assert_eq!(parse("@news what's new?"), Ok(say(Some("news"), "what's new?")));
        assert!(parse("@news").is_err());
        assert!(parse("@ hi").is_err());
    }

    #[test]
    fn slash_commands_parse_and_unknown_ones_are_one_line_errors() {
        assert_eq!(parse("/use mail"), Ok(Command::Use("mail".into())));
        assert_eq!(parse("/agents"), Ok(Command::Agents));
        assert_eq!(parse("/status"), Ok(Command::Status));
        assert_eq!(parse("/tasks"), Ok(Command::Tasks));
        assert_eq!(parse("/pause"), Ok(Command::Pause(None)));
        assert_eq!(parse("/resume news"), Ok(Command::Resume(Some("news".into()))));
        assert_eq!(parse("/help"), Ok(Command::Help));
        assert_eq!(parse("/quit"), Ok(Command::Quit));
        for bad in ["/frobnicate", "/use", "/agents now", "/use a b"] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn line_buffer_emits_whole_lines_and_keeps_the_rest() {
        let mut b = LineBuffer::default();
        assert!(b.push("The note ").is_empty());
        assert_eq!(b.push("says\nhel"), vec!["The note says"]);
        assert_eq!(b.push("lo\r\n\nbye"), vec!["hello", ""]);
        assert_eq!(b.flush().as_deref(), Some("bye"));
        assert_eq!(b.flush(), None);
    }
}
