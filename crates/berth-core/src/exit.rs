//! How a run ends: its recorded state and the exit status `berth run` returns.

use serde::{Deserialize, Serialize};

/// The state of a run: in `run.json` (which never holds the coordinator's `Queued`, `Claimed`
/// or `Lost`) and in the coordinator's store (which never holds `Created`). One type, so a
/// state means the same wherever it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// The record exists; the sandbox is being prepared.
    Created,
    /// Submitted to the coordinator, waiting for a runner.
    Queued,
    /// A runner holds the run's lease and prepares it.
    Claimed,
    /// The command is running.
    Running,
    /// The command exited with status 0.
    Succeeded,
    /// The command exited non-zero or was killed (OOM included).
    Failed,
    TimedOut,
    Cancelled,
    /// The runner holding it went silent past its lease.
    Lost,
    /// berth or the engine could not run the command, or lost track of it.
    Error,
}

impl RunState {
    /// The states a run has on the coordinator, in the order of its life.
    pub const ON_COORDINATOR: [RunState; 9] = [
        Self::Queued,
        Self::Claimed,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
        Self::Lost,
        Self::Error,
    ];

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Self::Created | Self::Queued | Self::Claimed | Self::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Queued => "queued",
            Self::Claimed => "claimed",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
            Self::Error => "error",
        }
    }

    /// A state as the coordinator's store writes it (`Created` is never stored there).
    pub fn parse_stored(s: &str) -> Option<Self> {
        Self::ON_COORDINATOR
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exit statuses with a meaning of their own, as `docker run` and `timeout(1)` use them.
pub mod code {
    pub const TIMED_OUT: u8 = 124;
    pub const ENGINE_ERROR: u8 = 125;
    pub const CANNOT_INVOKE: u8 = 126;
    pub const NOT_FOUND: u8 = 127;
    pub const CANCELLED: u8 = 130;
}

/// What `berth` exits with. A sandboxed command's non-zero exit is data, carried as `External`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// berth itself failed (bad input, engine trouble): 125, as `docker run`.
    Error,
    /// The sandboxed command's own status, or 124/126/127/130.
    External(u8),
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Error => code::ENGINE_ERROR,
            Self::External(code) => code,
        }
    }

    /// The exit status for a run that ended in `state` with the command's `exit_code`.
    pub fn for_run(state: RunState, exit_code: Option<i64>) -> Self {
        match state {
            RunState::Succeeded => Self::Success,
            RunState::TimedOut => Self::External(code::TIMED_OUT),
            RunState::Cancelled => Self::External(code::CANCELLED),
            RunState::Error
            | RunState::Lost
            | RunState::Created
            | RunState::Queued
            | RunState::Claimed
            | RunState::Running => Self::Error,
            RunState::Failed => match exit_code {
                // Shells report 128+N for a signal; statuses beyond a byte keep their low byte
                // as the kernel does, but never turn a failure into 0.
                Some(c) if (1..=255).contains(&c) => Self::External(c as u8),
                Some(c) if c & 0xff != 0 => Self::External((c & 0xff) as u8),
                _ => Self::External(1),
            },
        }
    }
}

/// The final state for a command that exited on its own with `exit_code`.
pub fn state_for_exit(exit_code: i64) -> RunState {
    if exit_code == 0 {
        RunState::Succeeded
    } else {
        RunState::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_stores_every_state_but_created_by_its_serde_name() {
        for state in RunState::ON_COORDINATOR {
            assert_eq!(RunState::parse_stored(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(RunState::parse_stored("created"), None);
        assert_eq!(RunState::parse_stored("Queued"), None);
        let final_states: Vec<_> = RunState::ON_COORDINATOR
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(final_states.len(), 6, "{final_states:?}");
        assert!(!RunState::Created.is_final());
    }

    #[test]
    fn statuses() {
        let check = |state, code| ExitStatus::for_run(state, code).code();
        assert_eq!(check(RunState::Succeeded, Some(0)), 0);
        assert_eq!(check(RunState::Failed, Some(3)), 3);
        assert_eq!(check(RunState::Failed, Some(137)), 137);
        assert_eq!(
            check(RunState::Failed, Some(256)),
            1,
            "never report success for a failure"
        );
        assert_eq!(check(RunState::Failed, None), 1);
        assert_eq!(check(RunState::TimedOut, Some(143)), 124);
        assert_eq!(check(RunState::Cancelled, None), 130);
        assert_eq!(check(RunState::Error, None), 125);
    }

    #[test]
    fn states_serialise_snake_case() {
        assert_eq!(
            serde_json::to_string(&RunState::TimedOut).unwrap(),
            "\"timed_out\""
        );
        assert!(RunState::Error.is_final() && !RunState::Running.is_final());
    }
}
