//! One launch path: what `berth run` and `berth runner` do between a checked request and the
//! engine, in one place so the two cannot drift.
//!
//! Both turn their input (flags and config files, or a claimed submission) into a `RunSpec`
//! themselves; from there [`check_request`] applies every rule that needs the file system (mount
//! policy, remote engine limits, berth's own files out of the sandbox's reach), and
//! [`prepare_host`] makes the host side of the run (shim, `$BERTH_OUT`, FIFOs, the isolated
//! workspace) and the `PlanContext` with every default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_core::plan::{sandbox_user, BindMount, PlanContext, GIT_OBJECTS_TARGET};
use berth_core::spec::{RunSpec, WorkspaceMode};

use crate::git_guard;
use crate::prepare::{self, CheckedMounts};
use crate::workspace::{self, WorkspaceSetup};
use crate::{RunContext, SandboxError};

/// Where and how a run will be launched, as far as the checks need to know.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub spec: &'a RunSpec,
    /// Relative mount sources are resolved against it (the CLI's current directory, the
    /// runner's project root).
    pub cwd: &'a Path,
    pub allowed_paths: &'a [PathBuf],
    pub home: Option<&'a Path>,
    /// The engine's socket on this host, when the engine is local.
    pub engine_socket: Option<&'a Path>,
    pub remote_engine: bool,
    /// The remote engine is reached through ssh, which can carry the egress proxy's sockets to
    /// its host (`ssh -R`, see `berth_engine::ssh_egress`).
    pub ssh_engine: bool,
    /// berth's own places (`(path, what it is)`): the state directory, the cache with the shim,
    /// the configuration with the trust store.
    pub own_paths: &'a [(&'a Path, &'a str)],
}

/// Every check a run must pass before anything is made for it: the spec's own rules, what a
/// remote engine cannot do, the mount policy, and berth's own files out of the sandbox's reach.
pub fn check_request(request: &Request<'_>) -> Result<CheckedMounts, SandboxError> {
    if request.remote_engine {
        berth_core::plan::check_remote(request.spec).map_err(|message| {
            SandboxError::WithHint {
                message: message.to_string(),
                hint: "a remote engine sees only the image and what berth uploads: pass --workspace-mode copy to upload the workspace (its changes come back into the run directory), or --workspace-mode none and bring files in with the image (results come back through $BERTH_OUT and --artifact)".into(),
            }
        })?;
        if request.spec.persistent.is_some() {
            return Err(crate::run::remote_persistent_refused());
        }
        if request.spec.egress.mode == berth_core::egress::EgressMode::Policy && !request.ssh_engine
        {
            return Err(remote_egress_refused());
        }
        // Only the proxy's sockets travel to an ssh engine's host, not the run CA's files that
        // header injection puts beside them.
        if let Some(inject) = request.spec.egress.inject.first() {
            return Err(SandboxError::WithHint {
                message: format!("header injection (for {}) is not available on a remote engine: the sandbox trusts the run's CA through a file of this host's egress directory, which is not carried to the engine's host", inject.host),
                hint: "run on the local engine (drop --engine) to inject headers, or drop --inject-header and [egress.inject] for this run".into(),
            });
        }
    }
    if request.spec.persistent.is_some() && request.spec.workspace_mode.is_isolated() {
        return Err(crate::run::isolated_persistent_refused(
            request.spec.workspace_mode,
        ));
    }
    let sockets = prepare::engine_sockets(request.engine_socket);
    let checked = prepare::check_mounts(
        request.spec,
        request.cwd,
        request.allowed_paths,
        request.home,
        sockets,
    )?;
    prepare::check_berth_paths(request.own_paths, request.spec.workspace_mode, &checked)?;
    Ok(checked)
}

/// Why egress policy cannot be had on a remote engine other than an `ssh://` one, with what to
/// do instead. Never the bridge network in its place: that would open what the policy closes.
pub fn remote_egress_refused() -> SandboxError {
    SandboxError::WithHint {
        message: "egress policy needs an ssh:// engine when the engine is remote: the sandbox reaches berth's egress proxy through sockets of this host, which only ssh can carry to the engine's host (ssh -R); this engine is reached another way".into(),
        hint: "reach the engine through ssh (--engine ssh://USER@HOST, or host = \"ssh://USER@HOST\" in [engines.NAME]), or run on the local engine (drop --engine), or choose --egress none (no network) or --egress open (the engine's bridge network, unchecked and unrecorded)".into(),
    }
}

