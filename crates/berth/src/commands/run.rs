//! `berth run`: flags and config become a run spec; the sandbox layer does the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::egress::{EgressMode, EgressSpec};
use berth_core::event::Event;
use berth_core::exit::RunState;
use berth_core::held::PersistentSpec;
use berth_core::mask::Masker;
use berth_core::plan::sandbox_user;
use berth_core::profile::{Profile, Resume};
use berth_core::record::{Execution, RunRecord};
use berth_core::spec::{
    parse_env, Fallback, MountRequest, NetworkMode, PortPublish, PullPolicy, Resources, RunSpec,
    UserSpec, WorkspaceMode,
};
use berth_core::{units, ExitStatus};
use berth_engine::Diagnosis;
use berth_sandbox::run::DockerRun;
use berth_sandbox::settings::Settings;
use berth_sandbox::workspace;
use berth_sandbox::{launch, rundir::StateDir, Interrupts, Reporter, RunContext, SandboxError};

use crate::args::{Lifecycle, RunArgs};
use crate::printer::{HumanReporter, JsonReporter, Printer};

pub async fn run(args: RunArgs, printer: Printer) -> ExitStatus {
    let reporter: Arc<dyn Reporter> = if args.json {
        Arc::new(JsonReporter)
    } else {
        Arc::new(HumanReporter::new(printer))
    };
    let interrupts = forward_interrupts();
    match prepare_and_run(args, reporter, interrupts, printer).await {
        Ok(status) => status,
        Err(e) => {
            printer.error(&e.to_string(), e.hint().as_deref());
            ExitStatus::Error
        }
    }
}

/// SIGINT and SIGTERM become interrupts of the run, so the sandbox is always cleaned up.
pub(crate) fn forward_interrupts() -> Interrupts {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for (kind, name) in [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
    ] {
        let tx = tx.clone();
        if let Ok(mut stream) = signal(kind) {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(name).is_err() {
                        break;
                    }
                }
            });
        }
    }
    rx
}

