//! What a user asked for: one sandboxed run, before any engine is involved.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the sandboxed command sees the workspace, and whether it may write there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    /// The workspace is bind-mounted read-write: the command changes the user's files.
    #[default]
    Rw,
    /// Bind-mounted read-only.
    Ro,
    /// No workspace at all.
    None,
    /// Uploaded into the container through the archive API (no bind mount, so it works with
    /// remote engines); the changed tree is downloaded into the run directory afterwards.
    Copy,
    /// A fresh `git worktree` of HEAD on a branch `berth/<run-id>`, bind-mounted; the user's
    /// checkout is not touched and the changes come back as a patch.
    Worktree,
}

impl WorkspaceMode {
    /// Whether the user's own directory is bind-mounted (so the state directory in it must be
    /// masked).
    pub fn mounts_user_directory(self) -> bool {
        matches!(self, Self::Rw | Self::Ro)
    }

    /// Whether the run works on its own copy of the workspace and hands back a diff.
    pub fn is_isolated(self) -> bool {
        matches!(self, Self::Copy | Self::Worktree)
    }
}

impl std::fmt::Display for WorkspaceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rw => "rw",
            Self::Ro => "ro",
            Self::None => "none",
            Self::Copy => "copy",
            Self::Worktree => "worktree",
        })
    }
}

/// The largest workspace copy mode uploads unless told otherwise.
pub const DEFAULT_COPY_LIMIT: u64 = 1 << 30;

/// A run's timeout when nothing sets one (`berth run`, the runner, trust's comparisons).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The grace between SIGTERM and SIGKILL when nothing sets one.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn default_copy_limit() -> u64 {
    DEFAULT_COPY_LIMIT
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rw" => Ok(Self::Rw),
            "ro" => Ok(Self::Ro),
            "none" => Ok(Self::None),
            "copy" => Ok(Self::Copy),
            "worktree" => Ok(Self::Worktree),
            other => Err(format!(
                "unknown workspace mode `{other}`: expected rw, ro, none, copy or worktree"
            )),
        }
    }
}

/// When to pull the image from its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    #[default]
    Missing,
    Always,
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "missing" => Ok(Self::Missing),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown pull policy `{other}`: expected missing, always or never"
            )),
        }
    }
}

/// A value of a run's spec (a flag, a config key, an API field) that does not parse; the
/// message quotes it and says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("empty network name: expected none, bridge or a network name")]
    EmptyNetwork,
    #[error("network `host` is refused: it would share the host's network namespace; expected none, bridge or a user-defined network")]
    HostNetwork,
    #[error("network `{0}` is refused: it would share another container's namespace; expected none, bridge or a user-defined network")]
    ContainerNetwork(String),
    #[error("invalid user `{0}`: expected a numeric UID or UID:GID, each below 4294967295 (e.g. 1000 or 1000:1000)")]
    User(String),
    #[error("invalid port `{0}`: expected CPORT or CPORT:HPORT with ports 1-65535 (e.g. 8080 or 80:8080)")]
    Port(String),
    #[error("invalid mount `{mount}`: {problem}; expected SRC:DST[:ro|rw] (e.g. ./data:/data:ro)")]
    Mount {
        mount: String,
        problem: MountProblem,
    },
    #[error("invalid environment variable name `{0}`: expected letters, digits and `_`, not starting with a digit")]
    EnvName(String),
    #[error("invalid environment entry `{0}`: expected KEY=VALUE")]
    EnvEntry(String),
}

/// What is wrong with a `SRC:DST[:ro|rw]` mount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountProblem {
    #[error("mode `{0}` is neither ro nor rw")]
    Mode(String),
    #[error("wrong number of `:`-separated parts")]
    Parts,
    #[error("the source is empty")]
    EmptySource,
    #[error("the destination is empty")]
    EmptyTarget,
}

/// The network the sandbox joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum NetworkMode {
    /// Only a loopback interface: nothing leaves the sandbox.
    #[default]
    None,
    /// The engine's default bridge.
    Bridge,
    /// A user-defined network that must already exist.
    Named(String),
}

