//! Workflows: steps that run in one workspace, with a loop such as builder → tests → reviewer
//! that repeats until a reviewer approves.
//!
//! This module is the format and the rules, without I/O: [`parse`] reads and checks a workflow
//! file, [`template`] renders prompts, [`output`] is what `{{ STEP.output }}` keeps of a
//! command, [`verdict`] reads a reviewer's decision, and [`state`]
//! says what to run next given what happened so far. Running the steps (the workspace, the
//! sandbox, `iter-N/` directories, the server) belongs to the layers above.
//!
//! ```toml
//! name = "builder-reviewer"
//! workspace = "worktree"              # or "copy"
//!
//! [[baseline]]                        # optional: steps before the loop, before any change
//! name = "baseline"
//! command = ["make", "test"]
//! continue_on_failure = true          # a red baseline is reported, not blamed on the builder
//!
//! [loop]
//! max_iterations = 3                  # 1..=20
//! until = "review.approved"           # a loop step with a verdict
//!
//! [[loop.steps]]
//! name = "build"
//! agent = "claude-code"               # a profile
//! prompt = "{{ task }}\n{{ review.feedback }}\n{{ tests.output }}"
//!
//! [[loop.steps]]
//! name = "tests"
//! command = ["make", "test"]
//! where = "sandbox"                   # or "host"
//! continue_on_failure = true
//!
//! [[loop.steps]]
//! name = "review"
//! agent = "codex"
//! prompt = "Review this change:\n{{ diff }}"
//! verdict = { file = "result.json", fallback = { approve = "(?m)^APPROVED", reject = "(?m)^CHANGES REQUESTED" } }
//! ```
//!
//! **Which run a reference means.** In a baseline step, `{{ STEP.FIELD }}` may name only baseline
//! steps before it. In a loop step it may name any baseline step, a loop step before it (this
//! iteration's run), or itself or a loop step after it (the previous iteration's run, empty in
//! iteration 1). So in the example the builder sees the previous round's review and tests.

pub mod output;
pub mod state;
pub mod template;
pub mod verdict;

use std::collections::BTreeSet;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use template::{Template, Var};
use verdict::{MessageRule, Pattern, VerdictRule, VERDICT_FILE};

/// The accepted range of `loop.max_iterations`.
pub const MAX_ITERATIONS: std::ops::RangeInclusive<i64> = 1..=20;

/// The accepted range of `max_value_chars`.
pub const VALUE_LIMITS: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;

/// The most steps a workflow may have, baseline and loop together.
pub const MAX_STEPS: usize = 32;

/// A checked workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub workspace: WorkspaceKind,
    /// Values inserted into prompts (outputs, the diff) are cut to this many characters.
    pub max_value_chars: usize,
    /// Steps run once before the loop.
    pub baseline: Vec<Step>,
    pub max_iterations: u32,
    /// The loop step whose approval ends the loop.
    pub until: String,
    /// The loop's steps, in order.
    pub steps: Vec<Step>,
}

/// How the workflow's one workspace is made; every step of a run shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceKind {
    /// A git worktree of the current commit.
    #[default]
    Worktree,
    /// A copy of the directory.
    Copy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub action: Action,
    /// A failure (non-zero exit, timeout) is recorded and the workflow goes on.
    pub continue_on_failure: bool,
    pub timeout_secs: Option<u64>,
    /// How the step's verdict is found, for reviewers.
    pub verdict: Option<VerdictRule>,
    /// The step's sandbox runtime; `None`: the run's own (flags, config, profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<crate::spec::Isolation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// An agent profile run on a rendered prompt, always in the sandbox.
    Agent { profile: String, prompt: Template },
    /// A command, argv as written (no template, no shell).
    Command {
        argv: Vec<String>,
        location: Location,
    },
}

/// Where a command step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    #[default]
    Sandbox,
    /// On the host, in the workspace, without a sandbox.
    Host,
}

