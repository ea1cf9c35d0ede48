//! A scripted, recording stand-in for the container engine, so the orchestration in `run.rs`
//! can be tested without Docker.
//!
//! The script says how each call behaves; the fake logs every call (`"kill SIGTERM"`, `"remove"`,
//! ...) so tests can assert the sequence, and keeps what was written to the container's stdin.
//! Errors are scripted as `fn() -> EngineError` because [`EngineError`] is not `Clone`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_core::event::Stream;
use berth_core::plan::ContainerPlan;
use berth_engine::{
    Attached, ContainerSummary, Engine, EngineError, ExitInfo, ImageInfo, OutputChunk, PullProgress,
};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::AsyncWrite;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub type ScriptedError = fn() -> EngineError;

/// When the container's command ends (and with it `wait` and the attached output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitWhen {
    /// As soon as berth waits for it.
    AtOnce,
    /// Once berth sent this signal; SIGKILL always ends it too, as it cannot be ignored.
    OnSignal(&'static str),
}

/// How the fake engine behaves. `Script::default()` is a command that prints nothing and
/// exits 0 at once from an image that is present.
pub struct Script {
    pub image_present: bool,
    /// `None`: the pull succeeds and the image is present afterwards.
    pub pull_error: Option<ScriptedError>,
    /// Networks that exist besides the built-in ones.
    pub networks: Vec<&'static str>,
    pub create_error: Option<ScriptedError>,
    pub start_error: Option<ScriptedError>,
    /// Emitted on attach; the stream then stays open until the command ends, as Docker's does.
    pub output: Vec<OutputChunk>,
    pub exit_when: ExitWhen,
    /// What `wait` returns when the command ends: its exit code, or an error.
    pub wait_error: Option<ScriptedError>,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// How many `remove` calls fail before one succeeds.
    pub remove_failures: usize,
    /// The container stays listed as running whatever berth does (a kill the engine never
    /// carried out).
    pub never_stops: bool,
    /// The storage driver and backing file system `storage` reports.
    pub storage: (&'static str, Option<&'static str>),
    /// The runtimes `runtimes` reports, with their arguments.
    pub runtimes: Vec<(&'static str, Vec<&'static str>)>,
    /// The machine architecture `architecture` reports.
    pub architecture: &'static str,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            image_present: true,
            pull_error: None,
            networks: Vec::new(),
            create_error: None,
            start_error: None,
            output: Vec::new(),
            exit_when: ExitWhen::AtOnce,
            wait_error: None,
            exit_code: 0,
            oom_killed: false,
            remove_failures: 0,
            never_stops: false,
            storage: ("overlay2", Some("extfs")),
            runtimes: vec![("runc", Vec::new())],
            architecture: std::env::consts::ARCH,
        }
    }
}

pub const CONTAINER_ID: &str = "c0ffee";

pub struct FakeEngine {
    script: Script,
    calls: Mutex<Vec<String>>,
    image_present: Mutex<bool>,
    remove_failures: Mutex<usize>,
    /// Signals sent so far; `wait` and the output stream watch it to know when the command ends.
    signals: watch::Sender<Vec<String>>,
    /// Signals with the (tokio) time since `start`, for timing assertions on a paused clock.
    kills: Mutex<Vec<(String, Duration)>>,
    started_at: Mutex<Option<Instant>>,
    /// Notified when `start` succeeds, so a test can interrupt a running command.
    pub started: Notify,
    stdin: Arc<Mutex<StdinLog>>,
    plan: Mutex<Option<ContainerPlan>>,
}

/// What berth wrote to the container's stdin, and whether it closed it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StdinLog {
    pub data: Vec<u8>,
    pub closed: bool,
}

impl FakeEngine {
    pub fn new(script: Script) -> Self {
        Self {
            image_present: Mutex::new(script.image_present),
            remove_failures: Mutex::new(script.remove_failures),
            script,
            calls: Mutex::default(),
            signals: watch::Sender::new(Vec::new()),
            kills: Mutex::default(),
            started_at: Mutex::default(),
            started: Notify::new(),
            stdin: Arc::default(),
            plan: Mutex::default(),
        }
    }

    /// Every call so far, in order: the method name, plus the signal for `kill` and the path for
    /// `download`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn called(&self, name: &str) -> bool {
        self.calls().iter().any(|c| c == name)
    }

    /// Each signal sent, with how long after `start` it was sent.
    pub fn kills(&self) -> Vec<(String, Duration)> {
        self.kills.lock().unwrap().clone()
    }

    pub fn stdin(&self) -> StdinLog {
        self.stdin.lock().unwrap().clone()
    }

    /// The plan berth asked to create.
    pub fn plan(&self) -> Option<ContainerPlan> {
        self.plan.lock().unwrap().clone()
    }

    fn log(&self, call: impl Into<String>) {
        self.calls.lock().unwrap().push(call.into());
    }

    /// Resolves once the scripted command has ended.
    fn exited(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut signals = self.signals.subscribe();
        let when = self.script.exit_when;
        async move {
            let ended = |sent: &Vec<String>| match when {
                ExitWhen::AtOnce => true,
                ExitWhen::OnSignal(target) => sent.iter().any(|s| s == target || s == "SIGKILL"),
            };
            // The sender lives as long as the fake, which outlives the run.
            let _ = signals.wait_for(ended).await;
        }
    }
}

