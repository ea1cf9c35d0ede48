//! Numbers from the user: out of range is exit 125 naming the flag (or key) and what is
//! accepted, before anything is created; the largest accepted values run without a panic.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{containers_of_run, image, stderr, Workspace};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// No run directory was made, so no container can exist for it either.
fn assert_nothing_started(ws: &Workspace, what: &str) {
    let runs = std::fs::read_dir(ws.runs_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(runs, 0, "{what}: a run was started");
}

#[test]
fn out_of_range_flags_exit_125_naming_the_flag() {
    let ws = Workspace::new();
    let cases: &[(&str, &str, &str)] = &[
        ("--timeout", "1e20", "at most 8760h"),
        ("--timeout", "99999999999999h", "365 days"),
        ("--timeout", "NaN", "at most 8760h"),
        ("--grace", "1e19", "at most 8760h"),
        ("--grace", "-1", "at most 8760h"),
        ("--memory", "99999999999g", "1 TiB"),
        ("--memory", "inf", "6m to 1024g"),
        ("--copy-limit", "99999g", "1 TiB"),
        ("--pids", "99999999999999999999", "1 to 4194304"),
        ("--pids", "0", "1 to 4194304"),
        ("--pids", "-5", "1 to 4194304"),
        ("--cpus", "1e9", "0.01 to 1024"),
        ("--cpus", "NaN", "0.01 to 1024"),
    ];
    for (flag, value, accepted) in cases {
        // Never reaches the engine: any image name will do.
        let flag_value = format!("{flag}={value}");
        let o = ws
            .berth(&[
                "run",
                "--image",
                "berth-test-absent:none",
                &flag_value,
                "--",
                "true",
            ])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(code(&o), 125, "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(&format!("`{value}`")) && err.contains(accepted),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_nothing_started(&ws, &flag_value);
    }
}

#[test]
fn out_of_range_config_values_name_the_key() {
    let ws = Workspace::new();
    for (line, key) in [
        ("timeout = \"1e20\"", "`timeout`"),
        ("grace = \"99999999999999h\"", "`grace`"),
        ("memory = \"99999999999g\"", "`memory`"),
        ("pids = 99999999999999999999", "`pids`"),
        ("cpus = nan", "`cpus`"),
    ] {
        std::fs::write(ws.path().join("berth.toml"), format!("{line}\n")).unwrap();
        let o = ws
            .berth(&["run", "--image", "berth-test-absent:none", "--", "true"])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(code(&o), 125, "{line}: {err}");
        assert!(
            err.contains("berth.toml") && err.contains(key),
            "{line}: {err}"
        );
        assert_nothing_started(&ws, line);
    }
}

#[test]
fn a_misspelled_flag_is_an_error_not_the_command() {
    let ws = Workspace::new();
    for args in [
        &["run", "--imgae", "x", "--", "echo", "hi"][..],
        &["run", "--image", "x", "--timeuot", "5s", "echo", "hi"][..],
        &["run", "-x", "--image", "x", "echo"][..],
    ] {
        let o = ws.berth(args).output().unwrap();
        let err = stderr(&o);
        assert_eq!(code(&o), 2, "{args:?}: {err}");
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
        assert_nothing_started(&ws, &format!("{args:?}"));
    }
    // After `--`, or after the command's first word, it belongs to the command.
    for (args, command) in [
        (&["--", "cmd", "--imgae"][..], &["cmd", "--imgae"][..]),
        (&["cmd", "-n", "--imgae"][..], &["cmd", "-n", "--imgae"][..]),
    ] {
        let mut argv = vec![
            "run",
            "--image",
            "berth-test-absent:none",
            "--pull",
            "never",
        ];
        argv.extend_from_slice(args);
        let o = ws.berth(&argv).output().unwrap();
        assert_eq!(code(&o), 125, "{}", stderr(&o));
        assert_eq!(
            ws.last_record()["spec"]["command"],
            serde_json::json!(command),
            "{args:?}"
        );
    }
}

#[test]
fn the_longest_grace_ends_as_a_timeout_without_a_panic() {
    let ws = Workspace::new();
    let mut args = vec!["run", "--image", image()];
    args.extend(["--timeout", "1s", "--grace", "8760h", "--", "sleep", "5"]);
    let mut child = ws
        .berth(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth run did not end within 60s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(code(&o), 124, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let record = ws.last_record();
    assert_eq!(record["state"], "timed_out", "{record}");
    let run_id = record["id"].as_str().unwrap();
    assert!(containers_of_run(run_id).is_empty(), "a container was left");
}
