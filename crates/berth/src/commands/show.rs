use berth_core::ExitStatus;

use crate::args::{LogsArgs, ShowArgs};
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
        let run = super::run_json::local(&r, Some(dir.path()));
        print_json(&super::run_json::shown(run, None));
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
        ("commit", opt(&r.start_commit())),
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
        ("egress", egress_line(&r)),
        ("artifacts", r.artifacts.len().to_string()),
        ("directory", dir.path().display().to_string()),
    ];
    let mut lines = lines.to_vec();
    if let Some(e) = &r.egress {
        if !e.denied_hosts.is_empty() {
            // Hosts the sandbox asked for: its text, escaped.
            let hosts: Vec<String> = e
                .denied_hosts
                .iter()
                .map(|h| berth_core::text::escape_untrusted(h).into_owned())
                .collect();
            lines.push(("denied hosts", hosts.join(", ")));
        }
        if e.api_requests > 0 {
            lines.push((
                "api usage",
                format!(
                    "{} requests, {} input tokens, {} output tokens",
                    e.api_requests, e.input_tokens, e.output_tokens
                ),
            ));
        }
    }
    for (key, value) in lines {
        data_line(&format!("{key:>16}: {value}"));
    }
    if r.egress.as_ref().is_some_and(|e| e.allowed + e.denied > 0) {
        data_line(&format!(
            "{:>16}: {}",
            "egress log",
            dir.events_path().display()
        ));
    }
    ExitStatus::Success
}

/// `policy: 3 allowed, 1 denied, 1.2 KiB out, 4.0 MiB in (brokered: ANTHROPIC_API_KEY)`.
fn egress_line(r: &berth_core::record::RunRecord) -> String {
    use berth_core::units::format_bytes;
    let spec = &r.spec.egress;
    let mut line = spec.mode.to_string();
    if let Some(e) = &r.egress {
        line += &format!(
            ": {} allowed, {} denied, {} out, {} in",
            e.allowed,
            e.denied,
            format_bytes(e.bytes_out),
            format_bytes(e.bytes_in)
        );
    }
    if !spec.brokers.is_empty() {
        let names: Vec<&str> = spec.brokers.iter().map(|b| b.credential.as_str()).collect();
        line += &format!(" (brokered: {})", names.join(", "));
    }
    if spec.mode == berth_core::egress::EgressMode::Policy {
        line += &format!(
            "; allowed: {}",
            if spec.allow.is_empty() {
                "-".to_string()
            } else {
                spec.allow.join(", ")
            }
        );
    }
    line
}

/// `berth logs RUN` for a local run: its output as it was kept (stdout on stdout, stderr on
/// stderr), or its events as JSON lines with --json; --follow goes on until the run ends.
pub async fn logs(args: LogsArgs, printer: Printer) -> ExitStatus {
    use std::io::Write;
    let state = super::state_dir(args.state.state_dir, args.workspace);
    let dir = match state.find(&args.run) {
        Ok(dir) => dir,
        Err(e) => {
            let server = "a server's run needs --server URL (or BERTH_SERVER)";
            let hint = match e.hint() {
                Some(hint) => format!("{hint}; {server}"),
                None => server.to_string(),
            };
            printer.error(&e.to_string(), Some(&hint));
            return ExitStatus::Error;
        }
    };
    let files = if args.json {
        vec![(dir.events_path(), false)]
    } else {
        vec![(dir.stdout_log(), false), (dir.stderr_log(), true)]
    };
    let mut offsets = vec![0usize; files.len()];
    loop {
        // Whether the run had ended before this read: then the read takes everything.
        let ended = !args.follow || dir.read_record().map_or(true, |r| r.state.is_final());
        for ((path, to_stderr), offset) in files.iter().zip(offsets.iter_mut()) {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let new = bytes.get(*offset..).unwrap_or_default();
            *offset = bytes.len();
            let written = if *to_stderr {
                std::io::stderr().lock().write_all(new)
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(new).and_then(|()| out.flush())
            };
            if written.is_err() {
                // A closed pipe (`| head`): nobody reads any more.
                return ExitStatus::Success;
            }
        }
        if ended {
            return ExitStatus::Success;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
