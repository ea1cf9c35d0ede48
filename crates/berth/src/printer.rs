//! What the user sees. Human text goes to stderr, data to stdout; colour only on a terminal and
//! never with NO_COLOR; every error is followed by a `hint:` line when there is something to do.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use berth_core::event::{Event, EventLine, Stream};
use berth_core::exit::RunState;
use berth_core::text::escape_untrusted;
use berth_sandbox::Reporter;

/// Formats berth's own messages on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    color: bool,
}

impl Printer {
    pub fn detect() -> Self {
        let color = std::io::stderr().is_terminal()
            && std::env::var_os(crate::env::NO_COLOR).is_none_or(|v| v.is_empty());
        Self { color }
    }

    pub fn colored(&self) -> bool {
        self.color
    }

    /// Whether stdout (where agent conversations go) may be coloured.
    pub fn colored_stdout(&self) -> bool {
        std::io::stdout().is_terminal()
            && std::env::var_os(crate::env::NO_COLOR).is_none_or(|v| v.is_empty())
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// An error and its hint on stderr. Errors may span lines (a config file's parse error
    /// shows the line at fault), so lines are kept, but each is escaped and every line after the
    /// first is indented: no part of an error can pass for a line of berth's own.
    pub fn error(&self, message: &str, hint: Option<&str>) {
        let mut err = std::io::stderr().lock();
        let message = escape_block(message);
        let _ = writeln!(err, "{} {message}", self.paint("1;31", "error:"));
        if let Some(hint) = hint {
            let hint = escape_block(hint);
            let _ = writeln!(err, "{} {hint}", self.paint("1;36", "hint:"));
        }
    }

    /// One line on stderr. The message is escaped ([`escape_untrusted`]): warnings and notes carry
    /// names a sandbox chose (artifact and workspace entries), which must not start lines of
    /// their own or send escape sequences to the terminal.
    pub fn warning(&self, message: &str) {
        let message = escape_untrusted(message);
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} {message}",
            self.paint("1;33", "warning:")
        );
    }

    /// One line on stderr, escaped as [`Printer::warning`] is.
    pub fn info(&self, message: &str) {
        let message = escape_untrusted(message);
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} {message}",
            self.paint("2", "berth:")
        );
    }

    pub fn ok(&self, message: &str) -> String {
        format!("{} {message}", self.paint("1;32", "ok:"))
    }
}

/// `text` with each line escaped ([`escape_untrusted`]) and every line after the first indented
/// by two spaces.
fn escape_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str("\n  ");
        }
        out.push_str(&escape_untrusted(line));
    }
    out
}