impl Workflow {
    /// Every step, baseline first.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.baseline.iter().chain(&self.steps)
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.all_steps().find(|s| s.name == name)
    }

    /// The profiles the agent steps use; the caller checks they exist before starting.
    pub fn profiles(&self) -> BTreeSet<&str> {
        self.all_steps()
            .filter_map(|s| match &s.action {
                Action::Agent { profile, .. } => Some(profile.as_str()),
                Action::Command { .. } => None,
            })
            .collect()
    }

    /// Steps that run on the host, unsandboxed: the caller should make the user agree to them.
    pub fn host_steps(&self) -> Vec<&str> {
        self.all_steps()
            .filter(|s| {
                matches!(
                    s.action,
                    Action::Command {
                        location: Location::Host,
                        ..
                    }
                )
            })
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Whether a prompt uses `{{ task }}`, so the run needs a task from the user.
    pub fn needs_task(&self) -> bool {
        self.all_steps().any(|s| match &s.action {
            Action::Agent { prompt, .. } => prompt.uses("task"),
            Action::Command { .. } => false,
        })
    }

    /// `--test-command`: replaces the argv of the steps named `tests` and `baseline`, where
    /// the workflow has them.
    pub fn set_test_command(&mut self, argv: &[String]) -> Result<(), CommandError> {
        for step in ["tests", "baseline"] {
            if self.step(step).is_some() {
                self.set_command(step, argv.to_vec())?;
            }
        }
        Ok(())
    }

    /// Replaces the argv of command step `step` (e.g. the built-in workflow's test command).
    pub fn set_command(&mut self, step: &str, argv: Vec<String>) -> Result<(), CommandError> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(CommandError::Empty);
        }
        let found = self
            .baseline
            .iter_mut()
            .chain(self.steps.iter_mut())
            .find(|s| s.name == step)
            .ok_or_else(|| CommandError::NoSuchStep(step.to_string()))?;
        match &mut found.action {
            Action::Command { argv: old, .. } => {
                *old = argv;
                Ok(())
            }
            Action::Agent { .. } => Err(CommandError::AgentStep(step.to_string())),
        }
    }
}

/// A command that cannot replace a step's (`--test-command`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the command must have at least a program")]
    Empty,
    #[error("no step is named `{0}`")]
    NoSuchStep(String),
    #[error("step `{0}` is an agent step")]
    AgentStep(String),
}

/// A step or workflow name that is not lower-case letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid name: use at most 64 lower-case letters, digits, `-` and `_`, starting with a letter")]
pub struct InvalidName(pub String);

/// A workflow file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct WorkflowError {
    pub file: String,
    pub message: String,
}

// The file as written. Every value a check may complain about is `Spanned`, so its error names
// the line.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    name: Spanned<String>,
    description: Option<String>,
    workspace: Option<Spanned<String>>,
    max_value_chars: Option<Spanned<i64>>,
    #[serde(default)]
    baseline: Vec<Spanned<StepFile>>,
    #[serde(rename = "loop")]
    loop_: Spanned<LoopFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopFile {
    max_iterations: Spanned<i64>,
    until: Spanned<String>,
    steps: Vec<Spanned<StepFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: Spanned<String>,
    agent: Option<Spanned<String>>,
    prompt: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(rename = "where")]
    location: Option<Spanned<String>>,
    #[serde(default)]
    continue_on_failure: bool,
    timeout: Option<Spanned<String>>,
    verdict: Option<Spanned<VerdictFile>>,
    isolation: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictFile {
    file: Option<String>,
    fallback: Option<FallbackFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackFile {
    approve: String,
    reject: String,
}

/// Reads and checks a workflow file's text; `file` names it in errors, which also name the field
/// (`loop.steps[2].prompt`), what would be accepted, and the line.
pub fn parse(file: &str, text: &str) -> Result<Workflow, WorkflowError> {
    let toml_error = |path: String, e: toml::de::Error| {
        // The key's path leads, as in the checks below: `loop.max_iterations: …`.
        let key = if path.is_empty() || path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        WorkflowError {
            file: file.to_string(),
            message: key + e.message().trim_end() + &location(text, e.span()),
        }
    };
    let document = toml::de::Deserializer::parse(text).map_err(|e| toml_error(String::new(), e))?;
    let raw: WorkflowFile = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = key_path(e.path());
        toml_error(path, e.into_inner())
    })?;
    Checker { file, text }.workflow(raw)
}

/// `loop.steps[2].prompt`: the keys to a value, without the wrappers toml adds for spans.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn location(text: &str, span: Option<Range<usize>>) -> String {
    span.map_or(String::new(), |s| {
        format!(" (line {})", line_of(text, s.start))
    })
}

/// Step and workflow names: lower-case letters, digits, `-` and `_`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InvalidName(name.to_string()))
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

/// Which steps a template may refer to, and which run each reference means.
struct Scope<'s> {
    /// Steps a reference may name.
    visible: Vec<&'s StepDraft>,
    /// What the error says may be named.
    rule: &'static str,
}

/// A step checked on its own, before references between steps are checked.
struct StepDraft {
    path: String,
    step: Step,
    name_span: Range<usize>,
    prompt_span: Option<Range<usize>>,
}

