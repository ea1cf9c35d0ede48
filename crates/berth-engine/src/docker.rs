//! The Docker adapter: [`Engine`] over the Docker Engine API, through bollard.

use std::collections::HashMap;
use std::sync::Arc;

use berth_core::event::Stream;
use berth_core::plan::ContainerPlan;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount,
    MountBindOptions, MountBindOptionsPropagationEnum, MountType, PortBinding, SystemInfo,
    SystemVersion,
};
use bollard::query_parameters::{
    AttachContainerOptions, BuildImageOptions, BuilderVersion, CreateContainerOptions,
    CreateImageOptions, DownloadFromContainerOptions, KillContainerOptions, ListContainersOptions,
    ListImagesOptions, RemoveContainerOptions, RemoveImageOptions, UploadToContainerOptions,
    WaitContainerOptions,
};
use bollard::{ClientVersion, Docker};
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};

use crate::endpoint::{Endpoint, TcpSecurity};
use crate::ssh::SshTunnel;
use crate::{
    Attached, BuildProgress, ContainerSummary, Engine, EngineError, ExitInfo, ImageBuild,
    ImageInfo, LocalImage, OutputChunk, PullProgress, MAX_API_VERSION,
};

/// Seconds bollard waits for the engine to answer a request (headers, not the whole stream).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A connection to a Docker engine, at the API version both sides speak.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    endpoint: Endpoint,
    api_version: (u32, u32),
    /// The ssh forward of a remote engine's socket; it ends when the last clone is dropped.
    #[allow(dead_code)] // held for its Drop
    tunnel: Option<Arc<SshTunnel>>,
}

impl std::fmt::Debug for DockerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerEngine")
            .field("endpoint", &self.endpoint)
            .field("api_version", &self.api_version)
            .finish()
    }
}

