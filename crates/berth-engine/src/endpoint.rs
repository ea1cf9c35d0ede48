//! Where the engine is: `--engine NAME|URL`, else `DOCKER_HOST`, else the default socket.
//!
//! Address syntax and the `[engines.NAME]` tables live in `berth_core::engine` (pure); here they
//! become an [`Endpoint`] with the files and flags a connection needs.

use std::path::{Path, PathBuf};

use berth_core::engine::{EngineAddress, EngineConfig, ADDRESS_FORMS};

pub use berth_core::engine::DEFAULT_SOCKET;

/// An engine address berth can connect to, with what the connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
        security: TcpSecurity,
    },
    Ssh(SshTarget),
}

/// How a `tcp://` connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpSecurity {
    Tls(TlsFiles),
    /// No TLS: `allowed` only when the user said so (`insecure_plain_tcp`, `--engine-insecure`).
    Plain {
        allowed: bool,
    },
}

/// PEM files for a TLS connection. Without a client certificate only the server is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// The client certificate and its key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// An engine on another host, reached by forwarding its socket through the system's ssh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The private key file; only its path is ever passed to ssh.
    pub identity: Option<PathBuf>,
    /// The engine's socket on the remote host.
    pub remote_socket: String,
    /// Extra `-o KEY=VALUE` options, already checked against the allowed keys.
    pub options: Vec<String>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp { host, port, .. } => write!(f, "tcp://{host}:{port}"),
            Self::Ssh(t) => write!(
                f,
                "{}",
                EngineAddress::Ssh {
                    user: t.user.clone(),
                    host: t.host.clone(),
                    port: t.port,
                }
            ),
        }
    }
}

/// An engine address berth cannot use; `source` says where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin} `{value}` is malformed: {why}; expected {ADDRESS_FORMS}")]
pub struct MalformedHost {
    /// `DOCKER_HOST`, `--engine` or the engine's name.
    pub origin: String,
    pub value: String,
    pub why: String,
}

/// Which engine the user chose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// `DOCKER_HOST`, else the default socket.
    #[default]
    Default,
    /// `--engine URL`.
    Url(String),
    /// `--engine NAME`, with its (already validated) `[engines.NAME]` table, paths absolute.
    Named { name: String, config: EngineConfig },
}

/// What resolving an engine reads from the environment, handed in by the caller.
#[derive(Debug, Clone, Default)]
pub struct EndpointEnv {
    pub docker_host: Option<String>,
    /// `DOCKER_TLS_VERIFY`: any non-empty value asks for TLS with the files of `DOCKER_CERT_PATH`.
    pub docker_tls_verify: Option<String>,
    /// `DOCKER_CERT_PATH`, else `~/.docker`.
    pub docker_cert_path: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// `--engine-insecure`: plain TCP is accepted (with a warning).
    pub allow_plain_tcp: bool,
}

impl Endpoint {
    /// The endpoint from `DOCKER_HOST`'s value, or the default socket when it is unset or empty.
    pub fn from_docker_host(value: Option<&str>) -> Result<Self, MalformedHost> {
        Self::resolve(
            &EngineChoice::Default,
            &EndpointEnv {
                docker_host: value.map(str::to_string),
                ..Default::default()
            },
        )
    }

