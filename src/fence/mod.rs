//! Code fences: the blocks a model writes to act on its workdir.
//!
//! [`parse`] turns a reply into [`Block`]s in document order (fences such
//! as ```` ```bash:execute ```` or ```` ```notes.md:create ````, and XML
//! `<invoke>` elements); [`execute`] runs them in that order and returns a
//! [`FenceResult`] per block, which [`FenceResult::render_for_model`] turns
//! into the text the model reads next.
//!
//! This module decides *what* runs; [`crate::sandbox`] decides *how*. It
//! must never run model code outside the sandbox, and a plain fence
//! (no `:execute`/`:create`) is text: it never runs.

mod parse;
mod run;

pub use parse::{Block, Lang, Span, parse};
pub use run::{FenceOutcome, FenceResult, create, execute};
