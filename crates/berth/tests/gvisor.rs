//! Everything berth does, under gVisor (`--isolation gvisor`), against the real engine: the
//! kernel the sandbox sees, output through the FIFOs, the shim and its supervisor, held
//! containers, copy and worktree workspaces, artifacts, OOM, timeouts and cancel, the mount
//! check, and the egress forwarder.
//!
//! These tests need gVisor registered with the engine as `runsc` and `runsc-net` (`.ci/run`
//! does it; `berth doctor` prints the lines). Without it they fail, naming what is missing.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{containers_of_run, docker_inspect, force_remove, image, stderr, stdout, Workspace};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), berth_nanos())
}

fn berth_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000
}

/// Fails the test early, with the fix, when the engine has no gVisor.
fn require_gvisor(ws: &Workspace) {
    let o = ws.berth(&["doctor", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gvisor = report["engine"]["gvisor"].as_str().unwrap_or_default();
    assert!(
        gvisor.starts_with("usable"),
        "gVisor is not usable on this engine: {gvisor}\n{}",
        report["engine"]["gvisor_hint"]
    );
}

/// `berth run --isolation gvisor --image <test image> EXTRA -- CMD...`
fn run_gvisor(ws: &Workspace, extra: &[&str], command: &[&str]) -> std::process::Output {
    let mut args = vec!["--isolation", "gvisor"];
    args.extend_from_slice(extra);
    ws.run(&args, command)
}

/// `docker inspect` of the last run's container (kept with `--keep`), which is then removed.
fn inspect_kept(ws: &Workspace) -> serde_json::Value {
    let record = ws.last_record();
    let container = record["container_id"].as_str().unwrap();
    let inspect = docker_inspect(container);
    force_remove(container);
    inspect
}

#[test]
fn doctor_says_gvisor_is_usable_and_lists_the_runtimes() {
    let ws = Workspace::new();
    let o = ws.berth(&["doctor"]).output().unwrap();
    let out = stdout(&o);
    assert!(out.contains("runsc, runsc-net"), "{out}");
    assert!(
        out.contains("gVisor:          usable (--isolation gvisor"),
        "{out}"
    );
    require_gvisor(&ws);
}

#[test]
fn the_sandbox_sees_gvisor_s_kernel_with_every_hardening_setting() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let script = "uname -r; dmesg | head -1; id -u; grep CapEff /proc/self/status; \
                  cat /workspace/f.txt";
    std::fs::write(ws.path().join("f.txt"), "from the host\n").unwrap();
    let o = run_gvisor(&ws, &["--keep"], &["sh", "-c", script]);
    let id = ws.last_record()["id"].as_str().unwrap().to_string();
    let inspect = inspect_kept(&ws);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Starting gVisor"), "dmesg is gVisor's: {out}");
    assert!(out.contains("\n1000\n"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.ends_with("from the host\n"), "{out}");
    let host = &inspect["HostConfig"];
    assert_eq!(host["Runtime"], "runsc");
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(host["Init"], true);
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["MemorySwap"], host["Memory"]);
    assert_eq!(host["PidsLimit"], 512);
    // Under gVisor the workspace is checked by its change time, not by device and inode.
    let entrypoint = inspect["Config"]["Entrypoint"].to_string();
    assert!(
        entrypoint.contains("--expect-mount-ctime=") && !entrypoint.contains("--expect-mount="),
        "{entrypoint}"
    );
    assert_eq!(ws.last_record()["spec"]["isolation"], "gvisor");
    assert!(containers_of_run(&id).is_empty());

    // Without --isolation: runc, as before.
    let o = ws.run(&[], &["sh", "-c", "dmesg 2>&1 | head -1; uname -r"]);
    assert!(!stdout(&o).contains("gVisor"), "{}", stdout(&o));
}

#[test]
fn a_network_run_uses_the_runtime_with_a_network() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let o = run_gvisor(
        &ws,
        &["--network", "bridge", "--keep"],
        &[
            "sh",
            "-c",
            "ls /sys/class/net 2>/dev/null; cat /proc/net/dev | wc -l",
        ],
    );
    let inspect = inspect_kept(&ws);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(inspect["HostConfig"]["Runtime"], "runsc-net");
    assert_eq!(inspect["HostConfig"]["NetworkMode"], "bridge");
}

