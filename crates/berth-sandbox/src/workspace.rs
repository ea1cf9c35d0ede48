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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use berth_archive::Limits;
use berth_core::event::Event;
use berth_core::plan::WORKSPACE_TARGET;
use berth_core::record::{Transfer, WorkspaceResult};
use berth_core::spec::WorkspaceMode;
use berth_core::units::format_bytes;
use berth_engine::Engine;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::output::Reporter;
use crate::run::RunContext;
use crate::SandboxError;

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

// ---------------------------------------------------------------------------------------------
// Copy mode: before the run.

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
    fn write_tar<W: Write>(&self, out: W, progress: &mut dyn FnMut(u64)) -> std::io::Result<()> {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        // Into the container's layer from `/`: the top entry sets /workspace's owner and mode
        // (the engine would leave the directory it extracts into as it is).
        let mut header = self.header(tar::EntryType::Directory, self.root_mode, 0);
        tar.append_data(&mut header, "workspace/", std::io::empty())?;
        let prefix = PathBuf::from("workspace");
        let mut done = 0u64;
        for (rel, kind) in &self.entries {
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
                    let path = self.root.join(rel);
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
                        done: &mut done,
                        progress: &mut *progress,
                    };
                    tar.append_data(&mut header, &name, &mut counted)?;
                }
            }
        }
        tar.into_inner()?.flush()
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

/// Sends what the tar writer produces to the upload, in 256 KiB chunks.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

// ---------------------------------------------------------------------------------------------
// The two hooks of a container's life.

/// After create, before start: copy mode uploads the workspace. Returns the reason to end the
/// run in `error` when it fails.
pub async fn before_start<E: Engine>(
    engine: &E,
    container_id: &str,
    ctx: &mut RunContext,
    setup: &WorkspaceSetup,
) -> Result<(), String> {
    let WorkspaceSetup::Copy(source) = setup else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let total = source.total_bytes;
    let reporter: Arc<dyn Reporter> = ctx.reporter.clone();
    const WHAT: &str = "uploading the workspace";
    reporter.transfer_progress(WHAT, 0, total);
    let writer = {
        let tx = tx.clone();
        let reporter = reporter.clone();
        let source = CopySourceView::of(source);
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let mut last = 0u64;
            let mut progress = |done: u64| {
                if done - last >= 1 << 20 || done == total {
                    last = done;
                    reporter.transfer_progress(WHAT, done, total);
                }
            };
            let result = source.0.write_tar(&mut out, &mut progress);
            if let Err(e) = &result {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            result
        })
    };
    drop(tx);
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    let uploaded = engine.upload(container_id, "/", body).await;
    let written = writer.await;
    reporter.transfer_progress(WHAT, total, total);
    match (written, uploaded) {
        (Ok(Err(e)), _) => Err(format!("uploading the workspace failed: {e}")),
        (Err(e), _) => Err(format!("uploading the workspace failed: {e}")),
        (Ok(Ok(())), Err(e)) => Err(format!("uploading the workspace failed: {e}")),
        (Ok(Ok(())), Ok(())) => {
            ctx.record.workspace = Some(WorkspaceResult {
                mode: WorkspaceMode::Copy,
                repo: source.repo.as_ref().map(|r| r.top.display().to_string()),
                base_commit: source.repo.as_ref().and_then(|r| r.head.clone()),
                diff: None,
                tree: None,
                worktree: None,
                branch: None,
                upload: Some(Transfer {
                    bytes: total,
                    millis: started.elapsed().as_millis() as u64,
                }),
                download: None,
            });
            ctx.save();
            Ok(())
        }
    }
}

/// A `CopySource` the blocking task can own: the scan is cloned, not re-done.
struct CopySourceView(Box<CopySource>);

impl CopySourceView {
    fn of(source: &CopySource) -> Self {
        Self(Box::new(CopySource {
            root: source.root.clone(),
            root_mode: source.root_mode,
            entries: source.entries.clone(),
            total_bytes: source.total_bytes,
            uid: source.uid,
            gid: source.gid,
            repo: source.repo.clone(),
            limit: source.limit,
        }))
    }
}

