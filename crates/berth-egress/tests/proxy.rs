//! The proxy against fake upstreams on loopback: plain HTTP, HTTPS with a CA made here, a fake
//! Messages API behind the credential broker, and hostile clients.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_core::egress::{BrokeredApi, EgressRecord, Policy};
use berth_egress::{BrokerUpstream, Config, Limits, Proxy};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, Notify};

const REAL_KEY: &str = "sk-ant-real-key-0123456789";

/// What a fake upstream saw: path and the credential headers.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    api_key: Option<String>,
    authorization: Option<String>,
    host: Option<String>,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `/sse` sends its first event, then waits for this before the rest.
    gate: Arc<Notify>,
}

/// A body fed from a channel, so the upstream decides when each chunk goes.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn upstream_service(
    req: hyper::Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Notify>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    seen.lock().unwrap().push(Seen {
        path: req.uri().path().to_string(),
        api_key: header("x-api-key"),
        authorization: header("authorization"),
        host: header("host"),
    });
    let path = req.uri().path().to_string();
    let _ = req.into_body().collect().await;
    if path == "/v1/messages" {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let first = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
            tx.send(Bytes::from(first)).await.unwrap();
            gate.notified().await;
            let rest = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":34}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
            let _ = tx.send(Bytes::from(rest)).await;
        });
        let mut r = hyper::Response::new(ChannelBody(rx).boxed());
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(r);
    }
    Ok(hyper::Response::new(
        Full::new(Bytes::from(format!("hello from upstream {path}"))).boxed(),
    ))
}

async fn upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Notify::new());
    let (s, g) = (seen.clone(), gate.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (s, g, tls) = (s.clone(), g.clone(), tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    upstream_service(req, s.clone(), g.clone())
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    Upstream { addr, seen, gate }
}

/// A CA, a server certificate for `names` signed by it, the acceptor and the CA's DER.
fn tls_server(
    names: &[&str],
) -> (
    tokio_rustls::TlsAcceptor,
    rustls::pki_types::CertificateDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca.der().clone(),
    )
}

fn tls_client(ca: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

struct Harness {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    records: Arc<Mutex<Vec<EgressRecord>>>,
    _proxy: Proxy,
}

impl Harness {
    fn start(listeners: &[&str], config: Config) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let records = Arc::new(Mutex::new(Vec::new()));
        let r = records.clone();
        let proxy = Proxy::start(
            std::fs::File::open(&dir).unwrap().into(),
            &listeners.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            config,
            Arc::new(move |rec| r.lock().unwrap().push(rec)),
        )
        .unwrap();
        Self {
            _dir: tmp,
            dir,
            records,
            _proxy: proxy,
        }
    }
    fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }
    /// Waits for `n` records (they arrive when connections end).
    async fn records(&self, n: usize) -> Vec<EgressRecord> {
        for _ in 0..200 {
            if self.records.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.records.lock().unwrap().clone()
    }
}

fn policy(rules: &[&str]) -> Policy {
    Policy::new(&rules.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

/// How a sandbox's connection reaches the proxy: its bytes copied by the forwarder into
/// `NAME.sock`, or the connection itself handed over through `NAME.handoff.sock`.
#[derive(Debug, Clone, Copy)]
enum Way {
    Copied,
    HandedOver,
}

const WAYS: [Way; 2] = [Way::Copied, Way::HandedOver];

trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// A connection to the listener `name` as the sandbox's client sees it.
async fn sandbox_connection(h: &Harness, name: &str, way: Way) -> Box<dyn Conn> {
    match way {
        Way::Copied => Box::new(UnixStream::connect(h.socket(name)).await.unwrap()),
        Way::HandedOver => {
            // The forwarder's side: accept the client's connection and offer it.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let handoff = h.dir.join(berth_egress::handoff::socket_name(name));
            let mut forwarder = UnixStream::connect(handoff).await.unwrap();
            offer(&forwarder, berth_egress::handoff::OFFER, &[&accepted]);
            drop(accepted);
            assert_eq!(
                forwarder.read_u8().await.unwrap(),
                berth_egress::handoff::TAKEN
            );
            client.set_nonblocking(true).unwrap();
            Box::new(tokio::net::TcpStream::from_std(client).unwrap())
        }
    }
}

/// Sends `byte` with `fds` as the forwarder does (one small message: it never blocks).
fn offer(to: &impl std::os::fd::AsFd, byte: u8, fds: &[&dyn std::os::fd::AsFd]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    }
    let sent = rustix::net::sendmsg(
        to,
        &[std::io::IoSlice::new(&[byte])],
        &mut control,
        SendFlags::empty(),
    );
    assert_eq!(sent, Ok(1));
}

async fn client(sock: &Path) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = UnixStream::connect(sock).await.unwrap();
    http_client(Box::new(stream)).await
}

