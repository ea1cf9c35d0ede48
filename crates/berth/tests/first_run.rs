//! A new user's first agent runs (issue 15, section 2): a missing image or credential is named
//! before anything starts, with the command that fixes it; `berth profiles` says which images
//! are there. The real binary and the real engine.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};

use support::{git, image, stderr, stdout, Workspace};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// `berth/<target>:<version>`, which must be absent for these tests (berth's tests never build
/// into `berth/`).
fn absent_berth_image(target: &str) -> String {
    let tag = format!("berth/{target}:{}", env!("CARGO_PKG_VERSION"));
    let inspect = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "{tag} is present on this engine; these tests need it absent (docker image rm {tag})"
    );
    tag
}

/// `berth ARGS` with a made-up Claude credential and no other.
fn with_claude_key(ws: &Workspace, args: &[&str]) -> Output {
    ws.berth(args)
        .env("ANTHROPIC_API_KEY", "berth-test-not-a-key")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env("OPENAI_API_KEY", "berth-test-not-a-key")
        .output()
        .unwrap()
}

#[test]
fn a_missing_agent_image_is_refused_up_front_with_the_command_that_builds_it() {
    let ws = Workspace::new();
    absent_berth_image("claude-code");
    let o = with_claude_key(&ws, &["run", "--profile", "claude-code", "--", "hello"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("\nhint: berth builds its own images: `berth image build claude-code`"),
        "{err}"
    );
    assert!(!err.contains("docker build"), "{err}");
    // Never pulled: `berth/…` on Docker Hub is not berth's.
    assert!(!err.contains("pulling it failed"), "{err}");
    assert!(!ws.runs_dir().exists(), "nothing was created: {err}");

    // The same image without a profile: the run says the same (after recording the run).
    let procedural = absent_berth_image("procedural");
    let o = with_claude_key(&ws, &["run", "--image", &procedural, "--", "true"]);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("`berth image build procedural`"), "{err}");
    assert!(!err.contains("pulling it failed"), "{err}");
}

#[test]
fn a_workflow_checks_its_agents_images_and_credentials_before_it_starts() {
    let ws = Workspace::new();
    absent_berth_image("claude-code");
    std::fs::write(ws.path().join("file.txt"), "x\n").unwrap();
    git(ws.path(), &["init", "-q"]);
    git(ws.path(), &["add", "."]);
    git(ws.path(), &["commit", "-qm", "init"]);
    let args = [
        "workflow",
        "run",
        "builder-reviewer",
        "--image",
        image(),
        "--test-command",
        "true",
        "do it",
    ];
    let o = with_claude_key(&ws, &args);
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("`berth image build claude-code`"), "{err}");
    assert!(!err.contains("── baseline"), "no step ran: {err}");
    assert!(
        !ws.state_dir().join("workflows").exists(),
        "nothing was created: {err}"
    );

    // The reviewer's credential (codex) is checked too, with the agents' image given.
    let mut with_image = args.to_vec();
    with_image.splice(3..3, ["--agent-image", image()]);
    let o = ws
        .berth(&with_image)
        .env("ANTHROPIC_API_KEY", "berth-test-not-a-key")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(code(&o), 125, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("profile `codex` needs a credential and none is set: OPENAI_API_KEY")
            && err.contains("\nhint: export OPENAI_API_KEY="),
        "{err}"
    );
    assert!(!ws.state_dir().join("workflows").exists(), "{err}");
}

#[test]
fn profiles_say_whether_each_image_is_present() {
    let ws = Workspace::new();
    let absent = format!("berth-test-absent-{}/agent:1", std::process::id());
    std::fs::write(
        ws.path().join("berth.toml"),
        format!(
            "[profiles.here]\nimage = \"{}\"\ncommand = [\"true\"]\nprompt = \"none\"\n\n[profiles.gone]\nimage = \"{absent}\"\ncommand = [\"true\"]\nprompt = \"none\"\n",
            image()
        ),
    )
    .unwrap();
    let o = ws.berth(&["profiles", "--json"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let profiles: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let present = |name: &str| {
        profiles
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))["image_present"]
            .clone()
    };
    assert_eq!(present("here"), true);
    assert_eq!(present("gone"), false);

    let o = ws.berth(&["profiles"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert!(out.lines().next().unwrap().contains("PRESENT"), "{out}");
    assert_eq!(line("here")[3], "yes", "{out}");
    assert_eq!(line("gone")[3], "no", "{out}");
    // A missing berth image comes with the command that builds it.
    if present("claude-code") == false {
        assert!(
            stderr(&o).contains("`berth image build claude-code`"),
            "{}",
            stderr(&o)
        );
    }
}

/// Removes a test image whether the test passes or panics.
struct TestImage(String);

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.0])
            .output();
    }
}

#[test]
fn home_is_writable_whatever_uid_runs() {
    let ws = Workspace::new();
    // berth's base stage on the busybox test image: user agent (1000), HOME=/home/agent owned
    // by it, as in the real images.
    let repository = format!("berth-test-home-{}", std::process::id());
    let built = TestImage(format!("{repository}/base:{}", env!("CARGO_PKG_VERSION")));
    let o = ws
        .berth(&[
            "image",
            "build",
            "base",
            "--base-image",
            image(),
            "--no-install",
            "--repository",
            &repository,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let probe = "echo home=$HOME; touch $HOME/x && echo wrote; grep \" $HOME \" /proc/mounts | cut -d' ' -f3";
    for (user, home_fs) in [("1001:1001", "tmpfs\n"), ("1000:1000", "")] {
        let o = ws.run_in(&built.0, &["--user", user], &["sh", "-c", probe]);
        assert_eq!(code(&o), 0, "{user}: {}", stderr(&o));
        // The image's home for its own user; a tmpfs of its own for any other uid.
        assert_eq!(
            stdout(&o),
            format!("home=/home/agent\nwrote\n{home_fs}"),
            "{user}: {}",
            stderr(&o)
        );
    }
}
