//! Driving one run in a container: create, attach, start, stream, stop, collect, remove.
//!
//! Architecture Invariant: once `create_container` has returned, every path out of
//! [`execute_docker`] removes the container (or, with `--keep`, reports it kept), and every path
//! ends in a final state recorded in `run.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_core::event::{Event, Stream};
use berth_core::exit::{ExitStatus, RunState};
use berth_core::held::{held_key, PoolSpec};
use berth_core::mask::Masker;
use berth_core::plan::{self, PlanContext};
use berth_core::record::RunRecord;
use berth_core::spec::PullPolicy;
use berth_engine::{Engine, EngineError, ImageInfo, PullProgress};
use futures_util::stream::{BoxStream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::artifacts::{self, Collected};
use crate::clock::now_rfc3339;
use crate::output::{OutputPipe, Reporter};
use crate::rundir::{EventLog, RunDir};
use crate::stopping::{final_state, Action, Ended, Happened, Stopping, HELD_KILL_LIMIT};
use crate::SandboxError;

/// Interrupts delivered to a run, by name (`SIGINT`, `SIGTERM`). The first stops the command
/// gracefully; the second kills it at once.
pub type Interrupts = UnboundedReceiver<&'static str>;

/// How long the output may trail behind the container's exit before berth stops waiting.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// A run in progress: its directory, its record, and where its events go.
pub struct RunContext {
    pub run_dir: RunDir,
    pub record: RunRecord,
    events: EventLog,
    pub reporter: Arc<dyn Reporter>,
    pub masker: Masker,
    /// The writable trees whose git directories were guarded: checked for repositories the run
    /// made ([`crate::launch::check_planted_repositories`]) when the run ends, before its final
    /// record, so that a run recorded as ended has always been checked (a berth killed earlier
    /// leaves the check pending for whoever concludes the run).
    git_trees: Vec<crate::git_guard::GuardedTree>,
    /// Set when berth could not confirm that the run's processes are gone (a container that
    /// would neither stop nor go): nothing the sandbox can write is read or checked then, and
    /// the check stays pending for `berth gc`, which does it once it has removed the container.
    processes_unconfirmed: bool,
    /// A pending check (from an earlier berth) that cannot be read: said when the run ends.
    unreadable_pending_check: Option<String>,
}

impl RunContext {
    /// Creates the run's event log and writes the first record.
    pub fn create(
        run_dir: RunDir,
        record: RunRecord,
        reporter: Arc<dyn Reporter>,
        masker: Masker,
    ) -> Result<Self, SandboxError> {
        let events = EventLog::create(&run_dir, &record.id)?;
        run_dir.write_record(&record)?;
        Ok(Self {
            run_dir,
            record,
            events,
            reporter,
            masker,
            git_trees: Vec::new(),
            processes_unconfirmed: false,
            unreadable_pending_check: None,
        })
    }

    /// Continues a run whose directory and record exist (a run taken over by a restarted
    /// runner): events are appended to its event log.
    pub fn reopen(
        run_dir: RunDir,
        reporter: Arc<dyn Reporter>,
        masker: Masker,
    ) -> Result<Self, SandboxError> {
        let record = run_dir.read_record()?;
        let events = EventLog::create(&run_dir, &record.id)?;
        // The check its first berth kept pending is done when this one ends the run (one that
        // cannot be read is said, and left).
        let git_trees = crate::git_guard::load_pending(run_dir.path()).unwrap_or_default();
        let unreadable = crate::git_guard::unreadable_pending(run_dir.path());
        Ok(Self {
            run_dir,
            record,
            events,
            reporter,
            masker,
            git_trees,
            processes_unconfirmed: false,
            unreadable_pending_check: unreadable,
        })
    }

    /// Records and shows an event. Failing to write the event log is not worth losing the run
    /// over; it is reported as a warning on stderr by the caller's reporter instead.
    pub fn emit(&mut self, event: Event) {
        // Warnings quote engine errors and paths; mask them like reasons, to be safe.
        let event = match event {
            Event::Warning { message } => Event::Warning {
                message: self.masker.mask_str(&message),
            },
            other => other,
        };
        match self.events.append(event.clone()) {
            Ok(line) => self.reporter.event(&line),
            Err(e) => {
                let warning = Event::Warning {
                    message: format!("cannot write the event log: {e}"),
                };
                self.reporter.event(&berth_core::event::EventLine {
                    ts: now_rfc3339(),
                    run_id: self.record.id.clone(),
                    event: warning,
                });
                self.reporter.event(&berth_core::event::EventLine {
                    ts: now_rfc3339(),
                    run_id: self.record.id.clone(),
                    event,
                });
            }
        }
    }

    /// Has the run's end check `trees` for repositories the run made (see `git_trees`). Only
    /// ever called before the run's processes start; the check itself runs when they are gone.
    pub fn check_git_trees_when_finished(&mut self, trees: Vec<crate::git_guard::GuardedTree>) {
        self.git_trees = trees;
    }

    /// The run's container may still run a process of it: see `processes_unconfirmed`.
    pub(crate) fn processes_may_live(&mut self, container_name: &str) {
        if !self.processes_unconfirmed {
            self.processes_unconfirmed = true;
            self.emit(Event::Warning {
                message: format!("container {container_name} could not be confirmed stopped: nothing the run wrote is collected or checked now; `berth gc` does the check for repositories it made once it has removed the container"),
            });
        }
    }

    /// Whether every process of the run is known to be gone.
    pub(crate) fn processes_gone(&self) -> bool {
        !self.processes_unconfirmed
    }

    pub fn save(&mut self) {
        if let Err(e) = self.run_dir.write_record(&self.record) {
            self.emit(Event::Warning {
                message: format!("cannot write the run record: {e}"),
            });
        }
    }

    /// The stdout and stderr pipes of this run; stdout is read as the agent's output when the
    /// spec names an agent format.
    pub fn output_pipes(&self) -> Result<(OutputPipe, OutputPipe), SandboxError> {
        let mut stdout = OutputPipe::create(
            Stream::Stdout,
            self.masker.clone(),
            &self.run_dir.stdout_log(),
            self.reporter.clone(),
            &self.record.id,
        )?;
        let format = &self.record.spec.output_format;
        if format != "text" {
            let format: berth_agents::OutputFormat =
                format.parse().map_err(|_| SandboxError::Invalid(format!("unknown output format `{format}`: expected claude-stream-json, codex-jsonl or text")))?;
            stdout = stdout.parse_agent(format, &self.run_dir.events_path())?;
        }
        let stderr = OutputPipe::create(
            Stream::Stderr,
            self.masker.clone(),
            &self.run_dir.stderr_log(),
            self.reporter.clone(),
            &self.record.id,
        )?;
        Ok((stdout, stderr))
    }

    /// Ends the run: final state, reason (masked), record written, `finished` event.
    pub fn finish(&mut self, state: RunState, reason: Option<String>) -> ExitStatus {
        self.finish_with_hint(state, reason, None)
    }

    /// Ends the run in `error` because of `error`, with its hint for the user.
    pub fn fail(&mut self, context: &str, error: &SandboxError) -> ExitStatus {
        self.finish_with_hint(
            RunState::Error,
            Some(format!("{context}{error}")),
            error.hint(),
        )
    }

    /// [`RunContext::finish`] with a hint shown after an error.
    pub fn finish_with_hint(
        &mut self,
        state: RunState,
        reason: Option<String>,
        hint: Option<String>,
    ) -> ExitStatus {
        // Every path here comes after the run's processes are gone: the container removed, or
        // the held container's supervisor has swept them (or berth stopped the container).
        let trees = std::mem::take(&mut self.git_trees);
        if !trees.is_empty() && self.processes_gone() {
            crate::launch::check_planted_repositories(self, &trees);
        }
        if let Some(message) = self.unreadable_pending_check.take() {
            self.emit(Event::Warning { message });
        }
        if let Some(message) = low_disk_warning(self.run_dir.path()) {
            self.emit(Event::Warning { message });
        }
        let reason = reason.map(|r| self.masker.mask_str(&r));
        self.record.finish(state, reason, now_rfc3339());
        self.save();
        let record = &self.record;
        let event = Event::Finished {
            state: record.state,
            exit_code: record.exit_code,
            reason: record.reason.clone(),
            hint,
        };
        self.emit(event);
        ExitStatus::for_run(self.record.state, self.record.exit_code)
    }
}

/// Everything prepared for a Docker run.
pub struct DockerRun {
    /// The plan context minus what only the image can tell (entrypoint, home).
    pub plan_context: PlanContext,
    /// Secret names and values, for the shim's setup frame.
    pub secrets: Vec<(String, String)>,
    /// Bytes for the command's stdin (an agent's prompt), sent after the setup frame.
    pub stdin: Option<Vec<u8>>,
    /// Copy mode's upload (see `workspace`); `Mounted` for the other modes.
    pub workspace: crate::workspace::WorkspaceSetup,
    /// Where held containers keep their directories (`<state dir>/held`).
    pub held_root: PathBuf,
    /// The warm pool configured for this run's profile or image, if any.
    pub pool: Option<PoolSpec>,
    /// Brokered credentials and upstreams for the egress proxy (`--egress policy`).
    pub egress: crate::egress::EgressHost,
}

/// What a run's command runs in: a container of its own, or a held container whose supervisor
/// receives the run as `frame` on its stdin.
pub(crate) enum Target<'a> {
    Container(&'a str),
    Held {
        container: &'a str,
        frame: Vec<u8>,
        /// Set when the supervisor reports that processes of the run survived its sweep: the
        /// container must be stopped before anything of it is read.
        unclean: &'a std::sync::atomic::AtomicBool,
    },
}

/// Runs the prepared command in a container and returns berth's exit status.
pub async fn execute_docker<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    run: DockerRun,
    interrupts: &mut Interrupts,
) -> ExitStatus {
    let spec = ctx.record.spec.clone();

    // `--disk` needs the storage driver's quota: decided before anything is pulled or created.
    if spec.resources.disk_bytes.is_some() {
        if let Err((context, e)) = check_disk(engine).await {
            return ctx.fail(context, &e);
        }
    }

    // gVisor is asked for by name; a missing runtime is said now, never replaced by runc.
    if spec.isolation != berth_core::spec::Isolation::Runc {
        if let Err((context, e)) = check_isolation(engine, &spec).await {
            return ctx.fail(context, &e);
        }
    }

    // The shim is built for this host; on a remote engine's host of another architecture
    // every run would fail at exec.
    if run.plan_context.remote_engine {
        if let Err((context, e)) = check_shim_architecture(engine).await {
            return ctx.fail(context, &e);
        }
    }

    let image = match ensure_image(engine, &spec.image, spec.pull, ctx).await {
        Ok(image) => image,
        Err(e) => return ctx.fail("", &e),
    };
    ctx.record.image_id = Some(image.id.clone());

    let mut plan_context = run.plan_context.clone();
    plan_context.image_entrypoint = image.entrypoint.clone();
    plan_context.image_home = image.home();
    // A home the sandbox user cannot write gets a tmpfs of its own at the same place.
    let (uid, _) = berth_core::plan::sandbox_user(
        spec.user,
        plan_context.invoking_uid,
        plan_context.invoking_gid,
    );
    plan_context.home_owned = berth_core::plan::image_user_is(image.user.as_deref(), uid);
    plan_context.setup_frame = !run.secrets.is_empty() || run.stdin.is_some();

    // A missing network would only surface at start; say so before anything is created.
    if let berth_core::spec::NetworkMode::Named(network) = &spec.network {
        match engine.network_exists(network).await {
            Ok(true) => {}
            Ok(false) => {
                return ctx.fail(
                    "",
                    &SandboxError::Engine(EngineError::NoSuchNetwork(network.clone())),
                )
            }
            Err(e) => return ctx.fail("checking the network failed: ", &SandboxError::Engine(e)),
        }
    }
    // Interrupted while preparing: nothing to clean up yet.
    if let Ok(signal) = interrupts.try_recv() {
        return ctx.finish(
            RunState::Cancelled,
            Some(format!(
                "cancelled by {signal} before the container was created"
            )),
        );
    }
    // Held containers keep each run's FIFOs and `$BERTH_OUT` in directories of this host,
    // which an engine elsewhere cannot mount: refused here (the CLI refuses earlier).
    if spec.persistent.is_some() && plan_context.remote_engine {
        return ctx.fail("", &remote_persistent_refused());
    }
    if spec.persistent.is_some() && spec.workspace_mode.is_isolated() {
        return ctx.fail("", &isolated_persistent_refused(spec.workspace_mode));
    }
    // A held container's supervisor is protected from the runs by being of another user:
    // root's. Runs as root would share it.
    let runs_as_root = uid == 0;
    if spec.persistent.is_some() && runs_as_root {
        return ctx.fail("", &root_persistent_refused());
    }
    if let Some(persistent) = spec.persistent.clone() {
        let key = held_key(&spec, &plan_context, &image.id);
        return crate::held_run::execute_persistent(
            engine,
            ctx,
            &run,
            plan_context,
            key,
            persistent,
            interrupts,
        )
        .await;
    }
    if run.pool.is_some() && runs_as_root {
        ctx.emit(Event::Warning {
            message: "the warm pool is not used for a run as root (--user 0): its supervisor must be of another user than the runs; this run gets a container of its own".into(),
        });
    }
    match &run.pool {
        // A kept container is for inspection afterwards: it gets one of its own. On a remote
        // engine a run never takes from the pool (see `remote_persistent_refused`).
        Some(pool)
            if !spec.keep
                && !plan_context.remote_engine
                && !spec.workspace_mode.is_isolated()
                && !runs_as_root =>
        {
            let key = held_key(&spec, &plan_context, &image.id);
            crate::held_run::execute_pooled(engine, ctx, &run, plan_context, key, pool, interrupts)
                .await
        }
        _ => match execute_cold(engine, ctx, &run, plan_context, interrupts).await {
            Ok((state, reason)) => ctx.finish(state, reason),
            Err((context, e)) => ctx.fail(&context, &e),
        },
    }
}

