//! Numbers in API bodies: out of range is 422 with the JSON path and what is accepted, never a
//! panic or a dropped connection; the server keeps answering afterwards.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_server::App;
use berth_store::{Role, SqlStore};
use serde_json::Value;
use tower::ServiceExt;

async fn post(
    app: &Arc<App<SqlStore>>,
    token: &str,
    path: &str,
    body: &str,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = berth_server::router(app.clone())
        .oneshot(request)
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

fn run_with(sandbox: &str) -> String {
    format!(r#"{{"project":"demo","sandbox":{{"image":"img","command":["true"],{sandbox}}}}}"#)
}

#[tokio::test]
async fn out_of_range_numbers_are_422_with_their_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &["demo"], |_| {}).await;
    let client = support::token(&app, Role::Client, Some("demo")).await;
    let cases: &[(&str, &str, &str)] = &[
        (r#""timeout":"1e20""#, "sandbox.timeout", "8760h"),
        (
            r#""timeout":"99999999999999h""#,
            "sandbox.timeout",
            "365 days",
        ),
        (r#""timeout":"inf""#, "sandbox.timeout", "8760h"),
        (r#""grace":"1e19""#, "sandbox.grace", "8760h"),
        (r#""grace":"-1""#, "sandbox.grace", "8760h"),
        (
            r#""resources":{"memory":"99999999999g"}"#,
            "sandbox.resources.memory",
            "1 TiB",
        ),
        (
            r#""resources":{"pids":99999999999}"#,
            "sandbox.resources.pids",
            "4194304",
        ),
        (
            r#""resources":{"pids":-1}"#,
            "sandbox.resources.pids",
            "4194304",
        ),
        (
            r#""resources":{"cpus":1e300}"#,
            "sandbox.resources.cpus",
            "1024",
        ),
        // Too large for the wire type: still a 422 at the value's path.
        (
            r#""resources":{"pids":99999999999999999999}"#,
            "sandbox.resources.pids",
            "",
        ),
        (
            r#""resources":{"cpus":1e400}"#,
            "sandbox.resources.cpus",
            "",
        ),
    ];
    for (sandbox, field, says) in cases {
        let body = run_with(sandbox);
        let (status, reply) = post(&app, &client, "/api/v1/runs", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply}");
        let errors = reply["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{reply}");
        assert_eq!(errors[0]["field"], *field, "{reply}");
        assert!(
            errors[0]["message"].as_str().unwrap().contains(says),
            "{reply}"
        );
    }
    // The server is still there, and a good run is accepted.
    let (status, reply) = post(
        &app,
        &client,
        "/api/v1/runs",
        &run_with(r#""timeout":"8760h""#),
    )
    .await;
    assert!(status.is_success(), "{reply}");
}

#[tokio::test]
async fn a_workflow_step_timeout_out_of_range_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &["demo"], |_| {}).await;
    let client = support::token(&app, Role::Client, Some("demo")).await;
    let workflow = r#"name = "w"
[loop]
max_iterations = 1
until = "review.approved"
[[loop.steps]]
name = "review"
command = ["true"]
timeout = "1e20"
verdict = { file = "result.json" }
"#;
    let body = serde_json::json!({
        "project": "demo",
        "workflow": workflow,
        "task": "x",
        "image": "img",
    });
    let (status, reply) = post(&app, &client, "/api/v1/workflows", &body.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let text = reply.to_string();
    assert!(
        text.contains("timeout") && text.contains("1e20") && text.contains("8760h"),
        "{reply}"
    );
}
