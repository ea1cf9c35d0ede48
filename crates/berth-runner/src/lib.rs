//! `berth runner`: registers with the coordinator, claims runs whose tags it has, executes each
//! in a sandbox with berth-sandbox, streams events in batches, renews its leases, obeys
//! cancels, and on start accounts for every container a previous incarnation left.
//!
//! Architecture Invariant: the runner writes nothing for a run without that run's lease token,
//! and the coordinator refuses a write whose lease expired; so a runner that was presumed dead
//! can never overwrite what the coordinator decided meanwhile.

mod adopt;
mod backoff;
mod execute;
mod journal;
mod reporter;
mod workflows;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{
    ClaimBody, Claimed, HeartbeatBody, HeartbeatReply, LeaseRef, RegisterRunner, Registered,
};
use berth_client::{ApiError, Client, Transport};
use berth_engine::diagnose::ProbeEnv;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::backoff::Backoff;

/// The label that ties a container to the runner that created it.
pub const RUNNER_LABEL: &str = "berth.runner-id";

/// How long runs in progress may go on after a SIGTERM: with the grace below and the time to
/// clean up, a runner stops well within compose's 10 s and systemd's 90 s stop timeouts.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Between the SIGTERM and the SIGKILL of a run the runner stops.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(3);
/// After the SIGKILL, how long the runner still waits for the server before it keeps what is
/// unsent in its journal and exits.
const ABANDON_AFTER_KILL: Duration = Duration::from_secs(2);

/// What the runner's supervisor asks for, in rising urgency. `berth runner` maps signals onto
/// it: SIGTERM drains, a second SIGTERM (or SIGINT) stops the runs, one more kills them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    Run,
    /// No new claims; runs in progress have the drain timeout to finish.
    Drain,
    /// Stop the runs now: SIGTERM, the stop grace, SIGKILL.
    Now,
    /// Kill the runs at once.
    Kill,
}

impl Stop {
    pub fn after_sigterm(self) -> Self {
        match self {
            Self::Run => Self::Drain,
            Self::Drain => Self::Now,
            Self::Now | Self::Kill => Self::Kill,
        }
    }

    pub fn after_sigint(self) -> Self {
        match self {
            Self::Run | Self::Drain => Self::Now,
            Self::Now | Self::Kill => Self::Kill,
        }
    }
}

/// Where the runner is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Working,
    /// No new claims.
    Draining,
    /// The runs were told to stop; calls to the server are no longer retried.
    Halting,
    /// The runs were killed.
    Killing,
    /// Calls in flight are given up; what is unsent stays in the journal.
    Abandoned,
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub server: String,
    pub token: String,
    /// The CA to trust besides the system's, and whether plain HTTP to another host is allowed.
    pub transport: Transport,
    pub name: String,
    pub tags: Vec<String>,
    pub require_matching_tags: bool,
    /// The names of the secrets this host has in its environment, declared at registration.
    pub secrets: Vec<String>,
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
    /// Hosts whose requests get a header added by this runner's egress proxy (this host's
    /// `[egress.inject]`), for runs with egress policy.
    pub inject: Vec<berth_core::egress::Inject>,
    /// Warm pools by profile or image name, from this host's config.
    pub pools: std::collections::BTreeMap<String, berth_core::held::PoolSpec>,
    /// After a SIGTERM, how long runs in progress may go on before they are stopped.
    pub drain_timeout: Duration,
    /// Between SIGTERM and SIGKILL of a run stopped by the runner's shutdown.
    pub stop_grace: Duration,
}

/// A run this runner holds a lease for.
struct Lease {
    token: String,
    /// Interrupts the run (a cancel, or a lease the server revoked).
    interrupt: UnboundedSender<&'static str>,
    interrupted: bool,
    /// The runner's shutdown stopped the run (not a cancel, not the server).
    shutdown: bool,
    /// The server confirmed the lease just before the container started (and recorded the start).
    fenced: bool,
}

/// Shared by the workers and the heartbeat.
struct Shared {
    config: RunnerConfig,
    client: Client,
    runner_id: String,
    leases: Mutex<HashMap<String, Lease>>,
    heartbeat: Duration,
    phase: watch::Sender<Phase>,
}

