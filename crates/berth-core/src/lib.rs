//! berth's domain core.
//!
//! Architecture Invariant: this crate does no I/O. It never talks to Docker, never touches the
//! file system, never reads the clock or the environment. Everything it needs from the outside
//! world is handed to it as plain values (canonicalised paths, the invoking uid, the current
//! time), so every rule here is testable with one-line cases.

pub mod config;
pub mod disk;
pub mod egress;
pub mod engine;
pub mod event;
pub mod exit;
pub mod held;
pub mod ids;
pub mod mask;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod record;
pub mod runtime;
pub mod spec;
pub mod text;
pub mod trust;
pub mod units;
pub mod workflow;

pub use exit::{ExitStatus, RunState};
pub use spec::RunSpec;
