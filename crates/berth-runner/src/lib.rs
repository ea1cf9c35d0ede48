//! `berth runner`: registers with the coordinator, claims runs whose tags it has, executes each
//! in a sandbox with berth-sandbox, streams events in batches, renews its leases, obeys
//! cancels, and on start accounts for every container a previous incarnation left.
//!
//! Architecture Invariant: the runner writes nothing for a run without that run's lease token,
//! and the coordinator refuses a write whose lease expired; so a runner that was presumed dead
//! can never overwrite what the coordinator decided meanwhile.

pub mod client;
mod execute;
mod reporter;
mod workflows;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{
    ClaimBody, Claimed, HeartbeatBody, HeartbeatReply, LeaseRef, RegisterRunner, Registered,
};
use berth_engine::diagnose::ProbeEnv;
use tokio::sync::mpsc::UnboundedSender;

pub use client::{ApiError, Client};

/// The label that ties a container to the runner that created it.
pub const RUNNER_LABEL: &str = "berth.runner-id";

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub server: String,
    pub token: String,
    pub name: String,
    pub tags: Vec<String>,
    pub require_matching_tags: bool,
    pub capacity: usize,
    /// Where run directories are kept on this host.
    pub state_dir: PathBuf,
    /// Where the shim is installed.
    pub cache_dir: PathBuf,
    pub probe_env: ProbeEnv,
    /// Whether runs with `execution_mode: local` may run on this host without a sandbox.
    pub allow_local: bool,
    /// The profiles runs may name (built in, and from this host's config).
    pub profiles: Vec<berth_core::profile::Profile>,
    /// Warm pools by profile or image name, from this host's config.
    pub pools: std::collections::BTreeMap<String, berth_core::held::PoolSpec>,
}

/// A run this runner holds a lease for.
struct Lease {
    token: String,
    /// Interrupts the run (a cancel, or a lease the server revoked).
    interrupt: UnboundedSender<&'static str>,
    interrupted: bool,
}

/// Shared by the workers and the heartbeat.
struct Shared {
    config: RunnerConfig,
    client: Client,
    runner_id: String,
    leases: Mutex<HashMap<String, Lease>>,
    heartbeat: Duration,
}

/// Runs until `shutdown` resolves, then stops claiming; runs in progress are finished first.
pub async fn run(
    config: RunnerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let client = Client::new(&config.server, &config.token).map_err(|e| e.to_string())?;
    let registered = register(&client, &config).await?;
    tracing::info!(runner = %registered.runner_id, server = %config.server, "registered");
    let engine = wait_for_engine(&config.probe_env).await;
    let shared = Arc::new(Shared {
        client,
        runner_id: registered.runner_id.clone(),
        leases: Mutex::new(HashMap::new()),
        // The server's word, held to what any berth duration may be.
        heartbeat: Duration::from_millis(registered.heartbeat_ms.max(100).unsigned_abs())
            .min(berth_core::units::MAX_DURATION),
        config,
    });
    execute::reconcile(&engine, &shared).await;

    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..shared.config.capacity.max(1) {
        workers.push(tokio::spawn(worker(
            shared.clone(),
            engine.clone(),
            stop_rx.clone(),
        )));
    }
    shutdown.await;
    tracing::info!("stopping: no new claims; runs in progress finish first");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    heartbeat.abort();
    execute::drain_pool(&engine, &shared).await;
    Ok(())
}

/// Registers, retrying with backoff while the server is unreachable or failing. A refusal (403:
/// the name is bound to another runner token, or the token is no runner token) is final.
async fn register(client: &Client, config: &RunnerConfig) -> Result<Registered, String> {
    let body = RegisterRunner {
        name: config.name.clone(),
        tags: config.tags.clone(),
        require_matching_tags: config.require_matching_tags,
        capacity: config.capacity as i64,
    };
    let mut backoff = Backoff::new();
    loop {
        match client
            .post::<_, Registered>("/api/v1/runners/register", &body)
            .await
        {
            Ok(r) => return Ok(r),
            Err(e) if e.status() == Some(403) => {
                return Err(format!("registering as `{}` was refused: {e}", config.name))
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.peek(), "registering failed");
                backoff.wait().await;
            }
        }
    }
}

async fn wait_for_engine(env: &ProbeEnv) -> berth_engine::DockerEngine {
    let mut backoff = Backoff::new();
    loop {
        match berth_engine::diagnose::check_engine(env).await {
            Ok((engine, _, warning)) => {
                if let Some(w) = warning {
                    tracing::warn!(diagnosis = w.code(), "{}", w.message());
                }
                return engine;
            }
            Err((d, _)) => {
                tracing::error!(diagnosis = d.code(), hint = %d.hint(), "Docker cannot be used: {}", d.message());
                backoff.wait().await;
            }
        }
    }
}

async fn worker(
    shared: Arc<Shared>,
    engine: berth_engine::DockerEngine,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let path = format!("/api/v1/runners/{}/claim", shared.runner_id);
    let mut backoff = Backoff::new();
    while !*stop.borrow() {
        let claim = shared.client.post_optional::<_, Claimed>(
            &path,
            &ClaimBody { wait_ms: 20_000 },
            Duration::from_secs(40),
        );
        let claimed = tokio::select! {
            result = claim => result,
            _ = stop.changed() => break,
        };
        match claimed {
            Ok(Some(claimed)) => {
                backoff.reset();
                execute::execute(&engine, &shared, claimed).await;
            }
            Ok(None) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.peek(), "claiming failed");
                tokio::select! {
                    () = backoff.wait() => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
}

/// Renews every lease; the server holds the request open and answers at once when a cancel is
/// requested, so cancels arrive within a round trip.
async fn heartbeat_loop(shared: Arc<Shared>) {
    let path = format!("/api/v1/runners/{}/heartbeat", shared.runner_id);
    let mut backoff = Backoff::new();
    loop {
        let leases: Vec<LeaseRef> = match shared.leases.lock() {
            Ok(map) => map
                .iter()
                .map(|(run_id, l)| LeaseRef {
                    run_id: run_id.clone(),
                    lease_token: l.token.clone(),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let idle = leases.is_empty();
        let body = HeartbeatBody {
            leases,
            workflows: workflows::held(&shared.config.state_dir),
        };
        match shared
            .client
            .post_with_timeout::<_, HeartbeatReply>(
                &path,
                &body,
                shared.heartbeat * 3 + Duration::from_secs(5),
            )
            .await
        {
            Ok(reply) => {
                backoff.reset();
                for (run_id, why) in reply.cancel.iter().map(|r| (r, "a cancel request")).chain(
                    reply
                        .revoked
                        .iter()
                        .map(|r| (r, "the server (lease revoked)")),
                ) {
                    if let Ok(mut map) = shared.leases.lock() {
                        if let Some(lease) = map.get_mut(run_id) {
                            if !lease.interrupted {
                                lease.interrupted = true;
                                tracing::info!(run = %run_id, "stopping: {why}");
                                let _ = lease.interrupt.send(why);
                            }
                        }
                    }
                }
                for id in &reply.ended_workflows {
                    workflows::remove(&shared.config.state_dir, id);
                }
                if idle {
                    tokio::time::sleep(shared.heartbeat).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                backoff.wait().await;
            }
        }
    }
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    fn peek(&self) -> Duration {
        self.next
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}
