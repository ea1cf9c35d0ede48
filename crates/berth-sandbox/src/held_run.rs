//! Runs in held containers: a persistent container (found or created, reused, queued for) or a
//! container from the warm pool (taken once, replaced in the background, removed afterwards).

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_core::event::Event;
use berth_core::exit::RunState;
use berth_core::held::{
    self, persistent_container_name, plan_holder, pool_container_name, run_request, HeldKind,
    HolderContext, PersistentSpec, PoolSpec,
};
use berth_core::plan::{sandbox_user, PlanContext};
use berth_core::ExitStatus;
use berth_engine::Engine;

use crate::held::{now_epoch, HeldDir, HeldInfo, HeldLock, Listed};
use crate::run::{
    collect_artifacts, drive, execute_cold, still_running, DockerRun, Interrupts, RunContext,
    Target,
};
use crate::SandboxError;

/// How often a queued run looks whether its persistent container became free.
const QUEUE_POLL: Duration = Duration::from_millis(50);

/// Runs in the persistent container of `persistent`'s agent and name, creating it (and making
/// room for it) when needed, after any run already inside it.
pub(crate) async fn execute_persistent<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    run: &DockerRun,
    plan_context: PlanContext,
    key: String,
    persistent: PersistentSpec,
    interrupts: &mut Interrupts,
) -> ExitStatus {
    let spec = ctx.record.spec.clone();
    let name = persistent_container_name(&persistent.agent, &persistent.name);
    // The lock comes first (taking it makes the directory if needed); the rest under it.
    let dir = HeldDir::open(run.held_root.join(&name));
    let _lock = match wait_for_lock(&dir, &name, ctx, interrupts).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return ctx.finish(
                RunState::Cancelled,
                Some(format!(
                    "cancelled while waiting for persistent container {name}"
                )),
            )
        }
        Err(e) => return ctx.fail("", &e),
    };
    // io/ and out/ for the sandbox user: made now, or again if another berth's gc removed the
    // directory with the container it belonged to.
    let dir = match HeldDir::create(dir.path().to_path_buf()) {
        Ok(dir) => dir,
        Err(e) => return ctx.fail("preparing the persistent container failed: ", &e),
    };

    let listed = match crate::held::list(engine).await {
        Ok(listed) => listed,
        Err(e) => return ctx.fail("listing containers failed: ", &e),
    };
    let existing = listed.iter().find(|l| l.container.name == name);
    // A run still recorded while nobody holds the lock: its berth died, and its command may still
    // be running in there. That run is lost; the container is replaced.
    let abandoned = dir.read_info().current_run;
    if let Some((run_id, run_dir)) = &abandoned {
        let why = format!("the berth running {run_id} in it exited without cleaning up");
        // The container (and the lost run's processes) first: marking the run lost does the
        // check for repositories it made, which must not race them.
        if let Some(old) = existing {
            if let Err(e) = engine.remove(&old.container.id).await {
                return ctx.fail(
                    &format!("removing persistent container {name}, abandoned by {run_id}'s berth, failed: "),
                    &SandboxError::Engine(e),
                );
            }
        }
        crate::gc::mark_run_lost(
            run_dir.into(),
            &format!("{why}; its container was replaced"),
        );
        if existing.is_some() {
            ctx.emit(Event::ContainerEvicted {
                container_name: name.clone(),
                reason: why,
            });
        }
    }
    let existing = existing.filter(|_| abandoned.is_none());
    let (container_id, reused) = match existing {
        Some(l) if l.key() == key && l.container.state == "running" => {
            (l.container.id.clone(), true)
        }
        other => {
            if let Some(old) = other {
                let reason = if old.key() != key {
                    "the run's configuration (image, mounts, resources, network or user) differs from the container's".to_string()
                } else {
                    format!("it was no longer running ({})", old.container.state)
                };
                if let Err(e) = engine.remove(&old.container.id).await {
                    return ctx.fail(
                        &format!("replacing persistent container {name} failed: "),
                        &SandboxError::Engine(e),
                    );
                }
                ctx.emit(Event::ContainerEvicted {
                    container_name: name.clone(),
                    reason,
                });
            }
            make_room(engine, ctx, &listed, &persistent, &name).await;
            let holder = HolderContext {
                name: name.clone(),
                kind: HeldKind::Persistent,
                key: key.clone(),
                agent: Some(persistent.agent.clone()),
                dir: dir.path().to_path_buf(),
            };
            let created = create_holder(
                engine,
                &spec,
                &plan_context,
                &holder,
                &dir,
                persistent.idle_ttl,
            );
            match created.await {
                Ok(id) => (id, false),
                Err(e) => return ctx.fail("creating the persistent container failed: ", &e),
            }
        }
    };
    let (state, reason) = run_in_held(
        engine,
        ctx,
        run,
        &plan_context,
        &dir,
        (&container_id, &name),
        HeldKind::Persistent,
        reused,
        interrupts,
    )
    .await;
    // A container that died with the run (out of memory, killed) is replaced next time; remove
    // it now rather than leave a stopped container behind.
    if !still_running(engine, &container_id).await && engine.remove(&container_id).await.is_ok() {
        dir.remove();
        ctx.emit(Event::ContainerRemoved {
            container_name: name.clone(),
        });
    }
    ctx.finish(state, reason)
}

