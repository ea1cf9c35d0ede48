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
        let runs = records
            .iter()
            .map(|r| {
                let dir = state.find(&r.id).ok();
                super::run_json::local(r, dir.as_ref().map(|d| d.path()))
            })
            .collect();
        print_json(&super::run_json::list(runs, None));
        return ExitStatus::Success;
    }
    data_line(&format!(
        "{:<16}  {:<10}  {:>4}  {:<20}  {:>8}  {:<30}  COMMAND",
        "RUN", "STATE", "EXIT", "CREATED", "DURATION", "IMAGE"
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
        let took = duration(r.started_at.as_deref(), r.finished_at.as_deref())
            .unwrap_or_else(|| "-".into());
        data_line(&format!(
            "{:<16}  {:<10}  {:>4}  {:<20}  {took:>8}  {:<30}  {command}",
            r.id,
            r.state.as_str(),
            exit,
            created,
            r.spec.image
        ));
    }
    ExitStatus::Success
}

/// How long a run took, from its start to its end (RFC 3339 times): `850ms`, `12.3s`, `4m05s`,
/// `2h03m`; `None` while it has not ended.
fn duration(started: Option<&str>, finished: Option<&str>) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let started = time::OffsetDateTime::parse(started?, &Rfc3339).ok()?;
    let finished = time::OffsetDateTime::parse(finished?, &Rfc3339).ok()?;
    let millis = (finished - started).whole_milliseconds().max(0);
    let secs = millis / 1000;
    Some(if millis < 1000 {
        format!("{millis}ms")
    } else if secs < 60 {
        format!("{:.1}s", millis as f64 / 1000.0)
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    })
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

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_are_short() {
        let at = |s: &str| format!("2026-01-01T{s}Z");
        let d = |a: &str, b: &str| duration(Some(&at(a)), Some(&at(b)));
        assert_eq!(d("00:00:00", "00:00:00.25").as_deref(), Some("250ms"));
        assert_eq!(d("00:00:00", "00:00:12.34").as_deref(), Some("12.3s"));
        assert_eq!(d("00:00:00", "00:04:05").as_deref(), Some("4m05s"));
        assert_eq!(d("00:00:00", "02:03:09").as_deref(), Some("2h03m"));
        assert_eq!(duration(Some(&at("00:00:00")), None), None);
    }
}
