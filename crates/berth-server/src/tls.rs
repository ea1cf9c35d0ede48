//! HTTPS: the server's certificate chain and private key from PEM files, swapped on SIGHUP
//! while the server serves. A pair that cannot be used is refused with a log line, and the pair
//! already loaded keeps serving.
//!
//! With a client CA (`--tls-client-ca`), clients may present a certificate, and one that is
//! presented must chain to that CA or the handshake fails. Runner tokens are then accepted only
//! on connections that presented one ([`RunnerCertificates`], checked in `auth`): a stolen
//! runner token is of no use without the runner's key. Clients and browsers need none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

/// The files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate first, then the intermediates, in PEM.
    pub cert: PathBuf,
    /// The certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1), not encrypted.
    pub key: PathBuf,
    /// CA certificates in PEM that runners' client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Put in every request's extensions by a server with a client CA: runner tokens need a
/// verified client certificate on the connection.
#[derive(Debug, Clone, Copy)]
pub struct RunnerCertificates;

/// Why a certificate and key cannot be served. Every message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no certificate found ({problem}): expected PEM `-----BEGIN CERTIFICATE-----` blocks, the server's own certificate first, then its intermediates", path.display())]
    NoCertificate { path: PathBuf, problem: String },
    #[error("{}: no private key found ({problem}): expected one unencrypted PEM `-----BEGIN PRIVATE KEY-----`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block", path.display())]
    NoKey { path: PathBuf, problem: String },
    #[error("{}: this private key does not belong to the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {problem}: expected PEM `-----BEGIN CERTIFICATE-----` blocks of the CA that signs the runners' client certificates", path.display())]
    ClientCa { path: PathBuf, problem: String },
    #[error("{} with {}: {message}", cert.display(), key.display())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// A certificate and key ready to serve.
#[derive(Debug)]
pub struct Loaded {
    config: rustls::ServerConfig,
    /// The SHA-256 fingerprint of the server's own certificate (hex, upper case, colon
    /// separated, as `openssl x509 -fingerprint -sha256` prints it), for log lines.
    pub fingerprint: String,
}

/// Reads and checks `files`: both PEM, the key the certificate's.
pub fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: files.cert.clone(),
            problem: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
            problem: "the file holds no certificate block".into(),
        });
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: files.key.clone(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "the file holds no unencrypted private key block".into()
            }
            other => other.to_string(),
        },
    })?;
    let rejected = |e: rustls::Error| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        other => TlsError::Rejected {
            cert: files.cert.clone(),
            key: files.key.clone(),
            message: other.to_string(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(rejected)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config,
        fingerprint,
    })
}

