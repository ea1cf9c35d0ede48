//! The worktrees of workflows on this runner: one per workflow, made by its first step from
//! the project's checkout, the workspace of every later step (the server pins them here), and
//! removed when the server says the workflow ended.
//!
//! Layout: `<state dir>/workflows/<id>/worktree/` (the worktree; for `workspace = "copy"`,
//! `copy/` with its private repository `copy.git/`) and `worktree.json` (what berth learned
//! about it when it made it — repository, git directory, base commit — so later steps and the
//! removal never ask a git directory the sandbox could have planted).

use std::path::{Path, PathBuf};

use berth_sandbox::workspace::{self, Worktree};

pub(crate) fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("workflows")
}

/// Why a workflow's worktree could not be had.
#[derive(Debug, thiserror::Error)]
pub enum WorktreeError {
    #[error("`{0}` is not a workflow id (wf- and letters or digits)")]
    InvalidId(String),
    #[error("{}: unreadable: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the workflow's worktree {} is gone", .0.display())]
    Gone(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Create(#[from] berth_sandbox::SandboxError),
    #[error("{0}")]
    Encode(serde_json::Error),
}

/// A workflow id as the server makes them (`wf-` and a run id): never a path of its own.
fn check_id(id: &str) -> Result<(), WorktreeError> {
    let ok = id.len() <= 64
        && id.starts_with("wf-")
        && id[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(WorktreeError::InvalidId(id.to_string()))
    }
}

/// The workflow's worktree: the one made by an earlier step, or a new one of `checkout` (with
/// `copy`, a copy of it with a private repository for the diff).
pub fn worktree_for(
    state_dir: &Path,
    id: &str,
    checkout: &Path,
    owner: Option<(u32, u32)>,
    copy: bool,
) -> Result<Worktree, WorktreeError> {
    check_id(id)?;
    let dir = root(state_dir).join(id);
    let record = dir.join("worktree.json");
    if let Ok(bytes) = std::fs::read(&record) {
        let tree: Worktree =
            serde_json::from_slice(&bytes).map_err(|source| WorktreeError::Unreadable {
                path: record.clone(),
                source,
            })?;
        if !tree.path.is_dir() {
            return Err(WorktreeError::Gone(tree.path));
        }
        return Ok(tree);
    }
    std::fs::create_dir_all(&dir).map_err(|source| WorktreeError::Io {
        path: dir.clone(),
        source,
    })?;
    let tree = if copy {
        let exclude = std::fs::canonicalize(state_dir).ok();
        workspace::create_copy_snapshot(
            checkout,
            &dir.join("copy"),
            &dir.join("copy.git"),
            exclude.as_deref(),
            berth_core::spec::DEFAULT_COPY_LIMIT,
            owner,
        )
    } else {
        workspace::create_worktree(checkout, &dir.join("worktree"), id, false, owner)
    }?;
    let json = serde_json::to_vec(&tree).map_err(WorktreeError::Encode)?;
    let tmp = dir.join(".worktree.json.tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &record))
        .map_err(|source| WorktreeError::Io {
            path: record.clone(),
            source,
        })?;
    Ok(tree)
}

/// The workflows whose worktrees this runner keeps.
pub fn held(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(root(state_dir))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| check_id(name).is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a workflow's worktree, its branch and its directory.
pub fn remove(state_dir: &Path, id: &str) {
    if check_id(id).is_err() {
        return;
    }
    let dir = root(state_dir).join(id);
    if let Ok(bytes) = std::fs::read(dir.join("worktree.json")) {
        if let Ok(tree) = serde_json::from_slice::<Worktree>(&bytes) {
            for problem in tree.remove() {
                tracing::warn!(workflow = %id, %problem, "removing the workflow's worktree");
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(workflow = %id, error = %e, "removing {}", dir.display());
        }
    } else {
        tracing::info!(workflow = %id, "workflow ended: its worktree is removed");
    }
}