/// After the command exits, before the container is removed: copy mode downloads the changed
/// tree into `<run dir>/workspace/` and writes `diff.patch`. Failures are warnings: the run's
/// own outcome stands.
pub async fn after_exit<E: Engine>(
    engine: &E,
    container_id: &str,
    ctx: &mut RunContext,
    setup: &WorkspaceSetup,
) {
    let WorkspaceSetup::Copy(source) = setup else {
        return;
    };
    // A worktree uploaded to a remote engine lives in `workspace/` already.
    let dest = if ctx.record.spec.workspace_mode == WorkspaceMode::Worktree {
        ctx.run_dir.path().join("remote-workspace")
    } else {
        ctx.run_dir.workspace_dir()
    };
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dest) {
        ctx.emit(Event::Warning {
            message: format!("collecting the workspace failed: {}: {e}", dest.display()),
        });
        return;
    }
    let started = std::time::Instant::now();
    let limits = Limits {
        max_total_bytes: Limits::default()
            .max_total_bytes
            .max(source.limit.saturating_mul(2)),
        ..Limits::default()
    };
    let extracted = match crate::artifacts::download_tree(
        engine,
        container_id,
        WORKSPACE_TARGET,
        dest.clone(),
        1,
        limits,
    )
    .await
    {
        Ok(extracted) => extracted,
        Err(e) => {
            ctx.emit(Event::Warning {
                message: format!("collecting the workspace failed: {e}"),
            });
            return;
        }
    };
    let skipped: Vec<String> = extracted
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.path, s.reason))
        .collect();
    for s in &skipped {
        ctx.emit(Event::Warning {
            message: format!("workspace entry refused: {s}"),
        });
    }
    let result = ctx.record.workspace.get_or_insert(WorkspaceResult {
        mode: WorkspaceMode::Copy,
        repo: None,
        base_commit: None,
        diff: None,
        tree: None,
        worktree: None,
        branch: None,
        upload: None,
        download: None,
    });
    result.tree = Some(
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    result.download = Some(Transfer {
        bytes: extracted.bytes,
        millis: started.elapsed().as_millis() as u64,
    });
    let refused: Vec<PathBuf> = extracted
        .skipped
        .iter()
        .filter_map(|s| {
            Path::new(&s.path)
                .strip_prefix("workspace")
                .ok()
                .map(Path::to_path_buf)
        })
        .collect();
    match copy_diff(source, &dest, &refused, &ctx.run_dir.path().join(".diff")) {
        Ok(patch) => match std::fs::write(ctx.run_dir.diff_path(), patch) {
            Ok(()) => {
                if let Some(result) = ctx.record.workspace.as_mut() {
                    result.diff = Some("diff.patch".into());
                }
            }
            Err(e) => ctx.emit(Event::Warning {
                message: format!("writing diff.patch failed: {e}"),
            }),
        },
        Err(e) => ctx.emit(Event::Warning {
            message: format!("computing the workspace's diff failed: {e}"),
        }),
    }
    ctx.save();
}

