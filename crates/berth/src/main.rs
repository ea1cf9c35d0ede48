//! The `berth` binary: argument parsing and dispatch. Each command is a thin file in `commands/`.

mod args;
mod commands;
mod env;
mod printer;

use clap::Parser;

use crate::printer::Printer;

/// Whether the command line is `berth run …` (its first word that is not an option).
fn is_run_command() -> bool {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|a| a == "run")
}

fn main() -> std::process::ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        // A `berth run` flag's value clap refuses (one of an enum's) is bad input to berth, as
        // it was when berth checked it: 125, as `docker run` exits for its own errors. Other
        // commands keep clap's usage error (2).
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidValue && is_run_command() => {
            let _ = e.print();
            return std::process::ExitCode::from(berth_core::exit::code::ENGINE_ERROR);
        }
        Err(e) => e.exit(),
    };
    // Daemons log at info by default; one-shot commands stay quiet unless BERTH_LOG says otherwise.
    let (default_filter, json_logs) = match &cli.command {
        args::Command::Server(a) => ("info", a.log_format == args::LogFormat::Json),
        args::Command::Runner(a) => ("info", a.log_format == args::LogFormat::Json),
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
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads(&cli.command) {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            printer.error(&format!("cannot start the async runtime: {e}"), None);
            return std::process::ExitCode::from(berth_core::exit::code::ENGINE_ERROR);
        }
    };
    let status = runtime.block_on(commands::dispatch(cli.command, printer));
    std::process::ExitCode::from(status.code())
}

