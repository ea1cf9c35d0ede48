//! Why Docker can or cannot be used, named exactly.
//!
//! The checks run in a fixed order and stop at the first problem, so every answer is exactly one
//! diagnosis with a hint. "unknown error" is not a possible answer: every failure is classified.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use std::sync::Arc;

use crate::docker::{parse_api_version, DockerEngine};
use crate::endpoint::{Endpoint, EndpointEnv, EngineChoice, TcpSecurity};
use crate::ssh::{SshTunnel, TunnelError};
use crate::{Engine, EngineError, MAX_API_VERSION, MIN_API_VERSION};

/// How long the engine gets to answer a diagnostic request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this much free space in the engine's data root, images and containers start failing.
pub const LOW_DISK_BYTES: u64 = 2 << 30;

/// What the diagnosis reads from the environment, handed in by the caller.
#[derive(Debug, Clone, Default)]
pub struct ProbeEnv {
    /// `DOCKER_HOST`, if set.
    pub docker_host: Option<String>,
    /// `PATH`, to tell whether the docker CLI is installed.
    pub path: Option<OsString>,
    /// The uid berth runs as, for permission hints.
    pub uid: u32,
    /// `--engine NAME|URL`, when given.
    pub engine: EngineChoice,
    /// `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`, the home directory and `--engine-insecure`.
    pub endpoint: EndpointEnv,
}

impl ProbeEnv {
    /// The endpoint chosen by `--engine`, `DOCKER_HOST` or the default.
    pub fn resolve(&self) -> Result<Endpoint, crate::endpoint::MalformedHost> {
        let env = EndpointEnv {
            docker_host: self.docker_host.clone(),
            ..self.endpoint.clone()
        };
        Endpoint::resolve(&self.engine, &env)
    }
}

/// Exactly one reason why Docker cannot (or should not) be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnosis {
    NotInstalled {
        socket: PathBuf,
    },
    DaemonNotRunning {
        socket: PathBuf,
        detail: String,
    },
    PermissionDenied {
        socket: PathBuf,
        group: Option<String>,
    },
    DockerHostMalformed {
        value: String,
        why: String,
    },
    DockerHostUnreachable {
        endpoint: String,
        detail: String,
    },
    ApiTooOld {
        engine_version: String,
        api_version: String,
    },
    ApiTooNew {
        engine_version: String,
        min_api_version: String,
    },
    ImageMissing {
        image: String,
    },
    LowDisk {
        root_dir: String,
        free_bytes: u64,
    },
    LimitsUnsupported {
        missing: Vec<&'static str>,
    },
    Rootless,
    /// `--engine URL` or an engine table that cannot be used.
    EngineMalformed {
        source: String,
        value: String,
        why: String,
    },
    /// A remote engine (`--engine`, or ssh) cannot be reached: refused, no route, unresolved.
    EngineUnreachable {
        endpoint: String,
        detail: String,
    },
    SshAuthRefused {
        endpoint: String,
        detail: String,
    },
    SshHostKeyRejected {
        endpoint: String,
        detail: String,
    },
    /// ssh works, but nothing answers on the remote engine socket.
    RemoteNoDocker {
        endpoint: String,
        socket: String,
        detail: String,
    },
    /// The engine's certificate is not signed by the configured CA (or names another host).
    TlsServerRejected {
        endpoint: String,
        ca: PathBuf,
        detail: String,
    },
    /// The engine refused berth's client certificate, or wanted one and got none.
    TlsClientRefused {
        endpoint: String,
        detail: String,
    },
    /// A TLS file (CA, certificate, key) or the ssh key cannot be read.
    EngineFileUnusable {
        endpoint: String,
        path: PathBuf,
        detail: String,
    },
    /// tcp:// without TLS and without the user's consent.
    PlainTcpRefused {
        endpoint: String,
    },
}

