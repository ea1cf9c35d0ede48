//! `berth diff`, `berth apply` and `berth branch` on a server run: the run's
//! `berth/diff.patch` artifact, downloaded, then printed, applied to the checkout here, or
//! committed on a branch of the commit the run started from, as for a local run.

use std::path::{Path, PathBuf};

use berth_api::RunView;
use berth_client::ApiError;
use berth_core::ExitStatus;

use super::{client, fail, in_neither, server_answered};
use crate::args::RunRefArgs;
use crate::printer::Printer;

/// What to do with the patch.
#[derive(Debug, Clone, Copy)]
pub enum Take {
    Print,
    Apply,
    Branch,
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
        Take::Branch => branch(&run, &patch, args.workspace.as_deref(), printer),
    }
}

/// Makes the branch `berth/<run-id>` in the checkout holding `workspace` (or the current
/// directory): one commit of the run's changes on the commit the run started from, which must be
/// in this checkout. The checkout's files and index stay as they are.
fn branch(run: &RunView, patch: &[u8], workspace: Option<&Path>, printer: Printer) -> ExitStatus {
    let Some(base) = run.commit.as_deref() else {
        printer.error(
            &format!(
                "run {} did not record the commit it started from, so there is nothing to branch from",
                run.id
            ),
            Some(&format!(
                "`berth apply {}` applies its changes to the files instead",
                run.id
            )),
        );
        return ExitStatus::Error;
    };
    let here = workspace
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let top = match git(&here, &["rev-parse", "--show-toplevel"], None) {
        Ok(out) => PathBuf::from(out.trim()),
        Err(e) => {
            printer.error(
                &format!("{} is not in a git checkout: {e}", here.display()),
                Some("run `berth branch` in the project's checkout, or pass --workspace DIR"),
            );
            return ExitStatus::Error;
        }
    };
    let wanted = format!("{base}^{{commit}}");
    let known = ["cat-file", "-e", "--end-of-options", wanted.as_str()];
    if git(&top, &known, None).is_err() {
        printer.error(
            &format!(
                "run {} started from commit {base}, which is not in {}",
                run.id,
                top.display()
            ),
            Some(&format!(
                "fetch it (`git fetch`) and try again, or `berth apply {}` applies the changes to the files",
                run.id
            )),
        );
        return ExitStatus::Error;
    }
    let name = format!("berth/{}", run.id);
    let taken = format!("refs/heads/{name}");
    if git(&top, &["rev-parse", "--verify", "--quiet", &taken], None).is_ok() {
        printer.error(
            &format!("the branch {name} already exists in {}", top.display()),
            Some(&format!(
                "delete it first (`git branch -D {name}`) or use it as it is"
            )),
        );
        return ExitStatus::Error;
    }
    let message = format!("berth run {}\n\n{:?}", run.id, run.sandbox.command);
    // The patch's paths are relative to the top of the runner's checkout of the project.
    match berth_sandbox::workspace::branch_at(&top, base, "", &name, &message, patch) {
        Ok(()) => {
            crate::printer::data_line(&name);
            ExitStatus::Success
        }
        Err(e) => {
            printer.error(&format!("making the branch {name} failed: {e}"), None);
            ExitStatus::Error
        }
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

/// A git command of `berth apply`/`branch` on a server run that could not run or failed.
#[derive(Debug, thiserror::Error)]
enum GitError {
    #[error("cannot run git: {0}")]
    Run(std::io::Error),
    #[error("writing to git: {0}")]
    Stdin(std::io::Error),
    #[error("waiting for git: {0}")]
    Wait(std::io::Error),
    /// git's stderr.
    #[error("{0}")]
    Failed(String),
}

/// `git ARGS` in `dir`, with `stdin` fed; its stdout, or its stderr as the error.
fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<String, GitError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        // Its stderr is shown as the error, in the one language berth's own messages use.
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Run)?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes).map_err(GitError::Stdin)?;
    }
    let out = child.wait_with_output().map_err(GitError::Wait)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(GitError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}
