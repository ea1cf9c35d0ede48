//! From a checked run to the exact container berth asks the engine for.
//!
//! Architecture Invariant: every hardening setting is decided here, in one place, and the engine
//! adapter maps the plan field by field. There is deliberately no field for privileged mode, host
//! namespaces, added capabilities or a seccomp override: the plan cannot express them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::spec::{Isolation, PortPublish, RunSpec, UserSpec, WorkspaceMode};

/// Where the workspace is mounted and the working directory of every sandboxed command.
pub const WORKSPACE_TARGET: &str = "/workspace";
/// Always writable, always collected after the run (`$BERTH_OUT`).
pub const OUT_TARGET: &str = "/berth/out";
/// berth's entry shim inside the sandbox.
pub const SHIM_TARGET: &str = "/berth/shim";
/// FIFOs for the command's stdout and stderr, read by berth directly on the host so bulk output
/// does not go through the engine's attach stream.
pub const IO_TARGET: &str = "/berth/io";
/// berth's egress proxy sockets (`NAME.sock`), mounted read-only from a directory of berth's.
pub const EGRESS_TARGET: &str = "/berth/egress";
/// The user's git object directory, read-only, for the private repository of an isolated
/// workspace (`/workspace/.git` borrows its objects from here).
pub const GIT_OBJECTS_TARGET: &str = "/berth/git-objects";
/// Secret files, on a tmpfs owned by the sandbox user.
pub const SECRETS_TARGET: &str = "/run/secrets";
/// Home directory given to images that declare none.
pub const DEFAULT_HOME: &str = "/berth/home";
/// The uid:gid used when berth itself runs as root.
pub const FALLBACK_UID: u32 = 1000;

/// Labels on every container berth creates.
pub mod labels {
    pub const MANAGED: &str = "berth.managed";
    pub const RUN_ID: &str = "berth.run-id";
    /// The process id of the berth that owns the container.
    pub const OWNER_PID: &str = "berth.owner-pid";
    /// That process's start time (clock ticks since boot), so a reused pid is not mistaken for it.
    pub const OWNER_START: &str = "berth.owner-start";
    /// The host that berth runs on: `berth gc` only judges owners on its own host.
    pub const OWNER_HOST: &str = "berth.owner-host";
    /// The run directory, so `berth gc` can record what happened to the run.
    pub const RUN_DIR: &str = "berth.run-dir";
    /// `pool` or `persistent`: a held container (see `held`).
    pub const HELD: &str = "berth.held";
    /// The held container's configuration key: runs with the same key can use it.
    pub const HELD_KEY: &str = "berth.held-key";
    /// The host directory with the held container's io, out and lock.
    pub const HELD_DIR: &str = "berth.held-dir";
    /// The agent a persistent container belongs to.
    pub const HELD_AGENT: &str = "berth.held-agent";
    /// A runner's claim of the run (one per attempt); part of the container's name.
    pub const CLAIM: &str = "berth.claim";
}

/// A bind mount of a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// A tmpfs mount with its mount options (`mode=…,uid=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    pub target: String,
    pub options: String,
}

/// Everything the engine is asked to create, hardening included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries; never a secret.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub binds: Vec<BindMount>,
    pub tmpfs: Vec<TmpfsMount>,
    pub memory_bytes: i64,
    /// Equal to `memory_bytes`: memory plus swap equal to memory means no swap at all.
    pub memory_swap_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// `--disk`: the engine's storage quota on the writable layer (`StorageOpt size`), in bytes.
    /// Only asked for where the storage driver supports it (`disk::quota_support`).
    pub disk_bytes: Option<u64>,
    pub network: String,
    /// The engine runtime (`runsc`, `runsc-net` for gVisor); `None`: the engine's default.
    pub runtime: Option<String>,
    pub publish: Vec<PortPublish>,
    pub read_only_rootfs: bool,
    pub cap_drop: Vec<String>,
    /// Capabilities given back after `cap_drop`: only a held container's supervisor has any
    /// (CAP_SETUID and CAP_SETGID, to start each command as the sandbox user).
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    /// Run the engine's init (tini) as PID 1: it forwards signals and reaps zombies.
    pub init: bool,
    /// A cgroup namespace of its own (engines on cgroup v1 default to the host's).
    pub private_cgroup_namespace: bool,
    pub sysctls: BTreeMap<String, String>,
    /// Close the container's stdin when the first attached client closes it (a cold container
    /// reads one setup frame); a held container's supervisor keeps reading frames.
    pub stdin_once: bool,
    /// On a remote engine: an anonymous volume at `/berth` that berth fills through the archive
    /// API after create (the shim, an empty `out/` owned by the sandbox user) and reads
    /// `/berth/out` back from after exit. The archive API can write to a volume even when the
    /// root file system is read-only.
    pub berth_volume: Option<BerthVolume>,
}