/// Takes the container's lock, queueing behind the run inside it. `None`: interrupted while
/// waiting.
async fn wait_for_lock(
    dir: &HeldDir,
    name: &str,
    ctx: &mut RunContext,
    interrupts: &mut Interrupts,
) -> Result<Option<HeldLock>, SandboxError> {
    if let Some(lock) = dir.try_lock()? {
        return Ok(Some(lock));
    }
    let by = dir
        .read_info()
        .current_run
        .map(|(id, _)| format!(" by run {id}"))
        .unwrap_or_default();
    ctx.emit(Event::Queued {
        reason: format!("waiting for persistent container {name}, in use{by}"),
    });
    loop {
        tokio::select! {
            () = tokio::time::sleep(QUEUE_POLL) => {
                if let Some(lock) = dir.try_lock()? {
                    return Ok(Some(lock));
                }
            }
            Some(_) = interrupts.recv() => return Ok(None),
        }
    }
}

/// Removes the agent's persistent containers that expired, and the least recently used idle
/// ones while a new one would exceed `max_containers`.
async fn make_room<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    listed: &[Listed],
    persistent: &PersistentSpec,
    creating: &str,
) {
    let same_agent: Vec<&Listed> = listed
        .iter()
        .filter(|l| {
            l.kind == HeldKind::Persistent
                && l.agent() == Some(persistent.agent.as_str())
                && l.container.name != creating
                && l.on_this_host()
        })
        .collect();
    let states: Vec<_> = same_agent.iter().map(|l| l.state()).collect();
    let now = now_epoch();
    let evictions = held::persistent_evictions(
        &states,
        persistent.max_containers,
        persistent.idle_ttl,
        now,
        true,
    );
    for name in evictions {
        let (Some(l), Some(state)) = (
            same_agent.iter().find(|l| l.container.name == name),
            states.iter().find(|s| s.name == name),
        ) else {
            continue;
        };
        // Holding the lock while removing: a run that starts now queues, then recreates it.
        let Ok(Some(_lock)) = l.dir.try_lock() else {
            continue;
        };
        let idle = now.saturating_sub(state.last_used);
        let reason = if idle > persistent.idle_ttl.as_secs() as i64 {
            format!(
                "idle for {} (idle_ttl {})",
                berth_core::units::format_duration(Duration::from_secs(idle as u64)),
                berth_core::units::format_duration(persistent.idle_ttl)
            )
        } else {
            format!(
                "least recently used of agent {}'s persistent containers (max_containers = {})",
                persistent.agent, persistent.max_containers
            )
        };
        // A run recorded in it while nobody holds the lock was its dead berth's: lost, and
        // checked once the container (and its processes) are gone.
        let abandoned = l.dir.read_info().current_run;
        match crate::held::remove(engine, l).await {
            Ok(()) => {
                if let Some((_, run_dir)) = abandoned {
                    crate::gc::mark_run_lost(
                        run_dir.into(),
                        &format!("the berth running it exited without cleaning up; persistent container {name} was evicted"),
                    );
                }
                ctx.emit(Event::ContainerEvicted {
                    container_name: name,
                    reason,
                })
            }
            Err(e) => ctx.emit(Event::Warning {
                message: format!("removing persistent container {name} failed: {e}"),
            }),
        }
    }
}