pub(crate) async fn prepare_and_run(
    args: RunArgs,
    reporter: Arc<dyn Reporter>,
    mut interrupts: Interrupts,
    printer: Printer,
) -> Result<ExitStatus, SandboxError> {
    let cwd = std::env::current_dir().map_err(|e| SandboxError::io(".", e))?;
    let workspace = args
        .workspace
        .clone()
        .map(|w| if w.is_absolute() { w } else { cwd.join(w) })
        .unwrap_or_else(|| cwd.clone());
    let home = crate::env::home();
    let settings = super::load_settings(&workspace)?;
    let profiles;
    let profile = match &args.profile {
        Some(name) => {
            profiles = super::profiles::all_profiles(&settings)
                .map_err(|e| SandboxError::Invalid(e.to_string()))?;
            Some(
                berth_core::profile::find(&profiles, name)
                    .map_err(|e| SandboxError::Invalid(e.to_string()))?,
            )
        }
        None => None,
    };
    let BuiltSpec { spec, stdin } = build_spec(&args, &settings, workspace.clone(), profile)?;
    let sessions = profile.and_then(|p| Some((p.agent.clone()?, p.sessions.clone()?)));

    let secrets = read_secrets(&spec.secrets)?;
    let brokered_names: Vec<String> = spec
        .egress
        .brokers
        .iter()
        .map(|b| b.credential.clone())
        .collect();
    let brokered = read_secrets(&brokered_names)?;
    let injected_names: Vec<String> = spec.egress.inject.iter().map(|i| i.env.clone()).collect();
    let injected = read_secrets(&injected_names).map_err(|e| match e {
        SandboxError::SecretMissing { name } => SandboxError::WithHint {
            message: format!("--inject-header: the header's value comes from {name}, which is not set in berth's environment"),
            hint: format!("export {name} before running berth (its value stays on this host), or drop the injection host"),
        },
        e => e,
    })?;
    // Values the sandbox never gets are masked anyway, should any find their way back out.
    let masker = Masker::new(
        &secrets
            .iter()
            .chain(&brokered)
            .chain(&injected)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>(),
    );
    let upstreams =
        crate::env::egress_upstreams().map_err(|e| SandboxError::Invalid(e.to_string()))?;
    let extra_roots =
        crate::env::egress_upstream_roots().map_err(|e| SandboxError::Invalid(e.to_string()))?;
    if spec.egress.mode == EgressMode::Open {
        printer.warning("--egress open: the sandbox joins the engine's bridge network and can reach the whole internet; nothing it sends is checked or recorded (use --egress policy with --allow-host to allow only what it needs)");
    }
    let probe_env = super::engine_probe_env(&args.engine, &settings, printer)?;
    let endpoint = probe_env.resolve().ok();
    let remote_engine = endpoint.as_ref().is_some_and(|e| !e.is_local());
    if remote_engine && sessions.is_some() {
        return Err(SandboxError::WithHint {
            message: "an agent profile keeps its sessions in a directory of this host, which a remote engine cannot mount".into(),
            hint: "run agent profiles on the local engine (drop --engine)".into(),
        });
    }
    let state_dir = StateDir::resolve(
        args.state
            .state_dir
            .clone()
            .map(|d| if d.is_absolute() { d } else { cwd.join(d) }),
        crate::env::var(crate::env::BERTH_STATE_DIR).map(Into::into),
        settings.file.state_dir.clone().map(|d| workspace.join(d)),
        &std::fs::canonicalize(&workspace).unwrap_or_else(|_| workspace.clone()),
        &crate::env::data_dir(),
    );
    let (cache, config) = (crate::env::cache_dir(), crate::env::trust_store_file());
    let mut own = vec![
        (state_dir.root(), "the state directory"),
        (cache.as_path(), "berth's cache (which holds the shim)"),
    ];
    if let Some(config) = config.as_deref().and_then(Path::parent) {
        own.push((
            config,
            "berth's configuration (which holds the trust store)",
        ));
    }
    // Every check that needs the file system, the same as a runner's: nothing has started yet.
    let checked = launch::check_request(&launch::Request {
        spec: &spec,
        cwd: &cwd,
        allowed_paths: &settings.allowed_paths,
        home: home.as_deref(),
        engine_socket: endpoint.as_ref().and_then(|e| e.socket_path()),
        remote_engine,
        ssh_engine: matches!(endpoint, Some(berth_engine::Endpoint::Ssh(_))),
        own_paths: &own,
    })?;
    if profile.is_some() {
        image_present(&probe_env, &spec.image, spec.pull).await?;
    }
    if spec.user.is_some_and(|u| u.uid == 0) {
        printer.warning("--user 0 runs the command as root inside the sandbox; capabilities stay dropped, but prefer an unprivileged user");
    }
    let run_id = berth_sandbox::clock::new_run_id();
    let run_dir = state_dir.create_run(&run_id)?;
    let record = RunRecord::new(
        run_id.clone(),
        spec.clone(),
        Execution::Docker,
        berth_sandbox::clock::now_rfc3339(),
    );
    let mut ctx = RunContext::create(run_dir, record, reporter, masker)?;
    let run_dir_text = ctx.run_dir.path().display().to_string();
    ctx.emit(Event::RunCreated {
        execution: Execution::Docker,
        image: Some(spec.image.clone()),
        command: spec.command.clone(),
        run_dir: run_dir_text,
    });

    let (engine, warning) = match berth_engine::diagnose::check_engine(&probe_env).await {
        Ok((engine, _facts, warning)) => (engine, warning),
        Err((diagnosis, _)) => {
            return Ok(without_docker(
                &mut ctx,
                &diagnosis,
                &checked.workspace,
                &secrets,
                &mut interrupts,
                printer,
            )
            .await)
        }
    };
    if let Some(w) = warning {
        ctx.emit(Event::Warning {
            message: format!("{} ({})", w.message(), w.hint()),
        });
    }

    let (uid, gid) = sandbox_user(
        spec.user,
        launch::invoking_user().0,
        launch::invoking_user().1,
    );
    let mut extra_mounts = Vec::new();
    if let Some((agent, target)) = &sessions {
        // The agent's sessions live on the host across runs, so --resume and --continue work.
        match sessions_dir(agent, uid, gid) {
            Ok(source) => extra_mounts.push(berth_core::plan::BindMount {
                source,
                target: target.clone(),
                read_only: false,
            }),
            Err(e) => return Ok(ctx.finish(RunState::Error, Some(e.to_string()))),
        }
    }
    let workspace_dir = checked.workspace.clone();
    let prepared = launch::prepare_host(
        &mut ctx,
        launch::HostSide {
            checked,
            workspace: workspace_dir,
            extra_mounts,
            state_root: state_dir.root(),
            cache_dir: &cache,
            local_engine: engine.endpoint().socket_path().is_some(),
            remote_engine: !engine.endpoint().is_local(),
            extra_labels: Default::default(),
        },
    );
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return Ok(ctx.fail("", &e)),
    };
    let plan_context = prepared.plan_context;
    // A warm pool for the profile, else for the image.
    let pool = if args.no_pool {
        None
    } else {
        spec.profile
            .iter()
            .chain(std::iter::once(&spec.image))
            .find_map(|name| {
                let config = settings.file.pool.get(name)?;
                config.to_spec(name).ok()
            })
            .filter(|p| p.size > 0)
    };
    // The pool's containers are held containers, which a remote engine cannot serve; a pooled
    // container was made before the run's own copy or worktree existed.
    let pool = match pool {
        Some(p) if spec.workspace_mode.is_isolated() => {
            printer.info(&format!(
                "the warm pool for {} is not used with --workspace-mode {}; this run gets a container of its own",
                p.name, spec.workspace_mode
            ));
            None
        }
        Some(p) if plan_context.remote_engine => {
            printer.info(&format!(
                "the warm pool for {} is not used on a remote engine; this run gets a container of its own",
                p.name
            ));
            None
        }
        other => other,
    };
    let (upload, worktree) = (prepared.upload, prepared.worktree);
    let run = DockerRun {
        plan_context,
        secrets,
        stdin,
        workspace: upload,
        held_root: state_dir.root().join("held"),
        pool,
        egress: berth_sandbox::egress::EgressHost {
            brokered,
            upstreams,
            injected,
            extra_roots,
            ..Default::default()
        },
    };
    let status = berth_sandbox::execute_docker(&engine, &mut ctx, run, &mut interrupts).await;
    workspace::conclude(&mut ctx, &worktree);
    let diff = ctx.record.workspace.as_ref().and_then(|w| w.diff.as_ref());
    // An empty patch is no change: nothing to point at.
    if let Some(diff) =
        diff.filter(|d| std::fs::metadata(ctx.run_dir.path().join(d)).is_ok_and(|m| m.len() > 0))
    {
        printer.info(&format!(
            "changes kept in {} (`berth diff {id}`, `berth apply {id}`)",
            ctx.run_dir.path().join(diff).display(),
            id = ctx.record.id
        ));
    }
    Ok(status)
}

