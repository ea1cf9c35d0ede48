//! Workspace modes for real: copy mode (upload through the archive API, the changed tree back
//! through the safe extraction, locally and on an engine reached over ssh) and worktree mode
//! (a git worktree bind-mounted, its patch handed back), with `berth diff`, `berth apply` and
//! `berth branch`. Every test uses real git in its own temporary checkout and checks that the
//! user's files are left exactly as they were.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::ssh::*;
use support::*;

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// The binary file of the fixtures: NUL bytes make git treat it as binary.
const BINARY: &[u8] = b"\x00\x01\x02\xffbinary\x00";

/// A committed checkout: files to modify, delete and keep, a binary file, an executable script,
/// and files that `.gitignore` and `.berthignore` leave out.
fn checkout(ws: &Workspace) {
    let dir = ws.path();
    git(dir, &["init", "--quiet"]);
    // The tests keep berth's cache (the shim) in the workspace: out of git's sight, as a user's
    // global excludes would do.
    write(dir, ".git/info/exclude", b".cache/\n");
    write(dir, ".gitignore", b"*.log\n");
    write(dir, ".berthignore", b"secret.txt\n");
    write(dir, "mod.txt", b"one\ntwo\nthree\n");
    write(dir, "del.txt", b"to be deleted\n");
    write(dir, "keep.txt", b"kept\n");
    write(dir, "bin.dat", BINARY);
    write(dir, "run.sh", b"#!/bin/sh\necho script-ran\n");
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    git(dir, &["add", "--all"]);
    git(dir, &["commit", "--quiet", "-m", "start"]);
    // Not committed: one ignored by git, one by berth only.
    write(dir, "noise.log", b"ignored by .gitignore\n");
    write(dir, "secret.txt", b"ignored by .berthignore\n");
}

