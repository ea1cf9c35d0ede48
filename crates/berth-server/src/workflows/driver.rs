//! The driver: [`advance`] records a step run that ended, queues the next step as a run pinned
//! to the worktree's runner, or ends the workflow, in one write at the version it read.

use berth_api::SandboxRequest;
use berth_core::workflow::output::OutputTail;
use berth_core::workflow::state::{
    Next, Position, StepOutcome, StepRecord, StepRequest, WorkflowRun,
};
use berth_core::workflow::{self, Action, Location, WorkspaceKind};
use berth_store::{
    NewRun, RunRow, RunState, Store, StoreError, Wake, WorkflowChange, WorkflowNote, WorkflowRow,
};

use super::{
    artifacts_dir, diff_path, progress_of, submission_of, Progress, Submission, STEP_LABEL,
    WORKFLOW_LABEL,
};
use crate::clock::now_ms;
use crate::App;

/// Moves the workflow on as far as it can go now: records a step run that ended, queues the
/// next step, or ends the workflow. Safe to call any time, from anywhere, concurrently.
pub async fn advance<S: Store>(app: &App<S>, id: &str) -> Result<(), StoreError> {
    for _ in 0..8 {
        match advance_once(app, id).await? {
            Step::Done => return Ok(()),
            Step::Again => continue,
        }
    }
    Ok(())
}

enum Step {
    Done,
    Again,
}

