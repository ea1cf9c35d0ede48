//! `berth server`: the coordinator.

use std::path::PathBuf;

use berth_core::ExitStatus;
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
    let store = match SqlStore::connect(&db).await {
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
    printer.info(&format!(
        "listening on http://{address} (state {}, store {})",
        state_dir.display(),
        redact(&db)
    ));
    match berth_server::serve(listener, app, super::shutdown_signal()).await {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&format!("the server stopped: {e}"), None);
            ExitStatus::Error
        }
    }
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
