//! Store rows as the API shows them.

use berth_api::{
    AuditView, EventView, ExecutionMode, ProjectView, RunView, RunnerView, SandboxRequest,
    TokenView,
};
use berth_store::{AuditEntry, Project, RunEvent, RunRow, RunnerRecord, TokenRecord};

use serde::Deserialize;

use crate::clock::rfc3339;

/// The run's stored sandbox request.
pub fn sandbox(row: &RunRow) -> Result<SandboxRequest, serde_json::Error> {
    SandboxRequest::deserialize(&row.spec)
}

/// The run as clients see it. A stored spec that does not parse (written by another version)
/// shows as an empty request and is logged; a claim never hands such a run out (`routes`).
pub fn run(row: RunRow) -> RunView {
    let sandbox = sandbox(&row).unwrap_or_else(|e| {
        tracing::error!(run = %row.id, error = %e, "the stored spec of a run does not parse");
        SandboxRequest::default()
    });
    run_with(row, sandbox)
}

pub fn run_with(row: RunRow, sandbox: SandboxRequest) -> RunView {
    RunView {
        id: row.id,
        project: row.project,
        state: row.state.as_str().to_string(),
        execution_mode: match row.execution_mode {
            berth_store::ExecutionMode::DockerSandbox => ExecutionMode::DockerSandbox,
            berth_store::ExecutionMode::Local => ExecutionMode::Local,
        },
        sandbox,
        tags: row.tags,
        labels: row.labels,
        created_at: rfc3339(row.created_at),
        claimed_at: row.claimed_at.map(rfc3339),
        started_at: row.started_at.map(rfc3339),
        finished_at: row.finished_at.map(rfc3339),
        runner_id: row.runner_id,
        container_id: row.container_id,
        exit_code: row.exit_code,
        reason: row.reason,
        cancel_requested: row.cancel_requested,
        commit: row.resolved_commit,
        warnings: Vec::new(),
    }
}

pub fn event(e: RunEvent) -> EventView {
    EventView {
        seq: e.seq,
        ts: rfc3339(e.ts),
        kind: e.kind,
        data: e.data,
    }
}

pub fn audit(a: AuditEntry) -> AuditView {
    AuditView {
        seq: a.seq,
        ts: rfc3339(a.ts),
        from_state: a.from_state.map(|s| s.as_str().to_string()),
        to_state: a.to_state.as_str().to_string(),
        actor: a.actor,
        container_id: a.container_id,
        exit_code: a.exit_code,
        reason: a.reason,
    }
}

pub fn token(t: TokenRecord) -> TokenView {
    TokenView {
        id: t.id,
        role: t.role.as_str().to_string(),
        project: t.project,
        created_at: rfc3339(t.created_at),
        revoked_at: t.revoked_at.map(rfc3339),
    }
}

pub fn project(p: Project) -> ProjectView {
    ProjectView {
        name: p.name,
        workspace_root: p.workspace_root,
        allowed_paths: p.allowed_paths,
        egress_ceiling: p.egress_ceiling,
        created_at: rfc3339(p.created_at),
    }
}

pub fn runner(r: RunnerRecord, running: Vec<String>) -> RunnerView {
    RunnerView {
        id: r.id,
        name: r.name,
        tags: r.tags,
        require_matching_tags: r.require_matching_tags,
        capacity: r.capacity,
        online: r.online,
        last_heartbeat: rfc3339(r.last_heartbeat),
        running,
        secrets: r.secrets,
    }
}
