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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_api::{
    FieldError, SandboxRequest, SubmitWorkflow, WorkflowAuditView, WorkflowStepView, WorkflowView,
};
use berth_core::exit::RunState as StepState;
use berth_core::workflow::state::{
    Next, Position, StepOutcome, StepRecord, StepRequest, WorkflowRun,
};
use berth_core::workflow::{self, Action, Location, Workflow, WorkspaceKind};
use berth_store::{
    NewRun, NewWorkflow, RunRow, RunState, Store, StoreError, Wake, WorkflowAuditEntry,
    WorkflowChange, WorkflowNote, WorkflowRow,
};
use serde::{Deserialize, Serialize};

use crate::clock::{now_ms, rfc3339};
use crate::App;

/// The most of a step's output kept for `{{ STEP.output }}` (the template cuts further).
const OUTPUT_TAIL: usize = 256 * 1024;

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

/// A checked submission, ready to store.
pub struct Accepted {
    pub workflow: NewWorkflow,
}

fn field(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a submission; every problem is reported with its JSON path.
pub fn check(
    request: &SubmitWorkflow,
    ceiling: Option<&[String]>,
    actor: &str,
    now: i64,
    random: u32,
) -> Result<Accepted, Vec<FieldError>> {
    let mut errors = Vec::new();
    let test_command = request.test_command.clone();
    if test_command
        .as_ref()
        .is_some_and(|argv| argv.first().is_none_or(String::is_empty))
    {
        errors.push(field(
            "test_command",
            "must be an argv array with a program first, e.g. [\"make\", \"test\"]",
        ));
    }
    let file_name = request
        .file_name
        .clone()
        .unwrap_or_else(|| "workflow".into());
    let parsed: Option<Workflow> = match (&request.workflow, &request.builtin) {
        (Some(_), Some(_)) => {
            errors.push(field(
                "builtin",
                "give either a workflow file's text or a built-in's name, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(field(
                "workflow",
                format!(
                    "required: the workflow file's text (TOML), or `builtin` with one of: {}",
                    workflow::BUILTINS.join(", ")
                ),
            ));
            None
        }
        (None, Some(name)) => match workflow::builtin(name, None) {
            None => {
                errors.push(field(
                    "builtin",
                    format!(
                        "`{name}` is not a built-in workflow: expected one of {}",
                        workflow::BUILTINS.join(", ")
                    ),
                ));
                None
            }
            Some(Err(e)) => {
                errors.push(field("builtin", e.to_string()));
                None
            }
            Some(Ok(w)) => Some(w),
        },
        (Some(text), None) => match workflow::parse(&file_name, text) {
            Ok(w) => Some(w),
            Err(e) => {
                errors.push(field("workflow", e.to_string()));
                None
            }
        },
    };
    let mut parsed = parsed;
    if let (Some(w), Some(argv)) = (parsed.as_mut(), &test_command) {
        if !argv.is_empty() && !argv[0].is_empty() {
            if let Err(e) = w.set_test_command(argv) {
                errors.push(field("test_command", e));
            }
        }
    }
    if let Some(w) = &parsed {
        if w.needs_task() && request.task.trim().is_empty() {
            errors.push(field(
                "task",
                format!(
                    "workflow `{}` needs a task: its prompts use {{{{ task }}}}",
                    w.name
                ),
            ));
        }
        let sandboxed: Vec<&str> = w
            .all_steps()
            .filter(|s| {
                matches!(
                    s.action,
                    Action::Command {
                        location: Location::Sandbox,
                        ..
                    }
                )
            })
            .map(|s| s.name.as_str())
            .collect();
        if !sandboxed.is_empty() && request.image.is_none() {
            errors.push(field(
                "image",
                format!(
                    "required: the image for the command steps in the sandbox ({})",
                    sandboxed.join(", ")
                ),
            ));
        }
    }
    for (name, image) in [
        ("image", &request.image),
        ("agent_image", &request.agent_image),
    ] {
        if let Some(e) = image.as_deref().and_then(berth_api::image_error) {
            errors.push(field(name, e));
        }
    }
    for name in request.env.keys() {
        if let Err(e) = berth_core::spec::check_env_name(name) {
            errors.push(field(&format!("env.{name}"), e));
        }
    }
    if let Some(network) = &request.network {
        if let Err(e) = berth_core::spec::NetworkMode::parse(network) {
            errors.push(field("network", e));
        }
    }
    errors.extend(berth_api::tag_errors(&request.tags));
    // Every sandboxed step runs with the workflow's egress: judged once per profile it meets.
    let mut profiles: Vec<Option<&str>> = Vec::new();
    for step in parsed.iter().flat_map(|w| w.all_steps()) {
        let profile = match &step.action {
            Action::Agent { profile, .. } => Some(profile.as_str()),
            Action::Command {
                location: Location::Sandbox,
                ..
            } => None,
            Action::Command { .. } => continue,
        };
        if !profiles.contains(&profile) {
            profiles.push(profile);
        }
    }
    if profiles.is_empty() {
        profiles.push(None);
    }
    for profile in profiles {
        for e in berth_api::egress_errors(
            request.egress.as_ref(),
            request.network.as_deref(),
            profile,
            ceiling,
            "",
        ) {
            if !errors.iter().any(|x| x.field == e.field) {
                errors.push(e);
            }
        }
    }
    let Some(parsed) = parsed.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };
    let id = format!("wf-{}", berth_core::ids::run_id(now as u64, random));
    let name = parsed.name.clone();
    let progress = Progress {
        run: WorkflowRun::new(parsed, &request.task),
        pending_run: None,
        diff_run: None,
    };
    let submission = Submission {
        file_name,
        image: request.image.clone(),
        agent_image: request.agent_image.clone(),
        network: request.network.clone(),
        egress: request.egress.clone(),
        env: request.env.clone(),
        tags: request.tags.clone(),
        labels: request.labels.clone(),
        actor: actor.to_string(),
    };
    Ok(Accepted {
        workflow: NewWorkflow {
            id,
            project: request.project.clone(),
            name,
            spec: serde_json::to_value(&submission).unwrap_or_default(),
            progress: serde_json::to_value(&progress).unwrap_or_default(),
            created_at: now,
            actor: actor.to_string(),
        },
    })
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

pub fn progress_of(row: &WorkflowRow) -> Result<Progress, String> {
    serde_json::from_value(row.progress.clone())
        .map_err(|e| format!("workflow {}: stored progress is unreadable: {e}", row.id))
}

fn submission_of(row: &WorkflowRow) -> Result<Submission, String> {
    serde_json::from_value(row.spec.clone())
        .map_err(|e| format!("workflow {}: stored submission is unreadable: {e}", row.id))
}

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
            end(&mut change, RunState::Error, e);
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
                    StepState::Succeeded => RunState::Succeeded,
                    StepState::Failed | StepState::TimedOut => RunState::Failed,
                    StepState::Cancelled => RunState::Cancelled,
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
                            .record(StepOutcome::ended(StepState::Error, &why));
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
            StepState::Error,
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
            ..StepOutcome::ended(StepState::Error, &why)
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
fn current_position(run: &WorkflowRun) -> Option<Position> {
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
        RunState::Succeeded => (StepState::Succeeded, run.reason.clone()),
        RunState::Failed => (StepState::Failed, run.reason.clone()),
        RunState::TimedOut => (StepState::TimedOut, run.reason.clone()),
        RunState::Cancelled => (StepState::Cancelled, run.reason.clone()),
        RunState::Lost => (
            StepState::Error,
            Some(format!(
                "lost: {}",
                run.reason.as_deref().unwrap_or("the runner went away")
            )),
        ),
        _ => (StepState::Error, run.reason.clone()),
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
            read_limited(&path, workflow::verdict::MAX_VERDICT_BYTES as u64 + 1)
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

fn read_limited(path: &Path, limit: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// A step's output from its stored events: an agent's final message, or the last
/// [`OUTPUT_TAIL`] bytes of a command's stdout and stderr.
async fn step_output<S: Store>(
    app: &App<S>,
    run_id: &str,
    agent: bool,
) -> Result<String, StoreError> {
    let mut after = 0;
    let mut text = String::new();
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
                "stdout" | "stderr" if !agent => {
                    text.push_str(&event.data);
                    if text.len() > 2 * OUTPUT_TAIL {
                        let cut = floor_char_boundary(&text, text.len() - OUTPUT_TAIL);
                        text.drain(..cut);
                    }
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
    if text.len() > OUTPUT_TAIL {
        let cut = floor_char_boundary(&text, text.len() - OUTPUT_TAIL);
        text.drain(..cut);
    }
    Ok(text)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
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
) -> Result<NewRun, String> {
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
    let mut execution_mode = "docker-sandbox";
    match &step.action {
        Action::Agent { profile, .. } => {
            let diff = if request.needs_diff() {
                match diff_path(&app.config.state_dir, progress) {
                    Some(path) => std::fs::read(&path)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .map_err(|e| format!("reading the diff {}: {e}", path.display()))?,
                    None => String::new(),
                }
            } else {
                String::new()
            };
            let prompt = request
                .prompt(&diff)
                .map_err(|e| format!("rendering the prompt failed: {e}"))?;
            sandbox.profile = Some(profile.clone());
            sandbox.egress = submission.egress.clone();
            sandbox.prompt = prompt;
            sandbox.image = submission.agent_image.clone();
        }
        Action::Command { argv, location } => {
            sandbox.command = argv.clone();
            if *location == Location::Host {
                execution_mode = "local";
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
        execution_mode: execution_mode.into(),
        spec: serde_json::to_value(&sandbox).map_err(|e| e.to_string())?,
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

/// The workflow of a step run, if it is one.
pub fn workflow_of(run: &RunRow) -> Option<&str> {
    run.labels.get(WORKFLOW_LABEL).map(String::as_str)
}

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