#[test]
fn output_goes_through_the_fifos_exit_codes_and_artifacts_come_back() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    // 8 MiB on stdout, lines on stderr, a file in $BERTH_OUT and one --artifact, exit 3.
    let script = "head -c 8388608 /dev/zero | tr '\\0' a; echo; echo to-stderr >&2; \
                  echo report > $BERTH_OUT/report.txt; echo built > /home/agent/built.txt; exit 3";
    let o = run_gvisor(
        &ws,
        // Not /tmp: gVisor mounts a tmpfs of its own over an image's empty /tmp, and in the
        // test image only root can write elsewhere in the root file system.
        &["--user", "0", "--artifact", "/home/agent/built.txt"],
        &["sh", "-c", script],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(o.stdout.len(), 8 * 1024 * 1024 + 1);
    assert!(stderr(&o).contains("to-stderr"), "{}", stderr(&o));
    let run = ws.last_run();
    let out = std::fs::read_to_string(run.join("artifacts/berth/out/report.txt")).unwrap();
    assert_eq!(out, "report\n");
    let found = Command::new("grep")
        .args(["-rl", "built", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stdout(&found).contains("built.txt"),
        "the --artifact came back: {}",
        stdout(&found)
    );
    let record = ws.last_record();
    assert_eq!(record["exit_code"], 3);
    assert_eq!(record["state"], "failed");
    let log = std::fs::metadata(run.join("stdout.log")).unwrap().len();
    assert_eq!(log, 8 * 1024 * 1024 + 1);
}

#[test]
fn oom_is_reported() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let o = run_gvisor(
        &ws,
        &["--memory", "64m"],
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=400M count=1"],
    );
    let record = ws.last_record();
    assert_eq!(code(&o), 137, "{}\n{record}", stderr(&o));
    assert_eq!(record["oom_killed"], true, "{record}");
    assert!(stderr(&o).contains("OOM"), "{}", stderr(&o));
}