/// See [`ContainerPlan::berth_volume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BerthVolume {
    pub target: String,
    /// The sandbox user, owner of `out/`.
    pub uid: u32,
    pub gid: u32,
}

/// Where berth's own files live on a remote engine.
pub const BERTH_VOLUME_TARGET: &str = "/berth";

/// The identity (device and inode, and the change time) of a checked mount source, and where it
/// is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountIdentity {
    pub target: String,
    pub dev: u64,
    pub ino: u64,
    /// The status change time (seconds, nanoseconds) when it was checked.
    pub ctime: (i64, u32),
}

impl MountIdentity {
    /// The shim option that checks it. Under runc the sandbox sees the host's device and inode
    /// numbers: `--expect-mount=DEV:INO:TARGET`. gVisor shows numbers of its own (a device per
    /// mount, inodes counted from 1) but passes the host's change time through, which no
    /// unprivileged process can set to a past moment: `--expect-mount-ctime=SEC:NSEC:TARGET`
    /// (see SECURITY.md, "Mounts are what was checked").
    pub fn shim_option(&self, isolation: Isolation) -> String {
        match isolation {
            Isolation::Runc => {
                format!("--expect-mount={}:{}:{}", self.dev, self.ino, self.target)
            }
            Isolation::Gvisor => format!(
                "--expect-mount-ctime={}:{}:{}",
                self.ctime.0, self.ctime.1, self.target
            ),
        }
    }
}

/// What the caller learned about the image and the host before planning.
#[derive(Debug, Clone)]
pub struct PlanContext {
    pub run_id: String,
    /// The invoking user's uid and gid.
    pub invoking_uid: u32,
    pub invoking_gid: u32,
    /// The image's own entrypoint; kept after berth's shim, as `docker run` keeps it.
    pub image_entrypoint: Vec<String>,
    /// The image's `HOME`, when it sets one.
    pub image_home: Option<String>,
    /// Whether the sandbox user is the image's own user, who owns its `HOME` (see
    /// [`image_user_is`]); if not, a tmpfs owned by the sandbox user is mounted there.
    pub home_owned: bool,
    /// The host directory bind-mounted at /workspace: the canonical workspace (already checked
    /// by the policy), or in worktree mode the run's worktree. Unused in copy and none modes.
    pub workspace: PathBuf,
    /// Checked extra mounts: canonical source, normalised target, read-only.
    pub mounts: Vec<BindMount>,
    /// What each checked bind mount's source was when the policy judged it. The shim compares
    /// these with what is really mounted before any command runs, so a source swapped between
    /// berth's check and the engine's mount stops the run.
    pub mount_identities: Vec<MountIdentity>,
    pub shim_host_path: PathBuf,
    pub out_host_path: PathBuf,
    /// The host directory holding the `stdout` and `stderr` FIFOs, when the engine is local.
    pub io_host_path: Option<PathBuf>,
    /// Whether the shim reads a setup frame (secrets, input) from stdin before starting the
    /// command; without one the command starts at once.
    pub setup_frame: bool,
    /// The state directory's path relative to the workspace, when it lies inside it: masked so
    /// the sandbox cannot read or rewrite earlier runs' records.
    pub state_dir_in_workspace: Option<String>,
    /// Owner labels (pid, start time, host, run dir) added to the managed labels.
    pub owner_labels: BTreeMap<String, String>,
    /// The engine runs on another host and cannot see this one's files: `shim_host_path`,
    /// `out_host_path` and `io_host_path` are not mounted; see [`ContainerPlan::berth_volume`].
    pub remote_engine: bool,
    /// With egress policy: the host directory holding the proxy's sockets, mounted read-only at
    /// [`EGRESS_TARGET`] by a local engine (the proxy serves it in every case).
    pub egress_host_path: Option<PathBuf>,
    /// With egress policy on a remote (`ssh://`) engine: the directory on the engine's host
    /// where ssh forwards a socket to each of the proxy's, mounted at [`EGRESS_TARGET`] instead.
    pub egress_engine_path: Option<PathBuf>,
}

/// A run the plan cannot be made for; each names the option and what to use instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanRefusal {
    #[error("--workspace-mode {0}: a remote engine cannot mount this host's workspace; use --workspace-mode copy or worktree (uploaded, the changes come back) or none")]
    RemoteWorkspace(WorkspaceMode),
    #[error("--workspace-mode worktree with --read-only: on a remote engine the worktree is uploaded into the container's own layer, which --read-only forbids")]
    RemoteReadOnlyWorktree,
    #[error("--mount {}: a remote engine cannot mount this host's paths; copy what the command needs into the image", .0.display())]
    RemoteMount(PathBuf),
    #[error("--read-only cannot be combined with --workspace-mode copy: the copy lives in the container's own layer, which a read-only root file system forbids")]
    CopyReadOnly,
}

