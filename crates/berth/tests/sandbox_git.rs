//! git inside the sandbox, for real: an isolated workspace (copy and worktree mode) gets a
//! private repository at `/workspace/.git` whose objects come read-only from the user's
//! repository, so `git status`, `git diff` and `git log` work in an image holding Debian's git
//! (scripts/test-image.sh build-git). The user's `.git` stays byte for byte as it was, and a
//! `.git` the sandbox plants (fsmonitor and filter commands, alternates and gitfiles naming host
//! paths) makes host-side git neither run anything nor read outside the repository.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::*;

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A committed checkout with a file to change and one in a subdirectory.
fn checkout(ws: &Workspace) -> String {
    let dir = ws.path();
    git(dir, &["init", "--quiet"]);
    // berth's cache lives outside; keep the tree clean of anything else.
    write(dir, "mod.txt", b"one\ntwo\n");
    write(dir, "lib/code.txt", b"code\n");
    git(dir, &["add", "--all"]);
    git(dir, &["commit", "--quiet", "-m", "first"]);
    write(dir, "mod.txt", b"one\ntwo\nthree\n");
    git(dir, &["commit", "--quiet", "-am", "start"]);
    git(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// Every file of the user's `.git` but its objects (which are content-addressed): path → bytes.
/// Config, hooks, refs, logs, index, info and worktree admin directories are all in it.
fn git_dir_state(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    dir_state(&dir.join(".git"))
}

/// [`git_dir_state`] of the git directory `git_dir` itself.
fn dir_state(git_dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if rel == Path::new("objects") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, into);
            } else {
                into.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut state = BTreeMap::new();
    walk(git_dir, git_dir, &mut state);
    state
}

/// What the agent does: change a file, add one, then ask git, then commit in its own repository.
const AGENT: &str = "\
echo four >> mod.txt; echo new > new.txt; \
echo '==status'; git status --porcelain; \
echo '==diff'; git diff; \
echo '==log'; git log -1 --format=%H; \
git add -A && git -c user.name=agent -c user.email=agent@sandbox commit -qm agent-commit \
  && echo '==committed' && git log -3 --format=%s";

fn check_sandbox_git(ws: &Workspace, mode: &str) {
    let base = checkout(ws);
    let before = git_dir_state(ws.path());

    let out = ws.run_in(
        git_image(),
        &["--workspace-mode", mode],
        &["sh", "-c", AGENT],
    );
    let said = stdout(&out);
    println!("stdout: {said}\nstderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let section = |name: &str| -> String {
        let start = said.find(&format!("=={name}\n")).unwrap() + name.len() + 3;
        let rest = &said[start..];
        rest[..rest.find("\n==").unwrap_or(rest.len())].to_string()
    };
    assert_eq!(section("status"), " M mod.txt\n?? new.txt", "{said}");
    let diff = section("diff");
    assert!(
        diff.contains("diff --git a/mod.txt b/mod.txt") && diff.contains("+four"),
        "{diff}"
    );
    assert_eq!(
        section("log").trim(),
        base,
        "git log -1 shows the base commit"
    );
    // The agent's commit stays in its private repository, on top of the user's history.
    assert_eq!(
        section("committed").trim(),
        "agent-commit\nstart\nfirst",
        "{said}"
    );

    // The user's repository: config, hooks, refs, logs, index, byte for byte.
    assert_eq!(git_dir_state(ws.path()), before);
    assert_eq!(
        git(ws.path(), &["log", "--all", "--format=%s"]),
        "start\nfirst\n",
        "the agent's commit reached the user's refs"
    );
    let id = ws.last_record()["id"].as_str().unwrap().to_string();
    assert!(containers_of_run(&id).is_empty());

    // berth's patch has the change (the agent's commit included) and nothing of `.git`.
    let patch = std::fs::read_to_string(ws.last_run().join("diff.patch")).unwrap();
    assert!(
        patch.contains("+four") && patch.contains("b/new.txt"),
        "{patch}"
    );
    assert_eq!(dot_git_paths(&patch), Vec::<String>::new(), "{patch}");
}

/// The paths of a patch with a `.git` component.
fn dot_git_paths(patch: &str) -> Vec<String> {
    patch
        .lines()
        .filter_map(|l| l.strip_prefix("diff --git "))
        .flat_map(|l| l.split(' '))
        .filter(|p| p.split('/').any(|c| c == ".git"))
        .map(str::to_string)
        .collect()
}

#[test]
fn worktree_mode_gives_the_sandbox_a_working_git_of_its_own() {
    check_sandbox_git(&Workspace::new(), "worktree");
}

#[test]
fn copy_mode_gives_the_sandbox_a_working_git_of_its_own() {
    check_sandbox_git(&Workspace::new(), "copy");
}

#[test]
fn a_workspace_below_the_top_gets_its_subdirectory_as_the_tree() {
    let ws = Workspace::new();
    let base = checkout(&ws);
    let out = ws
        .berth(&[
            "run",
            "--image",
            git_image(),
            "--workspace",
            "lib",
            "--workspace-mode",
            "copy",
            "--",
            "sh",
            "-c",
            "echo more >> code.txt; git status --porcelain; git log -2 --format=%s:%P",
        ])
        .output()
        .unwrap();
    let said = stdout(&out);
    println!("stdout: {said}\nstderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some(" M code.txt"), "{said}");
    // The subdirectory's commit, whose parent is the base; then the base itself.
    assert_eq!(
        lines.next().unwrap(),
        format!("berth: lib/ of {base}:{base}"),
        "{said}"
    );
    assert!(lines.next().unwrap().starts_with("start:"), "{said}");
}

/// What a hostile sandbox plants for host-side git: a `.git` with an fsmonitor command, a
/// hooks path and alternates naming the user's objects; a nested gitfile naming a repository
/// elsewhere on the host, and a nested repository with an fsmonitor of its own; and a
/// `.gitattributes` choosing a filter of the user's configuration for every file.
fn attack(marks: &Path, secret_repo: &Path, user_repo: &Path) -> String {
    let marks = marks.display();
    format!(
        "rm -rf .git; mkdir -p .git/objects/info .git/refs/heads nested/.git sub; \
printf '[core]\\n\\tfsmonitor = \"touch {marks}/fsmonitor-top; false\"\\n\\thooksPath = {marks}\\n' > .git/config; \
echo 'ref: refs/heads/main' > .git/HEAD; \
echo '{objects}' > .git/objects/info/alternates; \
printf 'gitdir: {secret}/.git\\n' > sub/.git; echo x > sub/file; \
cp -r .git/. nested/.git/; \
sed -i 's/fsmonitor-top/fsmonitor-nested/' nested/.git/config; echo y > nested/file; \
printf '* filter=evil diff=evil\\n' > .gitattributes; \
echo changed >> mod.txt; echo planted",
        objects = user_repo.join(".git/objects").display(),
        secret = secret_repo.display(),
    )
}

/// A user's own filter and diff driver (global configuration): running them on what the
/// sandbox chose is running a command the sandbox picked the input and the moment of.
fn user_config(marks: &Path) -> PathBuf {
    let path = marks.parent().unwrap().join("gitconfig");
    std::fs::write(
        &path,
        format!(
            "[filter \"evil\"]\n\tclean = \"touch {m}/filter-ran; cat\"\n\
             [diff \"evil\"]\n\ttextconv = \"touch {m}/textconv-ran; cat\"\n",
            m = marks.display()
        ),
    )
    .unwrap();
    path
}

/// Every file below `dir` whose path has a `.git` component.
fn dot_git_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() == ".git" {
                found.push(path.clone());
            }
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    found
}

fn check_attack(mode: &str) {
    let ws = Workspace::new();
    checkout(&ws);
    let scratch = tempfile::tempdir().unwrap();
    let marks = scratch.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let secret = scratch.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    git(&secret, &["init", "--quiet"]);
    write(&secret, "s.txt", b"secret\n");
    git(&secret, &["add", "--all"]);
    git(&secret, &["commit", "--quiet", "-m", "secret"]);
    let secret_head = git(&secret, &["rev-parse", "HEAD"]).trim().to_string();
    let config = user_config(&marks);
    let before = git_dir_state(ws.path());

    let out = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--workspace-mode",
            mode,
            "--",
            "sh",
            "-c",
            &attack(&marks, &secret, ws.path()),
        ])
        .env("GIT_CONFIG_GLOBAL", &config)
        .output()
        .unwrap();
    println!("stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("planted"));

    let ran: Vec<_> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        ran.is_empty(),
        "host-side git ran what the sandbox chose: {ran:?}"
    );
    assert_eq!(git_dir_state(ws.path()), before, "the user's .git changed");

    let run = ws.last_run();
    let patch = std::fs::read_to_string(run.join("diff.patch")).unwrap();
    println!("diff.patch:\n{patch}");
    assert!(patch.contains("+changed"), "{patch}");
    assert!(
        !patch.contains("Subproject") && !patch.contains(&secret_head),
        "host-side git read the repository a planted gitfile names: {patch}"
    );
    assert_eq!(dot_git_paths(&patch), Vec::<String>::new(), "{patch}");
    // The nested repository's files come back as plain files.
    assert!(
        patch.contains("b/sub/file") && patch.contains("b/nested/file"),
        "{patch}"
    );
    if mode == "copy" {
        // The collected tree holds no `.git` for anyone's git to obey later.
        let collected = run.join("workspace");
        assert!(collected.join("mod.txt").exists());
        assert_eq!(dot_git_below(&collected), Vec::<PathBuf>::new());
    }
}

