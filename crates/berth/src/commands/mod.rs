//! One thin file per command.

mod cli;
mod diff;
mod doctor;
mod gc;
mod held;
pub mod image;
mod ls;
mod profiles;
mod remote;
mod run;
mod run_json;
mod runner;
mod server;
mod show;
mod trust;
mod workflow;

use berth_core::ExitStatus;

use crate::args::Command;
use crate::printer::Printer;

pub async fn dispatch(command: Command, printer: Printer) -> ExitStatus {
    match command {
        Command::Run(args) => run::run(*args, printer).await,
        Command::Workflow(args) => workflow::workflow(args, printer).await,
        Command::Doctor(args) => doctor::doctor(args, printer).await,
        Command::Profiles(args) => profiles::profiles(args, printer).await,
        Command::Sessions(args) => profiles::sessions(args, printer),
        Command::Ls(args) => match args.server.clone() {
            Some(server) => {
                remote::remote_ls(
                    server,
                    args.token.clone(),
                    args.transport.clone(),
                    args.run_state.map(Into::into),
                    args.workflows,
                    args.json,
                    printer,
                )
                .await
            }
            None => ls::ls(args, printer),
        },
        Command::Show(args) => {
            // A local run answers first: a server never hides it.
            let here = state_dir(args.state.state_dir.clone(), args.workspace.clone());
            match (args.server.clone(), here.find(&args.run)) {
                (Some(server), Err(berth_sandbox::SandboxError::NoSuchRun(_))) => {
                    remote::remote_show(
                        server,
                        args.token.clone(),
                        args.transport.clone(),
                        args.run.clone(),
                        here.root().display().to_string(),
                        args.json,
                        printer,
                    )
                    .await
                }
                (Some(server), Ok(dir)) => {
                    let remote = crate::args::RemoteArgs {
                        server: Some(server),
                        token: args.token.clone(),
                        transport: args.transport.clone(),
                    };
                    remote::local_answered(
                        &remote,
                        &args.run,
                        &run_dir_id(&dir),
                        &here.root().display().to_string(),
                        printer,
                    )
                    .await;
                    show::show(args, printer)
                }
                _ => show::show(args, printer),
            }
        }
        Command::Gc(args) => gc::gc(args, printer).await,
        Command::Diff(args) if remote::patch::on_server(&args) => {
            remote::patch::take(remote::patch::Take::Print, args, printer).await
        }
        Command::Apply(args) if remote::patch::on_server(&args) => {
            remote::patch::take(remote::patch::Take::Apply, args, printer).await
        }
        Command::Branch(args) if remote::patch::on_server(&args) => {
            remote::patch::take(remote::patch::Take::Branch, args, printer).await
        }
        Command::Diff(args) => {
            note_local_answer(&args, printer).await;
            diff::diff(args, printer)
        }
        Command::Apply(args) => {
            note_local_answer(&args, printer).await;
            diff::apply(args, printer)
        }
        Command::Branch(args) => {
            note_local_answer(&args, printer).await;
            diff::branch(args, printer)
        }
        Command::Ps(args) => held::ps(args, printer).await,
        Command::Rm(args) => held::rm(args, printer).await,
        Command::Image(args) => image::image(args, printer).await,
        Command::Server(args) => server::server(args, printer).await,
        Command::Runner(args) => runner::runner(args, printer).await,
        Command::Token(args) => remote::token(args, printer).await,
        Command::Project(args) => remote::project(args, printer).await,
        Command::Submit(args) => remote::submit(*args, printer).await,
        // A local run answers first, as for `berth show`: a server never hides it.
        Command::Logs(args)
            if args.remote.server.is_none()
                || state_dir(args.state.state_dir.clone(), args.workspace.clone())
                    .find(&args.run)
                    .is_ok() =>
        {
            if args.remote.server.is_some() {
                let here = state_dir(args.state.state_dir.clone(), args.workspace.clone());
                if let Ok(dir) = here.find(&args.run) {
                    let id = run_dir_id(&dir);
                    let root = here.root().display().to_string();
                    remote::local_answered(&args.remote, &args.run, &id, &root, printer).await;
                }
            }
            show::logs(args, printer).await
        }
        Command::Logs(args) => remote::logs(args, printer).await,
        Command::Cancel(args) => remote::cancel(args, printer).await,
        Command::Runners(args) => remote::runners(args, printer).await,
        Command::Trust(args) => trust::trust(args, printer),
        Command::Init(args) => cli::init(args, printer),
        Command::Completions(args) => cli::completions(args),
        Command::Man => cli::man(printer),
        Command::Version => cli::version(),
    }
}