/// What a run may not ask of an engine on another host: nothing of this host can be mounted
/// there. The error names the option and what to use instead.
pub fn check_remote(spec: &RunSpec) -> Result<(), PlanRefusal> {
    // Copy mode uploads the workspace through the archive API, which reaches any engine; so does
    // worktree mode there (its worktree is uploaded, its changes downloaded).
    if !matches!(
        spec.workspace_mode,
        WorkspaceMode::None | WorkspaceMode::Copy | WorkspaceMode::Worktree
    ) {
        return Err(PlanRefusal::RemoteWorkspace(spec.workspace_mode));
    }
    if spec.workspace_mode == WorkspaceMode::Worktree && spec.read_only {
        return Err(PlanRefusal::RemoteReadOnlyWorktree);
    }
    if let Some(m) = spec.mounts.first() {
        return Err(PlanRefusal::RemoteMount(m.source.clone()));
    }
    Ok(())
}

/// Copy mode puts the workspace into the container's own layer, which `--read-only` forbids.
///
/// Why not a volume: the archive API writes into a volume of a created container even with a
/// read-only root, but the engine never applies an archive's root entry (`./`) to the directory
/// it extracts into, so an anonymous volume's top directory stays owned by root and the
/// unprivileged command could not create or delete anything at the top of `/workspace`. A tmpfs
/// owned by the sandbox user exists only while the container runs (the archive API cannot reach
/// it), and a tmpfs-backed volume is unmounted, its content gone, whenever no container uses it:
/// after the upload to a created container, and again after the exit, before the download.
pub fn check_copy(spec: &RunSpec) -> Result<(), PlanRefusal> {
    if spec.workspace_mode == WorkspaceMode::Copy && spec.read_only {
        return Err(PlanRefusal::CopyReadOnly);
    }
    Ok(())
}

/// Whether `uid` is the image's own user (its `USER`, which owns the image's home directory):
/// the same uid; root for an image without a `USER`; for a user given by name, which only the
/// image's /etc/passwd could resolve, uid 1000 ([`FALLBACK_UID`]: berth's images' `agent`, and
/// the first user of most images).
pub fn image_user_is(image_user: Option<&str>, uid: u32) -> bool {
    let user = image_user.unwrap_or("");
    let user = user.split(':').next().unwrap_or(user);
    match user {
        "" | "root" => uid == 0,
        name => match name.parse::<u32>() {
            Ok(n) => n == uid,
            Err(_) => uid == FALLBACK_UID,
        },
    }
}

/// The user the sandbox runs as: `--user` when given, else the invoking user, else 1000:1000
/// when berth itself runs as root.
pub fn sandbox_user(
    requested: Option<UserSpec>,
    invoking_uid: u32,
    invoking_gid: u32,
) -> (u32, u32) {
    match requested {
        Some(UserSpec { uid, gid }) => (uid, gid.unwrap_or(uid)),
        None if invoking_uid == 0 => (FALLBACK_UID, FALLBACK_UID),
        None => (invoking_uid, invoking_gid),
    }
}

