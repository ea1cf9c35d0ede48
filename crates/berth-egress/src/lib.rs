//! berth's egress proxy. It runs inside the berth process of a run (or of the runner), listens
//! on unix sockets in a directory that is bind-mounted read-only into the sandbox, and is the
//! sandbox's only way out: the shim's forwarder turns the sandbox's loopback ports into
//! connections to these sockets (`NAME.sock` for the listener `NAME`), or hands the sandbox's
//! connection itself over (`NAME.handoff.sock`, [`handoff`]).
//!
//! - `proxy`: an HTTP proxy. `CONNECT host:port` (HTTPS, matched on the requested host) and
//!   plain HTTP in absolute form (matched on host, port, method and path). The proxy resolves
//!   names itself (the sandbox has no resolver) and refuses names that resolve to loopback or
//!   private addresses. Everything else gets `403` naming the rule to add.
//! - `anthropic` / `openai`: the credential broker. Requests in origin form are sent to the real
//!   API over TLS with the real credential in place of whatever the sandbox sent; responses,
//!   server-sent events included, stream through unbuffered, and the usage the API reports is
//!   recorded.
//! - `tcp-N`: a raw TCP forward to the N-th configured `host:port`.
//! - Header injection (`inject`): a `CONNECT` to an injection host is answered by the proxy
//!   itself, with TLS under the run's CA, and each request gets the configured header.
//!
//! Everything that arrives on a socket is hostile input: header sizes are bounded, headers must
//! arrive in time, connections per run are limited, and no value from the sandbox is trusted to
//! choose anything the policy did not allow. Each connection or request ends in one
//! [`EgressRecord`] given to the run's sink.

mod error;
pub mod handoff;
mod inject;
mod relay;
mod sandbox;
pub mod usage;

pub use error::{
    BaseUrlError, CertificateError, DialError, InjectError, ProxyError, TlsSetupError,
};
pub use inject::InjectUpstream;
pub use rustls::pki_types::CertificateDer;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use berth_core::egress::{
    is_public, BrokeredApi, CredentialHeader, EgressRecord, Host, Kind, Policy, Request,
};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;
type Response = hyper::Response<ProxyBody>;

/// Where each decision goes: the run's events and record.
pub type Sink = Arc<dyn Fn(EgressRecord) + Send + Sync>;

/// Bounds on what one run's sandbox can make the proxy do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once over all listeners; more wait.
    pub max_connections: usize,
    /// Request headers must arrive within this.
    pub header_timeout: Duration,
    /// Connecting upstream (resolving included).
    pub connect_timeout: Duration,
    /// The most bytes of request line and headers.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// A brokered API: where it really is and the credential the proxy adds.
#[derive(Clone)]
pub struct BrokerUpstream {
    pub api: BrokeredApi,
    /// `https://api.anthropic.com`, or `http://127.0.0.1:PORT` in tests.
    pub base_url: String,
    /// The name of the credential (`ANTHROPIC_API_KEY`), for the header choice and the record.
    pub credential_name: String,
    /// The real credential. Never logged.
    pub credential: String,
}

impl std::fmt::Debug for BrokerUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUpstream")
            .field("api", &self.api)
            .field("base_url", &self.base_url)
            .field("credential_name", &self.credential_name)
            .finish_non_exhaustive()
    }
}

/// What one run's proxy allows.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub policy: Policy,
    /// Raw TCP forwards: `tcp-N` connects to `tcp[N]`.
    pub tcp: Vec<(Host, u16)>,
    pub brokers: Vec<BrokerUpstream>,
    /// Names resolved to these addresses instead of through DNS, and exempt from the
    /// public-address rule (tests, and hosts the operator pins).
    pub resolve: BTreeMap<String, IpAddr>,
    /// Root certificates trusted for upstream TLS besides the system's (tests).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// HTTPS hosts whose TLS the proxy terminates to add a header.
    pub inject: Vec<InjectUpstream>,
    /// How long the run's CA is valid (the run's time, with some slack).
    pub inject_validity: Duration,
    pub limits: Limits,
    /// Where the rules were set, for the fix a refusal names.
    pub rules_from: RulesFrom,
}

