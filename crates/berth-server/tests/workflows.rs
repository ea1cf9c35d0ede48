//! The workflow driver through the HTTP API and a real SQLite store, with the test playing the
//! runner: every step becomes a run pinned to the runner of the first, prompts carry the task,
//! the diff and the reviewer's feedback, verdicts come from the artifact, and a workflow whose
//! runner went offline ends with that reason instead of waiting forever.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_server::App;
use berth_store::{Role, RunnerStore, SqlStore};
use serde_json::{json, Value};
use support::token;
use tower::ServiceExt;

const WORKFLOW: &str = r#"
name = "loop"

[[baseline]]
name = "before"
command = ["make", "test"]

[loop]
max_iterations = 3
until = "review.approved"

[[loop.steps]]
name = "build"
agent = "claude-code"
prompt = "{{ task }} | feedback: {{ review.feedback }}"

[[loop.steps]]
name = "review"
agent = "codex"
prompt = "diff: {{ diff }}"
verdict = { file = "result.json" }
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    app: Arc<App<SqlStore>>,
    client: String,
    runner: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &["demo"], |_| {}).await;
    Fixture {
        client: token(&app, Role::Client, Some("demo")).await,
        runner: token(&app, Role::Runner, None).await,
        app,
        _dir: dir,
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: &str,
    body: Body,
    lease: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"));
    if let Some(lease) = lease {
        request = request.header("x-berth-lease", lease);
    }
    let response = berth_server::router(f.app.clone())
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn json_call(f: &Fixture, method: &str, path: &str, token: &str, body: Value) -> Value {
    let (status, reply) = call(f, method, path, token, Body::from(body.to_string()), None).await;
    assert!(status.is_success(), "{method} {path}: {status} {reply}");
    reply
}

async fn register(f: &Fixture, name: &str) -> String {
    let reply = json_call(
        f,
        "POST",
        "/api/v1/runners/register",
        &f.runner,
        json!({ "name": name }),
    )
    .await;
    reply["runner_id"].as_str().unwrap().to_string()
}

/// A claim without waiting: the claimed run, or `None`.
async fn claim(f: &Fixture, runner: &str) -> Option<Value> {
    let (status, reply) = call(
        f,
        "POST",
        &format!("/api/v1/runners/{runner}/claim"),
        &f.runner,
        Body::from("{}"),
        None,
    )
    .await;
    match status {
        StatusCode::NO_CONTENT => None,
        StatusCode::OK => Some(reply),
        other => panic!("claim: {other} {reply}"),
    }
}

/// Runs a claimed step as a runner would: start, artifacts, finish.
async fn run_step(f: &Fixture, claimed: &Value, artifacts: &[(&str, &str)], exit_code: i64) {
    let id = claimed["run"]["id"].as_str().unwrap();
    let lease = claimed["lease_token"].as_str().unwrap();
    json_call(
        f,
        "POST",
        &format!("/api/v1/runs/{id}/start"),
        &f.runner,
        json!({ "lease_token": lease }),
    )
    .await;
    for (path, text) in artifacts {
        let (status, reply) = call(
            f,
            "PUT",
            &format!("/api/v1/runs/{id}/artifacts/{path}"),
            &f.runner,
            Body::from(text.to_string()),
            Some(lease),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{reply}");
    }
    let state = if exit_code == 0 {
        "succeeded"
    } else {
        "failed"
    };
    json_call(
        f,
        "POST",
        &format!("/api/v1/runs/{id}/finish"),
        &f.runner,
        json!({ "lease_token": lease, "state": state, "exit_code": exit_code }),
    )
    .await;
}

async fn workflow(f: &Fixture, id: &str) -> Value {
    json_call(
        f,
        "GET",
        &format!("/api/v1/workflows/{id}"),
        &f.client,
        Value::Null,
    )
    .await
}

/// Waits for the driver (spawned when a step finishes) to queue the next step for `runner`.
async fn next_claim(f: &Fixture, runner: &str) -> Value {
    for _ in 0..200 {
        if let Some(claimed) = claim(f, runner).await {
            return claimed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no step was queued for {runner}");
}

#[tokio::test]
async fn steps_are_pinned_runs_fed_with_diff_and_feedback_and_an_offline_runner_ends_it() {
    let f = fixture().await;
    let home = register(&f, "home").await;
    let other = register(&f, "other").await;
    let submitted = json_call(
        &f,
        "POST",
        "/api/v1/workflows",
        &f.client,
        json!({ "project": "demo", "workflow": WORKFLOW, "task": "fix the parser", "image": "img" }),
    )
    .await;
    let id = submitted["id"].as_str().unwrap().to_string();
    assert_eq!(submitted["state"], "running");
    assert_eq!(submitted["steps"][0]["step"], "before");

    // The baseline: a command in the sandbox, on whichever runner claims first.
    let before = claim(&f, &home).await.expect("the baseline is queued");
    assert_eq!(before["run"]["sandbox"]["command"], json!(["make", "test"]));
    assert_eq!(before["run"]["sandbox"]["workflow"], id.as_str());
    assert_eq!(before["run"]["labels"]["berth.step"], "baseline/before");
    run_step(&f, &before, &[], 0).await;

    // The build: pinned to `home`, which holds the worktree.
    let build = next_claim(&f, &home).await;
    assert!(claim(&f, &other).await.is_none());
    assert_eq!(build["run"]["sandbox"]["profile"], "claude-code");
    assert_eq!(
        build["run"]["sandbox"]["prompt"],
        "fix the parser | feedback: "
    );
    run_step(&f, &build, &[("berth/diff.patch", "+a change\n")], 0).await;

    // The review sees the diff the build left and rejects.
    let review = next_claim(&f, &home).await;
    assert_eq!(review["run"]["sandbox"]["prompt"], "diff: +a change\n");
    let verdict =
        r#"{"approved": false, "summary": "not yet", "requested_changes": ["add tests"]}"#;
    run_step(&f, &review, &[("berth/out/result.json", verdict)], 0).await;

    // Iteration 2's build gets the feedback.
    let build2 = next_claim(&f, &home).await;
    let prompt = build2["run"]["sandbox"]["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("not yet") && prompt.contains("- add tests"),
        "{prompt}"
    );
    let view = workflow(&f, &id).await;
    assert_eq!(view["iterations"], 2);
    assert_eq!(view["runner_id"], home.as_str());
    assert_eq!(view["steps"][2]["verdict"]["approved"], false, "{view}");
    assert_eq!(view["diff_run"], build["run"]["id"]);

    // A runner that goes offline holding the worktree: its queued step can never start, and
    // the workflow ends saying so.
    run_step(&f, &build2, &[("berth/diff.patch", "+more\n")], 0).await;
    let review2 = loop {
        let view = workflow(&f, &id).await;
        let last = view["steps"].as_array().unwrap().last().unwrap().clone();
        if last["step"] == "review" && last["state"] == "running" {
            break last["run_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let far_future = berth_server::now_ms() + 3_600_000;
    f.app
        .store
        .mark_stale_runners_offline(far_future)
        .await
        .unwrap();
    berth_server::workflows::advance(&f.app, &id).await.unwrap();
    let view = workflow(&f, &id).await;
    assert_eq!(view["state"], "error", "{view}");
    let reason = view["reason"].as_str().unwrap();
    assert!(
        reason.contains("home") && reason.contains("is offline") && reason.contains("review"),
        "{reason}"
    );
    let run = json_call(
        &f,
        "GET",
        &format!("/api/v1/runs/{review2}"),
        &f.client,
        Value::Null,
    )
    .await;
    assert_eq!(run["state"], "cancelled", "the stranded step ends: {run}");

    // The audit trail tells the story.
    let audit = json_call(
        &f,
        "GET",
        &format!("/api/v1/workflows/{id}/audit"),
        &f.client,
        Value::Null,
    )
    .await;
    let events: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "submitted",
            "step_queued",
            "step_finished",
            "step_queued",
            "step_finished",
            "step_queued",
            "step_finished",
            "step_queued",
            "step_finished",
            "step_queued",
            "step_finished",
            "finished"
        ]
    );
    // The diff so far is the last step's.
    let response = berth_server::router(f.app.clone())
        .oneshot(
            Request::get(format!("/api/v1/workflows/{id}/diff"))
                .header("authorization", format!("Bearer {}", f.client))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"+more\n");
}

#[tokio::test]
async fn the_built_in_workflow_takes_its_test_command_and_bad_submissions_name_their_field() {
    let f = fixture().await;
    let home = register(&f, "home").await;
    let submitted = json_call(
        &f,
        "POST",
        "/api/v1/workflows",
        &f.client,
        json!({
            "project": "demo",
            "builtin": "builder-reviewer",
            "task": "fix it",
            "image": "img",
            "test_command": ["cargo", "test"],
        }),
    )
    .await;
    assert_eq!(submitted["name"], "builder-reviewer", "{submitted}");
    let first = claim(&f, &home).await.expect("the baseline is queued");
    assert_eq!(first["run"]["sandbox"]["command"], json!(["cargo", "test"]));

    for (body, field, says) in [
        (
            json!({ "project": "demo", "builtin": "builder-reviewer", "image": "img" }),
            "task",
            "needs a task",
        ),
        (
            json!({ "project": "demo", "builtin": "builder-reviewer", "task": "x" }),
            "image",
            "tests",
        ),
        (
            json!({ "project": "demo", "workflow": "x", "builtin": "builder-reviewer" }),
            "builtin",
            "not both",
        ),
        (
            json!({ "project": "demo", "workflow": "name = 1" }),
            "workflow",
            "name",
        ),
        (
            json!({ "project": "demo", "builtin": "builder-reviewer", "task": "x", "image": "i", "test_command": [] }),
            "test_command",
            "argv",
        ),
        (
            json!({ "project": "demo", "builtin": "builder-reviewer", "task": "x", "image": "i", "env": { "1BAD": "v" } }),
            "env.1BAD",
            "",
        ),
        (
            json!({ "project": "demo", "builtin": "builder-reviewer", "task": "x", "image": "i", "surprise": true }),
            "surprise",
            "",
        ),
    ] {
        let (status, reply) = call(
            &f,
            "POST",
            "/api/v1/workflows",
            &f.client,
            Body::from(body.to_string()),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply}");
        let errors = reply["errors"].as_array().unwrap();
        let hit = errors
            .iter()
            .find(|e| e["field"].as_str().unwrap().contains(field))
            .unwrap_or_else(|| panic!("{body}: no error for {field}: {reply}"));
        assert!(hit["message"].as_str().unwrap().contains(says), "{reply}");
    }
    // Another project's client cannot see the workflow.
    let outsider = token(&f.app, Role::Client, Some("elsewhere")).await;
    let id = submitted["id"].as_str().unwrap();
    let (status, _) = call(
        &f,
        "GET",
        &format!("/api/v1/workflows/{id}"),
        &outsider,
        Body::empty(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A reviewer without `result.json` is judged by the workflow's rule on its final message, read
/// from the run's agent events.
#[tokio::test]
async fn a_verdict_rule_reads_the_final_message_from_the_run_s_events() {
    let f = fixture().await;
    let home = register(&f, "home").await;
    let text = r#"
name = "rule"
[loop]
max_iterations = 1
until = "review.approved"
[[loop.steps]]
name = "review"
agent = "codex"
prompt = "review {{ task }}"
verdict = { fallback = { approve = '(?m)^APPROVED', reject = '(?m)^CHANGES' } }
"#;
    let submitted = json_call(
        &f,
        "POST",
        "/api/v1/workflows",
        &f.client,
        json!({ "project": "demo", "workflow": text, "task": "it" }),
    )
    .await;
    let id = submitted["id"].as_str().unwrap().to_string();
    let review = claim(&f, &home).await.expect("the review is queued");
    let run = review["run"]["id"].as_str().unwrap();
    let lease = review["lease_token"].as_str().unwrap();
    let message = json!({
        "event": "agent",
        "agent": { "type": "final_result", "is_error": false, "text": "APPROVED: ship it" }
    });
    json_call(
        &f,
        "POST",
        &format!("/api/v1/runs/{run}/events"),
        &f.runner,
        json!({
            "lease_token": lease,
            "first_seq": 1,
            "events": [{ "ts": 1, "kind": "agent", "data": message.to_string() }],
        }),
    )
    .await;
    run_step(&f, &review, &[], 0).await;
    let view = loop {
        let view = workflow(&f, &id).await;
        if view["state"] != "running" {
            break view;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(
        view["steps"][0]["verdict"]["source"], "final_message",
        "{view}"
    );
    assert_eq!(view["steps"][0]["verdict"]["approved"], true, "{view}");
}

/// `{{ STEP.output }}` from a command step's stored events follows the core's rule, as
/// `berth workflow run` does (its test of the same lines: `berth/src/commands/workflow.rs`):
/// stdout and stderr interleaved as received, the last 256 KiB, a character cut at the start
/// left out, lines that were not UTF-8 decoded from base64.
#[tokio::test]
async fn a_command_step_s_output_is_the_interleaved_tail_cut_at_a_character() {
    use berth_core::workflow::output::OUTPUT_TAIL;
    let f = fixture().await;
    let home = register(&f, "home").await;
    let text = r#"
name = "output"
[[baseline]]
name = "tests"
command = ["make", "test"]
continue_on_failure = true
[loop]
max_iterations = 1
until = "review.approved"
[[loop.steps]]
name = "review"
agent = "codex"
prompt = "{{ tests.output }}"
verdict = { file = "result.json" }
"#;
    json_call(
        &f,
        "POST",
        "/api/v1/workflows",
        &f.client,
        json!({ "project": "demo", "workflow": text, "task": "it", "image": "busybox" }),
    )
    .await;
    let tests = claim(&f, &home).await.expect("the tests are queued");
    let run = tests["run"]["id"].as_str().unwrap();
    let lease = tests["lease_token"].as_str().unwrap();
    // Cut off, then "é" across the cut, then stdout and stderr lines in turn.
    let mut events = vec![("stdout", "gone\n".to_string()), ("stderr", "é\n".into())];
    let mut kept = String::from("\n");
    let mut stream = "stdout";
    // The bytes after "é": OUTPUT_TAIL less its second byte.
    while kept.len() < OUTPUT_TAIL - 1 - 8 {
        let room = (OUTPUT_TAIL - 1 - 8 - kept.len()).min(1024);
        let line = format!("{}\n", "o".repeat(room - 1));
        events.push((stream, line.clone()));
        kept.push_str(&line);
        stream = if stream == "stdout" {
            "stderr"
        } else {
            "stdout"
        };
    }
    events.push(("stderr", "tail\n".into()));
    events.push(("stdout_base64", "//4K".into()));
    for (at, batch) in events.chunks(64).enumerate() {
        let batch: Vec<Value> = batch
            .iter()
            .map(|(kind, data)| json!({ "ts": 1, "kind": kind, "data": data }))
            .collect();
        json_call(
            &f,
            "POST",
            &format!("/api/v1/runs/{run}/events"),
            &f.runner,
            json!({ "lease_token": lease, "first_seq": at * 64 + 1, "events": batch }),
        )
        .await;
    }
    run_step(&f, &tests, &[], 1).await;

    let review = next_claim(&f, &home).await;
    let expected = format!("{kept}tail\n\u{FFFD}\u{FFFD}\n");
    // The state machine keeps the output cut to the workflow's limit, and the prompt's
    // template cuts that again.
    use berth_core::workflow::template::{truncate, DEFAULT_VALUE_LIMIT};
    let kept_by_the_state = truncate(&expected, DEFAULT_VALUE_LIMIT);
    assert_eq!(
        review["run"]["sandbox"]["prompt"],
        truncate(&kept_by_the_state, DEFAULT_VALUE_LIMIT)
    );
}
