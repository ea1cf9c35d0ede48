//! The HTTP API against a real SQLite store: auth, validation, the OpenAPI document, limits.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_server::App;
use berth_store::{Role, SqlStore};
use support::token;
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    app: Arc<App<SqlStore>>,
    admin: String,
    client: String,
    client_other_project: String,
    runner: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &["demo", "other"], |config| {
        config.max_body_bytes = 64 * 1024;
    })
    .await;
    Fixture {
        admin: token(&app, Role::Admin, None).await,
        client: token(&app, Role::Client, Some("demo")).await,
        client_other_project: token(&app, Role::Client, Some("other")).await,
        runner: token(&app, Role::Runner, None).await,
        app,
        _dir: dir,
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    let (status, bytes) = answer(&f.app, request, token, Body::from(body.to_string())).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// The router's answer to `request` (with `token` as the bearer, if any): status and body.
async fn answer(
    app: &Arc<App<SqlStore>>,
    mut request: axum::http::request::Builder,
    token: Option<&str>,
    body: Body,
) -> (StatusCode, Vec<u8>) {
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = berth_server::router(app.clone())
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

const GOOD_RUN: &str = r#"{"project":"demo","sandbox":{"image":"img","command":["true"]}}"#;

/// What probes call: no token needed, and nothing but a status in the answer.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

#[tokio::test]
async fn every_endpoint_but_the_probes_needs_a_token() {
    let f = fixture().await;
    for (path, body) in PROBES.iter().zip(["ok\n", "ready\n"]) {
        let (status, bytes) = answer(&f.app, Request::get(*path), None, Body::empty()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(String::from_utf8_lossy(&bytes), body, "{path}");
    }
    for (method, path) in berth_server::openapi::routes() {
        if PROBES.contains(&path.as_str()) {
            continue;
        }
        let concrete = path.replace("{id}", "x").replace("{path}", "a.txt");
        let (status, body) = call(&f, &method.to_uppercase(), &concrete, None, "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        let (status, _) = call(
            &f,
            &method.to_uppercase(),
            &concrete,
            Some("berth_nope_0000"),
            "{}",
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with an unknown token"
        );
    }
}

#[tokio::test]
async fn roles_and_projects_are_enforced() {
    let f = fixture().await;
    // Runner tokens cannot use client endpoints, client tokens cannot use runner endpoints.
    assert_eq!(
        call(&f, "POST", "/api/v1/runs", Some(&f.runner), GOOD_RUN)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&f, "GET", "/api/v1/runs", Some(&f.runner), "").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &f,
            "POST",
            "/api/v1/runners/register",
            Some(&f.client),
            r#"{"name":"r"}"#
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&f, "POST", "/api/v1/runners/r/claim", Some(&f.client), "{}")
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Admin-only.
    assert_eq!(
        call(
            &f,
            "POST",
            "/api/v1/tokens",
            Some(&f.client),
            r#"{"role":"client"}"#
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &f,
            "POST",
            "/api/v1/projects",
            Some(&f.runner),
            r#"{"name":"x","workspace_root":"/x"}"#
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // A client token of another project can neither submit to nor see this project's runs.
    let (status, run) = call(&f, "POST", "/api/v1/runs", Some(&f.client), GOOD_RUN).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap();
    assert_eq!(
        call(
            &f,
            "POST",
            "/api/v1/runs",
            Some(&f.client_other_project),
            GOOD_RUN
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &f,
            "GET",
            &format!("/api/v1/runs/{id}"),
            Some(&f.client_other_project),
            ""
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &f,
            "POST",
            &format!("/api/v1/runs/{id}/cancel"),
            Some(&f.client_other_project),
            ""
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let (_, list) = call(&f, "GET", "/api/v1/runs", Some(&f.client_other_project), "").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
    let (_, list) = call(&f, "GET", "/api/v1/runs", Some(&f.admin), "").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn invalid_submissions_are_422_with_json_paths() {
    let f = fixture().await;
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"project":"demo","sandbox":{"command":["true"]}}"#,
            &["sandbox.image"],
        ),
        (
            r#"{"project":"demo","sandbox":{"image":"i"}}"#,
            &["sandbox.command"],
        ),
        (
            r#"{"project":"demo","sandbox":{"image":"i","command":"true"}}"#,
            &["sandbox.command"],
        ),
        (
            r#"{"project":"demo","sandbox":{"image":"i","command":["true"],"imagee":"x"}}"#,
            &["sandbox.imagee"],
        ),
        (
            r#"{"project":"demo","extra":1,"sandbox":{"image":"i","command":["true"]}}"#,
            &["extra"],
        ),
        (
            r#"{"project":"nope","sandbox":{"image":"i","command":["true"]}}"#,
            &["project"],
        ),
        (
            r#"{"project":"demo","sandbox":{"image":"i","command":["true"],"timeout":"soon","mounts":[{"source":"/etc","target":"/e"}]}}"#,
            &["sandbox.timeout", "sandbox.mounts[0].source"],
        ),
    ];
    for (body, fields) in cases {
        let (status, answer) = call(&f, "POST", "/api/v1/runs", Some(&f.admin), body).await;
        let token = if body.contains("\"nope\"") {
            &f.admin
        } else {
            &f.client
        };
        let (status_client, _) = call(&f, "POST", "/api/v1/runs", Some(token), body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert!(status_client.is_client_error());
        let got: Vec<&str> = answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, *fields, "{body}");
    }
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_rejected() {
    let f = fixture().await;
    let (status, body) = call(&f, "POST", "/api/v1/runs", Some(&f.client), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"));
    let huge = format!(
        r#"{{"project":"demo","sandbox":{{"image":"i","command":["{}"]}}}}"#,
        "x".repeat(200 * 1024)
    );
    let (status, _) = call(&f, "POST", "/api/v1/runs", Some(&f.client), &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn cancel_is_idempotent() {
    let f = fixture().await;
    let (_, run) = call(&f, "POST", "/api/v1/runs", Some(&f.client), GOOD_RUN).await;
    let path = format!("/api/v1/runs/{}/cancel", run["id"].as_str().unwrap());
    let (status, first) = call(&f, "POST", &path, Some(&f.client), "").await;
    assert_eq!(
        (status, first["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, second) = call(&f, "POST", &path, Some(&f.client), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first, second, "repeating a cancel changes nothing");
    let (_, audit) = call(
        &f,
        "GET",
        &format!("/api/v1/runs/{}/audit", run["id"].as_str().unwrap()),
        Some(&f.client),
        "",
    )
    .await;
    let transitions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["to_state"].as_str().unwrap())
        .collect();
    assert_eq!(transitions, ["queued", "cancelled"]);
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let f = fixture().await;
    let (status, doc) = call(&f, "GET", "/api/v1/openapi.json", Some(&f.client), "").await;
    assert_eq!(status, StatusCode::OK);
    let on_disk: serde_json::Value = serde_json::from_str(berth_server::openapi::DOCUMENT).unwrap();
    assert_eq!(
        doc, on_disk,
        "the served document is the one in the repository"
    );
    let documented = berth_server::openapi::routes();
    // The router's own table: the path of every `.route(` in the server's source (the
    // dashboard's pages aside), with each method the router answers there (not 405).
    let mut routed = Vec::new();
    for path in routed_paths() {
        let concrete = path.replace("{id}", "x").replace("{path}", "a.txt");
        for method in ["get", "post", "put", "delete", "patch"] {
            let (status, body) =
                call(&f, &method.to_uppercase(), &concrete, Some(&f.admin), "{}").await;
            let fallback = body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("no such endpoint"));
            assert!(!fallback, "{path} is in the source but not routed");
            if status != StatusCode::METHOD_NOT_ALLOWED {
                routed.push((method.to_string(), path.clone()));
            }
        }
    }
    routed.sort();
    assert_eq!(
        documented, routed,
        "openapi.json and the router differ (left: documented, right: routed)"
    );
}

/// Every path given to `.route(` in the server's source files, as the document writes it
/// (`{*path}` is `{path}`), leaving out the dashboard's HTML pages.
fn routed_paths() -> Vec<String> {
    let mut files = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    let mut paths = std::collections::BTreeSet::new();
    while let Some(file) = files.pop() {
        if file.is_dir() {
            files.extend(std::fs::read_dir(&file).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for (_, rest) in source
            .match_indices(".route(")
            .map(|(i, _)| source.split_at(i + 7))
        {
            let Some(literal) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let path = &literal[..literal.find('"').unwrap()];
            if path != "/" && !path.starts_with(berth_server::openapi::DASHBOARD_PREFIX) {
                paths.insert(path.replace("{*", "{"));
            }
        }
    }
    assert!(paths.len() > 20, "the route table was not found: {paths:?}");
    paths.into_iter().collect()
}

#[tokio::test]
async fn metrics_and_readiness() {
    let f = fixture().await;
    call(&f, "POST", "/api/v1/runs", Some(&f.client), GOOD_RUN).await;
    let response = berth_server::router(f.app.clone())
        .oneshot(
            Request::get("/metrics")
                .header("authorization", format!("Bearer {}", f.client))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "berth_runs{state=\"queued\"} 1",
        "berth_queue_depth 1",
        "berth_runners_online 0",
        "berth_http_requests_total{status=\"201\"} 1",
        "# TYPE berth_claim_latency_seconds histogram",
        "berth_claim_latency_seconds_count 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

/// `/metrics` with a token: (status, body).
async fn metrics_as(app: &Arc<App<SqlStore>>, token: Option<&str>) -> (StatusCode, String) {
    let (status, bytes) = answer(app, Request::get("/metrics"), token, Body::empty()).await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_metrics_token_opens_metrics_and_nothing_else() {
    const METRICS: &str = "metrics-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &["demo"], |config| {
        config.metrics_token_hash = Some(berth_server::hash_secret(METRICS));
    })
    .await;
    let client = token(&app, Role::Client, Some("demo")).await;
    let (status, text) = metrics_as(&app, Some(METRICS)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("berth_queue_depth 0"), "{text}");
    // API tokens still read it; a wrong or missing token does not.
    assert_eq!(metrics_as(&app, Some(&client)).await.0, StatusCode::OK);
    assert_eq!(
        metrics_as(&app, Some("metrics-secret-wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(metrics_as(&app, None).await.0, StatusCode::UNAUTHORIZED);
    // The metrics token is no API token.
    let (status, _) = answer(
        &app,
        Request::get("/api/v1/runs"),
        Some(METRICS),
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A server without one does not take it.
    let other = tempfile::tempdir().unwrap();
    let plain = support::app(other.path(), &[], |_| {}).await;
    assert_eq!(
        metrics_as(&plain, Some(METRICS)).await.0,
        StatusCode::UNAUTHORIZED
    );
}
