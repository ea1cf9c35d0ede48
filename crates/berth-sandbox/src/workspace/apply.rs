//! After the run: `berth apply` and `berth branch`.

use std::path::{Path, PathBuf};

use berth_core::spec::WorkspaceMode;

use super::git::{hardened_git, repo_info, run_command, run_git, text};
use super::{GitError, WorkspaceError};
use crate::SandboxError;

/// Where a run's patch applies: the directory to run `git apply` in and the prefix of its paths.
fn patch_target(record: &berth_core::record::RunRecord) -> (PathBuf, String) {
    let result = record.workspace.as_ref();
    match (
        result.and_then(|r| r.repo.clone()),
        record.spec.workspace_mode,
    ) {
        // A copy's paths are relative to the workspace, which may lie below the repository's top;
        // so are those of a worktree uploaded to a remote engine.
        (Some(repo), mode)
            if mode == WorkspaceMode::Copy || result.is_some_and(|r| r.download.is_some()) =>
        {
            let prefix = repo_info(&record.spec.workspace)
                .map(|i| i.prefix)
                .unwrap_or_default();
            (PathBuf::from(repo), prefix)
        }
        (Some(repo), _) => (PathBuf::from(repo), String::new()),
        (None, _) => (record.spec.workspace.clone(), String::new()),
    }
}

/// The run's patch, or why there is none.
pub fn patch_of(
    run_dir: &crate::rundir::RunDir,
) -> Result<(berth_core::record::RunRecord, PathBuf), SandboxError> {
    let record = run_dir.read_record()?;
    let diff = record.workspace.as_ref().and_then(|w| w.diff.clone());
    match diff {
        Some(rel) => Ok((record, run_dir.path().join(rel))),
        None if record.spec.workspace_mode.is_isolated() => Err(SandboxError::WithHint {
            message: format!("run {} has no diff.patch: its workspace changes were not collected", record.id),
            hint: format!("`berth show {}` has the run's record and its warnings", record.id),
        }),
        None => Err(SandboxError::WithHint {
            message: format!(
                "run {} used workspace mode {}, which changes the workspace in place and keeps no patch",
                record.id, record.spec.workspace_mode
            ),
            hint: "run with --workspace-mode worktree (or copy) to get a patch".into(),
        }),
    }
}

/// Applies the run's patch to the user's checkout after checking that it applies cleanly;
/// refuses with the conflicting files named. Returns the files changed.
/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The changes were applied to these files.
    Files(Vec<String>),
    /// The checkout already holds the changes (they were applied before): nothing was done.
    Already,
}

