use berth_core::ExitStatus;

use crate::args::ShowArgs;
use crate::printer::{data_line, print_json, Printer};

pub fn show(args: ShowArgs, printer: Printer) -> ExitStatus {
    let state = super::state_dir(args.state.state_dir, args.workspace);
    let record = match state
        .find(&args.run)
        .and_then(|dir| dir.read_record().map(|r| (dir, r)))
    {
        Ok(found) => found,
        Err(e) => {
            printer.error(&e.to_string(), e.hint().as_deref());
            return ExitStatus::Error;
        }
    };
    let (dir, r) = record;
    if args.json {
        print_json(&r);
        return ExitStatus::Success;
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let lines = [
        ("run", r.id.clone()),
        ("state", r.state.to_string()),
        ("reason", opt(&r.reason)),
        (
            "exit code",
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("oom killed", r.oom_killed.to_string()),
        ("execution", r.execution.to_string()),
        ("fallback reason", opt(&r.fallback_reason)),
        ("image", r.spec.image.clone()),
        ("image id", opt(&r.image_id)),
        ("command", format!("{:?}", r.spec.command)),
        (
            "container",
            format!("{} {}", opt(&r.container_name), opt(&r.container_id)),
        ),
        ("created", r.created_at.clone()),
        ("started", opt(&r.started_at)),
        ("finished", opt(&r.finished_at)),
        (
            "secrets",
            if r.spec.secrets.is_empty() {
                "-".into()
            } else {
                r.spec.secrets.join(", ")
            },
        ),
        ("artifacts", r.artifacts.len().to_string()),
        ("directory", dir.path().display().to_string()),
    ];
    for (key, value) in lines {
        data_line(&format!("{key:>16}: {value}"));
    }
    ExitStatus::Success
}