/// Parses `1.41` into `(1, 41)`.
pub fn parse_api_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl DockerEngine {
    /// A client for `endpoint` at `version`, without talking to the engine yet. An ssh endpoint
    /// is reached through `tunnel`'s local socket.
    pub fn client(
        endpoint: &Endpoint,
        tunnel: Option<&SshTunnel>,
        version: (u32, u32),
    ) -> Result<Docker, EngineError> {
        let client_version = ClientVersion {
            major_version: version.0 as usize,
            minor_version: version.1 as usize,
        };
        let unix = |path: &std::path::Path| {
            Docker::connect_with_unix(
                &path.to_string_lossy(),
                REQUEST_TIMEOUT_SECS,
                &client_version,
            )
        };
        let docker = match endpoint {
            Endpoint::Unix(path) => unix(path),
            Endpoint::Ssh(_) => match tunnel {
                Some(tunnel) => unix(tunnel.socket()),
                None => {
                    return Err(EngineError::Connection(
                        "an ssh engine needs its tunnel".into(),
                    ))
                }
            },
            Endpoint::Tcp {
                host,
                port,
                security: TcpSecurity::Tls(tls),
            } => {
                // Without a client certificate, paths that hold none make bollard present none.
                let none = std::path::PathBuf::from("/dev/null");
                let (cert, key) = tls.client.clone().unwrap_or((none.clone(), none));
                Docker::connect_with_ssl(
                    &format!("tcp://{host}:{port}"),
                    &key,
                    &cert,
                    &tls.ca,
                    REQUEST_TIMEOUT_SECS,
                    &client_version,
                )
            }
            Endpoint::Tcp { host, port, .. } => Docker::connect_with_http(
                &format!("tcp://{host}:{port}"),
                REQUEST_TIMEOUT_SECS,
                &client_version,
            ),
        };
        docker.map_err(|e| classify(e, ""))
    }

    /// Wraps a client that already speaks `api_version` (see [`crate::diagnose`], which
    /// negotiates the version while it checks the engine).
    pub fn from_parts(
        docker: Docker,
        endpoint: Endpoint,
        api_version: (u32, u32),
        tunnel: Option<Arc<SshTunnel>>,
    ) -> Self {
        Self {
            docker,
            endpoint,
            api_version,
            tunnel,
        }
    }

    /// Connects and negotiates: the lower of the engine's API version and berth's.
    pub async fn connect(endpoint: &Endpoint) -> Result<(Self, SystemVersion), EngineError> {
        let tunnel = match endpoint {
            Endpoint::Ssh(target) => Some(Arc::new(
                SshTunnel::open(target)
                    .await
                    .map_err(|e| EngineError::Connection(e.to_string()))?,
            )),
            _ => None,
        };
        let probe = Self::client(endpoint, tunnel.as_deref(), MAX_API_VERSION)?;
        let version = probe.version().await.map_err(|e| classify(e, ""))?;
        let server = version
            .api_version
            .as_deref()
            .and_then(parse_api_version)
            .unwrap_or(MAX_API_VERSION);
        let negotiated = server.min(MAX_API_VERSION);
        let docker = Self::client(endpoint, tunnel.as_deref(), negotiated)?;
        Ok((
            Self::from_parts(docker, endpoint.clone(), negotiated, tunnel),
            version,
        ))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn api_version(&self) -> (u32, u32) {
        self.api_version
    }

    pub async fn info(&self) -> Result<SystemInfo, EngineError> {
        self.docker.info().await.map_err(|e| classify(e, ""))
    }

    /// A create the engine refused: `--disk` on a driver (or an xfs without `pquota`) that
    /// cannot have it becomes [`EngineError::DiskQuotaUnsupported`] naming driver and file system.
    async fn create_refused(&self, plan: &ContainerPlan, e: BollardError) -> EngineError {
        if let BollardError::DockerResponseServerError { message, .. } = &e {
            if plan.disk_bytes.is_some() && berth_core::disk::refused_at_create(message) {
                let storage = self.storage().await.unwrap_or_default();
                return EngineError::DiskQuotaUnsupported(berth_core::disk::refused_message(
                    &storage, message,
                ));
            }
        }
        classify(e, &plan.image)
    }

    /// The raw bollard client, for the diagnosis.
    pub fn raw(&self) -> &Docker {
        &self.docker
    }

    /// Builds an image with the engine's classic builder and returns its id. Nothing is pulled
    /// on purpose (`FROM` images must be present, or reachable for the engine itself), and no
    /// BuildKit session is opened. Each line the builder prints reaches `progress`; a failed step
    /// becomes [`EngineError::BuildFailed`] naming the step. Intermediate containers are removed
    /// whatever happens.
    pub async fn build_image(
        &self,
        build: &ImageBuild,
        progress: &mut (dyn FnMut(BuildProgress) + Send),
    ) -> Result<String, EngineError> {
        let options = BuildImageOptions {
            dockerfile: build.dockerfile.clone(),
            t: Some(build.tag.clone()),
            target: build.target.clone(),
            buildargs: Some(build.build_args.clone()),
            labels: Some(build.labels.clone()),
            nocache: build.no_cache,
            rm: true,
            forcerm: true,
            pull: None,
            version: BuilderVersion::BuilderV1,
            ..Default::default()
        };
        let body = bollard::body_full(Bytes::from(build.context_tar.clone()));
        let mut stream = self.docker.build_image(options, None, Some(body));
        let mut lines = BuildLines::default();
        let mut image_id = None;
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(e) => {
                    lines.flush(progress);
                    return Err(build_error(e, lines.step));
                }
            };
            if let Some(text) = &info.stream {
                lines.push(text, progress);
            }
            if let Some(status) = info.status.filter(|s| !s.is_empty()) {
                // The engine pulling a missing FROM image on its own.
                let message = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                lines.line(&message, progress);
            }
            if let Some(id) = info.aux.and_then(|aux| aux.id) {
                image_id = Some(id);
            }
            if let Some(detail) = info.error_detail {
                lines.flush(progress);
                return Err(EngineError::BuildFailed {
                    step: lines.step,
                    message: detail
                        .message
                        .unwrap_or_else(|| "the builder reported an error".into()),
                });
            }
        }
        lines.flush(progress);
        match image_id {
            Some(id) => Ok(id),
            // Older engines say "Successfully built" without an aux id: ask for the tag.
            None => match self.inspect_image(&build.tag).await? {
                Some(info) => Ok(info.id),
                None => Err(EngineError::BuildFailed {
                    step: lines.step,
                    message: format!("the build ended but `{}` does not exist", build.tag),
                }),
            },
        }
    }

    /// Images whose name matches `reference`, a pattern as in `docker images --filter
    /// reference=...` (`berth/*`).
    pub async fn list_images_matching(
        &self,
        reference: &str,
    ) -> Result<Vec<LocalImage>, EngineError> {
        self.list_images_filtered("reference", reference).await
    }

    /// Images carrying the label `label` (any value), e.g. every image berth built.
    pub async fn list_images_labelled(&self, label: &str) -> Result<Vec<LocalImage>, EngineError> {
        self.list_images_filtered("label", label).await
    }

    async fn list_images_filtered(
        &self,
        filter: &str,
        value: &str,
    ) -> Result<Vec<LocalImage>, EngineError> {
        let filters = HashMap::from([(filter.to_string(), vec![value.to_string()])]);
        let options = ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|e| classify(e, value))?;
        Ok(list
            .into_iter()
            .map(|i| LocalImage {
                id: i.id,
                tags: i.repo_tags,
                size_bytes: u64::try_from(i.size).unwrap_or(0),
                created: i.created,
                labels: i.labels,
            })
            .collect())
    }

    /// The labels of `image`, or `None` when it is not present.
    pub async fn image_labels(
        &self,
        image: &str,
    ) -> Result<Option<HashMap<String, String>>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(
                inspect.config.and_then(|c| c.labels).unwrap_or_default(),
            )),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(classify(e, image)),
        }
    }

    /// Removes the tag `image` (and the image, when no other tag holds it). Absent is fine.
    pub async fn remove_image(&self, image: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(classify(e, image)),
        }
    }
}

