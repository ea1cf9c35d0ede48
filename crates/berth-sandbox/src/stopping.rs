//! How a running command is stopped, and what its run's final state is: the timeout, interrupts
//! (cancel, Ctrl-C, a runner's signal), the grace period between SIGTERM and SIGKILL, and the
//! last resort for a held container whose run outlives SIGKILL. No I/O and no clock of its own:
//! `run::follow` waits for whichever comes first of the command's exit, an interrupt and
//! [`Stopping::next_wake`], tells [`Stopping`] what happened, and carries out the [`Action`].

use std::time::Duration;

// tokio's, so that tests of the run with a paused clock drive this too.
use tokio::time::Instant;

use berth_core::exit::{state_for_exit, RunState};
use berth_core::units::{format_bytes, format_duration};

/// How long a run in a held container may outlive SIGKILL before its container is killed.
pub(crate) const HELD_KILL_LIMIT: Duration = Duration::from_secs(10);

/// What happened while the command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Happened {
    /// [`Stopping::next_wake`] has come.
    Woke,
    /// An interrupt arrived, named (`SIGINT`, `cancel request`…).
    Interrupted(&'static str),
}

/// What to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send `signal` to the run (for a held container, through its supervisor), with the reason
    /// recorded as an event.
    Signal {
        signal: &'static str,
        reason: String,
    },
    /// The held container's run outlived SIGKILL: kill the container itself.
    KillContainer,
}

/// Why berth stopped the command, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    TimedOut(String),
    Cancelled(String),
}

/// The stopping of one run's command.
#[derive(Debug)]
pub(crate) struct Stopping {
    timeout: Duration,
    grace: Duration,
    /// A held container: SIGKILL goes through its supervisor, so it may not be the end.
    held: bool,
    /// When the timeout strikes; `None` without one (or past what the clock can hold).
    deadline: Option<Instant>,
    stop: Option<Stop>,
    /// When SIGKILL follows the SIGTERM already sent.
    kill_at: Option<Instant>,
    /// When the held container is killed, SIGKILL having been passed on.
    container_kill_at: Option<Instant>,
}

impl Stopping {
    /// A command started `running_for` ago (a run taken over by a restarted runner has used
    /// some of its time), under `timeout` (zero: none) with `grace` between SIGTERM and SIGKILL.
    pub(crate) fn new(
        timeout: Duration,
        grace: Duration,
        running_for: Duration,
        held: bool,
        now: Instant,
    ) -> Self {
        let deadline = if timeout.is_zero() {
            None
        } else {
            now.checked_add(timeout.saturating_sub(running_for))
        };
        Self {
            timeout,
            grace,
            held,
            deadline,
            stop: None,
            kill_at: None,
            container_kill_at: None,
        }
    }