#[test]
fn copy_mode_host_git_obeys_nothing_the_sandbox_planted() {
    check_attack("copy");
}

#[test]
fn worktree_mode_host_git_obeys_nothing_the_sandbox_planted() {
    check_attack("worktree");
}

#[test]
fn a_kept_worktree_is_the_users_worktree_again() {
    let ws = Workspace::new();
    checkout(&ws);
    let marks = tempfile::tempdir().unwrap();
    let out = ws.run(
        &["--workspace-mode", "worktree", "--keep"],
        &[
            "sh",
            "-c",
            &format!(
                "rm -rf .git; mkdir .git; printf '[core]\\n\\tfsmonitor = \"touch {}/ran; false\"\\n' > .git/config; echo changed >> mod.txt",
                marks.path().display()
            ),
        ],
    );
    println!("stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let record = ws.last_record();
    let kept = PathBuf::from(record["workspace"]["worktree"].as_str().unwrap());
    let id = record["id"].as_str().unwrap().to_string();
    for container in containers_of_run(&id) {
        force_remove(&container);
    }
    // The gitfile is back, naming the worktree's admin directory in the user's repository.
    let gitfile = std::fs::read_to_string(kept.join(".git")).unwrap();
    let admin = ws.path().join(".git/worktrees");
    assert!(
        gitfile.starts_with("gitdir: ") && gitfile.contains(&admin.display().to_string()),
        "{gitfile}"
    );
    // The user's git there sees the run's change (staged by berth's diff) and runs nothing of
    // the sandbox's.
    assert_eq!(git(&kept, &["status", "--porcelain"]).trim(), "M  mod.txt");
    assert_eq!(std::fs::read_dir(marks.path()).unwrap().count(), 0);
    git(
        ws.path(),
        &["worktree", "remove", "--force", &kept.display().to_string()],
    );
    git(ws.path(), &["branch", "-D", &format!("berth/{id}")]);
}

/// What a hostile agent in an rw run tries on the workspace's `.git`: each attempt prints
/// `NAME ok` or `NAME refused`. Any of them succeeding would let host git run its commands
/// (fsmonitor, a hook, an `ext::` remote) or read a planted repository.
const RW_ATTACK: &str = "\
try() { name=$1; shift; if \"$@\" 2>/dev/null; then echo \"$name ok\"; else echo \"$name refused\"; fi; }; \
try config git config core.fsmonitor 'touch /workspace/PWNED'; \
try remote sh -c 'printf \"[remote \\\"origin\\\"]\\n\\turl = ext::sh -c touch%% PWNED\\n\" >> .git/config'; \
try hook sh -c 'mkdir -p .git/hooks && echo \"touch PWNED\" > .git/hooks/post-checkout'; \
try attributes sh -c 'mkdir -p .git/info && echo \"* filter=x\" > .git/info/attributes'; \
try rename mv .git .git-old; \
try remove rm -rf .git; \
try init git init -q .; \
echo '==status'; git status --porcelain; echo '==end'";

/// Gives `dir` and everything in it to the sandbox user (1000 when berth runs as root), as a
/// user's own checkout is theirs.
fn own_by_sandbox_user(dir: &Path) {
    let status = std::process::Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// An rw run writes the user's checkout itself: its `.git` is mounted read-only, so a planted
/// fsmonitor, remote, hook or attributes file never reaches host git; git still reads it.
#[test]
fn rw_mode_keeps_the_sandbox_out_of_the_workspaces_git() {
    let ws = Workspace::new();
    checkout(&ws);
    // The user owns the checkout and the sandbox runs as the user (here root's stand-in, 1000):
    // without the read-only mount every attempt below would succeed.
    own_by_sandbox_user(ws.path());
    let before = git_dir_state(ws.path());
    let out = ws.run_in(
        git_image(),
        &["--workspace-mode", "rw"],
        &["sh", "-c", &format!("echo changed > mod.txt; {RW_ATTACK}")],
    );
    let said = stdout(&out);
    println!("stdout: {said}\nstderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for name in [
        "config",
        "remote",
        "hook",
        "attributes",
        "rename",
        "remove",
        "init",
    ] {
        assert!(
            said.contains(&format!("{name} refused\n")),
            "{name}: {said}"
        );
    }
    // git in the sandbox still reads the repository: the change shows.
    assert!(said.contains("==status\n M mod.txt\n==end"), "{said}");
    // The host: the user's .git byte for byte, and host git runs nothing.
    assert_eq!(git_dir_state(ws.path()), before);
    git(ws.path(), &["status", "--porcelain"]);
    assert!(!ws.path().join("PWNED").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("mod.txt")).unwrap(),
        "changed\n",
        "the workspace itself is the sandbox's to change"
    );
}

/// A workspace that is no repository (or a subdirectory of one) gets an empty, read-only
/// `.git`: the sandbox cannot plant a repository there that host git would then obey.
#[test]
fn rw_mode_plants_no_repository_where_there_was_none() {
    let ws = Workspace::new();
    own_by_sandbox_user(ws.path());
    let out = ws.run_in(
        git_image(),
        &["--workspace-mode", "rw"],
        &["sh", "-c", RW_ATTACK],
    );
    let said = stdout(&out);
    println!("stdout: {said}\nstderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for name in ["hook", "attributes", "rename", "remove", "init"] {
        assert!(
            said.contains(&format!("{name} refused\n")),
            "{name}: {said}"
        );
    }
    let git_dir = ws.path().join(".git");
    assert!(git_dir.is_dir());
    assert_eq!(
        std::fs::read_dir(&git_dir).unwrap().count(),
        0,
        "left empty"
    );
    assert!(!ws.path().join("PWNED").exists());

    // A `.git` that is a symbolic link is refused before anything starts: the engine would
    // mount what it points to.
    std::fs::remove_dir(&git_dir).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &git_dir).unwrap();
    let out = ws.run_in(git_image(), &["--workspace-mode", "rw"], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(".git: a symbolic link") && err.contains("hint:") && err.contains("worktree"),
        "{err}"
    );
}

