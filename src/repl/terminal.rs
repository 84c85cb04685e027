//! The REPL on a terminal: `rustyline` reads with line editing and
//! history; its external printer puts the agents' output above the prompt
//! without tearing the line being typed.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;

use nix::sys::termios::{self, SetArg, Termios};
use rustyline::error::ReadlineError;
use rustyline::{Config, DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

use super::{Input, send_line};

/// History entries kept in the state dir between runs.
const HISTORY_SIZE: usize = 1000;

/// The terminal settings from before the REPL started.
pub struct Restore {
    saved: Option<Termios>,
}

impl Restore {
    pub fn restore(&self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
    }
}

pub fn start(
    first_prompt: String,
    history: PathBuf,
    inputs: mpsc::UnboundedSender<Input>,
    lines: std_mpsc::Receiver<String>,
    done: std_mpsc::Sender<()>,
) -> std::io::Result<Restore> {
    let saved = termios::tcgetattr(std::io::stdin()).ok();
    // The editor lives on the reading thread; the printer it hands out goes
    // to the writing thread.
    std::thread::Builder::new().name("repl-in".into()).spawn(move || {
        // Keep ISIG: Ctrl-C stops agentd as it does without a REPL (the
        // children sit in their own process groups and are stopped in order).
        let editor = Config::builder()
            .max_history_size(HISTORY_SIZE)
            .map(|b| b.auto_add_history(false).enable_signals(true).build())
            .and_then(DefaultEditor::with_config);
        let mut editor = match editor {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("the REPL cannot use this terminal ({e}); it is off");
                let _ = inputs.send(Input::Closed);
                return;
            }
        };
        let printer = editor.create_external_printer().ok();
        if let Err(e) = spawn_writer(printer, lines, done) {
            tracing::error!("the REPL cannot start its output thread ({e}); it is off");
            let _ = inputs.send(Input::Closed);
            return;
        }
        // A missing or unreadable history is an empty one.
        let _ = editor.load_history(&history);
        let mut prompt = first_prompt;
        loop {
            match editor.readline(&prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                        let _ = editor.save_history(&history);
                    }
                    match send_line(&inputs, line) {
                        Some(a) if !a.quit => prompt = a.prompt,
                        _ => return,
                    }
                }
                // Ctrl-C became SIGINT for the supervisor; keep reading
                // until it decides.
                Err(ReadlineError::Interrupted) => {}
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    tracing::error!("reading the REPL failed: {e}; the REPL is closed, agentd keeps running");
                    break;
                }
            }
        }
        let _ = inputs.send(Input::Closed);
    })?;
    Ok(Restore { saved })
}

/// Writes output lines: through rustyline's printer when it has one (it
/// redraws the prompt below), else straight to stdout.
fn spawn_writer(
    printer: Option<impl ExternalPrinter + Send + 'static>,
    lines: std_mpsc::Receiver<String>,
    done: std_mpsc::Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("repl-out".into()).spawn(move || {
        let mut printer = printer;
        for line in lines {
            let ok = match printer.as_mut() {
                Some(p) => p.print(format!("{line}\n")).is_ok(),
                None => {
                    use std::io::Write;
                    let mut w = std::io::stdout().lock();
                    writeln!(w, "{line}").and_then(|_| w.flush()).is_ok()
                }
            };
            if !ok {
                break;
            }
        }
        let _ = done.send(());
    })?;
    Ok(())
}