async fn advance_once<S: Store>(app: &App<S>, id: &str) -> Result<Step, StoreError> {
    let Some(row) = app.store.workflow(id).await? else {
        return Ok(Step::Done);
    };
    if row.state.is_final() {
        return Ok(Step::Done);
    }
    let now = now_ms();
    let (mut progress, submission) = match (progress_of(&row), submission_of(&row)) {
        (Ok(p), Ok(s)) => (p, s),
        (Err(e), _) | (_, Err(e)) => {
            // Nothing can be done with it but to end it, saying why.
            tracing::error!(workflow = %id, error = %e, "ending an unreadable workflow");
            let mut change = change(&row, row.progress.clone(), now);
            change.notes.push(note("finished", format!("error: {e}")));
            end(&mut change, RunState::Error, e.to_string());
            return write(app, &change).await;
        }
    };
    let mut notes = Vec::new();
    let mut changed = false;
    let mut runner_id = row.runner_id.clone();
    if row.cancel_requested && progress.run.finish.is_none() {
        progress.run.cancel();
        changed = true;
    }

    if let Some(run_id) = progress.pending_run.clone() {
        let position = current_position(&progress.run);
        let Some((outcome, run)) = pending_outcome(app, &progress, &run_id, now).await? else {
            // Still running (a cancel, if any, is on its way to the runner).
            return if changed {
                let mut change = change(&row, to_json(&progress), now);
                change.runner_id = runner_id;
                write(app, &change).await
            } else {
                Ok(Step::Done)
            };
        };
        if let Some(run) = &run {
            runner_id = runner_id.or_else(|| run.runner_id.clone());
            let diff = artifacts_dir(&app.config.state_dir, &run_id).join("berth/diff.patch");
            if diff.is_file() {
                progress.diff_run = Some(run_id.clone());
            }
        }
        let line = outcome_line(&outcome);
        if let Err(e) = progress.run.record(outcome) {
            tracing::error!(workflow = %id, error = %e, "recording a step failed");
        }
        let verdict = position
            .as_ref()
            .and_then(|p| record_at(&progress.run, p))
            .map(verdict_line)
            .unwrap_or_default();
        let at = position.map_or_else(|| "a step".to_string(), |p| p.to_string());
        notes.push(note(
            "step_finished",
            format!("{at}: run {run_id} {line}{verdict}"),
        ));
        progress.pending_run = None;
        changed = true;
    }

    // Queue the next step, or end. A step that cannot even be queued is recorded as an error
    // and the state machine decides what follows.
    let mut new_run = None;
    while progress.pending_run.is_none() {
        match progress.run.next() {
            Next::Finished(finish) => {
                let state = match finish.state {
                    RunState::Succeeded => RunState::Succeeded,
                    RunState::Failed | RunState::TimedOut => RunState::Failed,
                    RunState::Cancelled => RunState::Cancelled,
                    _ => RunState::Error,
                };
                let reason = finish.message();
                notes.push(note("finished", format!("{}: {reason}", state.as_str())));
                let mut change = change(&row, to_json(&progress), now);
                change.runner_id = runner_id;
                change.notes = notes;
                end(&mut change, state, reason);
                let written = write(app, &change).await?;
                if matches!(written, Step::Done) {
                    tracing::info!(workflow = %id, state = state.as_str(), "workflow ended");
                }
                return Ok(written);
            }
            Next::Run(request) => {
                let step = step_run(
                    app,
                    &row,
                    &submission,
                    &progress,
                    &request,
                    runner_id.clone(),
                    now,
                );
                match step {
                    Ok(run) => {
                        notes.push(note(
                            "step_queued",
                            format!("{}: run {}", request.position, run.id),
                        ));
                        progress.pending_run = Some(run.id.clone());
                        new_run = Some(run);
                    }
                    Err(why) => {
                        notes.push(note(
                            "step_finished",
                            format!("{}: error: {why}", request.position),
                        ));
                        let _ = progress
                            .run
                            .record(StepOutcome::ended(RunState::Error, &why.to_string()));
                    }
                }
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(Step::Done);
    }
    let mut change = change(&row, to_json(&progress), now);
    change.runner_id = runner_id;
    change.notes = notes;
    change.new_run = new_run;
    write(app, &change).await
}

/// The outcome of the step run the workflow waits for, once it has one (and the run, if it is
/// still in the store). A cancelled workflow, or a step stranded on an offline runner, has its
/// step run cancelled here: a queued one ends at once, a running one comes back here when its
/// runner reports the end.
async fn pending_outcome<S: Store>(
    app: &App<S>,
    progress: &Progress,
    run_id: &str,
    now: i64,
) -> Result<Option<(StepOutcome, Option<RunRow>)>, StoreError> {
    let Some(run) = app.store.run(run_id).await? else {
        let gone = StepOutcome::ended(
            RunState::Error,
            &format!("the step's run {run_id} is gone from the store"),
        );
        return Ok(Some((gone, None)));
    };
    if run.state.is_final() {
        return Ok(Some((outcome_of(app, &run, progress).await?, Some(run))));
    }
    let stranded = stranded_on(app, &run).await?;
    if progress.run.finish.is_none() && stranded.is_none() {
        return Ok(None);
    }
    let ended = app.store.request_cancel(&run.id, "server", now).await?;
    app.wake(Wake::CANCEL.with(Wake::EVENTS));
    if !ended.state.is_final() {
        return Ok(None);
    }
    let outcome = match stranded {
        Some(why) => StepOutcome {
            run_id: Some(run.id.clone()),
            ..StepOutcome::ended(RunState::Error, &why)
        },
        None => outcome_of(app, &ended, progress).await?,
    };
    Ok(Some((outcome, Some(ended))))
}

fn note(event: &str, detail: String) -> WorkflowNote {
    WorkflowNote {
        event: event.into(),
        detail,
    }
}

fn to_json(progress: &Progress) -> serde_json::Value {
    serde_json::to_value(progress).unwrap_or_default()
}

/// A change that keeps the workflow running with `progress`, applied only at the version read.
fn change(row: &WorkflowRow, progress: serde_json::Value, now: i64) -> WorkflowChange {
    WorkflowChange {
        id: row.id.clone(),
        expected_version: row.version,
        state: RunState::Running,
        progress,
        runner_id: row.runner_id.clone(),
        reason: None,
        finished_at: None,
        now,
        actor: "server".into(),
        notes: Vec::new(),
        new_run: None,
    }
}

/// Makes the change end the workflow.
fn end(change: &mut WorkflowChange, state: RunState, reason: String) {
    change.state = state;
    change.reason = Some(reason);
    change.finished_at = Some(change.now);
}

/// Writes the change; `Again` when another writer came first (the caller reads afresh).
async fn write<S: Store>(app: &App<S>, change: &WorkflowChange) -> Result<Step, StoreError> {
    if app.store.update_workflow(change).await?.is_none() {
        return Ok(Step::Again);
    }
    if change.new_run.is_some() {
        app.wake(Wake::QUEUED);
    }
    app.wake(Wake::EVENTS);
    Ok(Step::Done)
}

/// Why a queued step can never start: the runner holding the worktree went offline.
async fn stranded_on<S: Store>(app: &App<S>, run: &RunRow) -> Result<Option<String>, StoreError> {
    if run.state != RunState::Queued {
        return Ok(None);
    }
    let Some(pinned) = &run.pinned_runner else {
        return Ok(None);
    };
    Ok(match app.store.runner(pinned).await? {
        Some(r) if r.online => None,
        _ => Some(format!(
            "runner {pinned}, which holds the workflow's worktree, is offline, and the step cannot run on another runner"
        )),
    })
}

/// The position of the step the state machine waits for.
pub(super) fn current_position(run: &WorkflowRun) -> Option<Position> {
    match run.next() {
        Next::Run(request) => Some(request.position),
        // After a cancel the cursor still names the step that was running.
        Next::Finished(finish) => match finish.reason {
            berth_core::workflow::state::FinishReason::Cancelled { at } => Some(at),
            _ => None,
        },
    }
}

fn record_at<'a>(run: &'a WorkflowRun, at: &Position) -> Option<&'a StepRecord> {
    if at.is_baseline() {
        run.baseline.iter().find(|r| r.position == *at)
    } else {
        run.iterations
            .get(at.iteration as usize - 1)
            .and_then(|it| it.steps.iter().find(|r| r.position == *at))
    }
}

