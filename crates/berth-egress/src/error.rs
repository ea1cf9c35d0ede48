//! What can go wrong starting the proxy, making the run's certificates and reaching upstreams.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listener `{0}`: not tcp-N")]
    NotTcpListener(String),
    #[error("listener `{name}`: no tcp forward {index}")]
    NoTcpForward { name: String, index: usize },
    /// A listener name that is neither the proxy, a TCP forward nor a brokered API.
    #[error("listener `{name}`: {reason}")]
    UnknownListener { name: String, reason: String },
    #[error("listener `{0}`: no credential to broker")]
    NoBroker(String),
    #[error(transparent)]
    BaseUrl(#[from] BaseUrlError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("cannot start the egress proxy's closing thread: {0}")]
    Closer(std::io::Error),
    /// A socket could not be bound or made connectable.
    #[error("{}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A broker's upstream URL that is not `https://HOST[:PORT][/PATH]` (or `http://`).
#[derive(Debug, thiserror::Error)]
#[error(
    "upstream `{url}`: expected https://HOST[:PORT][/PATH] (or http:// for a local test server)"
)]
pub struct BaseUrlError {
    pub url: String,
}

/// A PEM file of certificates that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("not PEM certificates: {0}")]
    NotPem(rustls::pki_types::pem::Error),
    #[error("no certificate in it")]
    Empty,
}

/// The TLS client or server configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("an extra root certificate is not usable: {0}")]
    ExtraRoot(rustls::Error),
    #[error("TLS setup: {0}")]
    Protocols(rustls::Error),
}

/// Header injection could not be set up, or a host's certificate not made.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("injection host {host}: {reason}")]
    Target { host: String, reason: String },
    #[error("injection host {host}: header: {source}")]
    Header {
        host: String,
        source: hyper::header::InvalidHeaderName,
    },
    #[error("injection host {host}: the value of {env} is not a valid header value (printable characters, no line breaks)")]
    Value { host: String, env: String },
    #[error("making the run's CA: {0}")]
    Ca(rcgen::Error),
    #[error("certificate cache poisoned")]
    CachePoisoned,
    #[error("certificate for {host}: {source}")]
    Leaf { host: String, source: rcgen::Error },
    #[error("certificate for {host}: {source}")]
    LeafTls { host: String, source: rustls::Error },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// An upstream could not be reached; recorded in the egress event and told to the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve {name}: {source}")]
    Resolve {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} resolves to {ip}, which is not a public address: berth's proxy does not connect names to this machine or private networks (allow the address itself if that is meant)")]
    NotPublic { name: String, ip: IpAddr },
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("cannot connect to {host}:{port} ({addr}): {source}")]
    Connect {
        host: String,
        port: u16,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {host}:{port} timed out after {secs}s")]
    Timeout { host: String, port: u16, secs: u64 },
}
