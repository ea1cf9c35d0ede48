//! Where the engine is: `DOCKER_HOST`, or the default socket.

use std::path::{Path, PathBuf};

/// The socket Docker listens on when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// An engine address berth can connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

/// `DOCKER_HOST` holds something berth cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DOCKER_HOST `{value}` is malformed: {why}; expected unix:///path/to/docker.sock or tcp://HOST:PORT")]
pub struct MalformedHost {
    pub value: String,
    pub why: String,
}

impl Endpoint {
    /// The endpoint from `DOCKER_HOST`'s value, or the default socket when it is unset or empty.
    pub fn from_docker_host(value: Option<&str>) -> Result<Self, MalformedHost> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(Self::Unix(PathBuf::from(DEFAULT_SOCKET)));
        };
        let bad = |why: &str| MalformedHost {
            value: value.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = value
            .split_once("://")
            .ok_or_else(|| bad("it has no scheme"))?;
        match scheme {
            "unix" => {
                if rest.is_empty() || !Path::new(rest).is_absolute() {
                    return Err(bad("the socket path must be absolute"));
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            "tcp" | "http" => {
                let rest = rest.trim_end_matches('/');
                if rest.is_empty() || rest.contains('/') {
                    return Err(bad("expected HOST:PORT after tcp://"));
                }
                let (host, port) = match rest.rsplit_once(':') {
                    Some((h, p)) => (
                        h,
                        p.parse::<u16>()
                            .map_err(|_| bad(&format!("`{p}` is not a port number")))?,
                    ),
                    None => (rest, 2375),
                };
                if host.is_empty() {
                    return Err(bad("the host is empty"));
                }
                Ok(Self::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "ssh" => Err(bad("ssh:// engines are not supported by this berth yet")),
            "npipe" => Err(bad("named pipes exist only on Windows")),
            other => Err(bad(&format!("unknown scheme `{other}`"))),
        }
    }

    /// The socket path, for a local Unix endpoint.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(path) => Some(path),
            Self::Tcp { .. } => None,
        }
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
    fn message_names_value_and_forms() {
        let e = Endpoint::from_docker_host(Some("nonsense"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`nonsense`") && e.contains("unix:///"), "{e}");
    }
}
