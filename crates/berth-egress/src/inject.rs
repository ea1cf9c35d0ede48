//! Header injection. For an injection host the proxy answers the sandbox's `CONNECT` itself:
//! after `200` it completes TLS with the sandbox, presenting a certificate for the host signed by
//! the run's CA (made in memory when the proxy starts; its key never leaves this process), reads
//! HTTP/1.1 requests, checks each against the host's methods and path prefixes, replaces any
//! copy of the configured header with the value read on the host, and forwards the request over
//! TLS (the system's roots) to the real host. Responses stream back unbuffered. Each request is
//! one `inject` record; the value is never in one.
//!
//! The CA is limited to what it is for: name constraints permit only the injection hosts, its
//! path length is 0, and it is valid from an hour ago for the run's time plus a day.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::egress::{EgressRecord, Host, Inject};

use crate::error::{InjectError, TlsSetupError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;

use crate::{
    dial, forward_tls, metered, record_path, strip_hop_by_hop, text, Direction, Response, Shared,
    Tracker,
};

/// An injection host with the value of its header.
#[derive(Clone)]
pub struct InjectUpstream {
    pub entry: Inject,
    /// The header's value, read on the host. Never logged or recorded.
    pub value: String,
}

impl std::fmt::Debug for InjectUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectUpstream")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// A checked injection host: where it is, and the header as hyper takes it.
pub(crate) struct Target {
    host: Host,
    port: u16,
    entry: Inject,
    header: HeaderName,
    value: HeaderValue,
}

/// The run's CA and the certificates it made, one per host, on demand.
pub(crate) struct Mitm {
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    targets: Vec<Arc<Target>>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl Mitm {
    /// A new CA for `upstreams`, valid for `validity` (plus an hour before now, for clocks).
    pub(crate) fn new(
        upstreams: &[InjectUpstream],
        validity: Duration,
    ) -> Result<Self, InjectError> {
        let mut targets = Vec::new();
        for u in upstreams {
            let (host, port) = u.entry.target().map_err(|e| InjectError::Target {
                host: u.entry.host.clone(),
                reason: e.to_string(),
            })?;
            let header = HeaderName::from_bytes(u.entry.header.as_bytes()).map_err(|source| {
                InjectError::Header {
                    host: u.entry.host.clone(),
                    source,
                }
            })?;
            let mut value = HeaderValue::from_str(&u.value).map_err(|_| InjectError::Value {
                host: u.entry.host.clone(),
                env: u.entry.env.clone(),
            })?;
            value.set_sensitive(true);
            targets.push(Arc::new(Target {
                host,
                port,
                entry: u.entry.clone(),
                header,
                value,
            }));
        }
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::hours(1);
        // Unset (zero) means a day; never more than 400 days.
        let validity = time::Duration::try_from(validity)
            .ok()
            .filter(|v| v.is_positive())
            .unwrap_or(time::Duration::days(1));
        let not_after = now + validity.min(time::Duration::days(400));
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            "berth egress CA (one run; key held in memory only)",
        );
        params.distinguished_name = dn;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        params.name_constraints = Some(name_constraints(&targets));
        let key = rcgen::KeyPair::generate().map_err(InjectError::Ca)?;
        let cert = params.self_signed(&key).map_err(InjectError::Ca)?;
        Ok(Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
            not_before,
            not_after,
            targets,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA's certificate (public), PEM.
    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The injection host a `CONNECT` to `host:port` is for.
    pub(crate) fn find(&self, host: &str, port: u16) -> Option<Arc<Target>> {
        let host = berth_core::egress::parse_host(host).ok()?;
        self.targets
            .iter()
            .find(|t| t.host == host && t.port == port)
            .cloned()
    }

    /// The TLS server side for `target`: a certificate for its host, made once.
    fn server_config(&self, target: &Target) -> Result<Arc<rustls::ServerConfig>, InjectError> {
        let key = target.host.to_string();
        let mut leaves = self.leaves.lock().map_err(|_| InjectError::CachePoisoned)?;
        if let Some(config) = leaves.get(&key) {
            return Ok(config.clone());
        }
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![match &target.host {
            Host::Name(n) => rcgen::SanType::DnsName(n.clone().try_into().map_err(|source| {
                InjectError::Leaf {
                    host: n.clone(),
                    source,
                }
            })?),
            Host::Ip(ip) => rcgen::SanType::IpAddress(*ip),
        }];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.use_authority_key_identifier_extension = true;
        let leaf_error = |source| InjectError::Leaf {
            host: key.clone(),
            source,
        };
        let leaf_key = rcgen::KeyPair::generate().map_err(leaf_error)?;
        let leaf = params
            .signed_by(&leaf_key, &self.issuer)
            .map_err(leaf_error)?;
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Protocols)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], private)
            .map_err(|source| InjectError::LeafTls {
                host: key.clone(),
                source,
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        leaves.insert(key, config.clone());
        Ok(config)
    }
}

/// Permits exactly the injection hosts. Name constraints apply per kind of name, so a kind with
/// no injection host is shut: IP addresses excluded altogether, DNS names permitted only below
/// `berth.invalid` (a name that cannot exist).
fn name_constraints(targets: &[Arc<Target>]) -> rcgen::NameConstraints {
    let mut permitted = Vec::new();
    for t in targets {
        permitted.push(match &t.host {
            Host::Name(n) => rcgen::GeneralSubtree::DnsName(n.clone()),
            Host::Ip(ip) => rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                *ip,
                if ip.is_ipv4() { 32 } else { 128 },
            )),
        });
    }
    let mut excluded = Vec::new();
    if !targets.iter().any(|t| matches!(t.host, Host::Name(_))) {
        permitted.push(rcgen::GeneralSubtree::DnsName("berth.invalid".into()));
    }
    if !targets.iter().any(|t| matches!(t.host, Host::Ip(_))) {
        excluded.push(rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4(
            [0; 4], [0; 4],
        )));
        excluded.push(rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6(
            [0; 16], [0; 16],
        )));
    }
    rcgen::NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// Answers a `CONNECT` to an injection host: `200`, then TLS with the run's certificate for the
