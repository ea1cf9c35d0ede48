//! Where the engine is: engine addresses (`unix://`, `tcp://`, `ssh://`) and the `[engines.NAME]`
//! tables of the configuration files. Pure: paths are resolved and files read by the caller.

use std::path::PathBuf;

use serde::Deserialize;

/// The socket Docker listens on, locally and on a remote host reached through ssh.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The port of a `tcp://` address without one, as the docker CLI assumes.
pub const DEFAULT_TCP_PORT: u16 = 2375;

/// An engine address as written, before any file is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineAddress {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
    /// `ssh://[user@]host[:port]`: the engine's socket on that host, through the system's ssh.
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

impl std::fmt::Display for EngineAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Ssh { user, host, port } => {
                write!(f, "ssh://")?;
                if let Some(user) = user {
                    write!(f, "{user}@")?;
                }
                write!(f, "{host}")?;
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
        }
    }
}

/// What is wrong with an address; the caller names where it came from.
pub const ADDRESS_FORMS: &str =
    "unix:///path/to/docker.sock, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]";

/// Why an engine address does not parse; the caller names where it came from (the message
/// does not repeat the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("it has no scheme")]
    NoScheme,
    #[error("the socket path must be absolute")]
    RelativeSocket,
    #[error("expected HOST:PORT after tcp://")]
    TcpForm,
    #[error("an ssh:// address has no path: ssh://[USER@]HOST[:PORT]; set the remote socket with `remote_socket`")]
    SshPath,
    #[error("`{0}` is not a usable user name")]
    User(String),
    #[error("`{0}` is not a usable host name")]
    Host(String),
    #[error("named pipes exist only on Windows")]
    NamedPipe,
    #[error("unknown scheme `{0}`")]
    UnknownScheme(String),
    #[error("`{0}` is not a port number")]
    Port(String),
    #[error("the host is empty")]
    EmptyHost,
}

/// An `ssh_options` entry berth does not pass to ssh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshOptionError {
    #[error("`{0}` is not KEY=VALUE (e.g. \"StrictHostKeyChecking=yes\")")]
    NotKeyValue(String),
    #[error("`{}` is not allowed; allowed: {}", .0, SSH_OPTIONS.join(", "))]
    NotAllowed(String),
    #[error("the value of `{0}` is empty or unusable")]
    BadValue(String),
}

/// `--engine NAME` names no configured engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no engine named `{0}`: no `[engines.NAME]` table is configured")]
    NoneConfigured(String),
    #[error("no engine named `{name}`; configured engines: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
}

impl EngineAddress {
    /// Parses `unix:///path`, `tcp://host[:port]` (also `http://`) and `ssh://[user@]host[:port]`.
    /// The error says why, without repeating the value.
    pub fn parse(value: &str) -> Result<Self, AddressError> {
        let (scheme, rest) = value.split_once("://").ok_or(AddressError::NoScheme)?;
        match scheme {
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(AddressError::RelativeSocket);
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            "tcp" | "http" => {
                let rest = rest.trim_end_matches('/');
                if rest.is_empty() || rest.contains('/') {
                    return Err(AddressError::TcpForm);
                }
                let (host, port) = split_port(rest)?;
                Ok(Self::Tcp {
                    host: host.to_string(),
                    port: port.unwrap_or(DEFAULT_TCP_PORT),
                })
            }
            "ssh" => {
                let rest = rest.trim_end_matches('/');
                if rest.contains('/') {
                    return Err(AddressError::SshPath);
                }
                let (user, host_port) = match rest.rsplit_once('@') {
                    Some((user, hp)) => (Some(user), hp),
                    None => (None, rest),
                };
                if let Some(user) = user {
                    if user.is_empty()
                        || user.starts_with('-')
                        || !user
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    {
                        return Err(AddressError::User(user.to_string()));
                    }
                }
                let (host, port) = split_port(host_port)?;
                if host.starts_with('-')
                    || !host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c))
                {
                    return Err(AddressError::Host(host.to_string()));
                }
                Ok(Self::Ssh {
                    user: user.map(str::to_string),
                    host: host.to_string(),
                    port,
                })
            }
            "npipe" => Err(AddressError::NamedPipe),
            other => Err(AddressError::UnknownScheme(other.to_string())),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Self::Unix(_))
    }
}