/// Builds the container plan for a run whose sources were already checked.
pub fn plan_container(spec: &RunSpec, ctx: &PlanContext) -> ContainerPlan {
    let (uid, gid) = sandbox_user(spec.user, ctx.invoking_uid, ctx.invoking_gid);
    let owned_tmpfs = |mode: &str| format!("rw,nosuid,nodev,mode={mode},uid={uid},gid={gid}");
    let scratch_size = scratch_tmpfs_size(spec);

    let mut binds = Vec::new();
    let mut tmpfs = Vec::new();
    match spec.workspace_mode {
        // On a remote engine the worktree travels like a copy: uploaded, and its changes
        // downloaded (the engine cannot see this host's directories).
        WorkspaceMode::Worktree if ctx.remote_engine => {}
        WorkspaceMode::Rw | WorkspaceMode::Ro | WorkspaceMode::Worktree => {
            binds.push(BindMount {
                source: ctx.workspace.clone(),
                target: WORKSPACE_TARGET.to_string(),
                read_only: spec.workspace_mode == WorkspaceMode::Ro,
            });
        }
        // Copy mode never binds a host directory: the tree is uploaded into the container's own
        // layer (so copy mode needs a writable root; see `check_copy`).
        WorkspaceMode::Copy | WorkspaceMode::None => {}
    }
    if spec.workspace_mode.mounts_user_directory() {
        if let Some(state) = &ctx.state_dir_in_workspace {
            tmpfs.push(TmpfsMount {
                target: format!("{WORKSPACE_TARGET}/{state}"),
                options: "ro,nosuid,nodev,noexec,size=4k,mode=0555".to_string(),
            });
        }
    }
    binds.extend(ctx.mounts.iter().cloned());
    let berth_volume = ctx.remote_engine.then(|| BerthVolume {
        target: BERTH_VOLUME_TARGET.to_string(),
        uid,
        gid,
    });
    if !ctx.remote_engine {
        binds.push(BindMount {
            source: ctx.out_host_path.clone(),
            target: OUT_TARGET.to_string(),
            read_only: false,
        });
        binds.push(BindMount {
            source: ctx.shim_host_path.clone(),
            target: SHIM_TARGET.to_string(),
            read_only: true,
        });
    }

    if !spec.secrets.is_empty() {
        tmpfs.push(TmpfsMount {
            target: SECRETS_TARGET.to_string(),
            options: format!("{},noexec,size=1m", owned_tmpfs("0700")),
        });
    }
    let home = ctx
        .image_home
        .clone()
        .unwrap_or_else(|| DEFAULT_HOME.to_string());
    if spec.read_only || ctx.image_home.is_none() || !ctx.home_owned {
        tmpfs.push(TmpfsMount {
            target: home.clone(),
            options: format!("{},size={scratch_size}", owned_tmpfs("0700")),
        });
    }
    if spec.read_only {
        tmpfs.push(TmpfsMount {
            target: "/tmp".to_string(),
            options: format!("rw,nosuid,nodev,mode=1777,size={scratch_size}"),
        });
    }

    let mut env = vec![
        format!("BERTH_OUT={OUT_TARGET}"),
        format!("BERTH_RUN_ID={}", ctx.run_id),
    ];
    if ctx.image_home.is_none() {
        env.push(format!("HOME={home}"));
    }
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));

    let mut labels = BTreeMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::RUN_ID.to_string(), ctx.run_id.clone()),
    ]);
    labels.extend(ctx.owner_labels.clone());

    let mut entrypoint = vec![SHIM_TARGET.to_string()];
    if !ctx.setup_frame {
        entrypoint.push("--no-setup".to_string());
    }
    entrypoint.extend(
        ctx.mount_identities
            .iter()
            .map(|m| m.shim_option(spec.isolation)),
    );
    if let Some(io) = ctx.io_host_path.as_ref().filter(|_| !ctx.remote_engine) {
        binds.push(BindMount {
            source: io.clone(),
            target: IO_TARGET.to_string(),
            read_only: false,
        });
        entrypoint.push(format!("--stdout={IO_TARGET}/stdout"));
        entrypoint.push(format!("--stderr={IO_TARGET}/stderr"));
    }
    let policy = spec.egress.mode == crate::egress::EgressMode::Policy;
    if policy {
        let source = if ctx.remote_engine {
            ctx.egress_engine_path.as_ref()
        } else {
            ctx.egress_host_path.as_ref()
        };
        if let Some(dir) = source {
            binds.push(BindMount {
                source: dir.clone(),
                target: EGRESS_TARGET.to_string(),
                read_only: true,
            });
        }
        entrypoint.extend(egress_options(spec));
        // Proxy variables and brokered placeholders first: the run's own env may override them
        // (which reaches nothing: the sandbox has no network interface).
        let at = env.len() - spec.env.len();
        let egress_env: Vec<String> = spec
            .egress
            .env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.splice(at..at, egress_env);
    }
    // The end of the shim's options: a command that starts with `--` stays the command.
    entrypoint.push("--".to_string());
    entrypoint.extend(ctx.image_entrypoint.iter().cloned());

    let working_dir = match (&spec.workdir, spec.workspace_mode) {
        (Some(dir), _) => dir.clone(),
        (None, WorkspaceMode::None) => "/".to_string(),
        (None, _) => WORKSPACE_TARGET.to_string(),
    };

    let network = engine_network(spec).to_string();
    ContainerPlan {
        name: match ctx.owner_labels.get(labels::CLAIM) {
            Some(claim) => format!("{}-{claim}", container_name(&ctx.run_id)),
            None => container_name(&ctx.run_id),
        },
        image: spec.image.clone(),
        entrypoint,
        cmd: spec.command.clone(),
        env,
        working_dir,
        user: format!("{uid}:{gid}"),
        labels,
        binds,
        tmpfs,
        memory_bytes: memory_limit(spec),
        memory_swap_bytes: memory_limit(spec),
        nano_cpus: spec
            .resources
            .nano_cpus
            .clamp(1, crate::units::MAX_CPUS * 1_000_000_000),
        pids_limit: spec.resources.pids.clamp(1, crate::units::MAX_PIDS),
        disk_bytes: spec
            .resources
            .disk_bytes
            .map(|d| d.clamp(crate::units::MIN_DISK, crate::units::MAX_DISK)),
        runtime: spec.isolation.runtime(&network).map(str::to_string),
        network,
        publish: spec.publish.clone(),
        read_only_rootfs: spec.read_only,
        cap_drop: vec!["ALL".to_string()],
        cap_add: Vec::new(),
        security_opt: vec!["no-new-privileges:true".to_string()],
        init: true,
        private_cgroup_namespace: true,
        // Binding ports below 1024 normally needs CAP_NET_BIND_SERVICE, which is dropped. The
        // sysctl is per network namespace, so lowering it affects only this sandbox.
        sysctls: BTreeMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        )]),
        stdin_once: true,
        berth_volume,
    }
}

