//! Persistent containers and the warm pool against the real engine: reuse, queueing, LRU eviction,
//! idle TTL, pool refill, no reuse of a pool container, hardening, secrets per exec, crash reaping.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::{docker_inspect, image, stderr, stdout, Workspace};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Held by the tests that leave an orphaned container behind (a killed berth) and by those that
/// run `berth gc`, which removes every orphan on the engine: one must not reap the other's.
static GC: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn gc_guard() -> std::sync::MutexGuard<'static, ()> {
    GC.lock().unwrap_or_else(|e| e.into_inner())
}

/// A name no other test (or test process) uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Held containers whose directory lies in this workspace: (name, kind).
fn held_containers(ws: &Workspace) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=berth.held",
            "--format",
            "{{.Names}}\t{{.Label \"berth.held\"}}\t{{.Label \"berth.held-dir\"}}",
        ])
        .output()
        .unwrap();
    let root = ws.data_path().display().to_string();
    let mut list: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let (name, kind, dir) = (parts.next()?, parts.next()?, parts.next()?);
            dir.starts_with(&root)
                .then(|| (name.to_string(), kind.to_string()))
        })
        .collect();
    list.sort();
    list
}

/// Removes the workspace's held containers when the test ends, passed or not.
struct Cleanup<'a>(&'a Workspace);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for (name, _) in held_containers(self.0) {
            support::force_remove(&name);
        }
    }
}

fn record_of(ws: &Workspace, run_dir: &std::path::Path) -> serde_json::Value {
    let _ = ws;
    serde_json::from_slice(&std::fs::read(run_dir.join("run.json")).unwrap()).unwrap()
}

/// The `held_container` event of the newest run.
fn held_event(ws: &Workspace) -> serde_json::Value {
    let events = std::fs::read_to_string(ws.last_run().join("events.jsonl")).unwrap();
    events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "held_container")
        .unwrap_or_else(|| panic!("no held_container event in {events}"))
}

fn md5(text: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf %s \"$V\" | md5sum")
        .env("V", text)
        .output()
        .unwrap();
    stdout(&out).split_whitespace().next().unwrap().to_string()
}