impl Diagnosis {
    /// A stable identifier, for `--json` and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotInstalled { .. } => "not_installed",
            Self::DaemonNotRunning { .. } => "daemon_not_running",
            Self::PermissionDenied { .. } => "permission_denied",
            Self::DockerHostMalformed { .. } => "docker_host_malformed",
            Self::DockerHostUnreachable { .. } => "docker_host_unreachable",
            Self::ApiTooOld { .. } => "api_too_old",
            Self::ApiTooNew { .. } => "api_too_new",
            Self::ImageMissing { .. } => "image_missing",
            Self::LowDisk { .. } => "low_disk",
            Self::LimitsUnsupported { .. } => "limits_unsupported",
            Self::Rootless => "rootless",
            Self::EngineMalformed { .. } => "engine_malformed",
            Self::EngineUnreachable { .. } => "engine_unreachable",
            Self::SshAuthRefused { .. } => "ssh_auth_refused",
            Self::SshHostKeyRejected { .. } => "ssh_host_key_rejected",
            Self::RemoteNoDocker { .. } => "remote_no_docker",
            Self::TlsServerRejected { .. } => "tls_certificate_rejected",
            Self::TlsClientRefused { .. } => "tls_client_certificate_refused",
            Self::EngineFileUnusable { .. } => "engine_file_unusable",
            Self::PlainTcpRefused { .. } => "plain_tcp_refused",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::NotInstalled { socket } => format!(
                "Docker is not installed: no engine socket at {}, DOCKER_HOST is not set, and there is no docker program on PATH",
                socket.display()
            ),
            Self::DaemonNotRunning { socket, detail } => {
                format!("the Docker daemon is not running: {} {detail}", socket.display())
            }
            Self::PermissionDenied { socket, .. } => {
                format!("permission denied on the Docker socket {}", socket.display())
            }
            Self::DockerHostMalformed { value, why } => format!("DOCKER_HOST `{value}` is malformed: {why}"),
            Self::DockerHostUnreachable { endpoint, detail } => {
                format!("DOCKER_HOST {endpoint} is unreachable: {detail}")
            }
            Self::ApiTooOld { engine_version, api_version } => format!(
                "the Docker engine {engine_version} is too old: it speaks API {api_version}, berth needs at least {}.{}",
                MIN_API_VERSION.0, MIN_API_VERSION.1
            ),
            Self::ApiTooNew { engine_version, min_api_version } => format!(
                "the Docker engine {engine_version} is too new: it requires API {min_api_version} or later, berth speaks up to {}.{}",
                MAX_API_VERSION.0, MAX_API_VERSION.1
            ),
            Self::ImageMissing { image } => format!("image `{image}` is not present on the engine"),
            Self::LowDisk { root_dir, free_bytes } => format!(
                "the engine's data root {root_dir} has only {} free",
                berth_core::units::format_bytes(*free_bytes)
            ),
            Self::LimitsUnsupported { missing } => format!(
                "the kernel does not support {} limits for containers, so berth cannot bound the sandbox",
                missing.join(" and ")
            ),
            Self::Rootless => "the Docker engine runs rootless: resource limits need cgroup v2 delegation and bind mounts map to other uids".to_string(),
            Self::EngineMalformed { source, value, why } => format!("{source} `{value}` is malformed: {why}"),
            Self::EngineUnreachable { endpoint, detail } => format!("the engine host {endpoint} is unreachable: {detail}"),
            Self::SshAuthRefused { endpoint, detail } => format!("ssh authentication to {endpoint} was refused: {detail}"),
            Self::SshHostKeyRejected { endpoint, detail } => format!("ssh rejected the host key of {endpoint}: {detail}"),
            Self::RemoteNoDocker { endpoint, socket, detail } => format!(
                "{endpoint} has no Docker engine answering on {socket} (no such socket, or its daemon is down): {detail}"
            ),
            Self::TlsServerRejected { endpoint, ca, detail } => format!(
                "TLS certificate rejected: the certificate of {endpoint} is not trusted by the CA {} ({detail})",
                ca.display()
            ),
            Self::TlsClientRefused { endpoint, detail } => format!(
                "TLS client certificate refused: {endpoint} did not accept berth's client certificate, or wanted one and got none ({detail})"
            ),
            Self::EngineFileUnusable { endpoint, path, detail } => format!(
                "{} for {endpoint} cannot be used: {detail}", path.display()
            ),
            Self::PlainTcpRefused { endpoint } => format!(
                "{endpoint} is plain TCP without TLS: anyone on the network could read the run's secrets and drive the engine"
            ),
        }
    }

    pub fn hint(&self) -> String {
        match self {
            Self::NotInstalled { .. } => "install Docker Engine (https://docs.docker.com/engine/install/), or use `--fallback local` to run on the host without a sandbox".into(),
            Self::DaemonNotRunning { .. } => "start the daemon: `sudo systemctl start docker` (or `sudo service docker start`)".into(),
            Self::PermissionDenied { group: Some(group), .. } => format!(
                "add yourself to the `{group}` group (`sudo usermod -aG {group} $USER`), then log in again"
            ),
            Self::PermissionDenied { group: None, .. } => "ask an administrator for access to the Docker socket".into(),
            Self::DockerHostMalformed { .. } => "set DOCKER_HOST to unix:///var/run/docker.sock or tcp://HOST:PORT, or unset it".into(),
            Self::DockerHostUnreachable { .. } => "check that the engine at DOCKER_HOST is up and reachable, or unset DOCKER_HOST to use the local socket".into(),
            Self::ApiTooOld { .. } => "upgrade Docker Engine to 20.10 or later".into(),
            Self::ApiTooNew { .. } => "upgrade berth, or use an engine that still accepts older API versions".into(),
            Self::ImageMissing { image } => format!("build it locally, or let berth pull it: `berth run --pull missing --image {image} ...`"),
            Self::LowDisk { .. } => "free space with `docker system prune` or move the engine's data root".into(),
            Self::LimitsUnsupported { .. } => "enable the memory and pids cgroup controllers (cgroup v2, or `cgroup_enable=memory swapaccount=1` on the kernel command line)".into(),
            Self::Rootless => "use a rootful engine for full isolation, or accept weaker limits knowingly".into(),
            Self::EngineMalformed { .. } => "pass --engine NAME (an [engines.NAME] table) or --engine unix:///PATH, tcp://HOST:PORT, ssh://[USER@]HOST[:PORT]".into(),
            Self::EngineUnreachable { .. } => "check the host name and port, that the host is up, and that a firewall lets you through".into(),
            Self::SshAuthRefused { .. } => "check `identity` (the key file) and that its public key is in the remote user's authorized_keys; berth runs ssh without prompts (BatchMode)".into(),
            Self::SshHostKeyRejected { .. } => "add the host's key to known_hosts (connect once with `ssh`), or point `ssh_options` at a known_hosts file (UserKnownHostsFile=...)".into(),
            Self::RemoteNoDocker { .. } => "start Docker on the remote host, check that the remote user may use its socket, or set `remote_socket` in [engines.NAME]".into(),
            Self::TlsServerRejected { .. } => "set `ca` (or DOCKER_CERT_PATH/ca.pem) to the CA that signed the engine's certificate, and check that the certificate names the host you connect to".into(),
            Self::TlsClientRefused { .. } => "set `cert` and `key` (or DOCKER_CERT_PATH/cert.pem and key.pem) to a client certificate signed by the CA the engine trusts".into(),
            Self::EngineFileUnusable { .. } => "fix the path in [engines.NAME] (or DOCKER_CERT_PATH), or the file's permissions".into(),
            Self::PlainTcpRefused { .. } => "use TLS (ca, cert, key in [engines.NAME], or DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH) or ssh://; to accept the risk, set `insecure_plain_tcp = true` or pass --engine-insecure".into(),
        }
    }

    /// Whether `berth run` must stop (true) or may go on with a warning (false).
    pub fn blocks_run(&self) -> bool {
        !matches!(self, Self::LowDisk { .. } | Self::Rootless)
    }
}