/// Where a run's egress rules were set: a refusal tells the sandbox's user where to allow more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RulesFrom {
    /// `berth run` on this host: its flags and `berth.toml`.
    #[default]
    Local,
    /// A run submitted to a server and executed by a runner: the submission's `egress`, and
    /// the runner's configuration for injection hosts.
    Submitted,
}

impl RulesFrom {
    /// Where the methods and paths of an injection host are set.
    fn inject_config(self) -> &'static str {
        match self {
            Self::Local => "berth.toml",
            Self::Submitted => "the runner's configuration",
        }
    }
}

/// A running proxy. Dropping it stops every listener and connection and removes its sockets.
pub struct Proxy {
    tasks: JoinSet<()>,
    /// With injection hosts: the run CA's certificate and the host's roots plus it (PEM).
    ca: Option<(String, String)>,
    /// Through `/proc/self/fd/N` of `_dir`, which lives as long as the proxy.
    sockets: Vec<PathBuf>,
    _dir: std::os::fd::OwnedFd,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("sockets", &self.sockets)
            .finish()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// The listener's job.
#[derive(Clone)]
enum Role {
    Proxy,
    Broker(Arc<BrokerUpstream>),
    Tcp(Host, u16),
}

struct Shared {
    config: Config,
    tls: Arc<rustls::ClientConfig>,
    mitm: Option<Arc<inject::Mitm>>,
    sink: Sink,
    permits: Arc<Semaphore>,
    /// Makes the last close of what the sandbox supplied, off the runtime ([`sandbox`]).
    closer: sandbox::Closer,
}

/// A socket name for `listener`: `NAME.sock`.
pub fn socket_name(listener: &str) -> String {
    format!("{listener}.sock")
}

impl Proxy {
    /// Binds `NAME.sock` in the directory `dir` for each listener name (`proxy`, `anthropic`,
    /// `openai`, `tcp-N`) and serves them until dropped. The directory is given as a descriptor
    /// and reached through `/proc/self/fd`, so nothing is bound through a path someone could
    /// swap and no socket path is too long for `sun_path`. It must be berth's own (0755); each
    /// socket is made connectable by any user (0666), since the sandbox runs as another uid.
    pub fn start(
        dir: std::os::fd::OwnedFd,
        listeners: &[String],
        config: Config,
        sink: Sink,
    ) -> Result<Self, ProxyError> {
        use std::os::fd::AsRawFd;
        let dir_path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let tls = Arc::new(client_tls(&config.extra_roots)?);
        let permits = Arc::new(Semaphore::new(config.limits.max_connections.max(1)));
        let mut roles = Vec::new();
        for name in listeners {
            let role = if name == berth_core::egress::PROXY_LISTENER {
                Role::Proxy
            } else if let Some(n) = name.strip_prefix("tcp-") {
                let i: usize = n
                    .parse()
                    .map_err(|_| ProxyError::NotTcpListener(name.clone()))?;
                let (host, port) =
                    config
                        .tcp
                        .get(i)
                        .cloned()
                        .ok_or_else(|| ProxyError::NoTcpForward {
                            name: name.clone(),
                            index: i,
                        })?;
                Role::Tcp(host, port)
            } else {
                let api = BrokeredApi::parse(name).map_err(|e| ProxyError::UnknownListener {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
                let broker = config
                    .brokers
                    .iter()
                    .find(|b| b.api == api)
                    .cloned()
                    .ok_or_else(|| ProxyError::NoBroker(name.clone()))?;
                check_base_url(&broker.base_url)?;
                Role::Broker(Arc::new(broker))
            };
            roles.push((name.clone(), role));
        }
        let mitm = if config.inject.is_empty() {
            None
        } else {
            Some(Arc::new(inject::Mitm::new(
                &config.inject,
                config.inject_validity,
            )?))
        };
        let ca = mitm.as_ref().map(|m| {
            let roots = rustls_native_certs::load_native_certs().certs;
            let bundle = inject::pem_bundle(&roots) + m.ca_pem();
            (m.ca_pem().to_string(), bundle)
        });
        let closer = sandbox::Closer::start().map_err(ProxyError::Closer)?;
        let shared = Arc::new(Shared {
            config,
            tls,
            mitm,
            sink,
            permits,
            closer,
        });
        let mut proxy = Self {
            tasks: JoinSet::new(),
            ca,
            sockets: Vec::new(),
            _dir: dir,
        };
        for (name, role) in roles {
            for (socket, handed_over) in [
                (socket_name(&name), false),
                (handoff::socket_name(&name), true),
            ] {
                let listener = proxy.bind(&dir_path.join(socket))?;
                let accept = accept_loop(listener, role.clone(), shared.clone(), handed_over);
                proxy.tasks.spawn(accept);
            }
        }
        Ok(proxy)
    }

    /// Binds a listener at `path` (after removing a stale socket there), connectable by any
    /// user, and remembers it for removal.
    fn bind(&mut self, path: &std::path::Path) -> Result<UnixListener, ProxyError> {
        use std::os::unix::fs::PermissionsExt;
        let failed = |source: std::io::Error| ProxyError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        let listener = UnixListener::bind(path).map_err(failed)?;
        self.sockets.push(path.to_path_buf());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
        Ok(listener)
    }

    /// With injection hosts: the run CA's certificate (public) and a bundle of the host's root
    /// certificates plus it, both PEM, for the sandbox to trust.
    pub fn ca_files(&self) -> Option<(&str, &str)> {
        self.ca
            .as_ref()
            .map(|(ca, bundle)| (ca.as_str(), bundle.as_str()))
    }
}

/// Serves `listener`'s connections: the sandbox's bytes on the unix socket itself, or, with
/// `handed_over`, on the TCP connection the forwarder hands over through it.
async fn accept_loop(listener: UnixListener, role: Role, shared: Arc<Shared>, handed_over: bool) {
    // Connection tasks live in this set: aborting the loop aborts them all.
    let mut connections = JoinSet::new();
    loop {
        let Ok(permit) = shared.permits.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("egress: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (role, shared) = (role.clone(), shared.clone());
        // The permit goes with the connection: the closing thread gives it back after the
        // connection's last close.
        connections.spawn(async move {
            if handed_over {
                let timeout = shared.config.limits.header_timeout;
                let taken = handoff::receive(stream, timeout, permit, &shared.closer).await;
                if let Some(stream) = taken {
                    serve(stream, role, shared).await;
                }
            } else if let Some(stream) = sandbox::Copied::new(stream, permit, &shared.closer) {
                serve(stream, role, shared).await;
            }
        });
    }
}

/// One connection from the sandbox, whichever way it came.
async fn serve<S: SandboxStream>(stream: S, role: Role, shared: Arc<Shared>) {
    match role {
        Role::Tcp(host, port) => tcp_forward(stream, host, port, &shared).await,
        role => serve_http(stream, role, shared).await,
    }
}

/// A sandbox's connection: a unix socket from the forwarder, or its TCP connection handed over.
trait SandboxStream:
    relay::Socket + tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static
{
}
impl SandboxStream for sandbox::Copied {}
impl SandboxStream for sandbox::Handed {}

async fn serve_http<S: SandboxStream>(stream: S, role: Role, shared: Arc<Shared>) {
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let (role, shared) = (role.clone(), shared.clone());
            async move {
                Ok::<_, Infallible>(match role {
                    Role::Proxy => proxy_request(req, &shared).await,
                    Role::Broker(broker) => broker_request(req, &broker, &shared).await,
                    Role::Tcp(..) => text(StatusCode::BAD_REQUEST, "not an HTTP listener\n"),
                })
            }
        })
    };
    let conn = server(&shared.config.limits)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("egress: connection ended: {e}");
    }
}