// ---------------------------------------------------------------------------------------------
// Copy mode: the diff between the uploaded and the downloaded tree.

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
fn copy_diff(
    source: &CopySource,
    dest: &Path,
    refused: &[PathBuf],
    scratch: &Path,
) -> Result<Vec<u8>, String> {
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
    let after = leaves_of_download(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
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
                    .map_err(|e| format!("{}: {e}", rel.display()))?;
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
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let result = (|| {
        run_git(scratch, &["init", "--quiet"], None)?;
        for rel in &changed {
            if before.contains_key(rel.as_path()) {
                place(&source.root.join(rel), &scratch.join(rel))?;
            }
        }
        run_git(scratch, &["add", "--all", "--force"], None)?;
        let tree = run_git(scratch, &["write-tree"], None)?;
        let tree = String::from_utf8_lossy(&tree).trim().to_string();
        for rel in &changed {
            let target = scratch.join(rel);
            if let Ok(meta) = std::fs::symlink_metadata(&target) {
                if meta.is_dir() {
                    std::fs::remove_dir_all(&target)
                } else {
                    std::fs::remove_file(&target)
                }
                .map_err(|e| format!("{}: {e}", target.display()))?;
            }
            if after.contains_key(rel) {
                place(&dest.join(rel), &target)?;
            }
        }
        run_git(scratch, &["add", "--all", "--force"], None)?;
        run_git(
            scratch,
            &[
                "diff",
                "--cached",
                "--binary",
                "--no-color",
                "--no-ext-diff",
                &tree,
            ],
            None,
        )
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// Copies a regular file (mode kept) or a symlink from `from` to `to`, creating parents.
fn place(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let meta = std::fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| format!("{}: {e}", from.display()))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| format!("{}: {e}", to.display()))
    } else {
        std::fs::copy(from, to).map_err(|e| format!("{}: {e}", to.display()))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o777))
            .map_err(|e| format!("{}: {e}", to.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// git on the host.

/// Runs `git ARGS` in `dir` with berth's fixed settings (no hooks, no signing, an identity)
/// and returns its stdout; an error quotes git's stderr.
fn run_git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, String> {
    git_command(dir, &[], args, stdin)
}

fn git_command(
    dir: &Path,
    before: &[String],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgSign=false",
            "-c",
            "user.name=berth",
            "-c",
            "user.email=berth@localhost",
            "-c",
            "safe.directory=*",
        ])
        .args(before)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            "git is not installed (it is needed for copy and worktree modes)".to_string()
        }
        _ => format!("running git failed: {e}"),
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .map_err(|e| format!("writing to git failed: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("running git failed: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .to_string()
}

/// The git checkout `dir` lies in, if any.
fn repo_info(dir: &Path) -> Option<RepoInfo> {
    let top = text(run_git(dir, &["rev-parse", "--show-toplevel"], None).ok()?);
    let prefix = text(run_git(dir, &["rev-parse", "--show-prefix"], None).ok()?);
    let head = run_git(
        dir,
        &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        None,
    )
    .ok()
    .map(text);
    Some(RepoInfo {
        top: PathBuf::from(top),
        prefix,
        head,
    })
}

// ---------------------------------------------------------------------------------------------
// Worktree mode.

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
    let not_a_repo = || SandboxError::WithHint {
        message: format!(
            "worktree mode needs a git repository, and {} is not in one",
            workspace.display()
        ),
        hint: "run berth inside a git checkout, or use --workspace-mode copy".into(),
    };
    let info = repo_info(workspace).ok_or_else(not_a_repo)?;
    let head = info.head.clone().ok_or_else(|| SandboxError::WithHint {
        message: format!(
            "worktree mode starts from HEAD, and the repository {} has no commit yet",
            info.top.display()
        ),
        hint: "commit something first (`git commit`), or use --workspace-mode copy".into(),
    })?;
    let git_error = |e: String| SandboxError::Invalid(format!("creating the worktree failed: {e}"));
    let branch = format!("berth/{run_id}");
    let path_text = path.display().to_string();
    run_git(
        &info.top,
        &[
            "worktree", "add", "--quiet", "-b", &branch, &path_text, &head,
        ],
        None,
    )
    .map_err(git_error)?;
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
            worktree.git(&["add", "--all"])?;
            worktree.git(&["commit", "--quiet", "--no-verify", "-m", &message])?;
            worktree.base = text(worktree.git(&["rev-parse", "HEAD"])?);
        }
        if let Some((uid, gid)) = owner {
            chown_tree(path, uid, gid)?;
        }
        Ok::<(), String>(())
    })();
    if let Err(e) = prepared {
        worktree.remove();
        return Err(git_error(e));
    }
    Ok(worktree)
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
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(scan.root_mode & 0o777),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        for (rel, kind) in &scan.entries {
            let to = path.join(rel);
            match kind {
                EntryKind::Dir { mode } => {
                    std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode & 0o777))
                        .map_err(|e| format!("{}: {e}", to.display()))?;
                }
                EntryKind::File { .. } | EntryKind::Symlink { .. } => {
                    place(&source.join(rel), &to)?;
                }
            }
        }
        let git_text = git_dir.display().to_string();
        run_git(path, &["init", "--quiet", "--bare", &git_text], None)?;
        snapshot.git(&["add", "--all"])?;
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
        Ok::<(), String>(())
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
fn carry_dirty(top: &Path, worktree: &Worktree) -> Result<bool, String> {
    let patch = run_git(
        top,
        &["diff", "--binary", "--no-color", "--no-ext-diff", "HEAD"],
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

fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            for item in std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))? {
                pending.push(item.map_err(|e| format!("{}: {e}", path.display()))?.path());
            }
        }
    }
    Ok(())
}

