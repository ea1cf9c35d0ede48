//! Executing one claimed run, and accounting for containers left by an earlier incarnation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_api::{Claimed, ExecutionMode, FinishBody};
use berth_core::egress::EgressMode;
use berth_core::mask::Masker;
use berth_core::plan::{labels, sandbox_user};
use berth_core::profile::{Profile, Resume};
use berth_core::record::{Execution, RunRecord};
use berth_core::spec::{
    Fallback, MountRequest, NetworkMode, PullPolicy, Resources, RunSpec, UserSpec, WorkspaceMode,
};
use berth_core::units;
use berth_engine::{DockerEngine, Engine};
use berth_sandbox::run::DockerRun;
use berth_sandbox::rundir::{RunDir, StateDir};
use berth_sandbox::{launch, RunContext};
use tokio::sync::oneshot;

use crate::journal::{Delivery, End, RunJournal};
use crate::reporter::{batcher, Message, ServerReporter};
use crate::{Lease, Shared, RUNNER_LABEL};

/// The lease of a run, kept in its run directory so that a restarted runner can still report
/// on containers it left behind.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseFile {
    run_id: String,
    lease_token: String,
}

pub async fn execute(engine: &DockerEngine, shared: &Arc<Shared>, claimed: Claimed) {
    let run_id = claimed.run.id.clone();
    let (interrupt_tx, mut interrupts) = tokio::sync::mpsc::unbounded_channel();
    if let Ok(mut map) = shared.leases.lock() {
        map.insert(
            run_id.clone(),
            Lease {
                token: claimed.lease_token.clone(),
                interrupt: interrupt_tx,
                interrupted: false,
                shutdown: false,
                fenced: false,
            },
        );
    }
    let journal =
        RunJournal::create(&shared.config.state_dir, &run_id, &claimed.lease_token)
            .inspect_err(|e| tracing::warn!(run = %run_id, error = %e, "the run's journal could not be made; what the server misses if the runner stops is lost"))
            .ok();
    let (tx, rx) = tokio::sync::mpsc::channel(crate::reporter::QUEUE_EVENTS);
    let batch_task = tokio::spawn(batcher(
        shared.clone(),
        run_id.clone(),
        claimed.lease_token.clone(),
        journal,
        rx,
    ));
    tracing::info!(run = %run_id, "claimed");

    let outcome = run_claimed(
        engine,
        shared,
        &claimed,
        ServerReporter::new(tx.clone(), shared.clone(), &run_id, &claimed.lease_token),
        &mut interrupts,
    )
    .await;
    conclude(
        shared,
        &run_id,
        &claimed.lease_token,
        outcome,
        tx,
        batch_task,
    )
    .await;
}

/// Ends a run with the server: the events still buffered go first, then the artifacts and the
/// end; what the server cannot be told stays in the journal. The lease is given up.
pub(crate) async fn conclude(
    shared: &Arc<Shared>,
    run_id: &str,
    lease_token: &str,
    outcome: Outcome,
    tx: tokio::sync::mpsc::Sender<Message>,
    batch_task: tokio::task::JoinHandle<(Option<RunJournal>, bool)>,
) {
    let run_id = run_id.to_string();
    let (done_tx, done_rx) = oneshot::channel();
    let _ = tx.send(Message::Flush(done_tx)).await;
    let _ = done_rx.await;
    drop(tx);
    let (journal, events_kept) = batch_task.await.unwrap_or((None, false));

    let stopped_by_shutdown = shared
        .leases
        .lock()
        .is_ok_and(|map| map.get(&run_id).is_some_and(|l| l.shutdown));
    let (state, reason) = if stopped_by_shutdown && outcome.state == "cancelled" {
        (
            "lost".to_string(),
            Some(format!(
                "runner `{}` shut down before the run ended (drain timeout {}); the command was stopped",
                shared.runner_id,
                units::format_duration(shared.config.drain_timeout)
            )),
        )
    } else {
        (outcome.state.clone(), outcome.reason.clone())
    };
    let end = End {
        finish: FinishBody {
            lease_token: lease_token.to_string(),
            state,
            exit_code: outcome.exit_code,
            reason,
            commit: outcome.commit.clone(),
        },
        artifacts: outcome.run_dir.as_ref().map(RunDir::artifacts_dir),
    };
    // Events still owed go first: the end is then the next start's to report.
    let delivery = if events_kept {
        Delivery::Kept
    } else {
        crate::journal::deliver_end(shared, &run_id, end.clone()).await
    };
    match (delivery, journal) {
        (Delivery::Kept, Some(journal)) => {
            journal.write_end(&end);
            tracing::warn!(run = %run_id, journal = %journal.dir().display(), "the server is unreachable: the run's end is kept for the next start");
        }
        (Delivery::Kept, None) => {
            tracing::error!(run = %run_id, "the server is unreachable and the run has no journal: its end is lost");
        }
        (_, journal) => {
            if let Some(journal) = journal {
                journal.remove();
            }
        }
    }
    if let Ok(mut map) = shared.leases.lock() {
        map.remove(&run_id);
    }
    tracing::info!(run = %run_id, state = %end.finish.state, "finished");
}

