//! The workflow tests' repository: a failing test, fake agents scripted by files in the
//! repository (`.fake/claude.sh` is the builder, `.fake/codex.sh` the reviewer), and a workflow
//! file with a baseline and a builder → tests → reviewer loop. The same fixture serves
//! `berth workflow run` and workflows submitted to a server.

use std::path::Path;
use std::process::Command;

use super::{agents_image, git};

/// The builder fixes `calc.txt` only once the reviewer asked for "the missing line".
pub const BUILDER: &str = r#"echo "round" >> notes.txt
case "$1" in *"the missing line"*) echo fixed >> calc.txt ;; esac
"#;

/// A builder that says it started (`started.txt`) and then takes a minute: for stopping it.
pub const STUCK_BUILDER: &str = "echo started > started.txt; sleep 60\n";

/// The reviewer approves when the tests pass, else asks for the missing line.
pub const REVIEWER: &str = r#"if grep -q fixed calc.txt; then
  printf '{"approved": true, "summary": "good"}' > "$BERTH_OUT/result.json"
else
  printf '{"approved": false, "summary": "not yet", "requested_changes": ["add the missing line"]}' > "$BERTH_OUT/result.json"
fi
"#;

pub const WORKFLOW: &str = r#"name = "fix-calc"
workspace = "WORKSPACE"

[[baseline]]
name = "before"
command = ["sh", "test.sh"]
continue_on_failure = true

[loop]
max_iterations = MAX
until = "review.approved"

[[loop.steps]]
name = "build"
agent = "claude-code"
prompt = "{{ task }} Reviewer said: {{ review.feedback }} Tests said: {{ tests.output }}"

[[loop.steps]]
name = "tests"
command = ["sh", "test.sh"]
continue_on_failure = true

[[loop.steps]]
name = "review"
agent = "codex"
prompt = "Review: {{ diff }} Tests: {{ tests.status }}"
verdict = { file = "result.json" }
"#;

/// The tests: they fail, saying why, until `calc.txt` has the fix.
pub const TEST: &str =
    "grep -q fixed calc.txt || { echo 'FAIL: calc.txt lacks the fixed line'; exit 1; }\n";

/// Commits everything in `dir`.
pub fn commit(dir: &Path, message: &str) {
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", message]);
}

/// Replaces the builder's script and commits it (e.g. a builder that never finishes).
pub fn set_builder(dir: &Path, script: &str) {
    std::fs::write(dir.join(".fake/claude.sh"), script).unwrap();
    commit(dir, "another builder");
}

/// `berth workflow run workflow.toml` arguments with the test images, no network and JSON
/// output, then `extra`, then the task.
pub fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "workflow",
        "run",
        "workflow.toml",
        "--agent-image",
        agents_image(),
        "--image",
        agents_image(),
        "--network",
        "none",
        "--json",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "Fix calc."]);
    args
}

/// The fake agents need no credentials; none of the caller's reach them.
pub fn without_credentials(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("ANTHROPIC_API_KEY")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env_remove("OPENAI_API_KEY")
}

/// Made-up credentials for the fake agents, which use none (agent profiles refuse to start
/// without one).
pub fn fake_credentials(cmd: &mut Command) -> &mut Command {
    without_credentials(cmd)
        .env("ANTHROPIC_API_KEY", "berth-test-not-a-key")
        .env("OPENAI_API_KEY", "berth-test-not-a-key")
}

/// Writes the workflow tests' files into `dir`, with `reviewer` as the reviewer's script and
/// `workspace` (`worktree` or `copy`) as the workflow's workspace.
pub fn write_files(dir: &Path, reviewer: &str, max_iterations: u32, workspace: &str) {
    std::fs::create_dir(dir.join(".fake")).unwrap();
    std::fs::write(dir.join(".fake/claude.sh"), BUILDER).unwrap();
    std::fs::write(dir.join(".fake/codex.sh"), reviewer).unwrap();
    std::fs::write(dir.join("calc.txt"), "one\n").unwrap();
    std::fs::write(dir.join("test.sh"), TEST).unwrap();
    std::fs::write(
        dir.join(".gitignore"),
        ".berth/\n.cache/\n.config/\n.data/\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("workflow.toml"),
        WORKFLOW
            .replace("MAX", &max_iterations.to_string())
            .replace("WORKSPACE", workspace),
    )
    .unwrap();
}

/// Makes `dir` the workflow tests' repository, with `reviewer` as the reviewer's script.
pub fn make_repo(dir: &Path, reviewer: &str, max_iterations: u32) {
    write_files(dir, reviewer, max_iterations, "worktree");
    git(dir, &["init", "-q"]);
    commit(dir, "start");
}