    /// The endpoint the user chose, with its TLS files or ssh settings.
    pub fn resolve(choice: &EngineChoice, env: &EndpointEnv) -> Result<Self, MalformedHost> {
        let malformed = |origin: &str, value: &str, why: String| MalformedHost {
            origin: origin.to_string(),
            value: value.to_string(),
            why,
        };
        let (source, value) = match choice {
            EngineChoice::Named { name, config } => {
                let address = config.validate().map_err(|(field, why)| {
                    malformed(
                        &format!("engine `{name}`"),
                        &config.host,
                        format!("{field}: {why}"),
                    )
                })?;
                return Ok(Self::from_config(address, config, env));
            }
            EngineChoice::Url(url) => ("--engine", url.as_str()),
            EngineChoice::Default => match env.docker_host.as_deref().filter(|v| !v.is_empty()) {
                Some(v) => ("DOCKER_HOST", v),
                None => return Ok(Self::Unix(PathBuf::from(DEFAULT_SOCKET))),
            },
        };
        let address =
            EngineAddress::parse(value).map_err(|why| malformed(source, value, why.to_string()))?;
        Ok(match address {
            EngineAddress::Unix(path) => Self::Unix(path),
            EngineAddress::Tcp { host, port } => {
                // The docker CLI's convention: DOCKER_TLS_VERIFY with DOCKER_CERT_PATH's files.
                let security = if env
                    .docker_tls_verify
                    .as_deref()
                    .is_some_and(|v| !v.is_empty())
                {
                    let dir = env
                        .docker_cert_path
                        .clone()
                        .or_else(|| env.home.as_ref().map(|h| h.join(".docker")))
                        .unwrap_or_else(|| PathBuf::from(".docker"));
                    TcpSecurity::Tls(TlsFiles {
                        ca: dir.join("ca.pem"),
                        client: Some((dir.join("cert.pem"), dir.join("key.pem"))),
                    })
                } else {
                    TcpSecurity::Plain {
                        allowed: env.allow_plain_tcp,
                    }
                };
                Self::Tcp {
                    host,
                    port,
                    security,
                }
            }
            EngineAddress::Ssh { user, host, port } => Self::Ssh(SshTarget {
                user,
                host,
                port,
                identity: None,
                remote_socket: DEFAULT_SOCKET.to_string(),
                options: Vec::new(),
            }),
        })
    }

    fn from_config(address: EngineAddress, config: &EngineConfig, env: &EndpointEnv) -> Self {
        let path = |p: &String| expand_home(p, env.home.as_deref());
        match address {
            EngineAddress::Unix(path) => Self::Unix(path),
            EngineAddress::Tcp { host, port } => {
                let security = match &config.ca {
                    Some(ca) => TcpSecurity::Tls(TlsFiles {
                        ca: path(ca),
                        client: config
                            .cert
                            .as_ref()
                            .zip(config.key.as_ref())
                            .map(|(c, k)| (path(c), path(k))),
                    }),
                    None => TcpSecurity::Plain {
                        allowed: config.insecure_plain_tcp || env.allow_plain_tcp,
                    },
                };
                Self::Tcp {
                    host,
                    port,
                    security,
                }
            }
            EngineAddress::Ssh { user, host, port } => Self::Ssh(SshTarget {
                user,
                host,
                port,
                identity: config.identity.as_ref().map(path),
                remote_socket: config
                    .remote_socket
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SOCKET.to_string()),
                options: config.ssh_options.clone(),
            }),
        }
    }

    /// The socket path, for a local Unix endpoint.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(path) => Some(path),
            Self::Tcp { .. } | Self::Ssh(_) => None,
        }
    }

    /// Whether the engine runs on this host and sees its file system (bind mounts, FIFOs).
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Unix(_))
    }

    /// Plain TCP the user accepted: worth a warning every time.
    pub fn is_insecure(&self) -> bool {
        matches!(
            self,
            Self::Tcp {
                security: TcpSecurity::Plain { allowed: true },
                ..
            }
        )
    }
}