impl NetworkMode {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "none" => Ok(Self::None),
            "bridge" => Ok(Self::Bridge),
            "" => Err(SpecError::EmptyNetwork),
            // Sharing the host's or another container's namespace defeats the sandbox.
            "host" => Err(SpecError::HostNetwork),
            other if other.starts_with("container:") => {
                Err(SpecError::ContainerNetwork(other.to_string()))
            }
            other => Ok(Self::Named(other.to_string())),
        }
    }

    /// The value the engine understands as `NetworkMode`.
    pub fn engine_name(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Bridge => "bridge",
            Self::Named(name) => name,
        }
    }
}

/// How strongly the sandbox is isolated from the host's kernel: the container runtime the engine
/// runs it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// The engine's default runtime (runc on a stock engine): namespaces, cgroups and seccomp
    /// over the host's kernel.
    #[default]
    Runc,
    /// gVisor (`runsc`): the sandbox's system calls are served by gVisor's own kernel in user
    /// space, so a host kernel bug is not one step from a host escape.
    Gvisor,
}

/// The engine runtime for gVisor on a run without a network (`--network=none` in its
/// `runtimeArgs`).
pub const GVISOR_RUNTIME: &str = "runsc";
/// The engine runtime for gVisor on a run with a network (`--network=host`: gVisor uses the
/// container's own network namespace, which the engine set up).
pub const GVISOR_NET_RUNTIME: &str = "runsc-net";

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Gvisor => "gvisor",
        }
    }

    /// The engine runtime for a container on `network` (its engine name); `None`: the engine's
    /// default runtime.
    pub fn runtime(self, network: &str) -> Option<&'static str> {
        match self {
            Self::Runc => None,
            Self::Gvisor if network == "none" => Some(GVISOR_RUNTIME),
            Self::Gvisor => Some(GVISOR_NET_RUNTIME),
        }
    }

    /// The runner tag that says an engine offers this isolation (`isolation:gvisor`); `None`
    /// for the default, which every engine has.
    pub fn tag(self) -> Option<String> {
        (self != Self::Runc).then(|| format!("isolation:{}", self.as_str()))
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "runc" => Ok(Self::Runc),
            "gvisor" => Ok(Self::Gvisor),
            other => Err(format!(
                "unknown isolation `{other}`: expected runc or gvisor"
            )),
        }
    }
}

/// A uid with an optional gid, as given to `--user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: Option<u32>,
}

impl UserSpec {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let err = || SpecError::User(s.to_string());
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        // 4294967295 is no id: the kernel's "unchanged" for setresuid(2) and friends.
        let id = |text: &str| match text.parse::<u32>() {
            Ok(id) if id != u32::MAX => Ok(id),
            _ => Err(err()),
        };
        let uid = id(uid)?;
        let gid = gid.map(id).transpose()?;
        Ok(Self { uid, gid })
    }
}

/// A port published on the host's loopback interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPublish {
    pub container_port: u16,
    /// `None` lets the engine pick a free host port.
    pub host_port: Option<u16>,
}

impl PortPublish {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let err = || SpecError::Port(s.to_string());
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(err);
        match s.split_once(':') {
            Some((c, h)) => Ok(Self {
                container_port: port(c)?,
                host_port: Some(port(h)?),
            }),
            None => Ok(Self {
                container_port: port(s)?,
                host_port: None,
            }),
        }
    }
}

/// A requested extra mount, as written by the user (`SRC:DST[:ro|rw]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

impl MountRequest {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let err = |problem| SpecError::Mount {
            mount: s.to_string(),
            problem,
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, true),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            [_, _, mode] => return Err(err(MountProblem::Mode(mode.to_string()))),
            _ => return Err(err(MountProblem::Parts)),
        };
        if source.is_empty() {
            return Err(err(MountProblem::EmptySource));
        }
        if target.is_empty() {
            return Err(err(MountProblem::EmptyTarget));
        }
        Ok(Self {
            source: PathBuf::from(source),
            target: target.to_string(),
            read_only,
        })
    }
}

