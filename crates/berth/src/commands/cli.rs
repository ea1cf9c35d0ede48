//! Commands about berth itself: `berth init`, `berth completions`, `berth man`, `berth version`.

use std::io::Write;
use std::path::Path;

use berth_core::ExitStatus;
use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs, InitArgs};
use crate::printer::{data_line, Printer};

/// The berth.toml `berth init` writes: every setting commented out, with its default.
const INIT_TEMPLATE: &str = r#"# berth.toml: settings for berth runs in this directory. Every line is commented out; each
# shows the default. A workspace's berth.toml may only narrow what runs get until you trust it
# (`berth trust`); your own ~/.config/berth/config.toml is always trusted. See the README's
# Configuration section.

# The image of `berth run` without --image or --profile.
# image = "debian:bookworm-slim"
# When to pull it: missing, always or never.
# pull = "missing"

# How the workspace reaches the sandbox: rw, ro, none, copy or worktree.
# workspace_mode = "rw"
# copy_limit = "1g"

# Limits of every run.
# memory = "2g"
# cpus = 2
# pids = 512
# timeout = "10m"
# grace = "10s"

# Network: none, bridge or the name of a network (agent profiles use their egress policy).
# network = "none"
# read_only = false

# Where berth keeps runs [default: the user's data directory].
# state_dir = ".berth"

# Host directories runs may mount besides the workspace (widens: needs `berth trust`).
# allowed_paths = ["~/datasets"]

# Environment variables of every run (widens: needs `berth trust`).
# [env]
# CI = "1"

# A profile of your own, or changes to a built-in one (`berth profiles` lists them).
# [profiles.reviewer]
# description = "Claude as a reviewer"
# image = "berth/claude-code:VERSION"
# command = ["claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose", "{resume}"]
# output = "claude-stream-json"
"#;

/// The template with this berth's version in its image tags.
fn init_template() -> String {
    INIT_TEMPLATE.replace("VERSION", env!("CARGO_PKG_VERSION"))
}

pub fn init(args: InitArgs, printer: Printer) -> ExitStatus {
    let dir = args.dir.unwrap_or_else(|| Path::new(".").to_path_buf());
    let path = dir.join("berth.toml");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path);
    let written = file.and_then(|mut f| f.write_all(init_template().as_bytes()));
    match written {
        Ok(()) => {
            printer.info(&format!(
                "wrote {} (every setting commented out)",
                path.display()
            ));
            data_line(&path.display().to_string());
            ExitStatus::Success
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            printer.error(
                &format!("{} exists; berth init never overwrites it", path.display()),
                Some("edit it, or remove it and run berth init again"),
            );
            ExitStatus::Error
        }
        Err(e) => {
            printer.error(
                &format!("writing {} failed: {e}", path.display()),
                Some("pass a directory you can write: berth init DIR"),
            );
            ExitStatus::Error
        }
    }
}

pub fn completions(args: CompletionsArgs) -> ExitStatus {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "berth", &mut std::io::stdout());
    ExitStatus::Success
}

pub fn man(printer: Printer) -> ExitStatus {
    let man = clap_mangen::Man::new(Cli::command());
    let mut out = std::io::stdout().lock();
    match man.render(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitStatus::Success,
        // A closed pipe (`| head`) is not worth an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitStatus::Success,
        Err(e) => {
            printer.error(&format!("writing the man page failed: {e}"), None);
            ExitStatus::Error
        }
    }
}

pub fn version() -> ExitStatus {
    data_line(&format!("berth {}", env!("CARGO_PKG_VERSION")));
    ExitStatus::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_template_is_a_valid_empty_config() {
        // Every line is a comment, so the file parses and changes nothing; uncommenting the
        // settings gives valid TOML too.
        let text = init_template();
        assert!(text.lines().all(|l| l.is_empty() || l.starts_with('#')));
        let uncommented: String = text
            .lines()
            .filter(|l| l.starts_with("# ") && (l.contains(" = ") || l.starts_with("# [")))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        // berth's own parser, which refuses unknown keys.
        assert!(berth_core::config::parse("berth.toml", &text).is_ok());
        let parsed = berth_core::config::parse("berth.toml", &uncommented);
        assert!(parsed.is_ok(), "{parsed:?}\n{uncommented}");
    }
}
