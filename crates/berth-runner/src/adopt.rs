//! Runs that outlive their runner: a runner killed (or upgraded) while its commands run leaves
//! their containers running, because a command writes its output to files in the run's `io/`
//! directory, not to a pipe that breaks when its reader dies. The next start of the runner, within
//! the lease, adopts each of them: the server confirms the lease (a resent start of the same
//! container, which renews it), the output is read again from its first byte and the events the
//! server already has are left out (their count per stream is in the journal's `acked.json`),
//! new events are numbered on from where the server's end, and the run ends as any other.
//!
//! Adopted: cold containers on a local engine (the output files are on this host). Not adopted,
//! so reported `lost` and removed as before: held containers (their supervisor's control
//! stream died with the runner), the egress proxy's runs (the proxy lived in the runner), copy
//! and worktree workspaces and workflow steps (what they do after the exit needs state the
//! runner kept in memory), and runs whose secrets are no longer in the runner's environment
//! (their output could not be masked).

use std::path::PathBuf;
use std::sync::Arc;

use berth_api::StartBody;
use berth_core::egress::EgressMode;
use berth_core::mask::Masker;
use berth_core::plan::labels;
use berth_core::record::Execution;
use berth_engine::{DockerEngine, Engine};
use berth_sandbox::rundir::RunDir;
use berth_sandbox::RunContext;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::execute::{conclude, outcome_of, Outcome};
use crate::journal::{Acked, Found, RunJournal};
use crate::reporter::{batcher_from, ServerReporter};
use crate::{Lease, Shared, RUNNER_LABEL};

/// A run this runner took back from its dead predecessor, its lease confirmed and held.
pub struct Adoption {
    run_id: String,
    lease_token: String,
    container_id: String,
    run_dir: RunDir,
    /// How far the server has the run's events.
    at: Acked,
    masker: Masker,
    interrupts: UnboundedReceiver<&'static str>,
}

impl Adoption {
    pub fn run_id(&self) -> &str {
        &self.run_id
    }
}

/// Whether the run of `journal` (one in progress when the runner died) can be adopted: its
/// container is still on the engine, it is a kind of run that can be, and the server confirms the
/// lease. Then the lease is the runner's again (renewed by the heartbeat from here on).
pub async fn adoptable(
    engine: &DockerEngine,
    shared: &Arc<Shared>,
    journal: &Found,
) -> Option<Adoption> {
    if journal.end.is_some() {
        return None;
    }
    let run_id = &journal.run_id;
    let containers = engine.list_managed().await.ok()?;
    let container = containers.into_iter().find(|c| {
        c.labels.get(RUNNER_LABEL) == Some(&shared.runner_id)
            && c.labels.get(labels::RUN_ID) == Some(run_id)
            && !c.labels.contains_key(labels::HELD)
    })?;
    let run_dir = container
        .labels
        .get(labels::RUN_DIR)
        .map(PathBuf::from)
        .filter(|dir| dir.starts_with(&shared.config.state_dir))?;
    let run_dir = RunDir::open(run_dir);
    let not_adopted = |why: &str| {
        tracing::warn!(run = %run_id, container = %container.name, "not adopting the run: {why}");
        None
    };
    let record = match run_dir.read_record() {
        Ok(record) => record,
        Err(e) => return not_adopted(&format!("its record cannot be read: {e}")),
    };
    let spec = &record.spec;
    let container_id = match record.container_id.clone() {
        Some(id) if record.id == *run_id && id == container.id => id,
        _ => return not_adopted("its record does not name this container"),
    };
    if record.execution != Execution::Docker
        || spec.persistent.is_some()
        || spec.workspace_mode.is_isolated()
        || spec.egress.mode == EgressMode::Policy
        || spec
            .workspace
            .starts_with(crate::workflows::root(&shared.config.state_dir))
        || !run_dir.io_dir().is_dir()
    {
        return not_adopted("runs in held containers, behind the egress proxy, in copy or worktree workspaces, of workflows or on a remote engine are not adopted");
    }
    let secrets: Option<Vec<String>> = spec
        .secrets
        .iter()
        .map(|name| std::env::var(name).ok())
        .collect();
    let Some(secrets) = secrets else {
        return not_adopted("a secret of the run is no longer in the runner's environment, so its output could not be masked");
    };
    // A resent start of the same container: accepted only under the current lease, which it
    // renews.
    let body = StartBody {
        lease_token: journal.lease_token.clone(),
        container_id: Some(container_id.clone()),
    };
    let path = format!("/api/v1/runs/{run_id}/start");
    if let Err(e) = shared.post_retrying(&path, &body).await {
        return not_adopted(&format!("the server did not confirm its lease: {e}"));
    }
    // `berth gc` on this host keeps the container while this runner follows it.
    if let Err(e) = berth_sandbox::owner::record_adopter(run_dir.path()) {
        tracing::warn!(run = %run_id, error = %e, "recording the adoption in the run directory failed; `berth gc` would take the container for an orphan");
    }
    let (interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
    if let Ok(mut map) = shared.leases.lock() {
        map.insert(
            run_id.clone(),
            Lease {
                token: journal.lease_token.clone(),
                interrupt,
                interrupted: false,
                shutdown: false,
                fenced: true,
            },
        );
    }
    Some(Adoption {
        run_id: run_id.clone(),
        lease_token: journal.lease_token.clone(),
        container_id,
        run_dir,
        at: journal.resume_point(),
        masker: Masker::new(&secrets),
        interrupts,
    })
}

/// Follows an adopted run to its end and reports it.
pub async fn adopt(engine: DockerEngine, shared: Arc<Shared>, adoption: Adoption) {
    let Adoption {
        run_id,
        lease_token,
        container_id,
        run_dir,
        at,
        masker,
        mut interrupts,
    } = adoption;
    tracing::info!(run = %run_id, container = %container_id, stdout_sent = at.stdout, stderr_sent = at.stderr, "adopted a run the previous runner left running");
    let journal = RunJournal::resume(&shared.config.state_dir, &run_id, at)
        .inspect_err(|e| tracing::warn!(run = %run_id, error = %e, "the adopted run's journal could not be kept; what the server misses if the runner stops is lost"))
        .ok();
    let (tx, rx) = tokio::sync::mpsc::channel(crate::reporter::QUEUE_EVENTS);
    let batch_task = tokio::spawn(batcher_from(
        shared.clone(),
        run_id.clone(),
        lease_token.clone(),
        journal,
        rx,
        at.next_seq,
    ));
    let reporter = ServerReporter::new(tx.clone(), shared.clone(), &run_id, &lease_token)
        .resuming(at.stdout, at.stderr);
    let outcome = match RunContext::reopen(run_dir.clone(), Arc::new(reporter), masker) {
        Ok(mut ctx) => {
            // Ending the run does the check for planted repositories its first runner kept
            // pending (`RunContext::reopen`).
            berth_sandbox::reattach(&engine, &mut ctx, &container_id, &mut interrupts).await;
            outcome_of(&ctx, run_dir)
        }
        Err(e) => {
            let _ = engine.remove(&container_id).await;
            Outcome::error(format!(
                "runner `{}` restarted and could not take the run back: {e}",
                shared.runner_id
            ))
        }
    };
    conclude(&shared, &run_id, &lease_token, outcome, tx, batch_task).await;
}
