//! Held containers: started once, kept running, and given runs by their supervisor.
//!
//! Two kinds. A **persistent** container belongs to an agent name and serves that agent's runs
//! one after another (`lifecycle = "persistent"`), so the second run skips the cold start and
//! finds the files the first one left. A **pool** container is pre-created and started before
//! any run asks for it, and serves exactly one run: it is never handed to another.
//!
//! Both carry the same hardening as a cold container: their plan is the cold plan with berth's
//! shim as a supervisor (`/berth/shim --serve`) instead of the command. Everything that belongs to
//! one run (the command, its environment and secrets, `$BERTH_OUT`, the output FIFOs, its input)
//! travels in a run frame written to the supervisor's stdin: no engine exec, no configuration
//! change, and a start that costs one write.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::{
    self, labels, ContainerPlan, PlanContext, TmpfsMount, EGRESS_TARGET, IO_TARGET, OUT_TARGET,
    SECRETS_TARGET, SHIM_TARGET,
};
use crate::spec::RunSpec;

/// The shim option that makes it a supervisor of runs sent as frames on its stdin.
pub const SERVE_OPTION: &str = "--serve";
/// With `--serve`: no process of a run survives it (see the shim's `sweep_others`).
pub const SWEEP_OPTION: &str = "--sweep";
/// The supervisor's option naming the sandbox user it starts every command as.
pub const RUN_AS_OPTION: &str = "--run-as";
/// What a held container's supervisor keeps of root: starting each command as the sandbox user.
pub const SUPERVISOR_CAPABILITIES: [&str; 2] = ["SETUID", "SETGID"];

/// Which kind of held container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldKind {
    Pool,
    Persistent,
}

impl HeldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pool => "pool",
            Self::Persistent => "persistent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pool" => Some(Self::Pool),
            "persistent" => Some(Self::Persistent),
            _ => None,
        }
    }
}

/// A run asked for a persistent container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentSpec {
    /// The agent the container belongs to (a profile name, or `default`).
    pub agent: String,
    /// The container's name within the agent (`--name`; the agent's name when not given).
    pub name: String,
    /// At most this many persistent containers per agent; the least recently used idle one is
    /// removed to make room.
    pub max_containers: u32,
    /// Removed after this long without a run.
    #[serde(with = "crate::spec::duration_secs")]
    pub idle_ttl: Duration,
}

/// Defaults for persistent containers and pools.
pub const DEFAULT_MAX_CONTAINERS: u32 = 4;
pub const DEFAULT_PERSISTENT_TTL: Duration = Duration::from_secs(2 * 3600);
pub const DEFAULT_POOL_TTL: Duration = Duration::from_secs(30 * 60);

/// A warm pool for one profile or image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// What the pool is for, as written in the config (a profile name or an image).
    pub name: String,
    /// How many started containers to keep ready.
    pub size: u32,
    /// Ready containers older than this are replaced.
    pub idle_ttl: Duration,
}

/// Which field of a run request a lifecycle problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleField {
    Lifecycle,
    Name,
    Profile,
}

/// The persistent container a run asks for, from its explicit `lifecycle` and `name` (flags or
/// API fields) and its profile; `None` for an ephemeral run. A name implies `persistent`.
pub fn persistent_for(
    lifecycle: Option<&str>,
    name: Option<&str>,
    profile: Option<&crate::profile::Profile>,
) -> Result<Option<PersistentSpec>, (LifecycleField, String)> {
    let lifecycle = match (lifecycle, name) {
        (Some(l), _) => l,
        (None, Some(_)) => "persistent",
        (None, None) => profile.map_or("ephemeral", |p| p.lifecycle.as_str()),
    };
    match lifecycle {
        "ephemeral" if name.is_some() => Err((
            LifecycleField::Name,
            "names a persistent container; it cannot be combined with lifecycle ephemeral".into(),
        )),
        "ephemeral" => Ok(None),
        "persistent" => {
            let agent = profile.map_or("default", |p| p.name.as_str()).to_string();
            check_name("profile", &agent).map_err(|e| (LifecycleField::Profile, e.to_string()))?;
            let name = name.unwrap_or(&agent).to_string();
            check_name("name", &name).map_err(|e| (LifecycleField::Name, e.to_string()))?;
            Ok(Some(PersistentSpec {
                agent,
                name,
                max_containers: profile.map_or(DEFAULT_MAX_CONTAINERS, |p| p.max_containers),
                idle_ttl: profile.map_or(DEFAULT_PERSISTENT_TTL, |p| p.idle_ttl),
            }))
        }
        other => Err((
            LifecycleField::Lifecycle,
            format!("`{other}` is not ephemeral or persistent"),
        )),
    }
}

