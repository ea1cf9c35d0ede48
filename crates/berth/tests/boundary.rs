//! The sandbox boundary, tried as an attacker would: everything a sandboxed command can write is
//! hostile input to berth's host-side code. Each test is one attack from the boundary issue,
//! against the real engine and the real binary; each fails on a berth without the defence it
//! names.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use support::{image, stderr, stdout, Workspace};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A workspace whose persistent container `name` is removed when the test ends.
struct Held<'a> {
    ws: &'a Workspace,
    name: String,
}

impl Held<'_> {
    fn run(&self, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "--image", image(), "--name", &self.name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        self.ws.berth(&args).output().unwrap()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        support::force_remove(&format!("berth-default--{}", self.name));
    }
}

/// A host directory outside everything the sandbox may see, holding a secret file.
fn host_secret() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("berth-host-secret-")
        .tempdir()
        .unwrap();
    let secret = format!("host-only-{}", unique("s"));
    std::fs::write(dir.path().join("shadow"), &secret).unwrap();
    (dir, secret)
}

/// Every file under `dir` whose content contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let out = Command::new("grep")
        .args(["-rl", "--", needle, dir.to_str().unwrap()])
        .output()
        .unwrap();
    stdout(&out).lines().map(str::to_string).collect()
}

/// Attack 1: a process left behind in a persistent container swaps a directory of `$BERTH_OUT`
/// for a symlink to a host directory while berth collects it. Defences: the supervisor kills
/// every leftover before reporting the exit, and the copy goes through directory handles that
/// never follow a link.
#[test]
fn a_leftover_swapping_berth_out_for_a_symlink_reads_no_host_file() {
    let ws = Workspace::new();
    let held = Held {
        ws: &ws,
        name: unique("swap"),
    };
    let (host, secret) = host_secret();
    let target = host.path().display().to_string();
    let script = format!(
        "mkdir $BERTH_OUT/a && i=0; while [ $i -lt 300 ]; do echo data > $BERTH_OUT/a/f$i; i=$((i+1)); done; \
         ln -s {target} $BERTH_OUT/a.lnk; \
         setsid sh -c 'cd $BERTH_OUT; while true; do mv a a.real; mv a.lnk a; mv a a.lnk; mv a.real a; done # LEFTOVER' </dev/null >/dev/null 2>&1 & \
         sleep 0.2; echo started"
    );
    for round in 0..5 {
        let o = held.run(&[], &script);
        assert_eq!(code(&o), 0, "round {round}: {}", stderr(&o));
        let leaked = files_containing(&ws.state_dir(), &secret);
        assert!(leaked.is_empty(), "host file copied into {leaked:?}");
        // The next run meets no process of the earlier one.
        let o = held.run(
            &[],
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c 'LEFTOVE[R]' || true",
        );
        assert_eq!(stdout(&o).trim(), "0", "leftovers alive: {}", stderr(&o));
    }
    assert_eq!(
        std::fs::read_to_string(host.path().join("shadow")).unwrap(),
        secret
    );
}

/// Attack 6: a process left by one run reads the next run's secret from `/proc/*/environ`.
/// Defence: no process of a run survives it, and its secret files go with it.
#[test]
fn a_later_runs_secret_is_out_of_reach_of_an_earlier_runs_leftovers() {
    let ws = Workspace::new();
    let held = Held {
        ws: &ws,
        name: unique("steal"),
    };
    let stealer = "setsid sh -c 'while true; do cat /proc/[0-9]*/environ 2>/dev/null | tr \"\\0\" \"\\n\" | grep TOK= >> /tmp/stolen; cat /run/secrets/TOK >> /tmp/stolen 2>/dev/null; sleep 0.02; done' </dev/null >/dev/null 2>&1 & echo planted";
    let o = held.run(&[], stealer);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let secret = format!("run-two-secret-{}", unique("v"));
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--name",
            &held.name,
            "--secret",
            "TOK",
            "--",
            "sh",
            "-c",
            "sleep 1; echo used",
        ])
        .env("TOK", &secret)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Run three holds no secret, so nothing would mask what the stealer found.
    let o = held.run(
        &[],
        "cat /tmp/stolen 2>/dev/null; ls /run/secrets; echo end",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        !out.contains(&secret),
        "the leftover stole the secret: {out}"
    );
    assert_eq!(out.trim(), "end", "secret files left behind: {out}");
}