/// A file's content, hashed.
fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Every file outside `.git`, berth's state directory and the tests' cache: path → (mode, hash
/// of the content or of the link's target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u64)> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, (u32, u64)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if [".git", ".berth", ".cache"]
                .iter()
                .any(|n| rel == Path::new(n))
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                into.insert(rel, (meta.permissions().mode(), 0));
                walk(root, &path, into);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                into.insert(rel, (0, hash(target.as_os_str().as_encoded_bytes())));
            } else {
                into.insert(
                    rel,
                    (
                        meta.permissions().mode(),
                        hash(&std::fs::read(&path).unwrap()),
                    ),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// What the user would check: files, `git status`, HEAD, worktrees and branches.
#[derive(Debug, PartialEq)]
struct CheckoutState {
    files: BTreeMap<PathBuf, (u32, u64)>,
    status: String,
    head: String,
    worktrees: String,
    branches: String,
}

fn state_of(dir: &Path) -> CheckoutState {
    CheckoutState {
        files: snapshot(dir),
        status: git(dir, &["status", "--porcelain"]),
        head: git(dir, &["rev-parse", "HEAD"]),
        worktrees: git(dir, &["worktree", "list", "--porcelain"]),
        branches: git(dir, &["branch", "--list"]),
    }
}

fn run_id(ws: &Workspace) -> String {
    ws.last_record()["id"].as_str().unwrap().to_string()
}

/// What the sandboxed command does to the workspace: modify, add (also in a new directory),
/// delete, change a binary file; it also reports what it saw.
const CHANGE: &str = "\
test -e noise.log && echo saw-gitignored; \
test -e secret.txt && echo saw-berthignored; \
test -d .git/hooks && echo saw-users-git; \
echo owner=$(stat -c %u:%g mod.txt):$(stat -c %u:%g .):$(id -u):$(id -g); \
./run.sh; \
echo four >> mod.txt; \
echo new > new.txt; \
mkdir -p sub && echo deep > sub/f.txt; \
rm del.txt; \
printf '\\000\\003changed' > bin.dat; \
echo done";

#[test]
fn copy_mode_uploads_the_unignored_tree_and_brings_the_changes_back() {
    let ws = Workspace::new();
    checkout(&ws);
    let before = state_of(ws.path());

    let out = ws.run(&["--workspace-mode", "copy"], &["sh", "-c", CHANGE]);
    println!("stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        !said.contains("saw-"),
        "ignored files or the user's .git were uploaded: {said}"
    );
    assert!(
        said.contains("script-ran"),
        "the executable bit was lost: {said}"
    );
    // berth runs as root here, so the sandbox user is 1000:1000; the copy is theirs, top included.
    let (uid, gid) = if unsafe_is_root() {
        (1000, 1000)
    } else {
        let id = |flag| {
            let out = Command::new("id").arg(flag).output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse::<u32>()
                .unwrap()
        };
        (id("-u"), id("-g"))
    };
    assert!(
        said.contains(&format!("owner={uid}:{gid}:{uid}:{gid}:{uid}:{gid}")),
        "{said}"
    );
    assert!(said.contains("done"));

    // The user's checkout is exactly as it was.
    assert_eq!(state_of(ws.path()), before);

    // The changed tree is in the run directory, modes kept; ignored files never travelled.
    let run = ws.last_run();
    let tree = run.join("workspace");
    assert_eq!(
        std::fs::read_to_string(tree.join("mod.txt")).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("new.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("sub/f.txt")).unwrap(),
        "deep\n"
    );
    assert!(!tree.join("del.txt").exists());
    assert!(!tree.join("noise.log").exists() && !tree.join("secret.txt").exists());
    assert_eq!(
        std::fs::read(tree.join("bin.dat")).unwrap(),
        b"\x00\x03changed"
    );
    let mode = std::fs::metadata(tree.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o111,
        0o111,
        "run.sh came back without its executable bit"
    );

    // diff.patch, in git's format, has every kind of change; `berth diff` prints it.
    let patch = std::fs::read_to_string(run.join("diff.patch")).unwrap();
    println!("diff.patch:\n{patch}");
    assert!(patch.contains("diff --git a/mod.txt b/mod.txt") && patch.contains("+four"));
    assert!(patch.contains("diff --git a/new.txt b/new.txt\nnew file mode"));
    assert!(patch.contains("diff --git a/del.txt b/del.txt\ndeleted file mode"));
    assert!(patch.contains("diff --git a/bin.dat b/bin.dat") && patch.contains("GIT binary patch"));
    assert!(!patch.contains("run.sh") && !patch.contains("keep.txt"));
    let id = run_id(&ws);
    let shown = ws.berth(&["diff", &id]).output().unwrap();
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert_eq!(stdout(&shown), patch);
    let record = ws.last_record();
    assert_eq!(record["workspace"]["mode"], "copy", "{record}");
    assert!(
        record["workspace"]["upload"]["bytes"].as_u64().unwrap() > 0,
        "{record}"
    );
    assert!(
        record["workspace"]["download"]["millis"].is_u64(),
        "{record}"
    );
    assert!(containers_of_run(&id).is_empty());

    // `berth apply` takes the changes over into the checkout.
    let applied = ws.berth(&["apply", &id]).output().unwrap();
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("mod.txt")).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    assert!(!ws.path().join("del.txt").exists());
    assert_eq!(
        std::fs::read(ws.path().join("bin.dat")).unwrap(),
        b"\x00\x03changed"
    );
}

#[test]
fn copy_mode_refuses_a_workspace_over_the_limit_and_a_read_only_root() {
    let ws = Workspace::new();
    write(ws.path(), "big.bin", &vec![7u8; 64 * 1024]);
    // The tests' cache (the shim) lives in the workspace; a user's would not.
    write(ws.path(), ".berthignore", b".cache/\n");

    let out = ws.run(
        &["--workspace-mode", "copy", "--copy-limit", "16k"],
        &["true"],
    );
    let err = stderr(&out);
    println!("{err}");
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("copy limit") && err.contains("--copy-limit"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains(".berthignore"),
        "{err}"
    );

    // The .berthignore the hint suggests makes it fit.
    write(ws.path(), ".berthignore", b".cache/\nbig.bin\n");
    let out = ws.run(
        &["--workspace-mode", "copy", "--copy-limit", "16k"],
        &["sh", "-c", "test ! -e big.bin && echo fits"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("fits"));
    assert!(containers_of_run(&run_id(&ws)).is_empty());

    // A read-only root cannot hold the copy: refused before anything starts, with what to do.
    let out = ws.run(&["--workspace-mode", "copy", "--read-only"], &["true"]);
    let err = stderr(&out);
    println!("{err}");
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("--read-only cannot be combined with --workspace-mode copy"),
        "{err}"
    );
    assert!(err.contains("hint: drop --read-only"), "{err}");
}

#[test]
fn copy_mode_brings_no_link_back_that_points_outside() {
    let ws = Workspace::new();
    write(ws.path(), "a.txt", b"a\n");
    let passwd_before = std::fs::read("/etc/passwd").unwrap();

    let out = ws.run(
        &["--workspace-mode", "copy"],
        &[
            "sh",
            "-c",
            "ln -s /etc/passwd x; ln -s ../../.. up; mkdir d; ln -s ../../../etc d/etc; \
             ln -s a.txt inside; echo b > a.txt",
        ],
    );
    let err = stderr(&out);
    println!("stderr: {err}");
    assert_eq!(out.status.code(), Some(0), "{err}");

    // Each link pointing out is refused and reported; nothing was written or followed.
    for name in ["workspace/x", "workspace/up", "workspace/d/etc"] {
        assert!(
            err.contains("workspace entry refused") && err.contains(name),
            "{name} not reported: {err}"
        );
    }
    let tree = ws.last_run().join("workspace");
    for name in ["x", "up", "d/etc"] {
        assert!(
            std::fs::symlink_metadata(tree.join(name)).is_err(),
            "{name} was extracted"
        );
    }
    // A link within the tree is kept as a link.
    assert_eq!(
        std::fs::read_link(tree.join("inside")).unwrap(),
        Path::new("a.txt")
    );
    assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "b\n");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    // Only the tree's own entries were written, all inside the run's workspace directory.
    let mut written: Vec<String> = snapshot(&tree)
        .keys()
        .map(|p| p.display().to_string())
        .collect();
    written.sort();
    assert_eq!(written, ["a.txt", "d", "inside"]);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "a\n"
    );
    assert!(containers_of_run(&run_id(&ws)).is_empty());
}

