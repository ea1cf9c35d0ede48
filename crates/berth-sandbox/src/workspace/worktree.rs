//! Worktree mode: the run's `git worktree`, a workflow's copy snapshot, the sandbox's private
//! repository in them, and the scrub that removes every `.git` the sandbox wrote.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::copy::scan_copy;
use super::diff::place;
use super::git::{git_command, hardened_git, repo_info, run_command, run_git, text};
use super::{EntryKind, GitError, WorkspaceError, Worktree};
use crate::SandboxError;

/// Creates the run's worktree of HEAD at `path` on the branch `berth/<run_id>`; with
/// `include_dirty` the checkout's uncommitted changes (tracked, and untracked files that are not
/// ignored) are carried over and committed on that branch, which is then the run's base. When
/// `owner` is given (berth runs as root), the worktree is handed to the sandbox user.
pub fn create_worktree(
    workspace: &Path,
    path: &Path,
    run_id: &str,
    include_dirty: bool,
    owner: Option<(u32, u32)>,
) -> Result<Worktree, SandboxError> {
    create_worktree_from(workspace, path, run_id, include_dirty, owner, None)
}

/// [`create_worktree`] of `start` (a full commit id, see [`resolve_ref`]) instead of HEAD when
/// given.
pub fn create_worktree_from(
    workspace: &Path,
    path: &Path,
    run_id: &str,
    include_dirty: bool,
    owner: Option<(u32, u32)>,
    start: Option<&str>,
) -> Result<Worktree, SandboxError> {
    super::git::check_attr_source_support()?;
    let not_a_repo = || SandboxError::WithHint {
        message: format!(
            "worktree mode needs a git repository, and {} is not in one",
            workspace.display()
        ),
        hint: "run berth inside a git checkout, or use --workspace-mode copy".into(),
    };
    let info = repo_info(workspace).ok_or_else(not_a_repo)?;
    let head = start.map(str::to_owned).or_else(|| info.head.clone());
    let head = head.ok_or_else(|| SandboxError::WithHint {
        message: format!(
            "worktree mode starts from HEAD, and the repository {} has no commit yet",
            info.top.display()
        ),
        hint: "commit something first (`git commit`), or use --workspace-mode copy".into(),
    })?;
    let git_error =
        |e: WorkspaceError| SandboxError::Invalid(format!("creating the worktree failed: {e}"));
    let branch = format!("berth/{run_id}");
    let path_text = path.display().to_string();
    run_git(
        &info.top,
        &[
            "worktree", "add", "--quiet", "-b", &branch, &path_text, &head,
        ],
        None,
    )
    .map_err(|e| git_error(e.into()))?;
    let mut worktree = Worktree {
        repo: info.top.clone(),
        path: path.to_path_buf(),
        mount: path.join(&info.prefix),
        git_dir: PathBuf::new(),
        branch,
        base: head,
        snapshot: false,
    };
    let prepared = (|| {
        worktree.git_dir = PathBuf::from(text(run_git(
            path,
            &["rev-parse", "--absolute-git-dir"],
            None,
        )?));
        if include_dirty && carry_dirty(&info.top, &worktree)? {
            let message = format!("berth: uncommitted changes carried into run {run_id}");
            worktree.git_attrs_from(&worktree.base, &["add", "--all"])?;
            worktree.git(&["commit", "--quiet", "--no-verify", "-m", &message])?;
            worktree.base = text(worktree.git(&["rev-parse", "HEAD"])?);
        }
        if let Some((uid, gid)) = owner {
            chown_tree(path, uid, gid)?;
        }
        Ok::<(), WorkspaceError>(())
    })();
    if let Err(e) = prepared {
        worktree.remove();
        return Err(git_error(e));
    }
    Ok(worktree)
}

/// The full id of the commit `git_ref` names in the git checkout holding `checkout`, after a
/// `git fetch` of its configured remote when `fetch` is set. The ref was checked by
/// `berth_api::check_git_ref` (never an option); `--end-of-options` keeps it so regardless.
/// Errors name the ref and the checkout.
pub fn resolve_ref(checkout: &Path, git_ref: &str, fetch: bool) -> Result<String, WorkspaceError> {
    let info =
        repo_info(checkout).ok_or_else(|| WorkspaceError::NotACheckout(checkout.to_path_buf()))?;
    if fetch {
        // The remote the checkout's config names (its branch's upstream, else origin); no
        // prompts, no hooks, no fsmonitor (git_command's fixed settings).
        run_git(&info.top, &["fetch", "--quiet"], None).map_err(|source| {
            WorkspaceError::Fetch {
                git_ref: git_ref.to_string(),
                source,
            }
        })?;
    }
    let wanted = format!("{git_ref}^{{commit}}");
    let commit = run_git(
        &info.top,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &wanted,
        ],
        None,
    )
    .map(text)
    .map_err(|_| WorkspaceError::NoSuchCommit {
        git_ref: git_ref.to_string(),
        checkout: info.top.clone(),
        fetched: fetch,
    })?;
    if commit.len() < 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WorkspaceError::NotACommitId {
            git_ref: git_ref.to_string(),
            answer: commit,
        });
    }
    Ok(commit)
}