/// Whether the engine can enforce `--disk`: its storage driver (and backing file system) must
/// have a quota (`berth_core::disk::quota_support`); the error names both and what would work.
pub async fn check_disk<E: Engine>(engine: &E) -> Result<(), (&'static str, SandboxError)> {
    let storage = engine.storage().await.map_err(|e| {
        (
            "asking the engine for its storage driver (for --disk) failed: ",
            SandboxError::Engine(e),
        )
    })?;
    berth_core::disk::quota_support(&storage).map_err(|m| {
        (
            "",
            SandboxError::Engine(EngineError::DiskQuotaUnsupported(m.to_string())),
        )
    })
}

/// Whether the engine offers the runtime `spec.isolation` needs on the run's network, with the
/// arguments berth relies on; the error carries the daemon.json lines and the reload command.
pub async fn check_isolation<E: Engine>(
    engine: &E,
    spec: &berth_core::spec::RunSpec,
) -> Result<(), (&'static str, SandboxError)> {
    let runtimes = engine.runtimes().await.map_err(|e| {
        (
            "asking the engine for its runtimes (for --isolation) failed: ",
            SandboxError::Engine(e),
        )
    })?;
    let network = plan::engine_network(spec);
    match berth_core::runtime::isolation_problem(&runtimes, spec.isolation, network) {
        None => Ok(()),
        Some(problem) => Err((
            "",
            SandboxError::WithHint {
                message: format!("--isolation {} cannot be had: {problem}", spec.isolation),
                hint: berth_core::runtime::gvisor_hint(),
            },
        )),
    }
}

/// Whether berth's shim, built for this host, can run on the engine's host.
pub async fn check_shim_architecture<E: Engine>(
    engine: &E,
) -> Result<(), (&'static str, SandboxError)> {
    let architecture = engine.architecture().await.map_err(|e| {
        (
            "asking the engine for its architecture failed: ",
            SandboxError::Engine(e),
        )
    })?;
    match berth_core::engine::shim_architecture_problem(std::env::consts::ARCH, &architecture) {
        None => Ok(()),
        Some((message, hint)) => Err(("", SandboxError::WithHint { message, hint })),
    }
}

/// Why a persistent container cannot be used on a remote engine, with what to do instead.
pub fn remote_persistent_refused() -> SandboxError {
    SandboxError::WithHint {
        message: "persistent containers are not supported on a remote engine: a held container keeps each run's output pipes and $BERTH_OUT in directories of this host".into(),
        hint: "drop --lifecycle persistent and --name to run in a container of its own on the remote engine, or drop --engine to keep a persistent container on the local engine".into(),
    }
}

/// Why a run as root cannot use a persistent container, with what to do instead.
pub fn root_persistent_refused() -> SandboxError {
    SandboxError::WithHint {
        message: "--user 0 (root) cannot run in a persistent container: its supervisor is kept out of the runs' reach by being root while they are not, and a run as root could stop it and read the next run's secrets".into(),
        hint: "drop --lifecycle persistent and --name to run as root in a container of its own, or run as an unprivileged user (--user 1000)".into(),
    }
}

/// Why copy and worktree modes cannot use a persistent container, with what to do instead.
pub fn isolated_persistent_refused(mode: berth_core::spec::WorkspaceMode) -> SandboxError {
    SandboxError::WithHint {
        message: format!("--workspace-mode {mode} cannot be combined with a persistent container: each run gets its own copy or worktree of the workspace, while a persistent container keeps the one it was made with"),
        hint: format!("drop --lifecycle persistent and --name to run in a container of its own with --workspace-mode {mode}, or use --workspace-mode rw with the persistent container"),
    }
}

/// A run in a container of its own: create, drive, collect, remove. Returns the final state
/// and reason, or why the container could not be created (to end the run with its hint).
///
/// On an `ssh://` engine with egress policy the proxy's sockets are forwarded to the engine's
/// host first, and the forward ends only once the container is gone.
pub(crate) async fn execute_cold<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    run: &DockerRun,
    mut plan_context: PlanContext,
    interrupts: &mut Interrupts,
) -> Result<(RunState, Option<String>), (String, SandboxError)> {
    let forward = crate::egress::forward_to_engine(engine, ctx, &mut plan_context)
        .await
        .map_err(|e| (String::new(), e))?;
    let outcome = execute_cold_container(engine, ctx, run, plan_context, interrupts).await;
    crate::egress::close_forward(ctx, forward).await;
    outcome
}