fn outcome_line(outcome: &StepOutcome) -> String {
    let mut line = outcome.state.to_string();
    if let Some(code) = outcome.exit_code {
        line += &format!(" (exit {code})");
    }
    if let Some(reason) = &outcome.reason {
        line += &format!(": {reason}");
    }
    line
}

fn verdict_line(record: &StepRecord) -> String {
    match (&record.verdict, &record.verdict_error) {
        (Some(v), _) => format!(
            "; verdict: {} — {}",
            if v.approved {
                "approved"
            } else {
                "changes requested"
            },
            v.summary
        ),
        (None, Some(e)) => format!("; no valid verdict: {e}"),
        _ => String::new(),
    }
}

/// How a step's run ended, as the state machine needs it: state, exit code, reason, output
/// (an agent's final message, or a command's stdout and stderr) and the verdict file.
async fn outcome_of<S: Store>(
    app: &App<S>,
    run: &RunRow,
    progress: &Progress,
) -> Result<StepOutcome, StoreError> {
    let (state, reason) = match run.state {
        RunState::Lost => (
            RunState::Error,
            Some(format!(
                "lost: {}",
                run.reason.as_deref().unwrap_or("the runner went away")
            )),
        ),
        state if state.is_final() => (state, run.reason.clone()),
        _ => (RunState::Error, run.reason.clone()),
    };
    let step = current_position(&progress.run)
        .and_then(|at| progress.run.workflow.step(&at.step).cloned());
    let agent = step
        .as_ref()
        .is_some_and(|s| matches!(s.action, Action::Agent { .. }));
    let output = step_output(app, &run.id, agent).await?;
    let verdict_file = match step.as_ref().and_then(|s| s.verdict.as_ref()) {
        Some(rule) => {
            let path = artifacts_dir(&app.config.state_dir, &run.id)
                .join("berth/out")
                .join(&rule.file);
            std::fs::File::open(&path)
                .and_then(workflow::verdict::read_verdict_file)
                .ok()
        }
        None => None,
    };
    Ok(StepOutcome {
        state,
        exit_code: run.exit_code,
        reason,
        output,
        verdict_file,
        run_id: Some(run.id.clone()),
    })
}