/// The engine's name of the network the container joins. Egress policy means no network
/// interface but loopback, whatever else was asked.
pub fn engine_network(spec: &RunSpec) -> &str {
    if spec.egress.mode == crate::egress::EgressMode::Policy {
        "none"
    } else {
        spec.network.engine_name()
    }
}

/// The shim's forwarder options for a run with egress policy: `--egress=PORT:NAME` each.
pub fn egress_options(spec: &RunSpec) -> Vec<String> {
    spec.egress
        .listeners()
        .into_iter()
        .map(|(port, name)| format!("--egress={port}:{name}"))
        .collect()
}

/// The `size=` of the writable tmpfs mounts for `/tmp` and `$HOME` (with `--read-only`, or an
/// image without a home): the disk limit when there is one, else the memory limit, and never
/// more than the memory limit. tmpfs pages are charged to the container's memory cgroup anyway,
/// so the memory limit bounds all of them together; the size keeps each one from exceeding
/// what `--disk` promises (and from the kernel's default of half the host's RAM).
fn scratch_tmpfs_size(spec: &RunSpec) -> u64 {
    let memory = memory_limit(spec).unsigned_abs();
    let disk = |d: u64| d.clamp(crate::units::MIN_DISK, crate::units::MAX_DISK);
    // Never 0: for tmpfs that means no limit at all.
    spec.resources
        .disk_bytes
        .map_or(memory, |d| disk(d).min(memory))
}