pub(crate) struct Outcome {
    state: String,
    exit_code: Option<i64>,
    reason: Option<String>,
    run_dir: Option<RunDir>,
    /// The commit the workspace was made from, for the server's record of the run.
    commit: Option<String>,
}

impl Outcome {
    pub(crate) fn error(reason: String) -> Self {
        Self {
            state: "error".into(),
            exit_code: None,
            reason: Some(reason),
            run_dir: None,
            commit: None,
        }
    }
}

/// The secrets a submission may name: those this runner declared (`berth runner --secret`),
/// and the credential variables of the run's profile. Any other variable of the runner's
/// environment — its own token, a brokered API key, an injected header's value — is not a
/// submitter's to read, so a run naming one ends in error before anything starts.
fn check_requested_secrets(
    requested: &[String],
    profile: Option<&Profile>,
    declared: &[String],
) -> Result<(), String> {
    for name in requested {
        let credential = profile.is_some_and(|p| p.credentials.contains(name));
        if name.starts_with("BERTH_") || !(credential || declared.contains(name)) {
            return Err(format!(
                "secret `{name}` is not one this runner passes: a runner passes only the secrets it declares (berth runner --secret NAME) and the credentials of the run's profile{}",
                if declared.is_empty() {
                    " (it declares none)".to_string()
                } else {
                    format!(" (it declares {})", declared.join(", "))
                }
            ));
        }
    }
    Ok(())
}

