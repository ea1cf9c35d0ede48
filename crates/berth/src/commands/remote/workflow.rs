//! Workflows on a server: `berth submit --workflow`, and `berth show` / `berth cancel` of a
//! workflow id (`wf-…`).

use std::collections::BTreeSet;
use std::time::Duration;

use berth_api::{SubmitWorkflow, WorkflowAuditView, WorkflowList, WorkflowView};
use berth_client::Client;
use berth_core::exit::RunState;
use berth_core::ExitStatus;

use super::{fail, key_values};
use crate::args::{ExecutionMode, SubmitArgs};
use crate::printer::{data_line, print_json, Printer};

/// How often `--follow` asks how the workflow is doing.
const POLL: Duration = Duration::from_millis(500);

pub fn is_workflow_id(id: &str) -> bool {
    id.starts_with("wf-")
}

/// The flags of a single run that mean nothing for a workflow (its file says what each step
/// runs), named so the user learns which one to drop.
fn single_run_flags(args: &SubmitArgs) -> Vec<&'static str> {
    let mut given = Vec::new();
    let mut flag = |set: bool, name: &'static str| {
        if set {
            given.push(name);
        }
    };
    flag(
        args.execution_mode != ExecutionMode::DockerSandbox,
        "--execution-mode",
    );
    flag(args.workdir.is_some(), "--workdir");
    flag(!args.secrets.is_empty(), "--secret");
    flag(!args.mounts.is_empty(), "--mount");
    flag(args.memory.is_some(), "--memory");
    flag(args.cpus.is_some(), "--cpus");
    flag(args.pids.is_some(), "--pids");
    flag(args.timeout.is_some(), "--timeout");
    flag(args.grace.is_some(), "--grace");
    flag(args.read_only, "--read-only");
    flag(args.user.is_some(), "--user");
    flag(!args.artifacts.is_empty(), "--artifact");
    flag(args.profile.is_some(), "--profile");
    flag(args.lifecycle.is_some(), "--lifecycle");
    flag(args.name.is_some(), "--name");
    flag(args.workspace_mode.is_some(), "--workspace-mode");
    flag(args.include_dirty, "--include-dirty");
    given
}

fn request(args: &SubmitArgs) -> Result<SubmitWorkflow, (String, String)> {
    let which = args.workflow.clone().unwrap_or_default();
    let unused = single_run_flags(args);
    if !unused.is_empty() {
        return Err((
            format!("{} cannot be used with --workflow", unused.join(", ")),
            "each step's settings come from the workflow file; drop these flags".into(),
        ));
    }
    let (workflow, builtin, file_name) = if berth_core::workflow::BUILTINS.contains(&which.as_str())
    {
        (None, Some(which.clone()), None)
    } else {
        let text = std::fs::read_to_string(&which).map_err(|e| {
            (
                format!("cannot read workflow {which}: {e}"),
                format!(
                    "give a workflow file (TOML) or a built-in workflow: {}",
                    berth_core::workflow::BUILTINS.join(", ")
                ),
            )
        })?;
        (Some(text), None, Some(which.clone()))
    };
    let test_command = args
        .test_command
        .as_deref()
        .map(|c| c.split_whitespace().map(str::to_string).collect());
    Ok(SubmitWorkflow {
        project: args.project.clone(),
        workflow,
        builtin,
        file_name,
        task: args.command.join(" "),
        image: args.image.clone(),
        agent_image: args.agent_image.clone(),
        network: args.network.clone(),
        egress: super::egress_request(&args.egress),
        env: key_values("--env", &args.env).map_err(|e| (e.to_string(), String::new()))?,
        test_command,
        tags: args.tags.clone(),
        labels: key_values("--label", &args.labels).map_err(|e| (e.to_string(), String::new()))?,
    })
}

pub async fn submit(client: &Client, args: SubmitArgs, printer: Printer) -> ExitStatus {
    let body = match request(&args) {
        Ok(body) => body,
        Err((message, hint)) => {
            printer.error(&message, (!hint.is_empty()).then_some(hint.as_str()));
            return ExitStatus::Error;
        }
    };
    let view = match client
        .post::<_, WorkflowView>("/api/v1/workflows", &body)
        .await
    {
        Ok(view) => view,
        Err(e) => return fail(printer, &e),
    };
    if !args.follow {
        if args.json {
            print_json(&view);
        } else {
            data_line(&view.id);
        }
        return ExitStatus::Success;
    }
    printer.info(&format!("submitted workflow {} ({})", view.id, view.name));
    follow(client, view, args.json, printer).await
}

