//! `--disk` against the real engine: where the storage driver has no quota (this machine's
//! engine is expected to be one of those), berth refuses before anything is created, exits 125
//! and names the driver; the config key takes the same path; `berth doctor` says whether
//! `--disk` is available; the scratch tmpfs mounts of a read-only sandbox carry a size bound.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::process::Command;

use support::{containers_of_run, stderr, stdout, Workspace};

/// The engine's storage driver and backing file system, as `docker info` reports them.
fn engine_storage() -> (String, Option<String>) {
    let out = Command::new("docker")
        .args(["info", "--format", "{{json .}}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker info: {}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let driver = info["Driver"].as_str().unwrap_or_default().to_string();
    let backing = info["DriverStatus"].as_array().and_then(|pairs| {
        pairs.iter().find_map(|p| {
            (p[0] == "Backing Filesystem").then(|| p[1].as_str().unwrap_or_default().to_string())
        })
    });
    (driver, backing)
}

/// Whether this engine could enforce `--disk` by berth's rule (then the refusal cannot be seen).
fn quota_possible() -> bool {
    let (driver, backing) = engine_storage();
    berth_core::disk::quota_support(&berth_core::disk::Storage {
        driver,
        backing_fs: backing,
    })
    .is_ok()
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The refusal of one run: exit 125, the driver named with what works, the run recorded as
/// `error`, no container created.
fn assert_refused(ws: &Workspace, o: &std::process::Output) {
    let (driver, _) = engine_storage();
    let err = stderr(o);
    assert_eq!(code(o), 125, "{err}");
    assert!(
        err.contains(&format!("storage driver {driver}")) && err.contains("btrfs, zfs"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("drop --disk"),
        "{err}"
    );
    let record = ws.last_record();
    assert_eq!(record["state"], "error", "{record}");
    assert!(
        record["reason"].as_str().unwrap().contains(&driver),
        "{record}"
    );
    assert!(record["container_id"].is_null(), "{record}");
    let run_id = record["id"].as_str().unwrap();
    assert!(containers_of_run(run_id).is_empty(), "a container was made");
    let events = std::fs::read_to_string(ws.last_run().join("events.jsonl")).unwrap_or_default();
    assert!(!events.contains("container_created"), "{events}");
}

#[test]
fn disk_is_refused_with_the_driver_named_and_nothing_created() {
    if quota_possible() {
        println!("skipped: this engine's storage driver has a quota; the refusal cannot be seen");
        return;
    }
    let ws = Workspace::new();
    let o = ws.run(&["--disk", "1g"], &["true"]);
    assert_refused(&ws, &o);

    // The same from berth.toml (a new limit narrows: no trust needed).
    let ws = Workspace::new();
    std::fs::write(ws.path().join("berth.toml"), "disk = \"1g\"\n").unwrap();
    let o = ws.run(&[], &["true"]);
    assert_refused(&ws, &o);
}

#[test]
fn bad_disk_values_are_125_naming_the_flag() {
    let ws = Workspace::new();
    for value in ["lots", "99999999g", "1k", "-1g", "1e20"] {
        let o = ws
            .berth(&[
                "run",
                "--image",
                "unused:x",
                &format!("--disk={value}"),
                "--",
                "true",
            ])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(code(&o), 125, "{value}: {err}");
        assert!(err.contains("--disk") && err.contains(value), "{err}");
    }
    std::fs::write(ws.path().join("berth.toml"), "disk = \"70000g\"\n").unwrap();
    let o = ws
        .berth(&["run", "--image", "unused:x", "--", "true"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(code(&o), 125, "{err}");
    assert!(err.contains("`disk`") && err.contains("64 TiB"), "{err}");
}

#[test]
fn doctor_says_whether_disk_is_available() {
    let ws = Workspace::new();
    let o = ws.berth(&["doctor", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let line = report["engine"]["disk_limit"].as_str().unwrap().to_string();
    let (driver, _) = engine_storage();
    if quota_possible() {
        assert!(line.starts_with("available"), "{line}");
    } else {
        assert!(
            line.starts_with("not available") && line.contains(&driver),
            "{line}"
        );
    }
    let human = stdout(&ws.berth(&["doctor"]).output().unwrap());
    assert!(
        human.contains(&format!("--disk:          {line}")),
        "{human}"
    );
}

#[test]
fn scratch_tmpfs_mounts_are_bounded() {
    let ws = Workspace::new();
    let o = ws.run(
        &["--read-only", "--memory", "64m"],
        &["cat", "/proc/mounts"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mounts = stdout(&o);
    let tmp = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/tmp"))
        .unwrap_or_else(|| panic!("no /tmp mount: {mounts}"));
    assert!(
        tmp.starts_with("tmpfs") && tmp.contains("size=65536k"),
        "{tmp}"
    );
}