async fn execute_cold_container<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    run: &DockerRun,
    plan_context: PlanContext,
    interrupts: &mut Interrupts,
) -> Result<(RunState, Option<String>), (String, SandboxError)> {
    let spec = ctx.record.spec.clone();
    let container_plan = plan::plan_container(&spec, &plan_context);
    let id = match engine.create_container(&container_plan).await {
        Ok(id) => id,
        Err(e) => {
            return Err((
                "creating the container failed: ".to_string(),
                SandboxError::Engine(e),
            ))
        }
    };
    ctx.record.container_id = Some(id.clone());
    ctx.record.container_name = Some(container_plan.name.clone());
    ctx.save();
    ctx.emit(Event::ContainerCreated {
        container_id: id.clone(),
        container_name: container_plan.name.clone(),
    });

    let output = plan_context
        .io_host_path
        .as_ref()
        .map(|_| OutputFiles::Files);
    // Before the command starts: a remote engine gets berth's files through the archive API
    // (see `remote`), and copy mode uploads the workspace (see `workspace`). After the exit,
    // while the container still exists, copy mode downloads the changed tree.
    let prepared = match crate::remote::fill_berth_volume(engine, &id, &container_plan).await {
        Ok(()) => crate::workspace::before_start(engine, &id, ctx, &run.workspace)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let outcome = match prepared {
        Ok(()) => {
            let outcome = drive(
                engine,
                &Target::Container(&id),
                container_plan.memory_bytes,
                output,
                plan_context.egress_host_path.clone(),
                ctx,
                run,
                interrupts,
            )
            .await;
            crate::workspace::after_exit(engine, &id, ctx, &run.workspace).await;
            outcome
        }
        Err(reason) => (RunState::Error, Some(reason)),
    };
    // On a remote engine `/berth/out` is in the container's volume and comes back as an
    // artifact; locally it is the run's out directory on this host.
    // Nothing is read from the container while its command may still run: a run that ended
    // in an error (the wait was lost, say) may have left it running.
    if outcome.0 == RunState::Error && !stop_container(engine, &id).await {
        ctx.processes_may_live(&container_plan.name);
    }
    let artifacts = crate::remote::artifact_paths(&container_plan, &spec.artifacts);
    let out_dir = ctx.run_dir.out_dir();
    if ctx.processes_gone() {
        collect_artifacts(engine, &id, ctx, &artifacts, &out_dir).await;
    }
    release_container(engine, &id, &container_plan.name, spec.keep, ctx).await;
    Ok(outcome)
}

/// Kills a container that may still be running and waits (briefly) until it has stopped;
/// whether it is known not to run now (gone, or not running, as the engine lists it).
pub(crate) async fn stop_container<E: Engine>(engine: &E, id: &str) -> bool {
    if engine.kill(id, "SIGKILL").await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(10), engine.wait(id)).await;
    }
    !still_running(engine, id).await
}

/// Whether the engine lists the container as running; an engine that cannot say counts as yes.
pub(crate) async fn still_running<E: Engine>(engine: &E, id: &str) -> bool {
    match engine.list_managed().await {
        Ok(list) => list.iter().any(|c| c.id == id && c.state == "running"),
        Err(_) => true,
    }
}

/// Why `image`, not present on the engine, must not be pulled under `pull`, if it must not.
/// `berth/…` on Docker Hub is not berth's: berth's own images are built locally, never pulled.
pub fn not_pullable(image: &str, pull: PullPolicy) -> Option<SandboxError> {
    let why = if pull == PullPolicy::Never {
        "--pull never forbids pulling it"
    } else if image.starts_with("berth/")
        && berth_core::profile::image_build_command(image, env!("CARGO_PKG_VERSION")).is_some()
    {
        "berth's own images are built on this machine, never pulled"
    } else {
        return None;
    };
    Some(SandboxError::ImageUnavailable {
        image: image.to_string(),
        why: why.into(),
    })
}

/// Makes sure the image is present, pulling it as the policy says.
async fn ensure_image<E: Engine>(
    engine: &E,
    image: &str,
    pull: PullPolicy,
    ctx: &mut RunContext,
) -> Result<ImageInfo, SandboxError> {
    let present = match pull {
        PullPolicy::Always => None,
        _ => engine.inspect_image(image).await?,
    };
    if let Some(info) = present {
        return Ok(info);
    }
    if let Some(refusal) = not_pullable(image, pull) {
        return Err(refusal);
    }
    let reporter = ctx.reporter.clone();
    let mut progress = move |p: PullProgress| reporter.pull_progress(&p);
    match engine.pull_image(image, &mut progress).await {
        Ok(()) => {}
        Err(EngineError::PullFailed { message, .. }) => {
            return Err(SandboxError::ImageUnavailable {
                image: image.to_string(),
                why: format!("pulling it failed: {message}"),
            })
        }
        Err(e) => {
            return Err(SandboxError::ImageUnavailable {
                image: image.to_string(),
                why: format!("pulling it failed: {e}"),
            })
        }
    }
    ctx.emit(Event::ImagePulled {
        image: image.to_string(),
    });
    engine
        .inspect_image(image)
        .await?
        .ok_or_else(|| SandboxError::ImageUnavailable {
            image: image.to_string(),
            why: "it is still missing after the pull".into(),
        })
}

/// Attaches, starts, feeds the setup frame, streams output and waits, honouring the timeout and
/// interrupts. `output` says where the command's stdout and stderr are read on this host, when
/// the engine is local. Returns the final state and its reason.
///
/// With egress policy, the run's proxy serves the sockets in `egress_dir` from before the
/// command starts until it has ended; its summary goes into the record.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive<E: Engine>(
    engine: &E,
    target: &Target<'_>,
    memory_bytes: i64,
    output: Option<OutputFiles>,
    egress_dir: Option<PathBuf>,
    ctx: &mut RunContext,
    run: &DockerRun,
    interrupts: &mut Interrupts,
) -> (RunState, Option<String>) {
    let session = match (&egress_dir, ctx.record.spec.egress.mode) {
        (Some(dir), berth_core::egress::EgressMode::Policy) => {
            match crate::egress::start(ctx, dir, &run.egress) {
                Ok(session) => session,
                Err(e) => return (RunState::Error, Some(e.to_string())),
            }
        }
        (None, berth_core::egress::EgressMode::Policy) => {
            return (
                RunState::Error,
                Some("egress policy needs the proxy's socket directory on this host; a remote engine cannot mount it".into()),
            )
        }
        _ => None,
    };
    let outcome = drive_command(engine, target, memory_bytes, output, ctx, run, interrupts).await;
    if let Some(session) = session {
        let summary = session.summary();
        // Connections still open end with the proxy; their records arrive as it drops.
        drop(session);
        ctx.record.egress = Some(summary);
        ctx.save();
    }
    outcome
}

async fn drive_command<E: Engine>(
    engine: &E,
    target: &Target<'_>,
    memory_bytes: i64,
    output: Option<OutputFiles>,
    ctx: &mut RunContext,
    run: &DockerRun,
    interrupts: &mut Interrupts,
) -> (RunState, Option<String>) {
    let pipes = ctx.output_pipes();
    let (stdout_pipe, stderr_pipe) = match pipes {
        Ok(p) => p,
        Err(e) => return (RunState::Error, Some(e.to_string())),
    };
    let opened = output.as_ref().map(|o| o.open(ctx)).transpose();
    let fifos = match output {
        Some(OutputFiles::Fifos(out, err)) => Some((out, err)),
        _ => None,
    };
    let opened = match opened {
        Ok(f) => f,
        Err(e) => {
            return (
                RunState::Error,
                Some(format!("opening the output pipes failed: {e}")),
            )
        }
    };
    // A cancel that arrived while the image was pulled or the container created must stop the
    // command before it ever runs.
    let cancelled_early = |signal: &str| {
        (
            RunState::Cancelled,
            Some(format!("cancelled by {signal} before the command started")),
        )
    };
    let attached = match target {
        Target::Container(id) => match engine.attach(id).await {
            Ok(a) => a,
            Err(e) => {
                return (
                    RunState::Error,
                    Some(format!("attaching to the container failed: {e}")),
                )
            }
        },
        Target::Held { container, .. } => {
            if let Ok(signal) = interrupts.try_recv() {
                return cancelled_early(signal);
            }
            match engine.attach(container).await {
                Ok(a) => a,
                Err(e) => {
                    return (
                        RunState::Error,
                        Some(format!("attaching to the held container failed: {e}")),
                    )
                }
            }
        }
    };
    // A held container's attach stream carries its supervisor's reports, not the command's
    // output (which comes through the FIFOs).
    let (output, status) = match target {
        Target::Container(_) => (attached.output, None),
        Target::Held { .. } => (futures_util::stream::empty().boxed(), Some(attached.output)),
    };
    let (pump, exited_tx) = spawn_pump(output, opened, stdout_pipe, stderr_pipe);

    if let Target::Container(id) = target {
        if let Ok(signal) = interrupts.try_recv() {
            pump.abort();
            return cancelled_early(signal);
        }
        if let Err(e) = engine.start(id).await {
            pump.abort();
            return match e {
                EngineError::CommandNotFound(m) => {
                    ctx.record.exit_code = Some(127);
                    (RunState::Failed, Some(format!("command not found: {m}")))
                }
                EngineError::CannotInvoke(m) => {
                    ctx.record.exit_code = Some(126);
                    (
                        RunState::Failed,
                        Some(format!("command cannot be invoked: {m}")),
                    )
                }
                other => (
                    RunState::Error,
                    Some(format!("starting the container failed: {other}")),
                ),
            };
        }
    }
    ctx.record.started_at = Some(now_rfc3339());
    ctx.record.state = RunState::Running;
    ctx.save();
    ctx.emit(Event::Started);

    let mut input = attached.input;
    // The supervisor of a held container gets the whole run in one frame; its stdin stays open
    // for signals until the run ends.
    let mut control = None;
    match target {
        Target::Held { frame, .. } => {
            if let Err(e) = input.write_all(frame).await {
                let _ = exited_tx.send(());
                // The run is over: the supervisor keeps its stdin, berth lets go of it.
                drop(control);
                return (
                    RunState::Error,
                    Some(format!("handing the run to the held container failed: {e}")),
                );
            }
            control = Some(input);
        }
        Target::Container(_) => {
            // A command that exits before reading its stdin closes the pipe; not an error.
            if !run.secrets.is_empty() || run.stdin.is_some() {
                let _ = input
                    .write_all(&crate::shim::setup_frame(&run.secrets))
                    .await;
            }
            if let Some(stdin) = &run.stdin {
                // An agent's prompt read on stdin: after the frame, the command's own input.
                let _ = input.write_all(stdin).await;
            }
            let _ = input.shutdown().await;
        }
    }
    follow(
        engine,
        target,
        memory_bytes,
        ctx,
        Following {
            pump,
            exited_tx,
            status,
            control,
            fifos,
            running_for: Duration::ZERO,
        },
        interrupts,
    )
    .await
}