/// Who is to own a tree berth makes for a sandbox to write: the sandbox user when berth runs as
/// root (and the sandbox user is not root); otherwise berth itself (`None`: left as made).
pub fn tree_owner(sandbox_owner: (u32, u32), berth_uid: u32) -> Option<(u32, u32)> {
    (berth_uid == 0 && sandbox_owner != (0, 0)).then_some(sandbox_owner)
}

/// A workflow's copy workspace: the files copy mode would upload from `source` (the same ignore
/// rules, `.git` left out, `exclude` and the size `limit`), copied to `path`, with a private
/// bare repository at `git_dir` that remembers them as they were. Its diff is then taken like a
/// worktree's, and `source` needs no repository at all.
pub fn create_copy_snapshot(
    source: &Path,
    path: &Path,
    git_dir: &Path,
    exclude: Option<&Path>,
    limit: u64,
    owner: Option<(u32, u32)>,
) -> Result<Worktree, SandboxError> {
    super::git::check_attr_source_support()?;
    let scan = scan_copy(source, exclude, limit, owner.unwrap_or((0, 0)), true)?;
    let mut snapshot = Worktree {
        repo: source.to_path_buf(),
        path: path.to_path_buf(),
        mount: path.to_path_buf(),
        git_dir: git_dir.to_path_buf(),
        branch: String::new(),
        base: String::new(),
        snapshot: true,
    };
    let made = (|| {
        std::fs::create_dir_all(path).map_err(|e| WorkspaceError::io(path, e))?;
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(scan.root_mode & 0o777),
        )
        .map_err(|e| WorkspaceError::io(path, e))?;
        for (rel, kind) in &scan.entries {
            let to = path.join(rel);
            match kind {
                EntryKind::Dir { mode } => {
                    std::fs::create_dir_all(&to).map_err(|e| WorkspaceError::io(&to, e))?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode & 0o777))
                        .map_err(|e| WorkspaceError::io(&to, e))?;
                }
                EntryKind::File { .. } | EntryKind::Symlink { .. } => {
                    place(&source.join(rel), &to)?;
                }
            }
        }
        let git_text = git_dir.display().to_string();
        run_git(path, &["init", "--quiet", "--bare", &git_text], None)?;
        // No commit yet: attributes from the empty tree (in the repository's object format).
        let empty_tree = text(snapshot.git_stdin(&["hash-object", "-t", "tree", "--stdin"], b"")?);
        snapshot.git_attrs_from(&empty_tree, &["add", "--all"])?;
        snapshot.git(&[
            "commit",
            "--quiet",
            "--no-verify",
            "--allow-empty",
            "-m",
            "berth: the workspace as copied",
        ])?;
        snapshot.base = text(snapshot.git(&["rev-parse", "HEAD"])?);
        if let Some((uid, gid)) = owner {
            chown_tree(path, uid, gid)?;
        }
        Ok::<(), WorkspaceError>(())
    })();
    if let Err(e) = made {
        snapshot.remove();
        return Err(SandboxError::Invalid(format!(
            "copying the workspace failed: {e}"
        )));
    }
    Ok(snapshot)
}

/// Copies the checkout's uncommitted changes into the worktree; whether there were any.
fn carry_dirty(top: &Path, worktree: &Worktree) -> Result<bool, WorkspaceError> {
    // Attributes as HEAD has them: the checkout's files may be a sandbox's (an earlier rw run).
    let mut command = hardened_git(top);
    command.env("GIT_ATTR_SOURCE", "HEAD");
    let patch = run_command(
        command,
        &[
            "diff",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "HEAD",
        ],
        None,
    )?;
    if !patch.is_empty() {
        worktree.git_stdin(&["apply", "--binary", "--whitespace=nowarn", "-"], &patch)?;
    }
    let untracked = run_git(
        top,
        &["ls-files", "--others", "--exclude-standard", "-z"],
        None,
    )?;
    let mut carried = !patch.is_empty();
    for name in untracked.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::ffi::OsStr::from_bytes(name));
        let from = top.join(rel);
        if from.starts_with(&worktree.path) {
            continue;
        }
        place(&from, &worktree.path.join(rel))?;
        carried = true;
    }
    Ok(carried)
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), WorkspaceError> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|e| WorkspaceError::io(&path, e))?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| WorkspaceError::io(&path, e))?;
        if meta.is_dir() {
            for item in std::fs::read_dir(&path).map_err(|e| WorkspaceError::io(&path, e))? {
                pending.push(item.map_err(|e| WorkspaceError::io(&path, e))?.path());
            }
        }
    }
    Ok(())
}

impl Worktree {
    /// git in the worktree with its git directory named explicitly: whatever the sandbox put
    /// in the tree (a `.git` of its own) is never read as configuration.
    fn git(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        git_command(&self.path, &self.explicit(), args, None)
    }

    fn git_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>, GitError> {
        git_command(&self.path, &self.explicit(), args, Some(stdin))
    }

