//! The sandbox's own git repository, and the scrubbing of `.git` entries a sandbox wrote.
//!
//! An agent runs `git status`, `git diff` and `git log` all the time, but the user's `.git`
//! must stay out of its reach (hooks, config, refs: whatever it could write there, host-side
//! git would later obey). So an isolated workspace gets a **private repository** at
//! `/workspace/.git`, made by berth before the run:
//!
//! - `HEAD` is the branch `berth/<run-id>` at the run's base commit (for a workspace below the
//!   repository's top: a commit of that subdirectory's tree whose parent is the base);
//! - the index holds that commit's tree, so `git status` and `git diff` show the run's changes;
//! - `objects/info/alternates` names [`GIT_OBJECTS_TARGET`], where the user's object directory
//!   is bind-mounted read-only: history is readable, and whatever the agent commits lands in the
//!   private `objects/`.
//!
//! The private repository is the sandbox's to write, so it is hostile afterwards like the rest
//! of the workspace: host-side git never reads it. [`scrub_git_entries`] removes every entry
//! named `.git` from a tree the sandbox wrote (its own repository, and any nested one whose
//! gitfile could point host-side git at a host path), through directory handles, once no
//! process of the run is left.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use berth_archive::beneath::{self, DirHandle};
pub use berth_core::plan::GIT_OBJECTS_TARGET;

use crate::workspace::{hardened_git, run_command, text, WorkspaceError};

/// The object directory of the repository `dir` lies in (its common directory's `objects`,
/// canonical), or `None` when `dir` is in no repository.
pub(crate) fn objects_of(dir: &Path) -> Option<PathBuf> {
    let out = run_command(
        hardened_git(dir),
        &["rev-parse", "--git-path", "objects"],
        None,
    )
    .ok()?;
    let objects = PathBuf::from(text(out));
    let objects = if objects.is_absolute() {
        objects
    } else {
        dir.join(objects)
    };
    std::fs::canonicalize(objects).ok().filter(|p| p.is_dir())
}

/// Makes the private repository at `git_dir` (which must not exist yet; berth made its parent
/// and no sandbox can reach it yet): `HEAD` on `branch` at `base`, or, when the workspace is the
/// subdirectory `prefix` of the repository, at a commit of that subdirectory's tree with `base`
/// as its parent. `objects` is the user's object directory on this host, read while making it;
/// the sandbox reads it at [`GIT_OBJECTS_TARGET`].
pub(crate) fn create(
    git_dir: &Path,
    objects: &Path,
    base: &str,
    prefix: &str,
    branch: &str,
) -> Result<(), WorkspaceError> {
    let io = |path: &Path, e: std::io::Error| WorkspaceError::io(path, e);
    let format = text(run_command(
        hardened_git(objects),
        &[
            &format!(
                "--git-dir={}",
                objects.parent().unwrap_or(objects).display()
            ),
            "rev-parse",
            "--show-object-format",
        ],
        None,
    )?);
    for dir in ["objects/info", "objects/pack", "refs/heads", "refs/tags"] {
        let path = git_dir.join(dir);
        std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
    }
    let config = if format == "sha1" {
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n".to_string()
    } else {
        format!(
            "[core]\n\trepositoryformatversion = 1\n\tfilemode = true\n\tbare = false\n\
             [extensions]\n\tobjectformat = {format}\n"
        )
    };
    let write = |rel: &str, content: &[u8]| {
        let path = git_dir.join(rel);
        std::fs::write(&path, content).map_err(|e| io(&path, e))
    };
    write("config", config.as_bytes())?;
    write("HEAD", format!("ref: refs/heads/{branch}\n").as_bytes())?;
    // The user's objects are read through the environment while berth makes the repository;
    // the alternates file, naming the path inside the sandbox, comes last.
    let git = |args: &[&str]| {
        let mut command = hardened_git(git_dir);
        command
            .arg(format!("--git-dir={}", git_dir.display()))
            .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", objects);
        run_command(command, args, None).map(text)
    };
    let prefix = prefix.trim_end_matches('/');
    let head = if prefix.is_empty() {
        git(&["rev-parse", "--verify", &format!("{base}^{{commit}}")])?
    } else {
        // `commit-tree` refuses anything but a tree.
        let tree = git(&["rev-parse", "--verify", &format!("{base}:{prefix}")])?;
        let message = format!(
            "berth: {prefix}/ of {base}\n\nThe workspace is the subdirectory {prefix}/ of the \
             repository; this commit holds its tree, and its parent is the commit the run \
             started from."
        );
        git(&["commit-tree", &tree, "-p", base, "-m", &message])?
    };
    git(&["update-ref", &format!("refs/heads/{branch}"), &head])?;
    git(&["read-tree", &head])?;
    write(
        "objects/info/alternates",
        format!("{GIT_OBJECTS_TARGET}\n").as_bytes(),
    )?;
    Ok(())
}

/// Removes every entry named `.git` (file, directory or link) anywhere in the tree at `root`,
/// never following a symlink. Call it only once no process of the run is left.
pub fn scrub_git_entries(root: &DirHandle) -> std::io::Result<()> {
    let dot_git = OsStr::new(".git");
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = if rel.as_os_str().is_empty() {
            root.open_dir(Path::new("."))?
        } else {
            match root.open_dir(&rel) {
                Ok(dir) => dir,
                // Nothing changes the tree now; a trap (a link where a directory was) is skipped.
                Err(e) if beneath::is_swapped(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        for name in dir.names()? {
            if name == dot_git {
                dir.remove_entry_all(&name)?;
                continue;
            }
            let stat = dir.stat_entry(&name)?;
            if beneath::file_type(&stat) == rustix::fs::FileType::Directory {
                pending.push(rel.join(&name));
            }
        }
    }
    Ok(())
}

/// Writes the gitfile `.git` (`gitdir: GIT_DIR`) at the top of `root`, where
/// [`scrub_git_entries`] left nothing: a kept worktree is the user's git worktree again.
pub fn restore_gitfile(root: &DirHandle, git_dir: &Path) -> std::io::Result<()> {
    let mut file = root.create_file(OsStr::new(".git"), 0o644)?;
    file.write_all(format!("gitdir: {}\n", git_dir.display()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_removes_every_dot_git_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("keep/.git")).unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".git/objects")).unwrap();
        std::fs::write(root.join(".git/config"), "[core]\n").unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/.git"), "gitdir: /somewhere\n").unwrap();
        std::fs::write(root.join("a/file"), "kept").unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/b/.git-not")).unwrap();

        scrub_git_entries(&DirHandle::open(root).unwrap()).unwrap();

        assert!(!root.join(".git").exists());
        assert!(std::fs::symlink_metadata(root.join("a/b/.git")).is_err());
        assert_eq!(std::fs::read(root.join("a/file")).unwrap(), b"kept");
        assert!(root.join("a/b/.git-not").is_symlink());
        // The link was not followed: the `.git` behind it stays.
        assert!(outside.path().join("keep/.git").is_dir());
    }

    #[test]
    fn a_restored_gitfile_names_the_git_directory_and_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = DirHandle::open(dir.path()).unwrap();
        restore_gitfile(&root, Path::new("/repo/.git/worktrees/w")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".git")).unwrap(),
            "gitdir: /repo/.git/worktrees/w\n"
        );
        assert!(restore_gitfile(&root, Path::new("/x")).is_err());
    }
}
