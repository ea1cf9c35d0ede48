//! The coordinator's HTTP API as the runner, the CLI and the tests use it, over HTTPS (rustls,
//! the system's roots plus `--ca`) or plain HTTP: to this machine freely, to another host only
//! when asked. Event streams are read through the bounded parser in [`sse`].

pub mod sse;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_api::ErrorBody;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sse::{SseError, SseEvent, SseParser};

/// A call to the coordinator that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached (or the connection broke): worth retrying.
    #[error("cannot reach the berth server at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The server answered with an error status.
    #[error("the berth server answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        fields: Vec<berth_api::FieldError>,
    },
    /// The client cannot be made as asked (the URL, the CA file): nothing was sent.
    #[error("{message}")]
    Setup { message: String, hint: String },
    /// The TLS handshake failed: most often a certificate this client does not accept.
    #[error("TLS with the berth server at {url} failed: {message}")]
    Tls {
        url: String,
        message: String,
        hint: String,
    },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Unreachable { .. } | Self::Setup { .. } | Self::Tls { .. } => None,
        }
    }

    /// What to change, when this error says.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Self::Setup { hint, .. } | Self::Tls { hint, .. } => Some(hint),
            Self::Unreachable { .. } | Self::Status { .. } => None,
        }
    }

    /// The server refused a write for this run because the lease is gone or the state moved on.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// The server refused the body as too large (413).
    pub fn is_too_large(&self) -> bool {
        self.status() == Some(413)
    }
}

/// `bytes` as one URL path segment: everything but the unreserved characters of RFC 3986
/// (letters, digits, `-`, `.`, `_`, `~`) percent-encoded, so `/`, `?`, `#`, `%` and spaces
/// in a name stay part of it.
pub fn encode_segment(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API path of a run's artifact, each segment of `relative` percent-encoded on its own.
/// Only plain names are kept: `.`, `..` and a leading `/` never reach the server from here.
pub fn artifact_url_path(run_id: &str, relative: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let segments: Vec<String> = relative
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(encode_segment(name.as_bytes())),
            _ => None,
        })
        .collect();
    format!(
        "/api/v1/runs/{}/artifacts/{}",
        encode_segment(run_id.as_bytes()),
        segments.join("/")
    )
}

/// How a client reaches its server, beyond the URL.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// A PEM file of CA certificates trusted besides the system's roots (`--ca`, `BERTH_CA`).
    pub ca: Option<PathBuf>,
    /// Allows `http://` to a host that is not this machine (`--insecure-http`,
    /// `BERTH_INSECURE_HTTP`): the token and all run output cross the network in clear.
    pub insecure_http: bool,
    /// A client certificate to present over HTTPS (`--tls-client-cert`, `--tls-client-key`):
    /// a server started with `--tls-client-ca` takes runner tokens only with one.
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

const CLIENT_IDENTITY: &str = "--tls-client-cert FILE (BERTH_TLS_CLIENT_CERT) takes the client's certificate chain in PEM, its own certificate first, signed by the server's --tls-client-ca; --tls-client-key FILE (BERTH_TLS_CLIENT_KEY) its private key in PEM, not encrypted";

