//! `berth runner`: claims runs from a server and executes them here.

use berth_core::ExitStatus;
use berth_runner::{RunnerConfig, Stop};

use crate::args::RunnerArgs;
use crate::printer::Printer;

pub async fn runner(args: RunnerArgs, printer: Printer) -> ExitStatus {
    let given = args.remote.token.clone().filter(|t| !t.trim().is_empty());
    let token = match &args.token_file {
        Some(_) if given.is_some() => {
            printer.error(
                "--token-file (BERTH_TOKEN_FILE) and --token (BERTH_TOKEN) both give the runner token",
                Some("give it once: unset BERTH_TOKEN, or drop one of the options"),
            );
            return ExitStatus::Error;
        }
        Some(path) => match super::read_secret_file(path, "--token-file") {
            Ok(token) => Some(token),
            Err(e) => {
                printer.error(
                    &e.to_string(),
                    Some("--token-file (BERTH_TOKEN_FILE) takes a file holding the runner token on one line"),
                );
                return ExitStatus::Error;
            }
        },
        None => given,
    };
    let (Some(server), Some(token)) = (args.remote.server.clone(), token) else {
        printer.error(
            "berth runner needs a server and a runner token",
            Some("pass --server URL and --token TOKEN or --token-file FILE (or set BERTH_SERVER and BERTH_TOKEN or BERTH_TOKEN_FILE)"),
        );
        return ExitStatus::Error;
    };
    // The engine, the profiles and the pools come from this host's config (the user's file, and
    // berth.toml in the directory the runner starts in).
    let loaded = super::settings_here().and_then(|settings| {
        let probe_env = super::engine_probe_env(&args.engine, &settings, printer)?;
        let profiles = super::profiles::all_profiles(&settings)
            .map_err(|e| berth_sandbox::SandboxError::Invalid(e.to_string()))?;
        let pools = settings
            .file
            .pool
            .iter()
            .map(|(name, pool)| {
                pool.to_spec(name)
                    .map(|spec| (name.clone(), spec))
                    .map_err(|e| berth_sandbox::SandboxError::Invalid(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let inject = settings
            .file
            .egress
            .inject_entries()
            .map_err(|e| berth_sandbox::SandboxError::Invalid(e.to_string()))?;
        Ok((probe_env, profiles, pools, inject))
    });
    let (probe_env, profiles, pools, inject) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            printer.error(&e.to_string(), e.hint().as_deref());
            return ExitStatus::Error;
        }
    };
    let drain_timeout = match berth_core::units::parse_duration(&args.drain_timeout) {
        Ok(d) => d,
        Err(e) => {
            printer.error(
                &format!("--drain-timeout: {e}"),
                Some("pass a duration such as 30s or 2m"),
            );
            return ExitStatus::Error;
        }
    };
    // A declared secret is one this runner can hand to a run: its name is valid and its value
    // is in this environment (never sent anywhere but into the runs that name it).
    for secret in &args.secrets {
        let problem = match berth_core::spec::check_env_name(secret) {
            Err(e) => Some(format!("--secret: {e}")),
            // berth's own variables (the runner's token above all) are never a run's.
            Ok(()) if secret.starts_with("BERTH_") => Some(format!(
                "--secret {secret}: berth's own variables (BERTH_*) cannot be passed to runs"
            )),
            Ok(()) if std::env::var_os(secret).is_none() => Some(format!(
                "--secret {secret}: `{secret}` is not set in this runner's environment"
            )),
            Ok(()) => None,
        };
        if let Some(message) = problem {
            printer.error(
                &message,
                Some("set it in the runner's environment, or drop --secret for it"),
            );
            return ExitStatus::Error;
        }
    }
    let name = args.name.unwrap_or_else(berth_sandbox::owner::host_name);
    let mut tags = args.tags;
    for tag in isolation_tags(&probe_env).await {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    let state_dir = super::server::server_state_dir(args.state_dir).join("runner");
    let config = RunnerConfig {
        server,
        token,
        transport: args.remote.transport.transport(),
        name,
        tags,
        require_matching_tags: args.require_matching_tags,
        secrets: args.secrets,
        capacity: args.capacity,
        state_dir,
        cache_dir: crate::env::cache_dir(),
        probe_env,
        allow_local: args.allow_local,
        profiles,
        inject,
        pools,
        drain_timeout,
        stop_grace: berth_runner::DEFAULT_STOP_GRACE,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Stop::Run);
    let signals = tokio::spawn(stop_signals(stop_tx));
    let result = berth_runner::run(config, stop_rx).await;
    signals.abort();
    match result {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&e.message, e.hint.as_deref());
            ExitStatus::Error
        }
    }
}

/// The isolation levels this runner's engine offers beyond runc, as tags (`isolation:gvisor`),
/// so that runs asking for them come only here. An engine not reachable now offers none.
async fn isolation_tags(probe_env: &berth_engine::diagnose::ProbeEnv) -> Vec<String> {
    use berth_engine::Engine;
    let Ok((engine, _, _)) = berth_engine::diagnose::check_engine(probe_env).await else {
        return Vec::new();
    };
    match engine.runtimes().await {
        Ok(runtimes) => berth_core::runtime::isolation_tags(&runtimes),
        Err(_) => Vec::new(),
    }
}

/// SIGTERM drains, a second SIGTERM (or SIGINT) stops the runs, one more kills them.
async fn stop_signals(stop: tokio::sync::watch::Sender<Stop>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        let next = tokio::select! {
            _ = term.recv() => stop.borrow().after_sigterm(),
            _ = int.recv() => stop.borrow().after_sigint(),
        };
        stop.send_replace(next);
    }
}