#[test]
fn copy_and_worktree_modes_work_on_an_engine_reached_over_ssh() {
    let dir = tempfile::Builder::new()
        .prefix("berth-sshd-")
        .tempdir()
        .unwrap();
    let key = dir.path().join("id_client");
    keygen(&key);
    let sshd = start_sshd(dir.path(), &key);
    let known_hosts = dir.path().join("known_hosts");
    let ws = Workspace::new();
    checkout(&ws);
    std::fs::write(
        ws.path().join("berth.toml"),
        ssh_engine("box", sshd.port, &key, &known_hosts, ""),
    )
    .unwrap();
    let trusted = ws.berth(&["trust"]).output().unwrap();
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    let before = state_of(ws.path());

    let out = ws.run(
        &[
            "--engine",
            "box",
            "--workspace-mode",
            "copy",
            "--artifact",
            "/tmp/made.txt",
        ],
        &[
            "sh",
            "-c",
            &format!("{CHANGE}; echo result > $BERTH_OUT/r.txt; echo made > /tmp/made.txt"),
        ],
    );
    println!("stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("script-ran") && !stdout(&out).contains("saw-"));
    assert_eq!(state_of(ws.path()), before);

    let run = ws.last_run();
    let tree = run.join("workspace");
    assert_eq!(
        std::fs::read_to_string(tree.join("mod.txt")).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    assert!(!tree.join("del.txt").exists());
    let patch = std::fs::read_to_string(run.join("diff.patch")).unwrap();
    assert!(patch.contains("+four") && patch.contains("new file mode"));
    assert!(patch.contains("deleted file mode") && patch.contains("GIT binary patch"));
    assert_eq!(
        std::fs::read_to_string(run.join("artifacts/berth/out/r.txt")).unwrap(),
        "result\n"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("artifacts/tmp/made.txt")).unwrap(),
        "made\n"
    );
    let id = run_id(&ws);
    assert!(containers_of_run(&id).is_empty());
    let shown = ws.berth(&["diff", &id]).output().unwrap();
    assert_eq!(stdout(&shown), patch);

    // Worktree mode on a remote engine: the worktree is uploaded, its changes come back as a
    // patch against the commit, and the checkout is untouched.
    let out = ws.run(
        &["--engine", "box", "--workspace-mode", "worktree"],
        &["sh", "-c", CHANGE],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(state_of(ws.path()), before);
    let run = ws.last_run();
    let patch = std::fs::read_to_string(run.join("diff.patch")).unwrap();
    assert!(
        patch.contains("+four") && patch.contains("new file mode"),
        "{patch}"
    );
    assert!(patch.contains("deleted file mode"), "{patch}");
    assert!(!run.join("workspace").exists(), "the worktree is removed");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["workspace"]["mode"], "worktree", "{record}");
    let id = run_id(&ws);
    assert!(containers_of_run(&id).is_empty());
    // The patch applies to the checkout it came from.
    let applied = ws.berth(&["apply", &id]).output().unwrap();
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("mod.txt")).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
}

