//! The run record, `run.json`: what was asked, where it ran, and how it ended.

use serde::{Deserialize, Serialize};

use crate::exit::RunState;
use crate::spec::{RunSpec, WorkspaceMode};

/// What a run in an isolated workspace (copy or worktree mode) left behind. Paths are relative
/// to the run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceResult {
    pub mode: WorkspaceMode,
    /// The root of the user's git checkout, when the workspace is in one.
    #[serde(default)]
    pub repo: Option<String>,
    /// The commit the run started from: HEAD, or with `--include-dirty` a commit of the
    /// uncommitted changes on top of it (reachable from `berth/<run-id>` while the worktree
    /// exists).
    #[serde(default)]
    pub base_commit: Option<String>,
    /// The run's changes as a patch (`diff.patch`), once written.
    #[serde(default)]
    pub diff: Option<String>,
    /// Copy mode: the downloaded tree (`workspace/`).
    #[serde(default)]
    pub tree: Option<String>,
    /// Worktree mode with `--keep`: the worktree left in place, and its branch.
    #[serde(default)]
    pub worktree: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    /// Copy mode: the upload of the workspace into the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Transfer>,
    /// Copy mode: the download of the changed tree (its safe extraction included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<Transfer>,
}

/// How much a workspace transfer moved and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Bytes of file content.
    pub bytes: u64,
    pub millis: u64,
}

/// Where the command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    Docker,
    /// On the host, because Docker is not installed and `--fallback local` allowed it.
    Local,
}

impl std::fmt::Display for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Local => "local",
        })
    }
}

/// Everything berth keeps about one run. Times are RFC 3339 strings supplied by the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub spec: RunSpec,
    pub execution: Execution,
    /// Why the run did not use Docker, when it did not.
    pub fallback_reason: Option<String>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub image_id: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub state: RunState,
    /// Why the run ended the way it did, in words; set for every final state but success.
    pub reason: Option<String>,
    /// Collected artifact paths, relative to the run's `artifacts/` directory: the first
    /// thousand, so that the record stays small whatever the run wrote.
    pub artifacts: Vec<String>,
    /// Artifact paths collected beyond those listed in `artifacts`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub artifacts_unlisted: u64,
    /// Entries of the run's output that were left out (over the output cap, links pointing
    /// outside, devices…), counted; the events name them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub artifacts_left_out: u64,
    /// Artifacts (text files) that held a secret and were rewritten with it masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts_masked: Vec<String>,
    /// Artifacts that hold a secret and were kept as they are, because masking would corrupt
    /// them (not text): the secret is in them in clear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts_with_secrets: Vec<String>,
    /// Whether the container was left in place (`--keep`).
    pub kept: bool,
    /// The agent's session id, when the agent reported one (for `--resume`).
    #[serde(default)]
    pub agent_session: Option<String>,
    /// Copy and worktree modes: the changed tree and the patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceResult>,
    /// Egress through berth's proxy (`--egress policy`), summed over its decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressSummary>,
}

impl RunRecord {
    /// The commit the run's workspace was made from: its resolved `git_ref`, else a worktree's
    /// HEAD (not a commit of carried uncommitted changes, which only the run's own, removed,
    /// branch held). `None` for every other run.
    pub fn start_commit(&self) -> Option<String> {
        let spec = &self.spec;
        spec.start_commit.clone().or_else(|| {
            (spec.workspace_mode == WorkspaceMode::Worktree && !spec.include_dirty)
                .then(|| self.workspace.as_ref()?.base_commit.clone())
                .flatten()
        })
    }

    pub fn new(id: String, spec: RunSpec, execution: Execution, created_at: String) -> Self {
        Self {
            id,
            spec,
            execution,
            fallback_reason: None,
            container_id: None,
            container_name: None,
            image_id: None,
            created_at,
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            state: RunState::Created,
            reason: None,
            artifacts: Vec::new(),
            artifacts_unlisted: 0,
            artifacts_left_out: 0,
            artifacts_masked: Vec::new(),
            artifacts_with_secrets: Vec::new(),
            kept: false,
            agent_session: None,
            workspace: None,
            egress: None,
        }
    }

    /// Records the end of the run. A final state is never overwritten: the first ending wins.
    pub fn finish(&mut self, state: RunState, reason: Option<String>, finished_at: String) {
        if self.state.is_final() {
            return;
        }
        self.state = state;
        self.reason = reason;
        self.finished_at = Some(finished_at);
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn masked_artifact_lists_are_optional_in_run_json() {
        let mut record = RunRecord::new(
            "r1".into(),
            crate::plan::tests::spec(),
            Execution::Docker,
            "2025-01-01T00:00:00Z".into(),
        );
        let mut json = serde_json::to_value(&record).unwrap();
        assert!(json.get("artifacts_masked").is_none(), "{json}");
        assert!(json.get("artifacts_with_secrets").is_none(), "{json}");
        // A record written before the fields existed reads as it was.
        json.as_object_mut().unwrap().remove("artifacts_masked");
        assert_eq!(serde_json::from_value::<RunRecord>(json).unwrap(), record);

        record.artifacts_masked = vec!["berth/out/leak.txt".into()];
        record.artifacts_with_secrets = vec!["berth/out/leak.bin".into()];
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["artifacts_masked"][0], "berth/out/leak.txt");
        assert_eq!(serde_json::from_value::<RunRecord>(json).unwrap(), record);
    }
}