/// The HTTP/1.1 server side of a sandbox's connection, within `limits`.
fn server(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
}

/// A response with a short text body.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = hyper::Response::new(
        Full::new(Bytes::from(body.into()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One decision's record, emitted once when the last part holding it is dropped (the tunnel,
/// or the request and response bodies).
struct Tracker {
    record: Mutex<EgressRecord>,
    start: Instant,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    usage: Mutex<Option<usage::UsageSniffer>>,
    sink: Sink,
}

impl Tracker {
    fn new(record: EgressRecord, sink: &Sink) -> Arc<Self> {
        Arc::new(Self {
            record: Mutex::new(record),
            start: Instant::now(),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            usage: Mutex::new(None),
            sink: sink.clone(),
        })
    }
    fn set(&self, f: impl FnOnce(&mut EgressRecord)) {
        if let Ok(mut r) = self.record.lock() {
            f(&mut r);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let mut record = match self.record.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        record.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        record.duration_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Ok(mut u) = self.usage.lock() {
            if let Some(u) = u.as_mut() {
                u.finish();
                record.input_tokens = u.input_tokens;
                record.output_tokens = u.output_tokens;
            }
        }
        (self.sink)(record);
    }
}

/// Which way a metered body flows.
#[derive(Clone, Copy)]
enum Direction {
    Out,
    In,
}

/// A body passed on frame by frame (never buffered), counted, and for API responses read for
/// usage.
struct Metered<B> {
    inner: B,
    tracker: Arc<Tracker>,
    direction: Direction,
    sniff: bool,
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    match this.direction {
                        Direction::Out => this.tracker.bytes_out.fetch_add(n, Ordering::Relaxed),
                        Direction::In => this.tracker.bytes_in.fetch_add(n, Ordering::Relaxed),
                    };
                    if this.sniff {
                        if let Ok(mut u) = this.tracker.usage.lock() {
                            if let Some(u) = u.as_mut() {
                                u.feed(data);
                            }
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn metered<B>(inner: B, tracker: &Arc<Tracker>, direction: Direction, sniff: bool) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Metered {
        inner,
        tracker: tracker.clone(),
        direction,
        sniff,
    }
    .boxed()
}

/// The path of a request without its query (which may carry tokens), bounded.
fn record_path(uri: &hyper::Uri) -> String {
    let path = uri.path();
    let mut end = path.len().min(512);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

async fn proxy_request(req: hyper::Request<Incoming>, shared: &Arc<Shared>) -> Response {
    if req.method() == Method::CONNECT {
        return connect(req, shared).await;
    }
    let uri = req.uri().clone();
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => plain_http(req, shared).await,
        (Some(_), Some(_)) => text(
            StatusCode::BAD_REQUEST,
            "berth egress proxy: only http:// URLs are fetched for you; for https, CONNECT (HTTPS_PROXY is set for that)\n",
        ),
        _ => text(
            StatusCode::BAD_REQUEST,
            "berth egress proxy: send requests in absolute form (http://host/path) or CONNECT host:port, as an HTTP proxy client does\n",
        ),
    }
}

fn denial(rule: &str, fix: Option<&str>, from: RulesFrom) -> String {
    let mut body = format!("berth egress policy: denied: {rule}\n");
    match (fix, from) {
        (Some(fix), RulesFrom::Local) => {
            body += &format!(
                "to allow it, run berth with `{fix}` (or add it to [egress] allow in berth.toml)\n"
            );
        }
        (Some(fix), RulesFrom::Submitted) => {
            body += &format!(
                "to allow it, submit the run with `{fix}` (its egress.allow), within the project's egress ceiling\n"
            );
        }
        (None, _) => {}
    }
    body
}

/// Host and port of a CONNECT target (`host:port`, port required).
fn connect_target(req: &hyper::Request<Incoming>) -> Option<(String, u16)> {
    let authority = req.uri().authority()?;
    let port = authority.port_u16()?;
    Some((authority.host().to_string(), port))
}

async fn connect(req: hyper::Request<Incoming>, shared: &Arc<Shared>) -> Response {
    let Some((host, port)) = connect_target(&req) else {
        return text(
            StatusCode::BAD_REQUEST,
            "berth egress proxy: CONNECT needs host:port\n",
        );
    };
    if let Some(mitm) = &shared.mitm {
        if let Some(target) = mitm.find(&host, port) {
            return inject::connect(req, mitm, target, shared);
        }
    }
    let decision = shared.config.policy.decide(&Request {
        kind: Kind::Connect,
        host: &host,
        port,
        method: None,
        path: None,
    });
    let shown = decision
        .host
        .as_ref()
        .map_or_else(|| bounded(&host), ToString::to_string);
    let tracker = Tracker::new(
        EgressRecord {
            kind: "connect".into(),
            host: shown,
            port,
            method: Some("CONNECT".into()),
            allowed: decision.allowed,
            rule: decision.rule.clone(),
            ..EgressRecord::default()
        },
        &shared.sink,
    );
    let (true, Some(parsed)) = (decision.allowed, decision.host) else {
        tracker.set(|r| r.status = Some(403));
        return text(
            StatusCode::FORBIDDEN,
            denial(
                &decision.rule,
                decision.fix.as_deref(),
                shared.config.rules_from,
            ),
        );
    };
    let upstream = match dial(&parsed, port, shared).await {
        Ok(s) => s,
        Err(e) => {
            tracker.set(|r| {
                r.status = Some(502);
                r.error = Some(e.to_string());
            });
            return text(
                StatusCode::BAD_GATEWAY,
                format!("berth egress proxy: {e}\n"),
            );
        }
    };
    tracker.set(|r| r.status = Some(200));
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracker.set(|r| r.error = Some(format!("upgrade failed: {e}")));
                return;
            }
        };
        relay::tunnel_upgraded(upgraded, upstream, &tracker).await;
    });
    hyper::Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// Up to 255 characters of sandbox-chosen text for a record.
fn bounded(s: &str) -> String {
    s.chars().take(255).collect()
}

/// Hop-by-hop headers and the proxy's own, never passed on.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

async fn plain_http(req: hyper::Request<Incoming>, shared: &Arc<Shared>) -> Response {
    let uri = req.uri().clone();
    let Some(authority) = uri.authority().cloned() else {
        return text(StatusCode::BAD_REQUEST, "berth egress proxy: no host\n");
    };
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(80);
    let path = record_path(&uri);
    let method = req.method().as_str().to_string();
    let decision = shared.config.policy.decide(&Request {
        kind: Kind::Http,
        host: &host,
        port,
        method: Some(&method),
        path: Some(uri.path()),
    });
    let tracker = Tracker::new(
        EgressRecord {
            kind: "http".into(),
            host: decision
                .host
                .as_ref()
                .map_or_else(|| bounded(&host), ToString::to_string),
            port,
            method: Some(bounded(&method)),
            path: Some(path),
            allowed: decision.allowed,
            rule: decision.rule.clone(),
            ..EgressRecord::default()
        },
        &shared.sink,
    );
    let (true, Some(parsed)) = (decision.allowed, decision.host) else {
        tracker.set(|r| r.status = Some(403));
        return text(
            StatusCode::FORBIDDEN,
            denial(
                &decision.rule,
                decision.fix.as_deref(),
                shared.config.rules_from,
            ),
        );
    };
    let stream = match dial(&parsed, port, shared).await {
        Ok(s) => s,
        Err(e) => {
            tracker.set(|r| {
                r.status = Some(502);
                r.error = Some(e.to_string());
            });
            return text(
                StatusCode::BAD_GATEWAY,
                format!("berth egress proxy: {e}\n"),
            );
        }
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let host_value = match authority.port_u16() {
        Some(p) => format!("{}:{p}", authority.host()),
        None => authority.host().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&host_value) {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = match uri.path_and_query() {
        Some(pq) => pq
            .as_str()
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("/")),
        None => hyper::Uri::from_static("/"),
    };
    let outgoing =
        hyper::Request::from_parts(parts, metered(body, &tracker, Direction::Out, false));
    forward(stream, outgoing, &tracker, false).await
}

/// Sends `request` over `stream` (HTTP/1.1) and streams the response back.
async fn forward<S>(
    stream: S,
    request: hyper::Request<ProxyBody>,
    tracker: &Arc<Tracker>,
    sniff: bool,
) -> Response
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            tracker.set(|r| {
                r.status = Some(502);
                r.error = Some(format!("upstream: {e}"));
            });
            return text(
                StatusCode::BAD_GATEWAY,
                format!("berth egress proxy: upstream: {e}\n"),
            );
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("egress: upstream connection: {e}");
        }
    });
    match sender.send_request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            tracker.set(|r| r.status = Some(parts.status.as_u16()));
            if sniff {
                let ct = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if let Ok(mut u) = tracker.usage.lock() {
                    *u = usage::UsageSniffer::new(ct);
                }
            }
            hyper::Response::from_parts(parts, metered(body, tracker, Direction::In, sniff))
        }
        Err(e) => {
            tracker.set(|r| {
                r.status = Some(502);
                r.error = Some(format!("upstream: {e}"));
            });
            text(
                StatusCode::BAD_GATEWAY,
                format!("berth egress proxy: upstream: {e}\n"),
            )
        }
    }
}

