//! `berth image build|ls` through the real binary and engine. Nothing can be pulled where these
//! tests run, so the base is the local busybox test image, packages are not installed, and the
//! images go to a repository of their own (never `berth/`), removed at the end.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{image, stderr, stdout, Workspace};

/// Removes every tag of a test repository, whether the test passes or panics.
struct Repository(String);

impl Repository {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Self(format!("berth-test-{}-{nanos}", std::process::id()))
    }

    fn tag(&self, target: &str) -> String {
        format!("{}/{target}:{}", self.0, env!("CARGO_PKG_VERSION"))
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        for target in ["base", "procedural", "claude-code", "codex"] {
            let _ = Command::new("docker")
                .args(["image", "rm", "-f", &self.tag(target)])
                .output();
        }
    }
}

/// `berth ARGS` in the test's workspace, far from any checkout: berth's `images/` is built into
/// the binary, so `berth image build` works from any directory (as after `cargo install`).
fn berth_anywhere(ws: &Workspace, args: &[&str]) -> Output {
    assert!(!ws
        .path()
        .starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")));
    ws.berth(args).output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(o), stderr(o)))
}

#[test]
fn images_are_built_once_then_reused_and_run() {
    let ws = Workspace::new();
    let repo = Repository::new();
    let build = [
        "image",
        "build",
        "base",
        "procedural",
        "--base-image",
        image(),
        "--no-install",
        "--repository",
        &repo.0,
    ];

    let first = berth_anywhere(&ws, &build);
    assert!(first.status.success(), "{}", stderr(&first));
    // Not a terminal: plain step lines on stderr, one data line per image on stdout.
    let err = stderr(&first);
    assert!(err.contains("base: Step 1/"), "{err}");
    assert!(
        err.contains(&format!("built {}", repo.tag("base"))),
        "{err}"
    );
    let out = stdout(&first);
    assert!(
        out.contains(&repo.tag("base")) && out.contains("built"),
        "{out}"
    );

    let mut with_json = build.to_vec();
    with_json.push("--json");
    let second = berth_anywhere(&ws, &with_json);
    assert!(second.status.success(), "{}", stderr(&second));
    let outcomes = json(&second);
    let statuses: Vec<(&str, &str)> = outcomes
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["target"].as_str().unwrap(), o["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [("base", "up_to_date"), ("procedural", "up_to_date")]
    );
    assert!(
        !stderr(&second).contains("Step "),
        "nothing is built again: {}",
        stderr(&second)
    );

    // Another build argument is another input: procedural alone is rebuilt.
    let mut changed = build.to_vec();
    changed.retain(|a| *a != "base");
    changed.extend(["--build-arg", "EXTRA=1", "--json"]);
    let third = berth_anywhere(&ws, &changed);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(json(&third)[0]["status"], "built");

    // The tags `berth image ls ARGS --json` lists.
    let listed_tags = |args: &[&str]| -> Vec<String> {
        let mut ls = vec!["image", "ls", "--json"];
        ls.extend_from_slice(args);
        let listed = berth_anywhere(&ws, &ls);
        assert!(listed.status.success(), "{}", stderr(&listed));
        json(&listed)
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["tag"].as_str().unwrap().to_string())
            .collect()
    };
    let tags = listed_tags(&["--repository", &repo.0]);
    assert_eq!(tags, [repo.tag("base"), repo.tag("procedural")]);
    // Without --repository, every image berth built is listed, whatever its repository.
    let all_tags = listed_tags(&[]);
    for tag in [repo.tag("base"), repo.tag("procedural")] {
        assert!(all_tags.contains(&tag), "{tag} missing from {all_tags:?}");
    }

    // berth runs in the image it built: the image's HOME and working directory.
    let run = ws
        .berth(&[
            "run",
            "--image",
            &repo.tag("procedural"),
            "--",
            "sh",
            "-c",
            "echo $HOME; pwd",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run), "/home/agent\n/workspace\n");
}

#[test]
fn a_failing_build_names_its_step_and_shows_its_output() {
    let ws = Workspace::new();
    let repo = Repository::new();
    let dir = ws.path().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {} AS base\nRUN echo the reason it fails && exit 4\n",
            image()
        ),
    )
    .unwrap();
    let out = ws
        .berth(&[
            "image",
            "build",
            "base",
            "--images-dir",
            dir.to_str().unwrap(),
            "--repository",
            &repo.0,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    // Step 3/3 is the label berth adds (berth.build-hash).
    assert!(
        err.contains("failed at `Step 2/3 : RUN echo the reason it fails && exit 4`"),
        "{err}"
    );
    assert!(err.contains("  the reason it fails\n"), "{err}");
    assert!(err.contains("hint: "), "{err}");

    let missing = ws
        .berth(&[
            "image",
            "build",
            "nope",
            "--images-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(125));
    assert!(
        stderr(&missing).contains("has no stage `nope`"),
        "{}",
        stderr(&missing)
    );
}