#[test]
fn worktree_mode_leaves_the_checkout_alone_and_hands_back_a_patch() {
    let ws = Workspace::new();
    checkout(&ws);
    let before = state_of(ws.path());

    let out = ws.run(&["--workspace-mode", "worktree"], &["sh", "-c", CHANGE]);
    println!("stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("script-ran") && said.contains("done"),
        "{said}"
    );
    // A worktree holds what HEAD has: no untracked files of the checkout.
    assert!(!said.contains("saw-gitignored") && !said.contains("saw-berthignored"));

    // Files, status, HEAD, worktrees and branches are exactly as before: the worktree and its
    // branch are gone.
    assert_eq!(state_of(ws.path()), before);
    let id = run_id(&ws);
    let run = ws.last_run();
    assert!(!run.join("workspace").exists(), "the worktree was kept");
    assert!(containers_of_run(&id).is_empty());

    let patch = std::fs::read_to_string(run.join("diff.patch")).unwrap();
    println!("diff.patch:\n{patch}");
    assert!(patch.contains("diff --git a/mod.txt b/mod.txt") && patch.contains("+four"));
    assert!(patch.contains("diff --git a/new.txt b/new.txt\nnew file mode"));
    assert!(patch.contains("diff --git a/sub/f.txt b/sub/f.txt\nnew file mode"));
    assert!(patch.contains("diff --git a/del.txt b/del.txt\ndeleted file mode"));
    assert!(patch.contains("diff --git a/bin.dat b/bin.dat") && patch.contains("GIT binary patch"));

    let shown = ws.berth(&["diff", &id]).output().unwrap();
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert_eq!(stdout(&shown), patch);

    // `berth branch` keeps the change as berth/<run-id>, leaving files and index alone.
    let branched = ws.berth(&["branch", &id]).output().unwrap();
    assert_eq!(branched.status.code(), Some(0), "{}", stderr(&branched));
    let branch = format!("berth/{id}");
    assert_eq!(stdout(&branched).trim(), branch);
    assert_eq!(
        git(ws.path(), &["show", &format!("{branch}:new.txt")]),
        "new\n"
    );
    assert_eq!(
        git(ws.path(), &["show", &format!("{branch}:mod.txt")]),
        "one\ntwo\nthree\nfour\n"
    );
    let changed = git(ws.path(), &["diff", "--name-status", "HEAD", &branch]);
    assert_eq!(
        changed,
        "M\tbin.dat\nD\tdel.txt\nM\tmod.txt\nA\tnew.txt\nA\tsub/f.txt\n"
    );
    assert_eq!(snapshot(ws.path()), before.files);
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), before.status);

    // A conflicting edit in the checkout: apply refuses, naming the file, with a hint.
    write(ws.path(), "mod.txt", b"something else entirely\n");
    let refused = ws.berth(&["apply", &id]).output().unwrap();
    let err = stderr(&refused);
    println!("apply on a conflicting checkout: {err}");
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        err.contains("do not apply cleanly") && err.contains("conflicts in mod.txt"),
        "{err}"
    );
    assert!(err.contains(&format!("hint: `berth branch {id}`")), "{err}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("mod.txt")).unwrap(),
        "something else entirely\n",
        "a refused apply changed the file"
    );
    assert!(ws.path().join("del.txt").exists() && !ws.path().join("new.txt").exists());

    // On the clean checkout it applies.
    git(ws.path(), &["checkout", "--quiet", "--", "mod.txt"]);
    let applied = ws.berth(&["apply", &id]).output().unwrap();
    assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
    assert!(
        stderr(&applied).contains("applied the changes"),
        "{}",
        stderr(&applied)
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("mod.txt")).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("new.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("sub/f.txt")).unwrap(),
        "deep\n"
    );
    assert!(!ws.path().join("del.txt").exists());
    assert_eq!(
        std::fs::read(ws.path().join("bin.dat")).unwrap(),
        b"\x00\x03changed"
    );
}

#[test]
fn worktree_mode_carries_uncommitted_changes_only_when_asked_and_needs_a_repository() {
    let ws = Workspace::new();
    checkout(&ws);
    write(ws.path(), "keep.txt", b"kept, and edited\n");
    write(ws.path(), "untracked.txt", b"not yet added\n");
    let before = state_of(ws.path());
    let show = "cat keep.txt; cat untracked.txt 2>/dev/null || echo no-untracked";

    let out = ws.run(&["--workspace-mode", "worktree"], &["sh", "-c", show]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "kept\nno-untracked\n");

    let out = ws.run(
        &["--workspace-mode", "worktree", "--include-dirty"],
        &["sh", "-c", &format!("{show}; echo more >> keep.txt")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "kept, and edited\nnot yet added\n");
    assert_eq!(state_of(ws.path()), before);
    // The patch is relative to the carried-over state: only the run's own change.
    let patch = std::fs::read_to_string(ws.last_run().join("diff.patch")).unwrap();
    assert!(
        patch.contains("+more") && !patch.contains("untracked.txt"),
        "{patch}"
    );

    // --include-dirty belongs to worktree mode.
    let out = ws.run(&["--include-dirty"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("add --workspace-mode worktree"));

    // Not a git repository: a clear error with what to do instead.
    let plain = Workspace::new();
    write(plain.path(), "a.txt", b"a\n");
    let out = plain.run(&["--workspace-mode", "worktree"], &["true"]);
    let err = stderr(&out);
    println!("{err}");
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("worktree mode needs a git repository") && err.contains("is not in one"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("--workspace-mode copy"),
        "{err}"
    );

    // Persistent containers keep one workspace: the isolated modes are refused with them.
    let out = ws.run(
        &["--workspace-mode", "worktree", "--lifecycle", "persistent"],
        &["true"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("--workspace-mode worktree cannot be combined with a persistent container")
            && err.contains("hint:"),
        "{err}"
    );
}
