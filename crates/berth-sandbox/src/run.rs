//! Driving one run in a container: create, attach, start, stream, stop, collect, remove.
//!
//! Architecture Invariant: once `create_container` has returned, every path out of
//! [`execute_docker`] removes the container (or, with `--keep`, reports it kept), and every path
//! ends in a final state recorded in `run.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_core::event::{Event, Stream};
use berth_core::exit::{state_for_exit, ExitStatus, RunState};
use berth_core::mask::Masker;
use berth_core::plan::{self, ContainerPlan, PlanContext};
use berth_core::record::RunRecord;
use berth_core::spec::PullPolicy;
use berth_core::units::{format_bytes, format_duration};
use berth_engine::{Engine, EngineError, ImageInfo, PullProgress};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::artifacts::{self, Collected};
use crate::clock::now_rfc3339;
use crate::output::{OutputPipe, Reporter};
use crate::rundir::{EventLog, RunDir};
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
        })
    }

    /// Records and shows an event. Failing to write the event log is not worth losing the run
    /// over; it is reported as a warning on stderr by the caller's reporter instead.
    pub fn emit(&mut self, event: Event) {
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

    pub fn save(&mut self) {
        if let Err(e) = self.run_dir.write_record(&self.record) {
            self.emit(Event::Warning {
                message: format!("cannot write the run record: {e}"),
            });
        }
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
}

/// How the wait ended, before the final state is decided.
enum Stop {
    TimedOut(String),
    Cancelled(String),
}

/// Runs the prepared command in a container and returns berth's exit status.
pub async fn execute_docker<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    run: DockerRun,
    interrupts: &mut Interrupts,
) -> ExitStatus {
    let spec = ctx.record.spec.clone();

    let image = match ensure_image(engine, &spec.image, spec.pull, ctx).await {
        Ok(image) => image,
        Err(e) => return ctx.fail("", &e),
    };
    ctx.record.image_id = Some(image.id.clone());

    let mut plan_context = run.plan_context;
    plan_context.image_entrypoint = image.entrypoint.clone();
    plan_context.image_home = image.home();
    let container_plan = plan::plan_container(&spec, &plan_context);

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
    let id = match engine.create_container(&container_plan).await {
        Ok(id) => id,
        Err(e) => return ctx.fail("creating the container failed: ", &SandboxError::Engine(e)),
    };
    ctx.record.container_id = Some(id.clone());
    ctx.record.container_name = Some(container_plan.name.clone());
    ctx.save();
    ctx.emit(Event::ContainerCreated {
        container_id: id.clone(),
        container_name: container_plan.name.clone(),
    });

    let outcome = drive(engine, &id, &container_plan, ctx, &run.secrets, interrupts).await;
    collect_artifacts(engine, &id, ctx, &spec.artifacts).await;
    release_container(engine, &id, &container_plan.name, spec.keep, ctx).await;
    let (state, reason) = outcome;
    ctx.finish(state, reason)
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
    if pull == PullPolicy::Never {
        return Err(SandboxError::ImageUnavailable {
            image: image.to_string(),
            why: "--pull never forbids pulling it".into(),
        });
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
/// interrupts. Returns the final state and its reason.
async fn drive<E: Engine>(
    engine: &E,
    id: &str,
    container_plan: &ContainerPlan,
    ctx: &mut RunContext,
    secrets: &[(String, String)],
    interrupts: &mut Interrupts,
) -> (RunState, Option<String>) {
    let spec = ctx.record.spec.clone();
    let attached = match engine.attach(id).await {
        Ok(a) => a,
        Err(e) => {
            return (
                RunState::Error,
                Some(format!("attaching to the container failed: {e}")),
            )
        }
    };
    let pipes = (|| -> Result<_, SandboxError> {
        let out = OutputPipe::create(
            Stream::Stdout,
            ctx.masker.clone(),
            &ctx.run_dir.stdout_log(),
            ctx.reporter.clone(),
            &ctx.record.id,
        )?;
        let err = OutputPipe::create(
            Stream::Stderr,
            ctx.masker.clone(),
            &ctx.run_dir.stderr_log(),
            ctx.reporter.clone(),
            &ctx.record.id,
        )?;
        Ok((out, err))
    })();
    let (mut stdout_pipe, mut stderr_pipe) = match pipes {
        Ok(p) => p,
        Err(e) => return (RunState::Error, Some(e.to_string())),
    };
    let mut output = attached.output;
    // Output is pumped on its own task so that a slow terminal never delays signal handling.
    let pump = tokio::spawn(async move {
        let mut failure: Option<String> = None;
        while let Some(chunk) = output.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(format!("the output stream broke: {e}"));
                    break;
                }
            };
            let pipe = match chunk.stream {
                Stream::Stdout => &mut stdout_pipe,
                Stream::Stderr => &mut stderr_pipe,
            };
            if let Err(e) = pipe.push(&chunk.data) {
                failure = Some(format!("keeping the output failed: {e}"));
                break;
            }
        }
        for pipe in [&mut stdout_pipe, &mut stderr_pipe] {
            if let Err(e) = pipe.finish() {
                failure.get_or_insert(format!("keeping the output failed: {e}"));
            }
        }
        failure
    });

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
    ctx.record.started_at = Some(now_rfc3339());
    ctx.record.state = RunState::Running;
    ctx.save();
    ctx.emit(Event::Started);

    let mut input = attached.input;
    let frame = crate::shim::setup_frame(secrets);
    // A command that exits before reading its stdin closes the pipe; that is not an error.
    let _ = input.write_all(&frame).await;
    let _ = input.shutdown().await;
    drop(input);

    let wait = engine.wait(id);
    tokio::pin!(wait);
    let far_future = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = if spec.timeout.is_zero() {
        far_future
    } else {
        Instant::now() + spec.timeout
    };
    let mut stop: Option<Stop> = None;
    let mut kill_at: Option<Instant> = None;
    let waited = loop {
        tokio::select! {
            result = &mut wait => break result,
            () = tokio::time::sleep_until(deadline), if stop.is_none() => {
                let reason = format!("timed out after {}", format_duration(spec.timeout));
                signal(engine, id, ctx, "SIGTERM", &reason).await;
                stop = Some(Stop::TimedOut(reason));
                kill_at = Some(Instant::now() + spec.grace);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or(far_future)), if kill_at.is_some() => {
                signal(engine, id, ctx, "SIGKILL", &format!("still running {} after SIGTERM", format_duration(spec.grace))).await;
                kill_at = None;
            }
            Some(name) = interrupts.recv() => {
                if stop.is_none() {
                    let reason = format!("cancelled by {name}");
                    signal(engine, id, ctx, "SIGTERM", &reason).await;
                    stop = Some(Stop::Cancelled(reason));
                    kill_at = Some(Instant::now() + spec.grace);
                } else {
                    signal(engine, id, ctx, "SIGKILL", &format!("second interrupt ({name}) skips the grace period")).await;
                    kill_at = None;
                }
            }
        }
    };

    let output_failure = match tokio::time::timeout(OUTPUT_DRAIN_LIMIT, pump).await {
        Ok(Ok(failure)) => failure,
        Ok(Err(e)) => Some(format!("the output task failed: {e}")),
        Err(_) => Some(format!(
            "the output did not end within {}s of the container's exit",
            OUTPUT_DRAIN_LIMIT.as_secs()
        )),
    };
    ctx.record.finished_at = Some(now_rfc3339());

    if let Err(e) = waited {
        return (
            RunState::Error,
            Some(format!("lost track of the container: {e}")),
        );
    }
    let exit = match engine.inspect_exit(id).await {
        Ok(exit) => exit,
        Err(e) => {
            return (
                RunState::Error,
                Some(format!("reading the container's exit failed: {e}")),
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
    match stop {
        Some(Stop::TimedOut(reason)) => (RunState::TimedOut, Some(reason)),
        Some(Stop::Cancelled(reason)) => (RunState::Cancelled, Some(reason)),
        None if exit.oom_killed => (
            RunState::Failed,
            Some(format!(
                "killed by the kernel's OOM killer: the sandbox exceeded its memory limit of {}",
                format_bytes(container_plan.memory_bytes as u64)
            )),
        ),
        None => {
            let state = state_for_exit(exit.exit_code);
            let reason = match exit.exit_code {
                0 => None,
                126 => Some("exited with status 126: the command could not be invoked".to_string()),
                127 => Some("exited with status 127: the command was not found".to_string()),
                code if code > 128 && code < 160 => {
                    Some(format!("exited with status {code} (signal {})", code - 128))
                }
                code => Some(format!("exited with status {code}")),
            };
            (state, reason)
        }
    }
}

async fn signal<E: Engine>(engine: &E, id: &str, ctx: &mut RunContext, name: &str, reason: &str) {
    ctx.emit(Event::Signal {
        signal: name.to_string(),
        reason: reason.to_string(),
    });
    if let Err(e) = engine.kill(id, name).await {
        ctx.emit(Event::Warning {
            message: format!("sending {name} failed: {e}"),
        });
    }
}

async fn collect_artifacts<E: Engine>(
    engine: &E,
    id: &str,
    ctx: &mut RunContext,
    paths: &[String],
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
    let out_dir: PathBuf = ctx.run_dir.out_dir();
    if out_dir.exists() {
        if let Err(e) = artifacts::collect_out_dir(&out_dir, &artifacts_dir, &mut collected) {
            ctx.emit(Event::Warning {
                message: format!("collecting $BERTH_OUT failed: {e}"),
            });
        }
    }
    ctx.record.artifacts = collected.paths.clone();
    ctx.emit(Event::ArtifactsCollected {
        paths: collected.paths,
        skipped: collected.skipped,
    });
}

async fn release_container<E: Engine>(
    engine: &E,
    id: &str,
    name: &str,
    keep: bool,
    ctx: &mut RunContext,
) {
    if keep {
        ctx.record.kept = true;
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
            if let Err(e) = artifacts::remove_out_dir(&ctx.run_dir.out_dir()) {
                ctx.emit(Event::Warning {
                    message: format!("removing the raw output directory failed: {e}"),
                });
            }
        }
        Err(e) => ctx.emit(Event::Warning {
            message: format!("removing container {name} failed: {e}; `berth gc` will remove it"),
        }),
    }
}