impl Engine for FakeEngine {
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        self.log("inspect_image");
        Ok((*self.image_present.lock().unwrap()).then(|| ImageInfo {
            id: format!("sha256:{image}"),
            entrypoint: Vec::new(),
            env: vec!["HOME=/home/agent".into()],
            user: Some("agent".into()),
        }))
    }

    async fn pull_image(
        &self,
        _image: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<(), EngineError> {
        self.log("pull_image");
        if let Some(error) = self.script.pull_error {
            return Err(error());
        }
        progress(PullProgress {
            layer: Some("l1".into()),
            status: "Downloading".into(),
            current: Some(1),
            total: Some(1),
        });
        *self.image_present.lock().unwrap() = true;
        Ok(())
    }

    async fn create_container(&self, plan: &ContainerPlan) -> Result<String, EngineError> {
        self.log("create");
        *self.plan.lock().unwrap() = Some(plan.clone());
        match self.script.create_error {
            Some(error) => Err(error()),
            None => Ok(CONTAINER_ID.into()),
        }
    }

    async fn attach(&self, _id: &str) -> Result<Attached, EngineError> {
        self.log("attach");
        let chunks = self.script.output.clone().into_iter().map(Ok);
        // Docker's attach stream ends when the container does; the empty tail models that.
        let until_exit = stream::once(self.exited()).filter_map(|()| async { None });
        Ok(Attached {
            output: stream::iter(chunks).chain(until_exit).boxed(),
            input: Box::pin(StdinWriter(self.stdin.clone())),
        })
    }

    async fn start(&self, _id: &str) -> Result<(), EngineError> {
        self.log("start");
        if let Some(error) = self.script.start_error {
            return Err(error());
        }
        *self.started_at.lock().unwrap() = Some(Instant::now());
        self.started.notify_one();
        Ok(())
    }

    async fn wait(&self, _id: &str) -> Result<i64, EngineError> {
        self.log("wait");
        self.exited().await;
        match self.script.wait_error {
            Some(error) => Err(error()),
            None => Ok(self.script.exit_code),
        }
    }

    async fn kill(&self, _id: &str, signal: &str) -> Result<(), EngineError> {
        self.log(format!("kill {signal}"));
        let since_start = self
            .started_at
            .lock()
            .unwrap()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        self.kills
            .lock()
            .unwrap()
            .push((signal.to_string(), since_start));
        self.signals
            .send_modify(|sent| sent.push(signal.to_string()));
        Ok(())
    }

    async fn architecture(&self) -> Result<String, EngineError> {
        self.log("architecture");
        Ok(self.script.architecture.to_string())
    }

    async fn storage(&self) -> Result<berth_core::disk::Storage, EngineError> {
        self.log("storage");
        let (driver, backing_fs) = self.script.storage;
        Ok(berth_core::disk::Storage {
            driver: driver.into(),
            backing_fs: backing_fs.map(str::to_string),
        })
    }

    async fn inspect_exit(&self, _id: &str) -> Result<ExitInfo, EngineError> {
        self.log("inspect_exit");
        Ok(ExitInfo {
            exit_code: self.script.exit_code,
            oom_killed: self.script.oom_killed,
            error: None,
        })
    }

    async fn remove(&self, _id: &str) -> Result<(), EngineError> {
        self.log("remove");
        let mut failures = self.remove_failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(EngineError::Refused {
                status: 409,
                message: "removal of container is already in progress".into(),
            });
        }
        Ok(())
    }

    fn download(&self, _id: &str, path: &str) -> BoxStream<'static, Result<Bytes, EngineError>> {
        self.log(format!("download {path}"));
        let error = EngineError::Refused {
            status: 404,
            message: format!("could not find the file {path} in container"),
        };
        stream::iter([Err(error)]).boxed()
    }

    async fn upload(
        &self,
        _id: &str,
        path: &str,
        mut tar: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), EngineError> {
        self.log(format!("upload {path}"));
        // Read the whole body, as the engine does, so a producer's error surfaces here.
        while let Some(chunk) = tar.next().await {
            chunk.map_err(|e| EngineError::Connection(e.to_string()))?;
        }
        Ok(())
    }

    async fn runtimes(&self) -> Result<Vec<berth_core::runtime::EngineRuntime>, EngineError> {
        self.log("runtimes");
        Ok(self
            .script
            .runtimes
            .iter()
            .map(|(name, args)| berth_core::runtime::EngineRuntime {
                name: name.to_string(),
                path: None,
                args: args.iter().map(|a| a.to_string()).collect(),
            })
            .collect())
    }

    async fn network_exists(&self, name: &str) -> Result<bool, EngineError> {
        self.log("network_exists");
        Ok(self.script.networks.contains(&name))
    }

    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, EngineError> {
        self.log("list_managed");
        Ok(if self.script.never_stops {
            vec![ContainerSummary {
                id: CONTAINER_ID.to_string(),
                name: "berth-fake".into(),
                labels: Default::default(),
                state: "running".into(),
                created: 0,
            }]
        } else {
            Vec::new()
        })
    }
}

/// The container's stdin: keeps every byte written and notes the end-of-file.
struct StdinWriter(Arc<Mutex<StdinLog>>);

impl AsyncWrite for StdinWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().data.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.lock().unwrap().closed = true;
        Poll::Ready(Ok(()))
    }
}

/// A chunk of stdout, for scripts.
pub fn stdout(text: &str) -> OutputChunk {
    chunk(Stream::Stdout, text)
}

/// A chunk of stderr, for scripts.
pub fn stderr(text: &str) -> OutputChunk {
    chunk(Stream::Stderr, text)
}

fn chunk(stream: Stream, text: &str) -> OutputChunk {
    OutputChunk {
        stream,
        data: Bytes::from(text.to_string()),
    }
}