    /// [`Self::git`] with attributes read from the tree `attr_source`, never from the files:
    /// a `.gitattributes` the sandbox wrote cannot choose a filter or diff driver of the user's
    /// configuration to run on them.
    fn git_attrs_from(&self, attr_source: &str, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let mut command = hardened_git(&self.path);
        command
            .args(self.explicit())
            .env("GIT_ATTR_SOURCE", attr_source);
        run_command(command, args, None)
    }

    fn explicit(&self) -> Vec<String> {
        vec![
            format!("--git-dir={}", self.git_dir.display()),
            format!("--work-tree={}", self.path.display()),
        ]
    }

    /// Everything the run changed relative to its base, commits included, as a binary-safe
    /// patch. Files the repository ignores are not part of it. Scrubs the tree first
    /// ([`Self::scrub`]): call it only once no process of the run is left.
    pub fn diff(&self) -> Result<Vec<u8>, WorkspaceError> {
        self.scrub()?;
        // Attributes as the base commit has them.
        let git = |args: &[&str]| self.git_attrs_from(&self.base, args);
        git(&["add", "--all"])?;
        git(&[
            "diff",
            "--cached",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            &self.base,
        ])
        .map_err(WorkspaceError::from)
    }

    /// The tree the worktree holds now (ignored files left out), written to the repository's
    /// object store: a workflow takes one before and after each step, for the step's own patch
    /// ([`Self::patch_between`]). Scrubs the tree first ([`Self::scrub`]): call it only once no
    /// process of a run is left.
    pub fn snapshot(&self) -> Result<String, WorkspaceError> {
        self.scrub()?;
        let git = |args: &[&str]| self.git_attrs_from(&self.base, args);
        git(&["add", "--all"])?;
        Ok(text(git(&["write-tree"])?))
    }

    /// The binary-safe patch from tree `from` to tree `to` (from [`Self::snapshot`]), with the
    /// base commit's attributes.
    pub fn patch_between(&self, from: &str, to: &str) -> Result<Vec<u8>, WorkspaceError> {
        self.git_attrs_from(
            &self.base,
            &[
                "diff",
                "--binary",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--end-of-options",
                from,
                to,
            ],
        )
        .map_err(WorkspaceError::from)
    }

    /// Replaces the gitfile at the mounted directory's top (or makes one below it) with the
    /// sandbox's private repository; returns the object directory to mount for it. Before the
    /// run: nothing of the sandbox's exists yet. [`Self::scrub`] undoes it.
    pub(super) fn make_sandbox_repository(
        &self,
        branch: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<PathBuf, WorkspaceError> {
        let objects = crate::sandbox_repo::objects_of(&self.repo)
            .ok_or_else(|| WorkspaceError::NoObjectDirectory(self.repo.clone()))?;
        let git_dir = self.mount.join(".git");
        if let Err(e) = std::fs::remove_file(&git_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(WorkspaceError::io(&git_dir, e));
            }
        }
        let prefix = self
            .mount
            .strip_prefix(&self.path)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let made = crate::sandbox_repo::create(&git_dir, &objects, &self.base, &prefix, branch)
            .and_then(|()| match owner {
                Some((uid, gid)) => chown_tree(&git_dir, uid, gid),
                None => Ok(()),
            });
        if let Err(e) = made {
            // Back to the worktree as git made it.
            let _ = self.scrub();
            return Err(e);
        }
        Ok(objects)
    }

    /// Removes every `.git` the sandbox could have written or planted in the tree (the private
    /// repository, nested repositories, gitfiles naming host paths) and, for a worktree of the
    /// user's checkout, writes its gitfile back: host-side git, and the user's git in a kept
    /// worktree, then read only the user's own repository. Only once no process of the run is
    /// left.
    pub fn scrub(&self) -> Result<(), WorkspaceError> {
        let failed = |e: std::io::Error| WorkspaceError::io(&self.path, e);
        let root = berth_archive::beneath::DirHandle::open(&self.path).map_err(failed)?;
        crate::sandbox_repo::scrub_git_entries(&root).map_err(failed)?;
        if !self.snapshot {
            crate::sandbox_repo::restore_gitfile(&root, &self.git_dir).map_err(failed)?;
        }
        Ok(())
    }

    /// Removes the worktree, its metadata and its branch. Best effort: what is left is named.
    pub fn remove(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.snapshot {
            for dir in [&self.path, &self.git_dir] {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        problems.push(format!("removing {}: {e}", dir.display()));
                    }
                }
            }
            return problems;
        }
        let path = self.path.display().to_string();
        if let Err(e) = run_git(
            &self.repo,
            &["worktree", "remove", "--force", "--force", &path],
            None,
        ) {
            if self.path.exists() {
                if let Err(io) = std::fs::remove_dir_all(&self.path) {
                    problems.push(format!("{e}; removing {path}: {io}"));
                }
            }
        }
        if let Err(e) = run_git(&self.repo, &["worktree", "prune"], None) {
            problems.push(e.to_string());
        }
        if let Err(e) = run_git(&self.repo, &["branch", "--quiet", "-D", &self.branch], None) {
            problems.push(e.to_string());
        }
        problems
    }
}