/// Splits the builder's output into lines and remembers the step being built.
#[derive(Default)]
struct BuildLines {
    partial: String,
    step: Option<String>,
}

impl BuildLines {
    fn push(&mut self, text: &str, progress: &mut (dyn FnMut(BuildProgress) + Send)) {
        self.partial.push_str(text);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            self.line(&line, progress);
        }
    }

    fn flush(&mut self, progress: &mut (dyn FnMut(BuildProgress) + Send)) {
        let rest = std::mem::take(&mut self.partial);
        self.line(&rest, progress);
    }

    fn line(&mut self, line: &str, progress: &mut (dyn FnMut(BuildProgress) + Send)) {
        let line = line.trim_end();
        if line.trim().is_empty() {
            return;
        }
        if line.starts_with("Step ") {
            self.step = Some(line.to_string());
        }
        progress(BuildProgress {
            step: self.step.clone(),
            message: line.to_string(),
        });
    }
}

/// A build request the engine refused outright (a Dockerfile it cannot parse, a target it
/// lacks) is a failed build too; connection trouble stays what it is.
fn build_error(error: BollardError, step: Option<String>) -> EngineError {
    match error {
        BollardError::DockerResponseServerError { message, .. }
        | BollardError::DockerStreamError { error: message } => {
            EngineError::BuildFailed { step, message }
        }
        other => classify(other, ""),
    }
}

/// Turns a bollard error into berth's classification; `subject` names the object concerned.
pub fn classify(error: BollardError, subject: &str) -> EngineError {
    match error {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let lower = message.to_lowercase();
            if status_code == 404 && lower.contains("no such image") {
                EngineError::ImageNotFound(subject.to_string())
            } else if status_code == 404 && lower.contains("no such container") {
                EngineError::NoSuchContainer(subject.to_string())
            } else if status_code == 404 && lower.contains("network") {
                EngineError::NoSuchNetwork(subject.to_string())
            } else if lower.contains("error mounting") {
                // A bind source that vanished or changed before the runtime mounted it: the
                // sandbox could not be built, which says nothing about the command.
                EngineError::Refused {
                    status: status_code,
                    message,
                }
            } else if lower.contains("executable file not found")
                || lower.contains("no such file or directory")
            {
                EngineError::CommandNotFound(message)
            } else if lower.contains("permission denied") {
                EngineError::CannotInvoke(message)
            } else {
                EngineError::Refused {
                    status: status_code,
                    message,
                }
            }
        }
        BollardError::RequestTimeoutError => EngineError::Timeout(REQUEST_TIMEOUT_SECS),
        BollardError::SocketNotFoundError(path) => {
            EngineError::Connection(format!("socket {path} does not exist"))
        }
        other => EngineError::Connection(error_chain(&other)),
    }
}

/// An error with its causes, `outer: inner: innermost`: the useful part of a TLS or connect
/// failure sits at the bottom of hyper's chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The storage driver and its backing file system (`Backing Filesystem` among `DriverStatus`).
pub fn storage_of(info: &SystemInfo) -> berth_core::disk::Storage {
    let backing_fs = info
        .driver_status
        .iter()
        .flatten()
        .find_map(|pair| match pair.as_slice() {
            [key, value, ..] if key == "Backing Filesystem" => Some(value.clone()),
            _ => None,
        });
    berth_core::disk::Storage {
        driver: info.driver.clone().unwrap_or_default(),
        backing_fs,
    }
}

/// The runtimes `docker info` lists, by name.
pub fn runtimes_of(info: &SystemInfo) -> Vec<berth_core::runtime::EngineRuntime> {
    let mut runtimes: Vec<_> = info
        .runtimes
        .iter()
        .flatten()
        .map(|(name, r)| berth_core::runtime::EngineRuntime {
            name: name.clone(),
            path: r.path.clone(),
            args: r.runtime_args.clone().unwrap_or_default(),
        })
        .collect();
    runtimes.sort_by(|a, b| a.name.cmp(&b.name));
    runtimes
}