/// Prints each step as it starts and ends until the workflow ends; exits with its status.
async fn follow(
    client: &Client,
    mut view: WorkflowView,
    json: bool,
    printer: Printer,
) -> ExitStatus {
    let mut seen: BTreeSet<(u32, String, Option<String>, String)> = BTreeSet::new();
    loop {
        for step in &view.steps {
            let key = (
                step.iteration,
                step.step.clone(),
                step.run_id.clone(),
                step.state.clone(),
            );
            if seen.insert(key) {
                printer.info(&format!(
                    "── {} · {} · run {} · {}{}",
                    round(step.iteration),
                    step.step,
                    step.run_id.as_deref().unwrap_or("-"),
                    step.state,
                    verdict_text(step.verdict.as_ref(), step.verdict_error.as_deref())
                ));
            }
        }
        if view.state != "running" {
            break;
        }
        tokio::time::sleep(POLL).await;
        view = match client
            .get::<WorkflowView>(&format!("/api/v1/workflows/{}", view.id))
            .await
        {
            Ok(v) => v,
            Err(e) => return fail(printer, &e),
        };
    }
    let state = state_of(&view.state);
    let reason = view.reason.clone().unwrap_or_default();
    if json {
        print_json(&view);
    } else {
        data_line(&view.id);
    }
    let line = format!("workflow {} {}: {reason}", view.id, view.state);
    if state == RunState::Succeeded {
        printer.info(&line);
    } else {
        printer.error(
            &line,
            Some(&format!(
                "berth show {} lists every step and its run",
                view.id
            )),
        );
    }
    ExitStatus::for_run(state, None)
}

fn state_of(state: &str) -> RunState {
    match state {
        "succeeded" => RunState::Succeeded,
        "failed" => RunState::Failed,
        "cancelled" => RunState::Cancelled,
        _ => RunState::Error,
    }
}

fn round(iteration: u32) -> String {
    if iteration == 0 {
        "baseline".into()
    } else {
        format!("iteration {iteration}")
    }
}

fn verdict_text(verdict: Option<&serde_json::Value>, error: Option<&str>) -> String {
    match (verdict, error) {
        (Some(v), _) => format!(
            " · {}: {}",
            if v["approved"] == true {
                "approved"
            } else {
                "changes requested"
            },
            v["summary"].as_str().unwrap_or_default()
        ),
        (None, Some(e)) => format!(" · no valid verdict: {e}"),
        _ => String::new(),
    }
}

pub async fn show(client: &Client, id: &str, json: bool, printer: Printer) -> ExitStatus {
    let view = match client
        .get::<WorkflowView>(&format!("/api/v1/workflows/{id}"))
        .await
    {
        Ok(v) => v,
        Err(e) => return fail(printer, &e),
    };
    let audit = match client
        .get::<Vec<WorkflowAuditView>>(&format!("/api/v1/workflows/{id}/audit"))
        .await
    {
        Ok(a) => a,
        Err(e) => return fail(printer, &e),
    };
    let diff = match client
        .get_bytes(&format!("/api/v1/workflows/{id}/diff"))
        .await
    {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return fail(printer, &e),
    };
    if json {
        print_json(&serde_json::json!({ "workflow": view, "audit": audit, "diff": diff }));
        return ExitStatus::Success;
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for (k, v) in [
        ("workflow", format!("{} ({})", view.id, view.name)),
        ("project", view.project.clone()),
        ("state", view.state.clone()),
        ("reason", opt(&view.reason)),
        ("task", view.task.clone()),
        ("iterations", view.iterations.to_string()),
        (
            "baseline",
            if view.baseline_red.is_empty() {
                "-".into()
            } else {
                format!("red ({})", view.baseline_red.join(", "))
            },
        ),
        ("runner", opt(&view.runner_id)),
        ("created", view.created_at.clone()),
        ("finished", opt(&view.finished_at)),
        (
            "diff",
            if diff.is_empty() {
                "no change".into()
            } else {
                format!(
                    "{} lines (berth show {} --json | jq -r .diff)",
                    diff.lines().count(),
                    view.id
                )
            },
        ),
    ] {
        data_line(&format!("{k:>10}: {v}"));
    }
    data_line("     steps:");
    for step in &view.steps {
        data_line(&format!(
            "            {:<12} {:<12} run {:<16} {}{}{}{}",
            round(step.iteration),
            step.step,
            step.run_id.as_deref().unwrap_or("-"),
            step.state,
            step.exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default(),
            step.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            verdict_text(step.verdict.as_ref(), step.verdict_error.as_deref())
        ));
    }
    data_line("     audit:");
    for a in audit {
        data_line(&format!(
            "            {}  {:<16} {}  by {}",
            a.ts, a.event, a.detail, a.actor
        ));
    }
    ExitStatus::Success
}

pub async fn cancel(client: &Client, id: &str, json: bool, printer: Printer) -> ExitStatus {
    match client
        .post::<_, WorkflowView>(
            &format!("/api/v1/workflows/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await
    {
        Ok(view) if json => print_json(&view),
        Ok(view) => printer.info(&format!(
            "workflow {}: {}{}",
            view.id,
            view.state,
            if view.cancel_requested && view.state == "running" {
                " (cancel requested; the running step is being stopped)"
            } else {
                ""
            }
        )),
        Err(e) => return fail(printer, &e),
    }
    ExitStatus::Success
}

pub async fn list(client: &Client, json: bool, printer: Printer) -> ExitStatus {
    let list = match client.get::<WorkflowList>("/api/v1/workflows").await {
        Ok(l) => l,
        Err(e) => return fail(printer, &e),
    };
    if json {
        print_json(&list);
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<20}  {:<16}  {:<10}  {:>4}  {:<12}  REASON",
        "WORKFLOW", "NAME", "STATE", "ITER", "PROJECT"
    ));
    for w in list.workflows {
        data_line(&format!(
            "{:<20}  {:<16}  {:<10}  {:>4}  {:<12}  {}",
            w.id,
            w.name,
            w.state,
            w.iterations,
            w.project,
            w.reason.unwrap_or_default()
        ));
    }
    ExitStatus::Success
}