/// Attack: the rw workspace holds more repositories than its top one (a nested checkout, a
/// checkout whose gitfile names a git directory elsewhere in the tree), and a writable
/// `--mount` can be a checkout too. Host git obeys each of them. Defence: every git directory
/// in a tree the sandbox can write is mounted read-only; a writable mount of a git directory
/// itself is refused before anything starts.
#[test]
fn rw_mode_and_writable_mounts_keep_the_sandbox_out_of_every_repository() {
    let ws = Workspace::new();
    checkout(&ws);
    let dir = ws.path();
    let inner = dir.join("lib/inner");
    std::fs::create_dir_all(&inner).unwrap();
    git(&inner, &["init", "--quiet"]);
    write(&inner, "i.txt", b"inner\n");
    git(&inner, &["add", "-A"]);
    git(&inner, &["commit", "--quiet", "-m", "inner"]);
    let store = dir.join(".store");
    git(
        dir,
        &[
            "init",
            "--quiet",
            "--separate-git-dir",
            &store.display().to_string(),
            "sep",
        ],
    );
    // The gitfile names its directory relatively, as `git submodule` writes them.
    write(dir, "sep/.git", b"gitdir: ../.store\n");
    write(&dir.join("sep"), "s.txt", b"sep\n");
    git(&dir.join("sep"), &["add", "-A"]);
    git(&dir.join("sep"), &["commit", "--quiet", "-m", "sep"]);
    let proj = dir.join("proj");
    std::fs::create_dir(&proj).unwrap();
    git(&proj, &["init", "--quiet"]);
    write(&proj, "p.txt", b"proj\n");
    git(&proj, &["add", "-A"]);
    git(&proj, &["commit", "--quiet", "-m", "proj"]);
    own_by_sandbox_user(dir);
    let before = (
        git_dir_state(&inner),
        dir_state(&store),
        git_dir_state(&proj),
    );

    let attack_in = |paths: &[&str]| {
        paths
            .iter()
            .map(|p| format!("echo '=={p}'; cd {p} && {{ {RW_ATTACK}; }}; cd /;"))
            .collect::<String>()
    };
    let out = ws.run_in(
        git_image(),
        &["--workspace-mode", "rw"],
        &[
            "sh",
            "-c",
            &attack_in(&["/workspace/lib/inner", "/workspace/sep"]),
        ],
    );
    let said = stdout(&out);
    println!("stdout: {said}\nstderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!said.contains(" ok\n"), "an attempt got through: {said}");
    assert_eq!(said.matches("config refused\n").count(), 2, "{said}");

    let out = ws.run_in(
        git_image(),
        &["--workspace-mode", "none", "--mount", "proj:/src:rw"],
        &["sh", "-c", &attack_in(&["/src"])],
    );
    let said = stdout(&out);
    println!("stdout: {said}\nstderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!said.contains(" ok\n"), "an attempt got through: {said}");
    assert!(said.contains("config refused\n"), "{said}");

    assert_eq!(
        (
            git_dir_state(&inner),
            dir_state(&store),
            git_dir_state(&proj)
        ),
        before,
        "a repository changed"
    );
    for repo in [&inner, &dir.join("sep"), &proj] {
        git(repo, &["status", "--porcelain"]);
        assert!(!repo.join("PWNED").exists(), "{}", repo.display());
    }

    // A git directory itself, or a directory inside one, is never mounted writable (`--mount`
    // is read-only unless it says `:rw`).
    for (source, problem) in [
        ("proj/.git", "inside a .git directory"),
        ("proj/.git/hooks", "inside a .git directory"),
        (".store", "is a git directory"),
    ] {
        let out = ws.run_in(
            image(),
            &[
                "--workspace-mode",
                "none",
                "--mount",
                &format!("{source}:/g:rw"),
            ],
            &["true"],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{source}: {err}");
        assert!(
            err.contains(problem) && err.contains("hint:"),
            "{source}: {err}"
        );
        // Read-only is fine.
        let out = ws.run_in(
            image(),
            &[
                "--workspace-mode",
                "none",
                "--mount",
                &format!("{source}:/g:ro"),
            ],
            &["true"],
        );
        assert_eq!(out.status.code(), Some(0), "{source}: {}", stderr(&out));
    }
}

/// Attack: an rw run makes a repository of its own below the workspace (a `git init`, or a
/// `.git` in a submodule's empty path), configured to run a command. Host git run there, or
/// entering that submodule, would obey it. Defence: after the run berth renames every `.git`
/// that was not there before, and says so.
#[test]
fn rw_mode_renames_repositories_the_run_made() {
    let ws = Workspace::new();
    checkout(&ws);
    own_by_sandbox_user(ws.path());
    let plant = "mkdir -p planted deep/er && cd planted && git init -q \
        && git config core.fsmonitor 'touch /workspace/PWNED' && cd /workspace \
        && printf 'gitdir: /workspace/planted/.git.x\\n' > deep/er/.git && echo planted";
    let out = ws.run_in(
        git_image(),
        &["--workspace-mode", "rw"],
        &["sh", "-c", plant],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("planted"), "{}", stdout(&out));
    let id = ws.last_record()["id"].as_str().unwrap().to_string();
    let quarantined = format!(".git.berth-quarantine-{id}");
    for dir in ["planted", "deep/er"] {
        let dir = ws.path().join(dir);
        assert!(!dir.join(".git").exists(), "{}", dir.display());
        assert!(dir.join(&quarantined).exists(), "{}", dir.display());
    }
    let err = stderr(&out);
    assert!(
        err.contains("the run made a git repository at") && err.contains("planted/.git"),
        "{err}"
    );
    // The check comes before the run's final record: a run recorded as ended has been checked,
    // whenever berth dies, and nothing is left pending.
    let events = std::fs::read_to_string(ws.last_run().join("events.jsonl")).unwrap();
    let position = |what: &str| events.lines().position(|l| l.contains(what));
    let (checked, finished) = (
        position("the run made a git repository at"),
        position("\"finished\""),
    );
    assert!(
        checked.is_some() && finished.is_some() && checked < finished,
        "{events}"
    );
    assert!(!ws.last_run().join("git-check.json").exists());
    // Host git there finds the user's repository, not the planted one.
    git(&ws.path().join("planted"), &["status", "--porcelain"]);
    assert!(!ws.path().join("PWNED").exists());
    // The user's own .git is left as it was.
    assert!(ws.path().join(".git/HEAD").is_file());

    // A repository by its contents (HEAD, objects, refs; not named .git), configured to run a
    // command: in a subdirectory, and at the top of a workspace that is no checkout (under the
    // empty read-only .git berth mounts there, which git passes over).
    let plain = Workspace::new();
    own_by_sandbox_user(plain.path());
    let by_contents = "for d in /workspace /workspace/inner; do mkdir -p $d && cd $d \
        && git init -q --bare . && git config core.bare false && git config core.worktree . \
        && git config core.fsmonitor 'touch /workspace/PWNED; false' || exit 1; done; echo planted";
    let out = plain.run_in(
        git_image(),
        &["--workspace-mode", "rw"],
        &["sh", "-c", by_contents],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("planted"), "{}", stdout(&out));
    for dir in [plain.path().to_path_buf(), plain.path().join("inner")] {
        assert!(!dir.join("HEAD").exists(), "{}", dir.display());
        let status = std::process::Command::new("git")
            .current_dir(&dir)
            .env("GIT_CEILING_DIRECTORIES", plain.path().parent().unwrap())
            .args(["status"])
            .output()
            .unwrap();
        assert!(
            !status.status.success(),
            "git found a repository in {}",
            dir.display()
        );
    }
    assert!(!plain.path().join("PWNED").exists());
}

/// Attack: your own config points git at hooks or config inside the checkout (husky's
/// `core.hooksPath = .husky/_`, an `include.path`), which an rw run can write: your next
/// commit would run what it put there. Defence: those places are mounted read-only too.
#[test]
fn rw_mode_keeps_the_sandbox_out_of_hooks_and_includes_your_config_names() {
    let ws = Workspace::new();
    checkout(&ws);
    let dir = ws.path();
    git(dir, &["config", "core.hooksPath", ".husky/_"]);
    git(dir, &["config", "include.path", "../.gitconfig.local"]);
    write(dir, ".husky/_/pre-commit", b"#!/bin/sh\nexit 0\n");
    write(dir, ".gitconfig.local", b"[user]\n\tname = me\n");
    own_by_sandbox_user(dir);
    let attack = "try() { name=$1; shift; if \"$@\" 2>/dev/null; then echo \"$name ok\"; else echo \"$name refused\"; fi; }; \
        try hook sh -c 'echo \"touch /workspace/PWNED\" >> .husky/_/pre-commit'; \
        try newhook sh -c 'echo \"touch /workspace/PWNED\" > .husky/_/post-checkout'; \
        try include sh -c 'printf \"[core]\\n\\tfsmonitor = touch PWNED\\n\" >> .gitconfig.local'";
    let out = ws.run_in(image(), &["--workspace-mode", "rw"], &["sh", "-c", attack]);
    let said = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for name in ["hook", "newhook", "include"] {
        assert!(
            said.contains(&format!("{name} refused\n")),
            "{name}: {said}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join(".husky/_/pre-commit")).unwrap(),
        "#!/bin/sh\nexit 0\n"
    );
    // A hooks directory your config names but that is missing is refused before the run: the
    // sandbox could make it.
    std::fs::remove_dir_all(dir.join(".husky")).unwrap();
    let out = ws.run_in(image(), &["--workspace-mode", "rw"], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains(".husky/_"), "{}", stderr(&out));
}

/// On a host whose git is older than 2.41, which ignores `GIT_ATTR_SOURCE`, a copy or worktree
/// run is refused before anything starts: berth's diff could not keep a planted
/// `.gitattributes` from choosing the user's filters.
#[test]
fn copy_and_worktree_runs_need_a_git_that_honours_attr_source() {
    let ws = Workspace::new();
    checkout(&ws);
    support::workflow::write_files(ws.path(), support::workflow::REVIEWER, 1, "worktree");
    git(ws.path(), &["add", "-A"]);
    git(ws.path(), &["commit", "-qm", "workflow"]);
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // A git that is too old, and one whose version cannot be read: both refused.
    for (said, refusal) in [
        (
            "git version 2.39.2",
            "git 2.39 on this host is older than 2.41",
        ),
        ("git version banana", "which berth cannot read"),
    ] {
        let bin = tempfile::tempdir().unwrap();
        let fake = bin.path().join("git");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --version ] && {{ echo '{said}'; exit 0; }}; done\nexec {} \"$@\"\n",
                real.trim()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        for mode in ["copy", "worktree"] {
            let out = ws
                .berth(&[
                    "run",
                    "--image",
                    image(),
                    "--workspace-mode",
                    mode,
                    "--",
                    "true",
                ])
                .env("PATH", &path)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(125), "{mode}: {err}");
            assert!(
                err.contains(refusal) && err.contains("hint:"),
                "{mode}: {err}"
            );
        }
        // A workflow's worktree is made by the same host git: refused too, before any step.
        let out = support::workflow::fake_credentials(&mut ws.berth(&[
            "workflow",
            "run",
            "workflow.toml",
            "--agent-image",
            support::agents_image(),
            "--",
            "task",
        ]))
        .env("PATH", &path)
        .output()
        .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "workflow: {err}");
        assert!(err.contains(refusal), "workflow: {err}");
        // rw mode needs no such git.
        let out = ws
            .berth(&["run", "--image", image(), "--", "true"])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
}

/// Attack: a repository nested in the checkout (a submodule, or one an earlier rw run made)
/// carries config and info/attributes naming a clean filter. Host git that enters it (a diff
/// of the checkout checks whether each submodule is dirty by running `git status` inside it)
/// would run the filter on the host. Defence: berth's host git never enters a nested
/// repository (`diff.ignoreSubmodules=all`, no submodule recursion).
#[test]
fn host_git_never_runs_what_a_nested_repository_configures() {
    let ws = Workspace::new();
    checkout(&ws);
    let dir = ws.path();
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    git(&sub, &["init", "--quiet"]);
    write(&sub, "f.txt", b"same size\n");
    git(&sub, &["add", "f.txt"]);
    git(&sub, &["commit", "--quiet", "-m", "sub"]);
    git(dir, &["add", "sub"]);
    git(dir, &["commit", "--quiet", "-m", "a nested repository"]);
    let marker = tempfile::tempdir().unwrap();
    let pwned = marker.path().join("pwned");
    git(
        &sub,
        &[
            "config",
            "filter.evil.clean",
            &format!("sh -c 'touch {}; cat'", pwned.display()),
        ],
    );
    write(&sub, ".git/info/attributes", b"* filter=evil\n");
    // Same size, another time: git must read the file (through the filter) to compare it.
    let touch = |when: &str| {
        let ok = std::process::Command::new("touch")
            .args(["-d", when])
            .arg(sub.join("f.txt"))
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // The attack works on plain git: the trap is real.
    touch("2020-01-01");
    std::process::Command::new("git")
        .current_dir(dir)
        .args(["diff", "HEAD"])
        .output()
        .unwrap();
    assert!(
        pwned.exists(),
        "plain git should have run the nested filter"
    );
    std::fs::remove_file(&pwned).unwrap();

    touch("2021-01-01");
    write(dir, "mod.txt", b"dirty\n");
    let out = ws
        .berth(&[
            "run",
            "--image",
            image(),
            "--workspace-mode",
            "worktree",
            "--include-dirty",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !pwned.exists(),
        "berth's host git ran a nested repository's filter"
    );
}