/// The host side of a checked run, ready for `execute_docker`.
#[derive(Debug)]
pub struct Prepared {
    pub plan_context: PlanContext,
    /// Copy mode's upload (`Mounted` otherwise).
    pub upload: WorkspaceSetup,
    /// Worktree mode's worktree, to conclude after the run (`Mounted` otherwise).
    pub worktree: WorkspaceSetup,
    /// The sandbox user.
    pub sandbox_user: (u32, u32),
}

/// What the host side of a run is made from.
#[derive(Debug)]
pub struct HostSide<'a> {
    pub checked: CheckedMounts,
    /// The directory mounted at `/workspace` before isolation: the checked workspace, or a
    /// runner's workflow worktree.
    pub workspace: PathBuf,
    /// Mounts berth adds itself (an agent's sessions directory).
    pub extra_mounts: Vec<BindMount>,
    pub state_root: &'a Path,
    pub cache_dir: &'a Path,
    /// Whether the engine can read FIFOs on this host (a local socket).
    pub local_engine: bool,
    pub remote_engine: bool,
    /// Labels beyond the owner labels (the runner's id).
    pub extra_labels: BTreeMap<String, String>,
}

/// The invoking user's uid and gid.
pub fn invoking_user() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

/// Installs the shim, makes `$BERTH_OUT`, the output FIFOs and the isolated workspace, and
/// builds the plan context with every default. On an error the run is not started; the caller
/// records the error.
pub fn prepare_host(ctx: &mut RunContext, host: HostSide<'_>) -> Result<Prepared, SandboxError> {
    let spec = &ctx.record.spec;
    let shim = crate::shim::install(host.cache_dir)
        .map_err(|e| SandboxError::Invalid(format!("installing berth's shim failed: {e}")))?;
    let (invoking_uid, invoking_gid) = invoking_user();
    let (uid, gid) = sandbox_user(spec.user, invoking_uid, invoking_gid);
    let out_host_path = ctx.run_dir.create_out_dir(uid, gid)?;
    let io_host_path = if host.local_engine {
        Some(ctx.run_dir.create_io_files(uid, gid)?)
    } else {
        None
    };
    // The proxy serves this directory whatever the engine; an ssh engine's sandbox reaches it
    // through the forward that `execute_docker` opens (see `berth_engine::ssh_egress`).
    let egress_host_path = if spec.egress.mode == berth_core::egress::EgressMode::Policy {
        Some(ctx.run_dir.create_egress_dir()?)
    } else {
        None
    };
    let mount_identities = host.checked.identities_for(&host.workspace);
    let checked_writable: Vec<BindMount> = host
        .checked
        .mounts
        .iter()
        .filter(|m| !m.read_only)
        .cloned()
        .collect();
    let mut mounts = host.checked.mounts;
    for extra in host.extra_mounts {
        if !mounts.iter().any(|m| m.target == extra.target) {
            mounts.push(extra);
        }
    }
    let mut owner_labels = crate::owner::owner_labels(ctx.run_dir.path());
    owner_labels.extend(host.extra_labels);
    let mut plan_context = PlanContext {
        run_id: ctx.record.id.clone(),
        invoking_uid,
        invoking_gid,
        image_entrypoint: Vec::new(),
        image_home: None,
        home_owned: true,
        workspace: host.workspace.clone(),
        mounts,
        mount_identities,
        shim_host_path: shim,
        out_host_path,
        io_host_path,
        setup_frame: true,
        state_dir_in_workspace: prepare::state_dir_in_workspace(host.state_root, &host.workspace),
        owner_labels,
        remote_engine: host.remote_engine,
        egress_host_path,
        egress_engine_path: None,
    };
    // Every git directory the sandbox could write (in the rw workspace and each writable
    // `--mount`) is mounted read-only over itself: see `git_guard`.
    let all_targets: Vec<String> = plan_context
        .mounts
        .iter()
        .map(|m| m.target.clone())
        .chain(std::iter::once(
            berth_core::plan::WORKSPACE_TARGET.to_string(),
        ))
        .collect();
    let (mut guards, mut git_trees) = (Vec::new(), Vec::new());
    if ctx.record.spec.workspace_mode == WorkspaceMode::Rw {
        let covered = all_targets
            .iter()
            .any(|t| t == prepare::WORKSPACE_GIT_TARGET);
        let top = if covered {
            git_guard::Top::AsItIs
        } else {
            git_guard::Top::MakeEmptyGit
        };
        let guarded = git_guard::guard(&host.workspace, berth_core::plan::WORKSPACE_TARGET, top)?;
        if let Some(after) = guarded.top_after {
            for checked in plan_context
                .mount_identities
                .iter_mut()
                .filter(|m| m.target == berth_core::plan::WORKSPACE_TARGET)
            {
                if (checked.dev, checked.ino) != (after.dev, after.ino) {
                    return Err(SandboxError::Invalid(format!(
                        "the workspace {} changed while berth prepared the run (another directory is at its path now); run again",
                        host.workspace.display()
                    )));
                }
                checked.ctime = after.ctime;
            }
        }
        git_trees.extend(guarded.tree);
        guards.extend(git_guard::unshadowed(
            guarded.mounts,
            berth_core::plan::WORKSPACE_TARGET,
            &all_targets,
        ));
    }
    for mount in checked_writable {
        let guarded = git_guard::guard(&mount.source, &mount.target, git_guard::Top::AsItIs)?;
        git_trees.extend(guarded.tree);
        guards.extend(git_guard::unshadowed(
            guarded.mounts,
            &mount.target,
            &all_targets,
        ));
    }
    for (mount, identity) in guards {
        if !plan_context.mounts.iter().any(|m| m.target == mount.target) {
            plan_context.mount_identities.push(identity);
            plan_context.mounts.push(mount);
        }
    }
    // Isolated workspaces are made now that the run can go ahead; worktree mode's is concluded
    // (diff written, worktree removed) after the run whatever happened to it.
    let isolated = workspace::prepare(
        ctx,
        &host.workspace,
        host.state_root,
        (uid, gid),
        invoking_uid,
        host.remote_engine,
    )?;
    if let Some(mount) = &isolated.mount {
        plan_context.workspace = mount.clone();
    }
    // The private repository's objects: the user's, read-only, checked by the shim like every
    // other mount.
    if let Some(objects) = &isolated.git_objects {
        let (_, identity) = prepare::resolve_with_identity(objects, Path::new("/"));
        if let Some(identity) = identity {
            plan_context
                .mount_identities
                .push(identity.at(GIT_OBJECTS_TARGET.to_string()));
        }
        plan_context.mounts.push(BindMount {
            source: objects.clone(),
            target: GIT_OBJECTS_TARGET.to_string(),
            read_only: true,
        });
    }
    for message in isolated.warnings {
        ctx.emit(berth_core::event::Event::Warning { message });
    }
    // Kept until the check after the run is done, so that a berth killed meanwhile leaves it
    // to whoever concludes the run.
    if !git_trees.is_empty() {
        git_guard::save_pending(ctx.run_dir.path(), &git_trees).map_err(|e| {
            SandboxError::io(ctx.run_dir.path().join(git_guard::PENDING_CHECK_FILE), e)
        })?;
    }
    // Done when the run ends, before its final record.
    ctx.check_git_trees_when_finished(git_trees);
    Ok(Prepared {
        plan_context,
        upload: isolated.upload,
        worktree: isolated.worktree,
        sandbox_user: (uid, gid),
    })
}

/// After the run, once none of its processes is left: renames each git repository the run made
/// in a writable tree ([`git_guard::quarantine_planted`]), saying so in a warning, and clears
/// the check the run directory kept pending.
pub(crate) fn check_planted_repositories(ctx: &mut RunContext, trees: &[git_guard::GuardedTree]) {
    for tree in trees {
        let (renamed, problems) = git_guard::quarantine_planted(tree, &ctx.record.id);
        for path in renamed {
            let message = git_guard::renamed_message(&path, &ctx.record.id);
            ctx.emit(berth_core::event::Event::Warning { message });
        }
        for message in problems {
            ctx.emit(berth_core::event::Event::Warning { message });
        }
    }
    git_guard::clear_pending(ctx.run_dir.path());
}
