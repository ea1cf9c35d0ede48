//! `sandbox.resources.disk`: accepted as a size, refused out of range or malformed with its JSON
//! path (422), kept in the stored run, and documented with the pattern the validation applies.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_server::App;
use berth_store::{Role, SqlStore};
use serde_json::Value;
use tower::ServiceExt;

async fn call(
    app: &Arc<App<SqlStore>>,
    token: &str,
    method: &str,
    path: &str,
    body: String,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body))
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

fn run_with_disk(disk: &str) -> String {
    serde_json::json!({
        "project": "demo",
        "sandbox": {"image": "img", "command": ["true"], "resources": {"disk": disk}},
    })
    .to_string()
}

#[tokio::test]
async fn disk_is_accepted_and_bad_values_are_422_at_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &["demo"], |_| {}).await;
    let client = support::token(&app, Role::Client, Some("demo")).await;

    let (status, reply) = call(&app, &client, "POST", "/api/v1/runs", run_with_disk("10g")).await;
    assert!(status.is_success(), "{reply}");
    let id = reply["id"].as_str().unwrap().to_string();
    let (status, run) = call(
        &app,
        &client,
        "GET",
        &format!("/api/v1/runs/{id}"),
        String::new(),
    )
    .await;
    assert!(status.is_success(), "{run}");
    assert_eq!(run["sandbox"]["resources"]["disk"], "10g", "{run}");

    for (disk, says) in [
        ("65537g", "64 TiB"),
        ("99999999999999999999g", "64 TiB"),
        ("64k", "from 1m"),
        ("lots", "10g"),
        ("1e20", "10g"),
        (" 10g", "white space"),
    ] {
        let (status, reply) =
            call(&app, &client, "POST", "/api/v1/runs", run_with_disk(disk)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{disk}: {reply}");
        let errors = reply["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{reply}");
        assert_eq!(errors[0]["field"], "sandbox.resources.disk", "{reply}");
        let message = errors[0]["message"].as_str().unwrap();
        assert!(message.contains(says), "{disk}: {message}");
    }
    // A number is not a size.
    let body = r#"{"project":"demo","sandbox":{"image":"img","command":["true"],"resources":{"disk":10}}}"#;
    let (status, reply) = call(&app, &client, "POST", "/api/v1/runs", body.into()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert!(
        reply.to_string().contains("sandbox.resources.disk"),
        "{reply}"
    );
}

#[test]
fn the_documented_disk_pattern_agrees_with_the_validation() {
    let doc: Value = serde_json::from_str(berth_server::openapi::DOCUMENT).unwrap();
    let schema = doc
        .pointer("/components/schemas/ResourcesSpec/properties/disk")
        .unwrap();
    let pattern = regex::Regex::new(schema["pattern"].as_str().unwrap()).unwrap();
    assert!(schema["description"].as_str().unwrap().contains("64 TiB"));
    let view = doc.pointer("/components/schemas/ResourcesView").unwrap();
    assert!(view["required"]
        .as_array()
        .unwrap()
        .contains(&"disk".into()));
    for value in [
        "10g", "10G", "1.5g", "512mb", "1048576", "2048k", "5b", "5bb", "lots", "1e3", "10 g",
        " 10g", "10g ", "-1g", "", ".", "1t", "inf",
    ] {
        let parsed = berth_core::units::parse_disk(value);
        // Out of range values have the documented form; the description states the range.
        if parsed
            .as_ref()
            .is_err_and(|e| e.expected.contains("must be from"))
        {
            continue;
        }
        let documented = pattern.is_match(value);
        let accepted = parsed.is_ok() && value.trim() == value;
        assert_eq!(documented, accepted, "{value:?}");
    }
}
