//! A workspace's berth.toml is untrusted until `berth trust`: a sandboxed run that writes one
//! into its rw workspace cannot widen the next run's sandbox.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{stderr, stdout, Workspace};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

const ATTACK: &str = "allowed_paths = [\"/\"]\n[env]\nLD_PRELOAD = \"/workspace/evil.so\"\n[profiles.p]\nmounts = [\"/etc:/k:ro\"]\n";

#[test]
fn a_berth_toml_written_by_a_run_is_refused_until_trusted_and_again_when_changed() {
    let ws = Workspace::new();
    // berth runs as root here, so the sandbox user is 1000: give it the workspace.
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = ws.path().join("berth.toml");

    // The attack: a sandboxed run writes berth.toml into its rw workspace.
    let o = ws.run(
        &[],
        &[
            "sh",
            "-c",
            &format!("printf '%s' '{ATTACK}' > /workspace/berth.toml"),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), ATTACK);

    // The next run refuses it, naming the file and every widening key, before anything runs.
    let o = ws.run(&[], &["sh", "-c", "echo $LD_PRELOAD"]);
    let err = stderr(&o);
    assert_eq!(code(&o), 125, "{err}");
    for needle in [
        file.display().to_string().as_str(),
        "`allowed_paths`",
        "`env.LD_PRELOAD`",
        "`profiles.p.mounts`",
        "not trusted",
        "hint:",
        "berth trust",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in: {err}");
    }
    assert_eq!(stdout(&o), "", "nothing ran");
    // Any command that reads the file refuses it too.
    let o = ws.berth(&["profiles"]).output().unwrap();
    assert_eq!(code(&o), 125, "{}", stderr(&o));

    // `berth trust --show` says what the file would change, and that it is not trusted.
    let o = ws.berth(&["trust", "--show"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("allowed_paths = [\"/\"]")
            && stdout(&o).contains("env.LD_PRELOAD = \"/workspace/evil.so\"")
            && stdout(&o).contains("profiles.p.mounts = [\"/etc:/k:ro\"]"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("is not trusted"), "{}", stderr(&o));

    // Trusted, the file applies.
    let o = ws.berth(&["trust"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ws.berth(&["trust", "--show", "--json"]).output().unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["state"], "trusted", "{shown}");
    let o = ws.run(&[], &["sh", "-c", "echo $LD_PRELOAD"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "/workspace/evil.so\n");

    // A run changes the trusted file: refused again.
    let o = ws.run(
        &[],
        &[
            "sh",
            "-c",
            "echo 'network = \"bridge\"' >> /workspace/berth.toml",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = ws.run(&[], &["true"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("changed since it was trusted")
            && stderr(&o).contains("`profiles.p.network`"),
        "{}",
        stderr(&o)
    );

    // Trusted again, then revoked: refused again.
    assert_eq!(code(&ws.berth(&["trust"]).output().unwrap()), 0);
    assert_eq!(code(&ws.run(&[], &["true"])), 0);
    assert_eq!(code(&ws.berth(&["trust", "--revoke"]).output().unwrap()), 0);
    let o = ws.run(&[], &["true"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("not trusted"), "{}", stderr(&o));
}

#[test]
fn a_file_that_only_narrows_applies_untrusted() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("berth.toml"),
        "memory = \"64m\"\nnetwork = \"none\"\nread_only = true\ntimeout = \"1m\"\n",
    )
    .unwrap();
    // The memory limit as the sandbox's cgroup (v1 or v2) sees it.
    let o = ws.run(
        &[],
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), (64u64 << 20).to_string());

    let o = ws.berth(&["trust", "--show"]).output().unwrap();
    assert!(stdout(&o).contains("memory = \"64m\""), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("only narrows settings"),
        "{}",
        stderr(&o)
    );

    // More memory than the default is not narrowing.
    std::fs::write(ws.path().join("berth.toml"), "memory = \"4g\"\n").unwrap();
    let o = ws.run(&[], &["true"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    assert!(stderr(&o).contains("`memory`"), "{}", stderr(&o));
}