/// host, then HTTP/1.1 requests, each checked, given the header and forwarded.
pub(crate) fn connect(
    req: hyper::Request<Incoming>,
    mitm: &Arc<Mitm>,
    target: Arc<Target>,
    shared: &Arc<Shared>,
) -> Response {
    let config = match mitm.server_config(&target) {
        Ok(c) => c,
        Err(e) => {
            let tracker = record(&target, None, None, shared);
            tracker.set(|r| {
                r.status = Some(500);
                r.error = Some(e.to_string());
            });
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("berth egress proxy: {e}\n"),
            );
        }
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("egress: upgrade failed: {e}");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let limits = &shared.config.limits;
        let tls = match tokio::time::timeout(
            limits.header_timeout,
            acceptor.accept(TokioIo::new(upgraded)),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // Most often the client does not trust the run's CA: say so in the record.
                let tracker = record(&target, None, None, &shared);
                tracker.set(|r| {
                    r.error = Some(format!(
                        "TLS with the sandbox: {e} (does the client use $SSL_CERT_FILE or $NODE_EXTRA_CA_CERTS?)"
                    ))
                });
                return;
            }
            Err(_) => return,
        };
        let service = {
            let shared = shared.clone();
            hyper::service::service_fn(move |req| {
                let (target, shared) = (target.clone(), shared.clone());
                async move { Ok::<_, Infallible>(request(req, &target, &shared).await) }
            })
        };
        let conn = crate::server(limits).serve_connection(TokioIo::new(tls), service);
        if let Err(e) = conn.await {
            tracing::debug!("egress: injection connection ended: {e}");
        }
    });
    hyper::Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// The record of one request (or of a connection that never got to one).
fn record(
    target: &Target,
    method: Option<String>,
    path: Option<String>,
    shared: &Shared,
) -> Arc<Tracker> {
    Tracker::new(
        EgressRecord {
            kind: "inject".into(),
            host: target.host.to_string(),
            port: target.port,
            method,
            path,
            allowed: true,
            rule: target.entry.rule(),
            ..EgressRecord::default()
        },
        &shared.sink,
    )
}

