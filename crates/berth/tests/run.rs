//! `berth run` against the real engine, with the real binary and a locally built image.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{containers_of_run, docker_inspect, force_remove, stderr, stdout, Workspace};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Waits until the workspace's (single) run has a running container; returns the run id.
fn wait_until_running(ws: &Workspace) -> String {
    running_or_exited(ws, None).expect("no child to exit")
}

/// Waits until the workspace's run has a running container (Some(run id)), or until `child`,
/// the `berth run` that starts it, exits first (None).
fn running_or_exited(ws: &Workspace, mut child: Option<&mut Child>) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(entries) = std::fs::read_dir(ws.runs_dir()) {
            for entry in entries.flatten() {
                let record =
                    std::fs::read_to_string(entry.path().join("run.json")).unwrap_or_default();
                if record.contains("\"state\": \"running\"") {
                    return Some(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if let Some(child) = child.as_mut() {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the run did not start within 30s");
}

#[test]
fn exit_codes_pass_through() {
    let ws = Workspace::new();
    let cases: &[(&[&str], &[&str], i32)] = &[
        (&[], &["true"], 0),
        (&[], &["sh", "-c", "exit 3"], 3),
        (&[], &["no-such-command"], 127),
        (&[], &["/etc"], 126),
        (&["--timeout", "1s", "--grace", "1s"], &["sleep", "30"], 124),
    ];
    for (extra, command, expected) in cases {
        let o = ws.run(extra, command);
        assert_eq!(code(&o), *expected, "{command:?}: {}", stderr(&o));
        let run_id = ws.last_record()["id"].as_str().unwrap().to_string();
        assert!(
            containers_of_run(&run_id).is_empty(),
            "{command:?} left a container"
        );
    }
    // 125: berth could not run it at all (image absent, pulling forbidden).
    let o = ws
        .berth(&[
            "run",
            "--image",
            "berth-test-absent:none",
            "--pull",
            "never",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("berth-test-absent:none") && stderr(&o).contains("--pull never"),
        "{}",
        stderr(&o)
    );
    assert_eq!(ws.last_record()["state"], "error");
}

#[test]
fn argv_is_never_a_shell_string() {
    let ws = Workspace::new();
    let o = ws.run(&[], &["echo", "$HOME; echo injected", "`id`"]);
    assert_eq!(code(&o), 0);
    assert_eq!(stdout(&o), "$HOME; echo injected `id`\n");
}

#[test]
fn hardening_is_visible_in_inspect_and_inside() {
    let ws = Workspace::new();
    let o = ws.run(&["--keep"], &["sh", "-c", "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; cat /proc/1/cmdline | tr '\\0' ' '"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let record = ws.last_record();
    let name = record["container_name"].as_str().unwrap().to_string();
    let out = stdout(&o);
    let inspect = docker_inspect(&name);
    force_remove(&name);

    assert!(out.starts_with("1000\n"), "non-root user: {out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("docker-init"), "PID 1 is the init: {out}");
    assert!(
        stderr(&o).contains(&format!("kept container {name}")),
        "{}",
        stderr(&o)
    );

    let host = &inspect["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(host["CapAdd"].is_null());
    assert_eq!(host["Privileged"], false);
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"]),
        "default seccomp kept: no override"
    );
    assert_eq!(host["Init"], true);
    assert_eq!(host["Memory"], 2_i64 << 30);
    assert_eq!(host["MemorySwap"], host["Memory"], "no swap");
    assert_eq!(host["NanoCpus"], 2_000_000_000_i64);
    assert_eq!(host["PidsLimit"], 512);
    assert_eq!(host["NetworkMode"], "none");
    for ns in [
        "PidMode",
        "IpcMode",
        "UTSMode",
        "UsernsMode",
        "CgroupnsMode",
    ] {
        assert_ne!(host[ns], "host", "{ns}");
    }
    assert_eq!(host["LogConfig"]["Type"], "none");
    let config = &inspect["Config"];
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(config["Labels"]["berth.managed"], "true");
    assert_eq!(config["Labels"]["berth.run-id"], record["id"]);
    assert_eq!(
        inspect["Name"],
        format!("/berth-{}", record["id"].as_str().unwrap())
    );
    assert_eq!(config["WorkingDir"], "/workspace");
}

#[test]
fn user_zero_is_explicit_and_warned() {
    let ws = Workspace::new();
    let o = ws.run(&["--user", "0"], &["id", "-u"]);
    assert_eq!(stdout(&o), "0\n");
    assert!(stderr(&o).contains("warning: --user 0"), "{}", stderr(&o));
}

#[test]
fn memory_limit_is_enforced_and_oom_reported() {
    let ws = Workspace::new();
    let o = ws.run(
        &["--memory", "32m"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],
    );
    let record = ws.last_record();
    assert_eq!(code(&o), 137, "{}", stderr(&o));
    assert_eq!(record["oom_killed"], true);
    assert_eq!(record["state"], "failed");
    assert!(
        record["reason"].as_str().unwrap().contains("OOM"),
        "{record}"
    );
    assert!(stderr(&o).contains("OOM"), "{}", stderr(&o));
}

#[test]
fn listens_on_port_80_with_network_none() {
    let ws = Workspace::new();
    let o = ws.run(
        &[],
        &[
            "sh",
            "-c",
            "nc -l -p 80 -e echo hello-from-80 & sleep 0.5; nc 127.0.0.1 80",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello-from-80\n");
}

#[test]
fn read_only_root_keeps_tmp_and_home_writable() {
    let ws = Workspace::new();
    let o = ws.run(&["--read-only"], &["sh", "-c", "touch /tmp/a && touch \"$HOME/b\" && echo $BERTH_OUT && touch /berth/out/c && if touch /root-file 2>/dev/null; then echo WRITABLE; fi"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "/berth/out\n");
}

#[test]
fn workspace_modes_and_state_dir_masking() {
    let ws = Workspace::new();
    // berth runs as root here, so the sandbox user is 1000: give it the workspace.
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(ws.path().join("file.txt"), "data").unwrap();
    let o = ws.run(
        &[],
        &[
            "sh",
            "-c",
            "cat file.txt && touch written && ls -A .berth | wc -l",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "data0\n",
        "the state dir is masked inside the sandbox"
    );
    assert!(ws.path().join("written").exists());
    let o = ws.run(&["--workspace-mode", "ro"], &["touch", "ro-attempt"]);
    assert_ne!(code(&o), 0);
    assert!(!ws.path().join("ro-attempt").exists());
    let o = ws.run(
        &["--workspace-mode", "none"],
        &["sh", "-c", "pwd; ls /workspace 2>&1 | head -1"],
    );
    assert_eq!(code(&o), 0);
    assert!(!stdout(&o).contains("file.txt"), "{}", stdout(&o));
}

#[test]
fn secrets_never_leak_and_are_masked() {
    let ws = Workspace::new();
    let secret = "tok-3f9a$X-verysecret";
    let b64 = "dG9rLTNmOWEkWC12ZXJ5c2VjcmV0"; // base64 of the secret
    let script = "echo env=$BERTH_T_SECRET; echo file=$(cat /run/secrets/BERTH_T_SECRET); stat -c '%a %u' /run/secrets/BERTH_T_SECRET; printf %s \"$BERTH_T_SECRET\" | base64; echo err=$BERTH_T_SECRET >&2; echo $BERTH_T_SECRET > $BERTH_OUT/leak.txt; sleep 0.2";
    let mut cmd = ws.berth(&[
        "run",
        "--image",
        support::image(),
        "--keep",
        "--secret",
        "BERTH_T_SECRET",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let o = cmd.env("BERTH_T_SECRET", secret).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("env=***") && out.contains("file=***"), "{out}");
    assert!(
        out.contains("400 1000"),
        "mode 0400, owned by the sandbox user: {out}"
    );
    assert!(!out.contains(secret) && !out.contains(b64), "{out}");
    assert!(!stderr(&o).contains(secret));

    let record = ws.last_record();
    let name = record["container_name"].as_str().unwrap().to_string();
    let inspect = Command::new("docker")
        .args(["inspect", &name])
        .output()
        .unwrap();
    force_remove(&name);
    assert!(inspect.status.success());
    assert!(
        !String::from_utf8_lossy(&inspect.stdout).contains(secret),
        "the secret shows in docker inspect"
    );
    // Nothing berth wrote holds the value; the artifact the command wrote is the command's own.
    let mut leaks = Vec::new();
    for entry in walk(&ws.last_run()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if String::from_utf8_lossy(&bytes).contains(secret) && !entry.ends_with("leak.txt") {
            leaks.push(entry);
        }
    }
    assert!(leaks.is_empty(), "secret found in {leaks:?}");
    assert_eq!(
        record["spec"]["secrets"],
        serde_json::json!(["BERTH_T_SECRET"])
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn missing_secret_is_a_clear_error() {
    let ws = Workspace::new();
    let o = ws
        .berth(&[
            "run",
            "--image",
            support::image(),
            "--secret",
            "BERTH_T_UNSET_SECRET",
            "--",
            "true",
        ])
        .env_remove("BERTH_T_UNSET_SECRET")
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("BERTH_T_UNSET_SECRET") && stderr(&o).contains("hint:"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn large_output_is_byte_exact_with_bounded_memory() {
    let ws = Workspace::new();
    let rss_file = ws.path().join("rss");
    // 100 MB of random bytes: the sandbox prints their hash on stderr and the bytes on stdout.
    let script = "head -c 100000000 /dev/urandom > /tmp/blob; sha256sum /tmp/blob | cut -d' ' -f1 >&2; cat /tmp/blob";
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(support::berth_bin());
    cmd.args([
        "run",
        "--image",
        support::image(),
        "--memory",
        "512m",
        "--",
        "sh",
        "-c",
        script,
    ])
    .current_dir(ws.path())
    .env("NO_COLOR", "1")
    .env("XDG_CACHE_HOME", ws.data_path().join("cache"))
    .env("XDG_DATA_HOME", ws.data_path())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut out = child.stdout.take().unwrap();
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        sha2::Digest::update(&mut hasher, &buf[..n]);
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let expected_hash = stderr(&o).lines().next().unwrap().trim().to_string();
    assert_eq!(total, 100_000_000);
    assert_eq!(
        hex::encode(sha2::Digest::finalize(hasher)),
        expected_hash,
        "live stdout"
    );
    let log = std::fs::read(ws.last_run().join("stdout.log")).unwrap();
    assert_eq!(log.len(), 100_000_000);
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&log)),
        expected_hash,
        "stdout.log"
    );
    let peak_kib: u64 = std::fs::read_to_string(&rss_file)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    // A debug build; the release binary is measured by the benchmark against its 32 MiB target.
    assert!(
        peak_kib < 64 * 1024,
        "berth's peak RSS was {peak_kib} KiB for 100 MB of output"
    );
}

#[test]
fn many_lines_at_exit_are_not_lost() {
    let ws = Workspace::new();
    let o = ws.run(&["--json"], &["sh", "-c", "seq 1 20000; seq 1 5000 >&2"]);
    assert_eq!(code(&o), 0);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stdout_lines = lines
        .iter()
        .filter(|l| l["event"] == "output" && l["stream"] == "stdout")
        .count();
    let stderr_lines = lines
        .iter()
        .filter(|l| l["event"] == "output" && l["stream"] == "stderr")
        .count();
    assert_eq!((stdout_lines, stderr_lines), (20000, 5000));
    assert_eq!(lines.last().unwrap()["event"], "finished");
    assert_eq!(lines.last().unwrap()["state"], "succeeded");
    let log = std::fs::read_to_string(ws.last_run().join("stderr.log")).unwrap();
    assert_eq!(log.lines().count(), 5000);
    let events = std::fs::read_to_string(ws.last_run().join("events.jsonl")).unwrap();
    for kind in [
        "run_created",
        "container_created",
        "started",
        "exited",
        "container_removed",
        "finished",
    ] {
        assert!(
            events.contains(&format!("\"event\":\"{kind}\"")),
            "{kind} missing from events.jsonl"
        );
    }
}

#[test]
fn sigint_cancels_and_removes_the_container() {
    let ws = Workspace::new();
    let mut child = ws
        .berth(&[
            "run",
            "--image",
            support::image(),
            "--grace",
            "2s",
            "--",
            "sleep",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_id = wait_until_running(&ws);
    assert_eq!(containers_of_run(&run_id).len(), 1);
    let started = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        containers_of_run(&run_id).is_empty(),
        "the container outlived the cancel"
    );
    let record = ws.last_record();
    assert_eq!(record["state"], "cancelled");
    assert!(record["reason"].as_str().unwrap().contains("SIGINT"));
}

#[test]
fn kill_9_then_gc_leaves_nothing() {
    let ws = Workspace::new();
    let mut child = ws
        .berth(&["run", "--image", support::image(), "--", "sleep", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_id = wait_until_running(&ws);
    child.kill().unwrap(); // SIGKILL: berth cannot clean up
    child.wait().unwrap();
    assert_eq!(
        containers_of_run(&run_id).len(),
        1,
        "the orphan exists before gc"
    );
    let o = ws.berth(&["gc"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("removed  berth-{run_id}")),
        "{}",
        stdout(&o)
    );
    assert!(containers_of_run(&run_id).is_empty());
    let record = ws.last_record();
    assert_eq!(record["state"], "error");
    assert!(
        record["reason"].as_str().unwrap().contains("berth gc"),
        "{record}"
    );
}

#[test]
fn artifacts_are_copied_and_links_never_followed() {
    let ws = Workspace::new();
    let script = "mkdir -p /tmp/a/sub && echo one > /tmp/a/sub/f.txt && ln -s /etc/passwd /tmp/a/host-link && ln -s ../../../../../../etc /tmp/a/up \
                  && echo out > $BERTH_OUT/report.txt && ln -s /etc/shadow $BERTH_OUT/shadow";
    let o = ws.run(&["--artifact", "/tmp/a"], &["sh", "-c", script]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let artifacts = ws.last_run().join("artifacts");
    assert_eq!(
        std::fs::read_to_string(artifacts.join("tmp/a/sub/f.txt")).unwrap(),
        "one\n"
    );
    assert_eq!(
        std::fs::read_to_string(artifacts.join("berth/out/report.txt")).unwrap(),
        "out\n"
    );
    for refused in ["tmp/a/host-link", "tmp/a/up", "berth/out/shadow"] {
        assert!(
            std::fs::symlink_metadata(artifacts.join(refused)).is_err(),
            "{refused} was written"
        );
    }
    assert!(
        stderr(&o).contains("artifact entry refused"),
        "{}",
        stderr(&o)
    );
    assert!(
        !ws.last_run().join("out").exists(),
        "the raw output directory is emptied"
    );
}

#[test]
fn mount_policy_refuses_with_path_and_rule() {
    let ws = Workspace::new();
    std::os::unix::fs::symlink("/var/run/docker.sock", ws.path().join("sock-link")).unwrap();
    std::fs::create_dir(ws.path().join("data")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let outside_path = outside.path().to_str().unwrap().to_string();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cases: Vec<(String, &str)> = vec![
        (
            "sock-link:/var/run/docker.sock".into(),
            "Docker engine socket",
        ),
        ("/etc:/host-etc".into(), "system path"),
        ("/:/host".into(), "system path"),
        ("/proc:/p".into(), "system path"),
        (format!("{home}:/home-copy"), "home directory"),
        (format!("{outside_path}:/x"), "outside the allowed roots"),
        ("does-not-exist:/x".into(), "does not exist"),
        ("data:relative".into(), "not an absolute path"),
        ("data:/data/../etc".into(), "contains `..`"),
        ("data:/proc/x".into(), "shadow"),
        ("data:/".into(), "shadow"),
        ("data:/workspace".into(), "used twice"),
    ];
    for (mount, rule) in cases {
        let o = ws.run(&["--mount", &mount], &["true"]);
        assert_eq!(code(&o), 125, "{mount}");
        let err = stderr(&o);
        let source = mount.split(':').next().unwrap();
        assert!(
            err.contains(rule),
            "{mount}: expected rule `{rule}` in {err}"
        );
        assert!(
            err.contains(source) || err.contains(mount.split(':').nth(1).unwrap()),
            "{mount}: path not named in {err}"
        );
    }
    // Two mounts on one destination.
    let o = ws.run(&["--mount", "data:/d", "--mount", "data:/d/"], &["true"]);
    assert!(stderr(&o).contains("used twice"), "{}", stderr(&o));
    // Allowed: inside the workspace, and an allowed path from berth.toml.
    std::fs::write(
        ws.path().join("berth.toml"),
        format!("allowed_paths = [\"{outside_path}\"]\n"),
    )
    .unwrap();
    // A workspace file that widens settings applies once the user trusts it.
    let trusted = ws.berth(&["trust"]).output().unwrap();
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    std::fs::write(outside.path().join("o.txt"), "outside-ok").unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = ws.run(
        &[
            "--mount",
            "data:/d",
            "--mount",
            &format!("{outside_path}:/o"),
        ],
        &["cat", "/o/o.txt"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "outside-ok");
    let o = ws.run(&["--mount", "data:/d"], &["touch", "/d/x"]);
    assert_ne!(code(&o), 0, "mounts are read-only by default");
}

#[test]
fn config_files_set_defaults_and_reject_unknown_keys() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("berth.toml"),
        format!(
            "image = \"{}\"\n[env]\nFROM_CONFIG = \"yes\"\n",
            support::image()
        ),
    )
    .unwrap();
    let trusted = ws.berth(&["trust"]).output().unwrap();
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    let o = ws
        .berth(&[
            "run",
            "--env",
            "FLAG=1",
            "--",
            "sh",
            "-c",
            "echo $FROM_CONFIG$FLAG",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "yes1\n", "{}", stderr(&o));
    std::fs::write(
        ws.path().join("berth.toml"),
        "image = \"x\"\ntimeuot = \"1m\"\n",
    )
    .unwrap();
    let o = ws.berth(&["run", "--", "true"]).output().unwrap();
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("berth.toml") && stderr(&o).contains("timeuot"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_flags_name_the_flag() {
    let ws = Workspace::new();
    for (flag, value) in [
        ("--memory", "lots"),
        ("--timeout", "soon"),
        ("--network", "host"),
        ("--user", "root"),
        ("--cpus", "x"),
        ("--workspace-mode", "rx"),
    ] {
        let o = ws.run(&[flag, value], &["true"]);
        assert_eq!(code(&o), 125, "{flag}");
        assert!(
            stderr(&o).contains(flag) && stderr(&o).contains(value),
            "{flag}: {}",
            stderr(&o)
        );
    }
    let o = ws.run(&["--publish", "8080"], &["true"]);
    assert!(stderr(&o).contains("--network bridge"), "{}", stderr(&o));
}

#[test]
fn ls_and_show_list_runs() {
    let ws = Workspace::new();
    ws.run(&[], &["sh", "-c", "exit 4"]);
    let id = ws.last_record()["id"].as_str().unwrap().to_string();
    let o = ws.berth(&["ls", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list["runs"][0]["id"], id.as_str());
    assert_eq!(list["runs"][0]["exit_code"], 4);
    let o = ws.berth(&["show", &id[..12], "--json"]).output().unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = &shown["run"];
    assert_eq!(run["state"], "failed");
    assert_eq!(run["detail"]["execution"], "docker");
    assert!(run["container_id"].is_string() && run["detail"]["image_id"].is_string());
    let o = ws.berth(&["show", "zzzz"]).output().unwrap();
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("no run matches `zzzz`") && stderr(&o).contains("hint:"));
}

#[test]
fn second_interrupt_skips_the_grace_period() {
    let ws = Workspace::new();
    // The shell ignores SIGTERM, so only SIGKILL ends it; the grace would last a minute.
    let mut child = ws
        .berth(&[
            "run",
            "--image",
            support::image(),
            "--grace",
            "60s",
            "--",
            "sh",
            "-c",
            "trap '' TERM; while true; do sleep 1; done",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_id = wait_until_running(&ws);
    let started = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first interrupt waits for the grace period"
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the second interrupt did not skip the grace"
    );
    assert!(containers_of_run(&run_id).is_empty());
    let events = std::fs::read_to_string(ws.last_run().join("events.jsonl")).unwrap();
    assert!(
        events.contains("\"signal\":\"SIGKILL\"") && events.contains("second interrupt"),
        "{events}"
    );
}

#[test]
fn timeout_is_recorded() {
    let ws = Workspace::new();
    let o = ws.run(&["--timeout", "1s", "--grace", "1s"], &["sleep", "30"]);
    assert_eq!(code(&o), 124);
    let record = ws.last_record();
    assert_eq!(record["state"], "timed_out");
    assert_eq!(record["reason"], "timed out after 1s");
}

#[test]
fn absent_image_that_cannot_be_pulled_says_both() {
    let ws = Workspace::new();
    let image = format!("berth-test-absent-{}:x", std::process::id());
    let o = ws
        .berth(&["run", "--image", &image, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    let err = stderr(&o);
    assert!(
        err.contains("is not present locally") && err.contains("pulling it failed"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn publish_binds_loopback_only_on_a_named_network() {
    let ws = Workspace::new();
    let network = format!("berth-test-net-{}", std::process::id());
    let created = Command::new("docker")
        .args(["network", "create", "--label", "berth.test=true", &network])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", stderr(&created));
    // The host port is picked here and handed to Docker, so it may be taken before Docker binds
    // it (e.g. by a sibling test's child, forked while the probe listener was open, which holds
    // it until it execs): then the run cannot start and is tried again on another port.
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    let (mut child, run_id, port) = loop {
        attempt += 1;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let publish = format!("80:{port}");
        let mut child = ws
            .berth(&[
                "run",
                "--image",
                support::image(),
                "--keep",
                "--network",
                &network,
                "--publish",
                &publish,
                "--",
                "sh",
                "-c",
                "nc -l -p 80 -e echo published; sleep 1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(run_id) = running_or_exited(&ws, Some(&mut child)) {
            break (child, run_id, port);
        }
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(
            attempt < ATTEMPTS && err.contains("address already in use"),
            "berth run --publish {publish} did not start:\n{err}"
        );
        println!("port {port} was taken, trying another one:\n{err}");
        // `--keep` may have left the failed run's container: "error: run ID failed: ...".
        let failed = err.split("run ").nth(1).and_then(|r| r.split(' ').next());
        for name in failed.map(containers_of_run).unwrap_or_default() {
            force_remove(&name);
        }
    };
    let mut reply = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && reply.is_empty() {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.read_to_string(&mut reply);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait().unwrap();
    let name = format!("berth-{run_id}");
    let inspect = docker_inspect(&name);
    force_remove(&name);
    let _ = Command::new("docker")
        .args(["network", "rm", &network])
        .output();
    assert_eq!(reply, "published\n");
    let bindings = &inspect["HostConfig"]["PortBindings"]["80/tcp"];
    assert_eq!(bindings[0]["HostIp"], "127.0.0.1");
    assert_eq!(bindings[0]["HostPort"], port.to_string());
    assert_eq!(inspect["HostConfig"]["NetworkMode"], network.as_str());
}

#[test]
fn unknown_network_is_a_clear_error() {
    let ws = Workspace::new();
    let o = ws.run(&["--network", "berth-test-no-such-net"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(
        stderr(&o).contains("berth-test-no-such-net") && stderr(&o).contains("hint:"),
        "{}",
        stderr(&o)
    );
    assert!(containers_of_run(ws.last_record()["id"].as_str().unwrap()).is_empty());
}

/// A full file system where the run directory is: the command's writes of its output fail (in
/// CI once, ten runs at a time exited 1 with no output and nothing said). berth names the file
/// system and how little is free. The state directory is a 4 MiB tmpfs made for the test.
#[test]
fn a_full_disk_under_the_run_directory_is_named() {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let ws = Workspace::new();
    let state = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(state.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let _unmount = Unmount(state.path().to_path_buf());
    let state_dir = state.path().display().to_string();
    let o = ws.run(
        &["--state-dir", &state_dir, "--workspace-mode", "none"],
        &["sh", "-c", "head -c 8000000 /dev/zero"],
    );
    let err = stderr(&o);
    assert_ne!(code(&o), 0, "{err}");
    assert!(
        err.contains(&format!(
            "warning: the file system holding {state_dir}/runs/"
        )) && err.contains("free: the command's output is written there"),
        "{err}"
    );
    // The run still ends recorded, with the reason.
    let runs: Vec<_> = std::fs::read_dir(state.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].join("run.json")).unwrap()).unwrap();
    assert_eq!(record["state"], "error", "{record}");
    assert!(
        record["reason"]
            .as_str()
            .is_some_and(|r| r.contains("No space left on device")),
        "{record}"
    );
}
