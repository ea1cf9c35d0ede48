//! Agent profiles end to end: fake `claude` and `codex` in a test image replay transcripts
//! recorded from the real CLIs, so the path from profile to parsed events to final state runs
//! on the real engine without network.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Output;

use support::{agents_image, stderr, stdout, Workspace};

fn workspace() -> Workspace {
    let ws = Workspace::new();
    // berth runs as root here, so the sandbox user is 1000: give it the workspace.
    std::fs::set_permissions(
        ws.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    ws
}

/// `berth run --profile PROFILE --image <agents image> --network none EXTRA -- PROMPT`.
fn agent(
    ws: &Workspace,
    profile: &str,
    extra: &[&str],
    prompt: &str,
    env: &[(&str, &str)],
) -> Output {
    let mut args = vec![
        "run",
        "--profile",
        profile,
        "--image",
        agents_image(),
        "--network",
        "none",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", prompt]);
    let mut cmd = ws.berth(&args);
    cmd.env_remove("ANTHROPIC_API_KEY")
        .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
        .env_remove("OPENAI_API_KEY");
    // An agent profile is refused without one of its credentials; the fakes use none, so a
    // made-up one will do.
    if env.is_empty() {
        if profile.starts_with("claude") {
            cmd.env("ANTHROPIC_API_KEY", "berth-test-not-a-key");
        } else if profile.starts_with("codex") {
            cmd.env("OPENAI_API_KEY", "berth-test-not-a-key");
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn agent_events(ws: &Workspace) -> Vec<serde_json::Value> {
    std::fs::read_to_string(ws.last_run().join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "agent")
        .map(|e| e["agent"].clone())
        .collect()
}

fn out_file(ws: &Workspace, name: &str) -> String {
    std::fs::read_to_string(ws.last_run().join("artifacts/berth/out").join(name)).unwrap()
}

#[test]
fn claude_transcript_becomes_events_and_a_readable_conversation() {
    let ws = workspace();
    let o = agent(
        &ws,
        "claude-code",
        &[
            "--env",
            "FAKE_TRANSCRIPT=foksa__open-claude-agent-sdk__plan-mode-ls.jsonl",
        ],
        "list the files",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let shown = stdout(&o);
    assert!(
        shown.contains("● Bash(ls -la)"),
        "tool calls fold to one line: {shown}"
    );
    assert!(
        shown.contains("✓ done") && shown.contains("$0.0366"),
        "final result and cost at the end: {shown}"
    );
    assert!(
        !shown.contains("\"type\""),
        "no raw JSON on the terminal: {shown}"
    );
    let events = agent_events(&ws);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "session_started",
        "assistant_text",
        "tool_call",
        "tool_result",
        "final_result",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let record = ws.last_record();
    assert_eq!(record["state"], "succeeded");
    assert_eq!(
        record["agent_session"],
        "894db4db-9cbf-4310-8d9d-8ce9c6a8aa3b"
    );
    assert_eq!(record["spec"]["profile"], "claude-code");
    // The raw transcript is kept byte for byte.
    let raw = std::fs::read(ws.last_run().join("stdout.log")).unwrap();
    let fixture = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../berth-agents/tests/data/claude/foksa__open-claude-agent-sdk__plan-mode-ls.jsonl",
    ))
    .unwrap();
    assert_eq!(raw, fixture);
    // berth sessions lists it with the run that created it.
    let o = ws.berth(&["sessions", "--json"]).output().unwrap();
    let sessions: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        sessions[0]["session"],
        "894db4db-9cbf-4310-8d9d-8ce9c6a8aa3b"
    );
    assert_eq!(sessions[0]["run"], record["id"]);
}

#[test]
fn the_agents_error_decides_the_final_state() {
    let ws = workspace();
    // The fake exits 0, but the transcript's result says is_error.
    let o = agent(
        &ws,
        "claude-code",
        &[
            "--env",
            "FAKE_TRANSCRIPT=flieber-inc__devcake__claude_api_error_400.jsonl",
        ],
        "x",
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let record = ws.last_record();
    assert_eq!(record["state"], "failed");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("API Error: 400 context length exceeded"),
        "{record}"
    );
    // Codex: turn.failed likewise.
    let o = agent(
        &ws,
        "codex",
        &[
            "--env",
            "FAKE_TRANSCRIPT=sanghyeonhd__devorch__live-usage-limit.jsonl",
        ],
        "x",
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let record = ws.last_record();
    assert_eq!(record["state"], "failed");
    assert!(
        record["reason"].as_str().unwrap().contains("usage limit"),
        "{record}"
    );
}

#[test]
fn codex_transcript_succeeds() {
    let ws = workspace();
    let o = agent(&ws, "codex", &[], "do it", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(ws.last_record()["state"], "succeeded");
    let argv = out_file(&ws, "argv.txt");
    assert!(argv.starts_with("exec\n--json\n"), "{argv}");
    assert!(
        argv.contains("--dangerously-bypass-approvals-and-sandbox"),
        "codex's own sandbox is off: {argv}"
    );
}

#[test]
fn the_prompt_arrives_byte_exact() {
    let ws = workspace();
    let prompt =
        "fix $HOME and `id`; \"double\" 'single' \\ back\nsecond line\n\ttabbed $(rm -rf /)";
    let o = agent(&ws, "claude-code", &[], prompt, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(out_file(&ws, "prompt.txt"), prompt);
    let o = agent(&ws, "codex", &[], prompt, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(out_file(&ws, "prompt.txt"), prompt);
}

#[test]
fn resume_and_continue_reach_the_agent() {
    let ws = workspace();
    let o = agent(&ws, "claude-code", &["--resume", "sess-123"], "go on", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        out_file(&ws, "argv.txt").ends_with("--resume\nsess-123\n"),
        "{}",
        out_file(&ws, "argv.txt")
    );
    let o = agent(&ws, "codex", &["--continue"], "go on", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        out_file(&ws, "argv.txt").starts_with("exec\nresume\n--last\n"),
        "{}",
        out_file(&ws, "argv.txt")
    );
    // The sessions directory persists on the host.
    assert!(ws.data_path().join("berth/sessions/claude").is_dir());
    let o = ws.run(&["--resume", "x"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("need an agent profile"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn conflicting_credentials_are_refused_before_start() {
    let ws = workspace();
    let o = agent(
        &ws,
        "claude-code",
        &[],
        "x",
        &[("ANTHROPIC_API_KEY", "k"), ("CLAUDE_CODE_OAUTH_TOKEN", "t")],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("conflict") && stderr(&o).contains("ANTHROPIC_API_KEY"),
        "{}",
        stderr(&o)
    );
    assert!(!ws.runs_dir().exists(), "nothing started");
}

#[test]
fn a_run_without_any_credential_is_refused_before_start() {
    let ws = workspace();
    for (profile, names) in [
        (
            "claude-code",
            &["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"][..],
        ),
        ("codex", &["OPENAI_API_KEY"][..]),
    ] {
        // Some variable of the host is set, just not one the profile takes.
        let o = agent(&ws, profile, &[], "x", &[("BERTH_TEST_UNRELATED", "1")]);
        assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
        let err = stderr(&o);
        for name in names {
            assert!(err.contains(name), "{name} not named: {err}");
        }
        assert!(err.contains("\nhint: export "), "{err}");
        if profile == "claude-code" {
            assert!(err.contains("claude setup-token"), "{err}");
        }
        assert!(!ws.runs_dir().exists(), "nothing started: {err}");
    }
    // `--secret NAME` chooses the credential; a set one is enough.
    let o = agent(
        &ws,
        "claude-code",
        &[],
        "x",
        &[("CLAUDE_CODE_OAUTH_TOKEN", "berth-test-not-a-token")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_credential_echoed_by_the_agent_is_masked() {
    let ws = workspace();
    let key = "sk-ant-test-4f1c9e2b7d";
    let o = agent(
        &ws,
        "claude-code",
        &["--env", "FAKE_ECHO_CREDENTIAL=1"],
        "x",
        &[("ANTHROPIC_API_KEY", key)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The real key never enters the sandbox: the egress broker gives the agent a placeholder
    // and puts the key in on the host side. Whatever the agent echoes holds no trace of it.
    assert!(
        stdout(&o).contains("my key is berth-brokered-credential-placeholder"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains(key) && !stderr(&o).contains(key));
    for file in ["events.jsonl", "stdout.log", "run.json"] {
        let text = std::fs::read_to_string(ws.last_run().join(file)).unwrap();
        assert!(!text.contains(key), "{file} holds the credential");
    }
    // Brokered, not a secret of the sandbox.
    let record = ws.last_record();
    assert_eq!(record["spec"]["secrets"], serde_json::json!([]));
    assert_eq!(
        record["spec"]["egress"]["brokers"][0]["credential"],
        "ANTHROPIC_API_KEY"
    );
}

#[test]
fn profiles_are_listed_and_unknown_ones_named() {
    let ws = workspace();
    std::fs::write(ws.path().join("berth.toml"), "[profiles.mine]\ncommand = [\"agent\", \"{prompt}\"]\n[profiles.claude-code]\nimage = \"my/claude:1\"\n").unwrap();
    let o = ws.berth(&["profiles", "--json"]).output().unwrap();
    let profiles: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let find = |name: &str| profiles.iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(
        find("mine")["source"],
        ws.path().join("berth.toml").display().to_string()
    );
    assert_eq!(find("claude-code")["image"], "my/claude:1");
    assert!(find("claude-code")["source"]
        .as_str()
        .unwrap()
        .starts_with("built-in, overridden by"));
    assert_eq!(find("codex")["source"], "built-in");
    let o = ws
        .berth(&["run", "--profile", "claud", "--", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("unknown profile `claud`") && stderr(&o).contains("claude-code"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_prompt_on_stdin_arrives_byte_exact() {
    let ws = workspace();
    std::fs::write(
        ws.path().join("berth.toml"),
        "[profiles.reader]\ncommand = [\"sh\", \"-c\", \"cat > \\\"$BERTH_OUT/stdin.txt\\\"\"]\nprompt = \"stdin\"\n",
    )
    .unwrap();
    let prompt = "line one with $HOME and `id`\n\"quoted\" 'single' \\ end";
    let o = agent(&ws, "reader", &[], prompt, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(out_file(&ws, "stdin.txt"), prompt);
}
