//! `berth workflow run` end to end: a git repository, fake agents (scripted by files in the
//! repository) that edit code and write verdicts, tests in the sandbox, the real engine.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::workflow::{
    fake_credentials, make_repo, run_args, set_builder, write_files, REVIEWER, STUCK_BUILDER,
    WORKFLOW,
};
use support::{git, stderr, stdout, Workspace};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A repository with a failing test, the fake agents' scripts and the workflow file.
fn repo(reviewer: &str, max_iterations: u32) -> Workspace {
    let ws = Workspace::new();
    make_repo(ws.path(), reviewer, max_iterations);
    ws
}

fn workflow(ws: &Workspace, extra: &[&str]) -> Command {
    let mut cmd = ws.berth(&run_args(extra));
    fake_credentials(&mut cmd);
    cmd
}

/// The JSON result line on stdout (after the steps' event lines).
fn result(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let last = out.lines().last().unwrap_or_default().to_string();
    let mut lines: Vec<&str> = out.lines().collect();
    // The result is pretty-printed: take the trailing JSON object.
    let start = lines.iter().rposition(|l| *l == "{").unwrap_or(0);
    lines.drain(..start);
    serde_json::from_str(&lines.join("\n"))
        .unwrap_or_else(|e| panic!("no result JSON ({e}): last line {last}\n{out}"))
}

fn step_run(dir: &Path, step: &str) -> std::path::PathBuf {
    let runs = dir.join(step).join("runs");
    std::fs::read_dir(&runs)
        .unwrap_or_else(|e| panic!("{}: {e}", runs.display()))
        .map(|e| e.unwrap().path())
        .max()
        .unwrap()
}

fn no_containers_of(ws: &Workspace) {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.Label \"berth.run-dir\"}}",
        ])
        .output()
        .unwrap();
    let root = ws.data_path().display().to_string();
    let left: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| l.contains(&root))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
}

#[test]
fn rejected_then_approved_with_the_feedback_in_the_next_prompt() {
    let ws = repo(REVIEWER, 3);
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    let o = workflow(&ws, &[]).output().unwrap();
    assert_eq!(code(&o), 0, "{}\n{}", stderr(&o), stdout(&o));
    let r = result(&o);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["iterations"], 2, "{r}");
    // The red baseline is reported as such.
    assert_eq!(r["baseline_red"], serde_json::json!(["before"]), "{r}");
    // Each verdict is said as its step ends, before the next round starts.
    let err = stderr(&o);
    let rejected = err
        .find("review: changes requested: not yet\n")
        .unwrap_or_else(|| panic!("no live verdict:\n{err}"));
    assert!(
        err[rejected..].contains("  - add the missing line"),
        "{err}"
    );
    let round2 = err.find("iteration 2/3").expect("a second round");
    assert!(
        rejected < round2,
        "the verdict came after the next round began:\n{err}"
    );
    assert!(err[round2..].contains("review: approved: good"), "{err}");

    // Iteration 1 was rejected; iteration 2's builder got the feedback.
    let dir = Path::new(r["dir"].as_str().unwrap());
    let verdict1: serde_json::Value = serde_json::from_slice(
        &std::fs::read(step_run(dir, "iter-1/review").join("artifacts/berth/out/result.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(verdict1["approved"], false);
    let prompt2 = std::fs::read_to_string(
        step_run(dir, "iter-2/build").join("artifacts/berth/out/prompt.txt"),
    )
    .unwrap();
    assert!(prompt2.contains("add the missing line"), "{prompt2}");
    // The test failure of iteration 1 is fed back to the builder too.
    assert!(
        prompt2.contains("FAIL: calc.txt lacks the fixed line"),
        "{prompt2}"
    );
    let prompt1 = std::fs::read_to_string(
        step_run(dir, "iter-1/build").join("artifacts/berth/out/prompt.txt"),
    )
    .unwrap();
    assert!(!prompt1.contains("missing line"), "{prompt1}");
    // The reviewer saw the diff.
    let review2 = std::fs::read_to_string(
        step_run(dir, "iter-2/review").join("artifacts/berth/out/prompt.txt"),
    )
    .unwrap();
    assert!(review2.contains("+fixed"), "{review2}");

    // Each step's run is found by `berth show` and `berth diff` by its id (or a prefix of it),
    // with the step's own change as its patch.
    let build1 = step_run(dir, "iter-1/build");
    let build1_id = build1.file_name().unwrap().to_str().unwrap().to_string();
    let shown = ws
        .berth(&["show", &build1_id[..12], "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&shown), 0, "{}", stderr(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["run"]["id"], build1_id.as_str(), "{shown}");
    let diff1 = ws.berth(&["diff", &build1_id]).output().unwrap();
    assert_eq!(code(&diff1), 0, "{}", stderr(&diff1));
    assert!(stdout(&diff1).contains("+round"), "{}", stdout(&diff1));
    assert!(!stdout(&diff1).contains("+fixed"), "{}", stdout(&diff1));
    let build2 = step_run(dir, "iter-2/build");
    let diff2 = ws
        .berth(&["diff", build2.file_name().unwrap().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(stdout(&diff2).contains("+fixed"), "{}", stdout(&diff2));
    let tests1 = step_run(dir, "iter-1/tests");
    let diff_tests = ws
        .berth(&["diff", tests1.file_name().unwrap().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&diff_tests), 0, "{}", stderr(&diff_tests));
    assert!(
        stderr(&diff_tests).contains("changed nothing"),
        "{}",
        stderr(&diff_tests)
    );

    // The output is one diff; the user's checkout is untouched.
    let patch = std::fs::read_to_string(r["diff"].as_str().unwrap()).unwrap();
    assert!(
        patch.contains("+fixed") && patch.contains("notes.txt"),
        "{patch}"
    );
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), head);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("calc.txt")).unwrap(),
        "one\n"
    );
    assert!(!ws.path().join("notes.txt").exists());
    assert!(!dir.join("worktree").exists(), "the worktree is removed");
    assert_eq!(
        git(ws.path(), &["branch", "--list", "berth/*"]),
        "",
        "and its branch"
    );
    assert_eq!(git(ws.path(), &["worktree", "list"]).lines().count(), 1);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("workflow.json")).unwrap()).unwrap();
    assert_eq!(state["finish"]["state"], "succeeded", "{state}");
    no_containers_of(&ws);
}

