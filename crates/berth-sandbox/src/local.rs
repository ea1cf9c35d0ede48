//! The local fallback: the command as a host process, with the same streaming, record and
//! artifacts as a sandboxed run, but no isolation. Only ever used when Docker is not installed
//! and the user asked for it with `--fallback local`.

use std::os::unix::process::{CommandExt as _, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_core::event::Event;
use berth_core::exit::{state_for_exit, ExitStatus, RunState};
use berth_core::plan::{OUT_TARGET, WORKSPACE_TARGET};
use berth_core::units::format_duration;
use rustix::process::Signal;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::artifacts::{self, Collected};
use crate::output::OutputPipe;
use crate::run::{Interrupts, RunContext};
use crate::SandboxError;

/// Runs the record's command on the host in `workspace`.
pub async fn execute_local(
    ctx: &mut RunContext,
    workspace: &Path,
    secrets: &[(String, String)],
    interrupts: &mut Interrupts,
) -> ExitStatus {
    let spec = ctx.record.spec.clone();
    let out_dir = ctx.run_dir.out_dir();
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        return ctx.finish(RunState::Error, Some(format!("{}: {e}", out_dir.display())));
    }
    let Some((program, args)) = spec.command.split_first() else {
        return ctx.finish(RunState::Error, Some("no command given".into()));
    };
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .current_dir(workspace)
        .env("BERTH_OUT", &out_dir)
        .env("BERTH_RUN_ID", &ctx.record.id)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .envs(secrets.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a stop reaches everything it started.
        .process_group(0);
    let mut child = match tokio::process::Command::from(command).spawn() {
        Ok(child) => child,
        Err(e) => {
            let (code, what) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "the command was not found"),
                _ => (126, "the command could not be invoked"),
            };
            ctx.record.exit_code = Some(code);
            return ctx.finish(RunState::Failed, Some(format!("{what}: {program}: {e}")));
        }
    };
    ctx.record.started_at = Some(crate::clock::now_rfc3339());
    ctx.record.state = RunState::Running;
    ctx.save();
    ctx.emit(Event::Started);

    let (stdout_pipe, stderr_pipe) = match ctx.output_pipes() {
        Ok(pipes) => pipes,
        Err(e) => {
            let _ = child.start_kill();
            return ctx.finish(RunState::Error, Some(e.to_string()));
        }
    };
    let stdout_pump = spawn_pump(child.stdout.take(), stdout_pipe);
    let stderr_pump = spawn_pump(child.stderr.take(), stderr_pipe);
    let pgid = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32));

    let far_future = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = if spec.timeout.is_zero() {
        far_future
    } else {
        // Past what the clock can hold: no deadline.
        Instant::now()
            .checked_add(spec.timeout)
            .unwrap_or(far_future)
    };
    let mut stop: Option<(RunState, String)> = None;
    let mut kill_at: Option<Instant> = None;
    let waited = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = tokio::time::sleep_until(deadline), if stop.is_none() => {
                let reason = format!("timed out after {}", format_duration(spec.timeout));
                signal_group(ctx, pgid, Signal::TERM, "SIGTERM", &reason);
                stop = Some((RunState::TimedOut, reason));
                kill_at = Some(Instant::now().checked_add(spec.grace).unwrap_or(far_future));
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or(far_future)), if kill_at.is_some() => {
                signal_group(ctx, pgid, Signal::KILL, "SIGKILL", "still running after the grace period");
                kill_at = None;
            }
            Some(name) = interrupts.recv() => {
                if stop.is_none() {
                    let reason = format!("cancelled by {name}");
                    signal_group(ctx, pgid, Signal::TERM, "SIGTERM", &reason);
                    stop = Some((RunState::Cancelled, reason));
                    kill_at = Some(Instant::now().checked_add(spec.grace).unwrap_or(far_future));
                } else {
                    signal_group(ctx, pgid, Signal::KILL, "SIGKILL", "second interrupt skips the grace period");
                    kill_at = None;
                }
            }
        }
    };
    let mut output_failure = None;
    let mut agent_outcome = None;
    for pump in [stdout_pump, stderr_pump] {
        match pump.await {
            Ok((Ok(()), outcome, session)) => {
                agent_outcome = agent_outcome.or(outcome);
                if session.is_some() {
                    ctx.record.agent_session = session;
                }
            }
            Ok((Err(e), _, _)) => output_failure = Some(e.to_string()),
            Err(e) => output_failure = Some(e.to_string()),
        }
    }
    let status = match waited {
        Ok(status) => status,
        Err(e) => {
            return ctx.finish(
                RunState::Error,
                Some(format!("waiting for the command failed: {e}")),
            )
        }
    };
    let exit_code = status
        .code()
        .map(i64::from)
        .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
        .unwrap_or(-1);
    ctx.record.exit_code = Some(exit_code);
    ctx.emit(Event::Exited {
        exit_code,
        oom_killed: false,
    });

    collect(ctx, workspace, &out_dir, &spec.artifacts);
    let (state, reason) = match (stop, output_failure) {
        (Some((state, reason)), _) => (state, Some(reason)),
        (None, Some(failure)) => (
            RunState::Error,
            Some(format!("keeping the output failed: {failure}")),
        ),
        (None, None) if exit_code == 0 => (RunState::Succeeded, None),
        (None, None) => (
            state_for_exit(exit_code),
            Some(format!("exited with status {exit_code}")),
        ),
    };
    ctx.finish(state, reason)
}