#[test]
fn timeout_and_cancel_stop_the_sandbox() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let o = run_gvisor(&ws, &["--timeout", "2s", "--grace", "1s"], &["sleep", "60"]);
    assert_eq!(code(&o), 124, "{}", stderr(&o));
    let record = ws.last_record();
    assert_eq!(record["state"], "timed_out");
    assert!(containers_of_run(record["id"].as_str().unwrap()).is_empty());

    let mut child = ws
        .berth(&[
            "run",
            "--isolation",
            "gvisor",
            "--image",
            image(),
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_id = loop {
        assert!(Instant::now() < deadline, "the run never started");
        let running = std::fs::read_dir(ws.runs_dir()).ok().and_then(|entries| {
            entries.flatten().find_map(|e| {
                let text = std::fs::read_to_string(e.path().join("run.json")).ok()?;
                text.contains("\"state\": \"running\"")
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
        });
        if let Some(id) = running {
            break id;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let started = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(containers_of_run(&run_id).is_empty());
    assert_eq!(ws.last_record()["state"], "cancelled");
}

#[test]
fn copy_and_worktree_workspaces_hand_back_their_changes() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    std::fs::write(ws.path().join("a.txt"), "one\n").unwrap();
    let o = run_gvisor(
        &ws,
        &["--workspace-mode", "copy"],
        &["sh", "-c", "echo two >> a.txt; echo new > b.txt; cat a.txt"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\ntwo\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "one\n",
        "copy mode leaves the checkout alone"
    );
    let diff = std::fs::read_to_string(ws.last_run().join("diff.patch")).unwrap();
    assert!(diff.contains("+two") && diff.contains("+new"), "{diff}");

    support::git(ws.path(), &["init", "-q"]);
    support::git(ws.path(), &["add", "a.txt"]);
    support::git(ws.path(), &["commit", "-qm", "base"]);
    let o = run_gvisor(
        &ws,
        &["--workspace-mode", "worktree"],
        &["sh", "-c", "echo three >> a.txt"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let diff = std::fs::read_to_string(ws.last_run().join("diff.patch")).unwrap();
    assert!(diff.contains("+three"), "{diff}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "one\n"
    );
}

/// `berth run --isolation gvisor --name NAME --secret TOK -- sh -c SCRIPT` (TOK from the
/// caller's environment).
fn persistent_gvisor_run(ws: &Workspace, name: &str, script: &str) -> Command {
    ws.berth(&[
        "run",
        "--isolation",
        "gvisor",
        "--image",
        image(),
        "--name",
        name,
        "--secret",
        "TOK",
        "--",
        "sh",
        "-c",
        script,
    ])
}

#[test]
fn a_persistent_container_under_gvisor_is_reused_and_swept() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let name = unique("gv");
    let container = format!("berth-default--{name}");
    let run = |script: &str| {
        persistent_gvisor_run(&ws, &name, script)
            .env("TOK", "gvisor-secret-value")
            .output()
            .unwrap()
    };
    // A process left behind by the first run must not survive into the second.
    let first = run("echo made > /tmp/marker; (setsid sleep 300 &); cat /run/secrets/TOK");
    let second = run("cat /tmp/marker; ps -o pid,args | grep -c 'sleep 30[0]'; echo $TOK");
    let inspect = docker_inspect(&container);
    let rm = ws.berth(&["rm", &name]).output().unwrap();
    force_remove(&container);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert!(stdout(&first).contains("***"), "{}", stdout(&first));
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(stdout(&second), "made\n0\n***\n");
    assert_eq!(inspect["HostConfig"]["Runtime"], "runsc");
    let entrypoint = inspect["Config"]["Entrypoint"].to_string();
    assert!(
        entrypoint.contains("--serve") && entrypoint.contains("--expect-mount-ctime="),
        "{entrypoint}"
    );
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
}

/// Attack on a persistent container under gVisor, which lets a process stop PID 1 and open its
/// `/proc/1/fd` when both are of one user: the first run stops the supervisor, fakes its own
/// end on PID 1's stdout and leaves a reader on PID 1's stdin for the next run's frame, with
/// its secret. Defence: the supervisor keeps root as its real and saved user and starts each
/// command as the sandbox user without capabilities (`--run-as`), so none of it is allowed.
#[test]
fn a_run_cannot_stop_or_read_its_persistent_gvisor_supervisor() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let name = unique("gvsup");
    let container = format!("berth-default--{name}");
    let run = |script: &str| {
        persistent_gvisor_run(&ws, &name, script)
            .env("TOK", "next-runs-secret-value")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A stopped supervisor would leave the next run waiting: each run gets a minute.
    let bounded = |child: std::process::Child| {
        let pid = child.id().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = Command::new("kill").args(["-9", &pid]).status();
                rx.recv().unwrap()
            })
    };
    let run = |script: &str| bounded(run(script));
    let attack = "echo uid=$(id -u):$(id -g); grep -E '^Cap(Prm|Eff)' /proc/self/status; \
        if kill -STOP 1 2>/dev/null; then echo stopped; fi; \
        if (echo 'berth-shim exit 0' > /proc/1/fd/1) 2>/dev/null; then echo wrote; fi; \
        if (exec 3</proc/1/fd/0) 2>/dev/null; then echo stdin open; (setsid cat /proc/1/fd/0 > /tmp/stolen &); fi; \
        if (exec 3</proc/1/mem) 2>/dev/null; then echo mem open; fi; \
        sleep 1; echo end";
    let first = run(attack);
    let second = run("echo second");
    let third = run("cat /tmp/stolen 2>/dev/null; echo checked");
    let rm = ws.berth(&["rm", &name]).output().unwrap();
    force_remove(&container);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let said = stdout(&first);
    assert!(said.starts_with("uid=1000:1000\n"), "{said}");
    assert!(
        said.contains("CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"),
        "the command holds no capability: {said}"
    );
    for attack in ["stopped", "wrote", "stdin open", "mem open"] {
        assert!(!said.contains(attack), "{attack}: {said}");
    }
    assert!(
        said.ends_with("end\n"),
        "cut short by a made-up end: {said}"
    );
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(stdout(&second), "second\n");
    assert_eq!(code(&third), 0, "{}", stderr(&third));
    assert_eq!(
        stdout(&third),
        "checked\n",
        "the frame was read by the first run"
    );
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
}

/// The mount check under gVisor: a `--mount` source swapped for a link to a host directory
/// between berth's check and the engine's mount never shows the host directory; the shim's
/// change-time check stops such runs.
#[test]
fn a_mount_source_swapped_after_the_check_never_shows_the_host() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let host = tempfile::tempdir().unwrap();
    let secret = unique("host-secret");
    std::fs::write(host.path().join("shadow"), &secret).unwrap();
    // In a subdirectory: the renames change its entries, not the workspace's own (whose change
    // time the check of /workspace compares).
    let sub = ws.path().join("sub");
    std::fs::create_dir_all(sub.join("data")).unwrap();
    std::fs::write(sub.join("data/shadow"), "workspace data").unwrap();
    std::os::unix::fs::symlink(host.path(), sub.join("data.lnk")).unwrap();
    let (stop, racer) = support::swap_racer(&sub);
    let (mut ran, mut stopped) = (0, 0);
    for _ in 0..12 {
        let o = run_gvisor(
            &ws,
            &["--mount", "sub/data:/data:ro"],
            &["cat", "/data/shadow"],
        );
        assert!(
            !stdout(&o).contains(&secret) && !stderr(&o).contains(&secret),
            "the host directory was mounted: {}",
            stdout(&o)
        );
        match code(&o) {
            0 => ran += 1,
            125 if stderr(&o).contains("the mount at /data is not what berth checked") => {
                stopped += 1
            }
            125 => println!("refused: {}", stderr(&o)),
            other => panic!("exit {other}: {}", stderr(&o)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    println!("ran {ran}, stopped by the shim's check {stopped}");
    // A rename changes the directory's own change time too, so under gVisor the racing runs
    // are mostly stopped; once nothing changes, the check passes.
    assert!(ran + stopped > 0, "every run was refused by the policy");
    let o = run_gvisor(
        &ws,
        &["--mount", "sub/data:/data:ro"],
        &["cat", "/data/shadow"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "workspace data");
}

/// The same check, made to fail for certain: the shim, under runsc, given the change time of
/// another directory than the one mounted.
#[test]
fn the_shim_refuses_a_mount_whose_change_time_differs_under_runsc() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    // A run installs the shim into the cache.
    let o = run_gvisor(&ws, &[], &["true"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let shim = find_file(&ws.data_path().join("cache"), "shim").expect("the installed shim");
    let dir = tempfile::tempdir().unwrap();
    let meta = std::fs::metadata(dir.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let docker = |sec: i64, nsec: i64| {
        Command::new("docker")
            .args(["run", "--rm", "--runtime", "runsc", "--network", "none"])
            .args(["--user", "1000:1000", "-v"])
            .arg(format!("{}:/berth/shim:ro", shim.display()))
            .arg("-v")
            .arg(format!("{}:/data:ro", dir.path().display()))
            .args(["--entrypoint", "/berth/shim", image()])
            .args([
                "--no-setup",
                &format!("--expect-mount-ctime={sec}:{nsec}:/data"),
                "--",
                "echo",
                "checked",
            ])
            .output()
            .unwrap()
    };
    let good = docker(meta.ctime(), meta.ctime_nsec());
    assert_eq!(stdout(&good), "checked\n", "{}", stderr(&good));
    let bad = docker(meta.ctime(), (meta.ctime_nsec() + 1) % 1_000_000_000);
    assert_ne!(code(&bad), 0);
    assert!(
        stderr(&bad).contains("the mount at /data is not what berth checked"),
        "{}",
        stderr(&bad)
    );
    assert!(!stdout(&bad).contains("checked"));
}

fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(name))
        {
            return Some(path);
        }
    }
    None
}

/// The egress forwarder under gVisor: the shim's loopback listener reaches berth's proxy over
/// the host's unix socket (`--host-uds=open`), an allowed host answers, others are refused.
#[test]
fn egress_through_the_proxy_works_under_gvisor() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = "hello-from-upstream\n";
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let script = format!(
        "wget -q -O - http://127.0.0.2:{port}/hello; echo allowed=$?; \
         wget -q -O - http://denied.example/; echo denied=$?"
    );
    let o = run_gvisor(
        &ws,
        &["--allow-host", &format!("127.0.0.2:{port}")],
        &["sh", "-c", &script],
    );
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    assert!(out.contains("hello-from-upstream\nallowed=0"), "{out}");
    assert!(!out.contains("denied=0"), "{out}");
    let record = ws.last_record();
    assert_eq!(record["egress"]["allowed"], 1, "{record}");
    assert_eq!(record["egress"]["denied"], 1, "{record}");
}

/// The warm pool under gVisor: a gVisor run fills the pool with gVisor containers, the next
/// gVisor run is served by one of them (never twice), and a runc run is never served by one.
#[test]
fn the_warm_pool_serves_gvisor_runs_from_gvisor_containers_only() {
    let ws = Workspace::new();
    require_gvisor(&ws);
    std::fs::write(
        ws.path().join("berth.toml"),
        format!("[pool.\"{}\"]\nsize = 1\n", image()),
    )
    .unwrap();
    let trusted = ws.berth(&["trust"]).output().unwrap();
    assert_eq!(code(&trusted), 0, "{}", stderr(&trusted));
    let root = ws.data_path().display().to_string();
    let pool = || -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=berth.held=pool",
                "--format",
                "{{.Names}}\t{{.Label \"berth.held-dir\"}}",
            ])
            .output()
            .unwrap();
        stdout(&out)
            .lines()
            .filter(|l| l.contains(&root))
            .filter_map(|l| l.split('\t').next().map(str::to_string))
            .collect()
    };
    let script = ["sh", "-c", "dmesg | head -1; touch /tmp/used"];

    let cold = run_gvisor(&ws, &[], &script);
    let filled = pool();
    let ready_runtime = filled
        .first()
        .map(|name| docker_inspect(name)["HostConfig"]["Runtime"].clone());
    let warm = run_gvisor(&ws, &[], &script);
    let warm_record = ws.last_record();
    let after_warm = pool();
    // A runc run does not take the gVisor container.
    let runc = ws.run(&[], &["true"]);
    let runc_record = ws.last_record();
    let drained = ws.berth(&["rm", "--pool"]).output().unwrap();
    for name in pool() {
        force_remove(&name);
    }

    assert_eq!(code(&cold), 0, "{}", stderr(&cold));
    assert_eq!(
        filled.len(),
        1,
        "the gVisor run filled the pool: {filled:?}"
    );
    assert_eq!(ready_runtime, Some(serde_json::json!("runsc")));
    assert_eq!(code(&warm), 0, "{}", stderr(&warm));
    assert!(
        stdout(&warm).contains("Starting gVisor"),
        "{}",
        stdout(&warm)
    );
    assert_eq!(
        warm_record["container_name"].as_str(),
        Some(filled[0].as_str()),
        "the second gVisor run came from the pool"
    );
    assert!(
        !after_warm.contains(&filled[0]),
        "a used container is never kept"
    );
    assert_eq!(code(&runc), 0, "{}", stderr(&runc));
    assert!(
        !filled.contains(
            &runc_record["container_name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        ) && !after_warm.contains(
            &runc_record["container_name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        ),
        "a runc run took a gVisor container: {runc_record}"
    );
    assert_eq!(code(&drained), 0, "{}", stderr(&drained));
}
