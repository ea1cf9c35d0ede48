//! Applying the mount policy with the file system: canonicalise, then let the core judge.

use std::path::{Path, PathBuf};

use berth_core::plan::{
    BindMount, MountIdentity, GIT_OBJECTS_TARGET, IO_TARGET, OUT_TARGET, SECRETS_TARGET,
    SHIM_TARGET, WORKSPACE_TARGET,
};
use berth_core::policy::{self, PolicyContext, ResolvedSource};
use berth_core::spec::{RunSpec, WorkspaceMode};

use crate::SandboxError;

/// Asks the file system about `path` (relative paths against `cwd`).
pub fn resolve(path: &Path, cwd: &Path) -> ResolvedSource {
    resolve_with_identity(path, cwd).0
}

/// [`resolve`], and the device and inode of what the canonical path names. Both come from one
/// open descriptor, so the identity is that of the very file or directory the policy judges:
/// a path swapped for a link between the two cannot give a checked name and another's
/// identity.
pub fn resolve_with_identity(path: &Path, cwd: &Path) -> (ResolvedSource, Option<Identity>) {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let opened = rustix::fs::open(
        &absolute,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let Ok(fd) = opened else {
        let source = ResolvedSource {
            given: path.to_path_buf(),
            canonical: None,
            is_socket: false,
        };
        return (source, None);
    };
    use std::os::fd::AsRawFd;
    let canonical = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .filter(|p| p.is_absolute())
        .or_else(|| std::fs::canonicalize(&absolute).ok());
    let stat = rustix::fs::fstat(&fd).ok();
    let is_socket = stat.as_ref().is_some_and(|s| {
        rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Socket
    });
    let source = ResolvedSource {
        given: path.to_path_buf(),
        canonical,
        is_socket,
    };
    let identity = stat.as_ref().map(Identity::of);
    (source, identity)
}

/// What identifies a checked source: its device and inode, and its change time (which gVisor
/// shows the sandbox where it hides the other two; see `MountIdentity::shim_option`).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub ctime: (i64, u32),
}

impl Identity {
    /// The identity `stat` describes.
    pub fn of(stat: &rustix::fs::Stat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            // Nanoseconds are below 10^9 by definition.
            ctime: (
                stat.st_ctime,
                u32::try_from(stat.st_ctime_nsec).unwrap_or(0),
            ),
        }
    }

    pub fn at(self, target: String) -> MountIdentity {
        MountIdentity {
            target,
            dev: self.dev,
            ino: self.ino,
            ctime: self.ctime,
        }
    }
}

/// Where the rw workspace's git directory is mounted: read-only, over the writable workspace.
pub const WORKSPACE_GIT_TARGET: &str = "/workspace/.git";

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
    /// The identity of each checked source where it is mounted (the workspace at
    /// `/workspace` when it is bind-mounted, then every `--mount`).
    pub identities: Vec<MountIdentity>,
}

impl CheckedMounts {
    /// The identities to verify when the workspace mounted is `mounted_workspace` (worktree
    /// mode mounts the run's own worktree instead: berth made it, and its identity is not the
    /// checked one).
    pub fn identities_for(&self, mounted_workspace: &Path) -> Vec<MountIdentity> {
        self.identities
            .iter()
            .filter(|i| i.target != WORKSPACE_TARGET || mounted_workspace == self.workspace)
            .cloned()
            .collect()
    }
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
    let mut identities = Vec::new();
    let (workspace_source, workspace_identity) = resolve_with_identity(&spec.workspace, cwd);
    let workspace = if spec.workspace_mode == WorkspaceMode::None {
        workspace_source.canonical.clone().ok_or_else(|| {
            SandboxError::Invalid(format!(
                "workspace `{}` does not exist",
                spec.workspace.display()
            ))
        })?
    } else {
        let checked = policy::check_workspace(&workspace_source, &ctx)?;
        if matches!(spec.workspace_mode, WorkspaceMode::Rw | WorkspaceMode::Ro) {
            if let Some(identity) = workspace_identity {
                identities.push(identity.at(WORKSPACE_TARGET.to_string()));
            }
        }
        checked
    };
    ctx.allowed_roots.push(workspace.clone());
    ctx.allowed_roots.extend(
        allowed_paths
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok()),
    );

    let mut mounts = Vec::new();
    for request in &spec.mounts {
        let (resolved, identity) = resolve_with_identity(&request.source, cwd);
        let source = policy::check_source(&resolved, &ctx)?;
        let target = policy::check_target(&request.target)?;
        if let Some(identity) = identity {
            identities.push(identity.at(target.clone()));
        }
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
    if spec.workspace_mode.is_isolated() {
        targets.push((
            GIT_OBJECTS_TARGET,
            "the git objects of the sandbox's repository",
        ));
    }
    targets.extend(descriptions.iter().map(|(t, d)| (t.as_str(), d.as_str())));
    policy::check_unique_targets(targets)?;
    Ok(CheckedMounts {
        workspace,
        mounts,
        identities,
    })
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
    check_berth_paths(
        &[(state_root, "the state directory")],
        workspace_mode,
        checked,
    )
}

/// Refuses a run when any of berth's own places (`(path, what it is)`: the state directory,
/// the cache holding the shim, the configuration with the trust store) lies inside, or
/// contains, a mount the sandbox can write.
pub fn check_berth_paths(
    paths: &[(&Path, &str)],
    workspace_mode: WorkspaceMode,
    checked: &CheckedMounts,
) -> Result<(), SandboxError> {
    let workspace = (workspace_mode == WorkspaceMode::Rw)
        .then(|| (checked.workspace.clone(), "the workspace".to_string()));
    let mounts: Vec<(PathBuf, String)> = checked
        .mounts
        .iter()
        .filter(|m| !m.read_only)
        .map(|m| {
            (
                m.source.clone(),
                format!("the writable mount {}:{}", m.source.display(), m.target),
            )
        })
        .collect();
    for (path, what_path) in paths {
        let berth = canonical_prefix(path);
        for (source, what) in workspace.iter().chain(&mounts) {
            if berth.starts_with(source) || source.starts_with(&berth) {
                return Err(SandboxError::WithHint {
                    message: format!(
                        "{what_path} {} {} {what} ({}), which the sandbox can write; a sandbox could then tamper with berth's own files",
                        path.display(),
                        if berth.starts_with(source) { "lies inside" } else { "contains" },
                        source.display()
                    ),
                    hint: "keep berth's state, cache and configuration outside every writable mount: drop --state-dir, BERTH_STATE_DIR and the config's state_dir to use berth's data directory, and point XDG_CACHE_HOME and XDG_CONFIG_HOME elsewhere".into(),
                });
            }
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
            identities: Vec::new(),
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