/// `host:port`, `host`, `[v6]:port`; the host must not be empty.
fn split_port(text: &str) -> Result<(&str, Option<u16>), AddressError> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| AddressError::Port(p.to_string()))?,
            ),
        ),
        _ => (text, None),
    };
    if host.is_empty() {
        return Err(AddressError::EmptyHost);
    }
    Ok((host, port))
}

/// `[engines.NAME]` in a configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The address: `unix:///…`, `tcp://HOST:PORT` or `ssh://[USER@]HOST[:PORT]`.
    pub host: String,
    /// ssh: the private key file (`-i`); only its path is ever passed on.
    pub identity: Option<String>,
    /// ssh: the engine's socket on the remote host.
    pub remote_socket: Option<String>,
    /// ssh: extra `-o KEY=VALUE` options, restricted to [`SSH_OPTIONS`].
    #[serde(default)]
    pub ssh_options: Vec<String>,
    /// tcp with TLS: the CA that signed the engine's certificate.
    pub ca: Option<String>,
    /// tcp with TLS: berth's client certificate and its key.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// tcp without TLS: anyone on the network can read the traffic and drive the engine.
    #[serde(default)]
    pub insecure_plain_tcp: bool,
}

/// The ssh options an engine may set. Anything that runs a command on this host
/// (`ProxyCommand`, `LocalCommand`, `KnownHostsCommand`, …) is deliberately absent: a
/// workspace's `berth.toml` must not be able to run programs outside the sandbox.
pub const SSH_OPTIONS: &[&str] = &[
    "UserKnownHostsFile",
    "GlobalKnownHostsFile",
    "StrictHostKeyChecking",
    "HostKeyAlias",
    "ConnectTimeout",
    "ConnectionAttempts",
    "ServerAliveInterval",
    "ServerAliveCountMax",
    "ProxyJump",
    "IdentitiesOnly",
    "Compression",
    "AddressFamily",
    "CheckHostIP",
    "LogLevel",
];

impl EngineConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<EngineAddress, (String, String)> {
        let address = EngineAddress::parse(&self.host).map_err(|why| {
            (
                "host".to_string(),
                format!(
                    "`{}` is malformed: {why}; expected {ADDRESS_FORMS}",
                    self.host
                ),
            )
        })?;
        let field = |name: &str, message: &str| (name.to_string(), message.to_string());
        let is_ssh = matches!(address, EngineAddress::Ssh { .. });
        let is_tcp = matches!(address, EngineAddress::Tcp { .. });
        for (name, set) in [
            ("identity", self.identity.is_some()),
            ("remote_socket", self.remote_socket.is_some()),
            ("ssh_options", !self.ssh_options.is_empty()),
        ] {
            if set && !is_ssh {
                return Err(field(name, "applies only to ssh:// engines"));
            }
        }
        for (name, set) in [
            ("ca", self.ca.is_some()),
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
            ("insecure_plain_tcp", self.insecure_plain_tcp),
        ] {
            if set && !is_tcp {
                return Err(field(name, "applies only to tcp:// engines"));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(field(
                if self.cert.is_some() { "key" } else { "cert" },
                "`cert` and `key` go together: set both or neither",
            ));
        }
        if self.cert.is_some() && self.ca.is_none() {
            return Err(field(
                "ca",
                "a client certificate needs the CA that signed the engine's certificate",
            ));
        }
        if self.insecure_plain_tcp && self.ca.is_some() {
            return Err(field(
                "insecure_plain_tcp",
                "contradicts `ca`: choose TLS (ca, cert, key) or plain TCP",
            ));
        }
        if is_tcp && self.ca.is_none() && !self.insecure_plain_tcp {
            return Err(field("ca", "a tcp:// engine needs TLS (`ca`, and `cert` and `key` when the engine checks clients), or `insecure_plain_tcp = true` to accept an unencrypted, unauthenticated connection"));
        }
        if let Some(socket) = &self.remote_socket {
            if !socket.starts_with('/') {
                return Err(field(
                    "remote_socket",
                    "must be an absolute path on the remote host",
                ));
            }
        }
        for option in &self.ssh_options {
            check_ssh_option(option).map_err(|e| ("ssh_options".to_string(), e.to_string()))?;
        }
        Ok(address)
    }
}