/// Resolves and connects, under the connect timeout. A *name* must resolve to public
/// addresses only (unless pinned in `resolve`); an IP address allowed by a rule is used as is.
async fn dial(host: &Host, port: u16, shared: &Shared) -> Result<TcpStream, DialError> {
    let timeout = shared.config.limits.connect_timeout;
    let work = async {
        let addrs: Vec<SocketAddr> = match host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Name(name) => match shared.config.resolve.get(name) {
                Some(ip) => vec![SocketAddr::new(*ip, port)],
                None => {
                    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                        .await
                        .map_err(|source| DialError::Resolve {
                            name: name.clone(),
                            source,
                        })?
                        .collect();
                    if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
                        return Err(DialError::NotPublic {
                            name: name.clone(),
                            ip: private.ip(),
                        });
                    }
                    addrs
                }
            },
        };
        let mut last = DialError::NoAddress(host.to_string());
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(source) => {
                    last = DialError::Connect {
                        host: host.to_string(),
                        port,
                        addr,
                        source,
                    }
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| DialError::Timeout {
            host: host.to_string(),
            port,
            secs: timeout.as_secs(),
        })?
}

async fn tcp_forward(stream: impl relay::Socket, host: Host, port: u16, shared: &Shared) {
    let tracker = Tracker::new(
        EgressRecord {
            kind: "tcp".into(),
            host: host.to_string(),
            port,
            allowed: true,
            rule: format!("tcp {host}:{port}"),
            ..EgressRecord::default()
        },
        &shared.sink,
    );
    let upstream = match dial(&host, port, shared).await {
        Ok(s) => s,
        Err(e) => {
            tracker.set(|r| r.error = Some(e.to_string()));
            return;
        }
    };
    relay::tunnel(stream, upstream, &tracker).await;
}