impl Shared {
    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// The runner stopped retrying calls to the server: it is shutting down.
    pub(crate) fn stopping(&self) -> bool {
        self.phase() >= Phase::Halting
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Waits `delay` before another attempt; false when the runner no longer retries.
    pub(crate) async fn retry_after(&self, delay: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.reached(Phase::Halting) => false,
        }
    }

    /// One call to the server, given up (as unreachable) when the runner abandons what is in
    /// flight.
    pub(crate) async fn attempt<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::select! {
            result = call => result,
            () = self.reached(Phase::Abandoned) => Err(ApiError::Unreachable {
                url: self.client.base().to_string(),
                message: "given up: the runner is stopping".into(),
            }),
        }
    }

    /// POSTs, retrying while the server is unreachable or failing (5xx) until the runner stops
    /// retrying; then the error says unreachable. Any other answer is the server's.
    pub(crate) async fn post_retrying<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(), ApiError> {
        let mut backoff = Backoff::new();
        loop {
            let error = match self
                .attempt(self.client.post::<_, serde_json::Value>(path, body))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.status().is_some_and(|s| s < 500) => return Err(e),
                Err(e) => e,
            };
            tracing::warn!(path, error = %error, "calling the server failed; retrying");
            if !self.retry_after(backoff.next_delay()).await {
                return Err(ApiError::Unreachable {
                    url: self.client.base().to_string(),
                    message: format!("given up: the runner is stopping ({error})"),
                });
            }
        }
    }

    /// Interrupts every run: the first time with the shutdown as the reason, again to kill.
    fn interrupt_all(&self, kill: bool) -> usize {
        let Ok(mut map) = self.leases.lock() else {
            return 0;
        };
        for lease in map.values_mut() {
            if kill {
                let _ = lease.interrupt.send("the runner's shutdown");
            } else if !lease.interrupted {
                lease.interrupted = true;
                lease.shutdown = true;
                let _ = lease.interrupt.send("the runner's shutdown");
            }
        }
        map.len()
    }
}

/// Runs until `stop` asks it to end: a drain first stops claiming and gives the runs in
/// progress the drain timeout; then they are stopped (SIGTERM, the stop grace, SIGKILL) and their
/// containers removed. What the server could not be told by then is kept in the journal and sent
/// by the next start.
pub async fn run(config: RunnerConfig, mut stop: watch::Receiver<Stop>) -> Result<(), Failure> {
    let client = Client::new(&config.server, &config.token, &config.transport)?;
    if let Some(warning) = client.warning() {
        tracing::warn!("{warning}");
    }
    // Until the runner works, a stop request ends it at once.
    let registered = tokio::select! {
        registered = register(&client, &config) => registered?,
        _ = stop.wait_for(|s| *s >= Stop::Drain) => {
            tracing::info!("stopping before the server was reached");
            return Ok(());
        }
    };
    tracing::info!(runner = %registered.runner_id, server = %config.server, "registered");
    let engine = tokio::select! {
        engine = wait_for_engine(&config.probe_env) => engine,
        _ = stop.wait_for(|s| *s >= Stop::Drain) => {
            tracing::info!("stopping before Docker could be used");
            return Ok(());
        }
    };
    let shared = Arc::new(Shared {
        client,
        runner_id: registered.runner_id.clone(),
        leases: Mutex::new(HashMap::new()),
        // The server's word, held to what any berth duration may be.
        heartbeat: Duration::from_millis(registered.heartbeat_ms.max(100).unsigned_abs())
            .min(berth_core::units::MAX_DURATION),
        config,
        phase: watch::channel(Phase::Working).0,
    });
    let supervisor = tokio::spawn(supervise(shared.clone(), stop));
    // What an earlier incarnation could not tell the server, and the containers it left: those
    // still running under a lease the server confirms are adopted, the others removed.
    let adopted = journal::resend(&shared, &engine).await;

    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
    let mut workers = Vec::new();
    for adoption in adopted {
        workers.push(tokio::spawn(adopt::adopt(
            engine.clone(),
            shared.clone(),
            adoption,
        )));
    }
    for _ in 0..shared.config.capacity.max(1) {
        workers.push(tokio::spawn(worker(shared.clone(), engine.clone())));
    }
    for w in workers {
        let _ = w.await;
    }
    heartbeat.abort();
    supervisor.abort();
    execute::drain_pool(&engine, &shared).await;
    tracing::info!("stopped");
    Ok(())
}