/// The output pump on a task of its own, so that a slow terminal never delays signal handling;
/// and the sender that tells it the command has exited.
fn spawn_pump(
    attach: BoxStream<'static, Result<berth_engine::OutputChunk, EngineError>>,
    sources: Option<crate::pump::Fifos>,
    mut stdout_pipe: OutputPipe,
    mut stderr_pipe: OutputPipe,
) -> (PumpTask, tokio::sync::oneshot::Sender<()>) {
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel();
    let pump = tokio::spawn(async move {
        let failure = crate::pump::pump(
            attach,
            sources,
            exited_rx,
            &mut stdout_pipe,
            &mut stderr_pipe,
        )
        .await;
        (
            failure.map(|e| e.to_string()),
            stdout_pipe.agent_outcome(),
            stdout_pipe.agent_session(),
        )
    });
    (pump, exited_tx)
}

/// The output task: why keeping the output failed (if it did), the agent's outcome and session.
type PumpTask = tokio::task::JoinHandle<(
    Option<String>,
    Option<berth_agents::AgentOutcome>,
    Option<String>,
)>;

/// Where a command's stdout and stderr are read on this host (a local engine).
pub(crate) enum OutputFiles {
    /// A held container's run: two FIFOs, removed once they have served.
    Fifos(PathBuf, PathBuf),
    /// A container of its own: the run directory's `io/stdout` and `io/stderr`, tailed.
    Files,
}

impl OutputFiles {
    fn open(&self, ctx: &RunContext) -> Result<crate::pump::Fifos, SandboxError> {
        match self {
            Self::Fifos(out, err) => crate::pump::Fifos::open(out, err)
                .map_err(|e| SandboxError::io(out.parent().unwrap_or(out), e)),
            Self::Files => ctx
                .run_dir
                .open_io_files()
                .map(|(out, err)| crate::pump::Fifos::files(out, err)),
        }
    }
}

/// Takes over a container of its own whose berth (or runner) died while its command ran: the
/// command's output is read again from the first byte of its files on this host (the reporter
/// is the one to skip what was already passed on), the command is followed under what is left
/// of its timeout and the interrupts, and the run ends as any other: exit code, artifacts,
/// container removed, final state. `ctx` is the run's existing directory and record.
pub async fn reattach<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    container_id: &str,
    interrupts: &mut Interrupts,
) -> ExitStatus {
    let spec = ctx.record.spec.clone();
    let name = ctx
        .record
        .container_name
        .clone()
        .unwrap_or_else(|| container_id.to_string());
    let sources = OutputFiles::Files.open(ctx);
    let pipes = ctx.output_pipes();
    let outcome = match (sources, pipes) {
        (Ok(sources), Ok((stdout_pipe, stderr_pipe))) => {
            ctx.emit(Event::Warning {
                message: format!(
                    "the runner restarted while the command ran; it reattached to container {name}"
                ),
            });
            let attach = futures_util::stream::empty().boxed();
            let (pump, exited_tx) = spawn_pump(attach, Some(sources), stdout_pipe, stderr_pipe);
            let following = Following {
                pump,
                exited_tx,
                status: None,
                control: None,
                fifos: None,
                running_for: running_for(&ctx.record),
            };
            let memory = i64::try_from(spec.resources.memory_bytes).unwrap_or(i64::MAX);
            let target = Target::Container(container_id);
            follow(engine, &target, memory, ctx, following, interrupts).await
        }
        (Err(e), _) => (
            RunState::Error,
            Some(format!("opening the command's output again failed: {e}")),
        ),
        (_, Err(e)) => (RunState::Error, Some(e.to_string())),
    };
    if outcome.0 == RunState::Error && !stop_container(engine, container_id).await {
        ctx.processes_may_live(&name);
    }
    // A local engine (the output files are on this host): `/berth/out` is the run's out
    // directory, collected from here.
    let out_dir = ctx.run_dir.out_dir();
    if ctx.processes_gone() {
        collect_artifacts(engine, container_id, ctx, &spec.artifacts, &out_dir).await;
    }
    release_container(engine, container_id, &name, spec.keep, ctx).await;
    ctx.finish(outcome.0, outcome.1)
}

/// Below this much free space where the run directory is, a run's end says so: the command's
/// output files are there, and a write that fails for want of space fails the command's
/// write (often its exit status 1) with nothing else to show for it.
const LOW_DISK_BYTES: u64 = 16 << 20;

/// A warning when the file system of `run_dir` is (nearly) full.
fn low_disk_warning(run_dir: &std::path::Path) -> Option<String> {
    let stat = rustix::fs::statvfs(run_dir).ok()?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    (free < LOW_DISK_BYTES).then(|| {
        format!(
            "the file system holding {} has {} free: the command's output is written there, and writes that found it full failed (a command's exit status 1 with its output cut short can be just that); free space and run it again",
            run_dir.display(),
            berth_core::units::format_bytes(free)
        )
    })
}

/// How long the run's command has run, from its record.
fn running_for(record: &RunRecord) -> Duration {
    use time::format_description::well_known::Rfc3339;
    let started = record
        .started_at
        .as_deref()
        .and_then(|t| time::OffsetDateTime::parse(t, &Rfc3339).ok());
    started.map_or(Duration::ZERO, |t| {
        Duration::try_from(time::OffsetDateTime::now_utc() - t).unwrap_or(Duration::ZERO)
    })
}

/// What [`follow`] watches: the running command's output task, its report stream (a held
/// container's) or control input, and how long it has run already.
struct Following {
    pump: PumpTask,
    exited_tx: tokio::sync::oneshot::Sender<()>,
    status: Option<BoxStream<'static, Result<berth_engine::OutputChunk, EngineError>>>,
    control: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    /// FIFOs to remove once they have served.
    fifos: Option<(PathBuf, PathBuf)>,
    /// Counted against the timeout: a run taken over by a restarted runner has used some.
    running_for: Duration,
}