/// Docker cannot be used: fall back to the host only when it is not installed and the user
/// asked for it; otherwise the run ends in `error` with the diagnosis.
async fn without_docker(
    ctx: &mut RunContext,
    diagnosis: &Diagnosis,
    workspace: &Path,
    secrets: &[(String, String)],
    interrupts: &mut Interrupts,
    printer: Printer,
) -> ExitStatus {
    let fallback_allowed = ctx.record.spec.fallback == Fallback::Local;
    let isolated = ctx.record.spec.workspace_mode.is_isolated();
    if fallback_allowed && isolated {
        printer.info("--fallback local does not apply to copy and worktree modes: the host has no isolated workspace to offer");
    } else if fallback_allowed && matches!(diagnosis, Diagnosis::NotInstalled { .. }) {
        let reason = diagnosis.message();
        ctx.record.execution = Execution::Local;
        ctx.record.fallback_reason = Some(reason.clone());
        ctx.save();
        ctx.emit(Event::Fallback { reason });
        return berth_sandbox::local::execute_local(ctx, workspace, secrets, interrupts).await;
    }
    if fallback_allowed && !isolated {
        printer.info("--fallback local applies only when Docker is not installed; it is installed here but cannot be used");
    }
    let reason = format!("Docker cannot be used: {}", diagnosis.message());
    ctx.finish_with_hint(RunState::Error, Some(reason), Some(diagnosis.hint()))
}

