//! Logging setup: tracing to stderr, `RUST_LOG` honoured, text or JSON.
//!
//! While a REPL owns the terminal, log lines go through its printer
//! instead ([`route_to_console`]), which keeps them above the prompt rather
//! than through the line being typed.

use std::io::Write;
use std::sync::Mutex;
use std::sync::mpsc::Sender;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The terminal REPL's printer, while there is one.
static CONSOLE: Mutex<Option<Sender<String>>> = Mutex::new(None);

/// Sends log lines to `console` (a terminal REPL's printer), or back to
/// stderr with `None`.
pub fn route_to_console(console: Option<Sender<String>>) {
    if let Ok(mut c) = CONSOLE.lock() {
        *c = console;
    }
}

/// Installs the global subscriber. `default` is the filter used when
/// `RUST_LOG` is unset (e.g. `info`). `traces`: the OpenTelemetry layer,
/// which sees only the spans meant for export ([`crate::telemetry::TARGET`],
/// whatever `RUST_LOG` says); the log output never sees those.
pub fn init(format: LogFormat, default: &str, traces: Option<crate::telemetry::OtelLayer>) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let filter = match format!("{}=off", crate::telemetry::TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(Logs)
        .with_ansi(std::io::stderr().is_terminal());
    let logs = match format {
        LogFormat::Text => fmt.with_target(false).with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_current_span(false).with_filter(filter).boxed(),
    };
    let mut layers = vec![logs];
    if let Some(t) = traces {
        let only_ours = tracing_subscriber::filter::filter_fn(|m| m.target() == crate::telemetry::TARGET);
        layers.push(t.with_filter(only_ours).boxed());
    }
    // A second init (tests calling into the CLI twice) is harmless: ignore it.
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

/// Hands out one [`LogLine`] per event.
struct Logs;

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One formatted event, written out whole when dropped, so a line never
/// interleaves with another.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        if let Ok(c) = CONSOLE.lock()
            && let Some(tx) = c.as_ref()
        {
            let text = String::from_utf8_lossy(&self.0);
            if tx.send(text.trim_end_matches('\n').to_owned()).is_ok() {
                return;
            }
        }
        let _ = std::io::stderr().write_all(&self.0);
    }
}
