//! Workflows on the coordinator: the submission's checks, and the driver that moves a workflow
//! along as its step runs end.
//!
//! A workflow is the core's state machine (`berth_core::workflow::state::WorkflowRun`) stored
//! as JSON with its position. Each step is an ordinary run with `sandbox.workflow` set; the
//! runner that claims the first step keeps the workflow's worktree, and every later step is
//! pinned to it. [`advance`] is called when a step run ends (finish, cancel, lease expiry) and
//! by the sweeper for every running workflow, so a server that died between a step's end and
//! the next step's queueing catches up. Each advance reads the workflow's version and writes
//! the new progress, its audit notes and the next step's run in one transaction that applies
//! only at that version: two servers never queue a step twice.
//!
//! `submit` checks a submission, `driver` moves workflows along, `views` shows them to clients;
//! this module holds what they share: the stored progress and submission, the step runs' labels
//! and where a run's artifacts are.

mod driver;
mod submit;
mod views;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_core::workflow::state::WorkflowRun;
use berth_store::{RunRow, WorkflowRow};
use serde::{Deserialize, Serialize};

pub use driver::{advance, advance_all};
pub use submit::{check, Accepted};
pub use views::{audit_view, view};

/// The label every step run carries: its workflow.
pub const WORKFLOW_LABEL: &str = "berth.workflow";
/// The label every step run carries: where in the workflow it is (`baseline/tests`,
/// `iter-2/review`).
pub const STEP_LABEL: &str = "berth.step";

/// A workflow's stored progress: the state machine, the step run it waits for, and the run
/// whose `berth/diff.patch` is the worktree's latest diff.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub run: WorkflowRun,
    pub pending_run: Option<String>,
    pub diff_run: Option<String>,
}

/// What the submission asked for beyond the workflow itself, kept with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub file_name: String,
    pub image: Option<String>,
    pub agent_image: Option<String>,
    pub network: Option<String>,
    /// Every sandboxed step's egress (agent steps add their profile's hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<berth_api::EgressRequest>,
    pub env: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub actor: String,
}

/// The directory of a run's artifacts on the server.
pub fn artifacts_dir(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir.join("artifacts").join(run_id)
}

/// The workflow's diff so far: the latest step's `berth/diff.patch`.
pub fn diff_path(state_dir: &Path, progress: &Progress) -> Option<PathBuf> {
    progress
        .diff_run
        .as_deref()
        .map(|run| artifacts_dir(state_dir, run).join("berth/diff.patch"))
}

/// A workflow whose stored JSON this server cannot read.
#[derive(Debug, thiserror::Error)]
#[error("workflow {id}: stored {what} is unreadable: {source}")]
pub struct UnreadableWorkflow {
    pub id: String,
    /// `progress` or `submission`.
    pub what: &'static str,
    pub source: serde_json::Error,
}

pub fn progress_of(row: &WorkflowRow) -> Result<Progress, UnreadableWorkflow> {
    serde_json::from_value(row.progress.clone()).map_err(|source| UnreadableWorkflow {
        id: row.id.clone(),
        what: "progress",
        source,
    })
}

fn submission_of(row: &WorkflowRow) -> Result<Submission, UnreadableWorkflow> {
    serde_json::from_value(row.spec.clone()).map_err(|source| UnreadableWorkflow {
        id: row.id.clone(),
        what: "submission",
        source,
    })
}

/// The workflow of a step run, if it is one.
pub fn workflow_of(run: &RunRow) -> Option<&str> {
    run.labels.get(WORKFLOW_LABEL).map(String::as_str)
}
