//! A workflow run as a state machine: given what happened so far, what to run next, and when and
//! how the workflow ends.
//!
//! The caller loops:
//!
//! ```text
//! let mut run = WorkflowRun::new(workflow, task);
//! while let Next::Run(request) = run.next() {
//!     // prompt = request.prompt(&diff) for agent steps; run it under iter-N/<step>/
//!     run.record(outcome)?;
//! }
//! ```
//!
//! and calls [`WorkflowRun::cancel`] when the user cancels (then records the cancelled step's
//! outcome, which does not change the end). The whole run serialises, so it can be stored after
//! every step and shown by the API.
//!
//! How it ends:
//! - `succeeded`: at the end of an iteration, the `until` step's verdict in that iteration is an
//!   approval. The steps after the reviewer in that iteration still run.
//! - `failed`: `max_iterations` rounds without approval; a step failed (non-zero exit, timeout)
//!   without `continue_on_failure`; a baseline step failed without `continue_on_failure`
//!   (reported as a red baseline, before any change); a verdict was missing or malformed (never
//!   an approval, whatever `continue_on_failure` says).
//! - `error`: a step could not be run at all (berth or the engine failed).
//! - `cancelled`: cancelled by the user, or a step's run was cancelled; the position says where.
//!
//! A baseline step that fails with `continue_on_failure` makes the baseline *red*: it is listed
//! in [`Finish::baseline_red`] whatever the end, and named in a later failure's message, so a
//! failure that was there before any change is not blamed on the builder.

use serde::{Deserialize, Serialize};

use super::template::{Context, Field, TemplateError, FIELDS};
use super::verdict::{Verdict, VerdictError};
use super::{Action, Step, Workflow};
use crate::exit::RunState;

/// Where in a workflow run a step is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// 0 for the baseline, 1.. for the loop's iterations.
    pub iteration: u32,
    /// The step's index in the baseline or the loop.
    pub index: usize,
    pub step: String,
}

impl Position {
    pub fn is_baseline(&self) -> bool {
        self.iteration == 0
    }

    /// The directory of the step's records: `baseline/<step>` or `iter-N/<step>`.
    pub fn dir(&self) -> String {
        if self.is_baseline() {
            format!("baseline/{}", self.step)
        } else {
            format!("iter-{}/{}", self.iteration, self.step)
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_baseline() {
            write!(f, "baseline step `{}`", self.step)
        } else {
            write!(f, "iteration {}, step `{}`", self.iteration, self.step)
        }
    }
}

/// How a step's run ended, as the caller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// The run's final state (`succeeded`, `failed`, `timed_out`, `cancelled`, `error`).
    pub state: RunState,
    pub exit_code: Option<i64>,
    /// Why it failed, if it did (the run record's reason).
    pub reason: Option<String>,
    /// What `{{ STEP.output }}` shows: a command's output (stdout and stderr), an agent's final
    /// message (also what a verdict's fallback rule reads).
    pub output: String,
    /// The verdict file's bytes, if the step has a verdict and wrote the file.
    pub verdict_file: Option<Vec<u8>>,
    /// The run's id, to find its records.
    pub run_id: Option<String>,
}

impl StepOutcome {
    /// A step that exited with `exit_code` and printed `output`.
    pub fn exited(exit_code: i64, output: &str) -> Self {
        Self {
            state: crate::exit::state_for_exit(exit_code),
            exit_code: Some(exit_code),
            reason: None,
            output: output.to_string(),
            verdict_file: None,
            run_id: None,
        }
    }

    /// A step that ended in `state` without an exit code of its own.
    pub fn ended(state: RunState, reason: &str) -> Self {
        Self {
            state,
            exit_code: None,
            reason: Some(reason.to_string()),
            output: String::new(),
            verdict_file: None,
            run_id: None,
        }
    }

    pub fn with_verdict_file(mut self, bytes: &[u8]) -> Self {
        self.verdict_file = Some(bytes.to_vec());
        self
    }
}

/// What happened in one step, as kept for `iter-N/` and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub position: Position,
    pub state: RunState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    /// The output, cut to the workflow's `max_value_chars`.
    pub output: String,
    pub run_id: Option<String>,
    pub verdict: Option<Verdict>,
    pub verdict_error: Option<VerdictError>,
}

/// One round of the loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iteration {
    pub number: u32,
    pub steps: Vec<StepRecord>,
    /// The `until` step's verdict in this round.
    pub verdict: Option<Verdict>,
}