/// The spec's memory limit for the engine. The parsers cap it at [`crate::units::MAX_MEMORY`];
/// a spec from elsewhere (a record, a test) is held to the same bounds, never wrapped negative.
fn memory_limit(spec: &RunSpec) -> i64 {
    let bytes = spec
        .resources
        .memory_bytes
        .clamp(crate::units::MIN_MEMORY, crate::units::MAX_MEMORY);
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The name of the container for a run.
pub fn container_name(run_id: &str) -> String {
    format!("berth-{run_id}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_image_s_user_is_matched_by_uid() {
        for (user, uid, is) in [
            (Some("1001"), 1001, true),
            (Some("1001:1001"), 1001, true),
            (Some("1000"), 1001, false),
            (Some("agent"), 1000, true),
            (Some("agent:agent"), 1001, false),
            (None, 0, true),
            (Some("root"), 1000, false),
            (None, 1000, false),
        ] {
            assert_eq!(image_user_is(user, uid), is, "{user:?} {uid}");
        }
    }
    use crate::spec::*;
    use std::time::Duration;

    /// A run spec for tests: a command that must stay argv, one env var, a workspace.
    pub(crate) fn spec() -> RunSpec {
        RunSpec {
            image: "img".into(),
            command: vec!["echo".into(), "$HOME; rm -rf /".into()],
            pull: PullPolicy::Missing,
            workspace: "/w".into(),
            workspace_mode: WorkspaceMode::Rw,
            include_dirty: false,
            start_commit: None,
            copy_limit_bytes: DEFAULT_COPY_LIMIT,
            mounts: vec![],
            env: vec![("A".into(), "1".into())],
            secrets: vec![],
            resources: Resources::default(),
            timeout: Duration::from_secs(600),
            grace: Duration::from_secs(10),
            network: NetworkMode::None,
            egress: Default::default(),
            isolation: Isolation::Runc,
            read_only: false,
            user: None,
            publish: vec![],
            artifacts: vec![],
            keep: false,
            fallback: Fallback::None,
            workdir: None,
            output_format: "text".into(),
            profile: None,
            persistent: None,
        }
    }

    fn ctx() -> PlanContext {
        PlanContext {
            run_id: "01abc".into(),
            invoking_uid: 0,
            invoking_gid: 0,
            image_entrypoint: vec![],
            image_home: None,
            home_owned: true,
            workspace: "/w".into(),
            mounts: vec![],
            mount_identities: Vec::new(),
            shim_host_path: "/cache/shim".into(),
            out_host_path: "/w/.berth/runs/01abc/out".into(),
            io_host_path: None,
            setup_frame: true,
            state_dir_in_workspace: Some(".berth".into()),
            owner_labels: BTreeMap::new(),
            remote_engine: false,
            egress_host_path: None,
            egress_engine_path: None,
        }
    }

    #[test]
    fn remote_engine_gets_a_volume_instead_of_host_paths() {
        let mut s = spec();
        s.workspace_mode = WorkspaceMode::None;
        s.user = Some(UserSpec {
            uid: 7,
            gid: Some(8),
        });
        let c = PlanContext {
            remote_engine: true,
            io_host_path: Some("/r/io".into()),
            ..ctx()
        };
        let plan = plan_container(&s, &c);
        assert!(plan.binds.is_empty(), "{:?}", plan.binds);
        assert_eq!(
            plan.berth_volume,
            Some(BerthVolume {
                target: "/berth".into(),
                uid: 7,
                gid: 8
            })
        );
        assert_eq!(plan.entrypoint, ["/berth/shim", "--"]);
        assert_eq!(plan_container(&spec(), &ctx()).berth_volume, None);
    }

    #[test]
    fn egress_sockets_come_from_this_host_or_from_the_ssh_forward_on_the_engines_host() {
        let mut s = spec();
        s.workspace_mode = WorkspaceMode::None;
        s.egress.mode = crate::egress::EgressMode::Policy;
        let egress_bind = |c: &PlanContext| {
            plan_container(&s, c)
                .binds
                .into_iter()
                .find(|b| b.target == EGRESS_TARGET)
        };
        let local = PlanContext {
            egress_host_path: Some("/runs/r1/egress".into()),
            egress_engine_path: Some("/tmp/berth-egress.x".into()),
            ..ctx()
        };
        let expected = |source: &str| {
            Some(BindMount {
                source: source.into(),
                target: EGRESS_TARGET.into(),
                read_only: true,
            })
        };
        assert_eq!(egress_bind(&local), expected("/runs/r1/egress"));
        // A remote engine never mounts a path of this host, only the forward's directory.
        let remote = PlanContext {
            remote_engine: true,
            ..local.clone()
        };
        assert_eq!(egress_bind(&remote), expected("/tmp/berth-egress.x"));
        let unforwarded = PlanContext {
            egress_engine_path: None,
            ..remote
        };
        assert_eq!(egress_bind(&unforwarded), None);
    }

    #[test]
    fn remote_engine_refuses_host_mounts() {
        let mut s = spec();
        assert!(check_remote(&s)
            .unwrap_err()
            .to_string()
            .contains("--workspace-mode rw: a remote engine cannot mount this host's workspace; use --workspace-mode copy"));
        // A worktree travels like a copy there: uploaded, so not with a read-only root.
        s.workspace_mode = WorkspaceMode::Worktree;
        assert_eq!(check_remote(&s), Ok(()));
        s.read_only = true;
        assert!(check_remote(&s)
            .unwrap_err()
            .to_string()
            .contains("--read-only"));
        s.read_only = false;
        let mut remote = ctx();
        remote.remote_engine = true;
        assert!(!plan_container(&s, &remote)
            .binds
            .iter()
            .any(|b| b.target == WORKSPACE_TARGET));
        s.workspace_mode = WorkspaceMode::Copy;
        assert_eq!(check_remote(&s), Ok(()));
        s.workspace_mode = WorkspaceMode::None;
        assert_eq!(check_remote(&s), Ok(()));
        s.mounts.push(MountRequest {
            source: "/data".into(),
            target: "/data".into(),
            read_only: true,
        });
        assert!(check_remote(&s)
            .unwrap_err()
            .to_string()
            .starts_with("--mount /data:"));
    }

    #[test]
    fn hardening_is_always_on() {
        let plan = plan_container(&spec(), &ctx());
        assert_eq!(plan.cap_drop, ["ALL"]);
        assert_eq!(plan.security_opt, ["no-new-privileges:true"]);
        assert!(plan.init);
        assert!(plan.private_cgroup_namespace);
        assert_eq!(plan.memory_swap_bytes, plan.memory_bytes);
        assert_eq!(plan.pids_limit, 512);
        assert_eq!(plan.network, "none");
        assert_eq!(plan.name, "berth-01abc");
        assert_eq!(plan.labels["berth.managed"], "true");
        assert_eq!(plan.labels["berth.run-id"], "01abc");
    }

    #[test]
    fn gvisor_picks_the_runtime_by_network_and_keeps_every_hardening_setting() {
        let runc = plan_container(&spec(), &ctx());
        assert_eq!(runc.runtime, None);
        let mut s = spec();
        s.isolation = Isolation::Gvisor;
        let gvisor = plan_container(&s, &ctx());
        assert_eq!(gvisor.runtime.as_deref(), Some("runsc"));
        // Nothing but the runtime differs.
        assert_eq!(
            ContainerPlan {
                runtime: None,
                ..gvisor
            },
            runc
        );
        s.network = NetworkMode::Bridge;
        assert_eq!(
            plan_container(&s, &ctx()).runtime.as_deref(),
            Some("runsc-net")
        );
        // Egress policy has no network interface: the runtime without one.
        s.egress.mode = crate::egress::EgressMode::Policy;
        assert_eq!(plan_container(&s, &ctx()).runtime.as_deref(), Some("runsc"));
    }

    #[test]
    fn mount_identity_is_checked_by_what_the_runtime_shows() {
        let id = MountIdentity {
            target: "/data:x".into(),
            dev: 65024,
            ino: 42,
            ctime: (1_700_000_000, 123_456_789),
        };
        let mut c = ctx();
        c.mount_identities = vec![id.clone()];
        let mut s = spec();
        assert!(plan_container(&s, &c)
            .entrypoint
            .contains(&"--expect-mount=65024:42:/data:x".to_string()));
        s.isolation = Isolation::Gvisor;
        assert!(plan_container(&s, &c)
            .entrypoint
            .contains(&"--expect-mount-ctime=1700000000:123456789:/data:x".to_string()));
    }

    #[test]
    fn a_claimed_run_has_its_claim_in_the_container_name() {
        let mut c = ctx();
        c.owner_labels
            .insert(labels::CLAIM.to_string(), "0badc0de".to_string());
        let plan = plan_container(&spec(), &c);
        assert_eq!(plan.name, "berth-01abc-0badc0de");
        assert_eq!(plan.labels["berth.claim"], "0badc0de");
    }

    #[test]
    fn command_stays_argv() {
        let plan = plan_container(&spec(), &ctx());
        assert_eq!(plan.entrypoint, ["/berth/shim", "--"]);
        let quick = plan_container(
            &spec(),
            &PlanContext {
                setup_frame: false,
                ..ctx()
            },
        );
        assert_eq!(quick.entrypoint, ["/berth/shim", "--no-setup", "--"]);
        assert_eq!(plan.cmd, ["echo", "$HOME; rm -rf /"]);
    }

    #[test]
    fn output_fifos_are_mounted_and_given_to_the_shim() {
        let c = PlanContext {
            io_host_path: Some("/r/io".into()),
            image_entrypoint: vec!["/entry".into()],
            ..ctx()
        };
        let plan = plan_container(&spec(), &c);
        assert_eq!(
            plan.entrypoint,
            [
                "/berth/shim",
                "--stdout=/berth/io/stdout",
                "--stderr=/berth/io/stderr",
                "--",
                "/entry"
            ]
        );
        assert!(plan
            .binds
            .iter()
            .any(|b| b.target == IO_TARGET && !b.read_only));
    }

    #[test]
    fn users() {
        assert_eq!(sandbox_user(None, 0, 0), (1000, 1000));
        assert_eq!(sandbox_user(None, 501, 20), (501, 20));
        assert_eq!(
            sandbox_user(Some(UserSpec { uid: 0, gid: None }), 501, 20),
            (0, 0)
        );
        assert_eq!(
            sandbox_user(
                Some(UserSpec {
                    uid: 7,
                    gid: Some(8)
                }),
                0,
                0
            ),
            (7, 8)
        );
    }

    #[test]
    fn state_dir_is_masked_and_out_is_writable() {
        let plan = plan_container(&spec(), &ctx());
        assert!(plan
            .tmpfs
            .iter()
            .any(|t| t.target == "/workspace/.berth" && t.options.starts_with("ro")));
        assert!(plan
            .binds
            .iter()
            .any(|b| b.target == OUT_TARGET && !b.read_only));
        assert!(plan
            .binds
            .iter()
            .any(|b| b.target == SHIM_TARGET && b.read_only));
    }

    #[test]
    fn read_only_root_gets_writable_tmp_and_home() {
        let mut s = spec();
        s.read_only = true;
        let c = PlanContext {
            image_home: Some("/home/agent".into()),
            home_owned: true,
            ..ctx()
        };
        let plan = plan_container(&s, &c);
        assert!(plan.read_only_rootfs);
        let targets: Vec<_> = plan.tmpfs.iter().map(|t| t.target.as_str()).collect();
        assert!(
            targets.contains(&"/tmp") && targets.contains(&"/home/agent"),
            "{targets:?}"
        );
        assert!(
            !plan.env.iter().any(|e| e.starts_with("HOME=")),
            "the image's HOME is kept"
        );
    }

    #[test]
    fn a_home_of_another_user_gets_a_tmpfs_in_its_place() {
        let c = |home_owned| PlanContext {
            image_home: Some("/home/agent".into()),
            home_owned,
            ..ctx()
        };
        let home = |plan: &ContainerPlan| {
            plan.tmpfs
                .iter()
                .find(|t| t.target == "/home/agent")
                .map(|t| t.options.clone())
        };
        assert_eq!(home(&plan_container(&spec(), &c(true))), None);
        let plan = plan_container(&spec(), &c(false));
        let options = home(&plan).expect("a tmpfs HOME");
        let (uid, gid) = sandbox_user(spec().user, ctx().invoking_uid, ctx().invoking_gid);
        assert!(
            options.contains(&format!("uid={uid},gid={gid}")) && options.contains("mode=0700"),
            "{options}"
        );
        assert!(
            !plan.env.iter().any(|e| e.starts_with("HOME=")),
            "HOME stays where the image says"
        );
    }

    #[test]
    fn disk_limit_and_bounded_scratch_tmpfs() {
        let size_of = |plan: &ContainerPlan, target: &str| {
            let t = plan.tmpfs.iter().find(|t| t.target == target).unwrap();
            t.options.rsplit("size=").next().unwrap().to_string()
        };
        let mut s = spec();
        s.read_only = true;
        let plan = plan_container(&s, &ctx());
        assert_eq!(plan.disk_bytes, None);
        assert_eq!(size_of(&plan, "/tmp"), (2u64 << 30).to_string());
        s.resources.disk_bytes = Some(1 << 30);
        let plan = plan_container(&s, &ctx());
        assert_eq!(plan.disk_bytes, Some(1 << 30));
        assert_eq!(size_of(&plan, "/tmp"), (1u64 << 30).to_string());
        assert_eq!(size_of(&plan, DEFAULT_HOME), (1u64 << 30).to_string());
        s.resources.disk_bytes = Some(100 << 30);
        assert_eq!(
            size_of(&plan_container(&s, &ctx()), "/tmp"),
            (2u64 << 30).to_string()
        );
        s.resources.disk_bytes = Some(0);
        let plan = plan_container(&s, &ctx());
        assert_eq!(plan.disk_bytes, Some(crate::units::MIN_DISK));
        assert_eq!(size_of(&plan, "/tmp"), crate::units::MIN_DISK.to_string());
    }

    #[test]
    fn secrets_get_an_owned_tmpfs_and_never_env() {
        let mut s = spec();
        s.secrets = vec!["TOKEN".into()];
        let plan = plan_container(&s, &ctx());
        let secrets = plan
            .tmpfs
            .iter()
            .find(|t| t.target == SECRETS_TARGET)
            .unwrap();
        assert!(secrets.options.contains("uid=1000") && secrets.options.contains("mode=0700"));
        assert!(!plan.env.iter().any(|e| e.starts_with("TOKEN")));
    }

    #[test]
    fn copy_mode_binds_nothing_of_the_user() {
        let mut s = spec();
        s.workspace_mode = WorkspaceMode::Copy;
        let plan = plan_container(&s, &ctx());
        assert!(!plan.binds.iter().any(|b| b.source == ctx().workspace));
        assert!(!plan
            .tmpfs
            .iter()
            .any(|t| t.target.starts_with(WORKSPACE_TARGET)));
        assert_eq!(plan.working_dir, WORKSPACE_TARGET);
    }

    #[test]
    fn copy_mode_needs_a_writable_root() {
        let mut s = spec();
        s.workspace_mode = WorkspaceMode::Copy;
        assert_eq!(check_copy(&s), Ok(()));
        s.read_only = true;
        assert!(check_copy(&s)
            .unwrap_err()
            .to_string()
            .starts_with("--read-only cannot be combined with --workspace-mode copy"));
        s.workspace_mode = WorkspaceMode::Rw;
        assert_eq!(check_copy(&s), Ok(()));
    }

    #[test]
    fn worktree_mode_binds_the_worktree_read_write_without_a_state_mask() {
        let mut s = spec();
        s.workspace_mode = WorkspaceMode::Worktree;
        let c = PlanContext {
            workspace: "/w/.berth/runs/01abc/workspace".into(),
            ..ctx()
        };
        let plan = plan_container(&s, &c);
        let bind = plan
            .binds
            .iter()
            .find(|b| b.target == WORKSPACE_TARGET)
            .unwrap();
        assert_eq!(bind.source, c.workspace);
        assert!(!bind.read_only);
        assert!(!plan
            .tmpfs
            .iter()
            .any(|t| t.target.starts_with(WORKSPACE_TARGET)));
    }

    #[test]
    fn workspace_none_has_no_workspace_mount() {
        let mut s = spec();
        s.workspace_mode = WorkspaceMode::None;
        let plan = plan_container(&s, &ctx());
        assert!(!plan.binds.iter().any(|b| b.target == WORKSPACE_TARGET));
        assert_eq!(plan.working_dir, "/");
    }
}