/// Resource limits applied to the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: u64,
    pub nano_cpus: i64,
    pub pids: i64,
    /// `--disk`: the container's writable layer at most this many bytes (the engine's storage
    /// quota); `None`: no disk limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            nano_cpus: 2_000_000_000,
            pids: 512,
            disk_bytes: None,
        }
    }
}

/// Where berth may fall back to when the sandbox cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Never run outside a sandbox.
    #[default]
    None,
    /// Run on the host, but only when Docker is not installed at all.
    Local,
}

impl std::str::FromStr for Fallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "local" => Ok(Self::Local),
            other => Err(format!(
                "unknown fallback `{other}`: expected none or local"
            )),
        }
    }
}

/// Everything a user asked for in one run. Stored verbatim in `run.json`, so it holds secret
/// *names* only, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub image: String,
    pub command: Vec<String>,
    pub pull: PullPolicy,
    pub workspace: PathBuf,
    pub workspace_mode: WorkspaceMode,
    /// Worktree mode: carry the checkout's uncommitted changes (tracked and untracked, not
    /// ignored) into the worktree.
    #[serde(default)]
    pub include_dirty: bool,
    /// Worktree and copy modes: the commit the workspace is made from, instead of HEAD
    /// (worktree) or the checkout's files as they are (copy): a submission's `git_ref`, as the
    /// runner resolved it in the project's checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_commit: Option<String>,
    /// Copy mode: the most bytes of file content uploaded.
    #[serde(default = "default_copy_limit")]
    pub copy_limit_bytes: u64,
    pub mounts: Vec<MountRequest>,
    pub env: Vec<(String, String)>,
    pub secrets: Vec<String>,
    pub resources: Resources,
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    #[serde(with = "duration_secs")]
    pub grace: Duration,
    pub network: NetworkMode,
    /// Egress through berth's proxy (`--egress`, `--allow-host`, `[egress]`, the profile).
    #[serde(default, skip_serializing_if = "crate::spec::egress_is_default")]
    pub egress: crate::egress::EgressSpec,
    /// The container runtime: runc (the engine's default) or gVisor.
    #[serde(default, skip_serializing_if = "crate::spec::is_default_isolation")]
    pub isolation: Isolation,
    pub read_only: bool,
    pub user: Option<UserSpec>,
    pub publish: Vec<PortPublish>,
    pub artifacts: Vec<String>,
    pub keep: bool,
    pub fallback: Fallback,
    /// The working directory inside the sandbox; `None`: /workspace (or / without a workspace).
    #[serde(default)]
    pub workdir: Option<String>,
    /// How stdout is read: `text`, or an agent's format (`claude-stream-json`, `codex-jsonl`).
    #[serde(default = "text_output")]
    pub output_format: String,
    /// The profile the run was made from, if any.
    #[serde(default)]
    pub profile: Option<String>,
    /// Run inside a persistent container instead of a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<crate::held::PersistentSpec>,
}

pub(crate) fn egress_is_default(e: &crate::egress::EgressSpec) -> bool {
    *e == crate::egress::EgressSpec::default()
}

pub(crate) fn is_default_isolation(i: &Isolation) -> bool {
    *i == Isolation::Runc
}

fn text_output() -> String {
    "text".to_string()
}

/// Checks an environment variable name the way POSIX shells accept them.
pub fn check_env_name(name: &str) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(SpecError::EnvName(name.to_string()))
    }
}

/// Parses `--env K=V`.
pub fn parse_env(s: &str) -> Result<(String, String), SpecError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| SpecError::EnvEntry(s.to_string()))?;
    check_env_name(k)?;
    Ok((k.to_string(), v.to_string()))
}

