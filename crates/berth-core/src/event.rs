//! Events of a run, written to `events.jsonl` and, with `--json`, to stdout.

use serde::{Deserialize, Serialize};

use crate::exit::RunState;
use crate::record::Execution;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The bytes of an output event (`Event::Output`, or a stored `stdout`/`stdout_base64` event):
/// its text, or its data decoded from base64; `None` when that is not base64.
pub fn output_bytes(text: Option<&str>, data_base64: Option<&str>) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match (text, data_base64) {
        (Some(text), _) => Some(text.as_bytes().to_vec()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok(),
        (None, None) => Some(Vec::new()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunCreated {
        execution: Execution,
        image: Option<String>,
        command: Vec<String>,
        run_dir: String,
    },
    /// berth could not use Docker and runs on the host instead.
    Fallback {
        reason: String,
    },
    ImagePulled {
        image: String,
    },
    ContainerCreated {
        container_id: String,
        container_name: String,
    },
    /// The run goes into a held container (see `held`): taken from the warm pool, or a
    /// persistent container, reused or newly created.
    HeldContainer {
        container_id: String,
        container_name: String,
        /// `pool` or `persistent`.
        kind: String,
        reused: bool,
    },
    /// The run waits for its persistent container, which another run is using.
    Queued {
        reason: String,
    },
    /// berth removed a held container: evicted to make room, expired, or replaced.
    ContainerEvicted {
        container_name: String,
        reason: String,
    },
    Started,
    /// One line (or a chunk of a very long line) of output, already masked. Output that is not
    /// UTF-8 is carried in `data_base64` instead of `text`.
    Output {
        stream: Stream,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data_base64: Option<String>,
    },
    /// An event of the agent's own output (Claude Code stream-json, Codex JSONL), parsed into
    /// berth's agent event types; unknown kinds are kept raw.
    Agent {
        agent: serde_json::Value,
    },
    /// berth sent a signal to the sandboxed process.
    Signal {
        signal: String,
        reason: String,
    },
    Warning {
        message: String,
    },
    /// A decision of the egress proxy: a connection or request, allowed or denied, with the
    /// rule that decided, bytes each way and duration.
    Egress {
        #[serde(flatten)]
        egress: crate::egress::EgressRecord,
    },
    Exited {
        exit_code: i64,
        oom_killed: bool,
    },
    ArtifactsCollected {
        paths: Vec<String>,
        skipped: Vec<String>,
    },
    ContainerRemoved {
        container_name: String,
    },
    ContainerKept {
        container_name: String,
    },
    Finished {
        state: RunState,
        exit_code: Option<i64>,
        reason: Option<String>,
        /// What the user can do about an `error`, when there is something to do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
}

/// An event with its time and run, as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    pub ts: String,
    pub run_id: String,
    #[serde(flatten)]
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json() {
        let line = EventLine {
            ts: "2026-01-01T00:00:00Z".into(),
            run_id: "r1".into(),
            event: Event::Exited {
                exit_code: 3,
                oom_killed: false,
            },
        };
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(
            json,
            r#"{"ts":"2026-01-01T00:00:00Z","run_id":"r1","event":"exited","exit_code":3,"oom_killed":false}"#
        );
        assert_eq!(serde_json::from_str::<EventLine>(&json).unwrap(), line);
    }
}
