//! `berth diff`, `berth apply`, `berth branch`: what a copy or worktree run changed, and taking
//! it over into the user's checkout.

use std::io::{IsTerminal, Write};

use berth_core::ExitStatus;
use berth_sandbox::rundir::RunDir;
use berth_sandbox::{workspace, SandboxError};

use crate::args::RunRefArgs;
use crate::printer::Printer;

fn find(args: &RunRefArgs) -> Result<RunDir, SandboxError> {
    super::state_dir(args.state.state_dir.clone(), args.workspace.clone()).find(&args.run)
}

fn fail(printer: Printer, e: &SandboxError) -> ExitStatus {
    printer.error(&e.to_string(), e.hint().as_deref());
    ExitStatus::Error
}

/// Prints the run's patch on stdout, coloured on a terminal unless NO_COLOR is set.
pub fn diff(args: RunRefArgs, printer: Printer) -> ExitStatus {
    let result = find(&args).and_then(|dir| workspace::patch_of(&dir));
    let (record, path) = match result {
        Ok(found) => found,
        Err(e) => return fail(printer, &e),
    };
    let patch = match std::fs::read(&path) {
        Ok(patch) => patch,
        Err(e) => return fail(printer, &SandboxError::io(&path, e)),
    };
    print_patch(&record.id, &patch, printer)
}

/// Prints a run's patch on stdout, coloured on a terminal unless NO_COLOR is set.
pub(super) fn print_patch(id: &str, patch: &[u8], printer: Printer) -> ExitStatus {
    if patch.is_empty() {
        printer.info(&format!("run {id} changed nothing"));
        return ExitStatus::Success;
    }
    let color = printer.colored_stdout() && std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let written = if color {
        patch
            .split_inclusive(|b| *b == b'\n')
            .try_for_each(|line| match paint(line) {
                Some(code) => out
                    .write_all(format!("\x1b[{code}m").as_bytes())
                    .and_then(|()| out.write_all(line.strip_suffix(b"\n").unwrap_or(line)))
                    .and_then(|()| out.write_all(b"\x1b[0m"))
                    .and_then(|()| {
                        if line.ends_with(b"\n") {
                            out.write_all(b"\n")
                        } else {
                            Ok(())
                        }
                    }),
                None => out.write_all(line),
            })
    } else {
        out.write_all(patch)
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = written.and_then(|()| out.flush());
    ExitStatus::Success
}

/// The colour of a patch line, as git colours it.
fn paint(line: &[u8]) -> Option<&'static str> {
    if line.starts_with(b"diff --git") || line.starts_with(b"+++") || line.starts_with(b"---") {
        Some("1")
    } else if line.starts_with(b"@@") {
        Some("36")
    } else if line.starts_with(b"+") {
        Some("32")
    } else if line.starts_with(b"-") {
        Some("31")
    } else {
        None
    }
}

pub fn apply(args: RunRefArgs, printer: Printer) -> ExitStatus {
    let result = find(&args)
        .and_then(|dir| workspace::patch_of(&dir))
        .and_then(|(record, path)| {
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
                return Ok((record, workspace::Applied::Files(Vec::new())));
            }
            workspace::apply(&record, &path).map(|applied| (record, applied))
        });
    match result {
        Ok((record, workspace::Applied::Already)) => {
            printer.info(&format!(
                "the changes of run {} are already applied; nothing to do",
                record.id
            ));
            ExitStatus::Success
        }
        Ok((record, workspace::Applied::Files(files))) if files.is_empty() => {
            printer.info(&format!(
                "run {} changed nothing; nothing applied",
                record.id
            ));
            ExitStatus::Success
        }
        Ok((record, workspace::Applied::Files(files))) => {
            printer.info(&format!(
                "applied the changes of run {} to {} file(s): {}",
                record.id,
                files.len(),
                files.join(", ")
            ));
            ExitStatus::Success
        }
        Err(e) => fail(printer, &e),
    }
}

pub fn branch(args: RunRefArgs, printer: Printer) -> ExitStatus {
    let result = find(&args)
        .and_then(|dir| workspace::patch_of(&dir))
        .and_then(|(record, path)| workspace::branch(&record, &path));
    match result {
        Ok(name) => {
            crate::printer::data_line(&name);
            ExitStatus::Success
        }
        Err(e) => fail(printer, &e),
    }
}
