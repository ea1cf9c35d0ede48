//! What clients see of a workflow: its view with every step, and its audit entries.

use berth_api::{WorkflowAuditView, WorkflowStepView, WorkflowView};
use berth_core::workflow::state::StepRecord;
use berth_store::{WorkflowAuditEntry, WorkflowRow};

use super::driver::current_position;
use super::progress_of;
use crate::clock::rfc3339;

pub fn view(row: WorkflowRow) -> WorkflowView {
    let progress = progress_of(&row).ok();
    let mut steps = Vec::new();
    let (mut iterations, mut baseline_red, mut task, mut diff_run) =
        (0, Vec::new(), String::new(), None);
    if let Some(p) = &progress {
        let records = p
            .run
            .baseline
            .iter()
            .chain(p.run.iterations.iter().flat_map(|it| it.steps.iter()));
        steps = records.map(step_view).collect();
        iterations = p.run.iterations.len() as u32;
        baseline_red = p.run.baseline_red.clone();
        task = p.run.task.clone();
        diff_run = p.diff_run.clone();
        if let Some(pending) = &p.pending_run {
            if let Some(at) = current_position(&p.run) {
                // The running step's iteration has started, though nothing of it is recorded.
                iterations = iterations.max(at.iteration);
                steps.push(WorkflowStepView {
                    iteration: at.iteration,
                    step: at.step,
                    run_id: Some(pending.clone()),
                    state: "running".into(),
                    exit_code: None,
                    reason: None,
                    verdict: None,
                    verdict_error: None,
                });
            }
        }
    }
    WorkflowView {
        id: row.id,
        project: row.project,
        name: row.name,
        state: row.state.as_str().to_string(),
        reason: row.reason,
        task,
        created_at: rfc3339(row.created_at),
        finished_at: row.finished_at.map(rfc3339),
        runner_id: row.runner_id,
        // The step run in progress, else the last one.
        current_run: steps.last().and_then(|s| s.run_id.clone()),
        cancel_requested: row.cancel_requested,
        iterations,
        baseline_red,
        steps,
        diff_run,
    }
}

fn step_view(record: &StepRecord) -> WorkflowStepView {
    WorkflowStepView {
        iteration: record.position.iteration,
        step: record.position.step.clone(),
        run_id: record.run_id.clone(),
        state: record.state.to_string(),
        exit_code: record.exit_code,
        reason: record.reason.clone(),
        verdict: record
            .verdict
            .as_ref()
            .and_then(|v| serde_json::to_value(v).ok()),
        verdict_error: record.verdict_error.as_ref().map(ToString::to_string),
    }
}

pub fn audit_view(entry: WorkflowAuditEntry) -> WorkflowAuditView {
    WorkflowAuditView {
        seq: entry.seq,
        ts: rfc3339(entry.ts),
        actor: entry.actor,
        event: entry.event,
        detail: entry.detail,
    }
}