/// Attack 2: the held container's `io/` and `out/` were the sandbox user's, so a leftover could
/// swap the entries berth was about to chown for symlinks to host files. Defence: both stay
/// berth's; the sandbox writes only inside its run's own `$BERTH_OUT`, and berth makes and
/// hands over each run's entries through handles.
#[test]
fn held_directories_accept_no_entry_from_the_sandbox() {
    let ws = Workspace::new();
    let held = Held {
        ws: &ws,
        name: unique("dirs"),
    };
    let o = held.run(
        &[],
        "ln -s /etc/shadow /berth/io/planted 2>/dev/null && echo io-writable; \
         mkdir /berth/out/planted 2>/dev/null && echo out-writable; \
         mv $BERTH_OUT /berth/out/moved 2>/dev/null && echo out-renamable; \
         touch $BERTH_OUT/mine && echo own-out-writable",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "own-out-writable\n");
    let held_dir = ws
        .state_dir()
        .join("held")
        .join(format!("berth-default--{}", held.name));
    for sub in ["io", "out"] {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(held_dir.join(sub)).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o755, "{sub}");
        assert_eq!(meta.uid(), rustix_euid(), "{sub} belongs to berth");
    }
}

fn rustix_euid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    stdout(&out).trim().parse().unwrap()
}