/// The async runtime's worker threads: two for commands that drive a few runs, tokio's default
/// (one per core) for the server, which serves every runner and client at once.
fn worker_threads(command: &args::Command) -> Option<usize> {
    match command {
        args::Command::Server(_) => None,
        _ => Some(2),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `berth run EXTRA true`, parsed.
    fn parse_run(extra: &[&str]) -> Result<args::RunArgs, clap::Error> {
        let mut argv = vec!["berth", "run"];
        argv.extend_from_slice(extra);
        argv.push("true");
        match args::Cli::try_parse_from(argv)? {
            args::Cli {
                command: args::Command::Run(run),
            } => Ok(*run),
            _ => panic!("not a run"),
        }
    }

    #[test]
    fn enum_flags_take_the_core_s_names_and_refuse_others() {
        use berth_core::spec::{Fallback, Isolation, PullPolicy, WorkspaceMode};
        use clap::ValueEnum;
        let run = parse_run;
        let parsed = run(&[
            "--pull",
            "never",
            "--workspace-mode",
            "copy",
            "--isolation",
            "gvisor",
            "--fallback",
            "local",
        ])
        .unwrap();
        assert_eq!(parsed.pull, Some(PullPolicy::Never));
        assert_eq!(parsed.workspace_mode, Some(WorkspaceMode::Copy));
        assert_eq!(parsed.isolation, Some(Isolation::Gvisor));
        assert_eq!(parsed.fallback, Some(Fallback::Local));
        let refused = run(&["--workspace-mode", "rx"]).unwrap_err();
        assert_eq!(refused.kind(), clap::error::ErrorKind::InvalidValue);
        let text = refused.to_string();
        assert!(
            text.contains("--workspace-mode") && text.contains("rx") && text.contains("worktree"),
            "{text}"
        );
        // The names clap offers are the ones berth.toml takes.
        fn same_names<T: ValueEnum + std::str::FromStr + PartialEq + std::fmt::Debug>() {
            for value in T::value_variants() {
                let name = value.to_possible_value().unwrap();
                assert_eq!(name.get_name().parse::<T>().ok().as_ref(), Some(value));
            }
        }
        same_names::<PullPolicy>();
        same_names::<WorkspaceMode>();
        same_names::<Isolation>();
        same_names::<Fallback>();
        for mode in berth_core::egress::EgressMode::value_variants() {
            let name = mode.to_possible_value().unwrap();
            assert_eq!(
                berth_core::egress::EgressMode::parse(name.get_name()).as_ref(),
                Ok(mode)
            );
        }
    }

    #[test]
    fn words_of_a_fixed_set_are_checked_by_clap_with_the_choices_named() {
        let parse = |argv: &[&str]| args::Cli::try_parse_from(argv);
        let run = parse_run;
        let parsed = run(&[
            "--egress",
            "policy",
            "--allow-preset",
            "github",
            "--lifecycle",
            "persistent",
        ])
        .unwrap();
        assert_eq!(
            parsed.egress.mode,
            Some(berth_core::egress::EgressMode::Policy)
        );
        assert_eq!(parsed.egress.allow_presets, ["github"]);
        assert_eq!(parsed.lifecycle, Some(args::Lifecycle::Persistent));
        // Every preset of the core is accepted, and only those.
        for (name, _) in berth_core::egress::PRESETS {
            assert!(run(&["--allow-preset", name]).is_ok(), "{name}");
        }
        for (flag, bad, choices) in [
            ("--egress", "sometimes", "none, policy, open"),
            ("--allow-preset", "nope", "package-registries"),
            ("--lifecycle", "forever", "ephemeral, persistent"),
        ] {
            let e = run(&[flag, bad]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{flag}");
            let text = e.to_string();
            assert!(
                text.contains(flag) && text.contains(bad) && text.contains(choices),
                "{text}"
            );
        }
        // `submit --execution-mode`, `ls --state`, `token create --role`.
        let submit = |extra: &[&str]| {
            let mut argv = vec!["berth", "submit", "--project", "p"];
            argv.extend_from_slice(extra);
            argv.push("true");
            match parse(&argv) {
                Ok(args::Cli {
                    command: args::Command::Submit(submit),
                }) => Ok(*submit),
                Ok(_) => panic!("not a submit"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(
            submit(&[]).unwrap().execution_mode,
            args::ExecutionMode::DockerSandbox
        );
        assert_eq!(
            submit(&["--execution-mode", "local"])
                .unwrap()
                .execution_mode,
            args::ExecutionMode::Local
        );
        let e = submit(&["--execution-mode", "remote"]).unwrap_err();
        assert!(e.to_string().contains("docker-sandbox, local"), "{e}");
        match parse(&["berth", "ls", "--state", "timed_out"])
            .unwrap()
            .command
        {
            args::Command::Ls(ls) => assert_eq!(
                ls.run_state.map(berth_core::RunState::from),
                Some(berth_core::RunState::TimedOut)
            ),
            _ => panic!("not ls"),
        }
        // The names are the store's, for every state a run has on a server.
        for state in berth_core::RunState::ON_COORDINATOR {
            let argv = ["berth", "ls", "--state", state.as_str()];
            match parse(&argv).unwrap().command {
                args::Command::Ls(ls) => {
                    assert_eq!(ls.run_state.map(berth_core::RunState::from), Some(state))
                }
                _ => panic!("not ls"),
            }
        }
        assert!(parse(&["berth", "ls", "--state", "created"]).is_err());
        match parse(&["berth", "token", "create", "--role", "runner"])
            .unwrap()
            .command
        {
            args::Command::Token(t) => match t.command {
                args::TokenCommand::Create { role, .. } => assert_eq!(role.as_str(), "runner"),
                _ => panic!("not create"),
            },
            _ => panic!("not token"),
        }
        let e = parse(&["berth", "token", "create", "--role", "admin"]).unwrap_err();
        assert!(e.to_string().contains("client, runner"), "{e}");
    }

    #[test]
    fn the_server_gets_a_worker_thread_per_core_and_other_commands_two() {
        let threads = |argv: &[&str]| worker_threads(&args::Cli::parse_from(argv).command);
        assert_eq!(threads(&["berth", "server"]), None);
        assert_eq!(threads(&["berth", "ls"]), Some(2));
    }
}