fn read_secrets(names: &[String]) -> Result<Vec<(String, String)>, SandboxError> {
    names
        .iter()
        .map(|name| {
            berth_core::spec::check_env_name(name)
                .map_err(|e| SandboxError::Invalid(format!("--secret: {e}")))?;
            std::env::var(name)
                .map(|v| (name.clone(), v))
                .map_err(|_| SandboxError::SecretMissing { name: name.clone() })
        })
        .collect()
}

fn invalid(flag: &str, message: impl std::fmt::Display) -> SandboxError {
    SandboxError::Invalid(format!("{flag}: {message}"))
}

/// The flag's value (clap checked it), else the configuration's text, parsed: an error names
/// the flag that would set it.
fn flag_or_config<T: std::str::FromStr<Err = String>>(
    flag: Option<T>,
    config: &Option<String>,
    name: &str,
) -> Result<Option<T>, SandboxError> {
    match (flag, config) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(text)) => text.parse().map(Some).map_err(|e| invalid(name, e)),
        (None, None) => Ok(None),
    }
}

/// Flags over config over defaults.
/// A run spec and, when the profile feeds its prompt on stdin, those bytes.
pub struct BuiltSpec {
    pub spec: RunSpec,
    pub stdin: Option<Vec<u8>>,
}

/// Flags over the profile over config over defaults.
pub fn build_spec(
    args: &RunArgs,
    settings: &Settings,
    workspace: PathBuf,
    profile: Option<&Profile>,
) -> Result<BuiltSpec, SandboxError> {
    let config = &settings.file;
    let image = args
        .image
        .clone()
        .or_else(|| profile.and_then(|p| p.image.clone()))
        .or_else(|| config.image.clone())
        .ok_or_else(|| {
            SandboxError::Invalid(
                "no image given: pass --image IMAGE or set `image = \"...\"` in berth.toml".into(),
            )
        })?;
    // A profile's setting stands between the flag and the config file.
    let pick = |flag: &Option<String>, conf: &Option<String>| flag.clone().or_else(|| conf.clone());
    let from_profile = |get: fn(&Profile) -> Option<String>, conf: &Option<String>| {
        profile.and_then(get).or_else(|| conf.clone())
    };
    let resume = match (&args.resume, args.continue_session) {
        (Some(id), _) => Resume::Session(id.clone()),
        (None, true) => Resume::Continue,
        (None, false) => Resume::None,
    };
    let (command, stdin) = match profile {
        Some(p) => p
            .argv(&args.command, &resume)
            .map_err(|e| SandboxError::Invalid(e.to_string()))?,
        None if resume != Resume::None => return Err(SandboxError::Invalid(
            "--resume and --continue need an agent profile: add --profile claude-code (or codex)"
                .into(),
        )),
        None => (args.command.clone(), None),
    };
    let pull = flag_or_config(args.pull, &config.pull, "--pull")?.unwrap_or_default();
    let workspace_mode = flag_or_config(
        args.workspace_mode,
        &config.workspace_mode,
        "--workspace-mode",
    )?
    .unwrap_or_default();
    if args.include_dirty && workspace_mode != WorkspaceMode::Worktree {
        return Err(invalid(
            "--include-dirty",
            format!("only worktree mode carries uncommitted changes, and this run uses workspace mode {workspace_mode}; add --workspace-mode worktree"),
        ));
    }
    let copy_limit_bytes = match pick(&args.copy_limit, &config.copy_limit) {
        Some(limit) => units::parse_size(&limit).map_err(|e| invalid("--copy-limit", e))?,
        None => berth_core::spec::DEFAULT_COPY_LIMIT,
    };
    let defaults = Resources::default();
    let memory_bytes = match pick(
        &args.memory,
        &from_profile(|p| p.memory.clone(), &config.memory),
    ) {
        Some(m) => units::parse_memory(&m).map_err(|e| invalid("--memory", e))?,
        None => defaults.memory_bytes,
    };
    let nano_cpus = match &args.cpus {
        Some(c) => units::parse_cpus(c).map_err(|e| invalid("--cpus", e))?,
        None => match profile.and_then(|p| p.cpus) {
            Some(c) => units::cpus_from_f64(c).map_err(|e| invalid("cpus of the profile", e))?,
            None => config.nano_cpus().unwrap_or(defaults.nano_cpus),
        },
    };
    let pids = match &args.pids {
        Some(p) => units::parse_pids(p).map_err(|e| invalid("--pids", e))?,
        None => match profile.and_then(|p| p.pids) {
            Some(p) => units::check_pids(p).map_err(|e| invalid("pids of the profile", e))?,
            // Checked when the file was read.
            None => config.pids.unwrap_or(defaults.pids),
        },
    };
    let disk_bytes = match &args.disk {
        Some(d) => Some(units::parse_disk(d).map_err(|e| invalid("--disk", e))?),
        None => match profile.and_then(|p| p.disk) {
            // Checked when the profile was resolved.
            Some(d) => Some(d),
            None => config
                .disk
                .as_deref()
                .map(units::parse_disk)
                .transpose()
                .map_err(|e| invalid("disk", e))?,
        },
    };
    let duration = |flag: &str, value: Option<String>, default| match value {
        Some(v) => units::parse_duration(&v).map_err(|e| invalid(flag, e)),
        None => Ok(default),
    };
    let timeout = duration(
        "--timeout",
        pick(
            &args.timeout,
            &from_profile(|p| p.timeout.clone(), &config.timeout),
        ),
        berth_core::spec::DEFAULT_TIMEOUT,
    )?;
    let grace = duration(
        "--grace",
        pick(&args.grace, &config.grace),
        berth_core::spec::DEFAULT_GRACE,
    )?;
    let is_set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if let Some(profile) = profile {
        profile
            .check_credentials(&args.secrets, is_set)
            .map_err(|e| SandboxError::WithHint {
                message: e.to_string(),
                hint: credentials_hint(&profile.credentials),
            })?;
    }
    let secrets = berth_core::profile::secrets_for(profile, &args.secrets, is_set)
        .map_err(|e| SandboxError::Invalid(e.to_string()))?;
    let network = match pick(
        &args.network,
        &from_profile(|p| p.network.clone(), &config.network),
    ) {
        Some(n) => NetworkMode::parse(&n).map_err(|e| invalid("--network", e))?,
        None => NetworkMode::None,
    };
    let (egress, network, secrets) = egress_for(args, config, profile, network, secrets)?;
    let isolation = flag_or_config(
        args.isolation,
        &from_profile(|p| p.isolation.map(|i| i.to_string()), &config.isolation),
        "--isolation",
    )?
    .unwrap_or(berth_core::spec::Isolation::Runc);
    let user = pick(&args.user, &config.user)
        .map(|u| UserSpec::parse(&u).map_err(|e| invalid("--user", e)))
        .transpose()?;
    let publish = args
        .publish
        .iter()
        .map(|p| PortPublish::parse(p).map_err(|e| invalid("--publish", e)))
        .collect::<Result<Vec<_>, _>>()?;
    if !publish.is_empty() && network == NetworkMode::None {
        return Err(invalid("--publish", "a port cannot be published with --network none; add --network bridge (or a named network)"));
    }
    let mounts = profile
        .map(|p| p.mounts.clone())
        .unwrap_or_default()
        .iter()
        .chain(&args.mounts)
        .map(|m| MountRequest::parse(m).map_err(|e| invalid("--mount", e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env: Vec<(String, String)> = profile
        .map(|p| p.env.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(config.env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    for entry in &args.env {
        let (k, v) = parse_env(entry).map_err(|e| invalid("--env", e))?;
        env.retain(|(existing, _)| *existing != k);
        env.push((k, v));
    }
    for artifact in &args.artifacts {
        if !artifact.starts_with('/') || artifact.split('/').any(|part| part == "..") {
            return Err(invalid("--artifact", format!("`{artifact}` must be an absolute path inside the container without `..` (e.g. /workspace/dist)")));
        }
    }
    let fallback =
        flag_or_config(args.fallback, &config.fallback, "--fallback")?.unwrap_or(Fallback::None);
    let read_only = args.read_only || config.read_only.unwrap_or(false);
    let persistent = persistent_spec(args, profile)?;
    if persistent.is_some() && workspace_mode.is_isolated() {
        return Err(berth_sandbox::run::isolated_persistent_refused(
            workspace_mode,
        ));
    }
    let spec = RunSpec {
        image,
        command,
        pull,
        workspace,
        workspace_mode,
        include_dirty: args.include_dirty,
        start_commit: None,
        copy_limit_bytes,
        mounts,
        env,
        secrets,
        resources: Resources {
            memory_bytes,
            nano_cpus,
            pids,
            disk_bytes,
        },
        timeout,
        grace,
        network,
        egress,
        isolation,
        read_only,
        user,
        publish,
        artifacts: args.artifacts.clone(),
        keep: args.keep,
        fallback,
        workdir: None,
        output_format: profile
            .map(|p| p.output.clone())
            .unwrap_or_else(|| "text".into()),
        profile: profile.map(|p| p.name.clone()),
        persistent,
    };
    berth_core::plan::check_copy(&spec).map_err(|message| SandboxError::WithHint {
        message: message.to_string(),
        hint: "drop --read-only: copy mode's container, its layer and the copy in it are removed after the run anyway (or use --workspace-mode worktree, whose worktree is bind-mounted and works with --read-only)".into(),
    })?;
    Ok(BuiltSpec { spec, stdin })
}

/// A profile's image, checked before anything is created: an absent one that will not be
/// pulled is refused here, with the command that builds it. An engine that cannot be reached is
/// left to the run, which says why (or falls back).
pub(crate) async fn image_present(
    probe_env: &berth_engine::diagnose::ProbeEnv,
    image: &str,
    pull: PullPolicy,
) -> Result<(), SandboxError> {
    if pull == PullPolicy::Always {
        return Ok(());
    }
    let Ok((engine, _, _)) = berth_engine::diagnose::check_engine(probe_env).await else {
        return Ok(());
    };
    match berth_engine::Engine::inspect_image(&engine, image).await {
        Ok(None) => match berth_sandbox::run::not_pullable(image, pull) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// What to do when a profile finds none of its credentials on the host.
pub(crate) fn credentials_hint(names: &[String]) -> String {
    let ways: Vec<String> = names
        .iter()
        .map(|name| match name.as_str() {
            "CLAUDE_CODE_OAUTH_TOKEN" => {
                format!("{name}=... (a token made by `claude setup-token`)")
            }
            _ => format!("{name}=..."),
        })
        .collect();
    let mut hint = format!("export {} in the shell that runs berth", ways.join(" or "));
    if names
        .iter()
        .any(|n| n.starts_with("CLAUDE") || n.starts_with("ANTHROPIC"))
    {
        hint.push_str("; a login in ~/.claude on this host is not used");
    }
    hint
}

/// The run's egress from `--egress`, `--allow-host`/`--allow-preset`/`--allow-tcp`, the profile
/// and `[egress]`, with the network it implies and the secrets left for the sandbox: a brokered
/// credential is held back from the sandbox and added by the proxy instead.
fn egress_for(
    args: &RunArgs,
    config: &berth_core::config::ConfigFile,
    profile: Option<&Profile>,
    network: NetworkMode,
    secrets: Vec<String>,
) -> Result<(EgressSpec, NetworkMode, Vec<String>), SandboxError> {
    let flag_mode = args.egress.mode;
    let config_mode = config
        .egress
        .mode
        .as_deref()
        .map(EgressMode::parse)
        .transpose()
        .map_err(|e| invalid("[egress] mode", e))?;
    let network_asked = args
        .network
        .as_deref()
        .map(NetworkMode::parse)
        .transpose()
        .map_err(|e| invalid("--network", e))?;
    let inputs = berth_core::egress::Inputs {
        asked: berth_core::egress::Asked {
            mode: flag_mode,
            allow: &args.egress.allow_hosts,
            presets: &args.egress.allow_presets,
            tcp: &args.egress.allow_tcp,
        },
        config: berth_core::egress::Asked {
            mode: config_mode,
            allow: &config.egress.allow,
            presets: &config.egress.presets,
            tcp: &config.egress.tcp,
        },
        profile_mode: profile.and_then(|p| p.egress),
        profile_allow: profile.map_or(&[][..], |p| &p.allow_hosts),
        profile_name: profile.map(|p| p.name.as_str()),
        brokers: profile.map_or(&[][..], |p| &p.broker),
        network_asked: network_asked.as_ref(),
        network_default: network,
        ceiling: None,
    };
    let mut inject = config
        .egress
        .inject_entries()
        .map_err(|e| SandboxError::Invalid(e.to_string()))?;
    for flag in &args.inject_headers {
        let entry = berth_core::egress::Inject::parse_flag(flag)
            .map_err(|e| invalid("--inject-header", e))?;
        // The flag's entry replaces the config's for the same host (with its limits).
        inject.retain(|i| i.host != entry.host);
        inject.push(entry);
    }
    berth_core::egress::resolve_with_inject(&inputs, &inject, secrets).map_err(|e| {
        use berth_core::egress::Field;
        let flag = match e.field {
            Field::Mode => "--egress",
            Field::ConfigMode => "[egress] mode",
            Field::Allow => "--allow-host",
            Field::Tcp => "--allow-tcp",
            Field::Network => "--network",
            Field::Inject => "--inject-header",
        };
        invalid(flag, e.message)
    })
}

/// The persistent container the run asks for, from `--lifecycle`, `--name` and the profile.
fn persistent_spec(
    args: &RunArgs,
    profile: Option<&Profile>,
) -> Result<Option<PersistentSpec>, SandboxError> {
    use berth_core::held::LifecycleField;
    let persistent = berth_core::held::persistent_for(
        args.lifecycle.map(Lifecycle::as_str),
        args.name.as_deref(),
        profile,
    )
    .map_err(|(field, message)| {
        let flag = match field {
            LifecycleField::Lifecycle => "--lifecycle",
            LifecycleField::Name => "--name",
            LifecycleField::Profile => "--profile",
        };
        invalid(flag, message)
    })?;
    if persistent.is_some() && args.keep {
        return Err(invalid(
            "--keep",
            "a persistent container is kept anyway; remove it with `berth rm NAME`",
        ));
    }
    Ok(persistent)
}

/// `<data dir>/sessions/<agent>`, created for the sandbox user `uid:gid` when missing.
fn sessions_dir(agent: &str, uid: u32, gid: u32) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if agent.is_empty()
        || !agent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || agent.starts_with('.')
    {
        return Err(SandboxError::Invalid(format!(
            "agent `{agent}` is not a usable directory name"
        )));
    }
    let dir = crate::env::data_dir().join("sessions").join(agent);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SandboxError::io(&dir, e))?;
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| SandboxError::io(&dir, e))?;
    if !meta.is_dir() {
        return Err(SandboxError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if berth_sandbox::launch::invoking_user().0 == 0 && (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| SandboxError::io(&dir, e))?;
    }
    Ok(dir)
}
