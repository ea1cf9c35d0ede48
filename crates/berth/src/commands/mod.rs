//! One thin file per command.

mod doctor;
mod gc;
mod ls;
mod run;
mod show;

use berth_core::ExitStatus;

use crate::args::Command;
use crate::printer::Printer;

pub async fn dispatch(command: Command, printer: Printer) -> ExitStatus {
    match command {
        Command::Run(args) => run::run(*args, printer).await,
        Command::Doctor(args) => doctor::doctor(args, printer).await,
        Command::Ls(args) => ls::ls(args, printer),
        Command::Show(args) => show::show(args, printer),
        Command::Gc(args) => gc::gc(args, printer).await,
    }
}

/// The environment the engine diagnosis reads.
pub fn probe_env() -> berth_engine::diagnose::ProbeEnv {
    berth_engine::diagnose::ProbeEnv {
        docker_host: std::env::var(crate::env::DOCKER_HOST).ok(),
        path: std::env::var_os(crate::env::PATH),
        uid: crate::invoking_user().0,
    }
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
    let config_state = berth_sandbox::settings::load(
        crate::env::user_config_file().as_deref(),
        &workspace,
        crate::env::home().as_deref(),
    )
    .ok()
    .and_then(|s| s.file.state_dir.map(|d| workspace.join(d)));
    berth_sandbox::rundir::StateDir::resolve(
        flag,
        crate::env::var(crate::env::BERTH_STATE_DIR).map(Into::into),
        config_state,
        &workspace,
    )
}