/// A step's output from its stored events: an agent's final message, or a command's stdout
/// and stderr by the core's rule (`workflow::output`, the same as `berth workflow run`'s).
async fn step_output<S: Store>(
    app: &App<S>,
    run_id: &str,
    agent: bool,
) -> Result<String, StoreError> {
    let mut after = 0;
    let mut tail = OutputTail::default();
    let mut final_message = String::new();
    loop {
        let events = app
            .store
            .events_after(run_id, after, berth_store::MAX_EVENTS_LIMIT)
            .await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        for event in &events {
            match event.kind.as_str() {
                "stdout" | "stderr" if !agent => tail.push_event(Some(&event.data), None),
                "stdout_base64" | "stderr_base64" if !agent => {
                    tail.push_event(None, Some(&event.data));
                }
                "agent" if agent => {
                    let value = serde_json::from_str(&event.data).unwrap_or_default();
                    if let Some(message) = workflow::verdict::final_message(&value) {
                        final_message = message.to_string();
                    }
                }
                _ => {}
            }
        }
    }
    if agent {
        return Ok(final_message);
    }
    Ok(tail.finish())
}

/// Why a workflow's next step could not be made into a run.
#[derive(Debug, thiserror::Error)]
enum StepRunError {
    #[error("reading the diff {}: {source}", path.display())]
    Diff {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("rendering the prompt failed: {0}")]
    Prompt(berth_core::workflow::template::TemplateError),
    #[error("{0}")]
    Encode(serde_json::Error),
}

/// The run of a step: its sandbox request (agent, command in the sandbox, or command on the
/// runner's host), the submission's tags and labels, pinned to the worktree's runner.
fn step_run<S: Store>(
    app: &App<S>,
    row: &WorkflowRow,
    submission: &Submission,
    progress: &Progress,
    request: &StepRequest,
    runner: Option<String>,
    now: i64,
) -> Result<NewRun, StepRunError> {
    let step = &request.step;
    let mut sandbox = SandboxRequest {
        isolation: step.isolation.map(|i| i.to_string()),
        env: submission.env.clone(),
        network: submission.network.clone(),
        timeout: step.timeout_secs.map(|s| format!("{s}s")),
        workflow: Some(row.id.clone()),
        // How the runner makes the workflow's workspace at its first step.
        workspace_mode: Some(
            match progress.run.workflow.workspace {
                WorkspaceKind::Worktree => "worktree",
                WorkspaceKind::Copy => "copy",
            }
            .into(),
        ),
        ..SandboxRequest::default()
    };
    let mut execution_mode = berth_store::ExecutionMode::DockerSandbox;
    match &step.action {
        Action::Agent { profile, .. } => {
            let diff = if request.needs_diff() {
                match diff_path(&app.config.state_dir, progress) {
                    Some(path) => std::fs::read(&path)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .map_err(|source| StepRunError::Diff { path, source })?,
                    None => String::new(),
                }
            } else {
                String::new()
            };
            let prompt = request.prompt(&diff).map_err(StepRunError::Prompt)?;
            sandbox.profile = Some(profile.clone());
            sandbox.egress = submission.egress.clone();
            sandbox.prompt = prompt;
            sandbox.image = submission.agent_image.clone();
        }
        Action::Command { argv, location } => {
            sandbox.command = argv.clone();
            if *location == Location::Host {
                execution_mode = berth_store::ExecutionMode::Local;
                sandbox.network = None;
            } else {
                sandbox.image = submission.image.clone();
                sandbox.egress = submission.egress.clone();
            }
        }
    }
    let mut labels = submission.labels.clone();
    labels.insert(WORKFLOW_LABEL.into(), row.id.clone());
    labels.insert(STEP_LABEL.into(), request.position.dir());
    Ok(NewRun {
        id: berth_core::ids::run_id(now as u64, rand::random()),
        project: row.project.clone(),
        execution_mode,
        spec: serde_json::to_value(&sandbox).map_err(StepRunError::Encode)?,
        tags: berth_api::routing_tags(&submission.tags, sandbox.isolation.as_deref()),
        labels,
        created_at: now,
        actor: "server".into(),
        pinned_runner: runner,
    })
}

/// Moves on every running workflow (the sweeper's pass).
pub async fn advance_all<S: Store>(app: &App<S>) {
    match app.store.active_workflows().await {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = advance(app, &id).await {
                    tracing::error!(workflow = %id, error = %e, "advancing a workflow failed");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "listing running workflows failed"),
    }
}