/// Shows a run on a terminal (or a pipe): the command's output as it is, berth's notes on stderr.
pub struct HumanReporter {
    printer: Printer,
    pull_bar: Mutex<Option<indicatif::ProgressBar>>,
    transfer_bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl HumanReporter {
    pub fn new(printer: Printer) -> Self {
        Self {
            printer,
            pull_bar: Mutex::new(None),
            transfer_bar: Mutex::new(None),
        }
    }
}

impl Reporter for HumanReporter {
    fn event(&self, line: &EventLine) {
        let p = &self.printer;
        match &line.event {
            Event::Fallback { reason } => p.warning(&format!(
                "running on the host WITHOUT a sandbox (execution: local): {reason}"
            )),
            Event::ImagePulled { image } => {
                if let Ok(mut bar) = self.pull_bar.lock() {
                    if let Some(bar) = bar.take() {
                        bar.finish_and_clear();
                    }
                }
                p.info(&format!("pulled {image}"));
            }
            Event::Signal { signal, reason }
                if signal == "SIGTERM" && reason == "cancelled by SIGINT" =>
            {
                p.info(&format!(
                    "sending {signal}: {reason}; press Ctrl-C again to kill it at once"
                ))
            }
            Event::Signal { signal, reason } => p.info(&format!("sending {signal}: {reason}")),
            Event::Queued { reason } => p.info(reason),
            Event::HeldContainer {
                container_name,
                kind,
                reused,
                ..
            } => p.info(&match (kind.as_str(), reused) {
                ("pool", _) => format!("warm container {container_name} from the pool"),
                (_, true) => format!("reusing persistent container {container_name}"),
                _ => format!("created persistent container {container_name}"),
            }),
            Event::ContainerEvicted {
                container_name,
                reason,
            } => p.info(&format!("removed {container_name}: {reason}")),
            Event::Agent { agent } => {
                // The agent's conversation is the run's output: rendered readably on stdout.
                if let Ok(event) = serde_json::from_value::<berth_agents::AgentEvent>(agent.clone())
                {
                    if let Some(text) = berth_agents::render(&event, p.colored_stdout()) {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
                    }
                }
            }
            Event::Warning { message } => p.warning(message),
            Event::ArtifactsCollected { paths, skipped } => {
                for s in skipped {
                    p.warning(&format!("artifact entry refused: {s}"));
                }
                if !paths.is_empty() {
                    p.info(&format!("collected {} artifact path(s)", paths.len()));
                }
            }
            Event::ContainerKept { container_name } => {
                p.info(&format!(
                    "kept container {container_name} (remove it with `docker rm {container_name}`)"
                ));
            }
            Event::Finished {
                state: RunState::Error,
                reason,
                hint,
                ..
            } => {
                let reason = escape_untrusted(reason.as_deref().unwrap_or("no reason recorded"));
                let hint = hint.clone().unwrap_or_else(|| {
                    format!("`berth show {}` has the run's full record", line.run_id)
                });
                p.error(
                    &format!("run {} failed: {reason}", line.run_id),
                    Some(&hint),
                );
            }
            Event::Finished {
                state: RunState::Succeeded,
                ..
            } => p.info(&format!("run {} succeeded", line.run_id)),
            Event::Finished { state, reason, .. } => {
                let reason = reason.as_deref().unwrap_or("no reason recorded");
                p.info(&format!("run {} {state}: {reason}", line.run_id));
            }
            _ => {}
        }
    }

    fn output(&self, stream: Stream, data: &[u8]) {
        // A closed pipe (e.g. `| head`) must not stop the run; the output is kept in the logs.
        let _ = match stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(data).and_then(|()| out.flush())
            }
            Stream::Stderr => std::io::stderr().lock().write_all(data),
        };
    }

    fn transfer_progress(&self, what: &str, done: u64, total: u64) {
        self.transfer(what, done, total);
    }

    fn pull_progress(&self, progress: &berth_engine::PullProgress) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let Ok(mut slot) = self.pull_bar.lock() else {
            return;
        };
        let bar = slot.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} pulling {msg} {bytes}/{total_bytes}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        if let (Some(current), Some(total)) = (progress.current, progress.total) {
            bar.set_length(total);
            bar.set_position(current);
        }
        bar.set_message(format!(
            "{} {}",
            progress.layer.clone().unwrap_or_default(),
            progress.status
        ));
        bar.tick();
    }
}

impl HumanReporter {
    fn transfer(&self, what: &str, done: u64, total: u64) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let Ok(mut slot) = self.transfer_bar.lock() else {
            return;
        };
        if done >= total {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
            return;
        }
        let bar = slot.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(what.to_string());
            bar
        });
        bar.set_position(done);
    }
}

/// Events as JSON lines on stdout, output included.
pub struct JsonReporter;

impl Reporter for JsonReporter {
    fn event(&self, line: &EventLine) {
        if let Ok(mut json) = serde_json::to_vec(line) {
            json.push(b'\n');
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&json).and_then(|()| out.flush());
        }
    }

    fn output(&self, _stream: Stream, _data: &[u8]) {}

    fn wants_lines(&self) -> bool {
        true
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    if let Ok(text) = serde_json::to_string_pretty(value) {
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

/// Writes a line of data to stdout.
pub fn data_line(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_kept_escaped_and_indented() {
        assert_eq!(escape_block("one line"), "one line");
        assert_eq!(
            escape_block("bad value\n  |\n1 | x = \u{1b}[2J\nberth: run FAKE succeeded"),
            "bad value\n    |\n  1 | x = \\u{1b}[2J\n  berth: run FAKE succeeded"
        );
        assert_eq!(escape_block("a\r\n"), "a\\r\n  ");
    }
}