    /// When to wake up if nothing else happens: the earliest of the timeout (until the command
    /// is being stopped), SIGKILL after the grace, and the held container's last resort.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        let deadline = self.deadline.filter(|_| self.stop.is_none());
        [deadline, self.kill_at, self.container_kill_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Why the command was stopped, if it was.
    pub(crate) fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Takes in what happened at `now`; the actions to carry out, in order.
    pub(crate) fn on(&mut self, happened: Happened, now: Instant) -> Vec<Action> {
        match happened {
            Happened::Interrupted(name) if self.stop.is_none() => {
                self.terminate(Stop::Cancelled(format!("cancelled by {name}")), now)
            }
            // A second interrupt skips the grace period.
            Happened::Interrupted(name) => self.kill(
                format!("second interrupt ({name}) skips the grace period"),
                now,
            ),
            Happened::Woke => self.woke(now),
        }
    }

    fn woke(&mut self, now: Instant) -> Vec<Action> {
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if due(self.container_kill_at) {
            self.container_kill_at = None;
            return vec![Action::KillContainer];
        }
        if due(self.kill_at) {
            let reason = format!(
                "still running {} after SIGTERM",
                format_duration(self.grace)
            );
            return self.kill(reason, now);
        }
        if self.stop.is_none() && due(self.deadline) {
            let reason = format!("timed out after {}", format_duration(self.timeout));
            return self.terminate(Stop::TimedOut(reason), now);
        }
        Vec::new()
    }

    /// SIGTERM now, SIGKILL after the grace.
    fn terminate(&mut self, stop: Stop, now: Instant) -> Vec<Action> {
        let reason = match &stop {
            Stop::TimedOut(r) | Stop::Cancelled(r) => r.clone(),
        };
        self.stop = Some(stop);
        self.kill_at = now.checked_add(self.grace);
        vec![Action::Signal {
            signal: "SIGTERM",
            reason,
        }]
    }

    /// SIGKILL now; a held container gets [`HELD_KILL_LIMIT`] to end the run after it.
    fn kill(&mut self, reason: String, now: Instant) -> Vec<Action> {
        self.kill_at = None;
        if self.held {
            self.container_kill_at = now.checked_add(HELD_KILL_LIMIT);
        }
        vec![Action::Signal {
            signal: "SIGKILL",
            reason,
        }]
    }
}

/// How the command ended, as far as the final state goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ended {
    pub exit_code: i64,
    pub oom_killed: bool,
    /// The agent's own report of an error, if it made one.
    pub agent_error: Option<String>,
    /// The sandbox's memory limit, for the OOM reason.
    pub memory_bytes: u64,
}