/// Verifies client certificates against the CAs in `path`. A client without a certificate is
/// let through the handshake (a CLI user, a browser); `auth` refuses its runner token.
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let refused = |problem: String| TlsError::ClientCa {
        path: path.to_path_buf(),
        problem,
    };
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(refused("no certificate found".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| refused(format!("a certificate cannot be used as a CA ({e})")))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| refused(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `AB:CD:…`, the SHA-256 of the certificate's DER.
pub fn fingerprint(cert: &[u8]) -> String {
    sha2::Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The TLS side of a server: the acceptor's configuration and the files it comes from.
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    config: RustlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads `files` for a server to start with; returns the fingerprint too.
    pub fn load(files: TlsFiles) -> Result<(Self, String), TlsError> {
        let loaded = load(&files)?;
        let config = RustlsConfig::from_config(Arc::new(loaded.config));
        Ok((Self { files, config }, loaded.fingerprint))
    }

    /// Loads the files again and, if they can be used, serves new connections with them
    /// (connections already open keep the old pair). On error the old pair stays.
    pub fn reload(&self) -> Result<String, TlsError> {
        let loaded = load(&self.files)?;
        self.config.reload_from_config(Arc::new(loaded.config));
        Ok(loaded.fingerprint)
    }

    pub(crate) fn acceptor_config(&self) -> RustlsConfig {
        self.config.clone()
    }

    /// Whether runners must present a client certificate (`--tls-client-ca` was given).
    pub fn verifies_runners(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reloads on every SIGHUP, for as long as the server runs, logging what happened.
    pub(crate) async fn reload_on_sighup(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: the certificate cannot be reloaded without a restart");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match self.reload() {
                Ok(fingerprint) => tracing::info!(
                    cert = %self.files.cert.display(),
                    %fingerprint,
                    "SIGHUP: reloaded the TLS certificate and key; new connections use them"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the new TLS certificate and key were refused; the old ones keep serving"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A test CA: its certificate and its issuer.
    fn ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    }

    /// A certificate for `localhost` signed by `ca`, and its key, in PEM.
    fn pair(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `cert` and `key` and loads them: the error's message, or None if they load.
    fn check(cert: &str, key: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        load(&files).err().map(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    #[test]
    fn a_pair_loads_and_each_bad_file_is_named() {
        let ca = ca();
        let (cert, key) = pair(&ca);
        let (other_cert, other_key) = pair(&ca);
        assert_eq!(check(&cert, &key), None);
        assert_eq!(check(&format!("{cert}{}", ca.pem()), &key), None);
        let mismatch =
            "DIR/key.pem: this private key does not belong to the certificate in DIR/cert.pem";
        let cases = [
            (&key[..], &key[..], "DIR/cert.pem: no certificate found"),
            ("", &key[..], "DIR/cert.pem: no certificate found"),
            (&cert[..], &cert[..], "DIR/key.pem: no private key found"),
            (&cert[..], "not pem", "DIR/key.pem: no private key found"),
            (&cert[..], &other_key[..], mismatch),
            (&other_cert[..], &key[..], mismatch),
        ];
        for (cert, key, expected) in cases {
            let message = check(cert, key).unwrap_or_default();
            assert!(message.starts_with(expected), "{message}");
        }
        let missing = load(&TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        })
        .unwrap_err()
        .to_string();
        assert!(missing.starts_with("/nonexistent/cert.pem: "), "{missing}");
    }

    /// Shakes hands in memory with what `tls` serves; the fingerprint of the certificate a
    /// client trusting `ca` sees.
    fn served(tls: &Tls, ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> String {
        let (client, _) = shake(tls, ca, None).unwrap();
        fingerprint(&client.peer_certificates().unwrap()[0])
    }

    #[test]
    fn a_refused_reload_keeps_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        let ca = ca();
        let (cert, key) = pair(&ca);
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let (tls, first) = Tls::load(files.clone()).unwrap();
        assert_eq!(served(&tls, &ca), first);
        // A new certificate without its key: refused, the old pair serves.
        let (new_cert, new_key) = pair(&ca);
        std::fs::write(&files.cert, &new_cert).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(served(&tls, &ca), first);
        // With its key: served.
        std::fs::write(&files.key, &new_key).unwrap();
        let second = tls.reload().unwrap();
        assert_ne!(second, first);
        assert_eq!(served(&tls, &ca), second);
    }

    /// Shakes hands in memory with what `tls` serves, as a client trusting `ca` that presents
    /// `client` (certificate and key, PEM) if any: both ends, or the handshake's error.
    fn shake(
        tls: &Tls,
        ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        client: Option<&(String, String)>,
    ) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(tls.acceptor_config().get_inner()).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut &bytes[..]).unwrap();
            server.process_new_packets()?;
            bytes.clear();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut &bytes[..]).unwrap();
            client.process_new_packets()?;
        }
        Ok((client, server))
    }

    /// The number of certificates the server saw from a client presenting `client`.
    fn handshake(
        tls: &Tls,
        ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        client: Option<&(String, String)>,
    ) -> Result<usize, rustls::Error> {
        let (_, server) = shake(tls, ca, client)?;
        Ok(server.peer_certificates().map_or(0, <[_]>::len))
    }

    #[test]
    fn a_client_ca_verifies_the_certificates_clients_present() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: Some(dir.path().join("clients.pem")),
        };
        let server_ca = ca();
        let (cert, key) = pair(&server_ca);
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let clients_ca = ca();
        std::fs::write(files.client_ca.as_ref().unwrap(), clients_ca.pem()).unwrap();
        let (tls, _) = Tls::load(files.clone()).unwrap();
        assert!(tls.verifies_runners());
        // A runner's certificate from the clients' CA: seen by the server.
        assert_eq!(handshake(&tls, &server_ca, Some(&pair(&clients_ca))), Ok(1));
        // No certificate (a CLI user, a browser): let through, with none seen.
        assert_eq!(handshake(&tls, &server_ca, None), Ok(0));
        // A certificate from another CA (here the server's own): the handshake fails.
        assert!(handshake(&tls, &server_ca, Some(&pair(&server_ca))).is_err());
        // Without a client CA, nothing is asked for and nothing is seen.
        let (plain, _) = Tls::load(TlsFiles {
            client_ca: None,
            ..files.clone()
        })
        .unwrap();
        assert!(!plain.verifies_runners());
        assert_eq!(
            handshake(&plain, &server_ca, Some(&pair(&clients_ca))),
            Ok(0)
        );
        // A client CA file that holds no certificate is refused, naming it.
        std::fs::write(files.client_ca.as_ref().unwrap(), &key).unwrap();
        let message = load(&files).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "{}: no certificate found",
                dir.path().join("clients.pem").display()
            )),
            "{message}"
        );
    }
}