/// What berth learned about a usable engine.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EngineFacts {
    pub endpoint: String,
    pub engine_version: String,
    pub api_version: String,
    pub negotiated_api_version: String,
    pub storage_driver: String,
    /// The storage driver's backing file system (`extfs`, `xfs`…), when the engine says.
    pub backing_filesystem: String,
    /// Whether `--disk` can be had here: `available (…)` or `not available: …`.
    pub disk_limit: String,
    pub cgroup_version: String,
    pub runtimes: Vec<String>,
    /// Whether `--isolation gvisor` can be had: `usable (…)` or `not usable: …`.
    pub gvisor: String,
    /// When it cannot: the daemon.json lines and the reload command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gvisor_hint: Option<String>,
    pub data_root: String,
    pub os: String,
}

/// The whole answer of `berth doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosisReport {
    pub ok: bool,
    /// `ok`, or the diagnosis's code.
    pub diagnosis: String,
    pub message: String,
    pub hint: Option<String>,
    pub engine: Option<EngineFacts>,
    /// Milliseconds to create, start, run `true` in and remove a sandbox, when measured.
    pub start_ms: Option<u64>,
    /// Notes that are not problems (e.g. why the start time was not measured).
    pub notes: Vec<String>,
}

impl DiagnosisReport {
    pub fn problem(diagnosis: &Diagnosis, engine: Option<EngineFacts>) -> Self {
        Self {
            ok: false,
            diagnosis: diagnosis.code().to_string(),
            message: diagnosis.message(),
            hint: Some(diagnosis.hint()),
            engine,
            start_ms: None,
            notes: Vec::new(),
        }
    }
}