/// The engine name of a persistent container: one per agent and name.
pub fn persistent_container_name(agent: &str, name: &str) -> String {
    format!("berth-{agent}--{name}")
}

/// The engine name of a pool container; `suffix` makes it unique.
pub fn pool_container_name(key: &str, suffix: &str) -> String {
    format!("berth-pool-{}-{suffix}", &key[..key.len().min(12)])
}

/// A persistent container's name (or its agent's) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{name}` must be 1 to 64 letters, digits, `-` or `_`, not start with `-` nor contain `--`")]
pub struct NameError {
    /// What the name is of, as the user knows it (`name`, `profile`, `--name`).
    pub what: String,
    pub name: String,
}

/// Checks a persistent container name as given by `--name` (it becomes part of a container name
/// and of a directory name on the host).
pub fn check_name(what: &str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what: what.to_string(),
            name: name.to_string(),
        })
    }
}

/// What identifies a held container besides its plan.
#[derive(Debug, Clone)]
pub struct HolderContext {
    /// The container's name.
    pub name: String,
    pub kind: HeldKind,
    /// Identifies the container-level configuration (see [`held_key`]).
    pub key: String,
    /// The agent, for persistent containers.
    pub agent: Option<String>,
    /// The host directory holding the container's `io/` and `out/` and its lock.
    pub dir: std::path::PathBuf,
}

/// The plan of a held container: the cold plan of `spec`, holding instead of running, with the
/// per-run parts (command, environment, run id) left to the exec. `ctx.out_host_path` and
/// `ctx.io_host_path` must be the holder's own directories.
pub fn plan_holder(spec: &RunSpec, ctx: &PlanContext, holder: &HolderContext) -> ContainerPlan {
    let mut spec = spec.clone();
    spec.env.clear();
    let mut ctx = ctx.clone();
    ctx.setup_frame = false;
    let mut plan = plan::plan_container(&spec, &ctx);
    plan.name = holder.name.clone();
    let (uid, gid) = plan::sandbox_user(spec.user, ctx.invoking_uid, ctx.invoking_gid);
    plan.entrypoint = vec![
        SHIM_TARGET.to_string(),
        SERVE_OPTION.to_string(),
        SWEEP_OPTION.to_string(),
        format!("{RUN_AS_OPTION}={uid}:{gid}"),
    ];
    plan.entrypoint.extend(
        ctx.mount_identities
            .iter()
            .map(|m| m.shim_option(spec.isolation)),
    );
    plan.entrypoint.extend(plan::egress_options(&spec));
    plan.cmd = Vec::new();
    // The supervisor is PID 1 itself, not the engine's init: processes of a run can then
    // neither signal it (the kernel drops signals to a namespace's init that it does not
    // handle, SIGSTOP included) nor reach the frames and reports through an init's
    // `/proc/1/fd` (the shim is not dumpable; docker-init is). It reaps orphans itself.
    plan.init = false;
    // ... and not of the sandbox user: started as root with CAP_SETUID and CAP_SETGID only, it
    // keeps root as its real and saved user and starts each command as the sandbox user, with
    // no capability (`--run-as`). Under gVisor, which lets a process stop or open the
    // `/proc/PID/fd` of any process of its own user, PID 1 and non-dumpable alone protect
    // nothing; a different user does, under every runtime.
    plan.user = "0:0".to_string();
    plan.cap_add = SUPERVISOR_CAPABILITIES.map(str::to_string).to_vec();
    plan.stdin_once = false;
    plan.env.retain(|e| e.starts_with("HOME="));
    // A later run may bring secrets the first did not: the tmpfs is always there.
    if !plan.tmpfs.iter().any(|t| t.target == SECRETS_TARGET) {
        plan.tmpfs.push(TmpfsMount {
            target: SECRETS_TARGET.to_string(),
            options: format!("rw,nosuid,nodev,mode=0700,uid={uid},gid={gid},noexec,size=1m"),
        });
    }
    plan.labels.remove(labels::RUN_ID);
    plan.labels.remove(labels::RUN_DIR);
    plan.labels
        .insert(labels::HELD.to_string(), holder.kind.as_str().to_string());
    plan.labels
        .insert(labels::HELD_KEY.to_string(), holder.key.clone());
    plan.labels.insert(
        labels::HELD_DIR.to_string(),
        holder.dir.display().to_string(),
    );
    if let Some(agent) = &holder.agent {
        plan.labels
            .insert(labels::HELD_AGENT.to_string(), agent.clone());
    }
    plan
}

