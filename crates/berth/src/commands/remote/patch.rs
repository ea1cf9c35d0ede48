//! `berth diff` and `berth apply` on a server run: the run's `berth/diff.patch` artifact,
//! downloaded, then printed or applied to the checkout here as for a local run.

use std::path::{Path, PathBuf};

use berth_api::RunView;
use berth_core::ExitStatus;
use berth_runner::ApiError;

use super::{client, fail, in_neither, server_answered};
use crate::args::RunRefArgs;
use crate::printer::Printer;

/// What to do with the patch.
#[derive(Debug, Clone, Copy)]
pub enum Take {
    Print,
    Apply,
}

/// Whether the run is the server's: a server is given and no local run matches. A local run
/// answers first, so a server never shadows it.
pub fn on_server(args: &RunRefArgs) -> bool {
    args.remote.server.is_some()
        && matches!(
            local_state(args).find(&args.run),
            Err(berth_sandbox::SandboxError::NoSuchRun(_))
        )
}

fn local_state(args: &RunRefArgs) -> berth_sandbox::rundir::StateDir {
    crate::commands::state_dir(args.state.state_dir.clone(), args.workspace.clone())
}

pub async fn take(what: Take, args: RunRefArgs, printer: Printer) -> ExitStatus {
    let client = client_or_fail!(printer, &args.remote, None);
    let looked_here = local_state(&args).root().display().to_string();
    let run = match client
        .get::<RunView>(&format!("/api/v1/runs/{}", args.run))
        .await
    {
        Ok(run) => run,
        Err(ApiError::Status { status: 404, .. }) => {
            return in_neither(printer, &args.run, &looked_here, &client)
        }
        Err(e) => return fail(printer, &e),
    };
    server_answered(printer, &run.id, &looked_here, &client);
    let patch = match client
        .get_bytes(&format!(
            "/api/v1/runs/{}/artifacts/berth/diff.patch",
            run.id
        ))
        .await
    {
        Ok(bytes) => bytes,
        Err(ApiError::Status { status: 404, .. }) => {
            printer.error(
                &format!(
                    "run {} ({}) has no berth/diff.patch on the server",
                    run.id, run.state
                ),
                Some(&match run.sandbox.workspace_mode.as_deref() {
                    Some("worktree" | "copy") => {
                        format!("`berth show {}` says how the run ended", run.id)
                    }
                    _ => "submit with --workspace-mode worktree (or copy) to get a patch".into(),
                }),
            );
            return ExitStatus::Error;
        }
        Err(e) => return fail(printer, &e),
    };
    match what {
        Take::Print => crate::commands::diff::print_patch(&run.id, &patch, printer),
        Take::Apply => apply(&run.id, &patch, args.workspace.as_deref(), printer),
    }
}

/// Applies the patch to the top of the git checkout holding `workspace` (or the current
/// directory), after checking that it applies cleanly; its paths are relative to the top of
/// the runner's checkout of the project.
fn apply(id: &str, patch: &[u8], workspace: Option<&Path>, printer: Printer) -> ExitStatus {
    if patch.is_empty() {
        printer.info(&format!("run {id} changed nothing; nothing applied"));
        return ExitStatus::Success;
    }
    let here = workspace
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let top = match git(&here, &["rev-parse", "--show-toplevel"], None) {
        Ok(out) => PathBuf::from(out.trim()),
        Err(e) => {
            printer.error(
                &format!("{} is not in a git checkout: {e}", here.display()),
                Some("run `berth apply` in the project's checkout, or pass --workspace DIR"),
            );
            return ExitStatus::Error;
        }
    };
    let check = git(&top, &["apply", "--binary", "--check", "-"], Some(patch));
    if let Err(e) = check {
        let reverse = git(
            &top,
            &["apply", "--binary", "--check", "--reverse", "-"],
            Some(patch),
        );
        if reverse.is_ok() {
            printer.info(&format!(
                "the changes of run {id} are already applied; nothing to do"
            ));
            return ExitStatus::Success;
        }
        printer.error(
            &format!(
                "the changes of run {id} do not apply cleanly to {}: {e}",
                top.display()
            ),
            Some(&format!("`berth diff {id}` shows them")),
        );
        return ExitStatus::Error;
    }
    let files = git(&top, &["apply", "--binary", "--numstat", "-"], Some(patch))
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split('\t').nth(2).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if let Err(e) = git(&top, &["apply", "--binary", "-"], Some(patch)) {
        printer.error(
            &format!("applying the changes of run {id} failed: {e}"),
            None,
        );
        return ExitStatus::Error;
    }
    printer.info(&format!(
        "applied the changes of run {id} to {} file(s) in {}: {}",
        files.len(),
        top.display(),
        files.join(", ")
    ));
    ExitStatus::Success
}

/// `git ARGS` in `dir`, with `stdin` fed; its stdout, or its stderr as the error.
fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)
            .map_err(|e| format!("writing to git: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
