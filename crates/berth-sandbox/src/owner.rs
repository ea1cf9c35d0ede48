//! Who owns a container: this berth process, identified so that `berth gc` can tell a live
//! owner from a dead one (and from a new process that reused the pid).

use std::collections::BTreeMap;
use std::path::Path;

use berth_core::plan::labels;

/// The start time of process `pid` in clock ticks since boot, from `/proc/PID/stat`.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The owner labels for a container created by this process for the run in `run_dir`.
pub fn owner_labels(run_dir: &Path) -> BTreeMap<String, String> {
    let pid = std::process::id();
    BTreeMap::from([
        (labels::OWNER_PID.to_string(), pid.to_string()),
        (
            labels::OWNER_START.to_string(),
            process_start_time(pid).unwrap_or(0).to_string(),
        ),
        (labels::OWNER_HOST.to_string(), host_name()),
        (labels::RUN_DIR.to_string(), run_dir.display().to_string()),
    ])
}

/// The file in a run directory that names the process which took the run over after its owner
/// died (a restarted runner adopting its container): `PID START` (see [`process_start_time`]).
const ADOPTER: &str = "adopter";

/// Records this process as the one following the run in `run_dir` now: `berth gc` keeps its
/// container while this process lives, though the owner its labels name is dead.
pub fn record_adopter(run_dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = process_start_time(pid).unwrap_or(0);
    let tmp = run_dir.join(".adopter.tmp");
    std::fs::write(&tmp, format!("{pid} {start}\n"))?;
    std::fs::rename(tmp, run_dir.join(ADOPTER))
}

/// Whether the process recorded by [`record_adopter`] in `run_dir` is alive.
fn adopter_alive(run_dir: &Path) -> bool {
    let text = std::fs::read_to_string(run_dir.join(ADOPTER)).unwrap_or_default();
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    match (words.next(), words.next()) {
        (Some(Ok(pid)), Some(Ok(start))) => u32::try_from(pid)
            .ok()
            .and_then(process_start_time)
            .is_some_and(|s| s == start),
        _ => false,
    }
}

/// Whether the process named by these labels (or the process that adopted the run since) is
/// still alive on this host.
pub enum Liveness {
    Alive,
    Dead,
    /// Owned by a berth on another host: not ours to judge.
    OtherHost(String),
}

pub fn owner_liveness(container_labels: &std::collections::HashMap<String, String>) -> Liveness {
    let host = container_labels
        .get(labels::OWNER_HOST)
        .cloned()
        .unwrap_or_default();
    if !host.is_empty() && host != host_name() {
        return Liveness::OtherHost(host);
    }
    let pid: Option<u32> = container_labels
        .get(labels::OWNER_PID)
        .and_then(|p| p.parse().ok());
    let start: Option<u64> = container_labels
        .get(labels::OWNER_START)
        .and_then(|s| s.parse().ok());
    let adopted = || {
        container_labels
            .get(labels::RUN_DIR)
            .is_some_and(|dir| adopter_alive(Path::new(dir)))
    };
    match (pid, start) {
        (Some(pid), Some(start)) if process_start_time(pid) == Some(start) => Liveness::Alive,
        _ if adopted() => Liveness::Alive,
        _ => Liveness::Dead,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_start_time_is_readable() {
        assert!(super::process_start_time(std::process::id()).is_some());
        assert!(super::process_start_time(u32::MAX).is_none());
    }
}