impl ClientIdentity {
    /// Reads both files: the chain and the key, each error naming its file.
    fn load(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        ApiError,
    > {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let refused = |path: &Path, problem: String| ApiError::Setup {
            message: format!("{}: {problem}", path.display()),
            hint: CLIENT_IDENTITY.into(),
        };
        let cert = std::fs::read(&self.cert).map_err(|e| refused(&self.cert, e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(&self.cert, format!("not a PEM certificate file ({e})")))?;
        if chain.is_empty() {
            return Err(refused(&self.cert, "no certificate found".into()));
        }
        let key = std::fs::read(&self.key).map_err(|e| refused(&self.key, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|_| refused(&self.key, "no unencrypted PEM private key found".into()))?;
        Ok((chain, key))
    }
}

/// The hint for a server URL that is refused or warned about.
const USE_HTTPS: &str = "serve HTTPS (berth server --tls-cert FILE --tls-key FILE) and use an https:// URL; on a network you trust, --insecure-http (BERTH_INSECURE_HTTP=1) allows plain HTTP";

/// Checks a server URL against `transport` before anything is sent: `https://`, or `http://` to
/// a loopback address, or `http://` elsewhere with `--insecure-http` (then with the warning to
/// give on every use).
pub fn check_url(base: &str, transport: &Transport) -> Result<Option<String>, ApiError> {
    let setup = |message: String, hint: &str| ApiError::Setup {
        message,
        hint: hint.to_string(),
    };
    let url = reqwest::Url::parse(base).map_err(|e| {
        setup(
            format!("the server URL `{base}` is not a URL: {e}"),
            "pass --server URL (or set BERTH_SERVER), e.g. https://berth.example.com:8765",
        )
    })?;
    match url.scheme() {
        "https" => Ok(None),
        "http" => {
            let host = url.host_str().unwrap_or_default();
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(None)
            } else if transport.insecure_http {
                Ok(Some(format!("plain HTTP to {host} (--insecure-http): the token and all run output cross the network in clear")))
            } else {
                Err(setup(
                    format!("refusing plain HTTP to {host}, which is not this machine: the token and all run output would cross the network in clear"),
                    USE_HTTPS,
                ))
            }
        }
        other => Err(setup(
            format!("the server URL `{base}` has the scheme `{other}`: berth speaks https:// (or http:// to this machine)"),
            "pass --server https://HOST:PORT",
        )),
    }
}

/// The roots an HTTPS client trusts: the system's, and the certificates of `ca`.
fn trusted_roots(ca: Option<&std::path::Path>) -> Result<rustls::RootCertStore, ApiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots are no reason to fail: --ca may be all that is needed.
    let (added, _ignored) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let Some(path) = ca else {
        if added == 0 {
            return Err(ApiError::Setup {
                message: "no root certificates: this system has none, and no --ca was given"
                    .into(),
                hint: "pass --ca FILE (or set BERTH_CA) with the certificate of the CA that signed the server's, in PEM".into(),
            });
        }
        return Ok(roots);
    };
    let refused = |problem: String| {
        ApiError::Setup {
        message: format!("--ca {}: {problem}", path.display()),
        hint: "--ca FILE (BERTH_CA) takes the certificate of the CA that signed the server's certificate, in PEM".into(),
    }
    };
    let pem = std::fs::read(path).map_err(|e| refused(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(refused(
            "no certificate found: expected PEM `-----BEGIN CERTIFICATE-----` blocks".into(),
        ));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| refused(format!("a certificate cannot be used: {e}")))?;
    }
    Ok(roots)
}

/// rustls with ring, trusting `roots`. reqwest is built without a provider of its own, so every
/// client gets this, plain HTTP ones with no roots at all.
fn tls_config(
    roots: rustls::RootCertStore,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ApiError> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ApiError::Setup {
        message: format!("TLS cannot be set up: {e}"),
        hint: "this is a bug in berth".into(),
    })?
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let (chain, key) = identity.load()?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ApiError::Setup {
                    message: format!(
                        "{} with {}: {e}",
                        identity.cert.display(),
                        identity.key.display()
                    ),
                    hint: CLIENT_IDENTITY.into(),
                })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An authenticated client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    warning: Option<String>,
}

