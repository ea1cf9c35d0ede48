//! Parsers for the JSON-lines output of coding agents, into berth's own [`AgentEvent`]s.
//!
//! - Claude Code: `claude -p --output-format stream-json --verbose` ([`OutputFormat::ClaudeStreamJson`]);
//! - Codex CLI: `codex exec --json` ([`OutputFormat::CodexJsonl`]);
//! - anything else: every line is [`AgentEvent::Text`] ([`OutputFormat::Text`]).
//!
//! [`AgentParser`] takes the output in chunks of any size, cuts it into lines (of any length up
//! to [`AgentParser::DEFAULT_MAX_LINE_BYTES`]) and maps each line to events. Nothing is dropped:
//! every non-empty line yields at least one event, unknown event types are kept whole as
//! [`AgentEvent::Raw`], lines that are not JSON (stderr mixed in, a line cut off) are kept as
//! [`AgentEvent::Text`]. [`AgentParser::outcome`] is the agent's own verdict on the run, from
//! its final result. [`render`] shows an event on a terminal.
//!
//! Architecture Invariant: this crate does no I/O. It works on bytes and strings it is handed.
//!
//! The formats as the CLIs really write them are recorded in `tests/data/` (see its
//! `SOURCES.md`); the notes there are what the parsers are written against.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod claude;
mod codex;
mod event;
mod parser;
mod render;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use event::{AgentEvent, AgentOutcome};
pub use parser::{parse_all, AgentParser};
pub use render::render;

/// Which format an agent's stdout is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// `claude --output-format stream-json --verbose` (with or without
    /// `--include-partial-messages`).
    ClaudeStreamJson,
    /// `codex exec --json`.
    CodexJsonl,
    /// Plain text: every line is an [`AgentEvent::Text`].
    Text,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 3] = [
        OutputFormat::ClaudeStreamJson,
        OutputFormat::CodexJsonl,
        OutputFormat::Text,
    ];

    /// The name used in specs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::ClaudeStreamJson => "claude-stream-json",
            OutputFormat::CodexJsonl => "codex-jsonl",
            OutputFormat::Text => "text",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An output format name that is not one of [`OutputFormat::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutputFormat(pub String);

impl fmt::Display for UnknownOutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown output format {:?}: expected claude-stream-json, codex-jsonl or text",
            self.0
        )
    }
}

impl std::error::Error for UnknownOutputFormat {}

impl FromStr for OutputFormat {
    type Err = UnknownOutputFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownOutputFormat(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_format_names_round_trip() {
        for f in OutputFormat::ALL {
            assert_eq!(f.as_str().parse::<OutputFormat>().unwrap(), f);
            assert_eq!(f.to_string(), f.as_str());
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.as_str())
            );
        }
        let err = "claude".parse::<OutputFormat>().unwrap_err();
        assert!(err.to_string().contains("claude-stream-json"));
    }
}