/// Finds the engine, connects, negotiates, and checks what every run depends on. Returns the
/// connected engine with its facts, or the first problem found. Problems that do not block a
/// run (low disk, rootless) come back in the third slot alongside a usable engine.
pub async fn check_engine(
    env: &ProbeEnv,
) -> Result<(DockerEngine, EngineFacts, Option<Diagnosis>), (Diagnosis, Option<EngineFacts>)> {
    let endpoint = env.resolve().map_err(|e| {
        let d = if e.origin == "DOCKER_HOST" {
            Diagnosis::DockerHostMalformed {
                value: e.value,
                why: e.why,
            }
        } else {
            Diagnosis::EngineMalformed {
                source: e.origin,
                value: e.value,
                why: e.why,
            }
        };
        (d, None)
    })?;
    let chosen = env.engine != EngineChoice::Default;
    let from_env = env.docker_host.as_deref().is_some_and(|v| !v.is_empty()) || chosen;
    check_reachable(&endpoint, from_env, env).map_err(|d| (d, None))?;
    let tunnel = open_tunnel(&endpoint).await.map_err(|d| (d, None))?;

    let probe = DockerEngine::client(&endpoint, tunnel.as_deref(), MAX_API_VERSION)
        .map_err(|e| (unreachable(&endpoint, &e), None))?;
    // Version and info are independent; asking both at once saves a round trip on every run.
    let answers = tokio::time::timeout(ANSWER_TIMEOUT, async {
        tokio::join!(probe.version(), probe.info())
    })
    .await;
    let (version, info) = match answers {
        Ok((Ok(version), info)) => (version, info),
        Ok((Err(e), _)) => {
            let error = crate::docker::classify(e, "");
            return Err((
                failed_request(&endpoint, tunnel.as_deref(), &error).await,
                None,
            ));
        }
        Err(_) => return Err((silent(&endpoint), None)),
    };
    let engine_version = version
        .version
        .clone()
        .unwrap_or_else(|| "(version not reported)".into());
    let api = version.api_version.clone().unwrap_or_default();
    let server_api = parse_api_version(&api).ok_or_else(|| {
        (
            Diagnosis::DockerHostUnreachable {
                endpoint: endpoint.to_string(),
                detail: format!("it answered, but reported no usable API version (`{api}`)"),
            },
            None,
        )
    })?;
    if server_api < MIN_API_VERSION {
        return Err((
            Diagnosis::ApiTooOld {
                engine_version,
                api_version: api,
            },
            None,
        ));
    }
    if let Some(min) = version
        .min_api_version
        .as_deref()
        .and_then(parse_api_version)
    {
        if min > MAX_API_VERSION {
            let min_api_version = version.min_api_version.clone().unwrap_or_default();
            return Err((
                Diagnosis::ApiTooNew {
                    engine_version,
                    min_api_version,
                },
                None,
            ));
        }
    }
    let negotiated = server_api.min(MAX_API_VERSION);
    let client = DockerEngine::client(&endpoint, tunnel.as_deref(), negotiated)
        .map_err(|e| (unreachable(&endpoint, &e), None))?;
    let engine = DockerEngine::from_parts(client, endpoint.clone(), negotiated, tunnel);

    let info = info.map_err(|e| {
        (
            answered_badly(&endpoint, &crate::docker::classify(e, "")),
            None,
        )
    })?;
    let offered = crate::docker::runtimes_of(&info);
    let runtimes: Vec<String> = offered.iter().map(|r| r.name.clone()).collect();
    let (gvisor, gvisor_hint) = berth_core::runtime::gvisor_summary(&offered);
    let storage = crate::docker::storage_of(&info);
    let facts = EngineFacts {
        endpoint: endpoint.to_string(),
        engine_version,
        api_version: api,
        negotiated_api_version: format!("{}.{}", negotiated.0, negotiated.1),
        storage_driver: info.driver.clone().unwrap_or_default(),
        backing_filesystem: storage.backing_fs.clone().unwrap_or_default(),
        disk_limit: berth_core::disk::summary(&storage),
        cgroup_version: info
            .cgroup_version
            .map(|v| v.to_string())
            .unwrap_or_default(),
        runtimes,
        gvisor,
        gvisor_hint,
        data_root: info.docker_root_dir.clone().unwrap_or_default(),
        os: info.operating_system.clone().unwrap_or_default(),
    };

    let mut missing = Vec::new();
    if info.memory_limit == Some(false) {
        missing.push("memory");
    }
    if info.swap_limit == Some(false) {
        missing.push("swap");
    }
    if info.pids_limit == Some(false) {
        missing.push("pids");
    }
    if !missing.is_empty() {
        return Err((Diagnosis::LimitsUnsupported { missing }, Some(facts)));
    }
    let rootless = info
        .security_options
        .unwrap_or_default()
        .iter()
        .any(|o| o.contains("name=rootless"));
    let mut warning = rootless.then_some(Diagnosis::Rootless);
    // The data root is only meaningful on this host when the engine is local.
    if warning.is_none() && endpoint.socket_path().is_some() && !facts.data_root.is_empty() {
        if let Some(free_bytes) = free_space(Path::new(&facts.data_root)) {
            if free_bytes < LOW_DISK_BYTES {
                warning = Some(Diagnosis::LowDisk {
                    root_dir: facts.data_root.clone(),
                    free_bytes,
                });
            }
        }
    }
    Ok((engine, facts, warning))
}