fn plan_to_body(plan: &ContainerPlan) -> ContainerCreateBody {
    let volume = plan.berth_volume.as_ref().map(|v| Mount {
        target: Some(v.target.clone()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    });
    let mounts = plan
        .binds
        .iter()
        .map(|b| Mount {
            target: Some(b.target.clone()),
            source: Some(b.source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(b.read_only),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        })
        .chain(volume)
        .collect();
    let tmpfs: HashMap<String, String> = plan
        .tmpfs
        .iter()
        .map(|t| (t.target.clone(), t.options.clone()))
        .collect();
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = plan
        .publish
        .iter()
        .map(|p| {
            let binding = PortBinding {
                host_ip: Some("127.0.0.1".to_string()),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            };
            (format!("{}/tcp", p.container_port), Some(vec![binding]))
        })
        .collect();
    let exposed: Vec<String> = plan
        .publish
        .iter()
        .map(|p| format!("{}/tcp", p.container_port))
        .collect();

    let host_config = HostConfig {
        mounts: Some(mounts),
        tmpfs: Some(tmpfs),
        memory: Some(plan.memory_bytes),
        memory_swap: Some(plan.memory_swap_bytes),
        nano_cpus: Some(plan.nano_cpus),
        pids_limit: Some(plan.pids_limit),
        network_mode: Some(plan.network.clone()),
        runtime: plan.runtime.clone(),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        readonly_rootfs: Some(plan.read_only_rootfs),
        cap_drop: Some(plan.cap_drop.clone()),
        cap_add: (!plan.cap_add.is_empty()).then(|| plan.cap_add.clone()),
        security_opt: Some(plan.security_opt.clone()),
        init: Some(plan.init),
        storage_opt: plan.disk_bytes.map(|bytes| {
            HashMap::from([("size".to_string(), berth_core::disk::size_option(bytes))])
        }),
        cgroupns_mode: plan
            .private_cgroup_namespace
            .then_some(HostConfigCgroupnsModeEnum::PRIVATE),
        privileged: Some(false),
        sysctls: Some(plan.sysctls.clone().into_iter().collect()),
        // berth keeps the output itself; the engine's json-file copy would only halve throughput
        // and fill the engine's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(plan.image.clone()),
        entrypoint: Some(plan.entrypoint.clone()),
        cmd: Some(plan.cmd.clone()),
        env: Some(plan.env.clone()),
        working_dir: Some(plan.working_dir.clone()),
        user: Some(plan.user.clone()),
        labels: Some(plan.labels.clone().into_iter().collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(plan.stdin_once),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

impl Engine for DockerEngine {
    fn ssh_target(&self) -> Option<&crate::endpoint::SshTarget> {
        match &self.endpoint {
            Endpoint::Ssh(target) => Some(target),
            Endpoint::Unix(_) | Endpoint::Tcp { .. } => None,
        }
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => {
                let config = inspect.config.unwrap_or_default();
                Ok(Some(ImageInfo {
                    id: inspect.id.unwrap_or_default(),
                    entrypoint: config.entrypoint.unwrap_or_default(),
                    env: config.env.unwrap_or_default(),
                    user: config.user.filter(|u| !u.is_empty()),
                }))
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(classify(e, image)),
        }
    }

    async fn pull_image(
        &self,
        image: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<(), EngineError> {
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| EngineError::PullFailed {
                image: image.to_string(),
                message: pull_error(e),
            })?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::PullFailed {
                    image: image.to_string(),
                    message,
                });
            }
            let detail = info.progress_detail.unwrap_or_default();
            progress(PullProgress {
                layer: info.id,
                status: info.status.unwrap_or_default(),
                current: detail.current.and_then(|c| u64::try_from(c).ok()),
                total: detail.total.and_then(|t| u64::try_from(t).ok()),
            });
        }
        Ok(())
    }

    async fn create_container(&self, plan: &ContainerPlan) -> Result<String, EngineError> {
        let options = CreateContainerOptions {
            name: Some(plan.name.clone()),
            ..Default::default()
        };
        match self
            .docker
            .create_container(Some(options), plan_to_body(plan))
            .await
        {
            Ok(created) => Ok(created.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.to_lowercase().contains("network") => {
                Err(EngineError::NoSuchNetwork(plan.network.clone()))
            }
            Err(e) => Err(self.create_refused(plan, e).await),
        }
    }

    async fn storage(&self) -> Result<berth_core::disk::Storage, EngineError> {
        Ok(storage_of(&self.info().await?))
    }

    async fn runtimes(&self) -> Result<Vec<berth_core::runtime::EngineRuntime>, EngineError> {
        Ok(runtimes_of(&self.info().await?))
    }

    async fn architecture(&self) -> Result<String, EngineError> {
        Ok(self.info().await?.architecture.unwrap_or_default())
    }

    async fn attach(&self, id: &str) -> Result<Attached, EngineError> {
        let options = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(|e| classify(e, id))?;
        Ok(Attached {
            output: output_chunks(attached.output),
            input: attached.input,
        })
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| classify(e, id))
    }

    async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.docker.wait_container(id, Some(options));
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error; for berth it is data.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(classify(e, id)),
            None => Err(EngineError::Connection(
                "the engine closed the wait stream without an exit code".into(),
            )),
        }
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        match self.docker.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // Already stopped: the signal has nothing left to do.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(classify(e, id)),
        }
    }

    async fn inspect_exit(&self, id: &str) -> Result<ExitInfo, EngineError> {
        let inspect = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| classify(e, id))?;
        let state = inspect.state.unwrap_or_default();
        Ok(ExitInfo {
            exit_code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.filter(|e| !e.is_empty()),
        })
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Removal already under way (e.g. a second berth gc): it will finish on its own.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(classify(e, id)),
        }
    }

    fn download(&self, id: &str, path: &str) -> BoxStream<'static, Result<Bytes, EngineError>> {
        let options = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let subject = path.to_string();
        self.docker
            .download_from_container(id, Some(options))
            .map_err(move |e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => EngineError::Refused {
                    status: 404,
                    message: format!("{subject}: {message}"),
                },
                other => classify(other, &subject),
            })
            .boxed()
    }

    async fn upload(
        &self,
        id: &str,
        path: &str,
        tar: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), EngineError> {
        let options = UploadToContainerOptions {
            path: path.to_string(),
            no_overwrite_dir_non_dir: Some("true".to_string()),
            copy_uidgid: None,
        };
        self.docker
            .upload_to_container(id, Some(options), bollard::body_try_stream(tar))
            .await
            .map_err(|e| classify(e, path))
    }

    async fn network_exists(&self, name: &str) -> Result<bool, EngineError> {
        match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(classify(e, name)),
        }
    }

    async fn list_managed(&self) -> Result<Vec<ContainerSummary>, EngineError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", berth_core::plan::labels::MANAGED)],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| classify(e, ""))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                created: c.created.unwrap_or_default(),
            })
            .collect())
    }
}