/// Points an origin-form request from the sandbox at the upstream `(host, port, default
/// port)`: its `Host` header (the port only when not the default) and its target, the
/// sandbox's path and query after `prefix`. `Err` when that is no valid target.
fn aim_upstream(
    parts: &mut hyper::http::request::Parts,
    (host, port, default_port): (&dyn std::fmt::Display, u16, u16),
    prefix: &str,
    uri: &hyper::Uri,
) -> Result<(), ()> {
    let host_value = if port == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    if let Ok(v) = HeaderValue::from_str(&host_value) {
        parts.headers.insert(header::HOST, v);
    }
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = format!("{prefix}{pq}").parse().map_err(drop)?;
    Ok(())
}

/// A checked base URL: scheme, host, port and path prefix.
struct BaseUrl {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_base_url(url: &str) -> Result<BaseUrl, BaseUrlError> {
    let bad = || BaseUrlError {
        url: url.to_string(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let authority = uri.authority().ok_or_else(bad)?;
    if uri.query().is_some() || authority.as_str().contains('@') {
        return Err(bad());
    }
    Ok(BaseUrl {
        tls,
        host: authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        path: uri.path().trim_end_matches('/').to_string(),
    })
}

/// Checks a broker's upstream URL.
pub fn check_base_url(url: &str) -> Result<(), BaseUrlError> {
    parse_base_url(url).map(|_| ())
}

/// The certificates of a PEM file's text, for [`Config::extra_roots`].
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertificateError::NotPem)?;
    if certs.is_empty() {
        return Err(CertificateError::Empty);
    }
    Ok(certs)
}

fn client_tls(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for cert in extra {
        roots.add(cert.clone()).map_err(TlsSetupError::ExtraRoot)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Protocols)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Headers that carry credentials: whatever the sandbox put there is dropped.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key", "api-key", "cookie"];

async fn broker_request(
    req: hyper::Request<Incoming>,
    broker: &BrokerUpstream,
    shared: &Arc<Shared>,
) -> Response {
    let uri = req.uri().clone();
    let path = record_path(&uri);
    let base = match parse_base_url(&broker.base_url) {
        Ok(b) => b,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("berth credential broker: {e}\n"),
            )
        }
    };
    let tracker = Tracker::new(
        EgressRecord {
            kind: "api".into(),
            host: base.host.clone(),
            port: base.port,
            method: Some(bounded(req.method().as_str())),
            path: Some(path),
            allowed: true,
            rule: format!(
                "broker {} ({})",
                broker.api.as_str(),
                broker.credential_name
            ),
            ..EgressRecord::default()
        },
        &shared.sink,
    );
    if uri.authority().is_some() || !uri.path().starts_with('/') {
        tracker.set(|r| {
            r.allowed = false;
            r.rule = "the credential broker takes origin-form requests only".into();
            r.status = Some(400);
        });
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "berth credential broker: send requests to {} as the API's base URL (origin form), not through it as a proxy\n",
                broker.api.base_url_env().1
            ),
        );
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for name in CREDENTIAL_HEADERS {
        parts.headers.remove(*name);
    }
    let credential =
        match berth_core::egress::credential_header(broker.api, &broker.credential_name) {
            CredentialHeader::ApiKey => ("x-api-key", broker.credential.clone()),
            CredentialHeader::Bearer => ("authorization", format!("Bearer {}", broker.credential)),
        };
    match HeaderValue::from_str(&credential.1) {
        Ok(mut v) => {
            v.set_sensitive(true);
            parts.headers.insert(credential.0, v);
        }
        Err(_) => {
            tracker.set(|r| {
                r.status = Some(500);
                r.error = Some(format!(
                    "{} is not a valid header value",
                    broker.credential_name
                ));
            });
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "berth credential broker: {} is not a valid header value\n",
                    broker.credential_name
                ),
            );
        }
    }
    let default_port = if base.tls { 443 } else { 80 };
    let upstream: (&dyn std::fmt::Display, _, _) = (&base.host, base.port, default_port);
    if aim_upstream(&mut parts, upstream, &base.path, &uri).is_err() {
        return text(
            StatusCode::BAD_REQUEST,
            "berth credential broker: bad path\n",
        );
    }
    let outgoing =
        hyper::Request::from_parts(parts, metered(body, &tracker, Direction::Out, false));
    // The upstream is the configured API, not a choice of the sandbox: its address is used as
    // resolved (a test server on loopback included).
    let host = match berth_core::egress::parse_host(&base.host) {
        Ok(Host::Name(n)) => {
            let mut pinned = shared.config.resolve.clone();
            if !pinned.contains_key(&n) {
                match tokio::net::lookup_host((n.as_str(), base.port)).await {
                    Ok(mut addrs) => {
                        if let Some(a) = addrs.next() {
                            pinned.insert(n.clone(), a.ip());
                        }
                    }
                    Err(e) => {
                        tracker.set(|r| {
                            r.status = Some(502);
                            r.error = Some(format!("cannot resolve {n}: {e}"));
                        });
                        return text(
                            StatusCode::BAD_GATEWAY,
                            format!("berth credential broker: cannot resolve {n}: {e}\n"),
                        );
                    }
                }
            }
            match pinned.get(&n) {
                Some(ip) => Host::Ip(*ip),
                None => Host::Name(n),
            }
        }
        Ok(h) => h,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("berth credential broker: upstream host: {e}\n"),
            )
        }
    };
    let stream = match dial(&host, base.port, shared).await {
        Ok(s) => s,
        Err(e) => {
            tracker.set(|r| {
                r.status = Some(502);
                r.error = Some(e.to_string());
            });
            return text(
                StatusCode::BAD_GATEWAY,
                format!("berth credential broker: {e}\n"),
            );
        }
    };
    if !base.tls {
        return forward(stream, outgoing, &tracker, true).await;
    }
    forward_tls(
        stream,
        &base.host,
        outgoing,
        &tracker,
        true,
        shared,
        "berth credential broker",
    )
    .await
}

