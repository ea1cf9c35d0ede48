//! `berth server`: the coordinator.

use std::path::PathBuf;

use berth_core::ExitStatus;
use berth_server::tls::{Tls, TlsFiles};
use berth_server::{App, ServerConfig};
use berth_store::SqlStore;

use crate::args::ServerArgs;
use crate::printer::Printer;

pub async fn server(args: ServerArgs, printer: Printer) -> ExitStatus {
    let state_dir = server_state_dir(args.state_dir);
    if let Err(e) = std::fs::create_dir_all(&state_dir) {
        printer.error(
            &format!("{}: {e}", state_dir.display()),
            Some("pass --state-dir DIR with a writable directory"),
        );
        return ExitStatus::Error;
    }
    let db = args
        .db
        .unwrap_or_else(|| format!("sqlite://{}", state_dir.join("berth.db").display()));
    let password = match &args.db_password_file {
        None => None,
        Some(path) => {
            let refusal = if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
                Some("--db-password-file is for a PostgreSQL --db (postgres://USER@HOST:PORT/DB)")
            } else if redact(&db) != db {
                Some("--db holds a password and --db-password-file gives another")
            } else {
                None
            };
            if let Some(message) = refusal {
                printer.error(
                    message,
                    Some("give the password in one place: the file, with --db postgres://USER@HOST:PORT/DB"),
                );
                return ExitStatus::Error;
            }
            match super::read_secret_file(path, "--db-password-file") {
                Ok(password) => Some(password),
                Err(e) => {
                    printer.error(
                        &e.to_string(),
                        Some("--db-password-file (BERTH_DB_PASSWORD_FILE) takes a file holding the password on one line"),
                    );
                    return ExitStatus::Error;
                }
            }
        }
    };
    let store = match SqlStore::connect_with_password(&db, password.as_deref()).await {
        Ok(store) => store,
        Err(e) => {
            printer.error(
                &format!("opening the store failed: {e}"),
                Some("--db takes sqlite://PATH or postgres://USER@HOST:PORT/DB"),
            );
            return ExitStatus::Error;
        }
    };
    let mut config = ServerConfig::new(state_dir.clone());
    for (flag, value, slot) in [
        ("--lease", &args.lease, &mut config.lease),
        ("--heartbeat", &args.heartbeat, &mut config.heartbeat),
    ] {
        match berth_core::units::parse_duration(value) {
            Ok(d) if !d.is_zero() => *slot = d,
            Ok(_) => {
                printer.error(&format!("{flag}: must be longer than zero"), None);
                return ExitStatus::Error;
            }
            Err(e) => {
                printer.error(&format!("{flag}: {e}"), None);
                return ExitStatus::Error;
            }
        }
    }
    if config.lease < config.heartbeat * 2 {
        printer.error("--lease must be at least twice --heartbeat, or healthy runners would lose their leases", None);
        return ExitStatus::Error;
    }
    if let Some(path) = &args.metrics_token_file {
        match read_metrics_token(path) {
            Ok(token) => config.metrics_token_hash = Some(berth_server::hash_secret(&token)),
            Err(e) => {
                printer.error(
                    &e.to_string(),
                    Some("--metrics-token-file (BERTH_METRICS_TOKEN_FILE) takes a file holding one token of at least 16 characters, e.g. from `openssl rand -hex 24`"),
                );
                return ExitStatus::Error;
            }
        }
    }
    // The certificate is checked before anything listens: a server that cannot serve HTTPS
    // must not start serving plain HTTP.
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => match Tls::load(TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        }) {
            Ok((tls, fingerprint)) => {
                printer.info(&format!(
                    "TLS certificate SHA-256 {fingerprint}; SIGHUP reloads it"
                ));
                if tls.verifies_runners() {
                    printer.info("runner tokens are accepted only with a client certificate signed by --tls-client-ca");
                }
                Some(tls)
            }
            Err(e) => {
                printer.error(
                    &e.to_string(),
                    Some("--tls-cert takes the server's certificate chain in PEM (its own certificate first), --tls-key its private key in PEM, not encrypted, and --tls-client-ca the PEM certificates of the CA that signs runners' client certificates"),
                );
                return ExitStatus::Error;
            }
        },
        _ => None,
    };
    let app = App::new(store, config);
    match berth_server::ensure_admin_token(&app).await {
        Ok(Some(path)) => printer.info(&format!(
            "created the admin token in {} (mode 0600)",
            path.display()
        )),
        Ok(None) => {}
        Err(e) => {
            printer.error(&format!("creating the admin token failed: {e}"), None);
            return ExitStatus::Error;
        }
    }
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            printer.error(
                &format!("cannot listen on {}: {e}", args.listen),
                Some("pass --listen HOST:PORT with a free port"),
            );
            return ExitStatus::Error;
        }
    };
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(args.listen);
    let scheme = if tls.is_some() { "https" } else { "http" };
    printer.info(&format!(
        "listening on {scheme}://{address} (state {}, store {})",
        state_dir.display(),
        redact(&db)
    ));
    match berth_server::serve(listener, app, tls, super::shutdown_signal()).await {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&format!("the server stopped: {e}"), None);
            ExitStatus::Error
        }
    }
}

/// The token in `path` (surrounding white space trimmed), or a message naming the file.
fn read_metrics_token(path: &std::path::Path) -> Result<String, super::SecretFileError> {
    const FLAG: &str = "--metrics-token-file";
    // Read like every secret file: bounded, so a path to a device or a log is refused.
    let text = super::read_secret_file(path, FLAG)?;
    let token = text.trim();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        return Err(super::SecretFileError::NotAToken {
            flag: FLAG.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// `--state-dir`, else `BERTH_STATE_DIR`, else the user's data directory.
pub fn server_state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| crate::env::var(crate::env::BERTH_STATE_DIR).map(Into::into))
        .unwrap_or_else(crate::env::data_dir)
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_token_file_is_read_bounded_and_checked() {
        // An endless file is refused after a little, not read whole.
        let e = read_metrics_token(std::path::Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 64 KiB"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = read_metrics_token(&short).unwrap_err().to_string();
        assert!(e.contains("at least 16 characters"), "{e}");
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdefXYZ\n").unwrap();
        assert_eq!(read_metrics_token(&good).unwrap(), "0123456789abcdefXYZ");
    }
}
