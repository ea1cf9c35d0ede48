//! One sandboxed run from start to end.
//!
//! This crate sits between the thin CLI and the engine seam: it prepares a run (config, mount
//! policy, secrets), drives the container through its life, streams and keeps the output,
//! collects artifacts, records the outcome, and always cleans up. It talks to the engine only
//! through [`berth_engine::Engine`].

pub mod artifact_mask;
pub mod artifacts;
pub mod clock;
pub mod egress;
pub mod error;
#[cfg(test)]
mod fake_engine;
pub mod gc;
pub mod git_guard;
pub mod held;
mod held_run;
pub mod launch;
pub mod local;
pub mod output;
pub mod owner;
pub mod prepare;
mod pump;
pub mod remote;
pub mod run;
pub mod rundir;
pub mod sandbox_repo;
pub mod settings;
pub mod shim;
mod stopping;
pub mod trust;
pub mod workspace;

pub use error::SandboxError;
pub use output::Reporter;
pub use run::{execute_docker, reattach, Interrupts, RunContext};
