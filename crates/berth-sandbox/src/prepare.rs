//! Applying the mount policy with the file system: canonicalise, then let the core judge.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use berth_core::plan::{
    BindMount, IO_TARGET, OUT_TARGET, SECRETS_TARGET, SHIM_TARGET, WORKSPACE_TARGET,
};
use berth_core::policy::{self, PolicyContext, ResolvedSource};
use berth_core::spec::{RunSpec, WorkspaceMode};

use crate::SandboxError;

/// Asks the file system about `path` (relative paths against `cwd`).
pub fn resolve(path: &Path, cwd: &Path) -> ResolvedSource {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let canonical = std::fs::canonicalize(&absolute).ok();
    let is_socket = canonical
        .as_ref()
        .and_then(|c| std::fs::metadata(c).ok())
        .is_some_and(|m| m.file_type().is_socket());
    ResolvedSource {
        given: path.to_path_buf(),
        canonical,
        is_socket,
    }
}

/// The canonical paths of the engine sockets on this host: the one in use and the usual ones.
pub fn engine_sockets(in_use: Option<&Path>) -> Vec<PathBuf> {
    let mut sockets: Vec<PathBuf> = in_use
        .into_iter()
        .map(Path::to_path_buf)
        .chain(["/var/run/docker.sock", "/run/docker.sock"].map(PathBuf::from))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    sockets.sort();
    sockets.dedup();
    sockets
}

/// The checked mounts of a run.
#[derive(Debug, Clone)]
pub struct CheckedMounts {
    /// The canonical workspace (also when it is not mounted: it is the working directory of
    /// local runs and the root for relative paths).
    pub workspace: PathBuf,
    pub mounts: Vec<BindMount>,
}

/// Checks the workspace and every `--mount` of `spec` against the policy.
pub fn check_mounts(
    spec: &RunSpec,
    cwd: &Path,
    allowed_paths: &[PathBuf],
    home: Option<&Path>,
    sockets: Vec<PathBuf>,
) -> Result<CheckedMounts, SandboxError> {
    let home = home.and_then(|h| std::fs::canonicalize(h).ok());
    let mut ctx = PolicyContext {
        home,
        allowed_roots: Vec::new(),
        engine_sockets: sockets,
    };
    let workspace_source = resolve(&spec.workspace, cwd);
    let workspace = if spec.workspace_mode == WorkspaceMode::None {
        workspace_source.canonical.clone().ok_or_else(|| {
            SandboxError::Invalid(format!(
                "workspace `{}` does not exist",
                spec.workspace.display()
            ))
        })?
    } else {
        policy::check_workspace(&workspace_source, &ctx)?
    };
    ctx.allowed_roots.push(workspace.clone());
    ctx.allowed_roots.extend(
        allowed_paths
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok()),
    );

    let mut mounts = Vec::new();
    for request in &spec.mounts {
        let source = policy::check_source(&resolve(&request.source, cwd), &ctx)?;
        let target = policy::check_target(&request.target)?;
        mounts.push(BindMount {
            source,
            target,
            read_only: request.read_only,
        });
    }

    let descriptions: Vec<(String, String)> = spec
        .mounts
        .iter()
        .zip(&mounts)
        .map(|(r, m)| {
            (
                m.target.clone(),
                format!("--mount {}:{}", r.source.display(), r.target),
            )
        })
        .collect();
    let mut targets: Vec<(&str, &str)> = vec![
        (OUT_TARGET, "berth's output directory"),
        (SHIM_TARGET, "berth's entry shim"),
        (IO_TARGET, "berth's output pipes"),
        (SECRETS_TARGET, "berth's secrets directory"),
    ];
    if spec.workspace_mode != WorkspaceMode::None {
        targets.push((WORKSPACE_TARGET, "the workspace"));
    }
    targets.extend(descriptions.iter().map(|(t, d)| (t.as_str(), d.as_str())));
    policy::check_unique_targets(targets)?;
    Ok(CheckedMounts { workspace, mounts })
}