async fn http_client(
    stream: Box<dyn Conn>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

async fn body_text(r: hyper::Response<Incoming>) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn request(method: &str, uri: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn https_through_connect_allowed_and_denied_with_records() {
    let (acceptor, ca) = tls_server(&["upstream.test"]);
    let up = upstream(Some(acceptor)).await;
    let port = up.addr.port();
    let h = Harness::start(
        &["proxy"],
        Config {
            policy: policy(&[&format!("upstream.test:{port}")]),
            resolve: BTreeMap::from([("upstream.test".to_string(), "127.0.0.1".parse().unwrap())]),
            ..Config::default()
        },
    );

    // Allowed: the tunnel carries TLS end to end; the proxy never sees inside.
    let mut c = client(&h.socket("proxy")).await;
    let target = format!("upstream.test:{port}");
    let resp = c.send_request(request("CONNECT", &target)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("upstream.test").unwrap();
    let tls = tls_client(&ca)
        .connect(name, TokioIo::new(upgraded))
        .await
        .unwrap();
    let (mut inner, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = inner
        .send_request(
            hyper::Request::builder()
                .uri("/secure")
                .header("host", "upstream.test")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        body_text(r).await,
        (200, "hello from upstream /secure".into())
    );
    drop(inner);

    // Denied: 403 naming the flag to add, and nothing reaches anyone.
    let mut c = client(&h.socket("proxy")).await;
    let r = c
        .send_request(request("CONNECT", "evil.example:443"))
        .await
        .unwrap();
    let (status, body) = body_text(r).await;
    assert_eq!(status, 403);
    assert!(body.contains("--allow-host evil.example:443"), "{body}");
    // The right host on another port is another rule.
    let r = c
        .send_request(request("CONNECT", "upstream.test:1"))
        .await
        .unwrap();
    assert_eq!(body_text(r).await.0, 403);

    let records = h.records(3).await;
    assert_eq!(records.len(), 3, "{records:?}");
    let allowed = records.iter().find(|r| r.allowed).unwrap();
    assert_eq!(
        (allowed.kind.as_str(), allowed.host.as_str(), allowed.port),
        ("connect", "upstream.test", port)
    );
    assert_eq!(allowed.rule, format!("upstream.test:{port}"));
    assert!(
        allowed.bytes_out > 100 && allowed.bytes_in > 100,
        "{allowed:?}"
    );
    let denied = records.iter().find(|r| r.host == "evil.example").unwrap();
    assert!(!denied.allowed && denied.rule == "no rule allows evil.example:443");
    assert_eq!(up.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn plain_http_in_absolute_form_with_path_rules() {
    for way in WAYS {
        plain_http_with_path_rules(way).await;
    }
}

async fn plain_http_with_path_rules(way: Way) {
    let up = upstream(None).await;
    let port = up.addr.port();
    let h = Harness::start(
        &["proxy"],
        Config {
            policy: policy(&[&format!("GET 127.0.0.1:{port}/pub/")]),
            ..Config::default()
        },
    );
    let mut c = http_client(sandbox_connection(&h, "proxy", way).await).await;
    let r = c
        .send_request(request(
            "GET",
            &format!("http://127.0.0.1:{port}/pub/a?token=secret"),
        ))
        .await
        .unwrap();
    assert_eq!(
        body_text(r).await,
        (200, "hello from upstream /pub/a".into())
    );
    for (method, path) in [
        ("POST", "/pub/a"),
        ("GET", "/private"),
        ("GET", "/pub/../private"),
    ] {
        let r = c
            .send_request(request(method, &format!("http://127.0.0.1:{port}{path}")))
            .await
            .unwrap();
        let (status, body) = body_text(r).await;
        assert_eq!(status, 403, "{method} {path}");
        assert!(body.contains("berth egress policy: denied"), "{body}");
    }
    // Origin form and https:// are not proxy requests.
    let r = c.send_request(request("GET", "/x")).await.unwrap();
    assert_eq!(body_text(r).await.0, 400);
    let r = c
        .send_request(request("GET", "https://127.0.0.1/"))
        .await
        .unwrap();
    assert_eq!(body_text(r).await.0, 400);
    let records = h.records(4).await;
    let ok = records.iter().find(|r| r.allowed).unwrap();
    // The query, which may carry tokens, is not recorded.
    assert_eq!(ok.path.as_deref(), Some("/pub/a"));
    assert_eq!(ok.status, Some(200));
    assert_eq!(up.seen.lock().unwrap().len(), 1);
    assert_eq!(
        up.seen.lock().unwrap()[0].host.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
}

#[tokio::test]
async fn names_that_resolve_to_this_machine_are_refused() {
    let up = upstream(None).await;
    let port = up.addr.port();
    let h = Harness::start(
        &["proxy"],
        Config {
            policy: policy(&[&format!("localhost:{port}")]),
            ..Config::default()
        },
    );
    let mut c = client(&h.socket("proxy")).await;
    let r = c
        .send_request(request("CONNECT", &format!("localhost:{port}")))
        .await
        .unwrap();
    let (status, body) = body_text(r).await;
    assert_eq!(status, 502);
    assert!(body.contains("not a public address"), "{body}");
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn broker_adds_the_real_key_and_streams_events_unbuffered() {
    let (acceptor, ca) = tls_server(&["api.test"]);
    let up = upstream(Some(acceptor)).await;
    let h = Harness::start(
        &["anthropic"],
        Config {
            brokers: vec![BrokerUpstream {
                api: BrokeredApi::Anthropic,
                base_url: format!("https://api.test:{}", up.addr.port()),
                credential_name: "ANTHROPIC_API_KEY".into(),
                credential: REAL_KEY.into(),
            }],
            resolve: BTreeMap::from([("api.test".to_string(), "127.0.0.1".parse().unwrap())]),
            extra_roots: vec![ca],
            ..Config::default()
        },
    );
    let mut c = client(&h.socket("anthropic")).await;
    let r = c
        .send_request(
            hyper::Request::builder()
                .method("POST")
                .uri("/v1/messages")
                .header("x-api-key", berth_core::egress::PLACEHOLDER)
                .header("authorization", "Bearer attacker")
                .body(Full::new(Bytes::from("{\"stream\":true}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    // The first event arrives while the upstream still holds the rest back: nothing is buffered.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event is passed on before the stream ends")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("message_start"));
    up.gate.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("message_stop"));

    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].api_key.as_deref(), Some(REAL_KEY));
    assert_eq!(
        seen[0].authorization, None,
        "the sandbox's own credential header is dropped"
    );
    assert_eq!(seen[0].path, "/v1/messages");
    let records = h.records(1).await;
    let r = &records[0];
    assert_eq!(
        (r.kind.as_str(), r.allowed, r.status),
        ("api", true, Some(200))
    );
    assert_eq!((r.input_tokens, r.output_tokens), (Some(12), Some(34)));
    assert!(!format!("{records:?}").contains(REAL_KEY));

    // A proxy-style request to the broker cannot pick another host.
    let r = c
        .send_request(request("GET", "http://evil.example/v1/messages"))
        .await
        .unwrap();
    assert_eq!(body_text(r).await.0, 400);
    assert_eq!(up.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn bearer_tokens_for_oauth_and_openai() {
    let up = upstream(None).await;
    let h = Harness::start(
        &["openai"],
        Config {
            brokers: vec![BrokerUpstream {
                api: BrokeredApi::Openai,
                base_url: format!("http://127.0.0.1:{}", up.addr.port()),
                credential_name: "OPENAI_API_KEY".into(),
                credential: "sk-openai-real".into(),
            }],
            ..Config::default()
        },
    );
    let mut c = client(&h.socket("openai")).await;
    let r = c
        .send_request(request("POST", "/v1/responses"))
        .await
        .unwrap();
    assert_eq!(body_text(r).await.0, 200);
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk-openai-real")
    );
    assert_eq!(seen[0].api_key, None);
}

#[tokio::test]
async fn tcp_forwards_carry_bytes_both_ways() {
    for way in WAYS {
        tcp_forward_carries_bytes(way).await;
    }
}

async fn tcp_forward_carries_bytes(way: Way) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"pong!").await.unwrap();
    });
    let h = Harness::start(
        &["tcp-0"],
        Config {
            tcp: vec![(berth_core::egress::Host::Ip(addr.ip()), addr.port())],
            ..Config::default()
        },
    );
    let mut s = sandbox_connection(&h, "tcp-0", way).await;
    s.write_all(b"ping!").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong!");
    drop(s);
    let records = h.records(1).await;
    assert_eq!((records[0].bytes_out, records[0].bytes_in), (5, 5));
}

#[tokio::test]
async fn hostile_clients_are_bounded() {
    let h = Harness::start(
        &["proxy"],
        Config {
            limits: Limits {
                header_timeout: Duration::from_millis(300),
                max_header_bytes: 8192,
                ..Limits::default()
            },
            ..Config::default()
        },
    );
    // Headers larger than the limit: refused, not buffered.
    let mut s = UnixStream::connect(h.socket("proxy")).await.unwrap();
    let big = format!(
        "GET http://a.example/ HTTP/1.1\r\nx: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );

    // Headers that never finish: the connection is closed after the timeout.
    let mut s = UnixStream::connect(h.socket("proxy")).await.unwrap();
    s.write_all(b"GET http://a.example/ HTTP/1.1\r\nx: y\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a slow client is cut off");

    // Garbage is a 400 (or a close), never a panic; the proxy still serves afterwards.
    let mut s = UnixStream::connect(h.socket("proxy")).await.unwrap();
    s.write_all(b"\x00\x01\x02 garbage\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap();
    let mut c = client(&h.socket("proxy")).await;
    let r = c
        .send_request(request("CONNECT", "x.example:443"))
        .await
        .unwrap();
    assert_eq!(body_text(r).await.0, 403);
}

#[tokio::test]
async fn a_closed_connection_gives_its_place_back() {
    // One connection at a time: the next is served only once the last one's descriptors are
    // closed (on the proxy's closing thread), whichever way it came.
    let h = Harness::start(
        &["proxy"],
        Config {
            limits: Limits {
                max_connections: 1,
                ..Limits::default()
            },
            ..Config::default()
        },
    );
    for way in [WAYS, WAYS].concat() {
        let served = async {
            let mut c = http_client(sandbox_connection(&h, "proxy", way).await).await;
            let r = c
                .send_request(request("GET", "http://x.example/"))
                .await
                .unwrap();
            body_text(r).await.0
        };
        let status = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .unwrap_or_else(|_| panic!("{way:?}: not served"));
        assert_eq!(status, 403, "{way:?}");
    }
}

#[tokio::test]
async fn injection_terminates_tls_adds_the_header_and_keeps_to_its_limits() {
    let (acceptor, upstream_ca) = tls_server(&["git.test"]);
    let up = upstream(Some(acceptor)).await;
    let port = up.addr.port();
    let entry = berth_core::egress::Inject::new(
        &format!("git.test:{port}"),
        "Authorization",
        "GIT_TOKEN",
        &["GET".to_string()],
        &["/pub/".to_string()],
    )
    .unwrap();
    let h = Harness::start(
        &["proxy"],
        Config {
            // Injection hosts need no rule; 127.0.0.1 is allowed to show a plain tunnel.
            policy: policy(&[&format!("127.0.0.1:{port}")]),
            inject: vec![berth_egress::InjectUpstream {
                entry,
                value: "Bearer host-secret".into(),
            }],
            inject_validity: Duration::from_secs(3600),
            resolve: BTreeMap::from([("git.test".to_string(), "127.0.0.1".parse().unwrap())]),
            extra_roots: vec![upstream_ca.clone()],
            ..Config::default()
        },
    );
    let (ca_pem, bundle) = h._proxy.ca_files().unwrap();
    assert!(bundle.ends_with(ca_pem) && bundle.len() > ca_pem.len());
    let run_ca = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()
    };

    // CONNECT to the injection host: the proxy answers TLS itself, under the run's CA.
    let mut c = client(&h.socket("proxy")).await;
    let r = c
        .send_request(request("CONNECT", &format!("git.test:{port}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let upgraded = hyper::upgrade::on(r).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("git.test").unwrap();
    let tls = tls_client(&run_ca)
        .connect(name.clone(), TokioIo::new(upgraded))
        .await
        .unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut get = request("GET", "/pub/a");
    get.headers_mut()
        .insert("authorization", "Bearer sandbox-made-up".parse().unwrap());
    let r = s.send_request(get).await.unwrap();
    assert_eq!(
        body_text(r).await,
        (200, "hello from upstream /pub/a".into())
    );
    for (method, path, why) in [
        ("POST", "/pub/a", "method POST is not one of GET"),
        ("GET", "/private", "path /private is not below /pub/"),
        ("GET", "/pub/../private", "is not below /pub/"),
    ] {
        let r = s.send_request(request(method, path)).await.unwrap();
        let (status, body) = body_text(r).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(
            body.contains(&format!("inject authorization into git.test:{port}"))
                && body.contains(why),
            "{body}"
        );
    }
    drop(s);
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "denied requests never reach the host");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer host-secret"));
    assert_eq!(
        seen[0].host.as_deref(),
        Some(format!("git.test:{port}").as_str())
    );

    // Any other host is tunnelled untouched: only the upstream's own certificate works there.
    let mut c = client(&h.socket("proxy")).await;
    let r = c
        .send_request(request("CONNECT", &format!("127.0.0.1:{port}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let upgraded = hyper::upgrade::on(r).await.unwrap();
    let tls = tls_client(&upstream_ca)
        .connect(name, TokioIo::new(upgraded))
        .await
        .expect("a plain tunnel reaches the upstream's own TLS");
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = s.send_request(request("GET", "/pub/b")).await.unwrap();
    assert_eq!(body_text(r).await.0, 200);
    assert_eq!(
        up.seen.lock().unwrap()[1].authorization,
        None,
        "nothing is injected into a tunnel"
    );
    drop(s);

    let records = h.records(5).await;
    let inject: Vec<&EgressRecord> = records.iter().filter(|r| r.kind == "inject").collect();
    assert_eq!(inject.len(), 4, "{records:?}");
    let ok = inject.iter().find(|r| r.allowed).unwrap();
    assert_eq!(
        (ok.method.as_deref(), ok.path.as_deref(), ok.status),
        (Some("GET"), Some("/pub/a"), Some(200))
    );
    assert!(ok.bytes_in > 0);
    assert_eq!(inject.iter().filter(|r| !r.allowed).count(), 3);
    assert!(!format!("{records:?}").contains("host-secret"));
}

/// A `CONNECT` tunnel: bytes sent in the same write as the request (which the proxy has read
/// with it) go first, the rest follow, the half-close reaches the upstream, whose answer comes
/// back after it; the record counts each way exactly.
#[tokio::test]
async fn connect_tunnels_carry_early_bytes_and_half_closes_and_count_exactly() {
    for way in WAYS {
        connect_tunnel_exchange(way).await;
    }
}

async fn connect_tunnel_exchange(way: Way) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Reads to the end, then answers with everything it got, twice.
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(&got).await.unwrap();
        s.write_all(&got).await.unwrap();
    });
    let h = Harness::start(
        &["proxy"],
        Config {
            policy: policy(&[&format!("127.0.0.1:{port}")]),
            ..Config::default()
        },
    );
    let early = b"early bytes, in the request's own write";
    let rest: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
    let mut s = sandbox_connection(&h, "proxy", way).await;
    let mut head =
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n").into_bytes();
    head.extend_from_slice(early);
    s.write_all(&head).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        answer.push(s.read_u8().await.unwrap());
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    s.write_all(&rest).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut back))
        .await
        .expect("the upstream answers after the half-close")
        .unwrap();
    let sent = [&early[..], &rest].concat();
    assert!(back == [&sent[..], &sent].concat(), "the answer differs");
    drop(s);
    let records = h.records(1).await;
    assert_eq!(
        (records[0].bytes_out, records[0].bytes_in),
        (sent.len() as u64, 2 * sent.len() as u64),
        "{records:?}"
    );
    assert_eq!(records[0].error, None);
}