/// `KEY=VALUE` with an allowed key and a value that cannot smuggle another option in.
pub fn check_ssh_option(option: &str) -> Result<(), SshOptionError> {
    let Some((key, value)) = option.split_once('=') else {
        return Err(SshOptionError::NotKeyValue(option.to_string()));
    };
    let Some(known) = SSH_OPTIONS.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
        return Err(SshOptionError::NotAllowed(key.to_string()));
    };
    if value.is_empty() || value.starts_with('-') || value.chars().any(char::is_control) {
        return Err(SshOptionError::BadValue(known.to_string()));
    }
    Ok(())
}

/// Which engine a command uses: `--engine NAME`, `--engine URL`, or none (DOCKER_HOST, then the
/// default socket).
pub fn lookup<'a>(
    engines: &'a std::collections::BTreeMap<String, EngineConfig>,
    name: &str,
) -> Result<&'a EngineConfig, LookupError> {
    engines.get(name).ok_or_else(|| {
        if engines.is_empty() {
            LookupError::NoneConfigured(name.to_string())
        } else {
            LookupError::Unknown {
                name: name.to_string(),
                known: engines.keys().cloned().collect(),
            }
        }
    })
}

/// Why berth's shim, built for `shim_arch` (`std::env::consts::ARCH`), cannot run on an engine
/// whose host reports `engine_arch` (`Architecture` in `docker info`, as `uname -m` says it):
/// the message and a hint, or `None` when the two are one machine architecture. An engine that
/// reports none is not refused: nothing says it differs.
pub fn shim_architecture_problem(shim_arch: &str, engine_arch: &str) -> Option<(String, String)> {
    let engine_arch = engine_arch.trim();
    if engine_arch.is_empty() || canonical_arch(shim_arch) == canonical_arch(engine_arch) {
        return None;
    }
    Some((
        format!("the engine's host is {engine_arch}, but berth's shim (the sandbox's entrypoint) is built for {shim_arch}: every run there would fail to start"),
        format!("run berth on a {engine_arch} host to use this engine, or choose an engine on a {shim_arch} host (--engine)"),
    ))
}