/// Runs in a ready container from the warm pool when there is one (cold otherwise), and tops the
/// pool up to its size while the command runs.
pub(crate) async fn execute_pooled<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    run: &DockerRun,
    plan_context: PlanContext,
    key: String,
    pool: &PoolSpec,
    interrupts: &mut Interrupts,
) -> ExitStatus {
    let spec = ctx.record.spec.clone();
    let listed = crate::held::list(engine).await.unwrap_or_default();
    let now = now_epoch();
    let mut ready = 0u32;
    let mut taken: Option<(Listed, HeldLock)> = None;
    for l in listed
        .into_iter()
        .filter(|l| l.kind == HeldKind::Pool && l.key() == key && l.on_this_host())
    {
        // Locked: another run is in it right now.
        let Ok(Some(lock)) = l.dir.try_lock() else {
            continue;
        };
        let info = l.dir.read_info();
        let expired = now.saturating_sub(l.container.created) > pool.idle_ttl.as_secs() as i64;
        if info.uses > 0 || l.container.state != "running" || expired {
            // Used by a run whose berth died, stopped, or too old: never handed out. The dead
            // berth's run is lost; its check for repositories is done once its processes are.
            if crate::held::remove(engine, &l).await.is_ok() {
                if let Some((_, run_dir)) = info.current_run {
                    crate::gc::mark_run_lost(
                        run_dir.into(),
                        "the berth running it exited without cleaning up; its pool container was removed",
                    );
                }
            }
            continue;
        }
        if taken.is_none() {
            let claimed = HeldInfo {
                uses: 1,
                current_run: Some((
                    ctx.record.id.clone(),
                    ctx.run_dir.path().display().to_string(),
                )),
                ..info
            };
            if l.dir.write_info(&claimed).is_ok() {
                taken = Some((l, lock));
                continue;
            }
        }
        ready += 1;
    }
    let refill = refill(
        engine,
        &spec,
        &plan_context,
        &key,
        pool,
        pool.size.saturating_sub(ready),
        run,
    );
    match taken {
        Some((held, lock)) => {
            let in_held = async {
                let outcome = run_in_held(
                    engine,
                    ctx,
                    run,
                    &plan_context,
                    &held.dir,
                    (&held.container.id, &held.container.name),
                    HeldKind::Pool,
                    false,
                    interrupts,
                )
                .await;
                // Never handed to another run: the container goes with this one.
                match crate::held::remove(engine, &held).await {
                    Ok(()) => ctx.emit(Event::ContainerRemoved {
                        container_name: held.container.name.clone(),
                    }),
                    Err(e) => ctx.emit(Event::Warning {
                        message: format!(
                            "removing container {} failed: {e}; `berth gc` will remove it",
                            held.container.name
                        ),
                    }),
                }
                drop(lock);
                outcome
            };
            let ((state, reason), failures) = tokio::join!(in_held, refill);
            warn_refill(ctx, failures);
            ctx.finish(state, reason)
        }
        None => {
            let (outcome, failures) = tokio::join!(
                execute_cold(engine, ctx, run, plan_context.clone(), interrupts),
                refill
            );
            warn_refill(ctx, failures);
            match outcome {
                Ok((state, reason)) => ctx.finish(state, reason),
                Err((context, e)) => ctx.fail(&context, &e),
            }
        }
    }
}

