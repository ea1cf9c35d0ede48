//! `berth gc`: removes containers whose berth process is gone, and records what happened to
//! their runs.

use std::path::PathBuf;

use berth_core::exit::RunState;
use berth_core::plan::labels;
use berth_engine::Engine;

use crate::clock::now_rfc3339;
use crate::held::{judge, now_epoch, HeldVerdict, Listed};
use crate::owner::{owner_liveness, Liveness};
use crate::rundir::RunDir;
use crate::SandboxError;

/// What gc did with one container.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcAction {
    pub container: String,
    pub run_id: Option<String>,
    /// `removed`, `kept` (its owner is alive), `skipped` (owned on another host), `failed`.
    pub action: &'static str,
    pub detail: String,
}

/// Removes every berth-managed container whose owning berth process has died.
pub async fn collect_garbage<E: Engine>(engine: &E) -> Result<Vec<GcAction>, SandboxError> {
    let mut actions = Vec::new();
    for listed in crate::held::list(engine).await? {
        actions.push(collect_held(engine, &listed).await);
    }
    for container in engine.list_managed().await? {
        if container.labels.contains_key(labels::HELD) {
            continue;
        }
        let run_id = container.labels.get(labels::RUN_ID).cloned();
        let owner_pid = container
            .labels
            .get(labels::OWNER_PID)
            .cloned()
            .unwrap_or_default();
        let mut action = GcAction {
            container: container.name.clone(),
            run_id: run_id.clone(),
            action: "kept",
            detail: String::new(),
        };
        match owner_liveness(&container.labels) {
            Liveness::Alive => {
                action.detail = format!("its berth process {owner_pid} is still running");
            }
            Liveness::OtherHost(host) => {
                action.action = "skipped";
                action.detail = format!("owned by berth on host {host}");
            }
            Liveness::Dead => match engine.remove(&container.id).await {
                Ok(()) => {
                    action.action = "removed";
                    let reason = format!(
                        "berth process {owner_pid} exited without cleaning up; container {} removed by berth gc",
                        container.name
                    );
                    action.detail = match container.labels.get(labels::RUN_DIR) {
                        Some(dir) => mark_run_lost(PathBuf::from(dir), &reason),
                        None => "no run directory recorded".to_string(),
                    };
                }
                Err(e) => {
                    action.action = "failed";
                    action.detail = e.to_string();
                }
            },
        }
        actions.push(action);
    }
    Ok(actions)
}

/// Held containers (persistent, pool) outlive the berth that created them: they are judged by
/// their lock and their record, not by their creator's pid.
async fn collect_held<E: Engine>(engine: &E, listed: &Listed) -> GcAction {
    let mut action = GcAction {
        container: listed.container.name.clone(),
        run_id: None,
        action: "kept",
        detail: String::new(),
    };
    if !listed.on_this_host() {
        action.action = "skipped";
        action.detail = "owned by berth on another host".into();
        return action;
    }
    let lock = listed.dir.try_lock().ok().flatten();
    let info = listed.dir.read_info();
    match judge(listed, &info, lock.is_none(), now_epoch()) {
        HeldVerdict::Keep(why) => action.detail = why,
        HeldVerdict::Remove { why, lost_run } => match crate::held::remove(engine, listed).await {
            Ok(()) => {
                action.action = "removed";
                action.detail = why.clone();
                if let Some((run_id, run_dir)) = lost_run {
                    let reason = format!(
                        "{why}; container {} removed by berth gc",
                        listed.container.name
                    );
                    action.detail = mark_run_lost(PathBuf::from(run_dir), &reason);
                    action.run_id = Some(run_id);
                }
            }
            Err(e) => {
                action.action = "failed";
                action.detail = e.to_string();
            }
        },
    }
    action
}

/// Marks the run `error` with `reason` unless it already ended; says what happened.
pub fn mark_run_lost(dir: PathBuf, reason: &str) -> String {
    let run_dir = RunDir::open(dir);
    // The container is gone: its output FIFOs and raw output directory serve nothing now.
    let _ = std::fs::remove_dir_all(run_dir.io_dir());
    match run_dir.read_record() {
        // Ended, but its berth could not confirm the run's processes gone and left the check
        // for repositories it made: the container is gone now.
        Ok(record) if record.state.is_final() => {
            let checked = crate::git_guard::check_pending(run_dir.path(), &record.id);
            let ended = format!("run {} had already ended ({})", record.id, record.state);
            if checked.is_empty() {
                ended
            } else {
                format!("{ended}; {}", checked.join("; "))
            }
        }
        Ok(mut record) => {
            // The check for repositories the run made, which its berth never got to.
            let checked = crate::git_guard::check_pending(run_dir.path(), &record.id);
            record.finish(RunState::Error, Some(reason.to_string()), now_rfc3339());
            let written = match run_dir.write_record(&record) {
                Ok(()) => format!("run {} marked error", record.id),
                Err(e) => format!("run {} could not be updated: {e}", record.id),
            };
            if checked.is_empty() {
                written
            } else {
                format!("{written}; {}", checked.join("; "))
            }
        }
        Err(e) => format!("run record unreadable: {e}"),
    }
}
