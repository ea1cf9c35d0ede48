//! The `berth` binary: argument parsing and dispatch. Each command is a thin file in `commands/`.

mod args;
mod commands;
mod env;
mod printer;

use clap::Parser;

use crate::printer::Printer;

/// The uid and gid of the user running berth.
#[allow(unsafe_code)] // getuid/getgid cannot fail and touch no memory.
pub fn invoking_user() -> (u32, u32) {
    // SAFETY: plain syscalls without arguments.
    unsafe { (libc::getuid(), libc::getgid()) }
}

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    // Daemons log at info by default; one-shot commands stay quiet unless BERTH_LOG says otherwise.
    let (default_filter, json_logs) = match &cli.command {
        args::Command::Server(a) => ("info", a.log_format == "json"),
        args::Command::Runner(a) => ("info", a.log_format == "json"),
        _ => ("off", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::BERTH_LOG)
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        logs.json().init();
    } else {
        logs.with_ansi(Printer::detect().colored()).init();
    }
    let printer = Printer::detect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            printer.error(&format!("cannot start the async runtime: {e}"), None);
            return std::process::ExitCode::from(berth_core::exit::code::ENGINE_ERROR);
        }
    };
    let status = runtime.block_on(commands::dispatch(cli.command, printer));
    std::process::ExitCode::from(status.code())
}