impl Worktree {
    /// git in the worktree with its git directory named explicitly: whatever the sandbox put
    /// in the tree (a `.git` of its own) is never read as configuration.
    fn git(&self, args: &[&str]) -> Result<Vec<u8>, String> {
        git_command(&self.path, &self.explicit(), args, None)
    }

    fn git_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>, String> {
        git_command(&self.path, &self.explicit(), args, Some(stdin))
    }

    fn explicit(&self) -> Vec<String> {
        vec![
            format!("--git-dir={}", self.git_dir.display()),
            format!("--work-tree={}", self.path.display()),
        ]
    }

    /// Everything the run changed relative to its base, commits included, as a binary-safe
    /// patch. Files the repository ignores are not part of it.
    pub fn diff(&self) -> Result<Vec<u8>, String> {
        self.git(&["add", "--all"])?;
        self.git(&[
            "diff",
            "--cached",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            &self.base,
        ])
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
            problems.push(e);
        }
        if let Err(e) = run_git(&self.repo, &["branch", "--quiet", "-D", &self.branch], None) {
            problems.push(e);
        }
        problems
    }
}

/// What an isolated workspace needs before the run: copy mode's scanned tree (the upload), or
/// worktree mode's worktree (mounted instead of the workspace; concluded after the run).
#[derive(Debug, Default)]
pub struct Prepared {
    /// Copy mode's upload; `Mounted` otherwise.
    pub upload: WorkspaceSetup,
    /// Worktree mode's worktree, for [`conclude`]; `Mounted` otherwise.
    pub worktree: WorkspaceSetup,
    /// What to mount at `/workspace` instead of the workspace (worktree mode).
    pub mount: Option<std::path::PathBuf>,
}

/// Makes the isolated workspace of a run in copy or worktree mode, now that it can go ahead.
/// `state_root` is left out of a copy; `sandbox_owner` and `berth_uid` decide who owns a
/// worktree (the sandbox user, when berth runs as root).
pub fn prepare(
    ctx: &RunContext,
    workspace: &Path,
    state_root: &Path,
    sandbox_owner: (u32, u32),
    berth_uid: u32,
    remote_engine: bool,
) -> Result<Prepared, SandboxError> {
    let spec = &ctx.record.spec;
    let mut prepared = Prepared::default();
    match spec.workspace_mode {
        WorkspaceMode::Copy => {
            let exclude = std::fs::canonicalize(state_root).ok();
            prepared.upload = WorkspaceSetup::Copy(scan_copy(
                workspace,
                exclude.as_deref(),
                spec.copy_limit_bytes,
                sandbox_owner,
                true,
            )?);
        }
        WorkspaceMode::Worktree => {
            let owner = tree_owner(sandbox_owner, berth_uid);
            let tree = create_worktree(
                workspace,
                &ctx.run_dir.workspace_dir(),
                &ctx.record.id,
                spec.include_dirty,
                owner,
            )?;
            if remote_engine {
                // The engine cannot mount the worktree: it is uploaded like a copy, and the diff
                // comes from the downloaded tree (`after_exit`).
                prepared.upload = WorkspaceSetup::Copy(scan_copy(
                    &tree.mount,
                    None,
                    spec.copy_limit_bytes,
                    sandbox_owner,
                    false,
                )?);
            } else {
                prepared.mount = Some(tree.mount.clone());
            }
            prepared.worktree = WorkspaceSetup::Worktree(tree);
        }
        _ => {}
    }
    Ok(prepared)
}

