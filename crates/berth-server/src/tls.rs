//! HTTPS: the server's certificate chain and private key from PEM files, swapped on SIGHUP
//! while the server serves. A pair that cannot be used is refused with a log line, and the pair
//! already loaded keeps serving.

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
}

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
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(rejected)?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(rejected)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config,
        fingerprint,
    })
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
        })
        .unwrap_err()
        .to_string();
        assert!(missing.starts_with("/nonexistent/cert.pem: "), "{missing}");
    }

    /// Shakes hands in memory with what `tls` serves; the fingerprint of the certificate a
    /// client trusting `ca` sees.
    fn served(tls: &Tls, ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(tls.acceptor_config().get_inner()).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut &bytes[..]).unwrap();
            server.process_new_packets().unwrap();
            bytes.clear();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut &bytes[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        fingerprint(&client.peer_certificates().unwrap()[0])
    }

    #[test]
    fn a_refused_reload_keeps_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
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
}
