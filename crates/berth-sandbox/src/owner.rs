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

/// Whether the process named by these labels is still alive on this host.
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
    match (pid, start) {
        (Some(pid), Some(start)) if process_start_time(pid) == Some(start) => Liveness::Alive,
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
