//! Errors of the sandbox layer. A sandboxed command's non-zero exit is not one of them: that is
//! data, carried in the run record.

use std::path::PathBuf;

use berth_core::config::ConfigError;
use berth_core::policy::PolicyError;
use berth_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret `{name}`: the host environment variable {name} is not set")]
    SecretMissing { name: String },
    #[error("image `{image}` is not present locally and {why}")]
    ImageUnavailable { image: String, why: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no run matches `{0}`")]
    NoSuchRun(String),
    #[error("`{prefix}` matches several runs: {candidates}")]
    AmbiguousRun { prefix: String, candidates: String },
    /// A problem (bad input included) with an obvious remedy, carried along.
    #[error("{message}")]
    WithHint { message: String, hint: String },
}

impl SandboxError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A short hint telling the user what to do, when there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Policy(PolicyError::OutsideAllowedRoots { .. }) => Some(
                "add the directory to `allowed_paths` in berth.toml, or move it into the workspace"
                    .into(),
            ),
            Self::Policy(PolicyError::HomeDirectory { .. }) => {
                Some("run berth from a project directory, or pass --workspace DIR".into())
            }
            Self::SecretMissing { name } => {
                Some(format!("export {name}=... in the shell that runs berth"))
            }
            Self::ImageUnavailable { image, .. } => Some(
                match berth_core::profile::image_build_command(image, env!("CARGO_PKG_VERSION")) {
                    Some(command) => format!("berth builds its own images: `{command}`"),
                    None => format!(
                        "build it locally (`docker build -t {image} .`) or make its registry reachable"
                    ),
                },
            ),
            Self::Engine(EngineError::NoSuchNetwork(name)) => Some(format!(
                "create it first (`docker network create {name}`) or use --network none|bridge"
            )),
            Self::Engine(EngineError::DiskQuotaUnsupported(_)) => Some(
                "drop --disk (and `disk` from berth.toml or the profile), or use an engine whose storage driver has a quota; `berth doctor` says whether this one has"
                    .into(),
            ),
            Self::WithHint { hint, .. } => Some(hint.clone()),
            Self::Workspace(e) => e.hint(),
            Self::NoSuchRun(_) => Some("`berth ls` lists the runs of this state directory".into()),
            _ => None,
        }
    }
}
