//! The seam between berth and a container engine.
//!
//! Architecture Invariant: this is the only crate that talks to a container engine, and it does
//! so through the Engine API (bollard), never by running the docker CLI. Everything above it
//! sees the [`Engine`] trait and berth's own types, never bollard's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use berth_core::event::Stream;
use berth_core::plan::ContainerPlan;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWrite;

pub mod build_context;
pub mod diagnose;
pub mod docker;
pub mod endpoint;
pub mod ssh;
pub mod ssh_egress;
mod sys;

pub use build_context::BuildContext;
pub use diagnose::{Diagnosis, DiagnosisReport};
pub use docker::DockerEngine;
pub use endpoint::{Endpoint, EngineChoice};

/// The oldest Engine API berth speaks; older engines are diagnosed as too old.
pub const MIN_API_VERSION: (u32, u32) = (1, 41);
/// The newest Engine API berth was built against.
pub const MAX_API_VERSION: (u32, u32) = (1, 53);

/// What berth needs to know about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    /// The image's `USER` (a name or uid, maybe with `:group`), when it sets one.
    pub user: Option<String>,
}

impl ImageInfo {
    /// The image's `HOME`, when its configuration sets one.
    pub fn home(&self) -> Option<String> {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix("HOME="))
            .map(str::to_string)
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_code: i64,
    pub oom_killed: bool,
    /// The engine's own error for the container, if any.
    pub error: Option<String>,
}

/// A container berth created, as listed by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    /// `created`, `running`, `exited`, ...
    pub state: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
}

/// A chunk of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: Stream,
    pub data: Bytes,
}

/// Progress of an image pull, one layer at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    pub layer: Option<String>,
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

/// Progress of an image build: one line of the builder's output at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildProgress {
    /// The step being built, as the builder names it (`Step 3/17 : RUN ...`), once known.
    pub step: Option<String>,
    /// The line itself: the step's header or a line the step printed.
    pub message: String,
}

/// One image to build with the engine's classic builder (never BuildKit: no session, no pull).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageBuild {
    /// An uncompressed tar of the build context (see [`BuildContext`]).
    pub context_tar: Vec<u8>,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    /// The stage to build; empty builds the last one.
    pub target: String,
    /// The tag the image gets, `repository:tag`.
    pub tag: String,
    pub build_args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    /// Ignore the engine's layer cache.
    pub no_cache: bool,
}

/// An image present on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub id: String,
    pub tags: Vec<String>,
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created: i64,
    pub labels: HashMap<String, String>,
}

/// The streams of an attached container. Attach before start so no byte is lost.
pub struct Attached {
    pub output: BoxStream<'static, Result<OutputChunk, EngineError>>,
    /// The container's stdin; shut it down to send end-of-file.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// An error from the engine, classified so callers can react and explain.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("image `{0}` is not present on the engine")]
    ImageNotFound(String),
    #[error("pulling image `{image}` failed: {message}")]
    PullFailed { image: String, message: String },
    #[error("no such container `{0}`")]
    NoSuchContainer(String),
    #[error("network `{0}` does not exist on the engine")]
    NoSuchNetwork(String),
    /// `--disk` cannot be had on this engine: the message names the storage driver, its backing
    /// file system and what would work (see `berth_core::disk`).
    #[error("{0}")]
    DiskQuotaUnsupported(String),
    /// The command exists but cannot be executed (permission, not a binary): exit 126.
    #[error("{0}")]
    CannotInvoke(String),
    /// The command was not found in the image: exit 127.
    #[error("{0}")]
    CommandNotFound(String),
    #[error("the engine refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("lost the connection to the engine: {0}")]
    Connection(String),
    #[error("the engine did not answer within {0} seconds")]
    Timeout(u64),
    /// An image build stopped; `step` is the builder's step that failed, when it got that far.
    #[error("{}", build_failed(step.as_deref(), message))]
    BuildFailed {
        step: Option<String>,
        message: String,
    },
}

fn build_failed(step: Option<&str>, message: &str) -> String {
    match step {
        Some(step) => format!("the image build failed at `{step}`: {message}"),
        None => format!("the image build failed: {message}"),
    }
}

type EngineResult<T> = Result<T, EngineError>;

/// What berth needs from a container engine. Implemented by [`DockerEngine`]; a recording fake
/// stands in for unit tests of the orchestration above it.
pub trait Engine: Send + Sync {
    fn inspect_image(
        &self,
        image: &str,
    ) -> impl Future<Output = EngineResult<Option<ImageInfo>>> + Send;
    /// Pulls `image`, reporting progress as it goes.
    fn pull_image(
        &self,
        image: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> impl Future<Output = EngineResult<()>> + Send;
    /// Creates the container described by `plan` and returns its id.
    fn create_container(
        &self,
        plan: &ContainerPlan,
    ) -> impl Future<Output = EngineResult<String>> + Send;
    fn attach(&self, id: &str) -> impl Future<Output = EngineResult<Attached>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = EngineResult<()>> + Send;
    /// Waits until the container is no longer running and returns its exit code.
    fn wait(&self, id: &str) -> impl Future<Output = EngineResult<i64>> + Send;
    /// Sends `signal` (e.g. `SIGTERM`) to the container's init process.
    fn kill(&self, id: &str, signal: &str) -> impl Future<Output = EngineResult<()>> + Send;
    fn inspect_exit(&self, id: &str) -> impl Future<Output = EngineResult<ExitInfo>> + Send;
    /// Removes the container, killing it first if it still runs.
    fn remove(&self, id: &str) -> impl Future<Output = EngineResult<()>> + Send;
    /// Downloads `path` from the container as a tar stream.
    fn download(&self, id: &str, path: &str) -> BoxStream<'static, EngineResult<Bytes>>;
    /// Unpacks the tar stream `tar` into the directory `dir` of a created container (on a
    /// volume when the root file system is read-only). Entries keep the owners and modes their
    /// headers carry, except the entry for `dir` itself (the engine leaves an existing directory
    /// as it is).
    fn upload(
        &self,
        id: &str,
        dir: &str,
        tar: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> impl Future<Output = EngineResult<()>> + Send;
    /// The engine's storage driver and its backing file system (`docker info`), which decide
    /// whether `--disk` can be had (`berth_core::disk::quota_support`).
    fn storage(&self) -> impl Future<Output = EngineResult<berth_core::disk::Storage>> + Send;
    /// The container runtimes the engine offers (`Runtimes` in `docker info`), which decide
    /// whether gVisor can be had (`berth_core::runtime::isolation_problem`).
    fn runtimes(
        &self,
    ) -> impl Future<Output = EngineResult<Vec<berth_core::runtime::EngineRuntime>>> + Send;
    /// The machine architecture of the engine's host (`Architecture` in `docker info`, as
    /// `uname -m` says it), empty when the engine does not say; berth's shim must match it
    /// (`berth_core::engine::shim_architecture_problem`).
    fn architecture(&self) -> impl Future<Output = EngineResult<String>> + Send;
    /// Whether a network of this name (or id) exists.
    fn network_exists(&self, name: &str) -> impl Future<Output = EngineResult<bool>> + Send;
    /// Lists every container carrying the `berth.managed=true` label, running or not.
    fn list_managed(&self) -> impl Future<Output = EngineResult<Vec<ContainerSummary>>> + Send;
    /// How the engine's host is reached when it is an `ssh://` engine: a run's egress sockets
    /// travel the same way ([`ssh_egress`]). `None` for every other engine.
    fn ssh_target(&self) -> Option<&endpoint::SshTarget> {
        None
    }
}