pub fn apply(
    record: &berth_core::record::RunRecord,
    patch: &Path,
) -> Result<Applied, SandboxError> {
    let (dir, prefix) = patch_target(record);
    let patch_text = patch.display().to_string();
    let mut args = vec!["apply", "--binary"];
    let directory = format!("--directory={prefix}");
    if !prefix.is_empty() {
        args.push(&directory);
    }
    let mut check = args.clone();
    check.extend(["--check", &patch_text]);
    if let Err(e) = run_git(&dir, &check, None) {
        // Undoing the changes would apply cleanly: they are there already.
        let mut reverse = check.clone();
        reverse.insert(reverse.len() - 1, "--reverse");
        if run_git(&dir, &reverse, None).is_ok() {
            return Ok(Applied::Already);
        }
        let files = conflicting_files(&e.to_string());
        return Err(SandboxError::WithHint {
            message: format!(
                "the changes of run {} do not apply cleanly to {}: {}",
                record.id,
                dir.display(),
                if files.is_empty() {
                    e.to_string()
                } else {
                    format!("conflicts in {}", files.join(", "))
                }
            ),
            hint: format!(
                "`berth branch {}` keeps them as a branch to merge, or `berth diff {}` shows them",
                record.id, record.id
            ),
        });
    }
    let mut apply = args.clone();
    apply.push(&patch_text);
    run_git(&dir, &apply, None).map_err(WorkspaceError::from)?;
    let mut stat = args;
    stat.extend(["--numstat", &patch_text]);
    let files = run_git(&dir, &stat, None)
        .map(|out| {
            String::from_utf8_lossy(&out)
                .lines()
                .filter_map(|l| l.split('\t').nth(2).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Applied::Files(files))
}

/// The files `git apply --check` complained about.
fn conflicting_files(stderr: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for line in stderr.lines() {
        // The first line carries the failed command before git's own `error: `.
        let line = line.rsplit("error: ").next().unwrap_or(line);
        let file = if let Some(rest) = line.strip_prefix("patch failed: ") {
            rest.rsplit_once(':').map(|(f, _)| f)
        } else if let Some((file, _)) = line.split_once(": patch does not apply") {
            Some(file)
        } else if let Some((file, _)) = line.split_once(": already exists in working directory") {
            Some(file)
        } else if let Some((file, _)) = line.split_once(": does not exist in index") {
            Some(file)
        } else if let Some((file, _)) = line.split_once(": No such file or directory") {
            Some(file)
        } else {
            None
        };
        if let Some(file) = file {
            let file = file.trim().to_string();
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

/// Makes the branch `berth/<run-id>` with one commit of the run's changes on its base commit,
/// without touching the checkout's files or index. Returns the branch's name.
pub fn branch(
    record: &berth_core::record::RunRecord,
    patch: &Path,
) -> Result<String, SandboxError> {
    let result = record.workspace.as_ref();
    let (Some(repo), Some(base)) = (
        result.and_then(|r| r.repo.clone()),
        result.and_then(|r| r.base_commit.clone()),
    ) else {
        return Err(SandboxError::WithHint {
            message: format!(
                "run {} did not start from a git commit, so there is nothing to branch from",
                record.id
            ),
            hint: format!(
                "`berth apply {}` applies its changes to the files instead",
                record.id
            ),
        });
    };
    let repo = PathBuf::from(repo);
    let name = format!("berth/{}", record.id);
    if run_git(
        &repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{name}"),
        ],
        None,
    )
    .is_ok()
    {
        return Err(SandboxError::WithHint {
            message: format!("the branch {name} already exists in {}", repo.display()),
            hint: format!("delete it first (`git branch -D {name}`) or use it as it is"),
        });
    }
    let failed =
        |e: GitError| SandboxError::Invalid(format!("making the branch {name} failed: {e}"));
    let patch = std::fs::read(patch).map_err(|e| SandboxError::io(patch, e))?;
    let message = format!("berth run {}\n\n{:?}", record.id, record.spec.command);
    let prefix = patch_target(record).1;
    branch_at(&repo, &base, &prefix, &name, &message, &patch).map_err(failed)?;
    Ok(name)
}

/// Makes the branch `name` in the checkout `repo` with one commit (`message`) on `base`: `patch`
/// applied to `base`'s tree under `prefix`, in a private index, so the checkout's own index and
/// files stay as they are. The caller checked that `name` is free.
pub fn branch_at(
    repo: &Path,
    base: &str,
    prefix: &str,
    name: &str,
    message: &str,
    patch: &[u8],
) -> Result<(), GitError> {
    let index = std::env::temp_dir().join(format!(
        "berth-index-{}-{}",
        name.replace('/', "-"),
        std::process::id()
    ));
    let result = (|| {
        let with_index = |args: &[&str], stdin: Option<&[u8]>| {
            let mut command = hardened_git(repo);
            command.env("GIT_INDEX_FILE", &index);
            run_command(command, args, stdin).map(text)
        };
        with_index(&["read-tree", base], None)?;
        let directory = format!("--directory={prefix}");
        let mut apply = vec!["apply", "--cached", "--binary"];
        if !prefix.is_empty() {
            apply.push(&directory);
        }
        apply.push("-");
        with_index(&apply, Some(patch))?;
        let tree = with_index(&["write-tree"], None)?;
        let commit = with_index(&["commit-tree", &tree, "-p", base, "-m", message], None)?;
        with_index(&["branch", name, &commit], None)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&index);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_errors_name_the_conflicting_files() {
        let stderr = "error: patch failed: src/a.rs:3\nerror: src/a.rs: patch does not apply\nerror: new.txt: already exists in working directory\n";
        assert_eq!(conflicting_files(stderr), ["src/a.rs", "new.txt"]);
        assert!(conflicting_files("fatal: something else").is_empty());
        // As run_git reports it: the command first, then git's stderr.
        let reported = "`git apply --binary --check /r/diff.patch` failed: error: patch failed: mod.txt:1\nerror: mod.txt: patch does not apply";
        assert_eq!(conflicting_files(reported), ["mod.txt"]);
    }
}
