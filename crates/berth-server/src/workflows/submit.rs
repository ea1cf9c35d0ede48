//! A workflow submission's checks: every problem reported with its JSON path.

use berth_api::{FieldError, SubmitWorkflow};
use berth_core::workflow::state::WorkflowRun;
use berth_core::workflow::{self, Action, Location, Workflow};
use berth_store::NewWorkflow;

use super::{Progress, Submission};

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
                errors.push(field("test_command", e.to_string()));
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
            errors.push(field(&format!("env.{name}"), e.to_string()));
        }
    }
    if let Some(network) = &request.network {
        if let Err(e) = berth_core::spec::NetworkMode::parse(network) {
            errors.push(field("network", e.to_string()));
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