/// The id of the run kept in `dir` (its directory's name).
fn run_dir_id(dir: &berth_sandbox::rundir::RunDir) -> String {
    dir.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `berth diff`/`apply`/`branch` with a server set, on a run that is local: which one answered,
/// and any run of the server's the local one shadows.
async fn note_local_answer(args: &crate::args::RunRefArgs, printer: Printer) {
    if args.remote.server.is_none() {
        return;
    }
    let here = state_dir(args.state.state_dir.clone(), args.workspace.clone());
    if let Ok(dir) = here.find(&args.run) {
        let root = here.root().display().to_string();
        remote::local_answered(&args.remote, &args.run, &run_dir_id(&dir), &root, printer).await;
    }
}

/// The environment the engine diagnosis reads, for the default engine.
pub fn probe_env() -> berth_engine::diagnose::ProbeEnv {
    berth_engine::diagnose::ProbeEnv {
        docker_host: std::env::var(crate::env::DOCKER_HOST).ok(),
        path: std::env::var_os(crate::env::PATH),
        uid: berth_sandbox::launch::invoking_user().0,
        engine: berth_engine::EngineChoice::Default,
        endpoint: berth_engine::endpoint::EndpointEnv {
            docker_host: None,
            docker_tls_verify: crate::env::var(crate::env::DOCKER_TLS_VERIFY),
            docker_cert_path: crate::env::var(crate::env::DOCKER_CERT_PATH).map(Into::into),
            home: crate::env::home(),
            allow_plain_tcp: false,
        },
    }
}

/// The environment the engine diagnosis reads, for the engine chosen with `--engine` (a name
/// from the configuration files or a URL). An unknown name is an error listing the known ones.
pub fn engine_probe_env(
    args: &crate::args::EngineArgs,
    settings: &berth_sandbox::settings::Settings,
    printer: Printer,
) -> Result<berth_engine::diagnose::ProbeEnv, berth_sandbox::SandboxError> {
    let mut env = probe_env();
    env.endpoint.allow_plain_tcp = args.engine_insecure;
    env.engine = match args.engine.as_deref() {
        None => berth_engine::EngineChoice::Default,
        Some(url) if url.contains("://") => berth_engine::EngineChoice::Url(url.to_string()),
        Some(name) => {
            let config = berth_core::engine::lookup(&settings.file.engines, name).map_err(|message| {
                berth_sandbox::SandboxError::WithHint {
                    message: format!("--engine: {message}"),
                    hint: "define it as an [engines.NAME] table in berth.toml or ~/.config/berth/config.toml, or pass an address such as ssh://USER@HOST".into(),
                }
            })?;
            berth_engine::EngineChoice::Named {
                name: name.to_string(),
                config: config.clone(),
            }
        }
    };
    if let Ok(endpoint) = env.resolve() {
        if endpoint.is_insecure() {
            printer.warning(&format!(
                "{endpoint} is plain TCP without TLS: anyone on the network can read this run's traffic, secrets included, and drive the engine"
            ));
        }
    }
    Ok(env)
}

/// The configuration files of the current directory, for commands that only need engines.
pub fn settings_here() -> Result<berth_sandbox::settings::Settings, berth_sandbox::SandboxError> {
    let cwd = std::env::current_dir().map_err(|e| berth_sandbox::SandboxError::io(".", e))?;
    load_settings(&cwd)
}

/// The user's config file and `workspace`'s `berth.toml`, which may only narrow settings unless
/// the user trusted it (`berth trust`).
pub fn load_settings(
    workspace: &std::path::Path,
) -> Result<berth_sandbox::settings::Settings, berth_sandbox::SandboxError> {
    berth_sandbox::settings::load(
        crate::env::user_config_file().as_deref(),
        workspace,
        crate::env::home().as_deref(),
        crate::env::trust_store_file().as_deref(),
    )
}

/// Prints a diagnosis as an error with its hint.
pub fn print_diagnosis(printer: Printer, diagnosis: &berth_engine::Diagnosis) {
    printer.error(&diagnosis.message(), Some(&diagnosis.hint()));
}

/// Resolves the state directory for commands that read runs.
pub fn state_dir(
    flag: Option<std::path::PathBuf>,
    workspace: Option<std::path::PathBuf>,
) -> berth_sandbox::rundir::StateDir {
    let workspace = workspace
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| ".".into());
    let config_state = load_settings(&workspace)
        .ok()
        .and_then(|s| s.file.state_dir.map(|d| workspace.join(d)));
    berth_sandbox::rundir::StateDir::resolve(
        flag,
        crate::env::var(crate::env::BERTH_STATE_DIR).map(Into::into),
        config_state,
        &workspace,
        &crate::env::data_dir(),
    )
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// A `--*-file` option whose file cannot be used. The message names the option and the file,
/// never the file's content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{flag} {}: {source}", path.display())]
    Read {
        flag: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: the file is larger than {limit_kib} KiB; expected one line holding the secret", path.display())]
    TooLarge {
        flag: String,
        path: std::path::PathBuf,
        limit_kib: u64,
    },
    #[error("{flag} {}: the file is empty", path.display())]
    Empty {
        flag: String,
        path: std::path::PathBuf,
    },
    #[error("{flag} {}: expected one line, the file has several", path.display())]
    SeveralLines {
        flag: String,
        path: std::path::PathBuf,
    },
    #[error("{flag} {}: expected one token of at least 16 characters without white space", path.display())]
    NotAToken {
        flag: String,
        path: std::path::PathBuf,
    },
}

/// The one-line secret in `path` (a token, a password) without its final line break, for the
/// `--*-file` options that keep secrets out of process arguments. `flag` names the option in
/// errors, which never quote the file's content.
fn read_secret_file(path: &std::path::Path, flag: &str) -> Result<String, SecretFileError> {
    // A token or a password is short; a path to something else (a device, a log) is refused
    // after reading a little, not read whole.
    const LIMIT: u64 = 64 << 10;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::read_to_string(&mut std::io::Read::take(f, LIMIT + 1), &mut text)
        })
        .map_err(|source| SecretFileError::Read {
            flag: flag.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > LIMIT {
        return Err(SecretFileError::TooLarge {
            flag: flag.to_string(),
            path: path.to_path_buf(),
            limit_kib: LIMIT >> 10,
        });
    }
    let secret = text
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(SecretFileError::Empty {
            flag: flag.to_string(),
            path: path.to_path_buf(),
        });
    }
    if secret.contains(['\n', '\r']) {
        return Err(SecretFileError::SeveralLines {
            flag: flag.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod secret_file_tests {
    use super::read_secret_file;

    #[test]
    fn a_huge_secret_file_is_refused_without_reading_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x".repeat(65 << 10)).unwrap();
        let err = read_secret_file(&path, "--x-file").unwrap_err().to_string();
        assert!(err.contains("larger than 64 KiB"), "{err}");
        assert!(!err.contains("xxx"), "{err}");
    }

    #[test]
    fn a_secret_file_is_one_line_without_its_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let check = |content: &str| {
            let path = dir.path().join("secret");
            std::fs::write(&path, content).unwrap();
            read_secret_file(&path, "--x-file")
        };
        assert_eq!(check("s3cret\n").unwrap(), "s3cret");
        assert_eq!(check("s3cret\r\n").unwrap(), "s3cret");
        assert_eq!(check("with space").unwrap(), "with space");
        for bad in ["", "\n", "topsecret\nmore\n", "topsecret\n\n"] {
            let message = check(bad).unwrap_err().to_string();
            assert!(message.starts_with("--x-file "), "{message}");
            assert!(!message.contains("topsecret"), "{message}");
        }
        let missing = read_secret_file(&dir.path().join("missing"), "--x-file")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing"), "{missing}");
    }
}
