//! The coordinator: accepts runs, hands each to exactly one runner, streams their events, keeps
//! the audit trail, and notices runners that died.
//!
//! Architecture Invariant: the HTTP layer only parses, authenticates and authorises; every state
//! change goes through [`berth_store::Store`], which checks the expected state and the lease in
//! the same transaction as the audit entry.

mod auth;
mod clock;
mod dashboard;
mod error;
mod extract;
mod metrics;
pub mod openapi;
mod routes;
mod sweeper;
pub mod tls;
mod views;
pub mod workflows;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_store::{Store, Wake};
use tokio::sync::Notify;

pub use auth::{hash_secret, new_secret};
pub use clock::now_ms;
pub use routes::router;

/// Tunables of the coordinator.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where artifacts and the admin token live.
    pub state_dir: PathBuf,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How often runners should heartbeat; a runner silent for three intervals is offline.
    pub heartbeat: Duration,
    /// Largest accepted request body (event batches and artifacts excepted).
    pub max_body_bytes: usize,
    /// Largest accepted event batch (`POST /api/v1/runs/{id}/events`): batches carry output.
    pub max_event_body_bytes: usize,
    /// Largest accepted artifact upload.
    pub max_artifact_bytes: usize,
    /// The SHA-256 (hex) of the token `/metrics` also accepts, besides any API token; for a
    /// scraper that should hold no API token (`--metrics-token-file`).
    pub metrics_token_hash: Option<String>,
}

impl ServerConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            lease: Duration::from_secs(15),
            heartbeat: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
            max_event_body_bytes: 16 << 20,
            max_artifact_bytes: 512 << 20,
            metrics_token_hash: None,
        }
    }
}

/// Everything the handlers share.
pub struct App<S: Store> {
    pub store: S,
    pub config: ServerConfig,
    /// Woken when a run becomes claimable.
    pub queued: Notify,
    /// Woken when any run gets new events or changes state.
    pub events: Notify,
    /// Woken when a cancel is requested.
    pub cancels: Notify,
    pub metrics: metrics::Metrics,
}

impl<S: Store> App<S> {
    pub fn new(store: S, config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            config,
            queued: Notify::new(),
            events: Notify::new(),
            cancels: Notify::new(),
            metrics: metrics::Metrics::default(),
        })
    }

    /// Wakes this server's waiters for `wake` and, through the store, every other server's.
    pub fn wake(&self, wake: Wake) {
        self.wake_here(wake);
        self.store.announce(wake);
    }

    /// Wakes this server's waiters only (for wake-ups that came from another server).
    fn wake_here(&self, wake: Wake) {
        if wake.queued {
            self.queued.notify_waiters();
        }
        if wake.cancel {
            self.cancels.notify_waiters();
        }
        if wake.events {
            self.events.notify_waiters();
        }
    }
}

/// Relays the wake-ups of the other servers on the same database to this server's waiters, for
/// as long as the server runs (nothing to do on SQLite).
async fn relay_wakes<S: Store>(app: Arc<App<S>>) {
    let Some(mut feed) = app.store.wake_feed() else {
        return;
    };
    let mut lost = false;
    loop {
        match feed.next().await {
            Ok(wake) => {
                if lost && wake == Wake::ALL {
                    tracing::info!(
                        "listening to the other servers' wake-ups again; every waiter looks again"
                    );
                }
                lost = false;
                app.wake_here(wake);
            }
            Err(e) => {
                if !lost {
                    tracing::warn!(error = %e, "lost the other servers' wake-ups; waiters fall back to their poll interval until the listener reconnects");
                }
                lost = true;
            }
        }
    }
}

/// Starts the background work: lease expiry and offline runners.
pub fn spawn_sweeper<S: Store>(app: Arc<App<S>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(sweeper::run(app))
}

/// Why the first start's admin token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the admin token on first start and writes it to `<state dir>/admin-token` (mode
/// 0600). Returns the path when a token was created.
pub async fn ensure_admin_token<S: Store>(
    app: &App<S>,
) -> Result<Option<PathBuf>, AdminTokenError> {
    if app.store.has_admin_token().await? {
        return Ok(None);
    }
    let (id, secret) = new_secret();
    let record = berth_store::TokenRecord {
        id,
        role: berth_store::Role::Admin,
        project: None,
        created_at: now_ms(),
        revoked_at: None,
    };
    let path = app.config.state_dir.join("admin-token");
    write_private(&path, &secret).map_err(|source| AdminTokenError::Write {
        path: path.clone(),
        source,
    })?;
    app.store
        .create_token(&record, &hash_secret(&secret))
        .await?;
    Ok(Some(path))
}

fn write_private(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")
}

/// Serves the API on `listener` until `shutdown` resolves, with the sweeper running: plain HTTP,
/// or HTTPS with `tls` (whose certificate and key are reloaded on SIGHUP).
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    app: Arc<App<S>>,
    tls: Option<tls::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = spawn_sweeper(app.clone());
    let wakes = tokio::spawn(relay_wakes(app.clone()));
    let result = match tls {
        None => {
            axum::serve(listener, router(app))
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            let stop = tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(None);
            });
            let reloads = tokio::spawn(tls.clone().reload_on_sighup());
            let server = listener
                .into_std()
                .and_then(|l| axum_server::from_tcp_rustls(l, tls.acceptor_config()));
            let served = match server {
                Ok(server) => {
                    let mut router = router(app).layer(axum::Extension(dashboard::OverTls));
                    if tls.verifies_runners() {
                        router = router.layer(axum::Extension(tls::RunnerCertificates));
                    }
                    server
                        .handle(handle)
                        .serve(router.into_make_service())
                        .await
                }
                Err(e) => Err(e),
            };
            stop.abort();
            reloads.abort();
            served
        }
    };
    sweeper.abort();
    wakes.abort();
    result
}