/// The state directory relative to the workspace, when it lies inside it.
pub fn state_dir_in_workspace(state_dir: &Path, workspace: &Path) -> Option<String> {
    let canonical = std::fs::canonicalize(state_dir).ok()?;
    let relative = canonical.strip_prefix(workspace).ok()?;
    let relative = relative.to_str()?;
    (!relative.is_empty()).then(|| relative.to_string())
}

/// Refuses a state directory that a sandbox of this run could write: one inside the rw
/// workspace or a writable `--mount`, or one that contains such a mount. The records, the
/// held containers' directories and the run directories' FIFOs live there; a sandbox that
/// could rename or plant entries in it could redirect berth's own writes.
pub fn check_state_dir(
    state_root: &Path,
    workspace_mode: WorkspaceMode,
    checked: &CheckedMounts,
) -> Result<(), SandboxError> {
    let state = canonical_prefix(state_root);
    let workspace = (workspace_mode == WorkspaceMode::Rw)
        .then(|| (checked.workspace.clone(), "the workspace".to_string()));
    let mounts = checked.mounts.iter().filter(|m| !m.read_only).map(|m| {
        (
            m.source.clone(),
            format!("the writable mount {}:{}", m.source.display(), m.target),
        )
    });
    for (source, what) in workspace.into_iter().chain(mounts) {
        if state.starts_with(&source) || source.starts_with(&state) {
            return Err(SandboxError::InvalidWithHint {
                message: format!(
                    "the state directory {} {} {what} ({}), which the sandbox can write; a sandbox could then tamper with berth's records",
                    state_root.display(),
                    if state.starts_with(&source) { "lies inside" } else { "contains" },
                    source.display()
                ),
                hint: "drop --state-dir, BERTH_STATE_DIR and the config's state_dir to keep runs in berth's data directory, or choose a directory outside every writable mount".into(),
            });
        }
    }
    Ok(())
}

/// `path` with its longest existing prefix canonicalised (the rest need not exist yet).
fn canonical_prefix(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(&current) {
            return missing.iter().rev().fold(canonical, |p, name| p.join(name));
        }
        match (current.file_name(), current.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name.to_os_string());
                current = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_inside_or_around_a_writable_mount_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ws = std::fs::canonicalize(dir.path()).unwrap().join("ws");
        let data = ws.parent().unwrap().join("data");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let checked = |mounts: Vec<BindMount>| CheckedMounts {
            workspace: ws.clone(),
            mounts,
        };
        let rw = |p: &Path| BindMount {
            source: p.to_path_buf(),
            target: "/m".into(),
            read_only: false,
        };
        let ro = |p: &Path| BindMount {
            read_only: true,
            ..rw(p)
        };
        // (state dir, mode, mounts, refused)
        let cases: Vec<(PathBuf, WorkspaceMode, Vec<BindMount>, bool)> = vec![
            (ws.join("a/b"), WorkspaceMode::Rw, vec![], true),
            (ws.join(".berth"), WorkspaceMode::Rw, vec![], true),
            (ws.join(".berth"), WorkspaceMode::Ro, vec![], false),
            (ws.join(".berth"), WorkspaceMode::Copy, vec![], false),
            (data.join("x"), WorkspaceMode::Rw, vec![], false),
            (data.join("x"), WorkspaceMode::Rw, vec![rw(&data)], true),
            (data.join("x"), WorkspaceMode::Rw, vec![ro(&data)], false),
            (
                data.clone(),
                WorkspaceMode::Rw,
                vec![rw(&data.join("x/y"))],
                true,
            ),
        ];
        for (state, mode, mounts, refused) in cases {
            let result = check_state_dir(&state, mode, &checked(mounts));
            assert_eq!(
                result.is_err(),
                refused,
                "{} in {mode:?}: {result:?}",
                state.display()
            );
            if let Err(e) = result {
                assert!(e.to_string().contains(&state.display().to_string()), "{e}");
            }
        }
    }
}