/// A key for everything a held container fixes at creation: two runs whose keys are equal can
/// use the same container. `image_id` pins the image's content, not only its name.
pub fn held_key(spec: &RunSpec, ctx: &PlanContext, image_id: &str) -> String {
    let holder = HolderContext {
        name: String::new(),
        kind: HeldKind::Pool,
        key: String::new(),
        agent: None,
        dir: std::path::PathBuf::new(),
    };
    let mut ctx = ctx.clone();
    ctx.run_id = String::new();
    ctx.owner_labels.clear();
    // A mount is the same when its device and inode are; its change time (which gVisor's check
    // compares) moves with every write into it, and must not make a new container each time.
    for identity in &mut ctx.mount_identities {
        identity.ctime = (0, 0);
    }
    let mut plan = plan_holder(spec, &ctx, &holder);
    plan.labels.clear();
    // The holder's own directories differ per container; the key is about everything else.
    plan.binds
        .retain(|b| b.target != OUT_TARGET && b.target != IO_TARGET && b.target != EGRESS_TARGET);
    // Mount order is not configuration: a run with secrets adds the secrets tmpfs earlier.
    plan.tmpfs.sort_by(|a, b| a.target.cmp(&b.target));
    plan.binds.sort_by(|a, b| a.target.cmp(&b.target));
    let identities: Vec<(&str, u64, u64)> = ctx
        .mount_identities
        .iter()
        .map(|m| (m.target.as_str(), m.dev, m.ino))
        .collect();
    fnv1a_hex(format!("{image_id}\n{plan:?}\n{identities:?}").as_bytes())
}

fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// One run as the supervisor receives it (with the secrets and input added by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The image's entrypoint, then the command.
    pub argv: Vec<String>,
    /// `KEY=VALUE`; never a secret (secrets are added to the frame separately).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// The FIFOs inside the container for the command's stdout and stderr.
    pub stdout: String,
    pub stderr: String,
}

/// Where one run's FIFOs live inside a held container.
pub fn run_io_paths(run_id: &str) -> (String, String) {
    (
        format!("{IO_TARGET}/{run_id}.stdout"),
        format!("{IO_TARGET}/{run_id}.stderr"),
    )
}

/// One run's `$BERTH_OUT` inside a held container.
pub fn run_out_target(run_id: &str) -> String {
    format!("{OUT_TARGET}/{run_id}")
}

