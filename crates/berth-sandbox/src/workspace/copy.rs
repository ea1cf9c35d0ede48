//! Copy mode before the run: the workspace's scan (ignore files, the size cap) and the tar
//! stream of what to upload, every entry owned by the sandbox user.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use berth_core::units::format_bytes;

use super::git::repo_info;
use super::{CopySource, EntryKind, GitUpload, WorkspaceError};
use crate::SandboxError;

/// Walks `root` for copy mode and checks its size against `limit`. `exclude` (berth's state
/// directory) is left out, as are `.git` and whatever `.gitignore`/`.berthignore` ignore.
/// `parent_ignores`: whether ignore files of `root`'s parent directories count (they do for a
/// workspace inside a repository; not for berth's own worktree, which lives in the state
/// directory, whose `.gitignore` ignores everything).
pub fn scan_copy(
    root: &Path,
    exclude: Option<&Path>,
    limit: u64,
    owner: (u32, u32),
    parent_ignores: bool,
) -> Result<CopySource, SandboxError> {
    let root_meta = std::fs::metadata(root).map_err(|e| SandboxError::io(root, e))?;
    let exclude = exclude.map(Path::to_path_buf);
    let mut walk = ignore::WalkBuilder::new(root);
    walk.hidden(false)
        .parents(parent_ignores)
        .git_ignore(true)
        .git_exclude(true)
        .require_git(false)
        .ignore(false)
        .follow_links(false)
        .add_custom_ignore_filename(".berthignore")
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |e| {
            e.file_name() != ".git" && exclude.as_deref().is_none_or(|x| e.path() != x)
        });
    let mut entries = Vec::new();
    let mut total_bytes = 0u64;
    for item in walk.build() {
        let entry = item.map_err(|e| {
            SandboxError::Invalid(format!("reading the workspace for copy mode failed: {e}"))
        })?;
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path())
            .map_err(|e| SandboxError::io(entry.path(), e))?;
        let kind = if meta.is_dir() {
            EntryKind::Dir {
                mode: meta.mode() & 0o7777,
            }
        } else if meta.is_file() {
            total_bytes += meta.len();
            if total_bytes > limit {
                return Err(too_large(root, limit));
            }
            EntryKind::File {
                mode: meta.mode() & 0o7777,
                size: meta.len(),
            }
        } else if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(entry.path()).map_err(|e| SandboxError::io(entry.path(), e))?;
            EntryKind::Symlink { target }
        } else {
            continue; // sockets, FIFOs and devices do not travel
        };
        entries.push((rel.to_path_buf(), kind));
    }
    Ok(CopySource {
        root: root.to_path_buf(),
        root_mode: root_meta.mode() & 0o7777,
        entries,
        total_bytes,
        uid: owner.0,
        gid: owner.1,
        repo: repo_info(root),
        limit,
        git: None,
    })
}

fn too_large(root: &Path, limit: u64) -> SandboxError {
    SandboxError::WithHint {
        message: format!(
            "the workspace {} holds more than the copy limit of {} (--copy-limit) to upload",
            root.display(),
            format_bytes(limit)
        ),
        hint: "raise it with --copy-limit SIZE (or `copy_limit = \"4g\"` in berth.toml), or leave \
               large files out with a .berthignore"
            .into(),
    }
}