pub(crate) mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse() {
        let m = MountRequest::parse("./data:/data").unwrap();
        assert_eq!(
            (m.source.to_str().unwrap(), m.target.as_str(), m.read_only),
            ("./data", "/data", true)
        );
        assert!(!MountRequest::parse("a:/b:rw").unwrap().read_only);
        assert!(MountRequest::parse("a:/b:ro").unwrap().read_only);
        assert!(MountRequest::parse("a:/b:rx")
            .unwrap_err()
            .to_string()
            .contains("`rx`"));
        assert!(MountRequest::parse("a")
            .unwrap_err()
            .to_string()
            .contains("SRC:DST"));
        assert!(MountRequest::parse(":/b").is_err());
    }

    #[test]
    fn users_parse() {
        assert_eq!(
            UserSpec::parse("1000").unwrap(),
            UserSpec {
                uid: 1000,
                gid: None
            }
        );
        assert_eq!(
            UserSpec::parse("0:0").unwrap(),
            UserSpec {
                uid: 0,
                gid: Some(0)
            }
        );
        assert!(UserSpec::parse("root")
            .unwrap_err()
            .to_string()
            .contains("numeric"));
        // The largest u32 is setresuid's "unchanged", no id; it used to reach a chown's assert.
        for bad in ["4294967295", "1000:4294967295", "4294967296"] {
            assert!(
                UserSpec::parse(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("each below 4294967295"),
                "{bad}"
            );
        }
        assert_eq!(UserSpec::parse("4294967294").unwrap().uid, 4294967294);
    }

    #[test]
    fn ports_parse() {
        assert_eq!(
            PortPublish::parse("80").unwrap(),
            PortPublish {
                container_port: 80,
                host_port: None
            }
        );
        assert_eq!(PortPublish::parse("80:8080").unwrap().host_port, Some(8080));
        assert!(PortPublish::parse("0").is_err());
        assert!(PortPublish::parse("70000").is_err());
    }

    #[test]
    fn networks_parse() {
        assert_eq!(NetworkMode::parse("none").unwrap(), NetworkMode::None);
        assert_eq!(
            NetworkMode::parse("mynet").unwrap(),
            NetworkMode::Named("mynet".into())
        );
        assert!(NetworkMode::parse("host")
            .unwrap_err()
            .to_string()
            .contains("refused"));
        assert!(NetworkMode::parse("container:abc").is_err());
    }

    #[test]
    fn workspace_modes_parse_and_print() {
        for text in ["rw", "ro", "none", "copy", "worktree"] {
            let mode: WorkspaceMode = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
        let err = "cp".parse::<WorkspaceMode>().unwrap_err();
        assert!(
            err.contains("`cp`") && err.contains("copy or worktree"),
            "{err}"
        );
        assert!(WorkspaceMode::Rw.mounts_user_directory());
        assert!(!WorkspaceMode::Copy.mounts_user_directory());
        assert!(WorkspaceMode::Worktree.is_isolated() && !WorkspaceMode::Ro.is_isolated());
    }

    #[test]
    fn isolation_parses_and_maps_to_runtimes() {
        for text in ["runc", "gvisor"] {
            assert_eq!(text.parse::<Isolation>().unwrap().to_string(), text);
        }
        let err = "kata".parse::<Isolation>().unwrap_err();
        assert!(
            err.contains("`kata`") && err.contains("runc or gvisor"),
            "{err}"
        );
        assert_eq!(Isolation::Runc.runtime("none"), None);
        assert_eq!(Isolation::Runc.runtime("bridge"), None);
        assert_eq!(Isolation::Gvisor.runtime("none"), Some("runsc"));
        assert_eq!(Isolation::Gvisor.runtime("bridge"), Some("runsc-net"));
        assert_eq!(Isolation::Gvisor.runtime("mynet"), Some("runsc-net"));
        assert_eq!(Isolation::Gvisor.tag().as_deref(), Some("isolation:gvisor"));
        assert_eq!(Isolation::Runc.tag(), None);
    }

    #[test]
    fn env_entries() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("A").is_err());
        assert!(parse_env("1A=x").is_err());
        assert!(parse_env("A-B=x").is_err());
    }
}