/// The run request for `spec` in a held container: the same argv, environment and working
/// directory a cold container would have had, with the run's own `$BERTH_OUT` and FIFOs.
pub fn run_request(spec: &RunSpec, ctx: &PlanContext) -> RunRequest {
    let cold = plan::plan_container(spec, ctx);
    let mut argv = ctx.image_entrypoint.clone();
    argv.extend(spec.command.iter().cloned());
    let env = cold
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| {
            let v = if k == "BERTH_OUT" {
                run_out_target(&ctx.run_id)
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect();
    let (stdout, stderr) = run_io_paths(&ctx.run_id);
    RunRequest {
        argv,
        env,
        cwd: cold.working_dir,
        stdout,
        stderr,
    }
}

/// A held container as berth sees it when deciding what to evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldState {
    pub name: String,
    /// Seconds since the Unix epoch of the last run's end (or the creation).
    pub last_used: i64,
    /// A run holds it right now.
    pub busy: bool,
}

/// The persistent containers to remove: idle ones past `ttl`, then the least recently used idle
/// ones until a new container fits under `max` (`making_room`). Busy containers are never chosen.
pub fn persistent_evictions(
    containers: &[HeldState],
    max: u32,
    ttl: Duration,
    now: i64,
    making_room: bool,
) -> Vec<String> {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut evict: Vec<String> = containers
        .iter()
        .filter(|c| !c.busy && now.saturating_sub(c.last_used) > ttl)
        .map(|c| c.name.clone())
        .collect();
    let mut remaining: Vec<&HeldState> = containers
        .iter()
        .filter(|c| !evict.contains(&c.name))
        .collect();
    remaining.sort_by_key(|c| c.last_used);
    let limit = if making_room {
        max.saturating_sub(1)
    } else {
        max
    } as usize;
    let mut count = remaining.len();
    for c in remaining {
        if count <= limit {
            break;
        }
        if !c.busy {
            evict.push(c.name.clone());
            count -= 1;
        }
    }
    evict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::*;

    fn spec() -> RunSpec {
        crate::plan::tests::spec()
    }

    fn ctx(run_id: &str) -> PlanContext {
        PlanContext {
            run_id: run_id.into(),
            invoking_uid: 1000,
            invoking_gid: 1000,
            image_entrypoint: vec!["/entry".into()],
            image_home: None,
            home_owned: true,
            workspace: "/home/u/proj".into(),
            mounts: vec![],
            mount_identities: Vec::new(),
            shim_host_path: "/cache/shim".into(),
            out_host_path: format!("/state/held/{run_id}/out").into(),
            io_host_path: Some(format!("/state/held/{run_id}/io").into()),
            setup_frame: true,
            state_dir_in_workspace: None,
            owner_labels: Default::default(),
            remote_engine: false,
            egress_host_path: None,
            egress_engine_path: None,
        }
    }

    fn holder() -> HolderContext {
        HolderContext {
            name: "berth-claude--fixer".into(),
            kind: HeldKind::Persistent,
            key: "k1".into(),
            agent: Some("claude".into()),
            dir: "/state/held/berth-claude--fixer".into(),
        }
    }

    #[test]
    fn holder_keeps_the_hardening_and_holds() {
        let cold = plan::plan_container(&spec(), &ctx("r1"));
        let held = plan_holder(&spec(), &ctx("r1"), &holder());
        assert_eq!(
            held.entrypoint,
            ["/berth/shim", "--serve", "--sweep", "--run-as=1000:1000"]
        );
        assert!(!held.stdin_once && cold.stdin_once);
        assert!(!held.init && cold.init, "the supervisor is PID 1");
        assert!(held.cmd.is_empty());
        assert_eq!(held.name, "berth-claude--fixer");
        assert_eq!(held.cap_drop, cold.cap_drop);
        assert_eq!(held.security_opt, cold.security_opt);
        // The supervisor is root with two capabilities; each command is the cold run's user.
        assert_eq!(cold.user, "1000:1000");
        assert_eq!(held.user, "0:0");
        assert_eq!(held.cap_add, ["SETUID", "SETGID"]);
        assert!(cold.cap_add.is_empty());
        assert_eq!(held.memory_bytes, cold.memory_bytes);
        assert_eq!(held.memory_swap_bytes, cold.memory_swap_bytes);
        assert_eq!(held.nano_cpus, cold.nano_cpus);
        assert_eq!(held.pids_limit, cold.pids_limit);
        assert_eq!(held.sysctls, cold.sysctls);
        assert!(held.private_cgroup_namespace);
        assert_eq!(held.read_only_rootfs, cold.read_only_rootfs);
        assert_eq!(held.network, cold.network);
        // Nothing of the run stays in the container's configuration.
        assert!(
            held.env.iter().all(|e| e.starts_with("HOME=")),
            "{:?}",
            held.env
        );
        assert!(!held.labels.contains_key(labels::RUN_ID));
        assert_eq!(held.labels[labels::HELD], "persistent");
        assert_eq!(held.labels[labels::HELD_AGENT], "claude");
        assert!(held.tmpfs.iter().any(|t| t.target == SECRETS_TARGET));
    }

    #[test]
    fn the_run_request_carries_the_run() {
        let run = run_request(&spec(), &ctx("r7"));
        assert_eq!(run.argv, ["/entry", "echo", "$HOME; rm -rf /"]);
        assert!(run.env.contains(&("A".into(), "1".into())));
        assert!(run.env.contains(&("BERTH_RUN_ID".into(), "r7".into())));
        assert!(run
            .env
            .contains(&("BERTH_OUT".into(), "/berth/out/r7".into())));
        assert_eq!(run.cwd, "/workspace");
        assert_eq!(
            (run.stdout.as_str(), run.stderr.as_str()),
            ("/berth/io/r7.stdout", "/berth/io/r7.stderr")
        );
    }

    #[test]
    fn key_follows_the_container_not_the_run() {
        let base = held_key(&spec(), &ctx("r1"), "sha256:a");
        // Another run, other env, other command: the same container will do.
        let mut other = spec();
        other.env = vec![("B".into(), "2".into())];
        other.command = vec!["true".into()];
        assert_eq!(held_key(&other, &ctx("r2"), "sha256:a"), base);
        // Another image content, memory, workspace or network: not the same container.
        assert_ne!(held_key(&spec(), &ctx("r1"), "sha256:b"), base);
        let mut more = spec();
        more.resources.memory_bytes *= 2;
        assert_ne!(held_key(&more, &ctx("r1"), "sha256:a"), base);
        let mut elsewhere = ctx("r1");
        elsewhere.workspace = "/home/u/other".into();
        assert_ne!(held_key(&spec(), &elsewhere, "sha256:a"), base);
        // Secrets travel per run: a run with secrets fits a container made without.
        let mut secret = spec();
        secret.secrets = vec!["TOKEN".into()];
        assert_eq!(held_key(&secret, &ctx("r3"), "sha256:a"), base);
        let mut net = spec();
        net.network = NetworkMode::Bridge;
        assert_ne!(held_key(&net, &ctx("r1"), "sha256:a"), base);
        // gVisor is another container; under it a mount's change time is what the shim checks,
        // yet a write into the mount is not another container, another inode is.
        let mut gvisor = spec();
        gvisor.isolation = Isolation::Gvisor;
        assert_ne!(held_key(&gvisor, &ctx("r1"), "sha256:a"), base);
        let mounted = |ino: u64, ctime: i64| {
            let mut c = ctx("r1");
            c.mount_identities = vec![crate::plan::MountIdentity {
                target: "/workspace".into(),
                dev: 1,
                ino,
                ctime: (ctime, 0),
            }];
            held_key(&gvisor, &c, "sha256:a")
        };
        assert_eq!(mounted(7, 100), mounted(7, 200));
        assert_ne!(mounted(7, 100), mounted(8, 100));
        let plan = plan_holder(
            &gvisor,
            &ctx("r1"),
            &HolderContext {
                name: "h".into(),
                kind: HeldKind::Pool,
                key: "k".into(),
                agent: None,
                dir: "/state/held/h".into(),
            },
        );
        assert_eq!(plan.runtime.as_deref(), Some("runsc"));
    }

    fn held(name: &str, last_used: i64, busy: bool) -> HeldState {
        HeldState {
            name: name.into(),
            last_used,
            busy,
        }
    }

    #[test]
    fn eviction_takes_expired_then_least_recently_used_idle() {
        let ttl = Duration::from_secs(100);
        let list = [
            held("a", 10, false),
            held("b", 50, false),
            held("c", 90, true),
        ];
        // Nothing expired, under the limit: nothing goes.
        assert!(persistent_evictions(&list, 4, ttl, 100, true).is_empty());
        // Making room at the limit: the least recently used idle one goes.
        assert_eq!(persistent_evictions(&list, 3, ttl, 100, true), ["a"]);
        assert_eq!(persistent_evictions(&list, 2, ttl, 100, true), ["a", "b"]);
        // Busy ones are never evicted, even if that leaves the limit exceeded.
        assert_eq!(persistent_evictions(&list, 1, ttl, 100, true), ["a", "b"]);
        // Expired idle ones go whatever the limit.
        assert_eq!(persistent_evictions(&list, 9, ttl, 140, false), ["a"]);
        assert_eq!(persistent_evictions(&list, 9, ttl, 1000, false), ["a", "b"]);
    }

    #[test]
    fn lifecycle_from_flags_and_profile() {
        let profiles = crate::profile::resolve_all(crate::profile::builtins("0.1.0"), &[]).unwrap();
        let claude = crate::profile::find(&profiles, "claude-code").unwrap();
        assert_eq!(persistent_for(None, None, Some(claude)), Ok(None));
        let p = persistent_for(None, Some("builder"), Some(claude))
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.agent.as_str(), p.name.as_str()),
            ("claude-code", "builder")
        );
        assert_eq!(p.max_containers, claude.max_containers);
        let p = persistent_for(Some("persistent"), None, None)
            .unwrap()
            .unwrap();
        assert_eq!((p.agent.as_str(), p.name.as_str()), ("default", "default"));
        assert_eq!(p.idle_ttl, DEFAULT_PERSISTENT_TTL);
        let field = |r: Result<Option<PersistentSpec>, (LifecycleField, String)>| r.unwrap_err().0;
        assert_eq!(
            field(persistent_for(Some("forever"), None, None)),
            LifecycleField::Lifecycle
        );
        assert_eq!(
            field(persistent_for(Some("ephemeral"), Some("x"), None)),
            LifecycleField::Name
        );
        assert_eq!(
            field(persistent_for(None, Some("a b"), None)),
            LifecycleField::Name
        );
    }

    #[test]
    fn names() {
        assert!(check_name("--name", "fixer_2").is_ok());
        for bad in ["", "-x", "a--b", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name("--name", bad).is_err(), "{bad}");
        }
        assert_eq!(
            persistent_container_name("claude-code", "fixer"),
            "berth-claude-code--fixer"
        );
    }
}