/// After the run: worktree mode writes `diff.patch` and removes the worktree and its branch
/// (unless `--keep`). Needs no container (the worktree was bind-mounted), so it runs after
/// `execute_docker` and after runs that never started.
pub fn conclude(ctx: &mut RunContext, setup: &WorkspaceSetup) {
    let WorkspaceSetup::Worktree(worktree) = setup else {
        return;
    };
    // On a remote engine the worktree was uploaded and its diff taken from the download.
    let uploaded = ctx.record.workspace.take().filter(|w| w.download.is_some());
    let mut result = WorkspaceResult {
        mode: WorkspaceMode::Worktree,
        repo: Some(worktree.repo.display().to_string()),
        base_commit: Some(worktree.base.clone()),
        diff: uploaded.as_ref().and_then(|w| w.diff.clone()),
        tree: uploaded.as_ref().and_then(|w| w.tree.clone()),
        worktree: None,
        branch: None,
        upload: uploaded.as_ref().and_then(|w| w.upload),
        download: uploaded.as_ref().and_then(|w| w.download),
    };
    if ctx.record.started_at.is_some() && uploaded.is_none() {
        match worktree.diff() {
            Ok(patch) => match std::fs::write(ctx.run_dir.diff_path(), patch) {
                Ok(()) => result.diff = Some("diff.patch".into()),
                Err(e) => ctx.emit(Event::Warning {
                    message: format!("writing diff.patch failed: {e}"),
                }),
            },
            Err(e) => ctx.emit(Event::Warning {
                message: format!("computing the worktree's diff failed: {e}"),
            }),
        }
    }
    if ctx.record.kept {
        result.worktree = Some(worktree.path.display().to_string());
        result.branch = Some(worktree.branch.clone());
    } else {
        for problem in worktree.remove() {
            ctx.emit(Event::Warning {
                message: format!("removing the worktree failed: {problem}"),
            });
        }
    }
    ctx.record.workspace = Some(result);
    ctx.save();
}

// ---------------------------------------------------------------------------------------------
// After the run: `berth apply` and `berth branch`.

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
        let files = conflicting_files(&e);
        return Err(SandboxError::WithHint {
            message: format!(
                "the changes of run {} do not apply cleanly to {}: {}",
                record.id,
                dir.display(),
                if files.is_empty() {
                    e
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
    run_git(&dir, &apply, None).map_err(SandboxError::Invalid)?;
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
    let failed = |e: String| SandboxError::Invalid(format!("making the branch {name} failed: {e}"));
    // A private index: the checkout's own index and files stay as they are.
    let index =
        std::env::temp_dir().join(format!("berth-index-{}-{}", record.id, std::process::id()));
    let result = (|| {
        let with_index = |args: &[&str]| {
            let mut command = Command::new("git");
            command
                .current_dir(&repo)
                .env("GIT_INDEX_FILE", &index)
                .args([
                    "-c",
                    "core.hooksPath=/dev/null",
                    "-c",
                    "user.name=berth",
                    "-c",
                    "user.email=berth@localhost",
                ])
                .args(args)
                .stdin(Stdio::null());
            let out = command
                .output()
                .map_err(|e| format!("running git failed: {e}"))?;
            if out.status.success() {
                Ok(text(out.stdout))
            } else {
                Err(format!(
                    "`git {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        with_index(&["read-tree", &base])?;
        let prefix = patch_target(record).1;
        let directory = format!("--directory={prefix}");
        let patch_text = patch.display().to_string();
        let mut apply = vec!["apply", "--cached", "--binary"];
        if !prefix.is_empty() {
            apply.push(&directory);
        }
        apply.push(&patch_text);
        with_index(&apply)?;
        let tree = with_index(&["write-tree"])?;
        let message = format!("berth run {}\n\n{:?}", record.id, record.spec.command);
        let commit = with_index(&["commit-tree", &tree, "-p", &base, "-m", &message])?;
        with_index(&["branch", &name, &commit])?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&index);
    result.map_err(failed)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
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