/// The engine's multiplexed stream as berth's output chunks (stdin echoes dropped).
fn output_chunks(
    stream: impl futures_util::Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
) -> BoxStream<'static, Result<OutputChunk, EngineError>> {
    stream
        .map_err(|e| classify(e, ""))
        .try_filter_map(|item| async move {
            Ok(match item {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    Some(OutputChunk {
                        stream: Stream::Stdout,
                        data: message,
                    })
                }
                LogOutput::StdErr { message } => Some(OutputChunk {
                    stream: Stream::Stderr,
                    data: message,
                }),
                LogOutput::StdIn { .. } => None,
            })
        })
        .boxed()
}

fn pull_error(e: BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message,
        BollardError::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    #[test]
    fn storage_is_read_from_driver_status() {
        let info = SystemInfo {
            driver: Some("overlay2".into()),
            driver_status: Some(vec![
                vec!["Backing Filesystem".into(), "extfs".into()],
                vec!["Supports d_type".into(), "true".into()],
            ]),
            ..Default::default()
        };
        let storage = storage_of(&info);
        assert_eq!(storage.driver, "overlay2");
        assert_eq!(storage.backing_fs.as_deref(), Some("extfs"));
        assert_eq!(storage_of(&SystemInfo::default()).backing_fs, None);
    }
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    fn server_error(message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code: 400,
            message: message.to_string(),
        }
    }

    #[test]
    fn a_vanished_mount_source_is_not_a_missing_command() {
        let e = classify(
            server_error("failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"/tmp/x/data\" to rootfs at \"/data\": stat /tmp/x/data: no such file or directory: unknown"),
            "c",
        );
        assert!(matches!(e, EngineError::Refused { .. }), "{e:?}");
    }

    #[test]
    fn a_missing_executable_is_a_missing_command() {
        let e = classify(
            server_error("failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown"),
            "c",
        );
        assert!(matches!(e, EngineError::CommandNotFound(_)), "{e:?}");
    }
}