/// Waits for a started command under the timeout and interrupts, lets its output drain and
/// decides the final state.
async fn follow<E: Engine>(
    engine: &E,
    target: &Target<'_>,
    memory_bytes: i64,
    ctx: &mut RunContext,
    following: Following,
    interrupts: &mut Interrupts,
) -> (RunState, Option<String>) {
    let spec = ctx.record.spec.clone();
    let Following {
        pump,
        exited_tx,
        status,
        mut control,
        fifos,
        running_for,
    } = following;
    let wait = wait_for(engine, target, status);
    tokio::pin!(wait);
    let held = matches!(target, Target::Held { .. });
    let mut stopping = Stopping::new(spec.timeout, spec.grace, running_for, held, Instant::now());
    let mut container_killed = false;
    let waited = loop {
        let happened = tokio::select! {
            result = &mut wait => break result,
            () = sleep_until(stopping.next_wake()) => Happened::Woke,
            Some(name) = interrupts.recv() => Happened::Interrupted(name),
        };
        for action in stopping.on(happened, Instant::now()) {
            match action {
                Action::Signal {
                    signal: name,
                    reason,
                } => {
                    signal(engine, target, &mut control, ctx, name, &reason).await;
                }
                Action::KillContainer => {
                    if let Target::Held { container, .. } = target {
                        ctx.emit(Event::Warning {
                            message: format!(
                                "the run did not end {}s after SIGKILL; killing its container",
                                HELD_KILL_LIMIT.as_secs()
                            ),
                        });
                        container_killed = engine.kill(container, "SIGKILL").await.is_ok();
                    }
                }
            }
        }
    };

    let _ = exited_tx.send(());
    let (output_failure, agent_outcome) = match tokio::time::timeout(OUTPUT_DRAIN_LIMIT, pump).await
    {
        Ok(Ok((failure, outcome, session))) => {
            ctx.record.agent_session = session;
            (failure, outcome)
        }
        Ok(Err(e)) => (Some(format!("the output task failed: {e}")), None),
        Err(_) => (
            Some(format!(
                "the output did not end within {}s of the container's exit",
                OUTPUT_DRAIN_LIMIT.as_secs()
            )),
            None,
        ),
    };
    ctx.record.finished_at = Some(now_rfc3339());
    let agent_error = agent_failure(agent_outcome);
    // The FIFOs have served; left in place they would block anyone who reads the run directory.
    // The directory itself stays while the container exists (the engine needs bind sources).
    if let Some((out, err)) = &fifos {
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
    }

    let reported = match waited {
        Ok(reported) => reported,
        // berth killed the container itself: the run ended by SIGKILL.
        Err(_) if container_killed => Some(137),
        Err(e) => {
            return (
                RunState::Error,
                Some(format!("lost track of the container: {e}")),
            )
        }
    };
    let exit = match exit_of(engine, target, reported).await {
        Ok(exit) => exit,
        Err(e) => {
            return (
                RunState::Error,
                Some(format!("reading the command's exit failed: {e}")),
            )
        }
    };
    ctx.record.exit_code = Some(exit.exit_code);
    ctx.record.oom_killed = exit.oom_killed;
    ctx.emit(Event::Exited {
        exit_code: exit.exit_code,
        oom_killed: exit.oom_killed,
    });

    if let Some(failure) = output_failure {
        return (RunState::Error, Some(failure));
    }
    let ended = Ended {
        exit_code: exit.exit_code,
        oom_killed: exit.oom_killed,
        agent_error,
        memory_bytes: u64::try_from(memory_bytes).unwrap_or(0),
    };
    final_state(stopping.stop().cloned(), ended)
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The reason to fail a run whose agent reported an error, if it did.
pub(crate) fn agent_failure(outcome: Option<berth_agents::AgentOutcome>) -> Option<String> {
    let outcome = outcome.filter(|o| o.is_error)?;
    let what = outcome
        .message
        .or(outcome.reason)
        .unwrap_or_else(|| "no details".into());
    Some(format!("the agent reported an error: {what}"))
}

async fn signal<E: Engine>(
    engine: &E,
    target: &Target<'_>,
    control: &mut Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    ctx: &mut RunContext,
    name: &str,
    reason: &str,
) {
    ctx.emit(Event::Signal {
        signal: name.to_string(),
        reason: reason.to_string(),
    });
    let sent = match (target, control.as_mut()) {
        (Target::Container(id), _) => engine.kill(id, name).await,
        // The container's init would signal the supervisor, not the run: the supervisor passes
        // it on to the run's process group.
        (Target::Held { .. }, Some(control)) => control
            .write_all(format!("signal {name}\n").as_bytes())
            .await
            .map_err(|e| EngineError::Connection(e.to_string())),
        (Target::Held { .. }, None) => Err(EngineError::Connection(
            "the held container's stdin is closed".into(),
        )),
    };
    if let Err(e) = sent {
        ctx.emit(Event::Warning {
            message: format!("sending {name} failed: {e}"),
        });
    }
}

/// Waits until the command ended: the container exits, or the held container's supervisor
/// reports the run's exit status (returned).
async fn wait_for<E: Engine>(
    engine: &E,
    target: &Target<'_>,
    status: Option<BoxStream<'static, Result<berth_engine::OutputChunk, EngineError>>>,
) -> Result<Option<i64>, EngineError> {
    match (target, status) {
        (Target::Container(id), _) => engine.wait(id).await.map(|_| None),
        (Target::Held { .. }, Some(mut status)) => {
            let mut line = Vec::new();
            while let Some(chunk) = status.next().await {
                for byte in chunk?.data.iter() {
                    if *byte != b'\n' {
                        line.push(*byte);
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line).into_owned();
                    line.clear();
                    if let Some(report) = text.strip_prefix("berth-shim exit ") {
                        // `CODE`, or `CODE unclean [N]` when processes survived the sweep.
                        let mut words = report.split_whitespace();
                        if let Some(code) = words.next().and_then(|c| c.parse().ok()) {
                            if words.next() == Some("unclean") {
                                if let Target::Held { unclean, .. } = target {
                                    unclean.store(true, std::sync::atomic::Ordering::SeqCst);
                                }
                            }
                            return Ok(Some(code));
                        }
                    }
                    if let Some(why) = text.strip_prefix("berth-shim refused: ") {
                        return Err(EngineError::Connection(format!(
                            "the held container refused the run: {why}"
                        )));
                    }
                }
            }
            Err(EngineError::Connection(
                "the held container stopped before the run ended".into(),
            ))
        }
        (Target::Held { .. }, None) => Err(EngineError::Connection(
            "no report stream from the held container".into(),
        )),
    }
}

/// How the command ended.
async fn exit_of<E: Engine>(
    engine: &E,
    target: &Target<'_>,
    reported: Option<i64>,
) -> Result<berth_engine::ExitInfo, EngineError> {
    match (target, reported) {
        (_, Some(exit_code)) => Ok(berth_engine::ExitInfo {
            exit_code,
            oom_killed: false,
            error: None,
        }),
        (Target::Container(id), None) | (Target::Held { container: id, .. }, None) => {
            engine.inspect_exit(id).await
        }
    }
}

pub(crate) async fn collect_artifacts<E: Engine>(
    engine: &E,
    id: &str,
    ctx: &mut RunContext,
    paths: &[String],
    out_dir: &std::path::Path,
) {
    let artifacts_dir = ctx.run_dir.artifacts_dir();
    let mut collected = Collected::default();
    for path in paths {
        if let Err(e) =
            artifacts::collect_from_container(engine, id, path, &artifacts_dir, &mut collected)
                .await
        {
            ctx.emit(Event::Warning {
                message: format!("collecting artifact {path} failed: {e}"),
            });
        }
    }
    if out_dir.exists() {
        if let Err(e) = artifacts::collect_out_dir(out_dir, &artifacts_dir, &mut collected) {
            ctx.emit(Event::Warning {
                message: format!("collecting $BERTH_OUT failed: {e}"),
            });
        }
    }
    // A secret the command wrote into its output is masked there like in its logs; a binary
    // file holding one is kept and flagged (masking would corrupt it).
    let masking = crate::artifact_mask::mask_artifact_tree(&artifacts_dir, &ctx.masker);
    for path in &masking.flagged_binary {
        ctx.emit(Event::Warning {
            message: format!(
                "artifact {path} holds a secret and is not text: kept unchanged, so the secret is in it in clear"
            ),
        });
    }
    for error in &masking.errors {
        ctx.emit(Event::Warning {
            message: format!("masking secrets in the artifacts failed: {error}"),
        });
    }
    ctx.record.artifacts_masked = masking.masked;
    ctx.record.artifacts_with_secrets = masking.flagged_binary;
    ctx.record.artifacts = collected.paths.clone();
    ctx.record.artifacts_unlisted = collected.unlisted;
    let left_out = collected.skipped.len() as u64 + collected.unlisted_skipped;
    ctx.record.artifacts_left_out = left_out;
    if collected.unlisted > 0 || collected.unlisted_skipped > 0 {
        ctx.emit(Event::Warning {
            message: format!(
                "the run's output has {} collected entries and {left_out} left out; the record lists the first {} of each, everything collected is under {}",
                collected.paths.len() as u64 + collected.unlisted,
                artifacts::LISTED_PATHS,
                artifacts_dir.display()
            ),
        });
    }
    ctx.emit(Event::ArtifactsCollected {
        paths: collected.paths,
        skipped: collected.skipped,
    });
}

pub(crate) async fn release_container<E: Engine>(
    engine: &E,
    id: &str,
    name: &str,
    keep: bool,
    ctx: &mut RunContext,
) {
    if keep {
        if still_running(engine, id).await {
            ctx.processes_may_live(name);
        }
        ctx.record.kept = true;
        if let Err(e) = ctx.run_dir.discard_io_files() {
            ctx.emit(Event::Warning {
                message: format!("emptying the raw output files failed: {e}"),
            });
        }
        ctx.emit(Event::ContainerKept {
            container_name: name.to_string(),
        });
        return;
    }
    // Removal is retried once: a daemon busy with the container's teardown can refuse briefly.
    let mut result = engine.remove(id).await;
    if result.is_err() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        result = engine.remove(id).await;
    }
    match result {
        Ok(()) => {
            ctx.emit(Event::ContainerRemoved {
                container_name: name.to_string(),
            });
            let _ = std::fs::remove_dir_all(ctx.run_dir.io_dir());
            if let Err(e) = artifacts::remove_out_dir(&ctx.run_dir.out_dir()) {
                ctx.emit(Event::Warning {
                    message: format!("removing the raw output directory failed: {e}"),
                });
            }
        }
        Err(e) => {
            ctx.emit(Event::Warning {
                message: format!(
                    "removing container {name} failed: {e}; `berth gc` will remove it"
                ),
            });
            if still_running(engine, id).await {
                ctx.processes_may_live(name);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The run's orchestration against a scripted engine: the call sequence, the final record
    //! and the exit status for every way a run can end.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use berth_core::event::EventLine;
    use berth_core::held::PersistentSpec;
    use berth_core::record::Execution;
    use berth_core::spec::{Fallback, NetworkMode, Resources, RunSpec, WorkspaceMode};
    use tokio::sync::mpsc::UnboundedSender;

    use super::*;
    use crate::fake_engine::{stderr, stdout, ExitWhen, FakeEngine, Script, CONTAINER_ID};
    use crate::rundir::StateDir;

    const SECRET: &str = "hunter2-s3cret";

    #[derive(Default)]
    struct Recording {
        events: Mutex<Vec<Event>>,
        output: Mutex<Vec<u8>>,
    }

    impl Reporter for Recording {
        fn event(&self, event: &EventLine) {
            self.events.lock().unwrap().push(event.event.clone());
        }
        fn output(&self, _stream: Stream, data: &[u8]) {
            self.output.lock().unwrap().extend_from_slice(data);
        }
    }

    /// A plain spec for unit tests across the crate.
    pub(crate) fn spec() -> RunSpec {
        RunSpec {
            image: "img".into(),
            command: vec!["make".into(), "test".into()],
            pull: PullPolicy::Missing,
            workspace: "/w".into(),
            workspace_mode: WorkspaceMode::Rw,
            include_dirty: false,
            start_commit: None,
            copy_limit_bytes: berth_core::spec::DEFAULT_COPY_LIMIT,
            mounts: vec![],
            env: vec![],
            secrets: vec![],
            resources: Resources::default(),
            timeout: Duration::ZERO,
            grace: Duration::from_secs(10),
            network: NetworkMode::None,
            egress: Default::default(),
            isolation: Default::default(),
            read_only: false,
            user: None,
            publish: vec![],
            artifacts: vec![],
            keep: false,
            fallback: Fallback::None,
            workdir: None,
            output_format: "text".into(),
            profile: None,
            persistent: None,
        }
    }

    /// A run directory, a run context and an interrupt channel around one run.
    struct Harness {
        tmp: tempfile::TempDir,
        ctx: RunContext,
        reporter: Arc<Recording>,
        interrupts: Interrupts,
        interrupt: UnboundedSender<&'static str>,
        secrets: Vec<(String, String)>,
    }

    fn harness(spec: RunSpec) -> Harness {
        harness_with_secrets(spec, &[])
    }

    fn harness_with_secrets(spec: RunSpec, secrets: &[(&str, &str)]) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = StateDir::new(tmp.path().join("state"))
            .create_run("r1")
            .unwrap();
        let reporter = Arc::new(Recording::default());
        let masker = Masker::new(&secrets.iter().map(|(_, v)| *v).collect::<Vec<_>>());
        let record = RunRecord::new("r1".into(), spec, Execution::Docker, now_rfc3339());
        let ctx = RunContext::create(run_dir, record, reporter.clone(), masker).unwrap();
        let (interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
        Harness {
            tmp,
            ctx,
            reporter,
            interrupts,
            interrupt,
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    impl Harness {
        async fn run(&mut self, engine: &FakeEngine) -> ExitStatus {
            self.run_on(engine, false, None).await
        }

        /// A run on a local or remote engine, with the warm pool `pool` configured.
        async fn run_on(
            &mut self,
            engine: &FakeEngine,
            remote_engine: bool,
            pool: Option<PoolSpec>,
        ) -> ExitStatus {
            let run = DockerRun {
                plan_context: PlanContext {
                    run_id: self.ctx.record.id.clone(),
                    invoking_uid: 1000,
                    invoking_gid: 1000,
                    image_entrypoint: vec![],
                    image_home: None,
                    home_owned: true,
                    workspace: self.tmp.path().to_path_buf(),
                    mounts: vec![],
                    mount_identities: Vec::new(),
                    shim_host_path: "/cache/berth-shim".into(),
                    out_host_path: self.ctx.run_dir.out_dir(),
                    io_host_path: None,
                    setup_frame: true,
                    state_dir_in_workspace: Some("state".into()),
                    owner_labels: BTreeMap::new(),
                    egress_host_path: None,
                    egress_engine_path: None,
                    remote_engine,
                },
                secrets: self.secrets.clone(),
                stdin: None,
                workspace: Default::default(),
                held_root: self.tmp.path().join("state/held"),
                pool,
                egress: Default::default(),
            };
            execute_docker(engine, &mut self.ctx, run, &mut self.interrupts).await
        }

        /// The record as written to `run.json`; it must match the one in memory.
        fn record(&self) -> RunRecord {
            let on_disk = self.ctx.run_dir.read_record().unwrap();
            assert_eq!(on_disk, self.ctx.record, "run.json is up to date");
            on_disk
        }

        fn events(&self) -> Vec<Event> {
            self.reporter.events.lock().unwrap().clone()
        }

        /// The events' tags (`started`, `exited`, ...), in order.
        fn event_names(&self) -> Vec<String> {
            self.events()
                .iter()
                .map(|e| {
                    serde_json::to_value(e).unwrap()["event"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        }

        fn warnings(&self) -> Vec<String> {
            self.events()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Warning { message } => Some(message),
                    _ => None,
                })
                .collect()
        }

        fn finished_hint(&self) -> Option<String> {
            self.events().into_iter().find_map(|e| match e {
                Event::Finished { hint, .. } => hint,
                _ => None,
            })
        }

        fn reason(&self) -> String {
            self.record().reason.unwrap_or_default()
        }
    }

    fn calls(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test]
    async fn disk_is_refused_before_anything_when_the_driver_has_no_quota() {
        let mut s = spec();
        s.resources.disk_bytes = Some(1 << 30);
        let mut h = harness(s.clone());
        let fake = FakeEngine::new(Script::default());
        assert_eq!(h.run(&fake).await, ExitStatus::Error);
        assert_eq!(fake.calls(), calls(&["storage"]));
        let reason = h.reason();
        assert!(
            reason.contains("overlay2 on extfs") && reason.contains("btrfs"),
            "{reason}"
        );
        assert!(h.finished_hint().unwrap().contains("--disk"));

        let mut h = harness(s);
        let fake = FakeEngine::new(Script {
            storage: ("btrfs", Some("btrfs")),
            ..Script::default()
        });
        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert_eq!(fake.plan().unwrap().disk_bytes, Some(1 << 30));
        // Without --disk the engine is not asked.
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script::default());
        h.run(&fake).await;
        assert!(!fake.called("storage"));
    }

    #[tokio::test]
    async fn gvisor_is_refused_without_its_runtime_and_never_falls_back_to_runc() {
        let mut s = spec();
        s.isolation = berth_core::spec::Isolation::Gvisor;
        let mut h = harness(s.clone());
        let fake = FakeEngine::new(Script::default());
        assert_eq!(h.run(&fake).await, ExitStatus::Error);
        // Nothing pulled or created.
        assert_eq!(fake.calls(), calls(&["runtimes"]));
        let reason = h.reason();
        assert!(
            reason.contains("--isolation gvisor") && reason.contains("no `runsc` runtime"),
            "{reason}"
        );
        let hint = h.finished_hint().unwrap();
        assert!(
            hint.contains("\"runsc-net\"") && hint.contains("kill -HUP"),
            "{hint}"
        );

        let args = vec!["--network=none", "--host-fifo=open", "--host-uds=open"];
        let mut h = harness(s);
        let fake = FakeEngine::new(Script {
            runtimes: vec![("runc", Vec::new()), ("runsc", args)],
            ..Script::default()
        });
        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert_eq!(fake.plan().unwrap().runtime.as_deref(), Some("runsc"));
        // Without --isolation the engine is not asked.
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script::default());
        h.run(&fake).await;
        assert!(!fake.called("runtimes"));
        assert_eq!(fake.plan().unwrap().runtime, None);
    }

    #[tokio::test]
    async fn success_runs_the_whole_life_and_keeps_the_output() {
        let mut h = harness(spec());
        // Something the command left in $BERTH_OUT.
        let out = h.ctx.run_dir.out_dir();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("report.txt"), "ok").unwrap();
        let fake = FakeEngine::new(Script {
            output: vec![stdout("hello "), stdout("world\n"), stderr("warn\n")],
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::Success);
        assert_eq!(
            fake.calls(),
            calls(&[
                "inspect_image",
                "create",
                "attach",
                "start",
                "wait",
                "inspect_exit",
                "remove"
            ])
        );
        let record = h.record();
        assert_eq!(record.state, RunState::Succeeded);
        assert_eq!(record.exit_code, Some(0));
        assert_eq!(record.reason, None);
        assert_eq!(record.container_id.as_deref(), Some(CONTAINER_ID));
        assert_eq!(record.container_name.as_deref(), Some("berth-r1"));
        assert_eq!(record.image_id.as_deref(), Some("sha256:img"));
        assert!(record.started_at.is_some() && record.finished_at.is_some());
        assert!(!record.kept && !record.oom_killed);
        assert_eq!(record.artifacts, ["berth/out/report.txt"]);
        assert_eq!(
            h.event_names(),
            [
                "container_created",
                "started",
                "exited",
                "artifacts_collected",
                "container_removed",
                "finished"
            ]
        );
        assert_eq!(
            std::fs::read(h.ctx.run_dir.stdout_log()).unwrap(),
            b"hello world\n"
        );
        assert_eq!(
            std::fs::read(h.ctx.run_dir.stderr_log()).unwrap(),
            b"warn\n"
        );
        assert_eq!(*h.reporter.output.lock().unwrap(), b"hello world\nwarn\n");
        assert!(
            h.ctx
                .run_dir
                .artifacts_dir()
                .join("berth/out/report.txt")
                .is_file(),
            "$BERTH_OUT was collected"
        );
        assert!(
            !out.exists(),
            "the raw output directory goes with the container"
        );
        // Nothing to hand over: no frame, the shim is told so and the command starts at once.
        let stdin = fake.stdin();
        assert_eq!(stdin.data, b"");
        assert!(stdin.closed, "stdin is closed");
        let plan = fake.plan().unwrap();
        assert_eq!(&plan.entrypoint[..2], ["/berth/shim", "--no-setup"]);
        assert_eq!(plan.entrypoint.last().map(String::as_str), Some("--"));
    }

    #[tokio::test]
    async fn remote_engine_fills_the_berth_volume_before_start_and_collects_berth_out() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script::default());
        let pool = PoolSpec {
            name: "busybox".into(),
            size: 2,
            idle_ttl: secs(60),
        };

        // The configured pool is not used there: the run gets a container of its own.
        h.run_on(&fake, true, Some(pool)).await;

        let calls = fake.calls();
        let at = |c: &str| calls.iter().position(|x| x == c);
        assert!(
            at("create") < at("upload /berth") && at("upload /berth") < at("start"),
            "{calls:?}"
        );
        assert!(at("download /berth/out").is_some(), "{calls:?}");
        assert!(
            at("list_managed").is_none() && at("exec").is_none(),
            "{calls:?}"
        );
        assert_eq!(fake.plan().unwrap().berth_volume.unwrap().target, "/berth");
    }

    #[tokio::test]
    async fn remote_engine_of_another_architecture_is_refused_before_anything() {
        let other = if std::env::consts::ARCH == "aarch64" {
            "x86_64"
        } else {
            "aarch64"
        };
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            architecture: other,
            ..Script::default()
        });
        assert_eq!(h.run_on(&fake, true, None).await, ExitStatus::Error);
        // Nothing pulled or created.
        assert_eq!(fake.calls(), calls(&["architecture"]));
        let reason = h.reason();
        assert!(
            reason.contains(other) && reason.contains(std::env::consts::ARCH),
            "{reason}"
        );
        assert!(h.finished_hint().unwrap().contains("--engine"));

        // The same architecture under Docker's name for it passes.
        let mut h = harness(spec());
        let same = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            arch => arch,
        };
        let fake = FakeEngine::new(Script {
            architecture: same,
            ..Script::default()
        });
        assert_eq!(h.run_on(&fake, true, None).await, ExitStatus::Success);
        // A local engine is not asked: it runs on this host.
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            architecture: other,
            ..Script::default()
        });
        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert!(!fake.called("architecture"));
    }

    #[tokio::test]
    async fn remote_engine_refuses_a_persistent_container_before_create() {
        let mut s = spec();
        s.persistent = Some(PersistentSpec {
            agent: "default".into(),
            name: "default".into(),
            max_containers: 3,
            idle_ttl: secs(60),
        });
        let mut h = harness(s);
        let fake = FakeEngine::new(Script::default());

        let status = h.run_on(&fake, true, None).await;

        assert_ne!(status, ExitStatus::Success);
        assert_eq!(fake.calls(), calls(&["architecture", "inspect_image"]));
        assert_eq!(h.record().state, RunState::Error);
        assert!(
            h.reason()
                .contains("persistent containers are not supported on a remote engine"),
            "{}",
            h.reason()
        );
        assert!(h.finished_hint().unwrap().contains("drop --engine"));
    }

    #[tokio::test]
    async fn non_zero_exit_fails_with_the_commands_status() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            exit_code: 3,
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::External(3));
        let record = h.record();
        assert_eq!(record.state, RunState::Failed);
        assert_eq!(record.exit_code, Some(3));
        assert_eq!(record.reason.as_deref(), Some("exited with status 3"));
        assert_eq!(fake.calls().last().map(String::as_str), Some("remove"));
        assert!(h.event_names().contains(&"container_removed".to_string()));
    }

    #[tokio::test]
    async fn command_not_found_at_start_is_127_and_still_removed() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            start_error: Some(|| {
                EngineError::CommandNotFound("exec: \"mak\": executable file not found".into())
            }),
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::External(127));
        assert_eq!(
            fake.calls(),
            calls(&["inspect_image", "create", "attach", "start", "remove"])
        );
        let record = h.record();
        assert_eq!(record.state, RunState::Failed);
        assert_eq!(record.exit_code, Some(127));
        assert!(
            h.reason().starts_with("command not found: "),
            "{}",
            h.reason()
        );
        assert!(!h.event_names().contains(&"started".to_string()));
        assert!(h.event_names().contains(&"container_removed".to_string()));
    }

    #[tokio::test]
    async fn command_that_cannot_be_invoked_is_126_and_its_reason_is_masked() {
        let mut h = harness_with_secrets(spec(), &[("TOKEN", SECRET)]);
        let fake = FakeEngine::new(Script {
            start_error: Some(|| {
                EngineError::CannotInvoke("exec: \"./hunter2-s3cret\": permission denied".into())
            }),
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::External(126));
        let record = h.record();
        assert_eq!(record.state, RunState::Failed);
        assert_eq!(record.exit_code, Some(126));
        assert_eq!(
            h.reason(),
            "command cannot be invoked: exec: \"./***\": permission denied"
        );
        assert!(fake.called("remove"));
    }

    #[tokio::test]
    async fn other_start_failure_is_an_error_and_still_removed() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            start_error: Some(|| EngineError::Refused {
                status: 500,
                message: "failed to set up the container's network".into(),
            }),
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::Error);
        assert_eq!(status.code(), 125);
        let record = h.record();
        assert_eq!(record.state, RunState::Error);
        assert_eq!(record.exit_code, None);
        assert!(
            h.reason().starts_with("starting the container failed: ")
                && h.reason().contains("network"),
            "{}",
            h.reason()
        );
        assert_eq!(fake.calls().last().map(String::as_str), Some("remove"));
    }

    #[tokio::test]
    async fn create_failure_is_an_error_with_nothing_to_remove() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            create_error: Some(|| EngineError::Refused {
                status: 409,
                message: "the container name \"/berth-r1\" is already in use".into(),
            }),
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::Error);
        assert_eq!(fake.calls(), calls(&["inspect_image", "create"]));
        let record = h.record();
        assert_eq!(record.state, RunState::Error);
        assert_eq!(record.container_id, None);
        assert!(
            h.reason().starts_with("creating the container failed: ")
                && h.reason().contains("already in use"),
            "{}",
            h.reason()
        );
        assert_eq!(h.event_names(), ["finished"]);
    }

    #[tokio::test]
    async fn absent_image_with_pull_never_is_an_error_before_create() {
        let mut s = spec();
        s.pull = PullPolicy::Never;
        let mut h = harness(s);
        let fake = FakeEngine::new(Script {
            image_present: false,
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::Error);
        assert_eq!(fake.calls(), calls(&["inspect_image"]));
        assert_eq!(h.record().state, RunState::Error);
        assert_eq!(
            h.reason(),
            "image `img` is not present locally and --pull never forbids pulling it"
        );
        assert!(h.finished_hint().unwrap().contains("docker build -t img"));
    }

    #[tokio::test]
    async fn absent_image_whose_pull_fails_is_an_error_before_create() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            image_present: false,
            pull_error: Some(|| EngineError::PullFailed {
                image: "img".into(),
                message: "pull access denied".into(),
            }),
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::Error);
        assert_eq!(fake.calls(), calls(&["inspect_image", "pull_image"]));
        assert_eq!(h.record().state, RunState::Error);
        let reason = h.reason();
        assert!(reason.contains("not present locally"), "{reason}");
        assert!(
            reason.contains("pulling it failed: pull access denied"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn absent_image_is_pulled_then_run() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            image_present: false,
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::Success);
        assert_eq!(
            fake.calls()[..4],
            calls(&["inspect_image", "pull_image", "inspect_image", "create"])
        );
        assert_eq!(h.event_names()[0], "image_pulled");
    }

    #[tokio::test]
    async fn pull_always_pulls_without_looking_first() {
        let mut s = spec();
        s.pull = PullPolicy::Always;
        let mut h = harness(s);
        let fake = FakeEngine::new(Script::default());

        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert_eq!(
            fake.calls()[..3],
            calls(&["pull_image", "inspect_image", "create"])
        );
    }

    #[tokio::test]
    async fn missing_named_network_is_an_error_before_create() {
        let mut s = spec();
        s.network = NetworkMode::Named("proj-net".into());
        let mut h = harness(s.clone());
        let fake = FakeEngine::new(Script::default());

        assert_eq!(h.run(&fake).await, ExitStatus::Error);
        assert_eq!(fake.calls(), calls(&["inspect_image", "network_exists"]));
        assert_eq!(
            h.reason(),
            "network `proj-net` does not exist on the engine"
        );
        assert!(h
            .finished_hint()
            .unwrap()
            .contains("docker network create proj-net"));

        let mut h = harness(s);
        let fake = FakeEngine::new(Script {
            networks: vec!["proj-net"],
            ..Script::default()
        });
        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert_eq!(fake.plan().unwrap().network, "proj-net");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_sends_sigterm_then_sigkill_after_the_grace() {
        let mut s = spec();
        s.timeout = secs(5);
        s.grace = secs(2);
        let mut h = harness(s);
        // The command ignores SIGTERM; only SIGKILL ends it.
        let fake = FakeEngine::new(Script {
            exit_when: ExitWhen::OnSignal("SIGKILL"),
            exit_code: 137,
            output: vec![stdout("working\n")],
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::External(124));
        assert_eq!(
            fake.kills(),
            [
                ("SIGTERM".to_string(), secs(5)),
                ("SIGKILL".to_string(), secs(7))
            ]
        );
        assert_eq!(
            fake.calls(),
            calls(&[
                "inspect_image",
                "create",
                "attach",
                "start",
                "wait",
                "kill SIGTERM",
                "kill SIGKILL",
                "inspect_exit",
                "remove"
            ])
        );
        let record = h.record();
        assert_eq!(record.state, RunState::TimedOut);
        assert_eq!(record.exit_code, Some(137));
        assert_eq!(record.reason.as_deref(), Some("timed out after 5s"));
        let signals: Vec<(String, String)> = h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Signal { signal, reason } => Some((signal, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(
            signals,
            [
                ("SIGTERM".to_string(), "timed out after 5s".to_string()),
                (
                    "SIGKILL".to_string(),
                    "still running 2s after SIGTERM".to_string()
                )
            ]
        );
        assert_eq!(
            std::fs::read(h.ctx.run_dir.stdout_log()).unwrap(),
            b"working\n",
            "output from before the kill is kept"
        );
        assert!(h.event_names().contains(&"container_removed".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_that_ends_before_the_timeout_is_not_signalled() {
        let mut s = spec();
        s.timeout = secs(5);
        let mut h = harness(s);
        let fake = FakeEngine::new(Script::default());

        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert!(fake.kills().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn interrupt_stops_the_command_gracefully() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            exit_when: ExitWhen::OnSignal("SIGTERM"),
            exit_code: 143,
            ..Script::default()
        });
        let interrupt = h.interrupt.clone();

        let (status, ()) = tokio::join!(h.run(&fake), async {
            fake.started.notified().await;
            interrupt.send("SIGINT").unwrap();
        });

        assert_eq!(status, ExitStatus::External(130));
        assert_eq!(fake.kills(), [("SIGTERM".to_string(), secs(0))]);
        let record = h.record();
        assert_eq!(record.state, RunState::Cancelled);
        assert_eq!(record.exit_code, Some(143));
        assert_eq!(record.reason.as_deref(), Some("cancelled by SIGINT"));
        assert_eq!(fake.calls().last().map(String::as_str), Some("remove"));
    }

    #[tokio::test(start_paused = true)]
    async fn second_interrupt_kills_at_once() {
        let mut h = harness(spec());
        // The command ignores SIGTERM; the grace period (10s) would otherwise run out.
        let fake = FakeEngine::new(Script {
            exit_when: ExitWhen::OnSignal("SIGKILL"),
            exit_code: 137,
            ..Script::default()
        });
        let interrupt = h.interrupt.clone();

        let (status, ()) = tokio::join!(h.run(&fake), async {
            fake.started.notified().await;
            interrupt.send("SIGINT").unwrap();
            tokio::time::sleep(secs(1)).await;
            interrupt.send("SIGINT").unwrap();
        });

        assert_eq!(status, ExitStatus::External(130));
        assert_eq!(
            fake.kills(),
            [
                ("SIGTERM".to_string(), secs(0)),
                ("SIGKILL".to_string(), secs(1))
            ]
        );
        assert_eq!(h.record().state, RunState::Cancelled);
        assert_eq!(h.reason(), "cancelled by SIGINT");
        assert!(h.events().contains(&Event::Signal {
            signal: "SIGKILL".into(),
            reason: "second interrupt (SIGINT) skips the grace period".into(),
        }));
        assert!(fake.called("remove"));
    }

    #[tokio::test]
    async fn interrupt_before_create_creates_nothing() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script::default());
        h.interrupt.send("SIGTERM").unwrap();

        assert_eq!(h.run(&fake).await, ExitStatus::External(130));
        assert_eq!(fake.calls(), calls(&["inspect_image"]));
        assert_eq!(h.record().state, RunState::Cancelled);
        assert_eq!(
            h.reason(),
            "cancelled by SIGTERM before the container was created"
        );
    }

    #[tokio::test]
    async fn oom_kill_fails_and_says_so() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            exit_code: 137,
            oom_killed: true,
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::External(137));
        let record = h.record();
        assert_eq!(record.state, RunState::Failed);
        assert!(record.oom_killed);
        assert!(h.reason().contains("OOM"), "{}", h.reason());
        assert!(h.events().contains(&Event::Exited {
            exit_code: 137,
            oom_killed: true
        }));
    }

    #[tokio::test]
    async fn keep_leaves_the_container_and_its_output_directory() {
        let mut s = spec();
        s.keep = true;
        let mut h = harness(s);
        let out = h.ctx.run_dir.out_dir();
        std::fs::create_dir(&out).unwrap();
        let fake = FakeEngine::new(Script::default());

        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert!(!fake.called("remove"));
        assert!(h.record().kept);
        assert!(h.events().contains(&Event::ContainerKept {
            container_name: "berth-r1".into()
        }));
        assert!(!h.event_names().contains(&"container_removed".to_string()));
        assert!(out.exists(), "a kept container still needs its bind source");
    }

    #[tokio::test(start_paused = true)]
    async fn removal_is_retried_once() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            remove_failures: 1,
            ..Script::default()
        });

        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert_eq!(fake.calls().iter().filter(|c| *c == "remove").count(), 2);
        assert!(h.warnings().is_empty(), "{:?}", h.warnings());
        assert!(h.event_names().contains(&"container_removed".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn removal_failing_twice_warns_and_keeps_the_runs_state() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            remove_failures: 2,
            ..Script::default()
        });

        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert_eq!(fake.calls().iter().filter(|c| *c == "remove").count(), 2);
        let warnings = h.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("removing container berth-r1 failed")
                && warnings[0].contains("`berth gc`"),
            "{warnings:?}"
        );
        assert!(!h.event_names().contains(&"container_removed".to_string()));
        let record = h.record();
        assert_eq!(record.state, RunState::Succeeded);
        assert_eq!(record.exit_code, Some(0));
        assert!(!record.kept);
    }

    #[tokio::test]
    async fn secrets_reach_the_shim_on_stdin_and_nowhere_else() {
        let mut s = spec();
        s.secrets = vec!["TOKEN".into()];
        let mut h = harness_with_secrets(s, &[("TOKEN", SECRET)]);
        let fake = FakeEngine::new(Script {
            // The secret split across two chunks, as a stream may deliver it.
            output: vec![stdout("token=hunter2"), stdout("-s3cret done\n")],
            ..Script::default()
        });

        assert_eq!(h.run(&fake).await, ExitStatus::Success);

        let stdin = fake.stdin();
        let frame = String::from_utf8(stdin.data).unwrap();
        assert!(frame.starts_with("berth-shim-v1\n"), "{frame:?}");
        assert!(
            frame.contains(&format!("secret TOKEN {}\n{SECRET}\n", SECRET.len())),
            "{frame:?}"
        );
        assert!(frame.ends_with("end\n"), "{frame:?}");
        assert!(stdin.closed);

        assert_eq!(
            std::fs::read_to_string(h.ctx.run_dir.stdout_log()).unwrap(),
            "token=*** done\n"
        );
        assert_eq!(*h.reporter.output.lock().unwrap(), b"token=*** done\n");
        let record_json = std::fs::read_to_string(h.ctx.run_dir.record_path()).unwrap();
        assert!(record_json.contains("TOKEN"), "the secret's name is kept");
        assert!(!record_json.contains(SECRET));
        let events = std::fs::read_to_string(h.ctx.run_dir.events_path()).unwrap();
        assert!(!events.contains(SECRET));
        let plan = format!("{:?}", fake.plan().unwrap());
        assert!(
            !plan.contains(SECRET),
            "the container's config never holds a secret"
        );
    }

    #[tokio::test]
    async fn losing_the_wait_is_an_error_and_still_removes() {
        let mut h = harness(spec());
        let fake = FakeEngine::new(Script {
            wait_error: Some(|| EngineError::Connection("connection reset by peer".into())),
            ..Script::default()
        });

        let status = h.run(&fake).await;

        assert_eq!(status, ExitStatus::Error);
        let record = h.record();
        assert_eq!(record.state, RunState::Error);
        assert_eq!(record.exit_code, None);
        assert!(
            h.reason().starts_with("lost track of the container: ")
                && h.reason().contains("connection reset by peer"),
            "{}",
            h.reason()
        );
        assert!(!fake.called("inspect_exit"));
        assert_eq!(fake.calls().last().map(String::as_str), Some("remove"));
    }

    /// A tree with a repository, guarded as before a run, and its check handed to the run.
    fn guarded_tree(h: &mut Harness) -> PathBuf {
        let tree = h.tmp.path().join("tree");
        std::fs::create_dir_all(tree.join(".git")).unwrap();
        let guards =
            crate::git_guard::guard(&tree, "/workspace", crate::git_guard::Top::AsItIs).unwrap();
        let trees = vec![guards.tree.unwrap()];
        crate::git_guard::save_pending(h.ctx.run_dir.path(), &trees).unwrap();
        h.ctx.check_git_trees_when_finished(trees);
        // What the run does: a repository of its own.
        std::fs::create_dir_all(tree.join("planted/.git")).unwrap();
        tree
    }

    /// Attack: a container that berth lost track of, and that would not stop, may still run
    /// the command, which could race the renames of the check for planted repositories (swap
    /// a link in). Defence: with the processes not confirmed gone, nothing is checked or
    /// collected; the check stays pending, and gc does it once it has removed the container.
    #[tokio::test]
    async fn a_container_that_would_not_stop_is_neither_checked_nor_collected() {
        let mut h = harness(spec());
        let tree = guarded_tree(&mut h);
        let fake = FakeEngine::new(Script {
            wait_error: Some(|| EngineError::Connection("connection reset by peer".into())),
            never_stops: true,
            ..Script::default()
        });

        assert_eq!(h.run(&fake).await, ExitStatus::Error);
        assert!(
            h.warnings()
                .iter()
                .any(|w| w.contains("could not be confirmed stopped")),
            "{:?}",
            h.warnings()
        );
        assert!(tree.join("planted/.git").is_dir(), "checked while it ran");
        let pending = h
            .ctx
            .run_dir
            .path()
            .join(crate::git_guard::PENDING_CHECK_FILE);
        assert!(pending.is_file());

        // gc, once the container is gone: the run had ended, and the check is done now.
        let said = crate::gc::mark_run_lost(h.ctx.run_dir.path().to_path_buf(), "gone");
        assert!(said.contains("had already ended"), "{said}");
        assert!(said.contains("made a git repository"), "{said}");
        assert!(!tree.join("planted/.git").exists());
        assert!(!pending.exists());
    }

    #[tokio::test]
    async fn a_stopped_containers_run_is_checked_before_its_final_record() {
        let mut h = harness(spec());
        let tree = guarded_tree(&mut h);
        let fake = FakeEngine::new(Script {
            wait_error: Some(|| EngineError::Connection("connection reset by peer".into())),
            ..Script::default()
        });

        assert_eq!(h.run(&fake).await, ExitStatus::Error);
        assert!(!tree.join("planted/.git").exists());
        assert!(h
            .warnings()
            .iter()
            .any(|w| w.contains("made a git repository")));
        assert!(!h
            .ctx
            .run_dir
            .path()
            .join(crate::git_guard::PENDING_CHECK_FILE)
            .exists());
    }

    #[tokio::test]
    async fn failed_artifact_download_warns_and_keeps_the_runs_state() {
        let mut s = spec();
        s.artifacts = vec!["/workspace/report.xml".into()];
        let mut h = harness(s);
        let fake = FakeEngine::new(Script::default());

        assert_eq!(h.run(&fake).await, ExitStatus::Success);
        assert_eq!(
            fake.calls()[5..],
            calls(&["inspect_exit", "download /workspace/report.xml", "remove"])
        );
        let warnings = h.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("collecting artifact /workspace/report.xml failed"),
            "{warnings:?}"
        );
        assert_eq!(h.record().state, RunState::Succeeded);
    }
}