async fn run_claimed(
    engine: &DockerEngine,
    shared: &Arc<Shared>,
    claimed: &Claimed,
    reporter: ServerReporter,
    interrupts: &mut berth_sandbox::Interrupts,
) -> Outcome {
    let run = &claimed.run;
    if run.execution_mode == ExecutionMode::Local && !shared.config.allow_local {
        return Outcome::error(format!(
            "runner `{}` does not run commands outside a sandbox; start it with --allow-local to accept execution_mode local",
            shared.runner_id
        ));
    }
    let (mut spec, stdin) = match spec_for(
        claimed,
        &shared.config.profiles,
        &shared.config.inject,
        &shared.config.secrets,
    ) {
        Ok(built) => built,
        Err(e) => return Outcome::error(e),
    };
    // A warm pool configured on this host for the run's profile, else its image.
    let pool = spec
        .profile
        .iter()
        .chain(std::iter::once(&spec.image))
        .find_map(|name| shared.config.pools.get(name).cloned())
        .filter(|p| p.size > 0);
    let secrets: Result<Vec<(String, String)>, String> = spec
        .secrets
        .iter()
        .map(|name| {
            std::env::var(name).map(|v| (name.clone(), v)).map_err(|_| {
                format!(
                    "secret `{name}` is not set in the environment of runner `{}`",
                    shared.runner_id
                )
            })
        })
        .collect();
    let secrets = match secrets {
        Ok(s) => s,
        Err(e) => return Outcome::error(e),
    };
    // Brokered credentials and injected headers' values: read here, held by this runner's egress
    // proxy, never sent to the sandbox.
    let brokered = match berth_sandbox::egress::read_host_values(
        &spec
            .egress
            .brokers
            .iter()
            .map(|b| b.credential.clone())
            .collect::<Vec<_>>(),
    ) {
        Ok(b) => b,
        Err(name) => {
            return Outcome::error(format!(
                "credential `{name}` is not set in the environment of runner `{}`",
                shared.runner_id
            ))
        }
    };
    let injected = match berth_sandbox::egress::read_host_values(
        &spec.egress.inject.iter().map(|i| i.env.clone()).collect::<Vec<_>>(),
    ) {
        Ok(b) => b,
        Err(name) => {
            return Outcome::error(format!(
                "the header injected for this runner's [egress.inject] hosts comes from `{name}`, which is not set in the environment of runner `{}`",
                shared.runner_id
            ))
        }
    };
    let upstreams = match berth_sandbox::egress::upstreams_from_env() {
        Ok(u) => u,
        Err(e) => return Outcome::error(e.to_string()),
    };
    let extra_roots = match berth_sandbox::egress::upstream_roots_from_env() {
        Ok(r) => r,
        Err(e) => return Outcome::error(e.to_string()),
    };
    let workspace_root = PathBuf::from(&claimed.workspace_root);
    let allowed: Vec<PathBuf> = claimed.allowed_paths.iter().map(PathBuf::from).collect();
    let state_dir = StateDir::new(shared.config.state_dir.clone());
    let own = [
        (state_dir.root(), "the runner's state directory"),
        (
            shared.config.cache_dir.as_path(),
            "the runner's cache (which holds the shim)",
        ),
    ];
    // The server judged the mounts by their names; here they are judged with symlinks resolved,
    // by the same checks as `berth run`'s.
    let checked = launch::check_request(&launch::Request {
        spec: &spec,
        cwd: &workspace_root,
        allowed_paths: &allowed,
        home: None,
        engine_socket: engine.endpoint().socket_path(),
        remote_engine: !engine.endpoint().is_local() && run.execution_mode != ExecutionMode::Local,
        ssh_engine: engine.ssh_target().is_some(),
        own_paths: &own,
    });
    let checked = match checked {
        Ok(c) => c,
        Err(e) => return Outcome::error(format!("runner `{}`: {e}", shared.runner_id)),
    };

    // `git_ref`: the workspace is made from that commit of the project's checkout, fetched
    // first when asked. The ref is checked again here: git never gets one the API refuses.
    if let Some(git_ref) = run.sandbox.git_ref.clone() {
        if let Err(e) = berth_api::check_git_ref(&git_ref) {
            return Outcome::error(format!("runner `{}`: {e}", shared.runner_id));
        }
        let checkout = checked.workspace.clone();
        let fetch = run.sandbox.fetch;
        let resolved = tokio::task::spawn_blocking(move || {
            berth_sandbox::workspace::resolve_ref(&checkout, &git_ref, fetch)
        })
        .await
        .map_err(|e| format!("resolving the git ref failed: {e}"))
        .and_then(|resolved| resolved.map_err(|e| e.to_string()));
        match resolved {
            Ok(commit) => spec.start_commit = Some(commit),
            Err(e) => return Outcome::error(format!("runner `{}`: {e}", shared.runner_id)),
        }
    }

    let local = run.execution_mode == ExecutionMode::Local;
    // A workflow's step works in the workflow's worktree, kept on this runner between steps.
    let workflow_tree = match &run.sandbox.workflow {
        None => None,
        Some(id) => {
            if !engine.endpoint().is_local() && !local {
                return Outcome::error(format!(
                    "runner `{}` uses a remote engine; workflow steps need a local one (their worktree stays on the runner between steps)",
                    shared.runner_id
                ));
            }
            let (uid, gid) = launch::invoking_user();
            let sandbox = sandbox_user(spec.user, uid, gid);
            let owner = berth_sandbox::workspace::tree_owner(sandbox, uid);
            let copy = run.sandbox.workspace_mode.as_deref() == Some("copy");
            match crate::workflows::worktree_for(
                &shared.config.state_dir,
                id,
                &checked.workspace,
                owner,
                copy,
            ) {
                Ok(tree) => Some(tree),
                Err(e) => {
                    return Outcome::error(format!(
                        "the workflow's worktree on runner `{}`: {e}",
                        shared.runner_id
                    ))
                }
            }
        }
    };
    let workspace = workflow_tree
        .as_ref()
        .map_or_else(|| checked.workspace.clone(), |tree| tree.mount.clone());

    let stale = shared.config.state_dir.join("runs").join(&run.id);
    if stale.exists() {
        // An earlier claim of this run on this host that never started: start afresh.
        let _ = std::fs::remove_dir_all(&stale);
    }
    let run_dir = match state_dir.create_run(&run.id) {
        Ok(d) => d,
        Err(e) => return Outcome::error(e.to_string()),
    };
    let lease_file = LeaseFile {
        run_id: run.id.clone(),
        lease_token: claimed.lease_token.clone(),
    };
    if let Err(e) = std::fs::write(
        run_dir.path().join("lease.json"),
        serde_json::to_vec(&lease_file).unwrap_or_default(),
    ) {
        return Outcome::error(format!("{}: {e}", run_dir.path().display()));
    }
    // Values the sandbox never gets are masked anyway, should any find their way back out.
    let masker = Masker::new(
        &secrets
            .iter()
            .chain(&brokered)
            .chain(&injected)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>(),
    );
    let execution = if local {
        Execution::Local
    } else {
        Execution::Docker
    };
    let record = RunRecord::new(
        run.id.clone(),
        spec.clone(),
        execution,
        berth_sandbox::clock::now_rfc3339(),
    );
    let mut ctx = match RunContext::create(run_dir.clone(), record, Arc::new(reporter), masker) {
        Ok(c) => c,
        Err(e) => return Outcome::error(e.to_string()),
    };

    if local {
        berth_sandbox::local::execute_local(&mut ctx, &workspace, &secrets, interrupts).await;
    } else {
        let prepared = launch::prepare_host(
            &mut ctx,
            launch::HostSide {
                checked,
                workspace: workspace.clone(),
                extra_mounts: Vec::new(),
                state_root: state_dir.root(),
                cache_dir: &shared.config.cache_dir,
                local_engine: engine.endpoint().socket_path().is_some(),
                remote_engine: !engine.endpoint().is_local(),
                // The claim in the container's name: a later claim of the run never collides
                // with what an earlier one left.
                extra_labels: [
                    (RUNNER_LABEL.to_string(), shared.runner_id.clone()),
                    (labels::CLAIM.to_string(), claim_id()),
                ]
                .into(),
            },
        );
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                ctx.fail("", &e);
                return outcome_of(&ctx, run_dir);
            }
        };
        berth_sandbox::execute_docker(
            engine,
            &mut ctx,
            DockerRun {
                plan_context: prepared.plan_context,
                secrets,
                stdin,
                held_root: state_dir.root().join("held"),
                pool,
                workspace: prepared.upload,
                egress: berth_sandbox::egress::EgressHost {
                    brokered,
                    upstreams,
                    injected,
                    extra_roots,
                    rules_from: berth_egress::RulesFrom::Submitted,
                    ..Default::default()
                },
            },
            interrupts,
        )
        .await;
        berth_sandbox::workspace::conclude(&mut ctx, &prepared.worktree);
        let diff = ctx.run_dir.diff_path();
        if diff.is_file() {
            let target = ctx.run_dir.artifacts_dir().join("berth/diff.patch");
            let copied = std::fs::create_dir_all(ctx.run_dir.artifacts_dir().join("berth"))
                .and_then(|()| std::fs::copy(&diff, &target));
            if let Err(e) = copied {
                tracing::warn!(error = %e, "keeping diff.patch as an artifact failed");
            }
        }
    }
    if let Some(tree) = &workflow_tree {
        // The workflow's diff so far, for the server's prompts and its final diff.
        let target = ctx.run_dir.artifacts_dir().join("berth/diff.patch");
        let written = tree.diff().and_then(|diff| {
            std::fs::create_dir_all(ctx.run_dir.artifacts_dir().join("berth"))
                .and_then(|()| std::fs::write(&target, diff))
                .map_err(|e| berth_sandbox::workspace::WorkspaceError::io(&target, e))
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "the workflow's diff could not be taken");
        }
    }
    outcome_of(&ctx, run_dir)
}

