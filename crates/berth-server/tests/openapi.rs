//! The OpenAPI document tells the truth: every status an operation answers is documented for
//! it, and the patterns it states for request fields agree with the API's validation.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use berth_api::{parse_strict, validate_submission, ProjectScope, SubmitRun};
use berth_store::Role;
use serde_json::Value;
use tower::ServiceExt;

fn document() -> Value {
    serde_json::from_str(berth_server::openapi::DOCUMENT).unwrap()
}

/// The statuses documented for `method path`.
fn documented(doc: &Value, method: &str, path: &str) -> BTreeSet<u16> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} has no responses"))
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

/// Every operation, called with each role's token (and none) and with bodies that are missing,
/// not JSON, of the wrong shape and empty objects, answers only statuses its document lists
/// (never 5xx here), and documents 401 and, where a role is refused, 403.
#[tokio::test]
async fn every_status_an_operation_answers_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &["demo", "other"], |_| {}).await;
    let tokens = [
        Some(support::token(&app, Role::Admin, None).await),
        Some(support::token(&app, Role::Client, Some("demo")).await),
        Some(support::token(&app, Role::Client, Some("other")).await),
        Some(support::token(&app, Role::Runner, None).await),
        None,
    ];
    let doc = document();
    let bodies = ["", "{", r#"{"unknown":1}"#, "{}", "[]"];
    let mut problems = Vec::new();
    for (method, path) in berth_server::openapi::routes() {
        let (method, path) = (method.as_str(), path.as_str());
        let listed = documented(&doc, method, path);
        let mut seen = BTreeSet::new();
        for id in ["x", "%FF"] {
            let concrete = path.replace("{id}", id).replace("{path}", "a.txt");
            for token in &tokens {
                for body in bodies {
                    let mut request = Request::builder()
                        .method(method.to_uppercase().as_str())
                        .uri(&concrete)
                        .header("content-type", "application/json");
                    if let Some(t) = token {
                        request = request.header("authorization", format!("Bearer {t}"));
                    }
                    let response = berth_server::router(app.clone())
                        .oneshot(request.body(Body::from(body)).unwrap())
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    seen.insert(status);
                    if !listed.contains(&status) {
                        problems.push(format!(
                            "{method} {concrete} (body {body:?}): {status} is not documented ({listed:?})"
                        ));
                    }
                    if status >= 400 {
                        let content_type = response
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        if content_type != "application/json" {
                            problems.push(format!(
                                "{method} {concrete}: {status} answered as {content_type:?}, not JSON"
                            ));
                        }
                    }
                    assert!(
                        status < 500,
                        "{method} {concrete} (body {body:?}): {status}"
                    );
                }
            }
        }
        // The probes need no token; everything else does.
        if !["/healthz", "/readyz"].contains(&path) {
            assert!(seen.contains(&401), "{method} {path}: {seen:?}");
        } else {
            assert!(!seen.contains(&401), "{method} {path}: {seen:?}");
        }
        for must in [401, 403, 404, 422] {
            if seen.contains(&must) {
                assert!(listed.contains(&must), "{method} {path} answers {must}");
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Strings chosen at the edges of every documented pattern: empty, white space of each kind
/// (Rust's, ECMA's and Python's differ), separators, `..`, signs, units, lengths.
fn samples() -> Vec<String> {
    let mut out: Vec<String> = [
        "",
        " ",
        "a",
        "A_1",
        "1a",
        "_",
        "a-b",
        "a--b",
        "-a",
        "a-",
        "a b",
        "a,b",
        "a\u{85}b",
        "a\u{1c}b",
        "a\u{a0}b",
        "a\u{3000}",
        "a\u{200b}b",
        "a\tb",
        "a\nb",
        "é",
        "a.b",
        "/",
        "/a",
        "/a/",
        "//",
        "/a/../b",
        "/a/..b",
        "/..",
        "/../",
        "/.",
        "/./a",
        "/...",
        "rel",
        "a/b",
        "10m",
        "1h30m",
        "1.5s",
        ".5h",
        "5.",
        ".",
        "1e3",
        "10 m",
        " 10m",
        "10m ",
        "10m\n",
        "0",
        "250ms",
        "2g",
        "512MB",
        "5b",
        "5bb",
        "1k",
        "6m",
        "1.5G",
        "2gb",
        "1000:1000",
        "+1",
        "1:",
        ":1",
        "1:2:3",
        "1:+2",
        "-1",
        "alpine:3.20",
        "ghcr.io/o/i@sha256:ab",
        "alpine latest",
        "Alpine",
        "x:y@z",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    out.push("x".repeat(64));
    out.push("x".repeat(65));
    out.push(format!("a{}", "-b".repeat(40)));
    // git refs: options, ranges, revision suffixes, the length limit.
    for git_ref in [
        "--upload-pack=touch /tmp/x",
        "-c",
        "main..evil",
        "a...b",
        "v1.2",
        "origin/main",
        "HEAD~2",
        "HEAD^",
        "HEAD@{1}",
        "main.",
        "a:b",
    ] {
        out.push(git_ref.to_string());
    }
    out.push("r".repeat(200));
    out.push("r".repeat(201));
    out
}

/// The `pattern` (and `maxLength`) the document states at `pointer`, as one check.
fn documented_rule(doc: &Value, pointer: &str) -> impl Fn(&str) -> bool {
    let schema = doc.pointer(pointer).unwrap_or_else(|| panic!("{pointer}"));
    let pattern = schema["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{pointer} has no pattern"));
    let regex = regex::Regex::new(pattern).unwrap();
    let max = schema["maxLength"].as_u64();
    move |s: &str| regex.is_match(s) && max.is_none_or(|m| s.chars().count() as u64 <= m)
}

/// Whether the API refuses a submission with `value` at `sandbox.FIELD` (or `tags[0]`), at that
/// path.
fn refused(field: &str, value: &str) -> bool {
    let mut run = serde_json::json!({
        "project": "demo",
        "sandbox": {"image": "alpine", "command": ["true"]},
    });
    let path = match field {
        "tags" => {
            run["tags"] = serde_json::json!([value]);
            "tags[0]".to_string()
        }
        "secrets" | "artifacts" => {
            run["sandbox"][field] = serde_json::json!([value]);
            format!("sandbox.{field}[0]")
        }
        "memory" => {
            run["sandbox"]["resources"] = serde_json::json!({ "memory": value });
            "sandbox.resources.memory".to_string()
        }
        "profile" => {
            run["sandbox"] = serde_json::json!({ "profile": value });
            "sandbox.profile".to_string()
        }
        "git_ref" => {
            run["sandbox"]["workspace_mode"] = Value::String("worktree".into());
            run["sandbox"]["git_ref"] = Value::String(value.to_string());
            "sandbox.git_ref".to_string()
        }
        _ => {
            run["sandbox"][field] = Value::String(value.to_string());
            format!("sandbox.{field}")
        }
    };
    let run: SubmitRun = parse_strict(run.to_string().as_bytes()).unwrap();
    let scope = ProjectScope {
        workspace_root: "/srv/demo".into(),
        allowed_paths: vec![],
        egress_ceiling: None,
    };
    validate_submission(&run, &scope)
        .iter()
        .any(|e| e.field == path)
}

#[test]
fn documented_patterns_agree_with_the_validation() {
    let doc = document();
    let sandbox = "/components/schemas/SandboxRequest/properties";
    let cases = [
        ("image", format!("{sandbox}/image")),
        ("secrets", format!("{sandbox}/secrets/items")),
        ("artifacts", format!("{sandbox}/artifacts/items")),
        ("timeout", format!("{sandbox}/timeout")),
        ("grace", format!("{sandbox}/grace")),
        ("user", format!("{sandbox}/user")),
        ("profile", format!("{sandbox}/profile")),
        ("name", format!("{sandbox}/name")),
        ("git_ref", format!("{sandbox}/git_ref")),
        (
            "memory",
            "/components/schemas/ResourcesSpec/properties/memory".to_string(),
        ),
        (
            "tags",
            "/components/schemas/SubmitRun/properties/tags/items".to_string(),
        ),
    ];
    // Values that have the documented form but are out of range are refused beyond the
    // pattern (the schema's descriptions state the ranges): leave them out.
    let beyond_pattern = |field: &str, value: &str| match field {
        "memory" => berth_core::units::parse_memory(value)
            .is_err_and(|e| e.expected.contains("must be from")),
        // workdir-like rules beyond the pattern: `/` and the protected trees.
        _ => false,
    };
    let mut problems = Vec::new();
    for (field, pointer) in &cases {
        let matches = documented_rule(&doc, pointer);
        for value in samples() {
            if beyond_pattern(field, &value) {
                continue;
            }
            let documented_ok = matches(&value);
            let accepted = !refused(field, &value);
            if documented_ok != accepted {
                problems.push(format!(
                    "{field} {value:?}: the document says {}, the API {}",
                    if documented_ok { "valid" } else { "invalid" },
                    if accepted { "accepts it" } else { "refuses it" }
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The project and runner names the document states are the ones the handlers accept.
#[tokio::test]
async fn documented_names_agree_with_the_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let app = support::app(dir.path(), &[], |_| {}).await;
    let admin = support::token(&app, Role::Admin, None).await;
    let runner = support::token(&app, Role::Runner, None).await;
    let doc = document();
    let project_name = documented_rule(&doc, "/components/schemas/CreateProject/properties/name");
    let root = documented_rule(
        &doc,
        "/components/schemas/CreateProject/properties/workspace_root",
    );
    let runner_name = documented_rule(&doc, "/components/schemas/RegisterRunner/properties/name");
    let post = |token: String, path: &'static str, body: Value| {
        let app = app.clone();
        async move {
            let request = Request::builder()
                .method("POST")
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = berth_server::router(app).oneshot(request).await.unwrap();
            response.status().as_u16()
        }
    };
    let mut problems = Vec::new();
    for (i, value) in samples().into_iter().enumerate() {
        // Each valid name once (a second create is 409), so make the valid ones unique.
        let name = if project_name(&value) {
            format!("{value}{i}")
        } else {
            value.clone()
        };
        let status = post(
            admin.clone(),
            "/api/v1/projects",
            serde_json::json!({"name": name, "workspace_root": "/srv/x"}),
        )
        .await;
        if (status == 201) != project_name(&name) {
            problems.push(format!("project name {name:?}: {status}"));
        }
        let status = post(
            admin.clone(),
            "/api/v1/projects",
            serde_json::json!({"name": format!("p{i}"), "workspace_root": value}),
        )
        .await;
        if (status == 201) != root(&value) {
            problems.push(format!("workspace_root {value:?}: {status}"));
        }
        let status = post(
            runner.clone(),
            "/api/v1/runners/register",
            serde_json::json!({"name": value}),
        )
        .await;
        if (status == 200) != runner_name(&value) {
            problems.push(format!("runner name {value:?}: {status}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
