//! What can go wrong with an isolated workspace on the host: git, and the files berth copies.

use std::path::{Path, PathBuf};

/// A host `git` command that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not installed (it is needed for copy and worktree modes)")]
    NotInstalled,
    #[error("running git failed: {0}")]
    Run(std::io::Error),
    #[error("writing to git failed: {0}")]
    Stdin(std::io::Error),
    /// git ran and exited non-zero; `stderr` is what it said.
    #[error("`git {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// A problem preparing, collecting or concluding an isolated workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not in a git checkout", .0.display())]
    NotACheckout(PathBuf),
    #[error("fetching before resolving git ref `{git_ref}` failed: {source}")]
    Fetch { git_ref: String, source: GitError },
    #[error(
        "git ref `{git_ref}` names no commit in the checkout {}{}",
        checkout.display(),
        if *fetched { " (after fetching)" } else { "" }
    )]
    NoSuchCommit {
        git_ref: String,
        checkout: PathBuf,
        fetched: bool,
    },
    #[error("git ref `{git_ref}`: git answered `{answer}`, not a commit id")]
    NotACommitId { git_ref: String, answer: String },
    #[error("no object directory found for {}", .0.display())]
    NoObjectDirectory(PathBuf),
    /// The upload of copy mode's tree into the container stopped.
    #[error("uploading the workspace failed: {0}")]
    Upload(String),
}

impl WorkspaceError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A short hint telling the user what to do, when there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Git(GitError::NotInstalled) => {
                Some("install git (2.41 or newer), or use --workspace-mode rw, ro or none".into())
            }
            Self::NotACheckout(_) => {
                Some("--ref needs the project's workspace to be a git checkout".into())
            }
            _ => None,
        }
    }
}