/// TLS with `host` (the upstream roots of `shared`) over `stream`, then [`forward`]. Errors are
/// answered as `who`.
async fn forward_tls(
    stream: TcpStream,
    host: &str,
    outgoing: hyper::Request<ProxyBody>,
    tracker: &Arc<Tracker>,
    sniff: bool,
    shared: &Shared,
    who: &str,
) -> Response {
    let name = match rustls::pki_types::ServerName::try_from(host.to_string()) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("{who}: {e}\n")),
    };
    let connector = tokio_rustls::TlsConnector::from(shared.tls.clone());
    match tokio::time::timeout(
        shared.config.limits.connect_timeout,
        connector.connect(name, stream),
    )
    .await
    {
        Ok(Ok(tls)) => forward(tls, outgoing, tracker, sniff).await,
        Ok(Err(e)) => {
            tracker.set(|r| {
                r.status = Some(502);
                r.error = Some(format!("TLS with {host}: {e}"));
            });
            text(
                StatusCode::BAD_GATEWAY,
                format!("{who}: TLS with {host}: {e}\n"),
            )
        }
        Err(_) => {
            tracker.set(|r| {
                r.status = Some(504);
                r.error = Some("TLS handshake timed out".into());
            });
            text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{who}: TLS handshake timed out\n"),
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = parse_base_url("https://api.anthropic.com").unwrap();
        assert!(b.tls && b.port == 443 && b.path.is_empty());
        let b = parse_base_url("http://127.0.0.1:8080/v1/").unwrap();
        assert!(!b.tls && b.port == 8080 && b.path == "/v1");
        for bad in [
            "ftp://x",
            "api.anthropic.com",
            "https://u:p@x",
            "https://x/?q=1",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_refusal_names_where_to_allow_the_host() {
        let local = denial(
            "no rule allows x.test:443",
            Some("--allow-host x.test"),
            RulesFrom::Local,
        );
        assert!(
            local.contains("run berth with `--allow-host x.test`"),
            "{local}"
        );
        assert!(local.contains("berth.toml"), "{local}");
        let submitted = denial(
            "no rule allows x.test:443",
            Some("--allow-host x.test"),
            RulesFrom::Submitted,
        );
        assert!(
            submitted.contains("submit the run with `--allow-host x.test`"),
            "{submitted}"
        );
        assert!(!submitted.contains("berth.toml"), "{submitted}");
        assert_eq!(
            RulesFrom::Submitted.inject_config(),
            "the runner's configuration"
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("x-secret, keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }
}