/// One name per architecture, whether said by `uname -m`, Go (Docker's platforms) or Rust.
fn canonical_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "amd64" => "x86_64",
        "aarch64" | "arm64" => "aarch64",
        "x86" | "i386" | "i486" | "i586" | "i686" | "386" => "x86",
        "ppc64le" | "powerpc64le" | "powerpc64" => "powerpc64",
        a if a.starts_with("armv") || a == "arm" => "arm",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_runs_only_on_an_engine_of_its_own_architecture() {
        let refused = |shim: &str, engine: &str| shim_architecture_problem(shim, engine).is_some();
        assert!(!refused("x86_64", "x86_64"));
        assert!(!refused("x86_64", "amd64"));
        assert!(!refused("aarch64", "arm64"));
        assert!(!refused("arm", "armv7l"));
        assert!(
            !refused("x86_64", ""),
            "an engine that says nothing is not refused"
        );
        assert!(refused("x86_64", "aarch64"));
        assert!(refused("aarch64", "x86_64"));
        assert!(refused("x86_64", "s390x"));
        let (message, hint) = shim_architecture_problem("x86_64", "aarch64").unwrap();
        assert!(
            message.contains("aarch64") && message.contains("x86_64"),
            "{message}"
        );
        assert!(hint.contains("--engine"), "{hint}");
    }

    fn addr(v: &str) -> Result<String, String> {
        EngineAddress::parse(v)
            .map(|a| a.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn addresses() {
        assert_eq!(addr("unix:///tmp/d.sock"), Ok("unix:///tmp/d.sock".into()));
        assert_eq!(addr("tcp://box"), Ok("tcp://box:2375".into()));
        assert_eq!(
            addr("tcp://10.0.0.1:2376/"),
            Ok("tcp://10.0.0.1:2376".into())
        );
        assert_eq!(addr("ssh://ann@box:2222"), Ok("ssh://ann@box:2222".into()));
        assert_eq!(addr("ssh://box"), Ok("ssh://box".into()));
        assert_eq!(addr("ssh://[::1]:22"), Ok("ssh://[::1]:22".into()));
        assert!(addr("unix://rel.sock").unwrap_err().contains("absolute"));
        assert!(addr("tcp://h:port").unwrap_err().contains("`port`"));
        assert!(addr("tcp://:1").unwrap_err().contains("host is empty"));
        assert!(addr("ssh://-oProxyCommand=x")
            .unwrap_err()
            .contains("host name"));
        assert!(addr("ssh://-l@h").unwrap_err().contains("user name"));
        assert!(addr("ssh://h/var/run/docker.sock")
            .unwrap_err()
            .contains("remote_socket"));
        assert!(addr("ssh://h:99999").unwrap_err().contains("port"));
        assert!(addr("box").unwrap_err().contains("scheme"));
        assert!(addr("ftp://x").unwrap_err().contains("`ftp`"));
    }

    fn check(toml_text: &str) -> Result<String, String> {
        let c: EngineConfig = toml::from_str(toml_text).map_err(|e| e.message().to_string())?;
        c.validate()
            .map(|a| a.to_string())
            .map_err(|(field, message)| format!("{field}: {message}"))
    }

    #[test]
    fn engine_tables() {
        assert_eq!(check("host = \"ssh://a@b:2\"\nidentity = \"~/.ssh/k\"\nssh_options = [\"StrictHostKeyChecking=yes\"]"), Ok("ssh://a@b:2".into()));
        assert_eq!(
            check("host = \"tcp://b:2376\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\""),
            Ok("tcp://b:2376".into())
        );
        assert_eq!(
            check("host = \"tcp://b:2376\"\nca = \"ca.pem\""),
            Ok("tcp://b:2376".into())
        );
        assert_eq!(
            check("host = \"tcp://b\"\ninsecure_plain_tcp = true"),
            Ok("tcp://b:2375".into())
        );
        let cases = [
            ("host = \"tcp://b\"", "ca: a tcp:// engine needs TLS"),
            (
                "host = \"tcp://b\"\nca = \"a\"\ncert = \"c\"",
                "key: `cert` and `key` go together",
            ),
            (
                "host = \"tcp://b\"\ncert = \"c\"\nkey = \"k\"",
                "ca: a client certificate",
            ),
            (
                "host = \"tcp://b\"\nca = \"a\"\ninsecure_plain_tcp = true",
                "insecure_plain_tcp: contradicts",
            ),
            (
                "host = \"ssh://b\"\nca = \"a\"",
                "ca: applies only to tcp://",
            ),
            (
                "host = \"tcp://b\"\nca = \"a\"\nidentity = \"k\"",
                "identity: applies only to ssh://",
            ),
            (
                "host = \"ssh://b\"\nremote_socket = \"run/d.sock\"",
                "remote_socket: must be an absolute path",
            ),
            (
                "host = \"ssh://b\"\nssh_options = [\"ProxyCommand=sh -c x\"]",
                "ssh_options: `ProxyCommand` is not allowed",
            ),
            (
                "host = \"ssh://b\"\nssh_options = [\"StrictHostKeyChecking\"]",
                "ssh_options: `StrictHostKeyChecking` is not KEY=VALUE",
            ),
            (
                "host = \"ssh://b\"\nssh_options = [\"ProxyJump=-oProxyCommand=x\"]",
                "ssh_options: the value of `ProxyJump`",
            ),
            (
                "host = \"nope\"",
                "host: `nope` is malformed: it has no scheme; expected unix://",
            ),
            (
                "host = \"ssh://b\"\nidentiy = \"k\"",
                "unknown field `identiy`",
            ),
        ];
        for (text, expected) in cases {
            let got = check(text).unwrap_err();
            assert!(got.contains(expected), "{text}: {got}");
        }
    }

    #[test]
    fn unknown_engine_lists_the_known_ones() {
        let mut engines = std::collections::BTreeMap::new();
        assert!(lookup(&engines, "x")
            .unwrap_err()
            .to_string()
            .contains("no `[engines.NAME]`"));
        engines.insert("build".to_string(), EngineConfig::default());
        engines.insert("gpu".to_string(), EngineConfig::default());
        assert_eq!(
            lookup(&engines, "x").unwrap_err().to_string(),
            "no engine named `x`; configured engines: build, gpu"
        );
        assert!(lookup(&engines, "gpu").is_ok());
    }
}
