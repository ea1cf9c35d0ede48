//! What a run calls around its container: `prepare` (before the container exists),
//! `before_start` and `after_exit` (copy mode's upload and download), and `conclude` (worktree
//! mode's diff and removal, after the run whatever happened).

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_archive::Limits;
use berth_core::event::Event;
use berth_core::plan::WORKSPACE_TARGET;
use berth_core::record::{Transfer, WorkspaceResult};
use berth_core::spec::WorkspaceMode;
use berth_engine::Engine;
use bytes::Bytes;
use futures_util::StreamExt;

use super::copy::scan_copy;
use super::diff::copy_diff;
use super::worktree::{create_worktree_from, tree_owner};
use super::{CopySource, WorkspaceError, WorkspaceSetup};
use crate::output::Reporter;
use crate::run::RunContext;
use crate::SandboxError;

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
) -> Result<(), WorkspaceError> {
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
    // The private repository lives on in the container; berth's copy is not needed again.
    if let Some(git) = &source.git {
        let _ = std::fs::remove_dir_all(&git.dir);
    }
    match (written, uploaded) {
        (Ok(Err(e)), _) => Err(WorkspaceError::Upload(e.to_string())),
        (Err(e), _) => Err(WorkspaceError::Upload(e.to_string())),
        (Ok(Ok(())), Err(e)) => Err(WorkspaceError::Upload(e.to_string())),
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
            git: source.git.clone(),
        }))
    }
}

/// Copy mode's result before anything is known of it.
fn copy_result() -> WorkspaceResult {
    WorkspaceResult {
        mode: WorkspaceMode::Copy,
        repo: None,
        base_commit: None,
        diff: None,
        tree: None,
        worktree: None,
        branch: None,
        upload: None,
        download: None,
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
    // The sandbox's `.git` (its private repository, or anything it put in its place) stays out
    // of the collected tree: no git run there later, by berth or by the user, obeys it.
    if let Err(e) = berth_archive::beneath::DirHandle::open(&dest)
        .and_then(|root| crate::sandbox_repo::scrub_git_entries(&root))
    {
        ctx.emit(Event::Warning {
            message: format!("removing .git from the collected workspace failed: {e}"),
        });
        return;
    }
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
    let result = ctx.record.workspace.get_or_insert_with(copy_result);
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
    /// The user's object directory, to mount read-only at `GIT_OBJECTS_TARGET` for the
    /// sandbox's private repository.
    pub git_objects: Option<std::path::PathBuf>,
    /// Why the sandbox got no private repository, when it should have had one.
    pub warnings: Vec<String>,
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
    if spec.workspace_mode.is_isolated() {
        super::git::check_attr_source_support()?;
    }
    let mut prepared = Prepared::default();
    let branch = format!("berth/{}", ctx.record.id);
    let no_repository =
        |e: WorkspaceError| format!("the sandbox gets no git repository (`git` there fails): {e}");
    match spec.workspace_mode {
        WorkspaceMode::Copy if spec.start_commit.is_some() => {
            // The tree of that commit, not the checkout's files: a worktree of it beside the
            // run (removed by `conclude`), uploaded like any copy. It never holds berth's state.
            let tree = create_worktree_from(
                workspace,
                &ctx.run_dir.path().join("source"),
                &ctx.record.id,
                false,
                None,
                spec.start_commit.as_deref(),
            )?;
            let scanned = scan_copy(
                &tree.mount,
                None,
                spec.copy_limit_bytes,
                sandbox_owner,
                false,
            );
            match scanned {
                Ok(scan) => prepared.upload = WorkspaceSetup::Copy(scan),
                Err(e) => {
                    tree.remove();
                    return Err(e);
                }
            }
            prepared.worktree = WorkspaceSetup::Worktree(tree);
        }
        WorkspaceMode::Copy => {
            let exclude = std::fs::canonicalize(state_root).ok();
            let mut source = scan_copy(
                workspace,
                exclude.as_deref(),
                spec.copy_limit_bytes,
                sandbox_owner,
                true,
            )?;
            // A remote engine cannot mount the user's objects: no repository there.
            let repo = source.repo.clone().filter(|_| !remote_engine);
            if let Some((repo, head)) = repo.and_then(|r| r.head.clone().map(|h| (r, h))) {
                if let Some(objects) = crate::sandbox_repo::objects_of(workspace) {
                    let dir = ctx.run_dir.path().join("sandbox-git");
                    let made =
                        crate::sandbox_repo::create(&dir, &objects, &head, &repo.prefix, &branch)
                            .and_then(|()| source.attach_repository(&dir));
                    match made {
                        Ok(()) => prepared.git_objects = Some(objects),
                        Err(e) => prepared.warnings.push(no_repository(e)),
                    }
                }
            }
            prepared.upload = WorkspaceSetup::Copy(source);
        }
        WorkspaceMode::Worktree => {
            let owner = tree_owner(sandbox_owner, berth_uid);
            let tree = create_worktree_from(
                workspace,
                &ctx.run_dir.workspace_dir(),
                &ctx.record.id,
                spec.include_dirty,
                owner,
                spec.start_commit.as_deref(),
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
                match tree.make_sandbox_repository(&branch, owner) {
                    Ok(objects) => prepared.git_objects = Some(objects),
                    Err(e) => prepared.warnings.push(no_repository(e)),
                }
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
    // Copy mode from a commit (`start_commit`): the worktree was only the upload's source; the
    // copy's own result (diff from the download) stands, with the commit it started from.
    if ctx.record.spec.workspace_mode == WorkspaceMode::Copy {
        let result = ctx.record.workspace.get_or_insert_with(copy_result);
        result.repo = Some(worktree.repo.display().to_string());
        result.base_commit = Some(worktree.base.clone());
        for problem in worktree.remove() {
            ctx.emit(Event::Warning {
                message: format!("removing the worktree failed: {problem}"),
            });
        }
        ctx.save();
        return;
    }
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
    let diffed = ctx.record.started_at.is_some() && uploaded.is_none();
    if !diffed {
        if let Err(e) = worktree.scrub() {
            ctx.emit(Event::Warning {
                message: format!("restoring the worktree's .git failed: {e}"),
            });
        }
    }
    if diffed {
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