#[test]
fn persistent_container_is_reused_hardened_and_gets_fresh_secrets_per_run() {
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let name = unique("keep");
    let run = |secret: &str, script: &str| {
        ws.berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--secret",
            "TOK",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("TOK", secret)
        .output()
        .unwrap()
    };

    let first = run(
        "first-token-value",
        "echo made > /tmp/marker; md5sum /run/secrets/TOK; echo $TOK",
    );
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert!(
        stderr(&first).contains(&format!(
            "created persistent container berth-default--{name}"
        )),
        "{}",
        stderr(&first)
    );
    assert!(stdout(&first).contains(&md5("first-token-value")));
    assert!(
        !stdout(&first).contains("first-token-value") && stdout(&first).contains("***"),
        "the secret is masked: {}",
        stdout(&first)
    );
    let first_record = ws.last_record();
    assert_eq!(held_event(&ws)["reused"], false);

    // The second run finds the first one's files and gets the refreshed token.
    let second = run(
        "second-token-value",
        "cat /tmp/marker; md5sum /run/secrets/TOK; ls /run/secrets",
    );
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    let out = stdout(&second);
    assert!(out.starts_with("made\n"), "{out}");
    assert!(out.contains(&md5("second-token-value")), "{out}");
    assert!(!out.contains(&md5("first-token-value")), "{out}");
    let second_record = ws.last_record();
    assert_eq!(
        first_record["container_id"], second_record["container_id"],
        "one container for both runs"
    );
    assert_eq!(held_event(&ws)["reused"], true);
    assert_eq!(second_record["state"], "succeeded");

    // Hardened like a cold container; no run and no secret in its configuration.
    let container = format!("berth-default--{name}");
    let inspect = docker_inspect(&container);
    let host = &inspect["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    // The supervisor is PID 1 itself (it reaps; the run cannot signal it).
    assert_eq!(host["Init"], false);
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["MemorySwap"], host["Memory"]);
    assert_eq!(host["PidsLimit"], 512);
    assert_eq!(host["NetworkMode"], "none");
    // The supervisor is root with two capabilities back (to start each command as 1000:1000).
    assert_eq!(inspect["Config"]["User"], "0:0");
    assert_eq!(host["CapAdd"], serde_json::json!(["SETUID", "SETGID"]));
    // The supervisor, its sweep of leftover processes, its user for commands, and the check of
    // the workspace mount.
    let entrypoint = inspect["Config"]["Entrypoint"].as_array().unwrap().clone();
    assert_eq!(
        entrypoint[..4],
        serde_json::json!(["/berth/shim", "--serve", "--sweep", "--run-as=1000:1000"])
            .as_array()
            .unwrap()[..]
    );
    assert!(
        entrypoint[4]
            .as_str()
            .is_some_and(|o| o.starts_with("--expect-mount=") && o.ends_with(":/workspace")),
        "{entrypoint:?}"
    );
    assert_eq!(
        inspect["Config"]["StdinOnce"], false,
        "the supervisor keeps its stdin"
    );
    let text = inspect.to_string();
    for value in ["first-token-value", "second-token-value"] {
        assert!(!text.contains(value), "secret in docker inspect");
    }
    for dir in [ws.last_run(), ws.state_dir().join("held")] {
        let grep = Command::new("grep")
            .args(["-r", "-e", "token-value", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(grep.stdout.is_empty(), "secret on disk: {}", stdout(&grep));
    }

    // `berth ps` shows it with its uses; `berth rm` removes it.
    let ps = ws.berth(&["ps", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == container.as_str())
        .unwrap();
    assert_eq!(row["kind"], "persistent");
    assert_eq!(row["state"], "idle");
    assert_eq!(row["uses"], 2);
    let rm = ws.berth(&["rm", &name]).output().unwrap();
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
    assert!(held_containers(&ws).is_empty());
}

/// Attack: a run in a held container reaches into its supervisor (the shim, its parent, the
/// same user) through `/proc/PPID/mem` to patch out the sweep of leftover processes. Defence:
/// the shim is not dumpable, so no process of the sandbox user may open its memory.
#[test]
fn a_run_cannot_reach_into_its_held_containers_supervisor() {
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let name = unique("mem");
    let probe = "echo uid=$(id -u):$(id -g); grep -E '^Cap(Prm|Eff)' /proc/self/status; \
        for f in mem environ; do if (exec 3</proc/$PPID/$f) 2>/dev/null; then echo \"$f open\"; else echo \"$f refused\"; fi; done; \
        if cat /proc/self/environ >/dev/null; then echo self open; fi";
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            probe,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let said = stdout(&o);
    assert!(
        said.contains("mem refused") && said.contains("environ refused"),
        "{said}"
    );
    // The command itself is an ordinary process (dumpable again after exec) of the sandbox
    // user, without the supervisor's capabilities.
    assert!(said.contains("self open"), "{said}");
    assert!(said.starts_with("uid=1000:1000\n"), "{said}");
    assert!(
        said.contains("CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"),
        "{said}"
    );

    // Attack: stop the supervisor and report a made-up end through PID 1's stdout, then read
    // the next run's frame (its secrets) from PID 1's stdin. Defence: the supervisor is PID 1,
    // which the run can neither stop nor reach through /proc.
    let fake_end = "kill -STOP $PPID; echo ppid=$PPID; \
        if (echo 'berth-shim exit 0' > /proc/1/fd/1) 2>/dev/null; then echo wrote; fi; \
        if (exec 3</proc/1/fd/0) 2>/dev/null; then echo stdin open; fi; sleep 1; echo end";
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            fake_end,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let said = stdout(&o);
    assert!(said.contains("ppid=1\n"), "the supervisor is PID 1: {said}");
    assert!(
        !said.contains("wrote") && !said.contains("stdin open"),
        "{said}"
    );
    assert!(
        said.contains("end"),
        "the run was cut short by a made-up end: {said}"
    );
    // The supervisor was not stopped: the next run goes through.
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--",
            "echo",
            "next",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "next\n");
    // As PID 1 the supervisor inherits the run's orphans, and reaps them: a later run sees no
    // zombie.
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "(sh -c 'exit 0' &); sleep 0.3",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let zombies = "for s in /proc/[0-9]*/stat; do read -r line < $s; case \"${line##*) }\" in Z*) echo zombie;; esac; done; echo checked";
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            zombies,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "checked\n");
}

#[test]
fn two_runs_for_one_persistent_container_queue_and_never_interleave() {
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let name = unique("queue");
    let spawn = |script: &str| {
        ws.berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let first = spawn("echo first-start; sleep 2; echo first-end");
    // Let the first one take the container.
    let deadline = Instant::now() + Duration::from_secs(20);
    while held_containers(&ws).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let second = spawn("echo second");
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert!(
        stderr(&second).contains("waiting for persistent container"),
        "{}",
        stderr(&second)
    );
    // The second run started only after the first had finished.
    let mut records: Vec<serde_json::Value> = std::fs::read_dir(ws.runs_dir())
        .unwrap()
        .map(|e| record_of(&ws, &e.unwrap().path()))
        .collect();
    records.sort_by_key(|r| r["started_at"].as_str().unwrap().to_string());
    assert_eq!(records.len(), 2);
    assert!(
        records[1]["started_at"].as_str().unwrap() >= records[0]["finished_at"].as_str().unwrap(),
        "{records:?}"
    );
    assert_eq!(records[0]["container_id"], records[1]["container_id"]);
}

#[test]
fn least_recently_used_is_evicted_and_idle_ones_expire() {
    let _gc = gc_guard();
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let agent = unique("lru");
    std::fs::write(
        ws.path().join("berth.toml"),
        format!(
            "[profiles.{agent}]\nimage = \"{}\"\nprompt = \"none\"\nlifecycle = \"persistent\"\nmax_containers = 2\nidle_ttl = \"4s\"\n",
            image()
        ),
    )
    .unwrap();
    trust(&ws);
    let run = |name: &str| {
        let o = ws
            .berth(&["run", "--profile", &agent, "--name", name, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        o
    };
    let names = |ws: &Workspace| -> Vec<String> {
        held_containers(ws).into_iter().map(|(n, _)| n).collect()
    };
    let container = |n: &str| format!("berth-{agent}--{n}");

    run("a");
    std::thread::sleep(Duration::from_millis(1100));
    run("b");
    std::thread::sleep(Duration::from_millis(1100));
    // `a` is used again: now `b` is the least recently used.
    run("a");
    std::thread::sleep(Duration::from_millis(1100));
    let third = run("c");
    assert_eq!(names(&ws), [container("a"), container("c")]);
    assert!(
        stderr(&third).contains(&format!("removed {}: least recently used", container("b"))),
        "{}",
        stderr(&third)
    );

    // Past the idle TTL, `berth gc` removes them and says why.
    std::thread::sleep(Duration::from_secs(6));
    let gc = ws.berth(&["gc", "--json"]).output().unwrap();
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
    let actions: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    for n in ["a", "c"] {
        let action = actions
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["container"] == container(n).as_str())
            .unwrap_or_else(|| panic!("{actions}"));
        assert_eq!(action["action"], "removed", "{action}");
        assert!(
            action["detail"].as_str().unwrap().contains("idle_ttl"),
            "{action}"
        );
    }
    assert!(names(&ws).is_empty());
}

#[test]
fn warm_pool_refills_and_never_hands_a_container_out_twice() {
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    std::fs::write(
        ws.path().join("berth.toml"),
        format!("[pool.\"{}\"]\nsize = 2\n", image()),
    )
    .unwrap();
    trust(&ws);
    let pool = |ws: &Workspace| -> Vec<String> {
        held_containers(ws)
            .into_iter()
            .filter(|(_, kind)| kind == "pool")
            .map(|(n, _)| n)
            .collect()
    };

    // Empty pool: the run goes cold and the pool fills meanwhile.
    let o = ws.run(&[], &["hostname"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(pool(&ws).len(), 2, "{}", stderr(&o));

    let mut served = Vec::new();
    let mut hostnames = Vec::new();
    for _ in 0..3 {
        let before = pool(&ws);
        let o = ws.run(&[], &["sh", "-c", "hostname; touch /tmp/used-before"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let record = ws.last_record();
        let name = record["container_name"].as_str().unwrap().to_string();
        assert!(
            before.contains(&name),
            "{name} came from the pool {before:?}"
        );
        assert_eq!(held_event(&ws)["kind"], "pool");
        let after = pool(&ws);
        assert!(!after.contains(&name), "a used container is never kept");
        assert_eq!(after.len(), 2, "refilled to its size: {after:?}");
        served.push(name);
        hostnames.push(stdout(&o));
    }
    served.sort();
    served.dedup();
    assert_eq!(served.len(), 3, "three runs, three containers");
    hostnames.dedup();
    assert_eq!(hostnames.len(), 3);

    // A ready pool container carries the same hardening as a cold one.
    let inspect = docker_inspect(&pool(&ws)[0]);
    let host = &inspect["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(host["MemorySwap"], host["Memory"]);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(inspect["Config"]["User"], "0:0");
    assert_eq!(host["CapAdd"], serde_json::json!(["SETUID", "SETGID"]));
    assert_eq!(inspect["State"]["Running"], true);

    // A run as root never shares a held container's supervisor's user: it goes cold, says
    // so, and no pool container is made for it.
    let before = pool(&ws);
    let o = ws.run(&["--user", "0"], &["id", "-u"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\n");
    assert!(
        stderr(&o).contains("the warm pool is not used for a run as root"),
        "{}",
        stderr(&o)
    );
    assert!(ws.last_record()["container_name"]
        .as_str()
        .unwrap()
        .starts_with("berth-01"));
    assert_eq!(pool(&ws), before);

    // --no-pool runs cold; `berth rm --pool` drains the pool.
    let o = ws.run(&["--no-pool"], &["true"]);
    assert_eq!(code(&o), 0);
    assert!(ws.last_record()["container_name"]
        .as_str()
        .unwrap()
        .starts_with("berth-01"));
    let drained = ws.berth(&["rm", "--pool"]).output().unwrap();
    assert_eq!(code(&drained), 0, "{}", stderr(&drained));
    assert!(pool(&ws).is_empty());
}

/// Starts `berth run EXTRA -- sleep 60` and waits until it runs; returns the process and the
/// run's directory.
fn sleeping_run(ws: &Workspace, extra: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    let mut args = vec!["run", "--image", image()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sleep", "60"]);
    let child = ws
        .berth(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(ws.runs_dir().exists()
        && std::fs::read_to_string(ws.last_run().join("run.json"))
            .unwrap_or_default()
            .contains("\"state\": \"running\""))
    {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, ws.last_run())
}

#[test]
fn a_killed_berth_leaves_its_persistent_container_to_gc_and_the_run_recorded() {
    let _gc = gc_guard();
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let name = unique("crash");
    let (mut child, _) = sleeping_run(&ws, &["--name", &name]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(held_containers(&ws).len(), 1);

    let gc = ws.berth(&["gc", "--json"]).output().unwrap();
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
    assert!(held_containers(&ws).is_empty(), "{}", stdout(&gc));
    let record = ws.last_record();
    assert_eq!(record["state"], "error");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("exited without cleaning up"),
        "{record}"
    );
}

/// Attack: a run plants a repository in the rw workspace, and its berth is killed before the
/// check after the run. Defence: the check stays pending in the run directory, and `berth gc`,
/// which concludes the run, does it.
#[test]
fn a_killed_berths_check_for_planted_repositories_is_done_by_gc() {
    let _gc = gc_guard();
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let owned = std::process::Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(ws.path())
        .status()
        .unwrap();
    assert!(owned.success());
    let mut child = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--",
            "sh",
            "-c",
            "mkdir -p p/.git && echo 'ref: refs/heads/main' > p/.git/HEAD && sleep 60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let planted = ws.path().join("p/.git/HEAD");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !planted.exists() {
        assert!(Instant::now() < deadline, "the run did not plant");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let run_dir = ws.last_run();
    assert!(run_dir.join("git-check.json").is_file(), "no pending check");
    assert!(planted.exists(), "nothing checked yet");

    let gc = ws.berth(&["gc", "--json"]).output().unwrap();
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
    let id = ws.last_record()["id"].as_str().unwrap().to_string();
    assert!(!ws.path().join("p/.git").exists(), "{}", stdout(&gc));
    assert!(ws
        .path()
        .join(format!("p/.git.berth-quarantine-{id}"))
        .is_dir());
    assert!(
        stdout(&gc).contains("the run made a git repository at"),
        "{}",
        stdout(&gc)
    );
    assert!(!run_dir.join("git-check.json").exists());
}

#[test]
fn a_killed_berth_leaves_its_used_pool_container_to_gc_and_the_run_recorded() {
    let _gc = gc_guard();
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    std::fs::write(
        ws.path().join("berth.toml"),
        format!("[pool.\"{}\"]\nsize = 1\n", image()),
    )
    .unwrap();
    trust(&ws);
    let fill = ws.run(&[], &["true"]);
    assert_eq!(code(&fill), 0, "{}", stderr(&fill));
    let (mut child, run_dir) = sleeping_run(&ws, &[]);
    let taken = record_of(&ws, &run_dir)["container_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(taken.starts_with("berth-pool-"), "{taken}");
    child.kill().unwrap();
    child.wait().unwrap();

    let gc = ws.berth(&["gc", "--json"]).output().unwrap();
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
    let left: Vec<String> = held_containers(&ws).into_iter().map(|(n, _)| n).collect();
    assert!(!left.contains(&taken), "{left:?}\n{}", stdout(&gc));
    let record = record_of(&ws, &run_dir);
    assert_eq!(record["state"], "error", "{record}");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("exited without cleaning up"),
        "{record}"
    );
}

#[test]
fn the_next_run_replaces_a_persistent_container_whose_berth_was_killed() {
    let _gc = gc_guard();
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let name = unique("orphan");
    let (mut child, orphan_dir) = sleeping_run(&ws, &["--name", &name]);
    child.kill().unwrap();
    child.wait().unwrap();

    // The orphaned `sleep 60` must not share the container with the next run.
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "ps | grep -c '[s]leep 60' || true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exited without cleaning up"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o).trim(), "0", "a fresh container: {}", stdout(&o));
    let old = record_of(&ws, &orphan_dir);
    assert_eq!(old["state"], "error", "{old}");
    assert_eq!(held_containers(&ws).len(), 1);
}

/// Attack: a run leaves a directory (unwritable) where the next run's secret goes, so every
/// later run of the persistent container fails to get its secrets. Defence: the supervisor
/// empties the secrets directory of anything, and when it cannot, reports an unclean end, and
/// berth replaces the container.
#[test]
fn what_a_run_leaves_in_the_secrets_directory_never_blocks_the_next() {
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let name = unique("sec");
    let run = |script: &str| {
        ws.berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--secret",
            "TOK",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("TOK", "token-value")
        .output()
        .unwrap()
    };
    let o =
        run("rm /run/secrets/TOK && mkdir -p /run/secrets/TOK/d /run/secrets/X && touch /run/secrets/TOK/d/f && echo planted");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "planted\n");
    let o = run("cat /run/secrets/TOK; echo; ls /run/secrets");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "***\nTOK\n");
    // A directory the supervisor cannot empty (no write permission on it): the container goes.
    let o = run("rm /run/secrets/TOK && mkdir -p /run/secrets/TOK/d && touch /run/secrets/TOK/d/f && chmod 500 /run/secrets/TOK/d && echo locked");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "locked\n");
    let first = ws.last_record()["container_id"].clone();
    let o = run("cat /run/secrets/TOK; echo; ls /run/secrets");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "***\nTOK\n");
    assert_ne!(
        ws.last_record()["container_id"],
        first,
        "a new container after the unclean end"
    );
}

/// Attack: a run as root in a persistent container would share its supervisor's user, and
/// could stop it and read the next run's frame (under gVisor). Defence: refused, with the way
/// out.
#[test]
fn a_persistent_container_refuses_runs_as_root() {
    let ws = Workspace::new();
    let _cleanup = Cleanup(&ws);
    let name = unique("root");
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &name,
            "--user",
            "0",
            "--",
            "id",
            "-u",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--user 0 (root) cannot run in a persistent container")
            && err.contains("hint: drop --lifecycle persistent and --name"),
        "{err}"
    );
    assert_eq!(ws.last_record()["state"], "error");
    assert!(held_containers(&ws).is_empty());
}

#[test]
fn bad_lifecycle_flags_are_refused_with_the_field_named() {
    let ws = Workspace::new();
    for (args, expected) in [
        (vec!["--name", "a b"], "--name"),
        (vec!["--lifecycle", "forever"], "--lifecycle"),
        (vec!["--name", "x", "--lifecycle", "ephemeral"], "--name"),
        (vec!["--name", "x", "--keep"], "--keep"),
    ] {
        let o = ws.run(&args, &["true"]);
        assert_eq!(code(&o), 125, "{args:?}");
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    }
    let o = ws.berth(&["rm"]).output().unwrap();
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("hint:"), "{}", stderr(&o));
}

/// `berth trust`: the workspace's berth.toml widens settings (a persistent profile, a pool).
fn trust(ws: &Workspace) {
    let o = ws.berth(&["trust"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}