#[test]
fn max_iterations_reached_and_a_malformed_verdict_fail_with_their_reason() {
    let never = r#"printf '{"approved": false, "summary": "no", "requested_changes": ["something else"]}' > "$BERTH_OUT/result.json""#;
    let ws = repo(never, 2);
    let o = workflow(&ws, &[]).output().unwrap();
    assert_ne!(code(&o), 0);
    let r = result(&o);
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["iterations"], 2);
    assert!(
        r["reason"].as_str().unwrap().contains("2"),
        "names the limit: {r}"
    );

    let malformed = r#"printf 'looks good to me' > "$BERTH_OUT/result.json""#;
    let ws = repo(malformed, 3);
    let o = workflow(&ws, &[]).output().unwrap();
    assert_ne!(code(&o), 0);
    let r = result(&o);
    assert_eq!(
        r["state"], "failed",
        "a malformed verdict is no approval: {r}"
    );
    assert!(r["reason"].as_str().unwrap().contains("result.json"), "{r}");
    no_containers_of(&ws);
}

#[test]
fn cancel_mid_iteration_stops_the_step_and_records_where() {
    let ws = repo(REVIEWER, 3);
    set_builder(ws.path(), STUCK_BUILDER);
    let child = workflow(&ws, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the builder's container runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the builder did not start");
        let out = Command::new("docker")
            .args(["ps", "--format", "{{.Label \"berth.run-dir\"}}"])
            .output()
            .unwrap();
        if stdout(&out).contains(&format!("{}", ws.data_path().display()))
            && stdout(&out).contains("iter-1/build")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 130, "{}", stderr(&o));
    let r = result(&o);
    assert_eq!(r["state"], "cancelled", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("build"),
        "says where: {r}"
    );
    no_containers_of(&ws);
}

#[test]
fn bad_workflows_are_refused_before_anything_runs() {
    let ws = repo(REVIEWER, 3);
    std::fs::write(
        ws.path().join("bad.toml"),
        "name = \"x\"\n[loop]\nmax_iterations = 99\n",
    )
    .unwrap();
    let o = ws
        .berth(&["workflow", "run", "bad.toml", "--", "task"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("bad.toml"), "{}", stderr(&o));
    assert!(stderr(&o).contains("hint:"), "{}", stderr(&o));
    assert!(!ws.state_dir().join("workflows").exists());

    let host = "name = \"h\"\n[loop]\nmax_iterations = 1\nuntil = \"r.approved\"\n[[loop.steps]]\nname = \"t\"\ncommand = [\"true\"]\nwhere = \"host\"\n[[loop.steps]]\nname = \"r\"\nagent = \"codex\"\nprompt = \"x\"\nverdict = { file = \"result.json\" }\n";
    std::fs::write(ws.path().join("host.toml"), host).unwrap();
    let o = ws
        .berth(&["workflow", "run", "host.toml", "--", "task"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("--allow-host-steps"), "{}", stderr(&o));

    let not_git = Workspace::new();
    std::fs::write(
        not_git.path().join("w.toml"),
        WORKFLOW
            .replace("MAX", "1")
            .replace("WORKSPACE", "worktree"),
    )
    .unwrap();
    // With what its agents need (credentials, their image), it is refused for want of git.
    let o = fake_credentials(&mut not_git.berth(&[
        "workflow",
        "run",
        "w.toml",
        "--agent-image",
        support::agents_image(),
        "--",
        "task",
    ]))
    .output()
    .unwrap();
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("git"), "{}", stderr(&o));
}

// `workspace = "copy"`: the workflow works on a copy of a directory that is no git checkout;
// the copy's diff is the output, and the directory is untouched.
#[test]
fn copy_workspace_without_git() {
    let ws = Workspace::new();
    write_files(ws.path(), REVIEWER, 3, "copy");
    let o = workflow(&ws, &[]).output().unwrap();
    assert_eq!(code(&o), 0, "{}\n{}", stderr(&o), stdout(&o));
    let r = result(&o);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["iterations"], 2, "{r}");
    let patch = std::fs::read_to_string(r["diff"].as_str().unwrap()).unwrap();
    assert!(
        patch.contains("+fixed") && patch.contains("notes.txt"),
        "{patch}"
    );
    assert!(
        !patch.contains(".berth"),
        "the state directory is not copied: {patch}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("calc.txt")).unwrap(),
        "one\n"
    );
    assert!(!ws.path().join("notes.txt").exists());
    let dir = Path::new(r["dir"].as_str().unwrap());
    assert!(!dir.join("copy").exists() && !dir.join("copy.git").exists());
    no_containers_of(&ws);
}
