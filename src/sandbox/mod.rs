//! Sandboxes for code the model writes: landlock, bubblewrap, both, or none.
//!
//! This module owns the policy type (decoded from `sandbox/*.yaml` profiles
//! or inline agent config by [`crate::config`]) and, in its submodules, the
//! backends that enforce it. It must never restrict the daemon itself: every
//! restriction is applied in a forked child just before `exec`.

mod policy;

pub use policy::*;