fn warn_refill(ctx: &mut RunContext, failures: Vec<String>) {
    for message in failures {
        ctx.emit(Event::Warning {
            message: format!("refilling the warm pool failed: {message}"),
        });
    }
}

/// Creates `count` ready pool containers for runs like this one. Returns what failed.
async fn refill<E: Engine>(
    engine: &E,
    spec: &berth_core::RunSpec,
    plan_context: &PlanContext,
    key: &str,
    pool: &PoolSpec,
    count: u32,
    run: &DockerRun,
) -> Vec<String> {
    let mut failures = Vec::new();
    for _ in 0..count {
        let name = pool_container_name(key, &format!("{:08x}", rand::random::<u32>()));
        let holder = HolderContext {
            name: name.clone(),
            kind: HeldKind::Pool,
            key: key.to_string(),
            agent: None,
            dir: run.held_root.join(&name),
        };
        let created = match HeldDir::create(holder.dir.clone()) {
            Ok(dir) => {
                create_holder(engine, spec, plan_context, &holder, &dir, pool.idle_ttl).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            failures.push(e.to_string());
            break;
        }
    }
    failures
}

/// Creates and starts a held container with its directory `dir`. On failure nothing is left.
pub(crate) async fn create_holder<E: Engine>(
    engine: &E,
    spec: &berth_core::RunSpec,
    plan_context: &PlanContext,
    holder: &HolderContext,
    dir: &HeldDir,
    idle_ttl: Duration,
) -> Result<String, SandboxError> {
    let mut ctx = plan_context.clone();
    ctx.out_host_path = dir.out_dir();
    ctx.io_host_path = plan_context.io_host_path.as_ref().map(|_| dir.io_dir());
    ctx.egress_host_path = plan_context
        .egress_host_path
        .as_ref()
        .map(|_| dir.egress_dir());
    let plan = plan_holder(spec, &ctx, holder);
    let now = now_epoch();
    dir.write_info(&HeldInfo {
        kind: Some(holder.kind),
        agent: holder.agent.clone(),
        key: holder.key.clone(),
        created: now,
        last_used: now,
        idle_ttl: idle_ttl.as_secs(),
        uses: 0,
        current_run: None,
    })?;
    let id = match engine.create_container(&plan).await {
        Ok(id) => id,
        Err(e) => {
            dir.remove();
            return Err(e.into());
        }
    };
    // A remote engine gets the shim through the archive API before the holder starts (see
    // `remote`; berth refuses held runs on remote engines for now, as `$BERTH_OUT` and the
    // output pipes are per-run host directories).
    if let Err(reason) = crate::remote::fill_berth_volume(engine, &id, &plan).await {
        let _ = engine.remove(&id).await;
        dir.remove();
        return Err(SandboxError::Invalid(reason.to_string()));
    }
    if let Err(e) = engine.start(&id).await {
        let _ = engine.remove(&id).await;
        dir.remove();
        return Err(e.into());
    }
    Ok(id)
}

/// Hands the run to the supervisor of a held container whose lock the caller holds; collects its
/// artifacts and `$BERTH_OUT`. Returns the final state and reason.
#[allow(clippy::too_many_arguments)]
async fn run_in_held<E: Engine>(
    engine: &E,
    ctx: &mut RunContext,
    run: &DockerRun,
    plan_context: &PlanContext,
    dir: &HeldDir,
    (container_id, container_name): (&str, &str),
    kind: HeldKind,
    reused: bool,
    interrupts: &mut Interrupts,
) -> (RunState, Option<String>) {
    let spec = ctx.record.spec.clone();
    let run_id = ctx.record.id.clone();
    ctx.record.container_id = Some(container_id.to_string());
    ctx.record.container_name = Some(container_name.to_string());
    ctx.save();
    ctx.emit(Event::HeldContainer {
        container_id: container_id.to_string(),
        container_name: container_name.to_string(),
        kind: kind.as_str().to_string(),
        reused,
    });
    let mut info = dir.read_info();
    if kind == HeldKind::Persistent {
        info.uses += 1;
    }
    info.current_run = Some((run_id.clone(), ctx.run_dir.path().display().to_string()));
    info.last_used = now_epoch();
    let _ = dir.write_info(&info);

    let (uid, gid) = sandbox_user(
        spec.user,
        plan_context.invoking_uid,
        plan_context.invoking_gid,
    );
    // This run's `$BERTH_OUT` and FIFOs, made and handed over through handles on `out/` and
    // `io/`, which only berth writes.
    let out_dir = dir.run_out_dir(&run_id);
    let names = [format!("{run_id}.stdout"), format!("{run_id}.stderr")];
    let prepared = dir.open_run_dirs().and_then(|(io, out)| {
        let run_out = out
            .create_dir(OsStr::new(&run_id), 0o700)
            .map_err(|e| SandboxError::io(&out_dir, e))?;
        crate::rundir::hand_over(&run_out, uid, gid, 0o700, 0o777)?;
        crate::rundir::create_fifos(&io, &[&names[0], &names[1]], uid, gid)?;
        Ok((io, out))
    });
    let (io_root, out_root) = match prepared {
        Ok(handles) => handles,
        Err(e) => return (RunState::Error, Some(e.to_string())),
    };
    // The supervisor writes the run's output to FIFOs berth reads on this host.
    let fifos = Some(crate::run::OutputFiles::Fifos(
        dir.io_dir().join(&names[0]),
        dir.io_dir().join(&names[1]),
    ));
    let request = run_request(&spec, plan_context);
    let unclean = AtomicBool::new(false);
    let target = Target::Held {
        container: container_id,
        frame: crate::shim::run_frame(&request, &run.secrets, run.stdin.as_deref()),
        unclean: &unclean,
    };
    let egress_dir = plan_context
        .egress_host_path
        .as_ref()
        .map(|_| dir.egress_dir());
    let outcome = drive(
        engine,
        &target,
        spec.resources.memory_bytes as i64,
        fifos,
        egress_dir,
        ctx,
        run,
        interrupts,
    )
    .await;
    // Nothing is read from the container's directories while a process of the run may live:
    // the supervisor has killed them all, or berth stops the whole container now.
    // A run that ended in an error (berth lost the attach stream, say) may have left its command
    // running: the container is stopped too, as a cold one would be.
    let lost_track = outcome.0 == RunState::Error;
    if unclean.load(Ordering::SeqCst) || lost_track {
        ctx.emit(Event::Warning {
            message: if lost_track {
                format!("run {run_id} ended in an error while its command may still run; stopping container {container_name} before collecting its output")
            } else {
                format!("processes of run {run_id} survived the end of its command; stopping container {container_name} before collecting its output")
            },
        });
        if !crate::run::stop_container(engine, container_id).await {
            ctx.processes_may_live(container_name);
        }
    }
    if ctx.processes_gone() {
        collect_artifacts(engine, container_id, ctx, &spec.artifacts, &out_dir).await;
    }
    if let Err(e) = out_root.remove_entry_all(OsStr::new(&run_id)) {
        ctx.emit(Event::Warning {
            message: format!(
                "removing the raw output directory {} failed: {e}",
                out_dir.display()
            ),
        });
    }
    for name in &names {
        let _ = io_root.remove_entry_all(OsStr::new(name));
    }
    info.current_run = None;
    info.last_used = now_epoch();
    let _ = dir.write_info(&info);
    outcome
}