/// Checks that `image` is present on the engine.
pub async fn check_image(engine: &DockerEngine, image: &str) -> Result<(), Diagnosis> {
    match engine.inspect_image(image).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Diagnosis::ImageMissing {
            image: image.to_string(),
        }),
        Err(e) => Err(answered_badly(engine.endpoint(), &e)),
    }
}

/// Can a connection be opened at all? Classifies the socket-level failures.
fn check_reachable(endpoint: &Endpoint, from_env: bool, env: &ProbeEnv) -> Result<(), Diagnosis> {
    match endpoint {
        Endpoint::Unix(socket) => {
            let socket = socket.clone();
            match std::fs::metadata(&socket) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(if from_env {
                        Diagnosis::DockerHostUnreachable {
                            endpoint: endpoint.to_string(),
                            detail: format!("the socket {} does not exist", socket.display()),
                        }
                    } else if docker_cli_on_path(env.path.as_deref()) {
                        Diagnosis::DaemonNotRunning {
                            socket,
                            detail: "does not exist, although the docker program is installed"
                                .into(),
                        }
                    } else {
                        Diagnosis::NotInstalled { socket }
                    })
                }
                Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                    return Err(Diagnosis::PermissionDenied {
                        socket,
                        group: None,
                    })
                }
                Err(e) => {
                    return Err(Diagnosis::DockerHostUnreachable {
                        endpoint: endpoint.to_string(),
                        detail: e.to_string(),
                    })
                }
                Ok(_) => {}
            }
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    Err(Diagnosis::DaemonNotRunning {
                        socket,
                        detail: "exists but nothing answers on it (connection refused)".into(),
                    })
                }
                Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                    // Joining the socket's group helps only if the group may read and write it.
                    let group = std::fs::metadata(&socket)
                        .ok()
                        .filter(|m| m.mode() & 0o060 == 0o060)
                        .and_then(|m| group_name(m.gid()));
                    Err(Diagnosis::PermissionDenied { socket, group })
                }
                Err(e) => Err(Diagnosis::DockerHostUnreachable {
                    endpoint: endpoint.to_string(),
                    detail: format!("cannot connect to {}: {e}", socket.display()),
                }),
            }
        }
        Endpoint::Tcp {
            host,
            port,
            security,
        } => {
            use std::net::ToSocketAddrs;
            let unreachable = |detail: String| {
                if env.engine == EngineChoice::Default {
                    Diagnosis::DockerHostUnreachable {
                        endpoint: endpoint.to_string(),
                        detail,
                    }
                } else {
                    Diagnosis::EngineUnreachable {
                        endpoint: endpoint.to_string(),
                        detail,
                    }
                }
            };
            let addrs = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| unreachable(format!("cannot resolve `{host}`: {e}")))?;
            let mut last = None;
            let mut connected = false;
            for addr in addrs {
                match std::net::TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT) {
                    Ok(_) => {
                        connected = true;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if !connected {
                return Err(unreachable(last.map_or_else(
                    || format!("`{host}` resolves to no address"),
                    |e| e.to_string(),
                )));
            }
            match security {
                // Refused only now, so "is it there at all" is answered first; nothing has
                // been sent yet.
                TcpSecurity::Plain { allowed: false } => Err(Diagnosis::PlainTcpRefused {
                    endpoint: endpoint.to_string(),
                }),
                TcpSecurity::Plain { allowed: true } => Ok(()),
                TcpSecurity::Tls(tls) => {
                    let files =
                        std::iter::once(&tls.ca).chain(tls.client.iter().flat_map(|(c, k)| [c, k]));
                    for path in files {
                        if let Err(e) = std::fs::File::open(path) {
                            return Err(Diagnosis::EngineFileUnusable {
                                endpoint: endpoint.to_string(),
                                path: path.clone(),
                                detail: e.to_string(),
                            });
                        }
                    }
                    Ok(())
                }
            }
        }
        // ssh itself says what is wrong; see `open_tunnel`.
        Endpoint::Ssh(_) => Ok(()),
    }
}

