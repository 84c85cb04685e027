//! Span-keeping YAML: text parsed into nodes that remember where they were
//! written, and a decoder that collects every problem with its position.
//!
//! serde stops at the first error and `serde_yaml`'s values carry no
//! positions; a user fixing a file wants every problem and where it is. So
//! this layer is `marked-yaml` plus a small error-collecting decoder: each
//! mapping is opened with the keys it accepts ([`Map::open`]), unknown keys
//! get a "did you mean", and every getter records its problem in [`Cx`] and
//! returns `None`, so decoding goes on to the next one. Problems render as
//! `FILE:LINE:COL: field.path: message` ([`Error`]).
//!
//! It owns the parser's rules (no anchors, tags or duplicate keys; a
//! document is a mapping or a list), `${VAR}` interpolation of scalars, and
//! how durations and sizes are written. The config loader and skills'
//! `SKILL.md` front matter both decode through it, so their errors read
//! alike. It must never know what a document means (which keys a section
//! accepts, defaults, rules across fields belong to the caller) and never
//! reads a file itself.

mod decode;
mod error;
mod interp;
mod units;

pub(crate) use decode::{Cx, Map, is_null, join, kind, parse, suggest};
pub use error::Error;
pub use units::parse_duration;