async fn request(req: hyper::Request<Incoming>, target: &Target, shared: &Arc<Shared>) -> Response {
    let uri = req.uri().clone();
    let method = req.method().as_str().to_string();
    let tracker = record(
        target,
        Some(crate::bounded(&method)),
        Some(record_path(&uri)),
        shared,
    );
    if uri.authority().is_some() || !uri.path().starts_with('/') {
        tracker.set(|r| {
            r.allowed = false;
            r.status = Some(400);
        });
        return text(
            StatusCode::BAD_REQUEST,
            "berth egress proxy: inside TLS, send requests in origin form (/path)\n",
        );
    }
    if let Err(why) = target.entry.allows(&method, uri.path()) {
        let rule = format!("{}: {why}", target.entry.rule());
        tracker.set(|r| {
            r.allowed = false;
            r.status = Some(403);
            r.rule = rule.clone();
        });
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "berth egress policy: denied: {rule}\nthe methods and paths of [egress.inject.\"{}\"] in {} allow it\n",
                target.entry.host,
                shared.config.rules_from.inject_config(),
            ),
        );
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Whatever the sandbox sent under the header's name goes; the host's value takes its place.
    parts.headers.remove(&target.header);
    parts
        .headers
        .insert(target.header.clone(), target.value.clone());
    let upstream: (&dyn std::fmt::Display, _, _) = (&target.host, target.port, 443);
    if crate::aim_upstream(&mut parts, upstream, "", &uri).is_err() {
        tracker.set(|r| r.status = Some(400));
        return text(StatusCode::BAD_REQUEST, "berth egress proxy: bad path\n");
    }
    let outgoing =
        hyper::Request::from_parts(parts, metered(body, &tracker, Direction::Out, false));
    let stream = match dial(&target.host, target.port, shared).await {
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
    let name = match &target.host {
        Host::Name(n) => n.clone(),
        Host::Ip(ip) => ip.to_string(),
    };
    forward_tls(
        stream,
        &name,
        outgoing,
        &tracker,
        false,
        shared,
        "berth egress proxy",
    )
    .await
}

/// PEM of `certs`, one after another.
pub(crate) fn pem_bundle<'a>(
    certs: impl IntoIterator<Item = &'a rustls::pki_types::CertificateDer<'a>>,
) -> String {
    certs
        .into_iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect::<Vec<_>>()
        .join("")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn upstream(flag: &str) -> InjectUpstream {
        InjectUpstream {
            entry: Inject::parse_flag(flag).unwrap(),
            value: "Bearer v".into(),
        }
    }

    #[test]
    fn the_ca_is_constrained_and_leaves_are_cached() {
        let mitm = Mitm::new(
            &[upstream("git.example.org=Authorization:T")],
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(mitm.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(mitm.find("Git.Example.org", 443).is_some());
        assert!(mitm.find("git.example.org", 8443).is_none());
        assert!(mitm.find("other.example.org", 443).is_none());
        let t = mitm.find("git.example.org", 443).unwrap();
        let a = mitm.server_config(&t).unwrap();
        let b = mitm.server_config(&t).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = name_constraints(&mitm.targets);
        assert_eq!(
            c.permitted_subtrees,
            vec![rcgen::GeneralSubtree::DnsName("git.example.org".into())]
        );
        assert_eq!(c.excluded_subtrees.len(), 2);
        let ip = Mitm::new(&[upstream("127.0.0.2:8443=X-Token:T")], Duration::ZERO).unwrap();
        assert!(ip.not_after - ip.not_before > time::Duration::hours(24));
        let c = name_constraints(&ip.targets);
        assert!(c
            .permitted_subtrees
            .contains(&rcgen::GeneralSubtree::DnsName("berth.invalid".into())));
        assert!(c.excluded_subtrees.is_empty());
    }

    #[test]
    fn a_value_that_is_no_header_value_is_refused_naming_the_variable() {
        let mut u = upstream("x.org=A:GIT_TOKEN");
        u.value = "s3cr3t\nvalue".into();
        let e = Mitm::new(&[u], Duration::ZERO).err().unwrap().to_string();
        assert!(e.contains("GIT_TOKEN") && !e.contains("s3cr3t"), "{e}");
    }
}