/// Attack 3: a state directory nested in the rw workspace let the sandbox rename its parent and
/// plant `runs/ID/.run.json.tmp` as a symlink, so berth wrote the record through it into a host
/// file. Defences: such a state directory is refused; the default one is outside the workspace.
#[test]
fn a_state_dir_the_sandbox_can_write_is_refused() {
    let ws = Workspace::new();
    for (how, extra, env) in [
        ("flag", vec!["--state-dir", "a/b"], None),
        ("env", vec![], Some("a/b")),
    ] {
        let mut args = vec!["run", "--image", image()];
        args.extend(extra.iter().copied());
        args.extend(["--", "true"]);
        let mut cmd = ws.berth(&args);
        if let Some(dir) = env {
            cmd.env("BERTH_STATE_DIR", ws.path().join(dir));
        }
        let o = cmd.output().unwrap();
        assert_eq!(code(&o), 125, "{how}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("a/b") && err.contains("the workspace") && err.contains("hint:"),
            "{how}: {err}"
        );
        assert!(!ws.path().join("a/b/runs").exists(), "{how}: a run started");
    }
    // With a read-only workspace the same directory is fine (the sandbox cannot write it).
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--workspace-mode",
            "ro",
            "--state-dir",
            "a/b",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // By default nothing of berth's is in the workspace at all.
    let o = ws.run(&[], &["true"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!ws.path().join(".berth").exists());
    assert!(ws.runs_dir().is_dir());
}

/// An older berth's `.berth` in the workspace still answers `ls` and `show`.
#[test]
fn runs_in_an_older_workspace_state_dir_are_still_listed() {
    let ws = Workspace::new();
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--workspace-mode",
            "ro",
            "--state-dir",
            ".berth",
            "--",
            "echo",
            "old",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ls = ws.berth(&["ls", "--json"]).output().unwrap();
    assert_eq!(code(&ls), 0, "{}", stderr(&ls));
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let id = listed["runs"].as_array().and_then(|a| a.first()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let show = ws.berth(&["show", &id[..8]]).output().unwrap();
    assert_eq!(code(&show), 0, "{}", stderr(&show));
}

/// Attack 5: the mount check races the mount. A concurrent process swaps a checked `--mount`
/// source for a symlink to a host directory between berth's policy check and the engine's
/// mount. Defence: the shim compares each mount with the device and inode berth checked and
/// stops the run on a mismatch, naming the mount.
#[test]
fn a_mount_source_swapped_after_the_check_never_shows_the_host() {
    let ws = Workspace::new();
    let (host, secret) = host_secret();
    std::fs::create_dir(ws.path().join("data")).unwrap();
    std::fs::write(ws.path().join("data/shadow"), "workspace data").unwrap();
    std::os::unix::fs::symlink(host.path(), ws.path().join("data.lnk")).unwrap();
    let (stop, racer) = support::swap_racer(ws.path());
    let (mut ran, mut stopped_by_shim) = (0, 0);
    for _ in 0..20 {
        let o = ws.run(&["--mount", "data:/data:ro"], &["cat", "/data/shadow"]);
        assert!(
            !stdout(&o).contains(&secret) && !stderr(&o).contains(&secret),
            "the host directory was mounted: {}",
            stdout(&o)
        );
        match code(&o) {
            0 => ran += 1,
            125 if stderr(&o).contains("the mount at /data is not what berth checked") => {
                stopped_by_shim += 1
            }
            125 => {} // the policy saw the link itself
            other => panic!("exit {other}: {}", stderr(&o)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    println!("ran {ran}, stopped by the shim's check {stopped_by_shim}");
    assert!(ran > 0, "no run got through at all");
}

/// Attack 8: a secret the command writes into `$BERTH_OUT` was stored in clear. Defence: text
/// artifacts are masked like output; binary ones are kept and flagged in the record.
#[test]
fn secrets_in_artifacts_are_masked_or_flagged() {
    let ws = Workspace::new();
    let secret = format!("artifact-secret-{}", unique("a"));
    let o = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--secret",
            "TOK",
            "--",
            "sh",
            "-c",
            "echo \"token=$TOK\" > $BERTH_OUT/report.txt; printf '\\000\\001%s' \"$TOK\" > $BERTH_OUT/blob.bin",
        ])
        .env("TOK", &secret)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let artifacts = ws.last_run().join("artifacts/berth/out");
    let report = std::fs::read_to_string(artifacts.join("report.txt")).unwrap();
    assert_eq!(report, "token=***\n");
    let record = ws.last_record();
    assert!(
        record["artifacts_with_secrets"]
            .to_string()
            .contains("blob.bin"),
        "{record}"
    );
    assert!(stderr(&o).contains("blob.bin"), "{}", stderr(&o));
}

/// Attack 9: a huge tree in `$BERTH_OUT` made a record of tens of megabytes, and a sparse file
/// became gigabytes of host disk. Defences: the record lists at most 1,000 paths and counts the
/// rest; sparse files stay sparse.
#[test]
fn huge_and_sparse_output_stays_small_on_the_host() {
    let ws = Workspace::new();
    let o = ws.run(
        &[],
        &[
            "sh",
            "-c",
            "cd $BERTH_OUT && mkdir many && cd many && i=0; while [ $i -lt 3000 ]; do : > f$i; i=$((i+1)); done; \
             dd if=/dev/zero of=$BERTH_OUT/sparse bs=1 count=0 seek=3G 2>/dev/null; echo tail >> $BERTH_OUT/sparse; echo ok",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let run = ws.last_run();
    let record_size = std::fs::metadata(run.join("run.json")).unwrap().len();
    assert!(record_size < 200_000, "run.json is {record_size} bytes");
    let record = ws.last_record();
    assert_eq!(record["artifacts"].as_array().unwrap().len(), 1000);
    assert!(
        record["artifacts_unlisted"].as_u64().unwrap() >= 2000,
        "{}",
        record["artifacts_unlisted"]
    );
    let sparse = run.join("artifacts/berth/out/sparse");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), (3u64 << 30) + 5);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} bytes on disk",
        meta.blocks() * 512
    );
    assert_eq!(
        std::fs::read_dir(run.join("artifacts/berth/out/many"))
            .unwrap()
            .count(),
        3000,
        "every file is collected, listed or not"
    );
}