impl Checker<'_> {
    fn err(
        &self,
        path: &str,
        span: Option<Range<usize>>,
        message: impl std::fmt::Display,
    ) -> WorkflowError {
        WorkflowError {
            file: self.file.to_string(),
            message: format!("`{path}`: {message}{}", location(self.text, span)),
        }
    }

    fn workflow(&self, raw: WorkflowFile) -> Result<Workflow, WorkflowError> {
        check_name(raw.name.get_ref()).map_err(|e| self.err("name", Some(raw.name.span()), e))?;
        let workspace = match &raw.workspace {
            None => WorkspaceKind::default(),
            Some(w) => match w.get_ref().as_str() {
                "worktree" => WorkspaceKind::Worktree,
                "copy" => WorkspaceKind::Copy,
                other => {
                    return Err(self.err(
                        "workspace",
                        Some(w.span()),
                        format!("unknown workspace `{other}`: expected worktree or copy"),
                    ))
                }
            },
        };
        let max_value_chars = match &raw.max_value_chars {
            None => template::DEFAULT_VALUE_LIMIT,
            Some(v) if VALUE_LIMITS.contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                return Err(self.err(
                    "max_value_chars",
                    Some(v.span()),
                    format!(
                        "{} is out of range: expected {} to {} characters",
                        v.get_ref(),
                        VALUE_LIMITS.start(),
                        VALUE_LIMITS.end()
                    ),
                ))
            }
        };
        let lp = raw.loop_.into_inner();
        let iterations = *lp.max_iterations.get_ref();
        if !MAX_ITERATIONS.contains(&iterations) {
            return Err(self.err(
                "loop.max_iterations",
                Some(lp.max_iterations.span()),
                format!(
                    "{iterations} is out of range: expected {} to {}",
                    MAX_ITERATIONS.start(),
                    MAX_ITERATIONS.end()
                ),
            ));
        }
        if lp.steps.is_empty() {
            return Err(self.err(
                "loop.steps",
                None,
                "the loop has no steps: add at least one `[[loop.steps]]` table",
            ));
        }
        if raw.baseline.len() + lp.steps.len() > MAX_STEPS {
            return Err(self.err(
                "loop.steps",
                None,
                format!("a workflow may have at most {MAX_STEPS} steps"),
            ));
        }

        let mut baseline = Vec::new();
        for (i, s) in raw.baseline.into_iter().enumerate() {
            baseline.push(self.step(&format!("baseline[{i}]"), s)?);
        }
        let mut steps = Vec::new();
        for (i, s) in lp.steps.into_iter().enumerate() {
            steps.push(self.step(&format!("loop.steps[{i}]"), s)?);
        }

        let mut seen = BTreeSet::new();
        for d in baseline.iter().chain(&steps) {
            if !seen.insert(d.step.name.as_str()) {
                return Err(self.err(
                    &format!("{}.name", d.path),
                    Some(d.name_span.clone()),
                    format!(
                        "another step is already named `{}`: step names must be unique",
                        d.step.name
                    ),
                ));
            }
        }

        for (i, d) in baseline.iter().enumerate() {
            let scope = Scope {
                visible: baseline[..i].iter().collect(),
                rule: "a baseline step may refer only to baseline steps before it",
            };
            self.references(d, &scope)?;
        }
        let loop_scope = Scope {
            visible: baseline.iter().chain(&steps).collect(),
            rule: "a loop step may refer to baseline and loop steps",
        };
        for d in &steps {
            self.references(d, &loop_scope)?;
        }

        let until = self.until(&lp.until, &steps)?;
        Ok(Workflow {
            name: raw.name.into_inner(),
            description: raw.description,
            workspace,
            max_value_chars,
            baseline: baseline.into_iter().map(|d| d.step).collect(),
            max_iterations: iterations as u32,
            until,
            steps: steps.into_iter().map(|d| d.step).collect(),
        })
    }

    fn until(&self, until: &Spanned<String>, steps: &[StepDraft]) -> Result<String, WorkflowError> {
        let span = Some(until.span());
        let with_verdict: Vec<&str> = steps
            .iter()
            .filter(|d| d.step.verdict.is_some())
            .map(|d| d.step.name.as_str())
            .collect();
        let candidates = if with_verdict.is_empty() {
            "no loop step has a `verdict`: give the reviewer step one".to_string()
        } else {
            format!(
                "expected one of {}",
                with_verdict
                    .iter()
                    .map(|n| format!("`{n}.approved`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let Some(name) = until.get_ref().strip_suffix(".approved") else {
            return Err(self.err(
                "loop.until",
                span,
                format!("`{}` is not STEP.approved: {candidates}", until.get_ref()),
            ));
        };
        let Some(d) = steps.iter().find(|d| d.step.name == name) else {
            return Err(self.err(
                "loop.until",
                span,
                format!("no loop step is named `{name}`: {candidates}"),
            ));
        };
        if d.step.verdict.is_none() {
            return Err(self.err(
                "loop.until",
                span,
                format!("step `{name}` has no `verdict`: {candidates}"),
            ));
        }
        if d.step.continue_on_failure {
            return Err(self.err(
                &format!("{}.continue_on_failure", d.path),
                span,
                "the step named in `loop.until` cannot continue on failure: without its verdict the loop cannot decide",
            ));
        }
        Ok(name.to_string())
    }

    fn step(&self, path: &str, raw: Spanned<StepFile>) -> Result<StepDraft, WorkflowError> {
        let step_span = raw.span();
        let raw = raw.into_inner();
        let field = |f: &str| format!("{path}.{f}");
        check_name(raw.name.get_ref())
            .map_err(|e| self.err(&field("name"), Some(raw.name.span()), e))?;
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        let location = match &raw.location {
            None => None,
            Some(w) => Some(match w.get_ref().as_str() {
                "sandbox" => Location::Sandbox,
                "host" => Location::Host,
                other => {
                    return Err(self.err(
                        &field("where"),
                        Some(w.span()),
                        format!("unknown place `{other}`: expected sandbox or host"),
                    ))
                }
            }),
        };
        let mut prompt_span = None;
        let action = match (raw.agent, raw.command) {
            (Some(_), Some(c)) => {
                return Err(self.err(
                    &field("command"),
                    Some(c.span()),
                    "a step is either an agent step (`agent` and `prompt`) or a command step (`command`), not both",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    path,
                    Some(step_span),
                    format!("step `{name}` has neither `agent` (with `prompt`) nor `command`"),
                ))
            }
            (Some(agent), None) => {
                let profile = agent.get_ref();
                if profile.is_empty()
                    || !profile
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(self.err(
                        &field("agent"),
                        Some(agent.span()),
                        format!("`{profile}` is not a profile name (e.g. claude-code, codex): letters, digits, `-`, `_` and `.`"),
                    ));
                }
                let Some(prompt) = raw.prompt else {
                    return Err(self.err(
                        &field("prompt"),
                        Some(step_span),
                        format!("agent step `{name}` needs a `prompt`"),
                    ));
                };
                if prompt.get_ref().trim().is_empty() {
                    return Err(self.err(&field("prompt"), Some(prompt.span()), "the prompt is empty"));
                }
                if location == Some(Location::Host) {
                    return Err(self.err(
                        &field("where"),
                        raw.location.as_ref().map(|l| l.span()),
                        "agents run only in the sandbox: remove `where` or set it to sandbox",
                    ));
                }
                let span = prompt.span();
                let template = Template::parse(prompt.get_ref()).map_err(|e| {
                    let line = self.template_line(span.clone(), e.line);
                    WorkflowError {
                        file: self.file.to_string(),
                        message: format!("`{}`: {} (line {line})", field("prompt"), e.message),
                    }
                })?;
                prompt_span = Some(span);
                Action::Agent {
                    profile: agent.into_inner(),
                    prompt: template,
                }
            }
            (None, Some(command)) => {
                if let Some(p) = &raw.prompt {
                    return Err(self.err(
                        &field("prompt"),
                        Some(p.span()),
                        "a command step has no prompt: its argv is used as written; use an agent step for a prompt",
                    ));
                }
                let span = command.span();
                let argv = command.into_inner();
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return Err(self.err(
                        &field("command"),
                        Some(span),
                        "the command is empty: expected a program and its arguments, e.g. [\"make\", \"test\"]",
                    ));
                }
                Action::Command {
                    argv,
                    location: location.unwrap_or_default(),
                }
            }
        };
        let timeout_secs = match &raw.timeout {
            None => None,
            Some(t) => Some(
                crate::units::parse_duration(t.get_ref())
                    .map_err(|e| self.err(&field("timeout"), Some(t.span()), e))?
                    .as_secs()
                    .max(1),
            ),
        };
        let verdict = match raw.verdict {
            None => None,
            Some(v) => Some(self.verdict(&field("verdict"), v, &action)?),
        };
        let isolation = match &raw.isolation {
            None => None,
            Some(i) => Some(
                i.get_ref()
                    .parse::<crate::spec::Isolation>()
                    .map_err(|e| self.err(&field("isolation"), Some(i.span()), e))?,
            ),
        };
        Ok(StepDraft {
            path: path.to_string(),
            name_span,
            step: Step {
                name,
                action,
                continue_on_failure: raw.continue_on_failure,
                timeout_secs,
                verdict,
                isolation,
            },
            prompt_span: prompt_span.or(Some(step_span)),
        })
    }

    fn verdict(
        &self,
        path: &str,
        raw: Spanned<VerdictFile>,
        action: &Action,
    ) -> Result<VerdictRule, WorkflowError> {
        let span = Some(raw.span());
        let raw = raw.into_inner();
        let file = raw.file.unwrap_or_else(|| VERDICT_FILE.to_string());
        let bad_path = file.is_empty()
            || file.starts_with('/')
            || file.contains('\\')
            || file
                .split('/')
                .any(|c| c == ".." || c.is_empty() || c == ".");
        if bad_path {
            return Err(self.err(
                &format!("{path}.file"),
                span,
                format!(
                    "`{file}` is not a plain relative path inside $BERTH_OUT (e.g. result.json)"
                ),
            ));
        }
        let fallback = match raw.fallback {
            None => None,
            Some(f) => {
                if !matches!(action, Action::Agent { .. }) {
                    return Err(self.err(
                        &format!("{path}.fallback"),
                        span,
                        "a command step has no final message: a fallback rule needs an agent step",
                    ));
                }
                let pattern = |which: &str, source: &str| {
                    Pattern::new(source)
                        .map_err(|e| self.err(&format!("{path}.fallback.{which}"), span.clone(), e))
                };
                Some(MessageRule {
                    approve: pattern("approve", &f.approve)?,
                    reject: pattern("reject", &f.reject)?,
                })
            }
        };
        Ok(VerdictRule { file, fallback })
    }

    /// The file line of line `template_line` of a prompt whose value spans `span`.
    fn template_line(&self, span: Range<usize>, template_line: usize) -> usize {
        let start = line_of(self.text, span.start);
        let raw = &self.text[span.start.min(self.text.len())..];
        // A multi-line string's first newline, right after the quotes, is not part of the value.
        let skipped = usize::from(
            raw.starts_with("\"\"\"\n")
                || raw.starts_with("'''\n")
                || raw.starts_with("\"\"\"\r\n")
                || raw.starts_with("'''\r\n"),
        );
        start + skipped + template_line - 1
    }

    fn references(&self, d: &StepDraft, scope: &Scope<'_>) -> Result<(), WorkflowError> {
        let Action::Agent { prompt, .. } = &d.step.action else {
            return Ok(());
        };
        let path = format!("{}.prompt", d.path);
        for var in prompt.vars() {
            let Var::Step { step, field } = var else {
                continue;
            };
            let err = |message: String| self.err(&path, d.prompt_span.clone(), message);
            let Some(target) = scope.visible.iter().find(|v| v.step.name == *step) else {
                let names: Vec<&str> = scope.visible.iter().map(|v| v.step.name.as_str()).collect();
                let known = if names.is_empty() {
                    "there are none".to_string()
                } else {
                    names.join(", ")
                };
                return Err(err(format!(
                    "`{{{{ {} }}}}` names no step it can see ({}; here: {known})",
                    var.key(),
                    scope.rule
                )));
            };
            if field.needs_verdict() && target.step.verdict.is_none() {
                return Err(err(format!(
                    "`{{{{ {} }}}}`: step `{step}` has no `verdict`, so it has no {}; its fields are output, exit_code and status",
                    var.key(),
                    field.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// The built-in `builder-reviewer` workflow: Claude Code builds, the tests run in the sandbox
/// (before any change too), Codex reviews, up to three rounds.
pub const BUILDER_REVIEWER: &str = include_str!("workflow/builder-reviewer.toml");

/// The names of the built-in workflows.
pub const BUILTINS: [&str; 1] = ["builder-reviewer"];

/// The built-in workflow `name`, with `test_command` as its test command when given (it runs in
/// the baseline step `baseline` and the loop step `tests`).
pub fn builtin(
    name: &str,
    test_command: Option<Vec<String>>,
) -> Option<Result<Workflow, WorkflowError>> {
    let text = match name {
        "builder-reviewer" => BUILDER_REVIEWER,
        _ => return None,
    };
    let file = format!("built-in workflow {name}");
    Some(parse(&file, text).and_then(|mut w| {
        if let Some(argv) = test_command {
            for step in ["baseline", "tests"] {
                w.set_command(step, argv.clone())
                    .map_err(|message| WorkflowError {
                        file: file.clone(),
                        message: format!("test command: {message}"),
                    })?;
            }
        }
        Ok(w)
    }))
}

#[cfg(test)]
mod tests;