type PumpResult = (
    Result<(), SandboxError>,
    Option<berth_agents::AgentOutcome>,
    Option<String>,
);

fn spawn_pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: Option<R>,
    mut pipe: OutputPipe,
) -> tokio::task::JoinHandle<PumpResult> {
    tokio::spawn(async move {
        let mut pumped = async {
            if let Some(mut reader) = reader {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = reader
                        .read(&mut buf)
                        .await
                        .map_err(|e| SandboxError::io("<command output>", e))?;
                    if n == 0 {
                        break;
                    }
                    pipe.push(&buf[..n])?;
                }
            }
            Ok(())
        }
        .await;
        let finished = pipe.finish();
        if pumped.is_ok() {
            pumped = finished;
        }
        (pumped, pipe.agent_outcome(), pipe.agent_session())
    })
}

fn signal_group(
    ctx: &mut RunContext,
    pgid: Option<rustix::process::Pid>,
    signal: Signal,
    name: &str,
    reason: &str,
) {
    ctx.emit(Event::Signal {
        signal: name.to_string(),
        reason: reason.to_string(),
    });
    if let Some(pgid) = pgid {
        // Gone already is fine: there is nothing left to signal.
        let _ = rustix::process::kill_process_group(pgid, signal);
    }
}

/// `$BERTH_OUT`, and `--artifact` paths under `/workspace` (the only container paths that have a
/// meaning on the host).
fn collect(ctx: &mut RunContext, workspace: &Path, out_dir: &Path, paths: &[String]) {
    let artifacts_dir = ctx.run_dir.artifacts_dir();
    let mut collected = Collected::default();
    if let Err(e) = artifacts::collect_out_dir(out_dir, &artifacts_dir, &mut collected)
        .and_then(|()| artifacts::remove_out_dir(out_dir))
    {
        ctx.emit(Event::Warning {
            message: format!("collecting {OUT_TARGET} failed: {e}"),
        });
    }
    for path in paths {
        let Some(relative) = Path::new(path).strip_prefix(WORKSPACE_TARGET).ok() else {
            ctx.emit(Event::Warning { message: format!("artifact {path} is outside {WORKSPACE_TARGET}, which is all a local run can collect") });
            continue;
        };
        let source: PathBuf = workspace.join(relative);
        let dest = artifacts_dir.join(path.trim_start_matches('/'));
        if let Err(e) = artifacts::collect_host_path(&source, &dest, &mut collected) {
            ctx.emit(Event::Warning {
                message: format!("collecting artifact {path} failed: {e}"),
            });
        }
    }
    ctx.record.artifacts = collected.paths.clone();
    ctx.emit(Event::ArtifactsCollected {
        paths: collected.paths,
        skipped: collected.skipped,
    });
}