/// A fresh id for one claim of a run (eight hex digits).
fn claim_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:08x}", hasher.finish() as u32)
}

/// The run's end as the server is told.
pub(crate) fn outcome_of(ctx: &RunContext, run_dir: RunDir) -> Outcome {
    let record = &ctx.record;
    let commit = record.start_commit();
    Outcome {
        state: record.state.as_str().to_string(),
        exit_code: record.exit_code,
        reason: record.reason.clone(),
        run_dir: Some(run_dir),
        commit,
    }
}

/// The sandbox spec of a claimed run, as `berth run` would build it, and the bytes for the
/// command's stdin (a prompt the profile reads there).
/// The run's spec from the claimed request, this host's profiles and its `[egress.inject]` hosts.
fn spec_for(
    claimed: &Claimed,
    profiles: &[Profile],
    inject: &[berth_core::egress::Inject],
    declared: &[String],
) -> Result<(RunSpec, Option<Vec<u8>>), String> {
    let s = &claimed.run.sandbox;
    let profile = s
        .profile
        .as_deref()
        .map(|name| berth_core::profile::find(profiles, name).map_err(|e| e.to_string()))
        .transpose()?;
    let (command, stdin) = match profile {
        Some(p) => {
            let words = match &s.prompt {
                Some(prompt) => vec![prompt.clone()],
                None => s.command.clone(),
            };
            p.argv(&words, &Resume::None).map_err(|e| e.to_string())?
        }
        None => (s.command.clone(), None),
    };
    let image = s
        .image
        .clone()
        .or_else(|| profile.and_then(|p| p.image.clone()))
        .unwrap_or_default();
    check_requested_secrets(&s.secrets, profile, declared)?;
    let secrets = berth_core::profile::secrets_for(profile, &s.secrets, |name| {
        std::env::var_os(name).is_some_and(|v| !v.is_empty())
    })
    .map_err(|e| match e {
        berth_core::profile::ProfileError::CredentialsMissing { .. } => format!(
            "{e}, in the environment of this runner (set one where `berth runner` starts, or \
             submit with --secret NAME naming one that is set there)"
        ),
        other => other.to_string(),
    })?;
    let mut env: Vec<(String, String)> = profile
        .map(|p| p.env.clone().into_iter().collect())
        .unwrap_or_default();
    for (k, v) in &s.env {
        env.retain(|(existing, _)| existing != k);
        env.push((k.clone(), v.clone()));
    }
    let persistent =
        berth_core::held::persistent_for(s.lifecycle.as_deref(), s.name.as_deref(), profile)
            .map_err(|(_, message)| message)?;
    let mut resources = s.resources.clone().unwrap_or_default();
    if let Some(p) = profile {
        resources.memory = resources.memory.or_else(|| p.memory.clone());
        resources.cpus = resources.cpus.or(p.cpus);
        resources.pids = resources.pids.or(p.pids);
    }
    let defaults = Resources::default();
    let memory_bytes = resources
        .memory
        .as_deref()
        .map(units::parse_memory)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or(defaults.memory_bytes);
    let nano_cpus = resources
        .cpus
        .map(units::cpus_from_f64)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or(defaults.nano_cpus);
    // The request's disk limit, else the profile's (checked when the profile was resolved).
    let disk_bytes = match resources.disk.as_deref() {
        Some(d) => Some(units::parse_disk(d).map_err(|e| e.to_string())?),
        None => profile.and_then(|p| p.disk),
    };
    let duration = |v: &Option<String>, default: Duration| {
        v.as_deref()
            .map(units::parse_duration)
            .transpose()
            .map(|d| d.unwrap_or(default))
            .map_err(|e| e.to_string())
    };
    let (workspace_mode, mounts) = match &s.mounts {
        // A workflow's step gets the workflow's worktree or copy read-write; its mode says how
        // that was made.
        None if s.workflow.is_some() => (WorkspaceMode::Rw, Vec::new()),
        None => (
            s.workspace_mode
                .as_deref()
                .map(str::parse::<WorkspaceMode>)
                .transpose()?
                .unwrap_or(WorkspaceMode::Rw),
            Vec::new(),
        ),
        Some(list) => (
            WorkspaceMode::None,
            list.iter()
                .map(|m| MountRequest {
                    source: m.source.clone().into(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                })
                .collect(),
        ),
    };
    let timeout = s
        .timeout
        .clone()
        .or_else(|| profile.and_then(|p| p.timeout.clone()));
    // The run's egress: the submission's, else the profile's (agent profiles reach their API
    // through this runner's proxy, their credentials brokered), within the project's ceiling.
    let asked = s.egress.clone().unwrap_or_default();
    let asked_mode = asked
        .mode
        .as_deref()
        .map(EgressMode::parse)
        .transpose()
        .map_err(|e| format!("sandbox.egress.mode: {e}"))?;
    let network_asked = s
        .network
        .as_deref()
        .map(NetworkMode::parse)
        .transpose()
        .map_err(|e| format!("sandbox.network: {e}"))?;
    let network_default = profile
        .and_then(|p| p.network.as_deref())
        .map(NetworkMode::parse)
        .transpose()
        .map_err(|e| format!("the profile's network: {e}"))?
        .unwrap_or_default();
    let inputs = berth_core::egress::Inputs {
        asked: berth_core::egress::Asked {
            mode: asked_mode,
            allow: &asked.allow,
            presets: &asked.presets,
            tcp: &asked.tcp,
        },
        config: berth_core::egress::Asked::default(),
        profile_mode: profile.and_then(|p| p.egress),
        profile_allow: profile.map_or(&[][..], |p| &p.allow_hosts),
        profile_name: profile.map(|p| p.name.as_str()),
        brokers: profile.map_or(&[][..], |p| &p.broker),
        network_asked: network_asked.as_ref(),
        network_default,
        ceiling: claimed.egress_ceiling.as_deref(),
    };
    // Header injection is this host's configuration (its values are in this runner's
    // environment): it applies to the runs that have egress policy.
    let with_policy = berth_core::egress::resolve(&inputs, Vec::new())
        .is_ok_and(|(spec, _, _)| spec.mode == EgressMode::Policy);
    let inject = if with_policy { inject } else { &[] };
    let (egress, network, secrets) =
        berth_core::egress::resolve_with_inject(&inputs, inject, secrets)
            .map_err(|e| format!("sandbox.egress: {}", e.message))?;
    let spec = RunSpec {
        image,
        command,
        pull: PullPolicy::Missing,
        workspace: claimed.workspace_root.clone().into(),
        workspace_mode,
        include_dirty: s.include_dirty,
        start_commit: None,
        copy_limit_bytes: berth_core::spec::DEFAULT_COPY_LIMIT,
        mounts,
        env,
        secrets,
        resources: Resources {
            memory_bytes,
            nano_cpus,
            pids: resources
                .pids
                .map(units::check_pids)
                .transpose()
                .map_err(|e| e.to_string())?
                .unwrap_or(defaults.pids),
            disk_bytes,
        },
        timeout: duration(&timeout, berth_core::spec::DEFAULT_TIMEOUT)?,
        grace: duration(&s.grace, berth_core::spec::DEFAULT_GRACE)?,
        network,
        read_only: s.read_only,
        user: s
            .user
            .as_deref()
            .map(UserSpec::parse)
            .transpose()
            .map_err(|e| e.to_string())?,
        publish: Vec::new(),
        artifacts: s.artifacts.clone(),
        keep: false,
        fallback: Fallback::None,
        workdir: s.workdir.clone(),
        output_format: profile.map_or("text".into(), |p| p.output.clone()),
        profile: profile.map(|p| p.name.clone()),
        persistent,
        egress,
        isolation: match s.isolation.as_deref() {
            Some(i) => i.parse().map_err(|e| format!("sandbox.isolation: {e}"))?,
            None => profile.and_then(|p| p.isolation).unwrap_or_default(),
        },
    };
    Ok((spec, stdin))
}

/// Removes this runner's ready pool containers: the pool is drained when the runner stops.
pub async fn drain_pool(engine: &DockerEngine, shared: &Shared) {
    let Ok(held) = berth_sandbox::held::list(engine).await else {
        return;
    };
    for listed in held.iter().filter(|l| {
        l.kind == berth_core::held::HeldKind::Pool
            && l.container.labels.get(RUNNER_LABEL) == Some(&shared.runner_id)
    }) {
        let removed = berth_sandbox::held::remove(engine, listed).await;
        tracing::info!(container = %listed.container.name, removed = removed.is_ok(), "drained from the warm pool");
    }
}

/// Uploads every regular file under `dir`; returns each that did not reach the server, with why.
/// `Err` when the server is unreachable and the runner stopped retrying: the upload is for the
/// next start.
pub(crate) async fn upload_artifacts(
    shared: &Shared,
    run_id: &str,
    lease_token: &str,
    dir: &Path,
) -> Result<Vec<String>, ()> {
    let mut failed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if current == dir && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                failed.push(format!("{}: {e}", current.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let Ok(relative) = path.strip_prefix(dir) else {
                continue;
            };
            let uploaded = match tokio::fs::read(&path).await {
                Ok(bytes) => {
                    let mut backoff = crate::backoff::Backoff::new();
                    loop {
                        let put = shared
                            .attempt(shared.client.put_artifact(
                                run_id,
                                relative,
                                bytes.clone(),
                                lease_token,
                            ))
                            .await;
                        match put {
                            Err(e) if e.status().is_none_or(|s| s >= 500) => {
                                tracing::warn!(run = %run_id, error = %e, "uploading an artifact failed; retrying");
                                if !shared.retry_after(backoff.next_delay()).await {
                                    return Err(());
                                }
                            }
                            other => break other.map_err(|e| e.to_string()),
                        }
                    }
                }
                Err(e) => Err(format!("reading it failed: {e}")),
            };
            if let Err(e) = uploaded {
                tracing::warn!(run = %run_id, artifact = %relative.display(), error = %e, "uploading an artifact failed");
                failed.push(format!("{}: {e}", relative.display()));
            }
        }
    }
    Ok(failed)
}

/// Reports the end, retrying while the server is unreachable; a refusal (lease gone) is final.
async fn report_finish(shared: &Shared, run_id: &str, body: &FinishBody) {
    let path = format!("/api/v1/runs/{run_id}/finish");
    if let Err(e) = shared.post_retrying(&path, body).await {
        tracing::warn!(run = %run_id, error = %e, "the server did not take the result");
    }
}

/// Containers labelled with this runner's id were left by an earlier incarnation that died:
/// each is removed and its run reported lost (if its lease still holds; otherwise the server
/// has already marked it), except those of the runs in `adopted`. None stays unaccounted for.
pub async fn reconcile(engine: &DockerEngine, shared: &Shared, adopted: &[String]) {
    let containers = match engine.list_managed().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "listing containers left by an earlier run of this runner failed");
            return;
        }
    };
    for container in containers.into_iter().filter(|c| {
        c.labels.get(RUNNER_LABEL) == Some(&shared.runner_id)
            && !c
                .labels
                .get(labels::RUN_ID)
                .is_some_and(|run| adopted.contains(run))
    }) {
        let run_id = container
            .labels
            .get(labels::RUN_ID)
            .cloned()
            .unwrap_or_default();
        // A held (pool or persistent) container names its current run in its own record.
        let run_dir = container.labels.get(labels::RUN_DIR).cloned().or_else(|| {
            let dir = container.labels.get(labels::HELD_DIR)?;
            let info = berth_sandbox::held::HeldDir::open(dir.into()).read_info();
            info.current_run.map(|(_, run_dir)| run_dir)
        });
        if let Some(dir) = container.labels.get(labels::HELD_DIR) {
            let _ = std::fs::remove_dir_all(dir);
        }
        let lease = run_dir
            .as_ref()
            .and_then(|dir| std::fs::read(Path::new(dir).join("lease.json")).ok())
            .and_then(|bytes| serde_json::from_slice::<LeaseFile>(&bytes).ok());
        let removed = engine.remove(&container.id).await;
        tracing::warn!(container = %container.name, run = %run_id, removed = removed.is_ok(), "found a container left by an earlier run of this runner");
        // With the container gone, so are the run's processes: its record ends, and the check
        // for repositories it made, kept pending in its directory, is done now.
        if let (Ok(()), Some(dir)) = (&removed, run_dir) {
            let said = berth_sandbox::gc::mark_run_lost(
                dir.into(),
                &format!("runner `{}` restarted while the run was in progress; its container {} was removed", shared.runner_id, container.name),
            );
            tracing::info!(run = %run_id, "{said}");
        }
        if let Some(lease) = lease {
            let body = FinishBody {
                lease_token: lease.lease_token,
                state: "lost".into(),
                exit_code: None,
                reason: Some(format!("runner `{}` restarted while the run was in progress; its container {} was removed", shared.runner_id, container.name)),
                commit: None,
            };
            report_finish(shared, &lease.run_id, &body).await;
        }
    }
}