/// Forwards a remote engine's socket through ssh; other endpoints need no tunnel.
async fn open_tunnel(endpoint: &Endpoint) -> Result<Option<Arc<SshTunnel>>, Diagnosis> {
    let Endpoint::Ssh(target) = endpoint else {
        return Ok(None);
    };
    let name = endpoint.to_string();
    match SshTunnel::open(target).await {
        Ok(tunnel) => Ok(Some(Arc::new(tunnel))),
        Err(TunnelError::AuthRefused(detail)) => Err(Diagnosis::SshAuthRefused {
            endpoint: name,
            detail,
        }),
        Err(TunnelError::HostKeyRejected(detail)) => Err(Diagnosis::SshHostKeyRejected {
            endpoint: name,
            detail,
        }),
        Err(TunnelError::Unreachable(detail)) => Err(Diagnosis::EngineUnreachable {
            endpoint: name,
            detail,
        }),
        Err(e @ (TunnelError::NoSsh(_) | TunnelError::Failed(_))) => {
            Err(Diagnosis::EngineUnreachable {
                endpoint: name,
                detail: format!("ssh failed: {e}"),
            })
        }
    }
}

/// The first request failed: name the reason a remote engine gives (TLS, the remote socket)
/// before falling back to "answered badly".
async fn failed_request(
    endpoint: &Endpoint,
    tunnel: Option<&SshTunnel>,
    error: &EngineError,
) -> Diagnosis {
    let text = error.to_string();
    match endpoint {
        Endpoint::Ssh(target) => {
            // ssh reports the failed channel on its stderr a moment after closing it.
            for _ in 0..20 {
                if let Some(line) = tunnel.and_then(SshTunnel::remote_socket_failed) {
                    return Diagnosis::RemoteNoDocker {
                        endpoint: endpoint.to_string(),
                        socket: target.remote_socket.clone(),
                        detail: line,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answered_badly(endpoint, error)
        }
        Endpoint::Tcp {
            security: TcpSecurity::Tls(tls),
            ..
        } => match classify_tls(&text) {
            Some(TlsFailure::Server) => Diagnosis::TlsServerRejected {
                endpoint: endpoint.to_string(),
                ca: tls.ca.clone(),
                detail: text,
            },
            Some(TlsFailure::Client) => Diagnosis::TlsClientRefused {
                endpoint: endpoint.to_string(),
                detail: text,
            },
            None => answered_badly(endpoint, error),
        },
        _ => answered_badly(endpoint, error),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TlsFailure {
    /// berth did not trust the engine's certificate.
    Server,
    /// The engine did not accept berth's (missing) client certificate.
    Client,
}

/// Which side of a TLS handshake said no, from rustls's messages.
fn classify_tls(text: &str) -> Option<TlsFailure> {
    if text.contains("invalid peer certificate") {
        Some(TlsFailure::Server)
    } else if [
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "DecryptError",
        "HandshakeFailure",
        "AccessDenied",
    ]
    .iter()
    .any(|alert| text.contains(&format!("received fatal alert: {alert}")))
    {
        Some(TlsFailure::Client)
    } else {
        None
    }
}

fn unreachable(endpoint: &Endpoint, e: &EngineError) -> Diagnosis {
    Diagnosis::DockerHostUnreachable {
        endpoint: endpoint.to_string(),
        detail: e.to_string(),
    }
}

/// The connection opened but the answer was not a Docker engine's.
fn answered_badly(endpoint: &Endpoint, e: &EngineError) -> Diagnosis {
    match (endpoint, e) {
        (Endpoint::Unix(socket), EngineError::Connection(detail)) => Diagnosis::DaemonNotRunning {
            socket: socket.clone(),
            detail: format!(
                "accepts connections but does not answer as a Docker engine ({detail})"
            ),
        },
        _ => Diagnosis::DockerHostUnreachable {
            endpoint: endpoint.to_string(),
            detail: format!("it answered, but not as a Docker engine: {e}"),
        },
    }
}

fn silent(endpoint: &Endpoint) -> Diagnosis {
    let detail = format!(
        "accepts connections but did not answer within {} seconds",
        ANSWER_TIMEOUT.as_secs()
    );
    match endpoint {
        Endpoint::Unix(socket) => Diagnosis::DaemonNotRunning {
            socket: socket.clone(),
            detail,
        },
        Endpoint::Tcp { .. } | Endpoint::Ssh(_) => Diagnosis::DockerHostUnreachable {
            endpoint: endpoint.to_string(),
            detail,
        },
    }
}

fn docker_cli_on_path(path: Option<&std::ffi::OsStr>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.map(std::env::split_paths)
        .into_iter()
        .flatten()
        .any(|dir| {
            std::fs::metadata(dir.join("docker"))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The name of group `gid`, from /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == gid).then(|| name.to_string())
    })
}

/// Free bytes for unprivileged users on the file system holding `path`.
fn free_space(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_diagnosis_has_message_and_hint() {
        let all = [
            Diagnosis::NotInstalled {
                socket: "/s".into(),
            },
            Diagnosis::DaemonNotRunning {
                socket: "/s".into(),
                detail: "x".into(),
            },
            Diagnosis::PermissionDenied {
                socket: "/s".into(),
                group: Some("docker".into()),
            },
            Diagnosis::DockerHostMalformed {
                value: "v".into(),
                why: "w".into(),
            },
            Diagnosis::DockerHostUnreachable {
                endpoint: "e".into(),
                detail: "d".into(),
            },
            Diagnosis::ApiTooOld {
                engine_version: "1".into(),
                api_version: "1.20".into(),
            },
            Diagnosis::ApiTooNew {
                engine_version: "99".into(),
                min_api_version: "1.99".into(),
            },
            Diagnosis::ImageMissing { image: "i".into() },
            Diagnosis::LowDisk {
                root_dir: "/d".into(),
                free_bytes: 1,
            },
            Diagnosis::LimitsUnsupported {
                missing: vec!["memory"],
            },
            Diagnosis::Rootless,
            Diagnosis::EngineMalformed {
                source: "--engine".into(),
                value: "v".into(),
                why: "w".into(),
            },
            Diagnosis::EngineUnreachable {
                endpoint: "e".into(),
                detail: "d".into(),
            },
            Diagnosis::SshAuthRefused {
                endpoint: "e".into(),
                detail: "d".into(),
            },
            Diagnosis::SshHostKeyRejected {
                endpoint: "e".into(),
                detail: "d".into(),
            },
            Diagnosis::RemoteNoDocker {
                endpoint: "e".into(),
                socket: "/s".into(),
                detail: "d".into(),
            },
            Diagnosis::TlsServerRejected {
                endpoint: "e".into(),
                ca: "/ca".into(),
                detail: "d".into(),
            },
            Diagnosis::TlsClientRefused {
                endpoint: "e".into(),
                detail: "d".into(),
            },
            Diagnosis::EngineFileUnusable {
                endpoint: "e".into(),
                path: "/p".into(),
                detail: "d".into(),
            },
            Diagnosis::PlainTcpRefused {
                endpoint: "e".into(),
            },
        ];
        let mut codes: Vec<_> = all.iter().map(Diagnosis::code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for d in &all {
            assert!(!d.message().is_empty() && !d.hint().is_empty());
            assert!(!d.message().contains("unknown error"));
        }
        assert!(Diagnosis::PermissionDenied {
            socket: "/s".into(),
            group: Some("docker".into())
        }
        .hint()
        .contains("usermod -aG docker"));
    }

    #[test]
    fn tls_failures_name_the_side_that_refused() {
        let cases = [
            ("lost the connection to the engine: error trying to connect: invalid peer certificate: UnknownIssuer", Some(TlsFailure::Server)),
            ("client error (SendRequest): connection error: received fatal alert: CertificateRequired", Some(TlsFailure::Client)),
            ("received fatal alert: UnknownCA", Some(TlsFailure::Client)),
            ("connection closed before message completed", None),
        ];
        for (text, expected) in cases {
            assert_eq!(classify_tls(text), expected, "{text}");
        }
    }

    #[test]
    fn docker_cli_lookup() {
        assert!(!docker_cli_on_path(Some(std::ffi::OsStr::new(
            "/nonexistent"
        ))));
        assert!(!docker_cli_on_path(None));
    }
}