/// The run's final state and reason, from why berth stopped it (if it did) and how it ended.
/// A stop decides first; then the OOM killer; then the agent's own verdict (an agent that
/// reports an error failed, whatever its exit status says); then the exit status.
pub(crate) fn final_state(stop: Option<Stop>, ended: Ended) -> (RunState, Option<String>) {
    match stop {
        Some(Stop::TimedOut(reason)) => return (RunState::TimedOut, Some(reason)),
        Some(Stop::Cancelled(reason)) => return (RunState::Cancelled, Some(reason)),
        None => {}
    }
    if ended.oom_killed {
        return (
            RunState::Failed,
            Some(format!(
                "killed by the kernel's OOM killer: the sandbox exceeded its memory limit of {}",
                format_bytes(ended.memory_bytes)
            )),
        );
    }
    if let Some(error) = ended.agent_error {
        return (RunState::Failed, Some(error));
    }
    let reason = match ended.exit_code {
        0 => None,
        126 => Some("exited with status 126: the command could not be invoked".to_string()),
        127 => Some("exited with status 127: the command was not found".to_string()),
        code if code > 128 && code < 160 => {
            Some(format!("exited with status {code} (signal {})", code - 128))
        }
        code => Some(format!("exited with status {code}")),
    };
    (state_for_exit(ended.exit_code), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn signal(name: &'static str, reason: &str) -> Vec<Action> {
        vec![Action::Signal {
            signal: name,
            reason: reason.to_string(),
        }]
    }

    #[test]
    fn the_timeout_terminates_then_kills_after_the_grace() {
        let t0 = Instant::now();
        let mut s = Stopping::new(60 * S, 10 * S, Duration::ZERO, false, t0);
        assert_eq!(s.next_wake(), Some(t0 + 60 * S));
        // Woken early (a spurious wake-up): nothing to do.
        assert_eq!(s.on(Happened::Woke, t0 + 30 * S), vec![]);
        assert_eq!(
            s.on(Happened::Woke, t0 + 60 * S),
            signal("SIGTERM", "timed out after 1m")
        );
        assert_eq!(s.stop(), Some(&Stop::TimedOut("timed out after 1m".into())));
        assert_eq!(s.next_wake(), Some(t0 + 70 * S));
        assert_eq!(
            s.on(Happened::Woke, t0 + 70 * S),
            signal("SIGKILL", "still running 10s after SIGTERM")
        );
        // A container of its own ends with SIGKILL: nothing more is due.
        assert_eq!(s.next_wake(), None);
    }

    #[test]
    fn time_already_used_counts_and_no_timeout_never_wakes() {
        let t0 = Instant::now();
        let s = Stopping::new(60 * S, 10 * S, 45 * S, false, t0);
        assert_eq!(s.next_wake(), Some(t0 + 15 * S));
        let s = Stopping::new(60 * S, 10 * S, 90 * S, false, t0);
        assert_eq!(s.next_wake(), Some(t0), "overdue: at once");
        let s = Stopping::new(Duration::ZERO, 10 * S, Duration::ZERO, false, t0);
        assert_eq!(s.next_wake(), None);
        let s = Stopping::new(Duration::MAX, 10 * S, Duration::ZERO, false, t0);
        assert_eq!(s.next_wake(), None, "past what the clock holds: none");
    }

    #[test]
    fn a_second_interrupt_skips_the_grace_and_the_timeout_no_longer_counts() {
        let t0 = Instant::now();
        let mut s = Stopping::new(60 * S, 10 * S, Duration::ZERO, false, t0);
        assert_eq!(
            s.on(Happened::Interrupted("SIGINT"), t0 + S),
            signal("SIGTERM", "cancelled by SIGINT")
        );
        // The grace's end comes before the timeout and replaces it.
        assert_eq!(s.next_wake(), Some(t0 + 11 * S));
        assert_eq!(
            s.on(Happened::Interrupted("SIGINT"), t0 + 2 * S),
            signal(
                "SIGKILL",
                "second interrupt (SIGINT) skips the grace period"
            )
        );
        assert_eq!(s.next_wake(), None);
        // The timeout passing now changes nothing: the run was cancelled.
        assert_eq!(s.on(Happened::Woke, t0 + 61 * S), vec![]);
        assert_eq!(
            s.stop(),
            Some(&Stop::Cancelled("cancelled by SIGINT".into()))
        );
    }

    #[test]
    fn a_held_run_that_outlives_sigkill_has_its_container_killed() {
        let t0 = Instant::now();
        let mut s = Stopping::new(60 * S, 10 * S, Duration::ZERO, true, t0);
        s.on(Happened::Interrupted("cancel request"), t0);
        assert_eq!(
            s.on(Happened::Woke, t0 + 10 * S),
            signal("SIGKILL", "still running 10s after SIGTERM")
        );
        assert_eq!(s.next_wake(), Some(t0 + 10 * S + HELD_KILL_LIMIT));
        assert_eq!(
            s.on(Happened::Woke, t0 + 10 * S + HELD_KILL_LIMIT),
            vec![Action::KillContainer]
        );
        assert_eq!(s.next_wake(), None);
    }

    fn ended(exit_code: i64) -> Ended {
        Ended {
            exit_code,
            oom_killed: false,
            agent_error: None,
            memory_bytes: 512 << 20,
        }
    }

    #[test]
    fn the_final_state_weighs_stop_oom_agent_and_exit_in_that_order() {
        let stop = Some(Stop::Cancelled("cancelled by SIGINT".into()));
        let oom = Ended {
            oom_killed: true,
            agent_error: Some("the agent reported an error: x".into()),
            ..ended(137)
        };
        assert_eq!(
            final_state(stop, oom.clone()),
            (RunState::Cancelled, Some("cancelled by SIGINT".into()))
        );
        let (state, reason) = final_state(None, oom);
        assert_eq!(state, RunState::Failed);
        assert!(reason.unwrap().contains("memory limit of 512 MiB"));
        let agent = Ended {
            agent_error: Some("the agent reported an error: x".into()),
            ..ended(0)
        };
        assert_eq!(
            final_state(None, agent),
            (
                RunState::Failed,
                Some("the agent reported an error: x".into())
            )
        );
        assert_eq!(final_state(None, ended(0)), (RunState::Succeeded, None));
        assert_eq!(
            final_state(None, ended(143)).1.as_deref(),
            Some("exited with status 143 (signal 15)")
        );
        assert_eq!(
            final_state(None, ended(127)).1.as_deref(),
            Some("exited with status 127: the command was not found")
        );
        assert_eq!(final_state(None, ended(3)).0, RunState::Failed);
    }
}