/// Moves the runner through its shutdown as `stop` asks and the drain timeout and the stop
/// grace pass.
async fn supervise(shared: Arc<Shared>, mut stop: watch::Receiver<Stop>) {
    let config = &shared.config;
    if stop.wait_for(|s| *s >= Stop::Drain).await.is_err() {
        return;
    }
    shared.phase.send_replace(Phase::Draining);
    if *stop.borrow() < Stop::Now {
        tracing::info!(drain_timeout = ?config.drain_timeout, "stopping: no new claims; runs in progress may finish within the drain timeout");
        tokio::select! {
            () = tokio::time::sleep(config.drain_timeout) => {}
            _ = stop.wait_for(|s| *s >= Stop::Now) => {}
        }
    }
    shared.phase.send_replace(Phase::Halting);
    let runs = shared.interrupt_all(false);
    if runs > 0 {
        tracing::warn!(runs, grace = ?config.stop_grace, "stopping the runs in progress: SIGTERM, then SIGKILL after the grace");
    }
    if *stop.borrow() < Stop::Kill {
        tokio::select! {
            () = tokio::time::sleep(config.stop_grace) => {}
            _ = stop.wait_for(|s| *s >= Stop::Kill) => {}
        }
    }
    shared.phase.send_replace(Phase::Killing);
    if shared.interrupt_all(true) > 0 {
        tracing::warn!("killing the runs still in progress");
    }
    tokio::time::sleep(ABANDON_AFTER_KILL).await;
    shared.phase.send_replace(Phase::Abandoned);
}

/// Why a runner could not work, and what to change when that is known.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            hint: None,
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self {
            hint: e.hint().map(str::to_string),
            message: e.to_string(),
        }
    }
}

/// Registers, retrying with backoff while the server is unreachable or failing. A refusal (403:
/// the name is bound to another runner token, or the token is no runner token) is final, and so
/// is a TLS failure (a certificate this runner does not accept): neither goes away by waiting.
async fn register(client: &Client, config: &RunnerConfig) -> Result<Registered, Failure> {
    let body = RegisterRunner {
        name: config.name.clone(),
        tags: config.tags.clone(),
        require_matching_tags: config.require_matching_tags,
        capacity: config.capacity as i64,
        secrets: config.secrets.clone(),
    };
    let mut backoff = Backoff::new();
    loop {
        match client
            .post::<_, Registered>("/api/v1/runners/register", &body)
            .await
        {
            Ok(r) => return Ok(r),
            Err(e) if e.status() == Some(403) => {
                return Err(format!("registering as `{}` was refused: {e}", config.name).into())
            }
            Err(e @ ApiError::Tls { .. }) => return Err(e.into()),
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

async fn worker(shared: Arc<Shared>, engine: berth_engine::DockerEngine) {
    let path = format!("/api/v1/runners/{}/claim", shared.runner_id);
    let mut backoff = Backoff::new();
    while shared.phase() == Phase::Working {
        let claim = shared.client.post_optional::<_, Claimed>(
            &path,
            &ClaimBody { wait_ms: 20_000 },
            Duration::from_secs(40),
        );
        let claimed = tokio::select! {
            result = claim => result,
            () = shared.reached(Phase::Draining) => break,
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
                    () = shared.reached(Phase::Draining) => break,
                }
            }
        }
    }
}

/// Renews every lease; the server holds the request open and answers at once when a cancel is
/// requested, so cancels arrive within a round trip.
async fn heartbeat_loop(shared: Arc<Shared>) {
    let path = format!("/api/v1/runners/{}/heartbeat", shared.runner_id);
    // Never slower than the heartbeat: a server back from an outage gives leases one period.
    let mut backoff = Backoff::up_to(shared.heartbeat);
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