impl CopySource {
    /// Bytes of file content to upload.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Writes the upload as a tar stream into `out`, every entry owned by the sandbox user.
    /// Files are re-checked while read: one that changed size since the scan stops the upload.
    pub(super) fn write_tar<W: Write>(
        &self,
        out: W,
        progress: &mut dyn FnMut(u64),
    ) -> std::io::Result<()> {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        // Into the container's layer from `/`: the top entry sets /workspace's owner and mode
        // (the engine would leave the directory it extracts into as it is).
        let mut header = self.header(tar::EntryType::Directory, self.root_mode, 0);
        tar.append_data(&mut header, "workspace/", std::io::empty())?;
        let mut done = 0u64;
        let workspace = PathBuf::from("workspace");
        self.append_entries(
            &mut tar,
            &self.root,
            &workspace,
            &self.entries,
            &mut done,
            progress,
        )?;
        if let Some(git) = &self.git {
            let prefix = workspace.join(".git");
            let mut header = self.header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut header, &prefix, std::io::empty())?;
            self.append_entries(
                &mut tar,
                &git.dir,
                &prefix,
                &git.entries,
                &mut done,
                progress,
            )?;
        }
        tar.into_inner()?.flush()
    }

    /// Appends `entries` (relative to `root` on the host) under `prefix`, counting file bytes.
    fn append_entries<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        root: &Path,
        prefix: &Path,
        entries: &[(PathBuf, EntryKind)],
        done: &mut u64,
        progress: &mut dyn FnMut(u64),
    ) -> std::io::Result<()> {
        for (rel, kind) in entries {
            let name = prefix.join(rel);
            match kind {
                EntryKind::Dir { mode } => {
                    let mut header = self.header(tar::EntryType::Directory, *mode, 0);
                    tar.append_data(&mut header, &name, std::io::empty())?;
                }
                EntryKind::Symlink { target } => {
                    let mut header = self.header(tar::EntryType::Symlink, 0o777, 0);
                    tar.append_link(&mut header, &name, target)?;
                }
                EntryKind::File { mode, size } => {
                    let path = root.join(rel);
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(&path)
                        .map_err(|e| with_path(&path, e))?;
                    let meta = file.metadata().map_err(|e| with_path(&path, e))?;
                    if !meta.is_file() || meta.len() != *size {
                        return Err(std::io::Error::other(format!(
                            "{} changed while being uploaded",
                            path.display()
                        )));
                    }
                    let mut header = self.header(tar::EntryType::Regular, *mode, *size);
                    header.set_mtime(meta.mtime().max(0) as u64);
                    let mut counted = Counted {
                        inner: file.take(*size),
                        done: &mut *done,
                        progress: &mut *progress,
                    };
                    tar.append_data(&mut header, &name, &mut counted)?;
                }
            }
        }
        Ok(())
    }

    /// Adds the private repository berth made at `dir` to the upload, as `workspace/.git`.
    pub(super) fn attach_repository(&mut self, dir: &Path) -> Result<(), WorkspaceError> {
        let mut entries = Vec::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let here = dir.join(&rel);
            let mut names: Vec<_> = std::fs::read_dir(&here)
                .map_err(|e| WorkspaceError::io(&here, e))?
                .map(|item| item.map(|i| i.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| WorkspaceError::io(&here, e))?;
            names.sort();
            for name in names {
                let rel = rel.join(name);
                let path = dir.join(&rel);
                let meta =
                    std::fs::symlink_metadata(&path).map_err(|e| WorkspaceError::io(&path, e))?;
                if meta.is_dir() {
                    entries.push((rel.clone(), EntryKind::Dir { mode: 0o755 }));
                    pending.push(rel);
                } else if meta.is_file() {
                    self.total_bytes += meta.len();
                    entries.push((
                        rel,
                        EntryKind::File {
                            mode: 0o644,
                            size: meta.len(),
                        },
                    ));
                }
            }
        }
        self.git = Some(GitUpload {
            dir: dir.to_path_buf(),
            entries,
        });
        Ok(())
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(u64::from(self.uid));
        header.set_gid(u64::from(self.gid));
        header.set_mtime(0);
        header
    }
}

fn with_path(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A reader that reports how many bytes went through it.
struct Counted<'a, R> {
    inner: R,
    done: &'a mut u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        (self.progress)(*self.done);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn names(source: &CopySource) -> Vec<String> {
        source
            .entries
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect()
    }

    #[test]
    fn the_scan_honours_ignore_files_and_leaves_out_git_and_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, ".gitignore", "*.log\nbuild/\n");
        write(root, ".berthignore", "secret.txt\n");
        write(root, "src/main.rs", "fn main() {}\n");
        write(root, "app.log", "noise");
        write(root, "build/out.o", "obj");
        write(root, "secret.txt", "s3cret");
        write(root, ".git/config", "[core]\n");
        write(root, ".berth/runs/x/run.json", "{}");
        let state = root.join(".berth");

        let source = scan_copy(root, Some(&state), 1 << 20, (1000, 1000), true).unwrap();

        assert_eq!(
            names(&source),
            [".berthignore", ".gitignore", "src", "src/main.rs"]
        );
        assert_eq!(source.total_bytes(), 13 + 11 + 13);
    }

    #[test]
    fn the_scan_refuses_a_workspace_over_the_limit_naming_it_and_the_option() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "big", &"x".repeat(2048));
        let err = scan_copy(dir.path(), None, 1024, (1, 1), true).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("1.0 KiB") || message.contains("1 KiB") || message.contains("1024"),
            "{message}"
        );
        assert!(message.contains("--copy-limit"), "{message}");
        assert!(err.hint().unwrap().contains(".berthignore"));
    }

    #[test]
    fn the_upload_tar_is_owned_by_the_sandbox_user_and_keeps_modes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(
            dir.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("run.sh", dir.path().join("link")).unwrap();
        let source = scan_copy(dir.path(), None, 1 << 20, (1234, 5678), true).unwrap();
        let mut tar_bytes = Vec::new();
        source.write_tar(&mut tar_bytes, &mut |_| {}).unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (1234, 5678));
            seen.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap() & 0o777,
            ));
        }
        assert!(
            seen.contains(&("workspace/run.sh".into(), 0o755)),
            "{seen:?}"
        );
        assert!(seen.iter().any(|(p, _)| p == "workspace/link"), "{seen:?}");
        assert_eq!(seen[0], ("workspace/".into(), 0o755), "{seen:?}");
    }
}
