//! Copy mode after the run: the diff between the uploaded and the downloaded tree.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::git::{hardened_git, run_command, run_git, text};
use super::{CopySource, EntryKind, WorkspaceError};

/// A file's state for the diff: kind, executable bit and content are compared.
#[derive(Debug, PartialEq, Eq)]
enum Leaf {
    File { exec: bool },
    Symlink(PathBuf),
}

fn leaves_of_download(dest: &Path) -> std::io::Result<BTreeMap<PathBuf, Leaf>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        for item in std::fs::read_dir(dest.join(&dir))? {
            let item = item?;
            if item.file_name() == ".git" {
                continue; // never part of the workspace's changes
            }
            let rel = dir.join(item.file_name());
            let meta = std::fs::symlink_metadata(item.path())?;
            if meta.is_dir() {
                pending.push(rel);
            } else if meta.is_file() {
                out.insert(
                    rel,
                    Leaf::File {
                        exec: meta.mode() & 0o100 != 0,
                    },
                );
            } else if meta.file_type().is_symlink() {
                out.insert(rel, Leaf::Symlink(std::fs::read_link(item.path())?));
            }
        }
    }
    Ok(out)
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// The patch turning the uploaded files into the downloaded ones. Only the files that differ
/// are staged in a throwaway repository (`scratch`, removed afterwards) and diffed by git, so
/// the patch has git's format: binary files, modes, new and deleted files included.
pub(super) fn copy_diff(
    source: &CopySource,
    dest: &Path,
    refused: &[PathBuf],
    scratch: &Path,
) -> Result<Vec<u8>, WorkspaceError> {
    let before: BTreeMap<&Path, Leaf> = source
        .entries
        .iter()
        .filter_map(|(rel, kind)| match kind {
            EntryKind::File { mode, .. } => Some((
                rel.as_path(),
                Leaf::File {
                    exec: mode & 0o100 != 0,
                },
            )),
            EntryKind::Symlink { target } => Some((rel.as_path(), Leaf::Symlink(target.clone()))),
            EntryKind::Dir { .. } => None,
        })
        .collect();
    let after = leaves_of_download(dest).map_err(|e| WorkspaceError::io(dest, e))?;
    let mut changed: Vec<PathBuf> = Vec::new();
    for (rel, old) in &before {
        if refused.iter().any(|r| rel.starts_with(r)) {
            continue; // unknown: the download refused it
        }
        match after.get(*rel) {
            None => changed.push(rel.to_path_buf()),
            Some(new) if new != old => changed.push(rel.to_path_buf()),
            Some(Leaf::File { .. }) => {
                let same = same_content(&source.root.join(rel), &dest.join(rel))
                    .map_err(|e| WorkspaceError::io(rel, e))?;
                if !same {
                    changed.push(rel.to_path_buf());
                }
            }
            Some(Leaf::Symlink(_)) => {}
        }
    }
    for rel in after.keys() {
        if !before.contains_key(rel.as_path()) {
            changed.push(rel.clone());
        }
    }
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).map_err(|e| WorkspaceError::io(scratch, e))?;
    let result = (|| {
        run_git(scratch, &["init", "--quiet"], None)?;
        // Attributes from the empty tree: a `.gitattributes` the sandbox wrote cannot choose a
        // filter or diff driver of the user's configuration to run on its files.
        let empty_tree = text(run_git(
            scratch,
            &["hash-object", "-t", "tree", "--stdin"],
            Some(b""),
        )?);
        let git = |args: &[&str]| {
            let mut command = hardened_git(scratch);
            command.env("GIT_ATTR_SOURCE", &empty_tree);
            run_command(command, args, None)
        };
        for rel in &changed {
            if before.contains_key(rel.as_path()) {
                place(&source.root.join(rel), &scratch.join(rel))?;
            }
        }
        git(&["add", "--all", "--force"])?;
        let tree = git(&["write-tree"])?;
        let tree = String::from_utf8_lossy(&tree).trim().to_string();
        for rel in &changed {
            let target = scratch.join(rel);
            if let Ok(meta) = std::fs::symlink_metadata(&target) {
                if meta.is_dir() {
                    std::fs::remove_dir_all(&target)
                } else {
                    std::fs::remove_file(&target)
                }
                .map_err(|e| WorkspaceError::io(&target, e))?;
            }
            if after.contains_key(rel) {
                place(&dest.join(rel), &target)?;
            }
        }
        git(&["add", "--all", "--force"])?;
        git(&[
            "diff",
            "--cached",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            &tree,
        ])
        .map_err(WorkspaceError::from)
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// Copies a regular file (mode kept) or a symlink from `from` to `to`, creating parents.
pub(super) fn place(from: &Path, to: &Path) -> Result<(), WorkspaceError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| WorkspaceError::io(parent, e))?;
    }
    let meta = std::fs::symlink_metadata(from).map_err(|e| WorkspaceError::io(from, e))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| WorkspaceError::io(from, e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| WorkspaceError::io(to, e))
    } else {
        std::fs::copy(from, to).map_err(|e| WorkspaceError::io(to, e))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o777))
            .map_err(|e| WorkspaceError::io(to, e))
    }
}
