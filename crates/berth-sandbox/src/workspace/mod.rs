//! Isolated workspaces: copy mode and worktree mode.
//!
//! **Copy mode** never mounts the user's directory. Before the run, the workspace is walked
//! (honouring `.gitignore`, `.berthignore` and git's excludes, leaving out `.git` and berth's
//! state directory) and its size checked against the copy limit. After the container is
//! created and before it starts, the tree is streamed as a tar through the archive API, every
//! entry owned by the sandbox user so the unprivileged command can change it. The tree lands in
//! the container's own layer (uploaded to `/` with a `workspace/` top entry, which sets the
//! directory's owner too), which works the same on a remote engine. A read-only root is refused
//! (`berth_core::plan::check_copy` says why no volume or tmpfs can stand in). After the command
//! exits (before the container is removed), `/workspace` is downloaded through berth-archive's
//! safe extraction into `<run dir>/workspace/` and compared with the uploaded files into
//! `diff.patch`.
//!
//! **Worktree mode** makes a `git worktree` of HEAD on the branch `berth/<run-id>` in
//! `<run dir>/workspace/`, bind-mounted at `/workspace`. Afterwards everything the run changed
//! (commits included) is written to `diff.patch` relative to the starting commit, and the
//! worktree and its branch are removed unless `--keep`.
//!
//! git runs as a host subprocess. Once the sandbox has written to a tree, berth's git commands
//! there name the git directory explicitly (`--git-dir`, `--work-tree`): a `.git` planted by the
//! sandbox is never read, so it cannot smuggle in configuration (hooks, fsmonitor commands).

mod apply;
mod copy;
mod diff;
mod error;
mod git;
mod hooks;
mod worktree;

use std::path::PathBuf;

pub use apply::{apply, branch, branch_at, patch_of, Applied};
pub use copy::scan_copy;
pub use error::{GitError, WorkspaceError};
pub(crate) use git::{hardened_git, run_command, text};
pub use hooks::{after_exit, before_start, conclude, prepare, Prepared};
pub use worktree::{
    create_copy_snapshot, create_worktree, create_worktree_from, resolve_ref, tree_owner,
};

/// How the workspace reaches the container, prepared on the host before the run.
#[derive(Debug, Default)]
pub enum WorkspaceSetup {
    /// Bind-mounted (rw, ro) or absent: nothing to do around the run.
    #[default]
    Mounted,
    Copy(CopySource),
    Worktree(Worktree),
}

/// One entry of the workspace to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryKind {
    Dir { mode: u32 },
    File { mode: u32, size: u64 },
    Symlink { target: PathBuf },
}

/// The files copy mode uploads, found before the run.
#[derive(Debug)]
pub struct CopySource {
    root: PathBuf,
    root_mode: u32,
    entries: Vec<(PathBuf, EntryKind)>,
    total_bytes: u64,
    /// The sandbox user, owner of every uploaded entry.
    uid: u32,
    gid: u32,
    /// The user's git checkout, when the workspace lies in one: root, prefix, HEAD.
    repo: Option<RepoInfo>,
    limit: u64,
    /// The sandbox's private repository, uploaded as `workspace/.git` (see `sandbox_repo`).
    git: Option<GitUpload>,
}

/// A private repository berth made on the host, to upload as `workspace/.git`.
#[derive(Debug, Clone)]
struct GitUpload {
    dir: PathBuf,
    entries: Vec<(PathBuf, EntryKind)>,
}

#[derive(Debug, Clone)]
struct RepoInfo {
    top: PathBuf,
    prefix: String,
    head: Option<String>,
}

/// A run's git worktree. It serialises so that a runner can keep a workflow's worktree between
/// steps (the file lives in the runner's state directory, out of every sandbox's reach).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Worktree {
    /// The user's checkout (its top level).
    pub repo: PathBuf,
    /// The worktree's top level, `<run dir>/workspace`.
    pub path: PathBuf,
    /// The directory bind-mounted at /workspace: the worktree's counterpart of the workspace.
    pub mount: PathBuf,
    /// The worktree's git directory in the user's repository, learned before the sandbox ran.
    git_dir: PathBuf,
    pub branch: String,
    /// The commit the run starts from.
    pub base: String,
    /// A copy with a private repository (a workflow's `workspace = "copy"`), not a worktree of
    /// the user's checkout: removing it touches nothing of the user's.
    #[serde(default)]
    pub snapshot: bool,
}