impl Client {
    /// A client of the server at `base`, checked against `transport` ([`check_url`]).
    pub fn new(base: &str, token: &str, transport: &Transport) -> Result<Self, ApiError> {
        let warning = check_url(base, transport)?;
        let https = base.starts_with("https:");
        let roots = if https {
            trusted_roots(transport.ca.as_deref())?
        } else {
            rustls::RootCertStore::empty()
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tls_backend_preconfigured(tls_config(
                roots,
                transport.identity.as_ref().filter(|_| https),
            )?)
            .https_only(https)
            .build()
            .map_err(|e| ApiError::Setup {
                message: format!("the HTTP client cannot be set up: {}", error_chain(&e)),
                hint: "this is a bug in berth".into(),
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            warning,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The warning to give on every use of this client (plain HTTP to another host).
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// A failed request as an error: the TLS problem when there is one, else unreachable.
    fn failed(&self, e: &reqwest::Error) -> ApiError {
        match tls_failure(e) {
            Some((message, hint)) => ApiError::Tls {
                url: self.base.clone(),
                message,
                hint,
            },
            None => ApiError::Unreachable {
                url: self.base.clone(),
                message: error_chain(e),
            },
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let response = request
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.failed(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let (message, fields) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error, body.errors),
            Err(_) => (text.trim().to_string(), Vec::new()),
        };
        Err(ApiError::Status {
            status: status.as_u16(),
            message,
            fields,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let response = self
            .send(self.http.get(self.url(path)), Duration::from_secs(30))
            .await?;
        decode(response, &self.base).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.post_with_timeout(path, body, Duration::from_secs(30))
            .await
    }

    pub async fn post_with_timeout<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let response = self
            .send(self.http.post(self.url(path)).json(body), timeout)
            .await?;
        decode(response, &self.base).await
    }

    /// POST that may answer 204 No Content (`None`).
    pub async fn post_optional<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<T>, ApiError> {
        let response = self
            .send(self.http.post(self.url(path)).json(body), timeout)
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        decode(response, &self.base).await.map(Some)
    }

    pub async fn put_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(), ApiError> {
        let mut request = self.http.put(self.url(path)).body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request, Duration::from_secs(300))
            .await
            .map(|_| ())
    }

    /// Uploads one artifact of a run under its lease; `relative` is encoded segment by segment.
    pub async fn put_artifact(
        &self,
        run_id: &str,
        relative: &std::path::Path,
        body: Vec<u8>,
        lease_token: &str,
    ) -> Result<(), ApiError> {
        self.put_bytes(
            &artifact_url_path(run_id, relative),
            body,
            &[("x-berth-lease", lease_token)],
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        self.send(self.http.delete(self.url(path)), Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// A stream of server-sent events, resumed after `last_event_id` when given.
    pub async fn get_events(
        &self,
        path: &str,
        last_event_id: Option<i64>,
    ) -> Result<EventStream, ApiError> {
        let mut request = self
            .http
            .get(self.url(path))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = self.send(request, Duration::from_secs(24 * 3600)).await?;
        Ok(EventStream {
            response,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        })
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        let response = self
            .send(self.http.get(self.url(path)), Duration::from_secs(300))
            .await?;
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ApiError::Unreachable {
                url: self.base.clone(),
                message: error_chain(&e),
            })
    }
}

/// The events of one streaming response, parsed as they arrive.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<Result<SseEvent, SseError>>,
}

impl EventStream {
    /// The next event, or an error in the place of one left out for its size (the stream goes
    /// on after it); `None` once the connection ended, closed or broken.
    pub async fn next(&mut self) -> Option<Result<SseEvent, SseError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.ready.extend(self.parser.push(&bytes)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    base: &str,
) -> Result<T, ApiError> {
    let bytes = response.bytes().await.map_err(|e| ApiError::Unreachable {
        url: base.to_string(),
        message: error_chain(&e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Status {
        status: 200,
        message: format!("unexpected answer: {e}"),
        fields: Vec::new(),
    })
}

/// The rustls error inside a failed request, as a message and a hint, if TLS is what failed.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<(String, String)> {
    use rustls::CertificateError as C;
    let mut next = Some(e);
    let mut found = None;
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            found = Some(tls);
            break;
        }
        // io::Error hides the error it carries from source() (and may carry another io::Error).
        next = match error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    let error = found?;
    let ca = "pass --ca FILE (or set BERTH_CA) with the certificate of the CA that signed the server's certificate, in PEM";
    let hint = match error {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => {
                format!("the server's certificate is signed by a CA this machine does not trust: {ca}")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => "the server's certificate does not name the host of the URL: use a name it holds in --server, or give the server a certificate for this one".to_string(),
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is outside its validity period: renew it (berth server reloads it on SIGHUP), or check this machine's clock".to_string(),
            // `openssl req -x509` makes CA certificates unless told otherwise.
            C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => "the server's certificate is a CA certificate (basicConstraints CA:TRUE), which TLS clients refuse as a server's own: give the server a certificate without CA:TRUE, signed by a CA that --ca names".to_string(),
            _ => ca.to_string(),
        },
        rustls::Error::AlertReceived(alert) if refuses_client_certificate(*alert) => {
            format!("the server verifies client certificates (berth server --tls-client-ca) and refused this one: {CLIENT_IDENTITY}")
        }
        rustls::Error::InvalidMessage(_) => "the server does not seem to speak TLS: start it with --tls-cert and --tls-key, or use http:// for a server on this machine".to_string(),
        _ => ca.to_string(),
    };
    let message = match error {
        rustls::Error::InvalidCertificate(_) => {
            format!("the server's certificate was not accepted ({error})")
        }
        rustls::Error::AlertReceived(alert) if refuses_client_certificate(*alert) => {
            format!("the server did not accept this client's certificate ({error})")
        }
        _ => error.to_string(),
    };
    Some((message, hint))
}

/// The alerts a server sends when the client's certificate is missing or not its CA's.
fn refuses_client_certificate(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::UnsupportedCertificate
            | A::CertificateUnknown
            | A::DecryptError
    )
}

/// reqwest's errors hide the useful part (connection refused, timed out) in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn artifact_paths_are_encoded_segment_by_segment() {
        let cases = [
            ("a.txt", "a.txt"),
            ("out dir/report #1.txt", "out%20dir/report%20%231.txt"),
            ("what?/100%", "what%3F/100%25"),
            ("résumé", "r%C3%A9sum%C3%A9"),
            ("./berth/diff.patch", "berth/diff.patch"),
        ];
        for (relative, encoded) in cases {
            assert_eq!(
                artifact_url_path("r1", Path::new(relative)),
                format!("/api/v1/runs/r1/artifacts/{encoded}"),
                "{relative}"
            );
        }
        // A name that is not UTF-8 is sent byte for byte.
        use std::os::unix::ffi::OsStrExt;
        let raw = Path::new(std::ffi::OsStr::from_bytes(b"bin\xff"));
        assert_eq!(
            artifact_url_path("r1", raw),
            "/api/v1/runs/r1/artifacts/bin%FF"
        );
    }
}