/// Why a workflow run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FinishReason {
    /// The `until` step approved in `iteration`.
    Approved { iteration: u32 },
    /// `max_iterations` rounds, none approved.
    MaxIterations { max_iterations: u32 },
    /// A baseline step failed before any change, without `continue_on_failure`.
    BaselineFailed {
        at: Position,
        state: RunState,
        exit_code: Option<i64>,
        reason: Option<String>,
    },
    /// A step failed without `continue_on_failure`.
    StepFailed {
        at: Position,
        state: RunState,
        exit_code: Option<i64>,
        reason: Option<String>,
    },
    /// A step's verdict was missing or malformed.
    VerdictInvalid { at: Position, error: VerdictError },
    /// A step could not be run (berth or the engine failed).
    StepError { at: Position, reason: String },
    /// Cancelled while `at` was running (or about to run).
    Cancelled { at: Position },
}

/// How a workflow run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    /// `succeeded`, `failed`, `cancelled` or `error`.
    pub state: RunState,
    pub reason: FinishReason,
    /// Baseline steps that failed before any change (and were allowed to).
    pub baseline_red: Vec<String>,
    /// Iterations started.
    pub iterations: u32,
}

impl Finish {
    /// One line for people: the state's reason.
    pub fn message(&self) -> String {
        let red = if self.baseline_red.is_empty() {
            String::new()
        } else {
            format!(
                "; note: the baseline was already red before any change ({} failed)",
                self.baseline_red
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let how = |state: &RunState, exit_code: &Option<i64>, reason: &Option<String>| {
            let mut s = match (state, exit_code) {
                (RunState::TimedOut, _) => "timed out".to_string(),
                (_, Some(code)) => format!("exited with {code}"),
                _ => state.to_string(),
            };
            if let Some(r) = reason {
                s.push_str(": ");
                s.push_str(r);
            }
            s
        };
        let main = match &self.reason {
            FinishReason::Approved { iteration } => format!("approved in iteration {iteration}"),
            FinishReason::MaxIterations { max_iterations } => {
                format!("not approved after {max_iterations} iterations (loop.max_iterations)")
            }
            FinishReason::BaselineFailed {
                at,
                state,
                exit_code,
                reason,
            } => format!(
                "red baseline: {at} {} before any change was made; no agent ran",
                how(state, exit_code, reason)
            ),
            FinishReason::StepFailed {
                at,
                state,
                exit_code,
                reason,
            } => format!("{at} {}", how(state, exit_code, reason)),
            FinishReason::VerdictInvalid { at, error } => {
                format!("{at} gave no valid verdict (not an approval): {error}")
            }
            FinishReason::StepError { at, reason } => format!("{at} could not run: {reason}"),
            FinishReason::Cancelled { at } => format!("cancelled during {at}"),
        };
        // A failed baseline that ended the run is the red baseline itself.
        if matches!(self.reason, FinishReason::BaselineFailed { .. }) {
            main
        } else {
            main + &red
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Run(StepRequest),
    Finished(Finish),
}

/// A step to run now.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRequest {
    pub position: Position,
    pub step: Step,
    context: Context,
}

impl StepRequest {
    /// Whether the prompt needs the workspace's current diff (so the caller computes it only
    /// then).
    pub fn needs_diff(&self) -> bool {
        match &self.step.action {
            Action::Agent { prompt, .. } => prompt.uses("diff"),
            Action::Command { .. } => false,
        }
    }

    /// The agent's prompt with every reference filled in (`diff` is the workspace's diff against
    /// its start, cut to the workflow's limit); `None` for a command step.
    pub fn prompt(&self, diff: &str) -> Result<Option<String>, TemplateError> {
        let Action::Agent { prompt, .. } = &self.step.action else {
            return Ok(None);
        };
        let mut context = self.context.clone();
        context.set("diff", diff);
        prompt.render(&context).map(Some)
    }

    /// The values the prompt is rendered with (without the diff).
    pub fn context(&self) -> &Context {
        &self.context
    }
}

/// A mistake of the caller, not of the workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the workflow run has already ended")]
    Finished,
    #[error("a step's outcome must be a final state, not {0}")]
    NotFinal(RunState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    iteration: u32,
    index: usize,
}

/// A workflow run: the workflow, the task, everything that happened, and what comes next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRun {
    pub workflow: Workflow,
    /// What `{{ task }}` shows.
    pub task: String,
    pub baseline: Vec<StepRecord>,
    pub iterations: Vec<Iteration>,
    pub baseline_red: Vec<String>,
    /// The step to run next (or, after a cancel, the step that was running); `None` at the end.
    cursor: Option<Cursor>,
    pub finish: Option<Finish>,
}

impl WorkflowRun {
    pub fn new(workflow: Workflow, task: &str) -> Self {
        let cursor = if workflow.baseline.is_empty() {
            Cursor {
                iteration: 1,
                index: 0,
            }
        } else {
            Cursor {
                iteration: 0,
                index: 0,
            }
        };
        Self {
            workflow,
            task: task.to_string(),
            baseline: Vec::new(),
            iterations: Vec::new(),
            baseline_red: Vec::new(),
            cursor: Some(cursor),
            finish: None,
        }
    }

    /// The cursor and its step, if the cursor points at one. (A stored run edited by hand could
    /// point past the end; it is then treated as having no next step, never indexed blindly.)
    fn current(&self) -> Option<(Cursor, &Step, Position)> {
        let c = self.cursor?;
        let step = if c.iteration == 0 {
            self.workflow.baseline.get(c.index)?
        } else {
            self.workflow.steps.get(c.index)?
        };
        let position = Position {
            iteration: c.iteration,
            index: c.index,
            step: step.name.clone(),
        };
        Some((c, step, position))
    }

    /// What to do now.
    pub fn next(&self) -> Next {
        if let Some(finish) = &self.finish {
            return Next::Finished(finish.clone());
        }
        match self.current() {
            Some((c, step, position)) => Next::Run(StepRequest {
                position,
                step: step.clone(),
                context: self.context(c),
            }),
            // Only a stored run edited by hand gets here: the cursor goes when the run ends.
            None => Next::Finished(Finish {
                state: RunState::Error,
                reason: FinishReason::StepError {
                    at: Position {
                        iteration: 0,
                        index: 0,
                        step: String::new(),
                    },
                    reason: "the stored workflow run has neither a next step nor an end".into(),
                },
                baseline_red: self.baseline_red.clone(),
                iterations: self.iterations.len() as u32,
            }),
        }
    }

    /// The values a template of the step at `c` may use.
    fn context(&self, c: Cursor) -> Context {
        let wf = &self.workflow;
        let mut ctx = Context::new(wf.max_value_chars);
        ctx.set("task", &self.task);
        ctx.set("iteration", &c.iteration.to_string());
        ctx.set("max_iterations", &wf.max_iterations.to_string());
        for (step, record) in wf.baseline.iter().zip(&self.baseline) {
            set_step(&mut ctx, step, Some(record));
        }
        if c.iteration > 0 {
            let current = self.iterations.get(c.iteration as usize - 1);
            let previous = (c.iteration > 1)
                .then(|| self.iterations.get(c.iteration as usize - 2))
                .flatten();
            for (j, step) in wf.steps.iter().enumerate() {
                let from = if j < c.index { current } else { previous };
                set_step(&mut ctx, step, from.and_then(|it| it.steps.get(j)));
            }
        }
        ctx
    }

    /// Cancels the run: it ends `cancelled` at the step that is running (or would run next). The
    /// caller then stops that step and may still [`record`](Self::record) its outcome. Returns
    /// false if the run had already ended.
    pub fn cancel(&mut self) -> bool {
        if self.finish.is_some() {
            return false;
        }
        let Some((c, _, at)) = self.current() else {
            return false;
        };
        self.finish_with(RunState::Cancelled, FinishReason::Cancelled { at }, Some(c));
        true
    }

    /// Records the outcome of the step [`next`](Self::next) asked for.
    pub fn record(&mut self, outcome: StepOutcome) -> Result<(), RecordError> {
        if !outcome.state.is_final() {
            return Err(RecordError::NotFinal(outcome.state));
        }
        let Some((c, step, at)) = self.current() else {
            return Err(RecordError::Finished);
        };
        let step = step.clone();
        let mut record = StepRecord {
            position: at.clone(),
            state: outcome.state,
            exit_code: outcome.exit_code,
            reason: outcome.reason.clone(),
            output: super::template::truncate(&outcome.output, self.workflow.max_value_chars),
            run_id: outcome.run_id.clone(),
            verdict: None,
            verdict_error: None,
        };

        // After a cancel, the cancelled step's outcome is kept, and the end stays as it is.
        if self.finish.is_some() {
            self.push(c, record);
            self.cursor = None;
            return Ok(());
        }

        let failed = |at: Position| {
            let (state, exit_code, reason) =
                (outcome.state, outcome.exit_code, outcome.reason.clone());
            if c.iteration == 0 {
                FinishReason::BaselineFailed {
                    at,
                    state,
                    exit_code,
                    reason,
                }
            } else {
                FinishReason::StepFailed {
                    at,
                    state,
                    exit_code,
                    reason,
                }
            }
        };
        let end: Option<(RunState, FinishReason)> = match outcome.state {
            RunState::Cancelled => Some((
                RunState::Cancelled,
                FinishReason::Cancelled { at: at.clone() },
            )),
            RunState::Error | RunState::Lost => Some((
                RunState::Error,
                FinishReason::StepError {
                    at: at.clone(),
                    reason: outcome
                        .reason
                        .clone()
                        .unwrap_or_else(|| "unknown error".into()),
                },
            )),
            RunState::Failed | RunState::TimedOut => {
                if step.continue_on_failure {
                    if c.iteration == 0 {
                        self.baseline_red.push(step.name.clone());
                    }
                    None
                } else {
                    Some((RunState::Failed, failed(at.clone())))
                }
            }
            RunState::Succeeded => match &step.verdict {
                None => None,
                Some(rule) => {
                    match rule.decide(outcome.verdict_file.as_deref(), Some(&outcome.output)) {
                        Ok(v) => {
                            record.verdict = Some(v);
                            None
                        }
                        Err(error) => {
                            record.verdict_error = Some(error.clone());
                            Some((
                                RunState::Failed,
                                FinishReason::VerdictInvalid {
                                    at: at.clone(),
                                    error,
                                },
                            ))
                        }
                    }
                }
            },
            RunState::Created | RunState::Queued | RunState::Claimed | RunState::Running => {
                return Err(RecordError::NotFinal(outcome.state))
            }
        };
        if c.iteration > 0 && step.name == self.workflow.until {
            let verdict = record.verdict.clone();
            self.push(c, record);
            if let Some(it) = self.iterations.last_mut() {
                it.verdict = verdict;
            }
        } else {
            self.push(c, record);
        }
        if let Some((state, reason)) = end {
            self.finish_with(state, reason, None);
            return Ok(());
        }
        self.advance(c);
        Ok(())
    }

    /// The step recorded last: the newest iteration's last step, or the baseline's.
    pub fn last_step(&self) -> Option<&StepRecord> {
        self.iterations
            .last()
            .and_then(|it| it.steps.last())
            .or_else(|| self.baseline.last())
    }

    fn push(&mut self, c: Cursor, record: StepRecord) {
        if c.iteration == 0 {
            self.baseline.push(record);
            return;
        }
        if self.iterations.len() < c.iteration as usize {
            self.iterations.push(Iteration {
                number: c.iteration,
                steps: Vec::new(),
                verdict: None,
            });
        }
        if let Some(it) = self.iterations.last_mut() {
            it.steps.push(record);
        }
    }

    fn advance(&mut self, c: Cursor) {
        let wf = &self.workflow;
        if c.iteration == 0 {
            self.cursor = Some(if c.index + 1 < wf.baseline.len() {
                Cursor {
                    iteration: 0,
                    index: c.index + 1,
                }
            } else {
                Cursor {
                    iteration: 1,
                    index: 0,
                }
            });
            return;
        }
        if c.index + 1 < wf.steps.len() {
            self.cursor = Some(Cursor {
                iteration: c.iteration,
                index: c.index + 1,
            });
            return;
        }
        // The end of an iteration: the `until` step's verdict decides.
        let approved = self
            .iterations
            .last()
            .and_then(|it| it.verdict.as_ref())
            .is_some_and(|v| v.approved);
        if approved {
            self.finish_with(
                RunState::Succeeded,
                FinishReason::Approved {
                    iteration: c.iteration,
                },
                None,
            );
        } else if c.iteration >= wf.max_iterations {
            let max_iterations = wf.max_iterations;
            self.finish_with(
                RunState::Failed,
                FinishReason::MaxIterations { max_iterations },
                None,
            );
        } else {
            self.cursor = Some(Cursor {
                iteration: c.iteration + 1,
                index: 0,
            });
        }
    }

    fn finish_with(&mut self, state: RunState, reason: FinishReason, keep: Option<Cursor>) {
        self.finish = Some(Finish {
            state,
            reason,
            baseline_red: self.baseline_red.clone(),
            // A cancel may come before the iteration's first step is recorded.
            iterations: (self.iterations.len() as u32).max(keep.map_or(0, |c| c.iteration)),
        });
        self.cursor = keep;
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }
}

/// Sets every field of `step` from `record`; a step that has not run has empty values.
fn set_step(ctx: &mut Context, step: &Step, record: Option<&StepRecord>) {
    for (name, field) in FIELDS {
        if field.needs_verdict() && step.verdict.is_none() {
            continue;
        }
        let verdict = record.and_then(|r| r.verdict.as_ref());
        let value = match (field, record) {
            (_, None) => String::new(),
            (Field::Output, Some(r)) => r.output.clone(),
            (Field::ExitCode, Some(r)) => r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            (Field::Status, Some(r)) => r.state.to_string(),
            (Field::Approved, Some(_)) => {
                verdict.map(|v| v.approved.to_string()).unwrap_or_default()
            }
            (Field::Summary, Some(_)) => verdict.map(|v| v.summary.clone()).unwrap_or_default(),
            (Field::Feedback, Some(_)) => verdict.map(Verdict::feedback).unwrap_or_default(),
        };
        ctx.set(format!("{}.{name}", step.name), &value);
    }
}