/// `~/x` against the home directory; anything else as it is (already absolute from the config).
fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Option<&str>) -> Result<String, String> {
        Endpoint::from_docker_host(v)
            .map(|e| e.to_string())
            .map_err(|e| e.why)
    }

    #[test]
    fn docker_host_values() {
        assert_eq!(parse(None), Ok("unix:///var/run/docker.sock".into()));
        assert_eq!(parse(Some("")), Ok("unix:///var/run/docker.sock".into()));
        assert_eq!(
            parse(Some("unix:///tmp/d.sock")),
            Ok("unix:///tmp/d.sock".into())
        );
        assert_eq!(
            parse(Some("tcp://127.0.0.1:2376")),
            Ok("tcp://127.0.0.1:2376".into())
        );
        assert_eq!(parse(Some("tcp://box")), Ok("tcp://box:2375".into()));
        assert_eq!(parse(Some("ssh://a@box:2")), Ok("ssh://a@box:2".into()));
        assert!(parse(Some("/var/run/docker.sock"))
            .unwrap_err()
            .contains("scheme"));
        assert!(parse(Some("unix://relative.sock"))
            .unwrap_err()
            .contains("absolute"));
        assert!(parse(Some("tcp://h:port")).unwrap_err().contains("port"));
        assert!(parse(Some("tcp://:1")).unwrap_err().contains("host"));
        assert!(parse(Some("foo://x")).unwrap_err().contains("`foo`"));
    }

    #[test]
    fn message_names_source_value_and_forms() {
        let e = Endpoint::from_docker_host(Some("nonsense"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("DOCKER_HOST `nonsense`")
                && e.contains("unix:///")
                && e.contains("ssh://"),
            "{e}"
        );
        let e = Endpoint::resolve(&EngineChoice::Url("tcp//x".into()), &EndpointEnv::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--engine `tcp//x`"), "{e}");
    }

    fn tcp_security(choice: EngineChoice, env: &EndpointEnv) -> TcpSecurity {
        match Endpoint::resolve(&choice, env).unwrap() {
            Endpoint::Tcp { security, .. } => security,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_from_the_docker_variables_and_from_engine_tables() {
        let env = EndpointEnv {
            docker_host: Some("tcp://box:2376".into()),
            docker_tls_verify: Some("1".into()),
            home: Some("/home/ann".into()),
            ..Default::default()
        };
        assert_eq!(
            tcp_security(EngineChoice::Default, &env),
            TcpSecurity::Tls(TlsFiles {
                ca: "/home/ann/.docker/ca.pem".into(),
                client: Some((
                    "/home/ann/.docker/cert.pem".into(),
                    "/home/ann/.docker/key.pem".into()
                )),
            })
        );
        let env = EndpointEnv {
            docker_cert_path: Some("/certs".into()),
            ..env
        };
        assert!(matches!(
            tcp_security(EngineChoice::Url("tcp://b:1".into()), &env),
            TcpSecurity::Tls(TlsFiles { ca, .. }) if ca == Path::new("/certs/ca.pem")
        ));
        let plain = EndpointEnv {
            docker_host: Some("tcp://box".into()),
            ..Default::default()
        };
        assert_eq!(
            tcp_security(EngineChoice::Default, &plain),
            TcpSecurity::Plain { allowed: false }
        );
        let insecure = EndpointEnv {
            allow_plain_tcp: true,
            ..plain
        };
        assert_eq!(
            tcp_security(EngineChoice::Default, &insecure),
            TcpSecurity::Plain { allowed: true }
        );
        let config = EngineConfig {
            host: "tcp://b:2376".into(),
            ca: Some("~/ca.pem".into()),
            ..Default::default()
        };
        let named = EngineChoice::Named {
            name: "b".into(),
            config,
        };
        assert_eq!(
            tcp_security(
                named,
                &EndpointEnv {
                    home: Some("/h".into()),
                    ..Default::default()
                }
            ),
            TcpSecurity::Tls(TlsFiles {
                ca: "/h/ca.pem".into(),
                client: None
            })
        );
    }

    #[test]
    fn ssh_engine_table() {
        let config = EngineConfig {
            host: "ssh://ann@box:2222".into(),
            identity: Some("~/.ssh/k".into()),
            remote_socket: Some("/run/user/1000/docker.sock".into()),
            ssh_options: vec!["StrictHostKeyChecking=yes".into()],
            ..Default::default()
        };
        let endpoint = Endpoint::resolve(
            &EngineChoice::Named {
                name: "box".into(),
                config,
            },
            &EndpointEnv {
                home: Some("/home/ann".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(endpoint.to_string(), "ssh://ann@box:2222");
        assert!(!endpoint.is_local());
        let Endpoint::Ssh(t) = endpoint else { panic!() };
        assert_eq!(t.identity.as_deref(), Some(Path::new("/home/ann/.ssh/k")));
        assert_eq!(t.remote_socket, "/run/user/1000/docker.sock");
    }
}
