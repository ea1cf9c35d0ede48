use berth_core::ExitStatus;

use crate::args::ListArgs;
use crate::printer::{data_line, print_json, Printer};

pub fn ls(args: ListArgs, printer: Printer) -> ExitStatus {
    let state = super::state_dir(args.state.state_dir, args.workspace);
    if args.workflows {
        return workflows(&state, args.json, printer);
    }
    let records = state.list();
    if args.json {
        print_json(&records);
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<16}  {:<10}  {:>4}  {:<20}  COMMAND",
        "RUN", "STATE", "EXIT", "CREATED"
    ));
    for r in &records {
        let exit = r
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        let created: String = r.created_at.chars().take(19).collect();
        let mut command = r.spec.command.join(" ");
        if command.len() > 60 {
            command.truncate(57);
            command.push_str("...");
        }
        data_line(&format!(
            "{:<16}  {:<10}  {:>4}  {:<20}  {command}",
            r.id,
            r.state.as_str(),
            exit,
            created
        ));
    }
    ExitStatus::Success
}

/// The workflows `berth workflow run` left in this state directory, newest first, from their
/// `workflow.json`.
fn workflows(state: &berth_sandbox::rundir::StateDir, json: bool, _printer: Printer) -> ExitStatus {
    let root = state.root().join("workflows");
    let mut rows: Vec<serde_json::Value> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let id = e.file_name().into_string().ok()?;
                    let bytes = std::fs::read(e.path().join("workflow.json")).ok()?;
                    let run: berth_core::workflow::state::WorkflowRun =
                        serde_json::from_slice(&bytes).ok()?;
                    let (state, reason) = match &run.finish {
                        Some(f) => (f.state.to_string(), f.message()),
                        None => ("running".to_string(), String::new()),
                    };
                    Some(serde_json::json!({
                        "id": id,
                        "name": run.workflow.name,
                        "state": state,
                        "iterations": run.iterations.len(),
                        "reason": reason,
                        "dir": e.path(),
                    }))
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by(|a, b| b["id"].as_str().cmp(&a["id"].as_str()));
    if json {
        print_json(&rows);
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<16}  {:<16}  {:<10}  {:>4}  REASON",
        "WORKFLOW", "NAME", "STATE", "ITER"
    ));
    for r in &rows {
        data_line(&format!(
            "{:<16}  {:<16}  {:<10}  {:>4}  {}",
            r["id"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["iterations"],
            r["reason"].as_str().unwrap_or_default()
        ));
    }
    ExitStatus::Success
}
