//! Standard output for the CLI's printers.
//!
//! `println!` panics when stdout is a closed pipe (`agentd show 7 | head`):
//! Rust ignores SIGPIPE, so the write fails with EPIPE. Every printer goes
//! through [`outln!`]/[`out!`] instead, which return the error to the
//! command; [`is_closed_pipe`] lets `main` treat it as a normal exit, as a
//! reader that stopped reading is not a failure of the command.
//!
//! This module must never print anything itself or swallow other errors.

use std::io::Write;

/// Writes formatted text to stdout; the error goes back to the caller.
pub fn write(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()
}

/// Whether an error (anywhere in its chain) is a write to a closed pipe.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that returns EPIPE to the calling function (with `?`).
macro_rules! outln {
    () => { $crate::cli::out::write(format_args!("\n"))? };
    ($($t:tt)*) => { $crate::cli::out::write(format_args!("{}\n", format_args!($($t)*)))? };
}

/// `print!` that returns EPIPE to the calling function (with `?`).
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::out::write(format_args!($($t)*))? };
}
